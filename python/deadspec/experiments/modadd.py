"""Modular-addition transformer: DDS volumes against a calibrated LLC over a d_model sweep.

Claim (Dead-Direction Signatures, arXiv 2606.21158): on a non-linear modular-addition
transformer, the DDS volume separates d_model across *eighteen orders of magnitude*, where a
calibrated LLC at the protocol budget is *rank-flat* (its values do not order the widths).

Setup
-----
:class:`deadspec.models.ModAddTransformer` (one layer, 4 heads, ReLU MLP of width 4·d_model, no
LayerNorm, learned positions; Nanda et al.) on ``(a + b) mod p``. The ``p²`` pairs are split by a
seeded permutation: ``train_frac`` (30%) for training, the rest for testing. Training: the
standard recipe, **AdamW, weight decay 1.0, betas (0.9, 0.98), full batch**, float32, seed
``seed`` for the initialisation at every width.

- **Trained to generalisation**: test accuracy is evaluated every ``eval_every`` steps (50); a
  run stops at the first evaluation with test accuracy ≥ ``target_acc`` (0.99), else at the step
  cap ``max_steps``. Each row records ``steps``, ``test_acc`` and ``generalised`` (whether the
  target was reached); a run that hit the cap is kept in the sweep and flagged.
- **Learning rate (measured choice)**: Nanda et al. use lr 1e-3, and ``--size full`` does.
  Grokking time scales roughly as 1/(lr·wd); measured on the 2-core development machine
  (shared, loaded) at p = 53, d_model = 64, 30% of pairs: lr 1e-3 was at 1.4% test accuracy
  after 1500 steps, lr 3e-3 at 4.5% after 5250 steps, lr 1e-2 reached 99.5% at ~1750 steps
  (~30–90 s depending on load). (lr 1e-3 with 50% of pairs grokked at ~2500 steps.) So the
  ``default`` and ``quick`` sizes use **lr 1e-2**; everything else is the recipe.
- **Which widths generalise** (measured 2026-11-29, p = 53, lr 1e-2, seed 0, 30% of pairs, test
  accuracy ≥ 0.99 checked every 50 steps): d_model 128 at 2750 steps (75 s), 48 at 3650, 40 at
  4650 (32 s); d_model 32 reached only 96% test accuracy after 20000 steps (150 s), 24 and 16
  memorised (train loss ≤ 0.05) but stayed at ≤ 11% test accuracy after 20000 steps. So the
  default sweep starts at 40; narrower widths (``--d-models 16,24,32``) are run and flagged
  ``generalised=False`` if they do not reach the target by the cap.
- **Sizes** (``--size``): ``default`` p = 53, d_model ∈ {40, 48, 64, 80, 96, 128}, cap 8000
  steps (12.7 min on 2 quiet cores with the LLC below, 6 of 6 widths generalised, measured
  2026-11-29); ``full`` p = 113, d_model ∈ {16, 32, 64, 128, 256,
  512}, lr 1e-3, cap 30000 steps (hours on a CPU); ``quick`` (``--quick``; tests) p = 23,
  d_model ∈ {8, 12, 16}, 100 steps (does not generalise; only exercises the code path).
  Every size is overridable (``--p``, ``--d-models``, ``--max-steps``, ``--lr``, ...).

DDS readings (at the trained checkpoint, on the training pairs)
---------------------------------------------------------------
- **The chosen layers** (``--layers``): ``mlp`` (default) = ``blocks.0.mlp.fc_in``,
  ``blocks.0.mlp.fc_out`` and ``unembed`` (the non-linear MLP and the readout, where the
  Fourier features of the grokked solution live); ``all`` = every ``nn.Linear`` (adds the
  attention projections ``blocks.0.attn.q/k/v/o``); or an explicit list of names.
- :func:`deadspec.read` with the observed labels (cross-entropy), token rows (``pool="none"``:
  3 rows per pair, except ``unembed`` which sees the last position only), uncentred Grams,
  gauges excluded (the unembed's cross-entropy logit shift is a structural zero, not a dead
  direction), default ``rtol``, ``gap_ratio`` 1e3. The readings run on a **float64 copy** of the
  float32 checkpoint (``read_dtype``), so the active set is limited by float64 round-off rather
  than float32's (the default rtol is ``max(shape)·ε`` of the input dtype).
- **Volumes**: per layer and side, ``log10 volume = log det⁺ / ln 10`` (the volume being
  ``exp(log det⁺)`` = the product of the active eigenvalues); per side, summed over the chosen
  layers (``log10_vol_activation``, ``log10_vol_fisher``) and both sides together
  (``log10_vol_total``).
- **Approach slopes**: :func:`deadspec.approach_slope` at every chosen layer (both sides),
  ``units=None`` (the dead cluster of the layer's activation spectrum below a gap of
  ``approach_gap_ratio`` (10, see below), scaled along its eigenvectors), default grid
  t ∈ [1e-3, 1e-1] (7 points); ``approach_units`` = the size of that cluster. A
  layer without a dead cluster gets NaN and the reason in ``approach_error``. ``--no-approach``
  skips them.

LLC baseline (:mod:`deadspec.llc`)
----------------------------------
Loss :func:`deadspec.llc.cross_entropy_nll` on the n training pairs, full-batch SGLD,
nβ = n / log n, float32 (the training dtype), vectorised chains.

- **Protocol budget** (the final estimate): **4 chains × 200 draws after 100 burn-in steps**,
  i.e. 4 × 300 = **1200 forward-backward passes** (+ 1 forward for L_n(w*)) per checkpoint.
- **Calibration** (:func:`deadspec.llc.calibrate`, its stability/plateau rule) per checkpoint,
  at a cheaper budget (2 chains × 100 draws after 50 burn-in = 300 passes per setting) over a
  fixed grid ε ∈ {1e-5, 3e-5, 1e-4, 3e-4} × γ ∈ {1e2, 1e3, 1e4} (12 settings, 3600 passes;
  ``full``, where nβ is ~4× larger: ε ∈ {3e-6, …, 3e-4} (5) × the same γ, 4500 passes). The
  estimate then reruns at the chosen (ε, γ) with a fresh seed at the protocol budget. If no
  setting is stable the LLC is NaN and the reason is recorded (``llc_rule``).
  *Why not the library's curvature-scaled grid*: at a grokked checkpoint the cross-entropy is
  ~1e-5, so the Hessian at w* is tiny (measured h_max ≈ 6e-3 at p = 53, d_model = 64) and
  ε = 0.05/(nβ·h_max) ≈ 0.06 diverges at every setting (``llc.calibrate`` now moves such a
  grid down tenfold, up to 3 times, when it diverges; the fixed grid is kept here so that
  every width is calibrated over the same settings); the fixed grid brackets the range where
  a probe on that checkpoint was stable (ε = 1e-4, γ = 1e3: λ̂ ≈ 1.4, small drift; ε = 1e-3
  diverges; γ = 1e4 over-localises to λ̂ ≈ 0).
- **Approach-slope gap**: the trained spectra decay smoothly over ~8–10 decades with no 1e3 gap
  (largest gaps ≈ 1 decade), so the dead cluster for :func:`deadspec.approach_slope` is taken
  below the largest gap of at least ``approach_gap_ratio`` = 10 (``read``'s ``dead_count`` keeps
  1e3).

Cost per checkpoint
-------------------
``dds_passes``: forward calls of the model during the DDS readings (read + approach slopes),
each followed by at most one backward, counted by a forward hook; ``dds_seconds`` their wall
time. ``llc_passes``/``llc_seconds``: the final estimate; ``cal_passes``/``cal_seconds``: the
calibration sweep.

Report
------
Across the sweep: how many orders of magnitude each DDS volume spans (``max − min`` of the
log10 volumes), whether it is monotone in d_model (strictly increasing or decreasing) and its
Spearman ρ against d_model (numpy, average ranks for ties; :func:`spearman`); for the LLC its
spread (``max − min``, the relative spread ``(max − min)/mean`` and ``log10(max/min)`` in orders
of magnitude), whether it is monotone and its Spearman ρ against d_model. Paper: eighteen
orders for DDS, rank-flat LLC.

Outputs (``--out DIR``, default ``./deadspec-out/modadd``)
--------------------------------------------------------
``modadd.csv`` (one row per d_model; rewritten after every width, so an interrupted sweep keeps
its finished widths), ``modadd_layers.csv`` (one row per d_model × layer ×
side), ``modadd_summary.csv`` (metric, value), ``modadd.png``; ``checkpoints/d_model_NNN.pt``
(plain ``state_dict`` files), ``checkpoints/models.py`` (zero-argument factories ``d16()``,
``d32()``, ...) and ``checkpoints/train_data.pt`` (``{"inputs", "targets"}``), so that e.g.
``deadspec read DIR/checkpoints/d_model_032.pt --model DIR/checkpoints/models.py:d32 --data
DIR/checkpoints/train_data.pt --out readings.csv`` re-reads a checkpoint.

Run: ``python -m deadspec.experiments.modadd [--quick | --size default|full]`` or
``deadspec repro modadd``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import dataclasses
import math
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_OUT",
    "LAYER_PRESETS",
    "ModAddResult",
    "format_table",
    "main",
    "run",
    "spearman",
    "summarize",
]

DEFAULT_OUT = Path("deadspec-out") / "modadd"
PAPER_ORDERS = 18.0
SIDES = ("activation", "fisher")

LAYER_PRESETS: dict[str, tuple[str, ...]] = {
    "mlp": ("blocks.0.mlp.fc_in", "blocks.0.mlp.fc_out", "unembed"),
    "all": (
        "blocks.0.attn.q",
        "blocks.0.attn.k",
        "blocks.0.attn.v",
        "blocks.0.attn.o",
        "blocks.0.mlp.fc_in",
        "blocks.0.mlp.fc_out",
        "unembed",
    ),
}

_SIZES: dict[str, dict[str, Any]] = {
    "quick": {
        "p": 23,
        "d_models": (8, 12, 16),
        "lr": 1e-2,
        "max_steps": 100,
        "eval_every": 50,
        "chains": 2,
        "draws": 20,
        "burnin": 10,
        "cal_chains": 2,
        "cal_draws": 10,
        "cal_burnin": 5,
        "epsilons": (1e-4, 3e-4),
        "gammas": (1e3,),
    },
    "default": {
        "p": 53,
        "d_models": (40, 48, 64, 80, 96, 128),
        "lr": 1e-2,
        "max_steps": 8000,
        "eval_every": 50,
        "chains": 4,
        "draws": 200,
        "burnin": 100,
        "cal_chains": 2,
        "cal_draws": 100,
        "cal_burnin": 50,
        "epsilons": (1e-5, 3e-5, 1e-4, 3e-4),
        "gammas": (1e2, 1e3, 1e4),
    },
    "full": {
        "p": 113,
        "d_models": (16, 32, 64, 128, 256, 512),
        "lr": 1e-3,
        "max_steps": 30000,
        "eval_every": 100,
        "chains": 4,
        "draws": 200,
        "burnin": 100,
        "cal_chains": 2,
        "cal_draws": 100,
        "cal_burnin": 50,
        "epsilons": (3e-6, 1e-5, 3e-5, 1e-4, 3e-4),
        "gammas": (1e2, 1e3, 1e4),
    },
}

RUN_COLUMNS = (
    "p",
    "d_model",
    "n_heads",
    "d_mlp",
    "n_params",
    "n_train",
    "n_test",
    "lr",
    "weight_decay",
    "steps",
    "train_loss",
    "train_acc",
    "test_acc",
    "generalised",
    "train_seconds",
    "log10_vol_activation",
    "log10_vol_fisher",
    "log10_vol_total",
    "logdet_activation",
    "logdet_fisher",
    "active_activation",
    "active_fisher",
    "dead_activation",
    "dead_fisher",
    "mean_approach_slope_activation",
    "mean_approach_slope_fisher",
    "llc_mean",
    "llc_std",
    "llc_epsilon",
    "llc_gamma",
    "llc_nbeta",
    "llc_n_diverged",
    "llc_drift",
    "llc_rule",
    "llc_warnings",
    "dds_passes",
    "dds_seconds",
    "llc_passes",
    "llc_seconds",
    "cal_passes",
    "cal_seconds",
    "pass_ratio",
    "time_ratio",
    "checkpoint",
    "seed",
)
LAYER_COLUMNS = (
    "p",
    "d_model",
    "layer",
    "side",
    "n",
    "dim",
    "active",
    "structural_zeros",
    "dead_count",
    "logdet_plus",
    "log10_volume",
    "lambda_min",
    "effective_rank",
    "participation_ratio",
    "condition_number",
    "approach_slope",
    "approach_r2",
    "approach_stderr",
    "approach_lambda_min_slope",
    "approach_units",
    "approach_active",
    "approach_error",
)


@dataclasses.dataclass(frozen=True)
class ModAddResult:
    """Result of :func:`run`.

    Attributes
    ----------
    rows : list of dict
        One row per d_model (columns ``RUN_COLUMNS``).
    layer_rows : list of dict
        One row per d_model × layer × side (columns ``LAYER_COLUMNS``).
    summary : dict
        The sweep summary (see :func:`summarize`).
    csv_path, layers_csv_path, summary_csv_path, png_path : Path or None
        What was written (None when ``out`` is None / ``plot=False``).
    checkpoint_dir : Path or None
        Folder with the checkpoints, factories and training data.
    seconds : float
        Wall time of the run.
    """

    rows: list[dict[str, Any]]
    layer_rows: list[dict[str, Any]]
    summary: dict[str, Any]
    csv_path: Path | None
    layers_csv_path: Path | None
    summary_csv_path: Path | None
    png_path: Path | None
    checkpoint_dir: Path | None
    seconds: float


# ---------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------
def _rank(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    xs = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and xs[j + 1] == xs[i]:
            j += 1
        ranks[order[i : j + 1]] = 0.5 * (i + j) + 1.0
        i = j + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties) over the pairs where both are finite.

    NaN with fewer than 3 finite pairs or a constant input. Same value as
    ``scipy.stats.spearmanr`` (scipy is not a dependency).
    """
    xa = np.asarray(x, dtype=np.float64)
    ya = np.asarray(y, dtype=np.float64)
    if xa.ndim != 1 or xa.shape != ya.shape:
        raise ValueError(
            f"deadspec.modadd.spearman: x and y must be 1-D of equal length, got {xa.shape} "
            f"and {ya.shape}"
        )
    ok = np.isfinite(xa) & np.isfinite(ya)
    xa, ya = xa[ok], ya[ok]
    if len(xa) < 3:
        return float("nan")
    rx, ry = _rank(xa), _rank(ya)
    rx -= rx.mean()
    ry -= ry.mean()
    den = math.sqrt(float(rx @ rx) * float(ry @ ry))
    return float("nan") if den == 0.0 else float(rx @ ry) / den


