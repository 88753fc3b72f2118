"""Detection experiment: in how many layer × observable cells the dead-direction rate reads.

Claim (Dead-Direction Conditioners, arXiv 2606.29176): on the over-trained language model, the
dead-direction rate is readable in 32 of 65 layer × observable cells with DDC against 7 of 65
with AdamW (*higher detection of dead directions*).

Setup
-----
The runs of :mod:`deadspec.experiments.overtraining` (same corpus, model, grid, seeds and
steps; the monitor leaves the model untouched, so the trajectories are the same and the gap
columns reproduce that experiment's), with a :class:`deadspec.monitor.DeadDirectionMonitor`
attached to the linear layers ``blocks.i.attn.{q,k,v,o}``, ``blocks.i.mlp.{fc_in,fc_out}`` and
``unembed``. Probe: the first ``probe`` training sequences with their next-token targets
(observed labels, cross-entropy summed over positions). ``readings`` checkpoints evenly spread
over the run, the last at the final step. The monitor's defaults decide the rest: approach
parameter ``"dead-norm"``, window ``"after-peak"``, predictions 2r (log det⁺) and 2 (λ_min) on
both sides, a cell reads when ``|slope − p| ≤ 0.25·|p|`` and R² ≥ 0.9; cells predicted 0 (the
layer has no dead cluster at its last checkpoint) count in the total but never read; the
effective-rank cells have no prediction and are not counted. So the total is
``layers × 2 sides × 2 observables`` (52 at the default size) rather than the paper's 65, whose
cell definition is not public.

Reported per run: ``cells_reading`` / ``cells_total`` (:meth:`~DeadDirectionMonitor.
cells_reading`), ``cells_dead`` (cells whose layer/side has a dead cluster, i.e. a non-zero
prediction) and the gap; per optimizer the sums over the grid.

Outputs (``--out DIR``, default ``./deadspec-out/detection``): ``detection.csv`` (one row per
run), ``detection_cells.csv`` (one row per run × layer × side × observable: slope, predicted,
R², reads), ``detection.png``.

Run: ``python -m deadspec.experiments.detection [--quick] [--size full]`` or
``deadspec repro detection``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from deadspec.experiments import _lm
from deadspec.experiments.overtraining import OPTIMIZERS, add_lm_arguments

__all__ = ["CELL_COLUMNS", "CSV_COLUMNS", "DEFAULT_OUT", "DetectionResult", "main", "run"]

DEFAULT_OUT = Path("deadspec-out") / "detection"
#: The paper's (cells reading, total) — DDC (on an Adam base) and AdamW.
PAPER_CELLS = {"ddc-adam": (32, 65), "adamw": (7, 65)}

CSV_COLUMNS = (
    "optimizer",
    "lr",
    "weight_decay",
    "seed",
    "cells_reading",
    "cells_total",
    "cells_dead",
    "fraction",
    "paper_reading",
    "paper_total",
    "final_train",
    "final_val",
    "gap",
    "readings",
    "monitor_seconds",
    "seconds",
)
CELL_COLUMNS = (
    "optimizer",
    "lr",
    "weight_decay",
    "layer",
    "side",
    "observable",
    "dead_count",
    "predicted",
    "slope",
    "r2",
    "n_points",
    "reads",
)


@dataclasses.dataclass
class DetectionResult:
    """What :func:`run` returns.

    Attributes
    ----------
    rows : list of dict
        One per run (keys :data:`CSV_COLUMNS`).
    cells : list of dict
        One per run × layer × side × observable (keys :data:`CELL_COLUMNS`).
    summary : list of dict
        Per optimizer: ``optimizer``, ``runs``, ``cells_reading``, ``cells_total``,
        ``cells_dead`` (sums over the grid), ``mean_gap``.
    csv_path, cells_path, png_path : Path or None
    seconds : float
    """

    rows: list[dict[str, Any]]
    cells: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    sizes: _lm.LMSizes
    csv_path: Path | None
    cells_path: Path | None
    png_path: Path | None
    seconds: float


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
    readings: int | None = None,
    threads: int | None = 1,
    plot: bool = True,
    progress: bool | None = None,
    echo: Callable[[str], None] | None = print,
) -> DetectionResult:
    """Run the detection experiment; write the CSVs and the plot into ``out``.

    Parameters are those of :func:`deadspec.experiments.overtraining.run` (same runs), plus
    ``readings``: the number of monitor checkpoints per run (default 30; quick 8).

    Returns
    -------
    DetectionResult
    """
    sizes = _lm.lm_sizes(
        quick,
        size,
        lrs=lrs,
        weight_decays=weight_decays,
        steps=steps,
        n_train=n_train,
        readings=readings,
    )
    if progress is None:
        progress = sys.stderr.isatty()
    t0 = time.perf_counter()
    restore = _lm.set_threads(threads)
    try:
        results = _lm.run_grid(
            sizes, optimizers, seed=seed, monitor=True, progress=progress, desc="detection"
        )
    finally:
        restore()
    rows: list[dict[str, Any]] = []
    cells: list[dict[str, Any]] = []
    for r in results:
        mon = r["monitor"]
        rates = mon.rates() if len(mon.steps) else []
        counted = [c for c in rates if c["predicted"] is not None]
        reading = sum(bool(c["reads"]) for c in counted)
        dead = sum(1 for c in counted if c["predicted"] not in (None, 0, 0.0))
        paper = PAPER_CELLS.get(r["optimizer"], (None, None))
        rows.append(
            {
                "optimizer": r["optimizer"],
                "lr": r["lr"],
                "weight_decay": r["weight_decay"],
                "seed": r["seed"],
                "cells_reading": reading,
                "cells_total": len(counted),
                "cells_dead": dead,
                "fraction": reading / len(counted) if counted else float("nan"),
                "paper_reading": paper[0],
                "paper_total": paper[1],
                "final_train": r["final_train"],
                "final_val": r["final_val"],
                "gap": r["gap"],
                "readings": len(mon.steps),
                "monitor_seconds": round(float(mon.seconds), 3),
                "seconds": round(float(r["seconds"]), 3),
            }
        )
        for c in rates:
            cells.append(
                {
                    "optimizer": r["optimizer"],
                    "lr": r["lr"],
                    "weight_decay": r["weight_decay"],
                    **{k: c.get(k) for k in CELL_COLUMNS[3:]},
                }
            )
    summary = summarize(rows, optimizers)
    csv_path = cells_path = png_path = None
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        csv_path = out / "detection.csv"
        cells_path = out / "detection_cells.csv"
        _lm.write_rows(csv_path, rows, CSV_COLUMNS)
        _lm.write_rows(cells_path, cells, CELL_COLUMNS)
        if plot:
            png_path = out / "detection.png"
            plot_detection(rows, cells, png_path, sizes)
    seconds = time.perf_counter() - t0
    if echo is not None:
        echo(format_table(rows))
        echo("")
        echo(format_summary(summary))
        if csv_path is not None:
            echo(f"wrote {csv_path}, {cells_path}" + (f" and {png_path}" if png_path else ""))
        echo(f"({seconds:.1f} s)")
    return DetectionResult(
        rows=rows,
        cells=cells,
        summary=summary,
        sizes=sizes,
        csv_path=csv_path,
        cells_path=cells_path,
        png_path=png_path,
        seconds=seconds,
    )


def summarize(rows: Sequence[dict[str, Any]], optimizers: Sequence[str]) -> list[dict[str, Any]]:
    """Per optimizer: cells reading / total / with a dead cluster, summed over the grid."""
    out = []
    for o in optimizers:
        mine = [r for r in rows if r["optimizer"] == o]
        if not mine:
            continue
        mean_gap, _ = _lm.summary_stats([_lm.finite_or_nan(r["gap"]) for r in mine])
        out.append(
            {
                "optimizer": o,
                "runs": len(mine),
                "cells_reading": sum(r["cells_reading"] for r in mine),
                "cells_total": sum(r["cells_total"] for r in mine),
                "cells_dead": sum(r["cells_dead"] for r in mine),
                "mean_gap": mean_gap,
                "paper": PAPER_CELLS.get(o),
            }
        )
    return out


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A plain-text table of the per-run rows."""
    f = _lm.fmt
    head = (
        f"{'optimizer':<9} {'lr':>7} {'wd':>5} {'reading':>7} {'total':>5} {'dead':>4} "
        f"{'paper':>6} {'gap':>7} {'mon s':>6}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        paper = "-" if r["paper_reading"] is None else f"{r['paper_reading']}/{r['paper_total']}"
        lines.append(
            f"{r['optimizer']:<9} {r['lr']:>7.0e} {r['weight_decay']:>5g} "
            f"{r['cells_reading']:>7} {r['cells_total']:>5} {r['cells_dead']:>4} {paper:>6} "
            f"{f(r['gap'], '7.3f')} {f(r['monitor_seconds'], '6.1f')}"
        )
    return "\n".join(lines)


def format_summary(summary: Sequence[dict[str, Any]]) -> str:
    """A plain-text table of the per-optimizer sums."""
    head = f"{'optimizer':<9} {'runs':>4} {'reading/total':>13} {'dead cells':>10} {'paper':>6}"
    lines = [head, "-" * len(head)]
    for s in summary:
        paper = "-" if s["paper"] is None else f"{s['paper'][0]}/{s['paper'][1]}"
        lines.append(
            f"{s['optimizer']:<9} {s['runs']:>4} "
            f"{str(s['cells_reading']) + '/' + str(s['cells_total']):>13} "
            f"{s['cells_dead']:>10} {paper:>6}"
        )
    return "\n".join(lines)


def plot_detection(rows, cells, path: Path, sizes: _lm.LMSizes) -> None:
    """Cells reading / with a dead cluster per run; fitted slope against prediction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {
        "ddc-adam": "C0", "adamw": "C3", "muon": "C2", "ddc-muon": "C1", "ddc-adam-split": "C4"
    }
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), constrained_layout=True)
    ax = axes[0]
    labels = [f"{r['optimizer']} {r['lr']:g}/{r['weight_decay']:g}" for r in rows]
    xs = np.arange(len(rows))
    ax.bar(xs - 0.2, [r["cells_dead"] for r in rows], 0.4, color="0.7", label="dead cluster")
    ax.bar(
        xs + 0.2,
        [r["cells_reading"] for r in rows],
        0.4,
        color=[colors.get(r["optimizer"], "k") for r in rows],
        label="reading the rate",
    )
    ax.set_xticks(xs)
    ax.set_xticklabels(labels, fontsize=6, rotation=90)
    ax.set_xlabel("optimizer lr/weight decay")
    total = rows[0]["cells_total"] if rows else 0
    ax.set_ylabel(f"cells (of {total})")
    ax.set_title("cells with a dead cluster / reading the predicted rate", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, axis="y")
    ax = axes[1]
    for c in cells:
        p, s = c["predicted"], c["slope"]
        if p in (None, 0, 0.0) or s is None or not np.isfinite(s):
            continue
        ax.scatter(
            p,
            s,
            color=colors.get(c["optimizer"], "k"),
            marker="o" if c["reads"] else "x",
            s=14,
        )
    lim = ax.get_xlim()
    ax.plot(lim, lim, "k--", lw=1)
    ax.set_xlabel("predicted rate")
    ax.set_ylabel("fitted slope (o reads, x does not)")
    ax.set_title("trajectory rate vs prediction (colour = optimizer)", fontsize=9)
    ax.grid(alpha=0.3)
    fig.suptitle(
        f"detection: {sizes.n_layers} blocks × d_model {sizes.d_model}, {sizes.steps} steps, "
        f"{sizes.readings} readings",
        fontsize=10,
    )
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m deadspec.experiments.detection",
        description="Detection: layer × observable cells in which the dead-direction rate reads "
        "(DeadDirectionMonitor) on the over-training runs, per optimizer.",
    )
    add_lm_arguments(p, DEFAULT_OUT)
    p.add_argument("--readings", type=int, default=None, help="monitor checkpoints per run")
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
            readings=args.readings,
            threads=args.threads,
            plot=not args.no_plot,
            progress=args.progress,
        )
    except ValueError as exc:
        print(f"detection: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
