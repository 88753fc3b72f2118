"""Detection experiment: in how many cells the dead-direction rate reads, counting only cells
where a reading can exist.

Claim (Dead-Direction Conditioners, arXiv 2606.29176): on the over-trained language model, the
dead-direction rate is readable in 32 of 65 layer × observable cells with DDC against 7 of 65
with AdamW (*higher detection of dead directions*).

Setup (ours; the paper's cell definition is not public)
-------------------------------------------------------
- **Runs**: those of the over-training experiment (:mod:`deadspec.experiments.overtraining`:
  the same corpus, model, sizes, learning-rate grid, tuning seed and rule for choosing each
  arm's rate, so the chosen rates are that experiment's), with a
  :class:`deadspec.monitor.DeadDirectionMonitor` attached (it leaves the trajectories
  unchanged). Arms: ``adamw``, ``ddc-adam`` and ``ddc-adam-split`` (``muon``, ``ddc-muon`` on
  request); weight decays 0.01 and 0.1; 5 seeds. Probe: the first ``probe`` training sequences
  and their next bytes; ``readings`` checkpoints evenly spread over the run.
- **Cells.** Per block, the hidden layer of the MLP is read where a dead unit shows:
  - the activation side of ``blocks.i.mlp.act``, the ReLU's output (after the nonlinearity;
    ``fc_in``'s output is the pre-activation, where a dead unit is not a small direction);
  - the Fisher side of ``blocks.i.mlp.fc_out``, the layer that consumes those units (a dead
    unit makes its input column of every per-sample gradient small).

  Each with two observables, log det⁺ and λ_min (the monitor's predictions 2r and 2): 4 cells
  per block. The attention and unembedding outputs are linear maps, not readings after a
  nonlinearity, and are not cells.
- **Readable** (:class:`Readable`; every threshold is an argument): a cell is *eligible* when
  the reading can exist at all — activation side: more than twice as many probe rows
  (sequences × positions) as units, ``R > rows_per_width·h`` (default 2: at R ≈ h the bottom
  of a live spectrum already nears zero); Fisher side: more probe sequences than the layer has
  parameters, ``N > fisher_margin·p`` (the N × N per-sequence Fisher-Gram has rank ≤ p; N > p
  is sufficient for a dead direction to show, if not always necessary). It is *dead* when it is
  eligible and its spectrum has a dead cluster at the last checkpoint (r ≥ 1). It is
  *approached* when it is dead and a(t) spans at least ``min_decades`` decades over at least
  the monitor's ``min_points`` fitted points: a unit that jumps to silence, or a gap with no
  shrinking unit under it, has no rate to read. It *reads* when it is approached and its slope
  against the approach parameter is within ``tolerance`` of the prediction with R² ≥
  ``min_r2`` (the monitor's rule).
- **Approach parameter, gauge-invariant.** Hidden unit j of block i has the size
  ``u_j = (RMS_probe(act_j) · ‖fc_out.weight[:, j]‖)^½``. The ReLU rescaling gauge (fc_in's row j
  and bias × c, fc_out's column j ÷ c) and the LayerNorm gauges before fc_in leave it unchanged
  (the activation moves by c, the column by 1/c; a LayerNorm gauge changes neither); for a unit
  whose incoming and outgoing weights shrink together as t, ``u_j ∝ t``. The dead set D is the
  r units with the smallest u at the last checkpoint, r the post-ReLU reading's dead count there;
  ``a(t) = (Σ_{j∈D} u_j(t)²)^½`` (undefined when r = 0), for both of the block's sites. The
  observables are not invariant: a dead unit's activation eigenvalue goes as RMS(act_j)², so
  against a(t) its slope is 4 / (1 + dlog‖col_j‖ / dlog RMS(act_j)), the predicted 2 only for
  balanced shrinkage (within the 25% tolerance for ratios of about 0.6 to 1.7). The reading
  cells therefore count balanced approaches.
- **Compression** (reported, not part of the rule): the smallest unit size over the median,
  ``log10 min_j u_j / median u`` (the smaller over the blocks), and the units below
  ``near_dead`` × the median at the end.
- **Rule** (:data:`RULE`, printed before the runs and written to config.json), per DDC arm and
  weight decay, paired by seed against its base: reproduced when the DDC arm has more reading
  cells with paired-t p < 0.05; refuted when a pair has an approached cell (a rate could be
  read) and the DDC arm's reading cells are not more (mean paired difference ≤ 0); inconclusive
  otherwise — in particular when no pair has an approached cell (nothing is there to read) or
  a paired run diverged. Over the weight decays as the over-training rule. Reported beside it:
  each arm's reading cells over its approached cells (detection given an approach).

Outputs (``--out DIR``, default ``./deadspec-out/detection``): ``detection.csv`` (one row per
evaluation run), ``detection_cells.csv`` (one per run × cell: eligible, why not, dead count,
prediction, slope, R², reads), ``detection_units.csv`` (one per run × checkpoint × block: the
smallest unit size over the median and the near-dead units), ``detection_tuning.csv``,
``detection_summary.csv`` (per arm and weight decay: mean ± SE, the paired tests, the
verdicts), ``config.json`` and ``detection.png``.

Run: ``python -m deadspec.experiments.detection [--quick] [--size full]`` or
``deadspec repro detection``.
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

from deadspec.experiments import _harness, _lm, overtraining
from deadspec.experiments._stats import finite_or_nan, paired_t

__all__ = [
    "CELL_COLUMNS",
    "CSV_COLUMNS",
    "DEFAULT_OUT",
    "OPTIMIZERS",
    "RULE",
    "DetectionResult",
    "Readable",
    "approach_from_units",
    "classify_cells",
    "main",
    "one_run",
    "run",
    "unit_sizes",
    "verdict",
]

DEFAULT_OUT = Path("deadspec-out") / "detection"
#: The paper's (cells reading, total) — DDC (on an Adam base) and AdamW.
PAPER_CELLS = {"ddc-adam": (32, 65), "adamw": (7, 65)}
#: The arms run by default (any of the over-training arms may be asked for).
OPTIMIZERS = ("adamw", "ddc-adam", "ddc-adam-split")
ALPHA = 0.05
RULE = (
    "rule, per DDC arm and weight decay, paired by seed against its base (DDCAdam, both forms: "
    "AdamW; DDCMuon: Muon), each arm at the learning rate of the grid with the lowest minimum "
    "validation loss on the tuning seed: a cell (post-ReLU activation or fc_out Fisher reading, "
    "log det+ or lambda_min) reads when it is eligible (probe rows > rows_per_width x units; "
    "probe sequences > fisher_margin x the layer's parameters), has a dead cluster at the last "
    "checkpoint, is approached (the gauge-invariant approach parameter spans >= min_decades "
    "over the fitted points) and its slope against that parameter is within the tolerance of "
    f"the prediction with R^2 >= min_r2; reproduced when the DDC arm has more reading cells "
    f"with paired-t p < {ALPHA}; refuted when a pair has an approached cell and the DDC arm's "
    "reading cells are not more (mean paired difference <= 0); inconclusive otherwise (no "
    "approached cell in any pair: nothing to read; or a paired run diverged). An arm is "
    "reproduced when it is at every weight decay, refuted when it is at some and reproduced at "
    "none"
)

#: The over-training sizes; quick: a probe with more than twice as many rows as units
#: (24 sequences × 8 > 2 × 64).
SIZES = {
    **overtraining.SIZES,
    "quick": dataclasses.replace(overtraining.SIZES["quick"], n_train=24, probe=24, readings=10),
}

CSV_COLUMNS = (
    "corpus",
    "optimizer",
    "weight_decay",
    "lr",
    "seed",
    "steps",
    "cells_total",
    "cells_eligible",
    "cells_dead",
    "cells_approached",
    "cells_reading",
    "paper_reading",
    "paper_total",
    "near_dead_units",
    "min_unit_log10",
    "min_val",
    "final_val",
    "gap",
    "readings",
    "monitor_seconds",
    "diverged",
    "seconds",
)
CELL_COLUMNS = (
    "optimizer",
    "weight_decay",
    "seed",
    "layer",
    "side",
    "observable",
    "eligible",
    "why_not",
    "dead_count",
    "approached",
    "predicted",
    "slope",
    "r2",
    "n_points",
    "log_range",
    "reads",
)
UNIT_COLUMNS = ("optimizer", "weight_decay", "seed", "step", "block", "min_unit_log10",
                "near_dead_units")  # fmt: skip
METRICS = ("cells_eligible", "cells_dead", "cells_approached", "cells_reading", "near_dead_units",
           "min_unit_log10", "min_val")  # fmt: skip
SUMMARY_COLUMNS = (
    "optimizer",
    "weight_decay",
    "lr",
    "seeds",
    *(f"{m}_{s}" for m in METRICS for s in ("mean", "se")),
    "base",
    "reading_diff",
    "reading_diff_se",
    "reading_p",
    "approached_pairs",
    "reading_of_approached",
    "diverged",
    "min_unit_diff",
    "min_unit_p",
    "verdict",
)


@dataclasses.dataclass(frozen=True)
class Readable:
    """When a cell can read (see the module docstring).

    Attributes
    ----------
    rows_per_width : float
        Activation side: eligible when the probe rows R > rows_per_width × units.
    fisher_margin : float
        Fisher side: eligible when the probe sequences N > fisher_margin × the layer's
        parameters.
    min_decades : float
        A dead cell is *approached* when a(t) spans at least this many decades over at least
        the monitor's ``min_points`` fitted points (a unit that jumps to silence, or a gap with
        no shrinking unit under it, is not an approach: no rate can be read there).
    tolerance, min_r2 : float
        A dead cell reads when ``|slope − p| ≤ tolerance·|p|`` and R² ≥ min_r2.
    near_dead : float
        A unit is near-dead when its size is below this fraction of the median (reported only).
    """

    rows_per_width: float = 2.0
    fisher_margin: float = 1.0
    min_decades: float = 1.0
    tolerance: float = 0.25
    min_r2: float = 0.9
    near_dead: float = 0.01

    def check(self, fn: str) -> None:
        for k, v in dataclasses.asdict(self).items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise ValueError(f"{fn}: {k} must be a positive number, got {v!r}")
        if not (self.min_r2 <= 1 and self.near_dead < 1):
            raise ValueError(
                f"{fn}: min_r2 must be ≤ 1 and near_dead < 1, got {self.min_r2!r}, "
                f"{self.near_dead!r}"
            )


@dataclasses.dataclass
class DetectionResult:
    """What :func:`run` returns: the rows of the CSVs (``rows``, ``cells``, ``units``,
    ``tuning``, ``summary``), the verdicts per arm, the sizes, the paths (None when not
    written) and the wall time."""

    rows: list[dict[str, Any]]
    cells: list[dict[str, Any]]
    units: list[dict[str, Any]]
    tuning: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    verdicts: dict[str, str]
    sizes: _lm.LMSizes
    csv_path: Path | None
    cells_path: Path | None
    summary_path: Path | None
    png_path: Path | None
    seconds: float


# ---------------------------------------------------------------------------------------------
# The approach parameter and the cells
# ---------------------------------------------------------------------------------------------
def _sites(n_layers: int) -> list[tuple[str, str]]:
    """(post-ReLU site, consuming linear layer) of each block."""
    return [(f"blocks.{i}.mlp.act", f"blocks.{i}.mlp.fc_out") for i in range(n_layers)]


def unit_sizes(model: Any, x: Any) -> list[np.ndarray]:
    """Per block of a :class:`~deadspec.experiments._lm.TinyLM`, the size of each hidden unit on
    the probe ``x``: ``(RMS(act_j) · ‖fc_out.weight[:, j]‖)^½`` (float64; gauge-invariant)."""
    import torch

    with _harness.capture_outputs([b.mlp.act for b in model.blocks]) as acts, torch.no_grad():
        model(x)
    out = []
    with torch.no_grad():
        for act, b in zip(acts, model.blocks):
            rms = act.flatten(0, -2).double().pow(2).mean(0).sqrt()
            col = torch.linalg.vector_norm(b.mlp.fc_out.weight.double(), dim=0)
            out.append((rms * col).sqrt().numpy())
    return out


def approach_from_units(units: np.ndarray, r: int) -> np.ndarray:
    """a(t) from the unit sizes ``units`` (checkpoints × units): the norm of the ``r`` units
    smallest at the last checkpoint; NaN everywhere when r = 0."""
    units = np.asarray(units, dtype=np.float64)
    if r <= 0:
        return np.full(units.shape[0], np.nan)
    dead = np.argsort(units[-1], kind="stable")[:r]
    return np.sqrt(np.sum(units[:, dead] ** 2, axis=1))


def _reference_count(
    records: Sequence[dict[str, Any]], layer: str, side: str = "activation"
) -> int:
    """r of one side of ``layer`` at the last checkpoint (its dead count plus the directions
    that sank below the active threshold since the largest active count)."""
    mine = [r for r in records if r["layer"] == layer and r["side"] == side]
    if not mine:
        return 0
    last = mine[-1]
    return int(last["dead_count"]) + max(0, max(int(r["active"]) for r in mine) - last["active"])


def classify_cells(
    rates: Sequence[dict[str, Any]],
    sites: Sequence[tuple[str, str]],
    *,
    dead_counts: dict[tuple[str, str], int],
    rows: int,
    width: int,
    n_probe: int,
    fisher_params: int,
    min_points: int,
    readable: Readable,
) -> list[dict[str, Any]]:
    """The cells of one run from the monitor's rate rows: per site pair and observable (log det⁺,
    λ_min) the post-ReLU activation cell and the consumer's Fisher cell, each with ``eligible``,
    ``why_not``, ``dead`` (``dead_counts[(layer, side)]`` ≥ 1: r at the last checkpoint),
    ``approached`` (dead, and a(t) spans ≥ ``min_decades`` over ≥ ``min_points`` fitted
    points) and ``reads`` (approached, and the monitor's slope rule holds; :class:`Readable`).
    A missing rate row (the Fisher side was not computed) is an ineligible cell."""
    by_key = {(r["layer"], r["side"], r["observable"]): r for r in rates}
    act_ok = rows > readable.rows_per_width * width
    fisher_ok = n_probe > readable.fisher_margin * fisher_params
    span = readable.min_decades * math.log(10.0)  # the monitor's log_range is natural
    out = []
    for act, consumer in sites:
        for layer, side, ok, why in (
            (act, "activation", act_ok, f"rows {rows} ≤ {readable.rows_per_width:g} × units "
             f"{width}"),
            (consumer, "fisher", fisher_ok, f"probe {n_probe} ≤ {readable.fisher_margin:g} × "
             f"parameters {fisher_params}"),
        ):  # fmt: skip
            r_last = int(dead_counts.get((layer, side), 0))
            for obs in ("logdet_plus", "lambda_min"):
                r = by_key.get((layer, side, obs))
                eligible = bool(ok and r is not None)
                dead = eligible and r_last >= 1
                approached = bool(dead and r["n_points"] >= min_points
                                  and finite_or_nan(r["log_range"]) >= span)  # fmt: skip
                if eligible:
                    why_not = ""
                else:
                    why_not = why if not ok else "not computed"
                out.append({
                    "layer": layer, "side": side, "observable": obs, "eligible": eligible,
                    "why_not": why_not, "dead_count": r_last, "approached": approached,
                    "predicted": None if r is None else r["predicted"],
                    "slope": math.nan if r is None else r["slope"],
                    "r2": math.nan if r is None else r["r2"],
                    "n_points": 0 if r is None else r["n_points"],
                    "log_range": math.nan if r is None else r["log_range"],
                    "dead": dead, "reads": bool(approached and r["reads"]),
                })  # fmt: skip
    return out


# ---------------------------------------------------------------------------------------------
# One run
# ---------------------------------------------------------------------------------------------
def _monitor_options(sizes: _lm.LMSizes, readable: Readable) -> tuple[dict[str, Any], int]:
    """The monitor's keyword arguments and the Fisher layer's parameter count."""
    h = 4 * sizes.d_model
    p = h * sizes.d_model + sizes.d_model  # fc_out: weight and bias
    fisher = sizes.probe > readable.fisher_margin * p
    sites = _sites(sizes.n_layers)
    # the built-in approach is defined for the post-ReLU sites too (fc_in's "dead-norm"), but the
    # readout replaces it with the gauge-invariant one (rates(approach_values=...))
    approach = {act: act.replace(".act", ".fc_in") for act, _ in sites}
    opts = {"layers": [name for pair in sites for name in pair], "fisher": fisher,
            "approach": approach, "tolerance": readable.tolerance,
            "min_r2": readable.min_r2}  # fmt: skip
    return opts, p


def one_run(
    corpus: str,
    sizes: _lm.LMSizes,
    optimizer: str,
    lr: float,
    weight_decay: float,
    seed: int,
    readable: Readable,
) -> dict[str, Any]:
    """One monitored run (a worker of :func:`deadspec.experiments._harness.map_jobs`): its CSV
    row, and under ``"_cells"`` and ``"_units"`` its cell and unit-size rows."""
    data = overtraining.corpus_data(corpus, sizes, seed)
    probe = data[0][: sizes.probe]
    steps: list[int] = []
    sizes_at: list[list[np.ndarray]] = []

    def on_read(step: int, model: Any) -> None:
        steps.append(step)
        sizes_at.append(unit_sizes(model, probe))

    opts, p = _monitor_options(sizes, readable)
    res = _lm.train_lm(sizes, optimizer, lr, weight_decay, seed=seed, data=data, monitor=opts,
                       on_read=on_read)  # fmt: skip
    mon = res["monitor"]
    sites = _sites(sizes.n_layers)
    records = mon.records()
    table = {}
    for i, (act, consumer) in enumerate(sites):
        units = np.stack([s[i] for s in sizes_at])
        a = approach_from_units(units, _reference_count(records, act))
        table[act] = table[consumer] = a
    dead_counts = {(name, side): _reference_count(records, name, side)
                   for pair in sites for name, side in zip(pair, ("activation", "fisher"))}
    n_probe, ctx = probe.shape  # the probe actually read (at most n_train sequences)
    cells = classify_cells(mon.rates(approach_values=table), sites, dead_counts=dead_counts,
                           rows=n_probe * ctx, width=4 * sizes.d_model, n_probe=n_probe,
                           fisher_params=p, min_points=mon.min_points,
                           readable=readable)  # fmt: skip
    unit_rows, final_min, near = [], [], 0
    for step, per_block in zip(steps, sizes_at):
        for i, u in enumerate(per_block):
            med = float(np.median(u))
            ratio = math.log10(float(u.min()) / med) if u.min() > 0 and med > 0 else -math.inf
            n_near = int(np.sum(u < readable.near_dead * med))
            unit_rows.append({"step": step, "block": i, "min_unit_log10": ratio,
                              "near_dead_units": n_near})  # fmt: skip
            if step == steps[-1]:
                final_min.append(ratio)
                near += n_near
    key = {"optimizer": optimizer, "weight_decay": weight_decay, "seed": seed}
    paper = PAPER_CELLS.get(optimizer, (None, None))
    row = {
        "corpus": corpus, **key, "lr": lr, "steps": sizes.steps,
        "cells_total": len(cells),
        "cells_eligible": sum(c["eligible"] for c in cells),
        "cells_dead": sum(c["dead"] for c in cells),
        "cells_approached": sum(c["approached"] for c in cells),
        "cells_reading": sum(c["reads"] for c in cells),
        "paper_reading": paper[0], "paper_total": paper[1],
        "near_dead_units": near,
        "min_unit_log10": min(final_min) if final_min else math.nan,
        **{k: res[k] for k in ("min_val", "final_val", "gap")},
        "readings": len(mon.steps), "monitor_seconds": round(float(mon.seconds), 3),
        "diverged": bool(res["diverged"]), "seconds": round(float(res["seconds"]), 3),
    }  # fmt: skip
    row["_cells"] = [{**key, **c} for c in cells]
    row["_units"] = [{**key, **u} for u in unit_rows]
    return row


# ---------------------------------------------------------------------------------------------
# Statistics and verdicts
# ---------------------------------------------------------------------------------------------
def verdict(reading: dict[str, float], approached_pairs: int, diverged: int = 0) -> str:
    """:data:`RULE` for one DDC arm and weight decay from the paired test (DDC − base) of the
    reading cells, the number of pairs with an approached cell and of pairs with a diverged
    run."""
    if diverged:
        return f"inconclusive ({diverged} paired runs diverged)"
    if approached_pairs == 0:
        return "inconclusive (no approached dead cell in any pair: nothing to read)"
    p, d = reading["p"], reading["mean"]
    if not (math.isfinite(p) and math.isfinite(d)):
        return "inconclusive (too few paired seeds)"
    if d > 0 and p < ALPHA:
        return f"reproduced ({d:+.3g} reading cells, p = {p:.2g})"
    if d <= 0:
        return f"refuted ({d:+.3g} reading cells, p = {p:.2g})"
    return f"inconclusive ({d:+.3g} reading cells, p = {p:.2g})"


def _against_base(rows, mine, optimizer: str, wd: float) -> dict[str, Any]:
    """The paired tests of a DDC arm's runs ``mine`` against its base's, and the verdict (only
    the arm's conditional detection when it has no base run)."""
    approached = sum(r["cells_approached"] for r in mine)
    out: dict[str, Any] = {
        "reading_of_approached": sum(r["cells_reading"] for r in mine) / approached
        if approached else math.nan,
        "diverged": sum(bool(r["diverged"]) for r in mine),
    }  # fmt: skip
    base = overtraining.BASE.get(optimizer)
    theirs = {r["seed"]: r for r in rows if r["optimizer"] == base and r["weight_decay"] == wd}
    pairs = [(r, theirs[r["seed"]]) for r in mine if r["seed"] in theirs]
    if not pairs:
        return out

    def test(key: str) -> dict[str, float]:
        return paired_t([a[key] for a, _ in pairs], [b[key] for _, b in pairs])

    reading, mu = test("cells_reading"), test("min_unit_log10")
    n_app = sum(a["cells_approached"] > 0 or b["cells_approached"] > 0 for a, b in pairs)
    n_div = sum(bool(a["diverged"]) or bool(b["diverged"]) for a, b in pairs)
    return {**out, "base": base, "reading_diff": reading["mean"],
            "reading_diff_se": reading["se"], "reading_p": reading["p"],
            "approached_pairs": n_app, "min_unit_diff": mu["mean"], "min_unit_p": mu["p"],
            "verdict": verdict(reading, n_app, n_div)}  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Run
# ---------------------------------------------------------------------------------------------
def run(
    out: str | Path | None = DEFAULT_OUT,
    *,
    quick: bool = False,
    size: str = "default",
    corpus: str = "stdlib",
    seeds: int | None = None,
    optimizers: Sequence[str] = OPTIMIZERS,
    lrs: Sequence[float] | None = None,
    weight_decays: Sequence[float] | None = None,
    steps: int | None = None,
    n_train: int | None = None,
    probe: int | None = None,
    readings: int | None = None,
    readable: Readable | None = None,
    workers: int | None = None,
    plot: bool = True,
    progress: bool | None = None,
    echo: Callable[[str], None] | None = print,
) -> DetectionResult:
    """Run the detection experiment; write the CSVs, config.json and the plot into ``out``.

    Parameters
    ----------
    out, quick, size, corpus, seeds, optimizers, lrs, weight_decays, steps, n_train, workers,
    plot, progress, echo
        As :func:`deadspec.experiments.overtraining.run` (``optimizers`` among its arms;
        default :data:`OPTIMIZERS`). ``"default"``: 256 sequences of 32 bytes, 2 blocks of
        d_model 32, 600 steps, 3 rates × 2 weight decays, 5 seeds, 3 arms (48 runs).
    probe : int, optional
        Probe sequences (default 32; quick 16).
    readings : int, optional
        Monitor checkpoints per run (default 30).
    readable : Readable, optional
        When a cell can read (default :class:`Readable`'s defaults).

    Returns
    -------
    DetectionResult
    """
    fn = "deadspec.detection.run"
    readable = Readable() if readable is None else readable
    if not isinstance(readable, Readable):
        raise TypeError(f"{fn}: readable must be a Readable, got {type(readable).__name__}")
    readable.check(fn)
    grid = {"lrs": lrs, "weight_decays": weight_decays, "steps": steps, "n_train": n_train}
    sizes, n_seeds = overtraining.check_sizes(
        fn, quick, size, corpus, seeds, optimizers, SIZES, probe=probe, readings=readings, **grid
    )
    if sizes.probe > sizes.n_train:
        raise ValueError(
            f"{fn}: probe must be at most n_train ({sizes.n_train}), got {sizes.probe}"
        )
    _harness.check_out(out, "detection.run")  # before any work: a bad folder fails now
    workers = _harness.default_workers() if workers is None else workers
    if echo is not None:
        echo(f"detection: {RULE}; {readable}; stated before the runs")
    t0 = time.perf_counter()
    wds = sizes.weight_decays
    tuning, chosen = overtraining.tune(corpus, sizes, optimizers, workers, progress,
                                       "detection tuning")  # fmt: skip
    jobs = [(corpus, sizes, o, chosen[(o, wd)], wd, s, readable) for wd in wds
            for o in optimizers for s in range(n_seeds)]  # fmt: skip
    rows = _harness.map_jobs(one_run, jobs, workers, progress, "detection")
    cells = [c for r in rows for c in r.pop("_cells")]
    units = [u for r in rows for u in r.pop("_units")]
    summary = overtraining.summarize_arms(rows, optimizers, wds, chosen, METRICS, _against_base)
    verdicts = overtraining.arm_verdicts(summary)
    config = overtraining.run_config(corpus, sizes, n_seeds, optimizers, chosen, workers, RULE)
    config["readable"] = dataclasses.asdict(readable)
    paths = _harness.write_outputs(
        out,
        {
            "detection.csv": (rows, CSV_COLUMNS),
            "detection_cells.csv": (cells, CELL_COLUMNS),
            "detection_units.csv": (units, UNIT_COLUMNS),
            "detection_tuning.csv": (tuning, overtraining.CSV_COLUMNS),
            "detection_summary.csv": (summary, SUMMARY_COLUMNS),
        },
        {"detection.png": lambda path: plot_detection(summary, units, path, sizes, corpus,
                                                     readable.near_dead)}
        if plot
        else None,
        config={**config, "verdicts": verdicts},
    )
    seconds = time.perf_counter() - t0
    texts = [_harness.format_table(summary, _SUMMARY), ""]
    for o, v in verdicts.items():
        texts.append(f"verdict, {o}: {v}")
        texts += [f"  wd {s['weight_decay']:g}: {s['verdict']}; log10 min unit size "
                  f"{s['min_unit_diff']:+.3f} against {s['base']} (p = {s['min_unit_p']:.2g})"
                  for s in summary if s["optimizer"] == o and "verdict" in s]  # fmt: skip
    _harness.report(echo, texts, paths.values(), seconds)
    return DetectionResult(
        rows=rows, cells=cells, units=units, tuning=tuning, summary=summary, verdicts=verdicts,
        sizes=sizes, csv_path=paths.get("detection.csv"),
        cells_path=paths.get("detection_cells.csv"),
        summary_path=paths.get("detection_summary.csv"), png_path=paths.get("detection.png"),
        seconds=seconds,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Tables, figure, command line
# ---------------------------------------------------------------------------------------------
_SUMMARY = overtraining.summary_columns(
    (("eligible", "cells_eligible", ".1f"), ("dead", "cells_dead", ".1f"),
     ("approached", "cells_approached", ".1f"), ("reading", "cells_reading", ".1f"),
     ("near-dead", "near_dead_units", ".1f"),
     ("log10 min u", "min_unit_log10", ".2f")),
    12, "Δreading (p)", "reading_diff", "reading_p", "+.2f",
)  # fmt: skip


#: Where the figure draws a unit that never fires on the probe (size 0, log −∞).
_FLOOR = -3.0


def plot_detection(
    summary, units, path: Path, sizes: _lm.LMSizes, corpus: str, near_dead: float = 0.01
) -> None:
    """Cells eligible / dead / reading per arm (mean ± SE); the smallest unit size over the
    median along training, per arm (mean over seeds and blocks), at each weight decay."""
    wds = list(sizes.weight_decays)
    with _harness.figure(path, figsize=(4.4 * (len(wds) + 1), 3.8)) as fig:
        axes = fig.subplots(1, len(wds) + 1, squeeze=False)[0]
        ax = axes[0]
        labels = [f"{s['optimizer']}\nwd {s['weight_decay']:g}" for s in summary]
        x = np.arange(len(summary))
        keys = (("cells_eligible", "0.8"), ("cells_dead", "0.6"), ("cells_approached", "0.4"),
                ("cells_reading", "C0"))
        for j, (key, colour) in enumerate(keys):
            m = [finite_or_nan(s[f"{key}_mean"]) for s in summary]
            e = np.nan_to_num([finite_or_nan(s[f"{key}_se"]) for s in summary])
            ax.bar(x + (j - 1.5) * 0.2, m, 0.2, yerr=e, capsize=2, color=colour,
                   label=key.replace("cells_", ""))  # fmt: skip
        ax.set_xticks(x, labels, fontsize=6)
        total = 4 * sizes.n_layers
        ax.set_ylabel(f"cells per run (of {total})")
        ax.set_ylim(0, total)
        ax.set_title("cells where a rate can be read / is read", fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3, axis="y")
        for ax, wd in zip(axes[1:], wds):
            mine = [u for u in units if u["weight_decay"] == wd]
            for o in dict.fromkeys(u["optimizer"] for u in mine):
                pts = [u for u in mine if u["optimizer"] == o]
                steps = sorted({u["step"] for u in pts})
                mean = [np.mean([max(u["min_unit_log10"], _FLOOR) for u in pts
                                 if u["step"] == s]) for s in steps]  # fmt: skip
                ax.plot(steps, mean, color=_lm.COLORS.get(o, "k"), label=o, lw=1.2)
            ax.axhline(math.log10(near_dead), color="k", ls=":", lw=1)
            ax.set_xlabel("step")
            ax.set_ylabel(f"log10 (smallest unit size / median)\n(a unit silent on the probe: "
                          f"{_FLOOR:g})", fontsize=8)  # fmt: skip
            ax.set_title(f"how near a unit comes to dying, wd = {wd:g}", fontsize=9)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.suptitle(
            f"detection ({corpus}): {sizes.n_layers} blocks × d_model {sizes.d_model}, "
            f"{sizes.steps} steps, a reading of {sizes.probe} probe sequences every "
            f"{max(1, sizes.steps // sizes.readings)} steps",
            fontsize=10,
        )


def _parser():
    p = overtraining.parser(
        "python -m deadspec.experiments.detection",
        "Detection: the cells in which the dead-direction rate can be read and is read "
        "(DeadDirectionMonitor, a gauge-invariant approach parameter) on the over-training runs.",
        DEFAULT_OUT,
        OPTIMIZERS,
    )
    p.add_argument("--probe", type=int, default=None, help="probe sequences (default 32)")
    p.add_argument("--readings", type=int, default=None, help="monitor checkpoints per run")
    defaults = Readable()
    helps = {
        "rows_per_width": "activation cells: eligible when probe rows > this × units",
        "fisher_margin": "Fisher cells: eligible when probe sequences > this × parameters",
        "min_decades": "a dead cell is approached when a(t) spans ≥ this many decades",
        "tolerance": "a dead cell reads when |slope − p| ≤ this × |p| ...",
        "min_r2": "... and R² ≥ this",
        "near_dead": "report units below this fraction of the median size",
    }
    for f in dataclasses.fields(Readable):
        value = getattr(defaults, f.name)
        p.add_argument(f"--{f.name.replace('_', '-')}", type=float, default=value,
                       help=f"{helps[f.name]} (default {value:g})")  # fmt: skip
    return p


def _prepare(kwargs: dict[str, Any]) -> dict[str, Any]:
    fields = [f.name for f in dataclasses.fields(Readable)]
    kwargs["readable"] = Readable(**{k: kwargs.pop(k) for k in fields})
    return kwargs


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns 0 (2 on a usage error)."""
    return _harness.cli_main("detection", _parser(), run, argv, prepare=_prepare)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