def _monotone(x: Sequence[float], y: Sequence[float]) -> str:
    """``"increasing"`` / ``"decreasing"`` (strictly, in the order of x) or ``"no"``."""
    xa = np.asarray(x, dtype=np.float64)
    ya = np.asarray(y, dtype=np.float64)
    ok = np.isfinite(xa) & np.isfinite(ya)
    ya = ya[ok][np.argsort(xa[ok], kind="mergesort")]
    if len(ya) < 2:
        return "no"
    d = np.diff(ya)
    if np.all(d > 0):
        return "increasing"
    if np.all(d < 0):
        return "decreasing"
    return "no"


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Sweep summary from the per-d_model rows.

    For each DDS volume column (``log10_vol_activation``, ``log10_vol_fisher``,
    ``log10_vol_total``): ``<col>_orders`` = max − min over the finite entries (orders of
    magnitude spanned), ``<col>_monotone`` (``"increasing"``/``"decreasing"``/``"no"``) and
    ``<col>_spearman`` (ρ against d_model). For the LLC: ``llc_min``, ``llc_max``,
    ``llc_spread`` (max − min), ``llc_rel_spread`` ((max − min)/mean), ``llc_orders``
    (log10(max/min), NaN unless both are positive), ``llc_monotone``, ``llc_spearman``; also
    ``n_points``, ``n_generalised``, ``paper_orders`` (18) and the median cost ratios.
    """
    d = np.array([float(r["d_model"]) for r in rows])
    out: dict[str, Any] = {"n_points": len(rows), "paper_orders": PAPER_ORDERS}
    out["n_generalised"] = int(sum(bool(r["generalised"]) for r in rows))
    for col in ("log10_vol_activation", "log10_vol_fisher", "log10_vol_total"):
        v = np.array([_float(r.get(col)) for r in rows])
        fin = v[np.isfinite(v)]
        out[f"{col}_orders"] = float(fin.max() - fin.min()) if len(fin) else float("nan")
        out[f"{col}_monotone"] = _monotone(d, v)
        out[f"{col}_spearman"] = spearman(d, v)
    lam = np.array([_float(r.get("llc_mean")) for r in rows])
    fin = lam[np.isfinite(lam)]
    if len(fin):
        lo, hi, mean = float(fin.min()), float(fin.max()), float(fin.mean())
        out["llc_min"], out["llc_max"] = lo, hi
        out["llc_spread"] = hi - lo
        out["llc_rel_spread"] = (hi - lo) / mean if mean != 0 else float("nan")
        out["llc_orders"] = math.log10(hi / lo) if lo > 0 else float("nan")
    else:
        for k in ("llc_min", "llc_max", "llc_spread", "llc_rel_spread", "llc_orders"):
            out[k] = float("nan")
    out["llc_monotone"] = _monotone(d, lam)
    out["llc_spearman"] = spearman(d, lam)
    for k in ("pass_ratio", "time_ratio"):
        v = np.array([_float(r.get(k)) for r in rows])
        v = v[np.isfinite(v)]
        out[f"median_{k}"] = float(np.median(v)) if len(v) else float("nan")
    return out


def _float(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------
def _split(p: int, train_frac: float, seed: int):
    import torch

    from deadspec.models import modadd_data

    x, y = modadd_data(p)
    perm = torch.randperm(p * p, generator=torch.Generator().manual_seed(int(seed)))
    n_train = round(train_frac * p * p)
    tr, te = perm[:n_train], perm[n_train:]
    return x[tr], y[tr], x[te], y[te]


def _train(
    model,
    xtr,
    ytr,
    xte,
    yte,
    *,
    lr,
    weight_decay,
    betas,
    max_steps,
    eval_every,
    target_acc,
    progress,
    desc,
) -> dict[str, Any]:
    """Full-batch AdamW until test accuracy ≥ target_acc (checked every eval_every) or the cap."""
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=betas, weight_decay=weight_decay)
    model.train()
    steps, test_acc, generalised = 0, float("nan"), False
    bar = tqdm(total=max_steps, desc=desc, unit="step", disable=not progress, leave=False)
    try:
        while steps < max_steps:
            loss = F.cross_entropy(model(xtr), ytr)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
            bar.update(1)
            if steps % eval_every == 0 or steps == max_steps:
                with torch.no_grad():
                    test_acc = float((model(xte).argmax(-1) == yte).float().mean())
                bar.set_postfix_str(f"loss={loss.item():.2e} test={test_acc:.3f}")
                if test_acc >= target_acc:
                    generalised = True
                    break
    finally:
        bar.close()
    model.eval()
    with torch.no_grad():
        out = model(xtr)
        train_loss = float(F.cross_entropy(out, ytr))
        train_acc = float((out.argmax(-1) == ytr).float().mean())
        if not math.isfinite(test_acc):
            test_acc = float((model(xte).argmax(-1) == yte).float().mean())
    return {
        "steps": steps,
        "train_loss": train_loss,
        "train_acc": train_acc,
        "test_acc": test_acc,
        "generalised": generalised,
        "train_seconds": time.perf_counter() - t0,
    }


# ---------------------------------------------------------------------------------------------
# DDS and LLC readings
# ---------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _count_forwards(model) -> Iterator[list[int]]:
    """Count forward calls of ``model`` (also of its deep copies, which share the hook)."""
    counter = [0]

    def hook(_module, _inputs, _output):
        counter[0] += 1

    handle = model.register_forward_hook(hook)
    try:
        yield counter
    finally:
        handle.remove()


def _dds(model, x, y, layers, *, gap_ratio, approach, approach_gap_ratio, read_dtype):
    """DDS readings of ``layers``; returns (layer rows without p/d_model, passes, seconds)."""
    import torch

    import deadspec

    work = copy.deepcopy(model).to(getattr(torch, read_dtype)).eval()
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    with _count_forwards(work) as counter:
        reading = deadspec.read(work, x, targets=y, layers=list(layers), gap_ratio=gap_ratio)
        for name in layers:
            lr_ = reading[name]
            for side in SIDES:
                spec = lr_.activation if side == "activation" else lr_.fisher
                row: dict[str, Any] = {"layer": name, "side": side, "n": lr_.n_samples}
                if spec is None:
                    row["approach_error"] = "no Fisher side"
                    rows.append(row)
                    continue
                row.update(
                    dim=len(spec.eigenvalues),
                    active=spec.active,
                    structural_zeros=spec.structural_zeros,
                    dead_count=spec.dead_count,
                    logdet_plus=spec.logdet_plus,
                    log10_volume=spec.logdet_plus / math.log(10.0),
                    lambda_min=spec.lambda_min,
                    effective_rank=spec.effective_rank,
                    participation_ratio=spec.participation_ratio,
                    condition_number=spec.condition_number,
                )
                if approach:
                    try:
                        ap = deadspec.approach_slope(
                            work,
                            x,
                            layer=name,
                            side=side,
                            targets=y,
                            gap_ratio=approach_gap_ratio,
                        )
                        row.update(
                            approach_slope=ap.slope,
                            approach_r2=ap.r2,
                            approach_stderr=ap.stderr,
                            approach_lambda_min_slope=ap.lambda_min_slope,
                            approach_units=ap.n_directions,
                            approach_active=ap.active,
                        )
                    except (ValueError, RuntimeError) as exc:
                        row["approach_error"] = str(exc)[:200]
                rows.append(row)
    return rows, counter[0], time.perf_counter() - t0


def _llc(model, x, y, *, sz, seed, progress) -> dict[str, Any]:
    """Calibrate (ε, γ) on a fixed (ε, γ) grid, then estimate at the protocol budget."""
    from deadspec import llc

    loss_fn = llc.cross_entropy_nll
    data = (x, y)
    nbeta = llc.default_nbeta(int(x.shape[0]))
    t0 = time.perf_counter()
    cal = llc.calibrate(
        model,
        data,
        loss_fn=loss_fn,
        epsilons=list(sz["epsilons"]),
        gammas=list(sz["gammas"]),
        nbeta=nbeta,
        chains=sz["cal_chains"],
        draws=sz["cal_draws"],
        burnin=sz["cal_burnin"],
        seed=seed,
        progress=progress,
    )
    cal_seconds = time.perf_counter() - t0
    out: dict[str, Any] = {
        "llc_nbeta": nbeta,
        "llc_rule": cal.rule,
        "cal_passes": int(cal.passes),
        "cal_seconds": cal_seconds,
    }
    if cal.epsilon is None:
        out.update(
            llc_mean=float("nan"),
            llc_std=float("nan"),
            llc_passes=0,
            llc_seconds=0.0,
            llc_warnings="calibration found no stable setting",
        )
        return out
    res = llc.estimate(
        model,
        data,
        loss_fn=loss_fn,
        nbeta=nbeta,
        epsilon=cal.epsilon,
        gamma=cal.gamma,
        chains=sz["chains"],
        draws=sz["draws"],
        burnin=sz["burnin"],
        seed=seed + 7919,
        warn=False,
        progress=progress,
    )
    out.update(
        llc_mean=res.mean,
        llc_std=res.std,
        llc_epsilon=res.epsilon,
        llc_gamma=res.gamma,
        llc_n_diverged=int(res.diverged.sum()),
        llc_drift=res.drift,
        llc_passes=int(res.passes),
        llc_seconds=res.seconds,
        llc_warnings="; ".join(res.warnings),
    )
    return out


def _aggregate(layer_rows: list[dict[str, Any]]) -> dict[str, Any]:
    agg: dict[str, Any] = {}
    for side in SIDES:
        rs = [r for r in layer_rows if r["side"] == side and r.get("logdet_plus") is not None]
        ld = float(sum(r["logdet_plus"] for r in rs)) if rs else float("nan")
        agg[f"logdet_{side}"] = ld
        agg[f"log10_vol_{side}"] = ld / math.log(10.0)
        agg[f"active_{side}"] = int(sum(r["active"] for r in rs))
        agg[f"dead_{side}"] = int(sum(r["dead_count"] for r in rs))
        sl = [_float(r.get("approach_slope")) for r in rs]
        sl = [s for s in sl if math.isfinite(s)]
        agg[f"mean_approach_slope_{side}"] = float(np.mean(sl)) if sl else float("nan")
    agg["log10_vol_total"] = agg["log10_vol_activation"] + agg["log10_vol_fisher"]
    return agg


# ---------------------------------------------------------------------------------------------
# Run
# ---------------------------------------------------------------------------------------------
def _resolve_layers(layers: str | Sequence[str]) -> tuple[str, ...]:
    if isinstance(layers, str):
        if layers not in LAYER_PRESETS:
            raise ValueError(
                f"deadspec.modadd.run: layers must be one of {sorted(LAYER_PRESETS)} or a list of "
                f"layer names, got {layers!r}"
            )
        return LAYER_PRESETS[layers]
    names = tuple(str(n) for n in layers)
    if not names:
        raise ValueError("deadspec.modadd.run: layers must not be empty, got []")
    return names


def run(
    out: str | Path | None = DEFAULT_OUT,
    *,
    quick: bool = False,
    size: str = "default",
    p: int | None = None,
    d_models: Sequence[int] | None = None,
    n_heads: int = 4,
    train_frac: float = 0.3,
    lr: float | None = None,
    weight_decay: float = 1.0,
    betas: tuple[float, float] = (0.9, 0.98),
    max_steps: int | None = None,
    eval_every: int | None = None,
    target_acc: float = 0.99,
    layers: str | Sequence[str] = "mlp",
    approach: bool = True,
    gap_ratio: float = 1e3,
    approach_gap_ratio: float = 10.0,
    read_dtype: str = "float64",
    chains: int | None = None,
    draws: int | None = None,
    burnin: int | None = None,
    llc: bool = True,
    seed: int = 0,
    save_checkpoints: bool = True,
    plot: bool = True,
    progress: bool | None = None,
    echo: Callable[[str], None] | None = print,
) -> ModAddResult:
    """Run the modular-addition d_model sweep; write CSVs, plot and checkpoints into ``out``.

    Parameters
    ----------
    out : str or Path or None
        Output folder (created); None writes nothing.
    quick : bool
        Tiny sizes for tests (same as ``size="quick"``).
    size : {"default", "full", "quick"}
        Preset of p, d_model list, lr, step cap and LLC budgets (module docstring).
    p : int, optional
        Modulus (default from the size: 53 / 113 / 23).
    d_models : sequence of int, optional
        Widths of the sweep (each divisible by ``n_heads``); default from the size.
    n_heads : int
        Attention heads (4).
    train_frac : float
        Fraction of the p² pairs used for training (0.3).
    lr, weight_decay, betas
        AdamW settings (lr default from the size: 1e-2 default/quick, 1e-3 full).
    max_steps, eval_every : int, optional
        Step cap and test-accuracy check period (defaults from the size).
    target_acc : float
        Test accuracy that counts as generalised (0.99).
    layers : "mlp" or "all" or sequence of str
        The chosen layers (``LAYER_PRESETS``).
    approach : bool
        Also measure the approach slopes.
    gap_ratio : float
        Spectral gap of :func:`deadspec.read` (its ``dead_count``), 1e3.
    approach_gap_ratio : float
        Spectral gap delimiting the dead cluster scaled by :func:`deadspec.approach_slope` (10).
    read_dtype : {"float64", "float32"}
        Dtype of the copy the DDS readings run on.
    chains, draws, burnin : int, optional
        Override the LLC protocol budget (default 4 × 200 after 100 burn-in).
    llc : bool
        Run the LLC baseline.
    seed : int
        Seed of the split, the initialisations and the SGLD chains.
    save_checkpoints : bool
        Save the trained state_dicts (and factories, data) under ``out/checkpoints``.
    plot : bool
        Write the PNG.
    progress : bool or None
        tqdm bars (sweep, training, calibration); None: only when stderr is a terminal.
    echo : callable or None
        Where the table and summary are printed (None: silent).

    Returns
    -------
    ModAddResult
    """
    import torch
    from tqdm.auto import tqdm

    from deadspec.models import ModAddTransformer

    fn = "modadd.run"
    size = "quick" if quick else size
    if size not in _SIZES:
        raise ValueError(f"deadspec.{fn}: size must be one of {sorted(_SIZES)}, got {size!r}")
    sz = dict(_SIZES[size])
    for key, val in (
        ("p", p),
        ("lr", lr),
        ("max_steps", max_steps),
        ("eval_every", eval_every),
        ("chains", chains),
        ("draws", draws),
        ("burnin", burnin),
    ):
        if val is not None:
            sz[key] = val
    if d_models is not None:
        sz["d_models"] = tuple(int(d) for d in d_models)
    p_ = int(sz["p"])
    dms = sorted({int(d) for d in sz["d_models"]})
    if p_ < 3:
        raise ValueError(f"deadspec.{fn}: p must be at least 3, got {p_}")
    if not dms or any(d < 1 or d % n_heads for d in dms):
        raise ValueError(
            f"deadspec.{fn}: d_models must be positive multiples of n_heads={n_heads}, got {dms}"
        )
    if not (0.0 < train_frac < 1.0):
        raise ValueError(f"deadspec.{fn}: train_frac must be in (0, 1), got {train_frac}")
    if read_dtype not in ("float64", "float32"):
        raise ValueError(
            f"deadspec.{fn}: read_dtype must be 'float64' or 'float32', got {read_dtype!r}"
        )
    for key in ("max_steps", "eval_every", "chains", "draws"):
        if int(sz[key]) < 1:
            raise ValueError(f"deadspec.{fn}: {key} must be a positive integer, got {sz[key]}")
    layer_names = _resolve_layers(layers)
    if progress is None:
        progress = sys.stderr.isatty()
    t_start = time.perf_counter()

    xtr, ytr, xte, yte = _split(p_, train_frac, seed)
    out_dir = Path(out) if out is not None else None
    ck_dir = None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        if save_checkpoints:
            ck_dir = out_dir / "checkpoints"
            ck_dir.mkdir(exist_ok=True)
            torch.save({"inputs": xtr, "targets": ytr}, ck_dir / "train_data.pt")
            _write_factories(ck_dir / "models.py", p_, dms, n_heads)

    rows: list[dict[str, Any]] = []
    layer_rows: list[dict[str, Any]] = []
    with torch.random.fork_rng():
        bar = tqdm(dms, desc="modadd sweep", unit="d_model", disable=not progress)
        for d in bar:
            bar.set_postfix_str(f"d_model={d}")
            torch.manual_seed(seed)
            model = ModAddTransformer(p=p_, d_model=d, n_heads=n_heads)
            tr = _train(
                model,
                xtr,
                ytr,
                xte,
                yte,
                lr=float(sz["lr"]),
                weight_decay=weight_decay,
                betas=tuple(betas),
                max_steps=int(sz["max_steps"]),
                eval_every=int(sz["eval_every"]),
                target_acc=target_acc,
                progress=progress,
                desc=f"train d={d}",
            )
            row: dict[str, Any] = {
                "p": p_,
                "d_model": d,
                "n_heads": n_heads,
                "d_mlp": model.blocks[0].mlp.fc_in.out_features,
                "n_params": sum(q.numel() for q in model.parameters()),
                "n_train": int(xtr.shape[0]),
                "n_test": int(xte.shape[0]),
                "lr": float(sz["lr"]),
                "weight_decay": weight_decay,
                "seed": seed,
                **tr,
            }
            if ck_dir is not None:
                ck = ck_dir / f"d_model_{d:03d}.pt"
                torch.save(model.state_dict(), ck)
                row["checkpoint"] = str(ck)
            lrows, dds_passes, dds_seconds = _dds(
                model,
                xtr,
                ytr,
                layer_names,
                gap_ratio=gap_ratio,
                approach=approach,
                approach_gap_ratio=approach_gap_ratio,
                read_dtype=read_dtype,
            )
            for lr_ in lrows:
                layer_rows.append({"p": p_, "d_model": d, **lr_})
            row.update(_aggregate(lrows))
            row["dds_passes"], row["dds_seconds"] = dds_passes, dds_seconds
            if llc:
                row.update(_llc(model, xtr, ytr, sz=sz, seed=seed, progress=progress))
                ok = row["llc_passes"] > 0 and dds_passes > 0
                row["pass_ratio"] = row["llc_passes"] / dds_passes if ok else float("nan")
                row["time_ratio"] = row["llc_seconds"] / dds_seconds if ok else float("nan")
            rows.append(row)
            if out_dir is not None:  # partial results survive an interrupted sweep
                _write_csv(rows, RUN_COLUMNS, out_dir / "modadd.csv")
                _write_csv(layer_rows, LAYER_COLUMNS, out_dir / "modadd_layers.csv")
    summary = summarize(rows)

    csv_path = layers_csv = summary_csv = png_path = None
    if out_dir is not None:
        csv_path = out_dir / "modadd.csv"
        _write_csv(rows, RUN_COLUMNS, csv_path)
        layers_csv = out_dir / "modadd_layers.csv"
        _write_csv(layer_rows, LAYER_COLUMNS, layers_csv)
        summary_csv = out_dir / "modadd_summary.csv"
        with open(summary_csv, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["metric", "value"])
            for k, v in summary.items():
                w.writerow([k, v])
        if plot:
            png_path = out_dir / "modadd.png"
            _plot(rows, layer_rows, summary, png_path, p_)
    seconds = time.perf_counter() - t_start
    if echo is not None:
        echo(format_table(rows))
        echo(format_summary(summary))
        if csv_path is not None:
            echo(
                f"wrote {csv_path}, {layers_csv}, {summary_csv}"
                + (f", {png_path}" if png_path is not None else "")
            )
        if ck_dir is not None:
            echo(
                f"checkpoints in {ck_dir} (re-read: deadspec read {ck_dir}/d_model_NNN.pt "
                f"--model {ck_dir}/models.py:dNNN --data {ck_dir}/train_data.pt --out r.csv)"
            )
        echo(f"({seconds:.1f} s)")
    return ModAddResult(
        rows=rows,
        layer_rows=layer_rows,
        summary=summary,
        csv_path=csv_path,
        layers_csv_path=layers_csv,
        summary_csv_path=summary_csv,
        png_path=png_path,
        checkpoint_dir=ck_dir,
        seconds=seconds,
    )


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------
def _write_factories(path: Path, p: int, dms: Sequence[int], n_heads: int) -> None:
    lines = [
        '"""Factories for the modadd checkpoints (written by deadspec.experiments.modadd)."""',
        "",
        "from deadspec.models import ModAddTransformer",
        "",
    ]
    for d in dms:
        lines += [
            "",
            f"def d{d}():",
            f"    return ModAddTransformer(p={p}, d_model={d}, n_heads={n_heads})",
            "",
        ]
    path.write_text("\n".join(lines))


def _write_csv(rows: Sequence[dict[str, Any]], cols: Sequence[str], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(cols))
        w.writeheader()
        for row in rows:
            w.writerow({k: row.get(k) for k in cols})


def _fmt(v: Any, spec: str) -> str:
    f = _float(v)
    if v is None:
        return "-"
    return "nan" if not math.isfinite(f) else format(f, spec)


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A plain-text table of the per-d_model rows (what :func:`run` prints)."""
    head = (
        f"{'d_model':>7} {'steps':>6} {'test':>6} {'log10V_act':>11} {'log10V_fis':>11} "
        f"{'slope_act':>9} {'slope_fis':>9} {'LLC':>9} {'±':>7} {'DDS pass':>8} {'DDS s':>6} "
        f"{'LLC pass':>8} {'LLC s':>7} {'cal pass':>8} {'cal s':>7}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['d_model']:>7} {r['steps']:>6} {_fmt(r['test_acc'], '6.3f')}"
            f"{'' if r['generalised'] else '*'} "
            f"{_fmt(r.get('log10_vol_activation'), '11.1f')} "
            f"{_fmt(r.get('log10_vol_fisher'), '11.1f')} "
            f"{_fmt(r.get('mean_approach_slope_activation'), '9.2f')} "
            f"{_fmt(r.get('mean_approach_slope_fisher'), '9.2f')} "
            f"{_fmt(r.get('llc_mean'), '9.2f')} {_fmt(r.get('llc_std'), '7.2f')} "
            f"{_fmt(r.get('dds_passes'), '8.0f')} {_fmt(r.get('dds_seconds'), '6.1f')} "
            f"{_fmt(r.get('llc_passes'), '8.0f')} {_fmt(r.get('llc_seconds'), '7.1f')} "
            f"{_fmt(r.get('cal_passes'), '8.0f')} {_fmt(r.get('cal_seconds'), '7.1f')}"
        )
    lines.append("(* = step cap reached before the target test accuracy)")
    return "\n".join(lines)


