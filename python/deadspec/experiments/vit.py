"""The ViT claim: a small vision transformer trained with DDCAdam against AdamW (issue #15,
part 5).

Claim (Dead-Direction Conditioners): on a vision transformer DDCAdam reaches a lower validation
loss than AdamW (1.71 against 2.12 in the paper; its model and data are not public).

Setup (ours)
------------
- **Data**: scikit-learn's bundled handwritten digits (``sklearn.datasets.load_digits``: 1,797
  images of 8 × 8 pixels, 10 classes; installed with scikit-learn, nothing downloaded), pixels
  scaled to [0, 1]. Each seed draws its own split: ``n_train`` images for training, the rest
  for validation.
- **Model**: :class:`TinyViT`: 2 × 2 patches (16 tokens of 4 pixels) embedded by a linear map,
  learned positions, a class token, ``n_layers`` pre-LN
  :class:`~deadspec.models_transformer.TransformerBlock` s (not causal, ReLU MLP), a final
  LayerNorm and a linear head on the class token.
- **Training**: minibatches of ``batch`` images drawn with the seed, constant learning rate,
  ``steps`` steps, cross-entropy; validation loss and accuracy every ``eval_every`` steps.
- **Arms**: ``adamw`` and ``ddc-adam`` by default (``--optimizers`` adds ``ddc-adam-split``,
  ``muon``, ``ddc-muon``); DDC gauges: the discovered ones plus ``NormScale(ln_f → head)`` and
  ``LogitShift(head)``. Adam betas (0.9, 0.98).
- **Tuning, the same for every arm**: each arm's learning rate is the one of the grid with the
  lowest minimum validation loss averaged over ``tune_seeds`` tuning seeds (seeds 1000, 1001, …,
  not used for the measurement). The measured seeds are ``seed … seed + seeds − 1``.
- **Reported**, per arm over the measured seeds: final and minimum validation loss, final
  validation accuracy and final training loss, each mean ± standard error; per DDC arm, the
  paired difference to AdamW (same seed: same split, same initialisation, same batches) with a
  paired t-test.

Verdict rule (stated before the runs, printed with the results)
----------------------------------------------------------------
Per DDC arm, on the final validation loss against AdamW: *reproduced* if its mean is lower
with a paired t-test p < 0.05; *refuted* if it is higher with p < 0.05; otherwise
*inconclusive*, as it is with fewer than 5 pairs of finite losses. A DDC arm that diverges
in more seeds than AdamW is *refuted*. The same comparison on the minimum
validation loss is reported beside it (a lower final loss with an equal minimum means less
over-fitting, not a better fit).

Outputs (``--out DIR``, default ``./deadspec-out/vit``): ``vit.csv`` (one row per measured
run), ``vit_tuning.csv`` (every tuning run), ``vit_curves.csv`` (the measured runs' curves),
``vit.png`` (validation curves and the per-seed final losses), ``config.json``.

Run: ``deadspec repro vit [--quick] [--size full]`` (needs scikit-learn for the digits).
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deadspec.experiments import _harness
from deadspec.experiments._lm import COLORS
from deadspec.experiments._optimizers import OPTIMIZERS, make_optimizer
from deadspec.experiments._stats import mean_se, paired_t
from deadspec.models_transformer import TransformerBlock

__all__ = [
    "DEFAULT_OUT",
    "TinyViT",
    "ViTResult",
    "load_digits",
    "main",
    "patches",
    "run",
    "vit_gauges",
]

DEFAULT_OUT = Path("deadspec-out") / "vit"
DEFAULT_ARMS = ("adamw", "ddc-adam")
#: The paper's validation losses.
PAPER_VAL = {"ddc-adam": 1.71, "adamw": 2.12}
ALPHA = 0.05
#: Fewer measured seeds than this give an inconclusive verdict whatever the test says.
MIN_SEEDS = 5


@dataclasses.dataclass(frozen=True)
class ViTSizes:
    """Sizes of the ViT runs."""

    n_train: int
    d_model: int
    n_heads: int
    n_layers: int
    steps: int
    batch: int
    eval_every: int
    lrs: tuple[float, ...]
    weight_decay: float
    seeds: int
    tune_seeds: int


SIZES = {
    "quick": ViTSizes(200, 16, 2, 1, 30, 32, 10, (1e-3, 3e-3), 0.1, 2, 1),
    "default": ViTSizes(1000, 32, 2, 2, 1500, 64, 50, (3e-4, 1e-3, 3e-3, 1e-2), 0.1, 8, 2),
    "full": ViTSizes(1200, 64, 4, 4, 4000, 64, 100, (1e-4, 3e-4, 1e-3, 3e-3, 1e-2), 0.1, 12, 3),
}

RUN_COLUMNS = (
    "optimizer",
    "lr",
    "weight_decay",
    "seed",
    "final_train",
    "final_val",
    "min_val",
    "min_val_step",
    "final_acc",
    "paper_val",
    "diverged",
    "seconds",
)
TUNING_COLUMNS = ("optimizer", "lr", "seed", "min_val", "final_val", "chosen")
CURVE_COLUMNS = ("optimizer", "seed", "step", "train_loss", "val_loss", "val_acc")


def load_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's bundled digits as (N, 8, 8) float32 in [0, 1] and (N,) int64 labels."""
    try:
        from sklearn.datasets import load_digits as sk_digits
    except ImportError as exc:
        raise ValueError(
            "deadspec repro vit: needs scikit-learn for its bundled digits images "
            "(pip install scikit-learn); nothing is downloaded"
        ) from exc
    d = sk_digits()
    x = torch.as_tensor(np.asarray(d.images, dtype=np.float32) / 16.0)
    return x, torch.as_tensor(np.asarray(d.target, dtype=np.int64))


