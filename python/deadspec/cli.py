"""The ``deadspec`` command line (console script ``deadspec``, also ``python -m deadspec``).

Subcommands
-----------
``deadspec info``
    Version, build flavour (:func:`deadspec.build_info`), torch/numpy versions and the
    BLAS/LAPACK libraries in use.
``deadspec read CKPT... --model MODULE:FACTORY --data FILE [--layers L ...] --out readings.csv``
    Read the Dead-Direction Signatures (:func:`deadspec.read`) of every checkpoint and write one
    CSV row per checkpoint × layer × side; ``--plot readings.png`` draws them across checkpoints.

    * ``MODULE:FACTORY``: ``MODULE`` is a dotted module path (importable, the current directory
      is on the path) or a path to a ``.py`` file; ``FACTORY`` names a zero-argument callable in it
      (dotted attribute paths allowed) that returns the ``nn.Module`` the checkpoints belong to
      (a ``torch.compile`` d module is taken through the module it compiles).
      Example: ``deadspec.models:demo_mlp``.
    * ``hf:FOLDER`` instead: a Hugging Face model folder (``save_pretrained``). The model is
      built from its ``config.json`` (``transformers.AutoConfig``, ``local_files_only``; the
      class is the config's ``architectures`` entry, else ``AutoModelForCausalLM``, else
      ``AutoModel``; nothing is downloaded) and the folder is the checkpoint when no ``CKPT``
      is given; ``CKPT`` s may also be further state_dict files or folders of that model.
    * ``CKPT``: a state_dict, as a file written by ``torch.save`` (loaded with
      ``torch.load(path, map_location="cpu", weights_only=True)``), a ``.safetensors`` file
      (``safetensors.torch.load_file``) or a Hugging Face folder (``model.safetensors``, sharded
      ``model.safetensors.index.json``, or ``pytorch_model.bin``). A dict holding the state_dict
      under ``"state_dict"`` (Lightning), ``"model_state_dict"`` or ``"model"`` is unwrapped
      (nested wrappers too). It is applied strictly (``load_state_dict``), except that a key
      whose tensor is tied to one the file holds may be missing (Hugging Face drops tied
      copies). When the keys do not match the model's but all carry one prefix whose removal
      makes them match (Lightning's ``model.``, DDP's ``module.``, ``torch.compile``'s
      ``_orig_mod.``), the prefix is stripped and the output says so. Anything else is an
      error. The step column is the last integer in the file name
      (``step_000300.pt`` -> 300), else the checkpoint's position on the command line.
    * ``FILE``: a ``.pt`` file holding ``{"inputs": tensor, "targets": tensor}`` (``targets``
      optional; a bare tensor is taken as inputs), or a ``.npz`` with arrays ``inputs`` and
      optionally ``targets``. Floating inputs/targets are cast to the model's parameter dtype.
      Integer targets mean classification (cross-entropy), float targets regression (Gaussian
      NLL with σ = 1); without targets the Fisher side needs ``--labels sampled`` or
      ``--no-fisher``.
``deadspec repro NAME [ARGS...]``
    Runs the experiment's ``main(ARGS)`` (the table ``EXPERIMENTS`` below): ``rank-deficit``,
    ``rrr``, ``modadd`` (the DDS paper) and ``over-training``, ``detection``, ``grokking``
    (the DDC paper), each a module of :mod:`deadspec.experiments`.
``deadspec demo --out DIR``
    Trains a small over-parameterised MLP (:func:`deadspec.models.demo_mlp`) on generated data,
    saves 6 checkpoints and the data file into DIR, then runs the ``read`` code path over them
    (DIR/readings.csv, DIR/readings.png) and prints a summary table.

Errors (missing files, bad factory strings, state_dict mismatches, unknown layers, a model
whose forward fails on the data, output paths that cannot be written) are printed as
``deadspec: error: ...`` on stderr with exit status 2.

No input is ever overwritten: ``--out`` and ``--plot`` are checked before anything is read
(a file path in a folder that can be written, not a checkpoint, the data file or the model's
file, also through symlinks and hard links, and not each other; ``--plot`` ends in ``.png`` or
another format matplotlib writes), and every file is written to a temporary name and renamed
into place, so a failed write leaves the earlier file as it was.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import math
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from deadspec._checkpoints import HF_PREFIX, CheckpointError, apply_state, hf_factory, load_state
from deadspec._engine.results import RECORD_KEYS
from deadspec._files import atomic_path, folder_problem, output_problem
from deadspec._util import figure, unwrap_compiled
from deadspec._util import write_csv as _write_csv

__all__ = [
    "CLIError",
    "load_checkpoint",
    "load_data",
    "load_factory",
    "main",
    "plot_readings",
    "read_checkpoints",
    "run_demo",
    "step_from_path",
    "write_csv",
]

#: Leading columns of the CSV written by ``deadspec read``; the rest follow Reading.to_records().
LEAD_COLUMNS = ("checkpoint", "step", "layer", "side")
RECORD_COLUMNS = ("n", "dim", *RECORD_KEYS)


class CLIError(Exception):
    """A user-facing error of the command line (printed without a traceback, exit status 2)."""


def _progress_default() -> bool:
    return sys.stderr.isatty()


# ---------------------------------------------------------------------------------------------
# Loading: factory, data, checkpoints
# ---------------------------------------------------------------------------------------------
def _import_module_from_file(path: Path):
    name = "_deadspec_user_" + re.sub(r"\W", "_", str(path.resolve()))
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise CLIError(f"cannot import {str(path)!r} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise CLIError(f"importing {str(path)!r} failed: {type(exc).__name__}: {exc}") from exc
    return module


def load_factory(spec: str) -> Callable[[], Any]:
    """Resolve ``MODULE:FACTORY`` to a callable.

    Parameters
    ----------
    spec : str
        ``MODULE`` is a dotted module path or a path to a ``.py`` file; ``FACTORY`` is an
        attribute (dotted path allowed) of that module. ``hf:FOLDER``: the model of a Hugging
        Face folder's ``config.json`` (randomly initialised; see the module docstring).

    Returns
    -------
    callable

    Raises
    ------
    CLIError
        On a malformed string, a module that cannot be imported, a missing attribute or a
        non-callable.
    """
    if isinstance(spec, str) and spec.startswith(HF_PREFIX):
        try:
            return hf_factory(spec)
        except CheckpointError as exc:
            raise CLIError(str(exc)) from exc
    if not isinstance(spec, str) or ":" not in spec:
        raise CLIError(
            f"--model must be MODULE:FACTORY (e.g. deadspec.models:demo_mlp), got {spec!r}"
        )
    module_part, factory_part = spec.rsplit(":", 1)
    if not module_part or not factory_part:
        raise CLIError(
            f"--model must be MODULE:FACTORY (e.g. deadspec.models:demo_mlp), got {spec!r}"
        )
    if not all(p.isidentifier() for p in factory_part.split(".")):
        raise CLIError(f"--model: FACTORY must be a Python name, got {factory_part!r} in {spec!r}")
    is_file = module_part.endswith(".py") or os.sep in module_part or "/" in module_part
    if is_file:
        path = Path(module_part)
        if not path.is_file():
            raise CLIError(f"--model: module file {module_part!r} does not exist")
        module = _import_module_from_file(path)
    else:
        if not all(p.isidentifier() for p in module_part.split(".")):
            raise CLIError(
                f"--model: MODULE must be a dotted module path or a .py file, got {module_part!r}"
            )
        cwd = os.getcwd()
        if cwd not in sys.path:
            sys.path.insert(0, cwd)
        try:
            module = importlib.import_module(module_part)
        except ImportError as exc:
            raise CLIError(f"--model: cannot import module {module_part!r}: {exc}") from exc
        except Exception as exc:  # the module's own code failed (SyntaxError, NameError, ...)
            raise CLIError(
                f"--model: importing module {module_part!r} failed: {type(exc).__name__}: {exc}"
            ) from exc
    obj: Any = module
    for part in factory_part.split("."):
        if not hasattr(obj, part):
            raise CLIError(f"--model: module {module_part!r} has no attribute {factory_part!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise CLIError(f"--model: {spec!r} is not callable (got {type(obj).__name__})")
    return obj


def _make_model(factory: Callable[[], Any], spec: str):
    from torch import nn

    try:
        model = factory()
    except CheckpointError as exc:
        raise CLIError(str(exc)) from exc
    except Exception as exc:
        raise CLIError(f"--model: calling {spec!r}() failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise CLIError(
            f"--model: {spec!r}() must return a torch.nn.Module, got {type(model).__name__}"
        )
    return unwrap_compiled(model)


def load_data(path: str | os.PathLike) -> tuple[Any, Any]:
    """Load ``(inputs, targets)`` from a ``.pt`` or ``.npz`` file (targets may be None)."""
    import numpy as np
    import torch

    if not isinstance(path, (str, os.PathLike)):
        raise CLIError(f"--data must be a path (str or os.PathLike), got {type(path).__name__}")
    p = Path(path)
    if not p.is_file():
        raise CLIError(f"--data: file {str(p)!r} does not exist")
    if p.suffix == ".npz":
        try:
            with np.load(p, allow_pickle=False) as z:
                if "inputs" not in z.files:
                    raise CLIError(f"--data: {str(p)!r} has no array 'inputs' (arrays: {z.files})")
                inputs = torch.from_numpy(np.array(z["inputs"]))
                targets = torch.from_numpy(np.array(z["targets"])) if "targets" in z.files else None
        except CLIError:
            raise
        except Exception as exc:
            raise CLIError(f"--data: cannot read {str(p)!r}: {type(exc).__name__}: {exc}") from exc
        return inputs, targets
    obj = _torch_load(p, "--data: cannot load")
    if isinstance(obj, torch.Tensor):
        return obj, None
    if not isinstance(obj, dict) or "inputs" not in obj:
        raise CLIError(
            f"--data: {str(p)!r} must hold a tensor or a dict with key 'inputs' "
            f"(and optionally 'targets'), got {type(obj).__name__}"
            + (f" with keys {sorted(map(str, obj))}" if isinstance(obj, dict) else "")
        )
    inputs, targets = obj["inputs"], obj.get("targets")
    for name, t in (("inputs", inputs), ("targets", targets)):
        if t is not None and not isinstance(t, torch.Tensor):
            raise CLIError(f"--data: {name} in {str(p)!r} must be a tensor, got {type(t).__name__}")
    return inputs, targets


def _torch_load(p: Path, what: str) -> Any:
    """``torch.load(p, weights_only=True)`` on the CPU; a failure is a CLIError starting
    with ``what``."""
    import torch

    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CLIError(
            f"{what} {str(p)!r} with torch.load(weights_only=True): {type(exc).__name__}: {exc}"
        ) from exc


def load_checkpoint(model, path: str | os.PathLike) -> str | None:
    """Load a checkpoint into ``model``, with a clear error on anything else.

    ``path`` is a ``torch.save`` d state_dict (bare or under ``"state_dict"``,
    ``"model_state_dict"`` or ``"model"``), a ``.safetensors`` file or a Hugging Face model
    folder; see the module docstring for the rules (strict, tied keys, prefixes).

    Returns
    -------
    str or None
        The prefix stripped from every key to match the model (``"model."``), else None.
    """
    p = Path(path)
    if not p.exists():
        raise CLIError(f"checkpoint {str(p)!r} does not exist")
    try:
        return apply_state(model, load_state(p), f"checkpoint {str(p)!r}")
    except CheckpointError as exc:
        raise CLIError(str(exc)) from exc


def step_from_path(path: str | os.PathLike, index: int) -> int:
    """The last integer in the file name (without suffix), else ``index``."""
    nums = re.findall(r"\d+", Path(path).stem)
    return int(nums[-1]) if nums else index


def _prepare_data(model, inputs, targets):
    import torch

    params = [p for p in model.parameters() if p.is_floating_point()]
    dtype = params[0].dtype if params else torch.get_default_dtype()
    if inputs.is_floating_point():
        inputs = inputs.to(dtype)
    if targets is not None:
        if targets.is_floating_point():
            targets = targets.to(dtype)
        if targets.shape[0] != inputs.shape[0]:
            raise CLIError(
                f"--data: inputs and targets must have the same number of samples, "
                f"got {inputs.shape[0]} and {targets.shape[0]}"
            )
    return inputs, targets


def read_checkpoints(
    checkpoints: Sequence[str | os.PathLike],
    model_spec: str,
    inputs,
    targets=None,
    *,
    layers: Sequence[str] | None = None,
    fisher: bool = True,
    labels: str = "observed",
    batch_size: int | None = None,
    seed: int | None = 0,
    progress: bool | None = None,
    echo: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Read every checkpoint with :func:`deadspec.read`; the code path of ``deadspec read``.

    With ``model_spec="hf:FOLDER"`` and no checkpoints the folder is the checkpoint. ``echo``
    receives a line per checkpoint whose keys had a prefix stripped (default: dropped).

    Returns
    -------
    list of dict
        One row per checkpoint × layer × side: ``checkpoint``, ``step``, then the fields of
        ``Reading.to_records()``.
    """
    from tqdm.auto import tqdm

    import deadspec

    if not checkpoints and isinstance(model_spec, str) and model_spec.startswith(HF_PREFIX):
        checkpoints = [model_spec[len(HF_PREFIX):]]
    if isinstance(checkpoints, (str, os.PathLike)):
        raise CLIError(
            f"checkpoints must be a sequence of paths, got the single path {str(checkpoints)!r} "
            f"(pass [path])"
        )
    if not checkpoints:
        raise CLIError("no checkpoints given")
    missing = [str(c) for c in checkpoints if not Path(c).exists()]
    if missing:
        raise CLIError(f"checkpoint file(s) not found: {', '.join(missing)}")
    factory = load_factory(model_spec)
    if fisher and targets is None and labels == "observed":
        raise CLIError(
            "the Fisher side needs targets: the data file has no 'targets'; "
            "use --labels sampled or --no-fisher"
        )
    if progress is None:
        progress = _progress_default()
    rows: list[dict[str, Any]] = []
    for i, ckpt in enumerate(
        tqdm(list(checkpoints), desc="checkpoints", unit="ckpt", disable=not progress)
    ):
        model = _make_model(factory, model_spec)
        stripped = load_checkpoint(model, ckpt)
        if stripped is not None and echo is not None:
            echo(
                f"checkpoint {str(ckpt)!r}: stripped the prefix {stripped!r} from every key "
                f"to match the model"
            )
        model.eval()
        x, y = _prepare_data(model, inputs, targets)
        if layers:
            names = dict(model.named_modules())
            unknown = [name for name in layers if name not in names]
            if unknown:
                linear = [n for n, m in model.named_modules() if type(m).__name__ == "Linear"]
                raise CLIError(
                    f"--layers: unknown layer(s) {unknown}; the model's modules include "
                    f"{[n for n in names if n][:30]} (Linear layers: {linear})"
                )
        try:
            reading = deadspec.read(
                model,
                x,
                targets=y,
                layers=list(layers) if layers else None,
                fisher=fisher,
                labels=labels,
                batch_size=batch_size,
                seed=seed,
            )
        except (ValueError, TypeError) as exc:
            raise CLIError(f"reading {str(ckpt)!r} failed: {exc}") from exc
        except Exception as exc:  # raised by the user's model (its forward) or loss
            raise CLIError(
                f"reading {str(ckpt)!r} failed in the model's forward or loss: "
                f"{type(exc).__name__}: {exc} (check that --data matches the model built by "
                f"--model {model_spec})"
            ) from exc
        step = step_from_path(ckpt, i)
        for rec in reading.to_records():
            row = {"checkpoint": str(ckpt), "step": step}
            row.update(rec)
            rows.append(row)
    return rows