def format_summary(s: dict[str, Any]) -> str:
    """The sweep summary as text."""
    lines = [f"summary over {s['n_points']} widths ({s['n_generalised']} generalised):"]
    for col, name in (
        ("log10_vol_activation", "DDS activation volume"),
        ("log10_vol_fisher", "DDS Fisher volume"),
        ("log10_vol_total", "DDS total volume"),
    ):
        lines.append(
            f"  {name:<22}: spans {_fmt(s[f'{col}_orders'], '.1f')} orders of magnitude "
            f"(paper: {s['paper_orders']:.0f}); monotone: {s[f'{col}_monotone']}; "
            f"Spearman ρ vs d_model = {_fmt(s[f'{col}_spearman'], '+.3f')}"
        )
    lines.append(
        f"  {'LLC':<22}: range [{_fmt(s['llc_min'], '.3g')}, {_fmt(s['llc_max'], '.3g')}], "
        f"spread {_fmt(s['llc_spread'], '.3g')} (relative {_fmt(s['llc_rel_spread'], '.2f')}, "
        f"{_fmt(s['llc_orders'], '.2f')} orders); monotone: {s['llc_monotone']}; "
        f"Spearman ρ vs d_model = {_fmt(s['llc_spearman'], '+.3f')} (paper: rank-flat)"
    )
    lines.append(
        f"  cost: median LLC/DDS passes = {_fmt(s['median_pass_ratio'], '.1f')}×, "
        f"median LLC/DDS wall time = {_fmt(s['median_time_ratio'], '.1f')}× (estimate only)"
    )
    return "\n".join(lines)


