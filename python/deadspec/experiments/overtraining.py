"""Over-training experiment: validation − train loss gap of a LM trained far past fit.

Claim (Dead-Direction Conditioners, arXiv 2606.29176): a language model trained past the point
of fit ends with a validation − train loss gap of 0.67 with DDCAdam against 5.88 with AdamW
(resistance to *over-training collapse*).

Setup (ours; the paper's model, data and schedule are not public)
-----------------------------------------------------------------
- **Corpus**: generated at run time by a fixed probabilistic grammar with agreement
  (:func:`deadspec.experiments._lm.generate_corpus`, ~110 word tokens, seeded, nothing shipped
  or downloaded). Training set: ``n_train`` sequences of ``ctx`` tokens; validation:
  ``n_val`` sequences from an independent stream of the same grammar.
- **Model**: :class:`deadspec.experiments._lm.TinyLM`, ``n_layers`` pre-LN causal
  :class:`~deadspec.models_transformer.TransformerBlock` s (ReLU MLP), token + learned position
  embeddings, final LayerNorm, unembedding without bias.
- **Training**: full batch (the whole training set every step), constant learning rate, no
  warm-up, ``steps`` steps — far past fit (the training loss is ~0.05 nats/token after ~200
  steps at the default size, the run goes to 1500).
- **Optimizers**: ``ddc-adam`` (:class:`deadspec.optim.DDCAdam`, gauges discovered plus the
  head's NormScale(ln_f → unembed) and LogitShift(unembed)), ``adamw`` (``torch.optim.AdamW``)
  and ``muon`` (``torch.optim.Muon`` on the 2-D hidden weights, ``adjust_lr_fn=
  "match_rms_adamw"`` so the same learning rate is comparable, + AdamW on embeddings, head,
  norms and biases). Adam betas (0.9, 0.98), Muon momentum 0.95. Every optimizer runs the same
  grid ``lrs × weight_decays`` from the same initialisation.
- **Reported**: per run, the final train and validation losses (nats/token) and their gap
  (the paper's quantity), the *tail gap* (the same over the mean of the last 10 % of the
  evaluations: with a constant learning rate the training loss spikes now and then, and a
  spike at the last step moves the final gap by nats), the minimum validation loss and its
  step; per optimizer, the mean and median final gap and the mean tail gap over the grid, and
  the gaps of the grid point with the lowest tail validation loss.

Outputs (``--out DIR``, default ``./deadspec-out/over-training``): ``overtraining.csv`` (one
row per optimizer × lr × weight decay), ``overtraining_curves.csv`` (one row per run × eval
step), ``overtraining.png`` (train/val curves per grid point; gap per optimizer).

Run: ``python -m deadspec.experiments.overtraining [--quick] [--size full]`` or
``deadspec repro over-training``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from deadspec.experiments import _lm

__all__ = ["CSV_COLUMNS", "DEFAULT_OUT", "OverTrainingResult", "format_table", "main", "run"]

DEFAULT_OUT = Path("deadspec-out") / "over-training"
OPTIMIZERS = ("ddc-adam", "adamw", "muon")
#: The paper's validation − train gaps.
PAPER_GAP = {"ddc-adam": 0.67, "adamw": 5.88}

CSV_COLUMNS = (
    "optimizer",
    "lr",
    "weight_decay",
    "seed",
    "steps",
    "final_train",
    "final_val",
    "gap",
    "tail_train",
    "tail_val",
    "tail_gap",
    "min_val",
    "min_val_step",
    "paper_gap",
    "diverged",
    "seconds",
)
CURVE_COLUMNS = ("optimizer", "lr", "weight_decay", "step", "train_loss", "val_loss")
SUMMARY_KEYS = (
    "optimizer",
    "runs",
    "mean_gap",
    "median_gap",
    "mean_tail_gap",
    "best_lr",
    "best_wd",
    "best_gap",
    "best_tail_gap",
)


@dataclasses.dataclass
class OverTrainingResult:
    """What :func:`run` returns.

    Attributes
    ----------
    rows : list of dict
        One per optimizer × lr × weight decay (keys :data:`CSV_COLUMNS`).
    summary : list of dict
        One per optimizer (keys :data:`SUMMARY_KEYS`).
    curves : list of dict
        One per run × eval step (keys :data:`CURVE_COLUMNS`).
    sizes : deadspec.experiments._lm.LMSizes
    csv_path, curves_path, png_path : Path or None
    seconds : float
    """

    rows: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    curves: list[dict[str, Any]]
    sizes: _lm.LMSizes
    csv_path: Path | None
    curves_path: Path | None
    png_path: Path | None
    seconds: float


def rows_from_results(results: Sequence[dict[str, Any]], steps: int) -> list[dict[str, Any]]:
    """CSV rows (:data:`CSV_COLUMNS`) of :func:`deadspec.experiments._lm.run_grid` results."""
    rows = []
    for r in results:
        rows.append(
            {
                "optimizer": r["optimizer"],
                "lr": r["lr"],
                "weight_decay": r["weight_decay"],
                "seed": r["seed"],
                "steps": steps,
                "final_train": r["final_train"],
                "final_val": r["final_val"],
                "gap": r["gap"],
                "tail_train": r["tail_train"],
                "tail_val": r["tail_val"],
                "tail_gap": r["tail_gap"],
                "min_val": r["min_val"],
                "min_val_step": r["min_val_step"],
                "paper_gap": PAPER_GAP.get(r["optimizer"]),
                "diverged": bool(r["diverged"]),
                "seconds": round(float(r["seconds"]), 3),
            }
        )
    return rows


def curve_rows(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Curve rows (:data:`CURVE_COLUMNS`) of the results."""
    out = []
    for r in results:
        for s, tr, va in zip(r["steps"], r["train_loss"], r["val_loss"]):
            out.append(
                {
                    "optimizer": r["optimizer"],
                    "lr": r["lr"],
                    "weight_decay": r["weight_decay"],
                    "step": s,
                    "train_loss": tr,
                    "val_loss": va,
                }
            )
    return out