def patches(images: torch.Tensor) -> torch.Tensor:
    """(N, 8, 8) images → (N, 16, 4): the 2 × 2 patches in row-major order, each's pixels
    row-major."""
    if images.ndim != 3 or tuple(images.shape[1:]) != (8, 8):
        raise ValueError(f"deadspec.TinyViT: images must be (N, 8, 8), got {tuple(images.shape)}")
    n = images.shape[0]
    return images.reshape(n, 4, 2, 4, 2).permute(0, 1, 3, 2, 4).reshape(n, 16, 4)


class TinyViT(nn.Module):
    """A small vision transformer for 8 × 8 single-channel images.

    2 × 2 patches (16 tokens of 4 pixels) → ``patch`` (linear) + learned positions; a class token
    in front; ``n_layers`` pre-LN non-causal TransformerBlocks; ``ln_f``; ``head`` on the class
    token.
    """

    def __init__(self, d_model: int = 32, n_heads: int = 2, n_layers: int = 2, n_classes: int = 10):
        super().__init__()
        self.patch = nn.Linear(4, d_model)
        self.pos = nn.Parameter(torch.randn(17, d_model) * 0.02)
        self.cls = nn.Parameter(torch.zeros(1, 1, d_model))
        self.blocks = nn.ModuleList(
            [TransformerBlock(d_model, n_heads, causal=False) for _ in range(n_layers)]
        )
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, n_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        n = images.shape[0]
        x = torch.cat([self.cls.expand(n, 1, -1), self.patch(patches(images))], dim=1) + self.pos
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x[:, 0]))


def vit_gauges(model: TinyViT, *, rotations: bool = False) -> list[Any]:
    """The discovered gauges of ``model`` plus the head's (NormScale(ln_f → head),
    LogitShift(head)); HeadRotations only with ``rotations``."""
    import deadspec.gauges as G

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        found = list(G.discover(model, chains=False))
    if not rotations:
        found = [g for g in found if not isinstance(g, G.HeadRotation)]
    from deadspec.gauges._modules import as_tuple

    def norm_to_head(g: Any) -> bool:
        return isinstance(g, G.NormScale) and g.norm == "ln_f" and "head" in as_tuple(g.consumer)

    extra = [] if any(norm_to_head(g) for g in found) else [G.NormScale("ln_f", "head")]
    if not any(isinstance(g, G.LogitShift) and g.layer == "head" for g in found):
        extra.append(G.LogitShift("head"))
    return found + extra


def _split(n: int, n_train: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(17 + seed))
    return perm[:n_train], perm[n_train:]