def write_csv(rows: Sequence[dict[str, Any]], path: str | os.PathLike) -> None:
    """Write rows (from :func:`read_checkpoints`) to CSV, lead columns first (written to a
    temporary file and renamed into place)."""
    _write_csv(path, rows, LEAD_COLUMNS)


def plot_readings(rows: Sequence[dict[str, Any]], path: str | os.PathLike) -> None:
    """Plot logdet_plus, dead_count, lambda_min (log scale) and effective_rank across
    checkpoints (x = step), one line per layer × side."""
    series: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        series.setdefault((str(row["layer"]), str(row["side"])), []).append(row)
    panels = [
        ("logdet_plus", "log det⁺", False),
        ("dead_count", "dead count", False),
        ("lambda_min", "λ_min", True),
        ("effective_rank", "effective rank", False),
    ]
    with figure(path, figsize=(11, 7.5), dpi=110) as fig:
        axes = fig.subplots(2, 2)
        for ax, (key, title, logy) in zip(axes.ravel(), panels):
            _plot_panel(ax, series, key, title, logy)
        handles, labels = axes[0, 0].get_legend_handles_labels()
        if handles:
            fig.legend(handles, labels, loc="outside right upper", fontsize=8)


def _plot_panel(
    ax: Any, series: dict[tuple[str, str], list[dict[str, Any]]], key: str, title: str, logy: bool
) -> None:
    for (layer, side), rs in series.items():
        rs = sorted(rs, key=lambda r: r["step"])
        xs, ys = [], []
        for r in rs:
            v = r.get(key)
            try:
                v = float(v)
            except (TypeError, ValueError):
                continue
            if not math.isfinite(v) or (logy and v <= 0):
                continue
            xs.append(r["step"])
            ys.append(v)
        if xs:
            ax.plot(
                xs,
                ys,
                marker="o",
                ms=3,
                ls="-" if side == "activation" else "--",
                label=f"{layer} ({side})",
            )
    if logy:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)


