"""Grokking experiment: fraction of seeds that grok modular addition with a deep network.

Claim (Dead-Direction Conditioners, arXiv 2606.29176): on a Muon base at depth 24, 10 of 11
seeds grok with DDCMuon and none with plain Muon.

Setup (ours; the paper's network is not public)
-----------------------------------------------
- **Task**: ``(a + b) mod p`` over all ``p²`` pairs
  (:func:`deadspec.models_transformer.modadd_data`), a seeded random split with a fraction
  ``train_frac`` for training, the rest for test. Full-batch training.
- **Network** (:class:`DeepModAddMLP`): ``embed`` (an ``nn.Embedding(p, d_embed)`` shared by
  a and b, concatenated), then ``depth − 1`` hidden ``nn.Linear`` + ReLU layers of width
  ``width`` (``body.0``, ``body.2``, …), then the head ``head`` (``width -> p``). ``depth`` counts
  the Linear layers, head included. PyTorch's default initialisation. A plain ReLU stack is a
  chain of exact rescaling gauges (Pairs between consecutive layers, the logit shift on the
  head), which is what DDC conditions on. A CPU allows depth 8 by default (``--depth``; the
  paper's 24 with ``--size full``). Defaults: p = 97, half the pairs for training, Muon-path
  learning rate 0.005, AdamW-path 3e-3, weight decay 1.0, 4000 steps, 3 seeds.
- **Optimizers**: ``ddc-muon`` (:class:`deadspec.optim.DDCMuon`, gauges discovered) and
  ``muon`` (``torch.optim.Muon`` on the same hidden matrices, every Linear weight but the head,
  ``adjust_lr_fn="original"`` as DDCMuon, + ``torch.optim.AdamW`` on embedding, head and
  biases). Same learning rates (Muon path ``lr``, AdamW path ``adamw_lr``), momentum 0.95,
  decoupled weight decay ``weight_decay`` on both paths, same initialisation per seed.
- **Grokking criterion**: accuracies are evaluated every ``eval_every`` steps; a seed *groks*
  when the test accuracy reaches ``threshold`` (0.95) within the budget at an evaluation at or
  after the first evaluation where the training accuracy is 100 % (``fit_step ≤ grok_step``;
  ``delay = grok_step − fit_step`` is reported, 0 meaning that test accuracy followed without
  a plateau).

Outputs (``--out DIR``, default ``./deadspec-out/grokking``): ``grokking.csv`` (one row per
optimizer × seed), ``grokking_curves.csv`` (one row per run × evaluation) and ``grokking.png``
(train/test accuracy curves; fraction of seeds that grok).

Run: ``python -m deadspec.experiments.grokking [--quick] [--size full] [--depth D]`` or
``deadspec repro grokking``.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deadspec.experiments import _harness
from deadspec.experiments._optimizers import OPTIMIZERS as ALL_OPTIMIZERS
from deadspec.experiments._optimizers import make_optimizer

__all__ = ["CSV_COLUMNS", "DEFAULT_OUT", "DeepModAddMLP", "GrokkingResult", "main", "run"]

DEFAULT_OUT = Path("deadspec-out") / "grokking"
OPTIMIZERS = ("ddc-muon", "muon")
#: The paper's seeds that grok at depth 24: (grokked, seeds).
PAPER = {"ddc-muon": (10, 11), "muon": (0, 11)}

CSV_COLUMNS = (
    "optimizer",
    "seed",
    "depth",
    "p",
    "train_frac",
    "steps",
    "fit_step",
    "grok_step",
    "delay",
    "grokked",
    "final_train_acc",
    "final_test_acc",
    "best_test_acc",
    "final_train_loss",
    "diverged",
    "seconds",
)
CURVE_COLUMNS = ("optimizer", "seed", "step", "train_loss", "train_acc", "test_acc")


@dataclasses.dataclass(frozen=True)
class GrokSizes:
    """Sizes of the grokking runs."""

    p: int
    train_frac: float
    d_embed: int
    width: int
    depth: int
    steps: int
    eval_every: int
    seeds: int


SIZES = {
    "quick": GrokSizes(p=7, train_frac=0.6, d_embed=8, width=16, depth=4, steps=40,
                       eval_every=10, seeds=2),
    "default": GrokSizes(p=97, train_frac=0.5, d_embed=32, width=128, depth=8, steps=4000,
                         eval_every=100, seeds=3),
    "full": GrokSizes(p=97, train_frac=0.5, d_embed=64, width=128, depth=24, steps=20000,
                      eval_every=100, seeds=11),
}  # fmt: skip


class DeepModAddMLP(nn.Module):
    """A deep plain ReLU MLP on embedded ``(a, b)`` pairs for ``(a + b) mod p``.

    Parameters
    ----------
    p : int
        Modulus (classes).
    d_embed, width : int
        Embedding and hidden widths.
    depth : int
        Number of ``nn.Linear`` layers, head included (≥ 2).

    Notes
    -----
    Input: tokens ``(N, 3)`` as :func:`deadspec.models_transformer.modadd_data` returns
    (``a b =``; the ``=`` column is ignored) or ``(N, 2)``. Output: logits ``(N, p)``.
    """

    def __init__(self, p: int, d_embed: int = 32, width: int = 64, depth: int = 8) -> None:
        super().__init__()
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 2:
            raise ValueError(f"deadspec.DeepModAddMLP: depth must be an integer ≥ 2, got {depth!r}")
        self.p = int(p)
        self.embed = nn.Embedding(self.p, d_embed)
        layers: list[nn.Module] = [nn.Linear(2 * d_embed, width), nn.ReLU()]
        for _ in range(depth - 2):
            layers += [nn.Linear(width, width), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, self.p)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        e = self.embed(tokens[:, :2]).flatten(1)
        return self.head(self.body(e))


@dataclasses.dataclass
class GrokkingResult:
    """What :func:`run` returns.

    Attributes
    ----------
    rows : list of dict
        One per optimizer × seed (keys :data:`CSV_COLUMNS`).
    summary : list of dict
        Per optimizer: ``optimizer``, ``grokked``, ``seeds``, ``fraction``, ``fitted``,
        ``median_delay``, ``paper``.
    curves : list of dict
        One per run × evaluation (keys :data:`CURVE_COLUMNS`).
    sizes : GrokSizes
    csv_path, curves_path, png_path : Path or None
    seconds : float
    """

    rows: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    curves: list[dict[str, Any]]
    sizes: GrokSizes
    csv_path: Path | None
    curves_path: Path | None
    png_path: Path | None
    seconds: float


def _split(p: int, train_frac: float, seed: int):
    from deadspec.models_transformer import modadd_data

    x, y = modadd_data(p)
    perm = torch.randperm(p * p, generator=torch.Generator().manual_seed(int(seed)))
    n = max(1, min(p * p - 1, round(train_frac * p * p)))
    return x[perm[:n]], y[perm[:n]], x[perm[n:]], y[perm[n:]]


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(dim=1) == y).float().mean())


def train_one(
    sizes: GrokSizes,
    optimizer: str,
    seed: int,
    *,
    lr: float,
    adamw_lr: float,
    weight_decay: float,
    threshold: float = 0.95,
) -> dict[str, Any]:
    """One run: returns the CSV row (minus ``optimizer``/``seed``) and the curves."""
    x_tr, y_tr, x_te, y_te = _split(sizes.p, sizes.train_frac, 10_000 + seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = DeepModAddMLP(sizes.p, sizes.d_embed, sizes.width, sizes.depth)
    opt = make_optimizer(
        optimizer,
        model,
        lr=adamw_lr,
        muon_lr=lr,
        weight_decay=weight_decay,
        head="head",
        muon_adjust="original",
        betas=(0.9, 0.98),
    )
    curve: list[tuple[int, float, float, float]] = []
    fit_step = grok_step = None
    diverged = False
    t0 = time.perf_counter()
    for step in range(sizes.steps + 1):
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x_tr), y_tr)
        lval = float(loss.detach())
        if not math.isfinite(lval):
            diverged = True
            curve.append((step, lval, float("nan"), float("nan")))
            break
        if step % sizes.eval_every == 0 or step == sizes.steps:
            tr, te = _accuracy(model, x_tr, y_tr), _accuracy(model, x_te, y_te)
            curve.append((step, lval, tr, te))
            if fit_step is None and tr >= 1.0:
                fit_step = step
            if grok_step is None and fit_step is not None and te >= threshold:
                grok_step = step
        if step == sizes.steps:
            break
        loss.backward()
        opt.step()
    seconds = time.perf_counter() - t0
    te_all = [c[3] for c in curve if math.isfinite(c[3])]
    last = curve[-1]
    return {
        "depth": sizes.depth,
        "p": sizes.p,
        "train_frac": sizes.train_frac,
        "steps": sizes.steps,
        "fit_step": fit_step,
        "grok_step": grok_step,
        "delay": None if grok_step is None else grok_step - fit_step,
        "grokked": grok_step is not None,
        "final_train_acc": last[2],
        "final_test_acc": last[3],
        "best_test_acc": max(te_all) if te_all else float("nan"),
        "final_train_loss": last[1],
        "diverged": diverged,
        "seconds": round(seconds, 3),
        "_curve": curve,
    }


def grok_sizes(quick: bool, size: str, **overrides: Any) -> GrokSizes:
    """The sizes for ``--quick`` / ``--size``, with non-None ``overrides`` applied (validated)."""
    fn = "grokking.run"
    if size not in ("default", "full"):
        raise ValueError(f"deadspec.{fn}: size must be 'default' or 'full', got {size!r}")
    changes = {k: v for k, v in overrides.items() if v is not None}
    sizes = dataclasses.replace(SIZES["quick" if quick else size], **changes)
    for k in ("seeds", "p", "steps", "width"):
        v = getattr(sizes, k)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"deadspec.{fn}: {k} must be a positive integer, got {v!r}")
    if sizes.p < 2:
        raise ValueError(f"deadspec.{fn}: p must be at least 2, got {sizes.p}")
    if isinstance(sizes.depth, bool) or not isinstance(sizes.depth, int) or sizes.depth < 2:
        raise ValueError(f"deadspec.{fn}: depth must be an integer ≥ 2, got {sizes.depth!r}")
    if not 0.0 < sizes.train_frac < 1.0:
        raise ValueError(f"deadspec.{fn}: train_frac must be in (0, 1), got {sizes.train_frac}")
    return sizes


def run(
    out: str | Path | None = DEFAULT_OUT,
    *,
    quick: bool = False,
    size: str = "default",
    seeds: int | None = None,
    depth: int | None = None,
    p: int | None = None,
    steps: int | None = None,
    width: int | None = None,
    train_frac: float | None = None,
    optimizers: Sequence[str] = OPTIMIZERS,
    lr: float = 0.005,
    adamw_lr: float = 3e-3,
    weight_decay: float = 1.0,
    threshold: float = 0.95,
    threads: int | None = 1,
    plot: bool = True,
    progress: bool | None = None,
    echo: Callable[[str], None] | None = print,
) -> GrokkingResult:
    """Run the grokking experiment; write the CSVs and the plot into ``out``.

    Parameters
    ----------
    out : str or Path or None
        Output folder (created); None writes nothing.
    quick : bool
        Tiny sizes (p = 7, depth 4, 40 steps, 2 seeds; for tests).
    size : {"default", "full"}
        ``"default"``: p = 97, half the pairs for training, depth 8 × width 128, 4000
        full-batch steps, 3 seeds (~20–25 min on 2 free cores). ``"full"``: depth 24, 20000
        steps, 11 seeds (the paper's depth and seed count; hours on a CPU).
    seeds, depth, p, steps, width, train_frac : optional
        Override the sizes (seeds are 0 .. seeds−1).
    optimizers : sequence of str
        Subset of ``("ddc-muon", "muon")`` (``"ddc-adam"`` and ``"adamw"`` also accepted).
    lr : float
        Muon-path learning rate (default 0.005: at 0.02, DDCMuon's deep ReLU stack grows its
        activations layer by layer and diverges at depth 8).
    adamw_lr : float
        AdamW-path learning rate (embedding, head, biases; default 3e-3).
    weight_decay : float
        Decoupled weight decay on both paths (default 1.0, the grokking regime).
    threshold : float
        Test accuracy that counts as grokked (default 0.95).
    threads : int, optional
        torch intra-op threads (default 1).
    plot, progress, echo
        As the other experiments.

    Returns
    -------
    GrokkingResult
    """
    sizes = grok_sizes(
        quick, size, seeds=seeds, depth=depth, p=p, steps=steps, width=width, train_frac=train_frac
    )
    bad = [o for o in optimizers if o not in ALL_OPTIMIZERS]
    if bad or not optimizers:
        raise ValueError(
            f"deadspec.grokking.run: optimizers must be a non-empty subset of {ALL_OPTIMIZERS}, "
            f"got {list(optimizers)}"
        )
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"deadspec.grokking.run: threshold must be in (0, 1], got {threshold!r}")
    _harness.check_out(out, "grokking.run")  # before any work: a bad folder fails now
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    curves: list[dict[str, Any]] = []
    jobs = [(o, s) for s in range(sizes.seeds) for o in optimizers]
    with _harness.threads(threads):
        bar = _harness.progress_bar(jobs, "grokking", progress)
        for o, s in bar:
            bar.set_postfix_str(f"{o} seed={s}")
            res = train_one(
                sizes,
                o,
                s,
                lr=lr,
                adamw_lr=adamw_lr,
                weight_decay=weight_decay,
                threshold=threshold,
            )
            for step, loss, tr, te in res.pop("_curve"):
                curves.append(
                    {
                        "optimizer": o,
                        "seed": s,
                        "step": step,
                        "train_loss": loss,
                        "train_acc": tr,
                        "test_acc": te,
                    }
                )
            rows.append({"optimizer": o, "seed": s, **res})
    summary = summarize(rows, optimizers)
    paths = _harness.write_outputs(
        out,
        {"grokking.csv": (rows, CSV_COLUMNS), "grokking_curves.csv": (curves, CURVE_COLUMNS)},
        {"grokking.png": lambda path: plot_grokking(curves, summary, path, sizes)}
        if plot
        else None,
    )
    seconds = time.perf_counter() - t0
    _harness.report(
        echo, [format_table(rows), "", format_summary(summary, sizes)], paths.values(), seconds
    )
    return GrokkingResult(
        rows=rows,
        summary=summary,
        curves=curves,
        sizes=sizes,
        csv_path=paths.get("grokking.csv"),
        curves_path=paths.get("grokking_curves.csv"),
        png_path=paths.get("grokking.png"),
        seconds=seconds,
    )


def summarize(rows: Sequence[dict[str, Any]], optimizers: Sequence[str]) -> list[dict[str, Any]]:
    """Per optimizer: seeds that grok, that fit, median delay."""
    out = []
    for o, mine in _harness.groups(rows, "optimizer", optimizers):
        g = sum(bool(r["grokked"]) for r in mine)
        delays = [float(r["delay"]) for r in mine if r["delay"] is not None]
        out.append(
            {
                "optimizer": o,
                "grokked": g,
                "seeds": len(mine),
                "fraction": g / len(mine),
                "fitted": sum(r["fit_step"] is not None for r in mine),
                "median_delay": float(np.median(delays)) if delays else float("nan"),
                "paper": PAPER.get(o),
            }
        )
    return out


_Col = _harness.Col
_TABLE = (
    _Col("optimizer", "optimizer", "<9"),
    _Col("seed", "seed", ">4"),
    _Col("fit@", "fit_step", "6.0f"),
    _Col("grok@", "grok_step", "6.0f"),
    _Col("train acc", "final_train_acc", "9.3f"),
    _Col("test acc", "final_test_acc", "8.3f"),
    _Col("best test", "best_test_acc", "9.3f"),
    _Col("loss", "final_train_loss", "8.4f"),
    _Col("s", "seconds", "6.1f"),
)
_SUMMARY = (
    _Col("optimizer", "optimizer", "<9"),
    _Col("grokked", lambda s: f"{s['grokked']}/{s['seeds']}", ">8"),
    _Col("fitted", "fitted", ">6"),
    _Col("median delay", "median_delay", "12.0f"),
    _Col(
        "paper (depth 24)",
        lambda s: "-" if s["paper"] is None else "/".join(map(str, s["paper"])),
        ">16",
    ),
)


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A plain-text table of the per-run rows."""
    return _harness.format_table(
        rows, _TABLE, suffix=lambda r: "  DIVERGED" if r["diverged"] else ""
    )


def format_summary(summary: Sequence[dict[str, Any]], sizes: GrokSizes) -> str:
    """A plain-text table of the per-optimizer fractions."""
    table = _harness.format_table(summary, _SUMMARY)
    return f"[depth {sizes.depth}, p = {sizes.p}]\n{table}"


def plot_grokking(curves, summary, path: Path, sizes: GrokSizes) -> None:
    """Train (dashed) / test (solid) accuracy per optimizer and seed; fraction that grok."""
    import matplotlib

    opts = [s["optimizer"] for s in summary]
    ncols = len(opts) + 1
    cmap = matplotlib.colormaps["viridis"]
    with _harness.figure(path, figsize=(3.6 * ncols, 3.2)) as fig:
        axes = fig.subplots(1, ncols, squeeze=False)
        for j, o in enumerate(opts):
            ax = axes[0, j]
            for s in range(sizes.seeds):
                pts = [c for c in curves if c["optimizer"] == o and c["seed"] == s]
                if not pts:
                    continue
                col = cmap(s / max(1, sizes.seeds - 1))
                steps = [c["step"] for c in pts]
                ax.plot(steps, [c["test_acc"] for c in pts], color=col, lw=1.2)
                ax.plot(steps, [c["train_acc"] for c in pts], color=col, lw=0.8, ls="--")
            ax.axhline(0.95, color="k", lw=0.8, ls=":")
            ax.set_ylim(-0.02, 1.02)
            ax.set_title(f"{o}: test (solid), train (dashed)", fontsize=9)
            ax.set_xlabel("step")
            ax.set_ylabel("accuracy")
            ax.grid(alpha=0.3)
        ax = axes[0, -1]
        ax.bar(
            range(len(opts)),
            [s["fraction"] for s in summary],
            color=["C0", "C2", "C1", "C3"][: len(opts)],
        )
        for k, s in enumerate(summary):
            if s["paper"] is not None:
                ax.scatter([k], [s["paper"][0] / s["paper"][1]], marker="*", color="k", s=60)
        ax.set_xticks(range(len(opts)))
        ax.set_xticklabels(opts, fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("fraction of seeds that grok")
        ax.set_title("grokked (★ paper, depth 24)", fontsize=9)
        fig.suptitle(
            f"grokking: (a+b) mod {sizes.p}, train {sizes.train_frac:.0%}, depth {sizes.depth} × "
            f"width {sizes.width}, {sizes.steps} steps, {sizes.seeds} seeds",
            fontsize=10,
        )


def _parser():
    p = _harness.parser(
        "python -m deadspec.experiments.grokking",
        "Grokking: fraction of seeds of a deep ReLU MLP that grok modular addition, "
        "DDCMuon vs Muon.",
        DEFAULT_OUT,
        sizes=("default", "full"),
        seed=False,
        threads=True,
    )
    p.add_argument("--seeds", type=int, default=None)
    p.add_argument("--depth", type=int, default=None)
    p.add_argument("--p", type=int, default=None, help="modulus")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--train-frac", type=float, default=None)
    p.add_argument("--optimizers", nargs="+", choices=ALL_OPTIMIZERS, default=list(OPTIMIZERS))
    p.add_argument("--lr", type=float, default=0.005, help="Muon-path learning rate")
    p.add_argument("--adamw-lr", type=float, default=3e-3)
    p.add_argument("--weight-decay", type=float, default=1.0)
    p.add_argument("--threshold", type=float, default=0.95)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns 0 (2 on a usage error)."""
    return _harness.cli_main("grokking", _parser(), run, argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
