"""Detection experiment: in how many layer × observable cells the dead-direction rate reads.

Claim (Dead-Direction Conditioners, arXiv 2606.29176): on the over-trained language model, the
dead-direction rate is readable in 32 of 65 layer × observable cells with DDC against 7 of 65
with AdamW (*higher detection of dead directions*).

Setup
-----
The grid of :func:`deadspec.experiments._lm.run_grid` (the grammar corpus, one seed, the
sizes of :data:`deadspec.experiments._lm.LM_SIZES`: the over-training runs as they were before
that experiment was redesigned with tuned arms and seeds; the monitor leaves the model
untouched, so the trajectories are those of the same grid without it), with a
:class:`deadspec.monitor.DeadDirectionMonitor`
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

import dataclasses
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from deadspec.experiments import _harness, _lm
from deadspec.experiments._stats import finite_or_nan, summary_stats

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


def _run_rows(r: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The CSV row of one run of the grid and its cell rows."""
    mon = r["monitor"]
    rates = mon.rates() if len(mon.steps) else []
    counted = [c for c in rates if c["predicted"] is not None]
    reading = sum(bool(c["reads"]) for c in counted)
    dead = sum(1 for c in counted if c["predicted"] not in (None, 0, 0.0))
    paper = PAPER_CELLS.get(r["optimizer"], (None, None))
    row = {
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
    cells = [
        {
            "optimizer": r["optimizer"],
            "lr": r["lr"],
            "weight_decay": r["weight_decay"],
            **{k: c.get(k) for k in CELL_COLUMNS[3:]},
        }
        for c in rates
    ]
    return row, cells


def run(
    out: str | Path | None = DEFAULT_OUT,
    *,
    quick: bool = False,
    size: str = "default",
    seed: int = 0,
    optimizers: Sequence[str] = _lm.DEFAULT_OPTIMIZERS,
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

    Parameters: ``out``, ``quick``, ``size``, ``seed``, ``optimizers``, ``lrs``,
    ``weight_decays``, ``steps``, ``n_train``, ``threads``, ``plot``, ``progress`` and ``echo``
    set the grid of :func:`deadspec.experiments._lm.run_grid`, as their names say;
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
    _harness.check_out(out, "detection.run")  # before any work: a bad folder fails now
    t0 = time.perf_counter()
    results = _lm.run_grid(
        sizes,
        optimizers,
        seed=seed,
        monitor=True,
        threads=threads,
        progress=progress,
        desc="detection",
    )
    rows: list[dict[str, Any]] = []
    cells: list[dict[str, Any]] = []
    for r in results:
        row, run_cells = _run_rows(r)
        rows.append(row)
        cells.extend(run_cells)
    summary = summarize(rows, optimizers)
    paths = _harness.write_outputs(
        out,
        {"detection.csv": (rows, CSV_COLUMNS), "detection_cells.csv": (cells, CELL_COLUMNS)},
        {"detection.png": lambda path: plot_detection(rows, cells, path, sizes)} if plot else None,
    )
    seconds = time.perf_counter() - t0
    _harness.report(
        echo, [format_table(rows), "", format_summary(summary)], paths.values(), seconds
    )
    return DetectionResult(
        rows=rows,
        cells=cells,
        summary=summary,
        sizes=sizes,
        csv_path=paths.get("detection.csv"),
        cells_path=paths.get("detection_cells.csv"),
        png_path=paths.get("detection.png"),
        seconds=seconds,
    )


def summarize(rows: Sequence[dict[str, Any]], optimizers: Sequence[str]) -> list[dict[str, Any]]:
    """Per optimizer: cells reading / total / with a dead cluster, summed over the grid."""
    out = []
    for o, mine in _harness.groups(rows, "optimizer", optimizers):
        mean_gap, _ = summary_stats([finite_or_nan(r["gap"]) for r in mine])
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


def _paper(cells: tuple[int | None, int | None] | None) -> str:
    return "-" if cells is None or cells[0] is None else f"{cells[0]}/{cells[1]}"


_Col = _harness.Col
_TABLE = (
    *_lm.GRID_COLUMNS,
    _Col("reading", "cells_reading", ">7"),
    _Col("total", "cells_total", ">5"),
    _Col("dead", "cells_dead", ">4"),
    _Col("paper", lambda r: _paper((r["paper_reading"], r["paper_total"])), ">6"),
    _Col("gap", "gap", "7.3f"),
    _Col("mon s", "monitor_seconds", "6.1f"),
)
_SUMMARY = (
    _Col("optimizer", "optimizer", "<9"),
    _Col("runs", "runs", ">4"),
    _Col("reading/total", lambda s: f"{s['cells_reading']}/{s['cells_total']}", ">13"),
    _Col("dead cells", "cells_dead", ">10"),
    _Col("paper", lambda s: _paper(s["paper"]), ">6"),
)


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A plain-text table of the per-run rows."""
    return _harness.format_table(rows, _TABLE)


def format_summary(summary: Sequence[dict[str, Any]]) -> str:
    """A plain-text table of the per-optimizer sums."""
    return _harness.format_table(summary, _SUMMARY)


def plot_detection(rows, cells, path: Path, sizes: _lm.LMSizes) -> None:
    """Cells reading / with a dead cluster per run; fitted slope against prediction."""
    colors = _lm.COLORS
    with _harness.figure(path, figsize=(10, 3.6)) as fig:
        axes = fig.subplots(1, 2)
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


def _parser():
    p = _lm.parser(
        "python -m deadspec.experiments.detection",
        "Detection: layer × observable cells in which the dead-direction rate reads "
        "(DeadDirectionMonitor) on the over-training runs, per optimizer.",
        DEFAULT_OUT,
    )
    p.add_argument("--readings", type=int, default=None, help="monitor checkpoints per run")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns 0 (2 on a usage error)."""
    return _harness.cli_main("detection", _parser(), run, argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