# ---------------------------------------------------------------------------------------------
# Demo
# ---------------------------------------------------------------------------------------------
DEMO_FACTORY = "deadspec.models:demo_mlp"


def _save(torch: Any, obj: Any, path: Path) -> Path:
    """``torch.save`` through a temporary file renamed into place; an OSError is a CLIError."""
    try:
        with atomic_path(path) as tmp:
            torch.save(obj, tmp)
    except OSError as exc:
        raise CLIError(f"demo: cannot write {str(path)!r}: {exc}") from exc
    return path


def _demo_train(
    out: Path,
    *,
    steps: int,
    n_checkpoints: int,
    seed: int,
    n_samples: int,
    progress: bool,
    weight_decay: float = 3e-2,
) -> list[Path]:
    """Train :func:`deadspec.models.demo_mlp` on a rank-2 ReLU teacher; save checkpoints + data."""
    import torch
    from tqdm.auto import tqdm

    from deadspec.models import DEMO_WIDTHS, demo_mlp

    g = torch.Generator().manual_seed(seed)
    d_in, d_out = DEMO_WIDTHS[0], DEMO_WIDTHS[-1]
    x = torch.randn(n_samples, d_in, generator=g)
    # Teacher: a ReLU network with only 2 hidden units, so most of the student's 16+16 hidden
    # units are spare and weight decay drives them toward dead.
    w1 = torch.randn(d_in, 2, generator=g) / math.sqrt(d_in)
    b1 = 0.1 * torch.randn(2, generator=g)
    w2 = torch.randn(2, d_out, generator=g)
    y = torch.relu(x @ w1 + b1) @ w2 + 0.05 * torch.randn(n_samples, d_out, generator=g)
    out.mkdir(parents=True, exist_ok=True)
    _save(torch, {"inputs": x, "targets": y}, out / "data.pt")

    torch.manual_seed(seed)
    model = demo_mlp()
    # Adam with coupled (L2) weight decay: drives the spare hidden directions toward 0.
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=1e-4)
    ckpt_dir = out / "checkpoints"
    ckpt_dir.mkdir(exist_ok=True)
    save_at = sorted({round(i * steps / (n_checkpoints - 1)) for i in range(n_checkpoints)})
    paths: list[Path] = []

    for step in tqdm(range(steps + 1), desc="demo: training", disable=not progress):
        if step in save_at:
            paths.append(_save(torch, model.state_dict(), ckpt_dir / f"step_{step:06d}.pt"))
        if step == steps:
            break
        opt.zero_grad(set_to_none=True)
        loss = 0.5 * ((model(x) - y) ** 2).sum(dim=1).mean()
        loss.backward()
        opt.step()
        sched.step()
    return paths