def train_vit(
    sizes: ViTSizes, optimizer: str, lr: float, seed: int, data: tuple[torch.Tensor, torch.Tensor]
) -> dict[str, Any]:
    """One run; the curves and their summary."""
    x, y = data
    tr, va = _split(len(y), sizes.n_train, seed)
    x_tr, y_tr, x_va, y_va = x[tr], y[tr], x[va], y[va]
    with torch.random.fork_rng():
        torch.manual_seed(1000 + seed)
        model = TinyViT(sizes.d_model, sizes.n_heads, sizes.n_layers)
    ddc = optimizer.startswith("ddc")
    gauges = vit_gauges(model, rotations=optimizer == "ddc-muon") if ddc else None
    opt = make_optimizer(
        optimizer, model, lr=lr, weight_decay=sizes.weight_decay, head="head", gauges=gauges
    )
    gen = torch.Generator().manual_seed(31 + seed)
    loss_fn = nn.functional.cross_entropy
    steps, tr_loss, va_loss, va_acc = [], [], [], []
    diverged = False
    t0 = time.perf_counter()
    for step in range(sizes.steps + 1):
        if step % sizes.eval_every == 0 or step == sizes.steps:
            model.eval()
            with torch.no_grad():
                lt = float(loss_fn(model(x_tr), y_tr))
                logits = model(x_va)
                lv = float(loss_fn(logits, y_va))
                acc = float((logits.argmax(dim=1) == y_va).float().mean())
            model.train()
            steps.append(step)
            tr_loss.append(lt)
            va_loss.append(lv)
            va_acc.append(acc)
            if not (math.isfinite(lt) and math.isfinite(lv)):
                diverged = True
                break
        if step == sizes.steps:
            break
        idx = torch.randint(0, len(y_tr), (sizes.batch,), generator=gen)
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x_tr[idx]), y_tr[idx]).backward()
        opt.step()
    seconds = time.perf_counter() - t0
    va = np.asarray(va_loss)
    i_min = int(np.nanargmin(np.where(np.isfinite(va), va, np.nan))) if np.isfinite(va).any() else 0
    return {
        "steps": steps,
        "train_loss": tr_loss,
        "val_loss": va_loss,
        "val_acc": va_acc,
        "final_train": tr_loss[-1],
        "final_val": va_loss[-1] if not diverged else float("nan"),
        "min_val": float(va[i_min]) if np.isfinite(va).any() else float("nan"),
        "min_val_step": steps[i_min],
        "final_acc": va_acc[-1],
        "diverged": diverged,
        "seconds": seconds,
    }


@dataclasses.dataclass
class ViTResult:
    """What :func:`run` returns."""

    rows: list[dict[str, Any]]
    tuning: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    verdicts: list[dict[str, Any]]
    sizes: ViTSizes
    paths: dict[str, Path]
    seconds: float


RULE = (
    f"rule (per DDC arm, final validation loss against adamw, paired over seeds): reproduced if "
    f"its mean is lower with paired t-test p < {ALPHA:g}; refuted if higher with p < {ALPHA:g}; "
    f"else inconclusive, and inconclusive with fewer than {MIN_SEEDS} pairs of finite losses; "
    f"refuted if the DDC arm diverged in more seeds than adamw (the minimum validation loss is "
    f"compared beside it)"
)


def summarize(rows: Sequence[dict[str, Any]], arms: Sequence[str]) -> list[dict[str, Any]]:
    """Per arm: mean ± standard error over the measured seeds."""
    out = []
    for arm in arms:
        mine = [r for r in rows if r["optimizer"] == arm]
        row: dict[str, Any] = {"optimizer": arm, "lr": mine[0]["lr"], "seeds": len(mine)}
        for key in ("final_val", "min_val", "final_acc", "final_train"):
            row[f"{key}_mean"], row[f"{key}_se"] = mean_se([r[key] for r in mine])
        row["diverged"] = sum(bool(r["diverged"]) for r in mine)
        row["paper_val"] = PAPER_VAL.get(arm, float("nan"))
        out.append(row)
    return out