def summarize(rows: Sequence[dict[str, Any]], optimizers: Sequence[str]) -> list[dict[str, Any]]:
    """Per optimizer: mean/median gap over the grid; the grid point with the lowest tail
    validation loss and its gaps (final and tail)."""
    out = []
    for o in optimizers:
        mine = [r for r in rows if r["optimizer"] == o]
        if not mine:
            continue
        mean, median = _lm.summary_stats([_lm.finite_or_nan(r["gap"]) for r in mine])
        tail_mean, _ = _lm.summary_stats([_lm.finite_or_nan(r["tail_gap"]) for r in mine])
        ok = [r for r in mine if math.isfinite(_lm.finite_or_nan(r["tail_val"]))]
        best = min(ok, key=lambda r: r["tail_val"]) if ok else None
        out.append(
            {
                "optimizer": o,
                "runs": len(mine),
                "mean_gap": mean,
                "median_gap": median,
                "best_lr": best["lr"] if best else None,
                "best_wd": best["weight_decay"] if best else None,
                "mean_tail_gap": tail_mean,
                "best_gap": best["gap"] if best else float("nan"),
                "best_tail_gap": best["tail_gap"] if best else float("nan"),
                "paper_gap": PAPER_GAP.get(o),
            }
        )
    return out


def run(
    out: str | Path | None = DEFAULT_OUT,
    *,
    quick: bool = False,
    size: str = "default",
    seed: int = 0,
    optimizers: Sequence[str] = OPTIMIZERS,
    lrs: Sequence[float] | None = None,
    weight_decays: Sequence[float] | None = None,
    steps: int | None = None,
    n_train: int | None = None,
    threads: int | None = 1,
    plot: bool = True,
    progress: bool | None = None,
    echo: Callable[[str], None] | None = print,
) -> OverTrainingResult:
    """Run the over-training experiment; write the CSVs and the plot into ``out``.

    Parameters
    ----------
    out : str or Path or None
        Output folder (created); None writes nothing.
    quick : bool
        Tiny sizes (seconds; for tests).
    size : {"default", "full"}
        ``"default"``: 64 training sequences of 32 tokens, a 2-block d_model = 32 LM, 1500
        full-batch steps, lr ∈ {1e-3, 3e-3} × weight decay ∈ {0.1, 1.0} (12 runs, ~10 min on
        2 cores). ``"full"``: 256 sequences of 64 tokens, 4 blocks of d_model = 64, 4000
        steps, a 3 × 3 grid.
    seed : int
        Seed of the corpus streams and of the (shared) initialisation.
    optimizers : sequence of str
        Subset of ``("ddc-adam", "adamw", "muon")`` (``"ddc-muon"`` and ``"ddc-adam-split"``,
        DDCAdam with ``form="split"``, are accepted too).
    lrs, weight_decays : sequence of float, optional
        Override the grid.
    steps, n_train : int, optional
        Override the training length and the number of training sequences.
    threads : int, optional
        torch intra-op threads during the runs (default 1: these models are tiny and thread
        start-up costs more than it saves; None leaves the setting).
    plot : bool
        Write the PNG.
    progress : bool or None
        tqdm bar over the runs (None: only when stderr is a terminal).
    echo : callable or None
        Where the tables are printed (None: silent).

    Returns
    -------
    OverTrainingResult
    """
    sizes = _lm.lm_sizes(
        quick, size, lrs=lrs, weight_decays=weight_decays, steps=steps, n_train=n_train
    )
    if progress is None:
        progress = sys.stderr.isatty()
    t0 = time.perf_counter()
    restore = _lm.set_threads(threads)
    try:
        results = _lm.run_grid(sizes, optimizers, seed=seed, progress=progress)
    finally:
        restore()
    rows = rows_from_results(results, sizes.steps)
    curves = curve_rows(results)
    summary = summarize(rows, optimizers)
    csv_path = curves_path = png_path = None
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        csv_path = out / "overtraining.csv"
        curves_path = out / "overtraining_curves.csv"
        _lm.write_rows(csv_path, rows, CSV_COLUMNS)
        _lm.write_rows(curves_path, curves, CURVE_COLUMNS)
        if plot:
            png_path = out / "overtraining.png"
            plot_overtraining(results, summary, png_path, sizes)
    seconds = time.perf_counter() - t0
    if echo is not None:
        echo(format_table(rows))
        echo("")
        echo(format_summary(summary))
        if csv_path is not None:
            echo(f"wrote {csv_path}, {curves_path}" + (f" and {png_path}" if png_path else ""))
        echo(f"({seconds:.1f} s)")
    return OverTrainingResult(
        rows=rows,
        summary=summary,
        curves=curves,
        sizes=sizes,
        csv_path=csv_path,
        curves_path=curves_path,
        png_path=png_path,
        seconds=seconds,
    )


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A plain-text table of the per-run rows."""
    f = _lm.fmt
    head = (
        f"{'optimizer':<9} {'lr':>7} {'wd':>5} {'train':>7} {'val':>7} {'gap':>7} "
        f"{'tailgap':>7} {'min val':>7} {'@step':>6} {'paper':>5} {'s':>6}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['optimizer']:<9} {r['lr']:>7.0e} {r['weight_decay']:>5g} "
            f"{f(r['final_train'], '7.3f')} {f(r['final_val'], '7.3f')} {f(r['gap'], '7.3f')} "
            f"{f(r['tail_gap'], '7.3f')} {f(r['min_val'], '7.3f')} {r['min_val_step']:>6} {f(r['paper_gap'], '5.2f')} "
            f"{f(r['seconds'], '6.1f')}" + ("  DIVERGED" if r["diverged"] else "")
        )
    return "\n".join(lines)


def format_summary(summary: Sequence[dict[str, Any]]) -> str:
    """A plain-text table of the per-optimizer summary."""
    f = _lm.fmt
    head = (
        f"{'optimizer':<9} {'runs':>4} {'mean gap':>8} {'median':>7} {'tail':>7} "
        f"{'best-val (lr, wd)':>18} {'its gap':>7} {'tail':>7} {'paper':>5}"
    )
    lines = [head, "-" * len(head)]
    for s in summary:
        best = "-" if s["best_lr"] is None else f"({s['best_lr']:.0e}, {s['best_wd']:g})"
        lines.append(
            f"{s['optimizer']:<9} {s['runs']:>4} {f(s['mean_gap'], '8.3f')} "
            f"{f(s['median_gap'], '7.3f')} {f(s['mean_tail_gap'], '7.3f')} {best:>18} "
            f"{f(s['best_gap'], '7.3f')} {f(s['best_tail_gap'], '7.3f')} "
            f"{f(s['paper_gap'], '5.2f')}"
        )
    return "\n".join(lines)


_COLORS = {
    "ddc-adam": "C0", "adamw": "C3", "muon": "C2", "ddc-muon": "C1", "ddc-adam-split": "C4"
}


def plot_overtraining(results, summary, path: Path, sizes: _lm.LMSizes) -> None:
    """Train (dashed) and validation (solid) curves per grid point; gaps per optimizer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = [(lr, wd) for lr in sizes.lrs for wd in sizes.weight_decays]
    ncols = len(grid) + 1
    fig, axes = plt.subplots(
        1, ncols, figsize=(3.4 * ncols, 3.2), squeeze=False, constrained_layout=True
    )
    for j, (lr, wd) in enumerate(grid):
        ax = axes[0, j]
        for r in results:
            if r["lr"] != lr or r["weight_decay"] != wd:
                continue
            c = _COLORS.get(r["optimizer"], "k")
            ax.plot(r["steps"], r["val_loss"], color=c, label=f"{r['optimizer']} val")
            ax.plot(r["steps"], r["train_loss"], color=c, ls="--", lw=1)
        ax.set_yscale("log")
        ax.set_title(f"lr={lr:g}, wd={wd:g}", fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel("loss (nats/token; dashed = train)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    ax = axes[0, -1]
    opts = [s["optimizer"] for s in summary]
    for k, o in enumerate(opts):
        gaps = [r["gap"] for r in results if r["optimizer"] == o]
        ax.scatter(np.full(len(gaps), k), gaps, color=_COLORS.get(o, "k"), s=18)
        if o in PAPER_GAP:
            ax.scatter([k + 0.2], [PAPER_GAP[o]], marker="*", color="k", s=60)
    ax.set_xticks(range(len(opts)))
    ax.set_xticklabels(opts, fontsize=8)
    ax.set_ylabel("final val − train loss")
    ax.set_title("gap per grid point (★ paper)", fontsize=9)
    ax.grid(alpha=0.3)
    fig.suptitle(
        f"over-training: {sizes.n_train}×{sizes.ctx} tokens, {sizes.n_layers} blocks × "
        f"d_model {sizes.d_model}, {sizes.steps} full-batch steps",
        fontsize=10,
    )
    fig.savefig(path, dpi=100)
    plt.close(fig)


def add_lm_arguments(p: argparse.ArgumentParser, default_out: Path) -> None:
    """Arguments shared by the over-training and detection command lines."""
    p.add_argument("--out", default=str(default_out), metavar="DIR")
    p.add_argument("--quick", action="store_true", help="tiny sizes (for tests)")
    p.add_argument("--size", choices=["default", "full"], default="default")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--optimizers", nargs="+", choices=_lm.OPTIMIZERS, default=list(OPTIMIZERS))
    p.add_argument("--lrs", nargs="+", type=float, default=None)
    p.add_argument("--weight-decays", nargs="+", type=float, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--n-train", type=int, default=None)
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--progress", dest="progress", action="store_true", default=None)
    p.add_argument("--no-progress", dest="progress", action="store_false")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m deadspec.experiments.overtraining",
        description="Over-training: validation − train gap of a small LM trained far past fit, "
        "DDCAdam vs AdamW vs Muon over a shared lr × weight-decay grid.",
    )
    add_lm_arguments(p, DEFAULT_OUT)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns 0 (2 on a usage error)."""
    args = _parser().parse_args(None if argv is None else list(argv))
    try:
        run(
            args.out,
            quick=args.quick,
            size=args.size,
            seed=args.seed,
            optimizers=args.optimizers,
            lrs=args.lrs,
            weight_decays=args.weight_decays,
            steps=args.steps,
            n_train=args.n_train,
            threads=args.threads,
            plot=not args.no_plot,
            progress=args.progress,
        )
    except ValueError as exc:
        print(f"over-training: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