def _summary_table(rows: Sequence[dict[str, Any]]) -> str:
    layers = []
    for r in rows:
        if r["layer"] not in layers:
            layers.append(r["layer"])
    by = {(r["step"], r["layer"], r["side"]): r for r in rows}
    steps = sorted({r["step"] for r in rows})
    has_fisher = any(r["side"] == "fisher" for r in rows)
    header = (
        f"{'step':>6} {'layer':>6} {'dim':>4} {'active':>6} {'dead':>4} {'log det+':>10} "
        f"{'eff.rank':>8}"
        + (f" | {'F active':>8} {'F dead':>6} {'F log det+':>11}" if has_fisher else "")
    )
    lines = [header, "-" * len(header)]

    def _f(v, fmt):
        try:
            return format(float(v), fmt)
        except (TypeError, ValueError):
            return str(v)

    for s in steps:
        for layer in layers:
            a = by.get((s, layer, "activation"))
            if a is None:
                continue
            line = (
                f"{s:>6} {layer:>6} {a['dim']:>4} {a['active']:>6} {a['dead_count']:>4} "
                f"{_f(a['logdet_plus'], '10.2f')} {_f(a['effective_rank'], '8.2f')}"
            )
            fr = by.get((s, layer, "fisher"))
            if fr is not None:
                line += (
                    f" | {fr['active']:>8} {fr['dead_count']:>6} {_f(fr['logdet_plus'], '11.2f')}"
                )
            lines.append(line)
    return "\n".join(lines)