def _plot(rows, layer_rows, summary, path: Path, p: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = np.array([r["d_model"] for r in rows], dtype=float)
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8), constrained_layout=True)
    ax = axes[0]
    for col, style in (
        ("log10_vol_activation", "o-"),
        ("log10_vol_fisher", "s-"),
        ("log10_vol_total", "k^--"),
    ):
        ax.plot(
            d,
            [_float(r.get(col)) for r in rows],
            style,
            label=f"{col[10:]} ({_fmt(summary[f'{col}_orders'], '.1f')} orders)",
        )
    ax.set_xscale("log", base=2)
    ax.set_xlabel("d_model")
    ax.set_ylabel("log10 volume (Σ chosen layers)")
    ax.set_title("DDS volume", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax = axes[1]
    names = sorted({r["layer"] for r in layer_rows})
    for name in names:
        for side, mk in (("activation", "o-"), ("fisher", "s:")):
            pts = [
                (r["d_model"], _float(r.get("log10_volume")))
                for r in layer_rows
                if r["layer"] == name and r["side"] == side
            ]
            if pts:
                ax.plot(
                    [q[0] for q in pts],
                    [q[1] for q in pts],
                    mk,
                    ms=3,
                    label=f"{name.split('.')[-1]} {side[:3]}",
                )
    ax.set_xscale("log", base=2)
    ax.set_xlabel("d_model")
    ax.set_ylabel("log10 volume per layer")
    ax.set_title("per layer", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    ax = axes[2]
    lam = np.array([_float(r.get("llc_mean")) for r in rows])
    sd = np.array([_float(r.get("llc_std")) for r in rows])
    ax.errorbar(d, lam, yerr=np.where(np.isfinite(sd), sd, 0.0), marker="o", capsize=3)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("d_model")
    ax.set_ylabel("calibrated LLC λ̂")
    ax.set_title(f"LLC (ρ = {_fmt(summary['llc_spearman'], '+.2f')})", fontsize=10)
    ax.grid(alpha=0.3)
    ax = axes[3]
    w = 0.25
    x = np.arange(len(rows))
    ax.bar(x - w, [_float(r.get("dds_passes")) for r in rows], w, label="DDS")
    ax.bar(x, [_float(r.get("llc_passes")) for r in rows], w, label="LLC estimate")
    ax.bar(x + w, [_float(r.get("cal_passes")) for r in rows], w, label="LLC calibration")
    ax.set_yscale("log")
    ax.set_xticks(x, [str(int(v)) for v in d])
    ax.set_xlabel("d_model")
    ax.set_ylabel("forward-backward passes")
    ax.set_title("cost per checkpoint", fontsize=10)
    ax.legend(fontsize=7)
    fig.suptitle(
        f"modular addition, p = {p}: DDS volume vs calibrated LLC across d_model", fontsize=11
    )
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m deadspec.experiments.modadd",
        description="Modular-addition transformer: DDS volumes vs a calibrated LLC across a "
        "d_model sweep (paper: DDS spans eighteen orders of magnitude, LLC rank-flat).",
    )
    ap.add_argument(
        "--out",
        default=str(DEFAULT_OUT),
        metavar="DIR",
        help=f"output folder (default {DEFAULT_OUT})",
    )
    ap.add_argument("--quick", action="store_true", help="tiny sizes (for tests)")
    ap.add_argument(
        "--size",
        choices=sorted(_SIZES),
        default="default",
        help="default: p=53, d_model 16..96 (≤30 min on 2 cores); full: p=113, "
        "d_model 16..512, lr 1e-3",
    )
    ap.add_argument("--p", type=int, default=None)
    ap.add_argument("--d-models", type=int, nargs="+", default=None)
    ap.add_argument("--n-heads", type=int, default=4)
    ap.add_argument("--train-frac", type=float, default=0.3)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--weight-decay", type=float, default=1.0)
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--eval-every", type=int, default=None)
    ap.add_argument("--target-acc", type=float, default=0.99)
    ap.add_argument(
        "--layers",
        nargs="+",
        default=["mlp"],
        help="'mlp' (fc_in, fc_out, unembed), 'all' (every Linear) or layer names",
    )
    ap.add_argument("--no-approach", action="store_true", help="skip the approach slopes")
    ap.add_argument("--gap-ratio", type=float, default=1e3)
    ap.add_argument("--approach-gap-ratio", type=float, default=10.0)
    ap.add_argument("--read-dtype", choices=["float64", "float32"], default="float64")
    ap.add_argument("--chains", type=int, default=None)
    ap.add_argument("--draws", type=int, default=None)
    ap.add_argument("--burnin", type=int, default=None)
    ap.add_argument("--no-llc", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-checkpoints", action="store_true")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--progress", dest="progress", action="store_true", default=None)
    ap.add_argument("--no-progress", dest="progress", action="store_false")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns 0 on success, 2 on a bad argument."""
    args = _parser().parse_args(None if argv is None else list(argv))
    layers: str | list[str] = (
        args.layers[0]
        if (len(args.layers) == 1 and args.layers[0] in LAYER_PRESETS)
        else list(args.layers)
    )
    try:
        run(
            args.out,
            quick=args.quick,
            size=args.size,
            p=args.p,
            d_models=args.d_models,
            n_heads=args.n_heads,
            train_frac=args.train_frac,
            lr=args.lr,
            weight_decay=args.weight_decay,
            max_steps=args.max_steps,
            eval_every=args.eval_every,
            target_acc=args.target_acc,
            layers=layers,
            approach=not args.no_approach,
            gap_ratio=args.gap_ratio,
            approach_gap_ratio=args.approach_gap_ratio,
            read_dtype=args.read_dtype,
            chains=args.chains,
            draws=args.draws,
            burnin=args.burnin,
            llc=not args.no_llc,
            seed=args.seed,
            save_checkpoints=not args.no_checkpoints,
            plot=not args.no_plot,
            progress=args.progress,
        )
    except ValueError as exc:
        print(f"modadd: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
