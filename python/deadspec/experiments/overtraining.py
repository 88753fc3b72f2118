"""Over-training experiment: validation − train loss gap of a LM trained far past fit.

Claim (Dead-Direction Conditioners, arXiv 2606.29176): a language model trained past the point
of fit ends with a validation − train loss gap of 0.67 with DDCAdam against 5.88 with AdamW
(resistance to *over-training collapse*).

Setup (ours; the paper's model, data and schedule are not public)
-----------------------------------------------------------------
- **Corpus**: generated at run time by a fixed probabilistic grammar with agreement
  (:func:`deadspec.experiments._corpus.generate_corpus`, ~110 word tokens, seeded, nothing shipped
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

import dataclasses
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from deadspec.experiments import _harness, _lm
from deadspec.experiments._stats import finite_or_nan, summary_stats

__all__ = ["CSV_COLUMNS", "DEFAULT_OUT", "OverTrainingResult", "format_table", "main", "run"]

DEFAULT_OUT = Path("deadspec-out") / "over-training"
OPTIMIZERS = _lm.DEFAULT_OPTIMIZERS
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
        row = {k: r.get(k) for k in CSV_COLUMNS}
        row.update(
            steps=steps,
            paper_gap=PAPER_GAP.get(r["optimizer"]),
            diverged=bool(r["diverged"]),
            seconds=round(float(r["seconds"]), 3),
        )
        rows.append(row)
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
    for o, mine in _harness.groups(rows, "optimizer", optimizers):
        mean, median = summary_stats([finite_or_nan(r["gap"]) for r in mine])
        tail_mean, _ = summary_stats([finite_or_nan(r["tail_gap"]) for r in mine])
        ok = [r for r in mine if math.isfinite(finite_or_nan(r["tail_val"]))]
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
    _harness.check_out(out, "overtraining.run")  # before any work: a bad folder fails now
    t0 = time.perf_counter()
    results = _lm.run_grid(sizes, optimizers, seed=seed, threads=threads, progress=progress)
    rows = rows_from_results(results, sizes.steps)
    curves = curve_rows(results)
    summary = summarize(rows, optimizers)
    paths = _harness.write_outputs(
        out,
        {
            "overtraining.csv": (rows, CSV_COLUMNS),
            "overtraining_curves.csv": (curves, CURVE_COLUMNS),
        },
        {"overtraining.png": lambda path: plot_overtraining(results, summary, path, sizes)}
        if plot
        else None,
    )
    seconds = time.perf_counter() - t0
    _harness.report(
        echo, [format_table(rows), "", format_summary(summary)], paths.values(), seconds
    )
    return OverTrainingResult(
        rows=rows,
        summary=summary,
        curves=curves,
        sizes=sizes,
        csv_path=paths.get("overtraining.csv"),
        curves_path=paths.get("overtraining_curves.csv"),
        png_path=paths.get("overtraining.png"),
        seconds=seconds,
    )


_Col = _harness.Col
_TABLE = (
    *_lm.GRID_COLUMNS,
    _Col("train", "final_train", "7.3f"),
    _Col("val", "final_val", "7.3f"),
    _Col("gap", "gap", "7.3f"),
    _Col("tailgap", "tail_gap", "7.3f"),
    _Col("min val", "min_val", "7.3f"),
    _Col("@step", "min_val_step", ">6"),
    _Col("paper", "paper_gap", "5.2f"),
    _Col("s", "seconds", "6.1f"),
)
_SUMMARY = (
    _Col("optimizer", "optimizer", "<9"),
    _Col("runs", "runs", ">4"),
    _Col("mean gap", "mean_gap", "8.3f"),
    _Col("median", "median_gap", "7.3f"),
    _Col("tail", "mean_tail_gap", "7.3f"),
    _Col(
        "best-val (lr, wd)",
        lambda s: "-" if s["best_lr"] is None else f"({s['best_lr']:.0e}, {s['best_wd']:g})",
        ">18",
    ),
    _Col("its gap", "best_gap", "7.3f"),
    _Col("tail", "best_tail_gap", "7.3f"),
    _Col("paper", "paper_gap", "5.2f"),
)


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A plain-text table of the per-run rows."""
    return _harness.format_table(
        rows, _TABLE, suffix=lambda r: "  DIVERGED" if r["diverged"] else ""
    )


def format_summary(summary: Sequence[dict[str, Any]]) -> str:
    """A plain-text table of the per-optimizer summary."""
    return _harness.format_table(summary, _SUMMARY)


def plot_overtraining(results, summary, path: Path, sizes: _lm.LMSizes) -> None:
    """Train (dashed) and validation (solid) curves per grid point; gaps per optimizer."""
    grid = [(lr, wd) for lr in sizes.lrs for wd in sizes.weight_decays]
    ncols = len(grid) + 1
    with _harness.figure(path, figsize=(3.4 * ncols, 3.2)) as fig:
        axes = fig.subplots(1, ncols, squeeze=False)
        for j, (lr, wd) in enumerate(grid):
            ax = axes[0, j]
            for r in results:
                if r["lr"] != lr or r["weight_decay"] != wd:
                    continue
                c = _lm.COLORS.get(r["optimizer"], "k")
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
            ax.scatter(np.full(len(gaps), k), gaps, color=_lm.COLORS.get(o, "k"), s=18)
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


def _parser():
    return _lm.parser(
        "python -m deadspec.experiments.overtraining",
        "Over-training: validation − train gap of a small LM trained far past fit, "
        "DDCAdam vs AdamW vs Muon over a shared lr × weight-decay grid.",
        DEFAULT_OUT,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns 0 (2 on a usage error)."""
    return _harness.cli_main("over-training", _parser(), run, argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