def run_demo(
    out: str | os.PathLike,
    *,
    steps: int = 300,
    n_checkpoints: int = 6,
    seed: int = 0,
    n_samples: int = 256,
    fisher: bool = True,
    progress: bool | None = None,
    echo: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """The ``deadspec demo`` job: train, save checkpoints, read them, write CSV + PNG.

    Returns the rows written to ``out/readings.csv``.
    """
    import torch

    if progress is None:
        progress = _progress_default()
    problem = folder_problem("--out", out)  # before the training, not after it
    if problem is not None:
        raise CLIError(f"demo: {problem}")
    out = Path(out)
    if n_checkpoints < 2:
        raise CLIError(f"demo: n_checkpoints must be >= 2, got {n_checkpoints}")
    with torch.random.fork_rng():
        paths = _demo_train(
            out,
            steps=steps,
            n_checkpoints=n_checkpoints,
            seed=seed,
            n_samples=n_samples,
            progress=progress,
        )
    inputs, targets = load_data(out / "data.pt")
    rows = read_checkpoints(paths, DEMO_FACTORY, inputs, targets, fisher=fisher, progress=progress)
    _write("demo", out / "readings.csv", lambda: write_csv(rows, out / "readings.csv"))
    _write("demo", out / "readings.png", lambda: plot_readings(rows, out / "readings.png"))
    echo(_summary_table(rows))
    echo("")
    echo(f"wrote {len(paths)} checkpoints to {out / 'checkpoints'}, data to {out / 'data.pt'}")
    echo(f"wrote {out / 'readings.csv'} and {out / 'readings.png'}")
    echo("the same reading from the command line:")
    echo(
        f"  deadspec read {out / 'checkpoints'}/step_*.pt --model {DEMO_FACTORY} "
        f"--data {out / 'data.pt'} --out readings.csv --plot readings.png"
    )
    return rows


# ---------------------------------------------------------------------------------------------
# info
# ---------------------------------------------------------------------------------------------
def _torch_blas() -> str:
    import torch

    try:
        cfg = torch.__config__.show()
    except Exception:  # pragma: no cover - defensive  # noqa: BLE001
        return "unknown"
    blas = re.search(r"BLAS_INFO=([^,\s]+)", cfg)
    lapack = re.search(r"LAPACK_INFO=([^,\s]+)", cfg)
    parts = [
        f"BLAS={blas.group(1) if blas else 'unknown'}",
        f"LAPACK={lapack.group(1) if lapack else 'unknown'}",
    ]
    try:
        parts.append(f"threads={torch.get_num_threads()}")
    except Exception:  # pragma: no cover  # noqa: BLE001, S110
        pass
    return ", ".join(parts)


def _numpy_blas() -> str:
    import numpy as np

    try:
        deps = np.show_config(mode="dicts").get("Build Dependencies", {})
    except Exception:  # noqa: BLE001
        return "unknown"
    out = []
    for key in ("blas", "lapack"):
        d = deps.get(key, {}) or {}
        out.append(f"{key.upper()}={d.get('name', 'unknown')} {d.get('version', '')}".strip())
    return ", ".join(out)


def cmd_info(args: argparse.Namespace) -> int:
    import platform

    lines = []
    ok = True
    try:
        import deadspec

        lines.append(
            f"deadspec {getattr(deadspec, '__version__', 'unknown')} "
            f"({os.path.dirname(deadspec.__file__)})"
        )
        try:
            bi = deadspec.build_info()
        except Exception as exc:  # noqa: BLE001
            bi = None
            ok = False
            lines.append(f"build: unavailable ({type(exc).__name__}: {exc})")
        if bi is not None:
            lines.append("build:")
            for k in bi:
                lines.append(f"  {k}: {bi[k]}")
    except Exception as exc:  # noqa: BLE001
        ok = False
        lines.append(f"deadspec: import failed ({type(exc).__name__}: {exc})")
    lines.append(f"python {platform.python_version()} ({sys.executable})")
    try:
        import torch

        lines.append(
            f"torch {torch.__version__} ({_torch_blas()}, cuda available="
            f"{torch.cuda.is_available()})"
        )
    except Exception as exc:  # noqa: BLE001
        lines.append(f"torch: not available ({exc})")
    try:
        import numpy as np

        lines.append(f"numpy {np.__version__} ({_numpy_blas()})")
    except Exception as exc:  # pragma: no cover  # noqa: BLE001
        lines.append(f"numpy: not available ({exc})")
    print("\n".join(lines))
    return 0 if ok else 1


# ---------------------------------------------------------------------------------------------
# read / demo / repro commands
# ---------------------------------------------------------------------------------------------
def _read_inputs(args: argparse.Namespace) -> list[tuple[str, Any]]:
    """``(label, path)`` of the files and folders ``deadspec read`` reads."""
    inputs: list[tuple[str, Any]] = [("--data", args.data)]
    model = str(args.model)
    if model.startswith(HF_PREFIX):
        inputs.append(("the --model folder", model[len(HF_PREFIX):]))
    elif ":" in model:
        module = model.rsplit(":", 1)[0]
        if module.endswith(".py") or os.sep in module or "/" in module:
            inputs.append(("the --model file", module))
    inputs += [("the checkpoint", ckpt) for ckpt in args.checkpoints]
    return [(label, path) for label, path in inputs if Path(path).exists()]


def _check_read_outputs(args: argparse.Namespace) -> None:
    """Refuse ``--out``/``--plot`` paths that cannot be written or would replace an input (or
    each other), and a ``--plot`` suffix matplotlib cannot write: before anything is read."""
    inputs = _read_inputs(args)
    problem = output_problem("--out", args.out, inputs=inputs)
    if problem is None and args.plot is not None:
        problem = output_problem(
            "--plot", args.plot, inputs=[*inputs, ("--out", args.out)], figure=True
        )
    if problem is not None:
        raise CLIError(problem)


def _write(what: str, path: Any, write: Callable[[], None]) -> None:
    """Run ``write`` (an atomic write of ``path``); an OSError becomes a CLIError."""
    try:
        write()
    except OSError as exc:
        raise CLIError(f"{what}: cannot write {str(path)!r}: {exc}") from exc


def cmd_read(args: argparse.Namespace) -> int:
    if args.batch_size is not None and args.batch_size < 1:
        raise CLIError(f"--batch-size must be a positive integer, got {args.batch_size}")
    _check_read_outputs(args)  # a bad output path fails now, not after the reading
    load_factory(args.model)  # fail fast on a bad factory string, before loading data
    inputs, targets = load_data(args.data)
    rows = read_checkpoints(
        args.checkpoints,
        args.model,
        inputs,
        targets,
        layers=args.layers,
        fisher=not args.no_fisher,
        labels=args.labels,
        batch_size=args.batch_size,
        seed=args.seed,
        progress=None if args.progress is None else args.progress,
        echo=print,
    )
    _write("--out", args.out, lambda: write_csv(rows, args.out))
    print(f"wrote {len(rows)} rows to {args.out}")
    if args.plot:
        _write("--plot", args.plot, lambda: plot_readings(rows, args.plot))
        print(f"wrote {args.plot}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    run_demo(
        args.out,
        steps=args.steps,
        seed=args.seed,
        fisher=not args.no_fisher,
        progress=args.progress,
    )
    return 0


# `deadspec repro NAME` -> the module whose main(argv) runs the experiment.
EXPERIMENTS = {
    "rank-deficit": "deadspec.experiments.rank_deficit",
    "rrr": "deadspec.experiments.rrr",
    "modadd": "deadspec.experiments.modadd",
    "over-training": "deadspec.experiments.overtraining",
    "detection": "deadspec.experiments.detection",
    "grokking": "deadspec.experiments.grokking",
    "gauge-start": "deadspec.experiments.gauge_start",
    "vit": "deadspec.experiments.vit",
}


def cmd_repro(args: argparse.Namespace) -> int:
    if args.experiment not in EXPERIMENTS:
        raise CLIError(
            f"unknown experiment {args.experiment!r}; choose from {sorted(EXPERIMENTS)}"
        )
    module = importlib.import_module(EXPERIMENTS[args.experiment])
    return int(module.main(list(args.rest)) or 0)


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("deadspec")
    except Exception:  # noqa: BLE001
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of the ``deadspec`` command."""
    parser = argparse.ArgumentParser(
        prog="deadspec",
        description="Read the dead directions of neural networks (Dead-Direction Signatures).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("info", help="version, build flavour, torch/numpy and BLAS/LAPACK in use")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser(
        "read",
        help="read DDS spectra of checkpoints into a CSV (and plot)",
        description="Read activation-side and Fisher-side spectra (deadspec.read) of each "
        "checkpoint. DATA is a .pt file holding {'inputs': tensor, 'targets': tensor "
        "(optional)} or a .npz with arrays inputs/targets.",
    )
    p.add_argument(
        "checkpoints",
        nargs="*",
        metavar="CKPT",
        help="state_dict files (torch.save, bare or under 'state_dict'/'model_state_dict'/"
        "'model'; .safetensors) or Hugging Face folders; may be omitted with --model hf:FOLDER",
    )
    p.add_argument(
        "--model",
        required=True,
        metavar="MODULE:FACTORY",
        help="zero-argument callable returning the nn.Module, e.g. "
        "deadspec.models:demo_mlp or path/to/models.py:make_model; or hf:FOLDER, a Hugging "
        "Face model folder (built from its config.json, no download)",
    )
    p.add_argument("--data", required=True, metavar="FILE", help=".pt or .npz data file")
    p.add_argument(
        "--layers",
        nargs="+",
        default=None,
        metavar="L",
        help="module names (model.named_modules()); default: every nn.Linear",
    )
    p.add_argument("--out", required=True, metavar="CSV", help="output CSV path")
    p.add_argument("--plot", default=None, metavar="PNG", help="also plot the readings")
    p.add_argument("--no-fisher", action="store_true", help="activation side only")
    p.add_argument("--batch-size", type=int, default=None, metavar="B")
    p.add_argument(
        "--labels",
        choices=["observed", "sampled"],
        default="observed",
        help="Fisher targets: observed (empirical Fisher) or sampled from the model",
    )
    p.add_argument("--seed", type=int, default=0, help="seed for --labels sampled")
    p.add_argument("--progress", dest="progress", action="store_true", default=None)
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(func=cmd_read)

    p = sub.add_parser(
        "repro",
        help="reproduce a paper experiment",
        description="Reproduce an experiment; remaining arguments are passed on "
        "(e.g. deadspec repro rank-deficit --quick).",
    )
    p.add_argument("experiment", choices=sorted(EXPERIMENTS))
    p.add_argument("rest", nargs=argparse.REMAINDER, help="arguments of the experiment")
    p.set_defaults(func=cmd_repro)

    p = sub.add_parser("demo", help="train a small MLP, save checkpoints, read them (< 1 min)")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-fisher", action="store_true")
    p.add_argument("--progress", dest="progress", action="store_true", default=None)
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``deadspec`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # `deadspec repro NAME --help` must reach the experiment's own parser.
    if len(argv) >= 2 and argv[0] == "repro" and argv[1] in EXPERIMENTS:
        ns = argparse.Namespace(experiment=argv[1], rest=argv[2:])
        try:
            return cmd_repro(ns)
        except CLIError as exc:
            print(f"deadspec: error: {exc}", file=sys.stderr)
            return 2
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CLIError as exc:
        print(f"deadspec: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file that could not be read or written (permissions, disk full)
        print(f"deadspec: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # pragma: no cover
        print("deadspec: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