def verdicts(rows: Sequence[dict[str, Any]], arms: Sequence[str]) -> list[dict[str, Any]]:
    """The rule of the module docstring for every DDC arm (with adamw among the arms)."""
    if "adamw" not in arms:
        return []
    base = {r["seed"]: r for r in rows if r["optimizer"] == "adamw"}
    out = []
    for arm in arms:
        if not arm.startswith("ddc"):
            continue
        mine = sorted((r for r in rows if r["optimizer"] == arm), key=lambda r: r["seed"])
        fin = paired_t([r["final_val"] for r in mine], [base[r["seed"]]["final_val"] for r in mine])
        mn = paired_t([r["min_val"] for r in mine], [base[r["seed"]]["min_val"] for r in mine])
        # a diverged run has no final loss: it counts against its arm
        div = sum(bool(r["diverged"]) for r in mine)
        div_base = sum(bool(base[r["seed"]]["diverged"]) for r in mine)
        if div > div_base:
            v = "refuted"
        elif fin["n"] < MIN_SEEDS:
            v = "inconclusive"
        elif fin["mean"] < 0 and fin["p"] < ALPHA:
            v = "reproduced"
        elif fin["mean"] > 0 and fin["p"] < ALPHA:
            v = "refuted"
        else:
            v = "inconclusive"
        out.append(
            {
                "optimizer": arm,
                "verdict": v,
                "d_final_val": fin["mean"],
                "d_final_val_se": fin["se"],
                "p_final_val": fin["p"],
                "d_min_val": mn["mean"],
                "d_min_val_se": mn["se"],
                "p_min_val": mn["p"],
                "pairs": fin["n"],
                "diverged": div,
                "diverged_base": div_base,
            }
        )
    return out


def _resolve(
    fn: str,
    quick: bool,
    size: str,
    optimizers: Sequence[str],
    seeds: int | None,
    steps: int | None,
    lrs: Sequence[float] | None,
) -> ViTSizes:
    """The sizes of a run with its overrides, each checked (ValueError naming ``fn``)."""
    if size not in ("default", "full"):
        raise ValueError(f"{fn}: size must be 'default' or 'full', got {size!r}")
    sz = SIZES["quick" if quick else size]
    bad = [o for o in optimizers if o not in OPTIMIZERS]
    if bad or not optimizers:
        raise ValueError(
            f"{fn}: optimizers must be a non-empty subset of {OPTIMIZERS}, got {list(optimizers)}"
        )
    if seeds is not None:
        if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 2:
            raise ValueError(f"{fn}: seeds must be an integer >= 2 (a paired test), got {seeds!r}")
        sz = dataclasses.replace(sz, seeds=seeds)
    if steps is not None:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"{fn}: steps must be a positive integer, got {steps!r}")
        sz = dataclasses.replace(sz, steps=steps)
    if lrs is not None:
        grid = tuple(float(v) for v in lrs)
        if not grid or any(not (math.isfinite(v) and v > 0) for v in grid):
            raise ValueError(f"{fn}: lrs must be positive finite numbers, got {list(lrs)}")
        sz = dataclasses.replace(sz, lrs=grid)
    return sz


def _tune(
    sz: ViTSizes,
    arms: Sequence[str],
    tune_seeds: Sequence[int],
    data: tuple[torch.Tensor, torch.Tensor],
    bar: Any,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Each arm's learning rate: the lowest mean minimum validation loss over the tuning seeds
    (a diverged run counts as infinite). Returns the choice and the tuning rows."""
    chosen: dict[str, float] = {}
    tuning: list[dict[str, Any]] = []
    for arm in arms:
        scores = {}
        for lr in sz.lrs:
            mins = []
            for s in tune_seeds:
                bar.set_postfix_str(f"tuning {arm} lr={lr:g} seed {s}")
                r = train_vit(sz, arm, lr, s, data)
                bar.update(1)
                mins.append(r["min_val"] if not r["diverged"] else math.inf)
                tuning.append(
                    {
                        "optimizer": arm,
                        "lr": lr,
                        "seed": s,
                        "min_val": r["min_val"],
                        "final_val": r["final_val"],
                        "chosen": False,
                    }
                )
            finite = [m for m in mins if math.isfinite(m)]
            scores[lr] = sum(finite) / len(finite) if len(finite) == len(mins) else math.inf
        chosen[arm] = min(sz.lrs, key=lambda v: (scores[v], v))
        for t in tuning:
            if t["optimizer"] == arm:
                t["chosen"] = t["lr"] == chosen[arm]
    return chosen, tuning


def _measure(
    sz: ViTSizes,
    arms: Sequence[str],
    chosen: dict[str, float],
    measured: Sequence[int],
    data: tuple[torch.Tensor, torch.Tensor],
    bar: Any,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The measured runs at each arm's chosen learning rate: the rows and the curves."""
    rows: list[dict[str, Any]] = []
    curves: list[dict[str, Any]] = []
    for arm in arms:
        for s in measured:
            bar.set_postfix_str(f"{arm} seed {s}")
            r = train_vit(sz, arm, chosen[arm], s, data)
            bar.update(1)
            rows.append(
                {
                    "optimizer": arm,
                    "lr": chosen[arm],
                    "weight_decay": sz.weight_decay,
                    "seed": s,
                    **{k: r[k] for k in RUN_COLUMNS if k in r},
                    "paper_val": PAPER_VAL.get(arm, float("nan")),
                }
            )
            for i, st in enumerate(r["steps"]):
                curves.append(
                    {
                        "optimizer": arm,
                        "seed": s,
                        "step": st,
                        "train_loss": r["train_loss"][i],
                        "val_loss": r["val_loss"][i],
                        "val_acc": r["val_acc"][i],
                    }
                )
    return rows, curves


def run(
    out: str | Path | None = DEFAULT_OUT,
    *,
    quick: bool = False,
    size: str = "default",
    seed: int = 0,
    optimizers: Sequence[str] = DEFAULT_ARMS,
    seeds: int | None = None,
    steps: int | None = None,
    lrs: Sequence[float] | None = None,
    threads: int | None = 1,
    plot: bool = True,
    progress: bool | None = None,
    echo: Callable[[str], None] | None = print,
) -> ViTResult:
    """Run the ViT experiment; write the CSVs, the PNG and the config into ``out``.

    Parameters
    ----------
    out : str or Path or None
        Output folder (created); None writes nothing.
    quick : bool
        Tiny sizes (seconds; for tests).
    size : {"default", "full"}
        ``"default"``: 1,000 training images, d_model = 32, 2 blocks, 1,500 steps of 64 images,
        lr ∈ {3e-4, 1e-3, 3e-3, 1e-2} tuned on 2 seeds, 8 measured seeds (about 6 minutes on 2
        cores for the two default arms). ``"full"``: d_model = 64, 4 blocks, 4,000 steps, 5
        learning rates, 3 tuning and 12 measured seeds.
    seed : int
        The first measured seed.
    optimizers : sequence of str
        Arms (adamw must be among them for the verdict).
    seeds, steps : int, optional
        Override the number of measured seeds (>= 2) and of steps.
    lrs : sequence of float, optional
        Override the learning-rate grid.
    threads, plot, progress, echo
        As the other experiments.
    """
    fn = "deadspec.vit.run"
    sz = _resolve(fn, quick, size, optimizers, seeds, steps, lrs)
    arms = list(dict.fromkeys(optimizers))
    out_dir = _harness.check_out(out, fn)
    data = load_digits()
    t0 = time.perf_counter()
    if echo is not None:
        echo(f"vit: verdict {RULE}; stated before the runs")
    tune_seeds = [1000 + k for k in range(sz.tune_seeds)]
    measured = [seed + k for k in range(sz.seeds)]
    if set(tune_seeds) & set(measured):
        raise ValueError(f"{fn}: the measured seeds must not include the tuning seeds {tune_seeds}")
    with _harness.threads(threads):
        n_runs = len(arms) * (len(sz.lrs) * len(tune_seeds) + len(measured))
        with _harness.progress_bar(range(n_runs), "vit", progress) as bar:
            chosen, tuning = _tune(sz, arms, tune_seeds, data, bar)
            rows, curves = _measure(sz, arms, chosen, measured, data, bar)
    summary = summarize(rows, arms)
    verdict_rows = verdicts(rows, arms)
    config = {
        "experiment": "vit",
        "size": "quick" if quick else size,
        "sizes": dataclasses.asdict(sz),
        "measured_seeds": measured,
        "tuning_seeds": tune_seeds,
        "optimizers": arms,
        "chosen_lr": chosen,
        "rule": RULE,
        "threads": threads,
    }
    figures = {"vit.png": lambda p: plot_vit(p, rows, curves, arms, sz)} if plot else None
    paths = _harness.write_outputs(
        out_dir,
        {
            "vit.csv": (rows, RUN_COLUMNS),
            "vit_tuning.csv": (tuning, TUNING_COLUMNS),
            "vit_curves.csv": (curves, CURVE_COLUMNS),
        },
        figures,
        config,
    )
    seconds = time.perf_counter() - t0
    _harness.report(
        echo,
        [format_summary(summary), "", *format_verdicts(verdict_rows)],
        paths.values(),
        seconds,
    )
    return ViTResult(rows, tuning, summary, verdict_rows, sz, dict(paths), seconds)


_Col = _harness.Col


def _pm(key: str, spec: str) -> Callable[[dict[str, Any]], str]:
    return lambda r: f"{r[f'{key}_mean']:{spec}} ± {r[f'{key}_se']:.2g}"


_SUMMARY = (
    _Col("optimizer", "optimizer", "<14"),
    _Col("lr", "lr", ">7.0e"),
    _Col("seeds", "seeds", ">5"),
    _Col("final val", _pm("final_val", ".4f"), ">18"),
    _Col("min val", _pm("min_val", ".4f"), ">18"),
    _Col("final acc", _pm("final_acc", ".4f"), ">18"),
    _Col("final train", _pm("final_train", ".4f"), ">18"),
    _Col("paper val", "paper_val", "9.2f"),
)


def format_summary(summary: Sequence[dict[str, Any]]) -> str:
    """A plain-text table of the per-arm summary."""
    return _harness.format_table(summary, _SUMMARY)


def format_verdicts(rows: Sequence[dict[str, Any]]) -> list[str]:
    """One line per DDC arm."""
    return [
        f"verdict: {r['optimizer']} vs adamw (final val loss): {r['verdict'].upper()} "
        f"(Δ {r['d_final_val']:+.4f} ± {r['d_final_val_se']:.2g}, p {r['p_final_val']:.3g}, "
        f"{r['pairs']} seeds; min val Δ {r['d_min_val']:+.4f} ± {r['d_min_val_se']:.2g}, "
        f"p {r['p_min_val']:.3g})"
        for r in rows
    ]


def plot_vit(
    path: Path,
    rows: Sequence[dict[str, Any]],
    curves: Sequence[dict[str, Any]],
    arms: Sequence[str],
    sz: ViTSizes,
) -> None:
    """Validation curves (every measured seed) and the final validation loss per seed."""
    with _harness.figure(path, figsize=(11.0, 3.8)) as fig:
        ax, bx = fig.subplots(1, 2)
        for arm in arms:
            c = COLORS.get(arm, "k")
            seeds = sorted({r["seed"] for r in curves if r["optimizer"] == arm})
            for k, s in enumerate(seeds):
                mine = [r for r in curves if r["optimizer"] == arm and r["seed"] == s]
                ax.plot(
                    [r["step"] for r in mine],
                    [r["val_loss"] for r in mine],
                    color=c,
                    lw=1,
                    alpha=0.6,
                    label=arm if k == 0 else None,
                )
        ax.set_xlabel("step")
        ax.set_ylabel("validation loss (nats)")
        ax.set_yscale("log")
        ax.set_title("validation loss, every measured seed", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        for k, arm in enumerate(arms):
            mine = sorted((r for r in rows if r["optimizer"] == arm), key=lambda r: r["seed"])
            v = [r["final_val"] for r in mine]
            bx.scatter(np.full(len(v), k), v, color=COLORS.get(arm, "k"), s=18)
            m, se = mean_se(v)
            bx.errorbar([k + 0.25], [m], yerr=[0 if math.isnan(se) else se], fmt="o", color="k")
        bx.set_xticks(range(len(arms)))
        bx.set_xticklabels(arms, fontsize=8)
        bx.set_ylabel("final validation loss (nats)")
        bx.set_title("per seed, and mean ± s.e.", fontsize=9)
        bx.grid(alpha=0.3)
        fig.suptitle(
            f"ViT on 8×8 digits: {sz.n_train} training images, {sz.n_layers} blocks × d_model "
            f"{sz.d_model}, {sz.steps} steps of {sz.batch}",
            fontsize=10,
        )


def _parser():
    p = _harness.parser(
        "deadspec repro vit",
        "A small vision transformer on scikit-learn's digits: DDCAdam against AdamW, each "
        "arm's learning rate tuned on the same grid, paired over seeds.",
        DEFAULT_OUT,
        sizes=("default", "full"),
        threads=True,
    )
    p.add_argument("--optimizers", nargs="+", choices=OPTIMIZERS, default=list(DEFAULT_ARMS))
    p.add_argument("--seeds", type=int, default=None, help="measured seeds (>= 2)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--lrs", nargs="+", type=float, default=None)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns 0 (2 on a usage error)."""
    return _harness.cli_main("vit", _parser(), run, argv)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
