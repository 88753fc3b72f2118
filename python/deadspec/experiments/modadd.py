"""Modular-addition transformer: DDS volumes against a calibrated LLC over a d_model sweep.

Claim (Dead-Direction Signatures, arXiv 2606.21158): on a non-linear modular-addition
transformer, the DDS volume separates d_model across *eighteen orders of magnitude*, where a
calibrated LLC at the protocol budget is *rank-flat* (its values do not order the widths).

The paper's volume summed layers and sides, with an observed-label Fisher that scales with each
width's final train loss. Here the widths are compared **like with like** over **several seeds**
(:mod:`deadspec.experiments._modadd_verdict`): one layer's activation volume (after the MLP's
ReLU), one layer's sampled-label Fisher volume and the calibrated LLC, each as per-width
mean ± standard error, Spearman ρ against d_model over all runs, and the separation of
neighbouring widths against the seed spread, judged by a rule printed before the runs.

Setup
-----
:class:`deadspec.models.ModAddTransformer` (one layer, 4 heads, ReLU MLP of width 4·d_model, no
LayerNorm, learned positions; Nanda et al.) on ``(a + b) mod p``. The ``p²`` pairs are split by a
seeded permutation: ``train_frac`` (30%) for training, the rest for testing. Training: the
standard recipe, **AdamW, weight decay 1.0, betas (0.9, 0.98), full batch**, float32.
**Seeds** ``seed, seed + 1, …`` (``seeds``, default 3): each seed draws its own split, its
initialisation (the same seed at every width), its sampled labels and its SGLD chains.

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
- **Sizes** (``--size``): ``default`` p = 53, d_model ∈ {40, 64, 96} × 3 seeds, cap 8000
  steps (17.5 min on 2 cores with the LLC below, 8 of 9 runs generalised, measured
  2026-12-07; one width and seed with the LLC costs 1–3 min, most of it the LLC calibration,
  so more widths or seeds go in ``--d-models``/``--seeds``); ``full`` p = 113, d_model ∈ {16,
  32, 64, 128, 256, 512} × 3 seeds, lr 1e-3, cap 30000 steps (hours on a CPU); ``quick``
  (``--quick``; tests) p = 23, d_model ∈ {8, 12, 16} × 2 seeds, 100 steps (does not generalise;
  only exercises the code path).
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
``dds_passes``: forward calls of the model during the DDS readings (read, approach slopes and
the two compared one-layer readings), each followed by at most one backward, counted by a
forward hook; ``dds_seconds`` their wall time. ``llc_passes``/``llc_seconds``: the final
estimate; ``cal_passes``/``cal_seconds``: the calibration sweep.

Compared readings and verdict
-----------------------------
Per run (read on the float64 copy, the training pairs): ``log10_act_hidden`` = log10 of the
activation volume of ``blocks.0.mlp.act`` (the post-ReLU hidden units, ``4·d_model`` wide; no
labels involved), ``log10_fisher_sampled`` = that of the Fisher side of ``blocks.0.mlp.fc_out``
with labels sampled from the model (``labels="sampled"``, seeded), and ``llc_mean``. Per width
(``modadd_widths.csv``): mean ± standard error over seeds. The rule
(:data:`deadspec.experiments._modadd_verdict.RULE`): a reading *separates* the widths when
|Spearman ρ| ≥ 0.8 over all runs and every pair of neighbouring widths' means differs by ≥ 2
standard errors of the difference; the LLC is *rank-flat* when |ρ| < 0.5. The claim is
reproduced when the activation volume separates and the LLC is rank-flat, refuted when the
activation volume does not separate or the LLC separates too, inconclusive otherwise; the
magnitude is matched when the activation volume's width means span 9–36 orders.

Report
------
Besides the compared readings, the paper's summed volumes (per side and both sides, over the
chosen layers; width means): the orders they span, whether they are monotone in d_model and
their Spearman ρ (numpy, average ranks for ties; :func:`spearman`); the LLC's width means'
spread (``max − min``, relative, in orders).

Outputs (``--out DIR``, default ``./deadspec-out/modadd``)
--------------------------------------------------------
``modadd.csv`` (one row per d_model × seed; rewritten after every run, so an interrupted sweep
keeps its finished runs), ``modadd_layers.csv`` (one row per run × layer × side),
``modadd_widths.csv`` (per width, mean ± SE over seeds), ``modadd_summary.csv`` (metric, value,
with the verdicts), ``config.json`` (configuration, seeds, rule), ``modadd.png``;
``checkpoints/d_model_NNN_seedS.pt`` (plain ``state_dict`` files), ``checkpoints/models.py``
(zero-argument factories ``d16()``, ``d32()``, ...) and ``checkpoints/train_data_seedS.pt``
(``{"inputs", "targets"}``), so that e.g. ``deadspec read DIR/checkpoints/d_model_064_seed0.pt
--model DIR/checkpoints/models.py:d64 --data DIR/checkpoints/train_data_seed0.pt --out
readings.csv`` re-reads a checkpoint.

Run: ``python -m deadspec.experiments.modadd [--quick | --size default|full]`` or
``deadspec repro modadd``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from deadspec import _files
from deadspec.experiments import _harness, _stats
from deadspec.experiments import _modadd_verdict as verdict
from deadspec.experiments._llc_baseline import Chains, calibrated_llc
from deadspec.experiments._modadd_output import (
    format_summary,
    format_table,
    format_widths,
    plot_sweep,
    write_factories,
)
from deadspec.experiments._modadd_verdict import summarize
from deadspec.experiments._stats import finite_or_nan

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
PAPER_ORDERS = verdict.PAPER_ORDERS
SIDES = ("activation", "fisher")
#: The one-layer readings compared like with like across widths (:mod:`._modadd_verdict`).
ACT_LAYER = "blocks.0.mlp.act"
FISHER_LAYER = "blocks.0.mlp.fc_out"

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

#: The LLC protocol budget (final estimate) and the calibration budget per setting.
_LLC_BUDGET = {
    "chains": 4,
    "draws": 200,
    "burnin": 100,
    "cal_chains": 2,
    "cal_draws": 100,
    "cal_burnin": 50,
}
_SIZES: dict[str, dict[str, Any]] = {
    "quick": {
        "p": 23,
        "d_models": (8, 12, 16),
        "seeds": 2,
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
        "d_models": (40, 64, 96),
        "seeds": 3,
        "lr": 1e-2,
        "max_steps": 8000,
        "eval_every": 50,
        **_LLC_BUDGET,
        "epsilons": (1e-5, 3e-5, 1e-4, 3e-4),
        "gammas": (1e2, 1e3, 1e4),
    },
    "full": {
        "p": 113,
        "d_models": (16, 32, 64, 128, 256, 512),
        "seeds": 3,
        "lr": 1e-3,
        "max_steps": 30000,
        "eval_every": 100,
        **_LLC_BUDGET,
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
    "log10_act_hidden",
    "active_act_hidden",
    "dim_act_hidden",
    "log10_fisher_sampled",
    "active_fisher_sampled",
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
    "seed",
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
    csv_path, layers_csv_path, summary_csv_path, widths_csv_path, png_path : Path or None
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
    widths_csv_path: Path | None
    png_path: Path | None
    checkpoint_dir: Path | None
    seconds: float


@dataclasses.dataclass(frozen=True)
class _Config:
    """What every width of the sweep shares (run's arguments resolved against the size)."""

    p: int
    d_models: tuple[int, ...]
    n_heads: int
    lr: float
    weight_decay: float
    betas: tuple[float, float]
    max_steps: int
    eval_every: int
    target_acc: float
    layers: tuple[str, ...]
    approach: bool
    gap_ratio: float
    approach_gap_ratio: float
    read_dtype: str
    llc: dict[str, Any] | None  # the LLC budgets of the size (None: no LLC)
    seeds: tuple[int, ...]
    train_frac: float
    progress: bool


# ---------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------
def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties) over the pairs where both are finite.

    NaN with fewer than 3 finite pairs or a constant input. Same value as
    ``scipy.stats.spearmanr`` (scipy is not a dependency); the ρ of
    :func:`deadspec.experiments._stats.spearman`.
    """
    return _stats.spearman(x, y, name="modadd.spearman")[0]


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


def _train(model, data, cfg: _Config, desc: str) -> dict[str, Any]:
    """Full-batch AdamW until test accuracy ≥ target_acc (checked every eval_every) or the cap."""
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    xtr, ytr, xte, yte = data
    max_steps, eval_every, target_acc = cfg.max_steps, cfg.eval_every, cfg.target_acc

    t0 = time.perf_counter()
    opt = torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay
    )
    model.train()
    steps, test_acc, generalised = 0, float("nan"), False
    bar = tqdm(total=max_steps, desc=desc, unit="step", disable=not cfg.progress, leave=False)
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
def _dds(
    model, x, y, cfg: _Config, seed: int
) -> tuple[list[dict[str, Any]], dict[str, Any], int, float]:
    """DDS readings of the chosen layers and the two compared one-layer readings; returns
    (layer rows without p/d_model, the compared readings' run columns, passes, seconds)."""
    import torch

    import deadspec

    work = copy.deepcopy(model).to(getattr(torch, cfg.read_dtype)).eval()
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    with _harness.count_forwards(work) as counter:
        reading = deadspec.read(
            work, x, targets=y, layers=list(cfg.layers), gap_ratio=cfg.gap_ratio
        )
        for name in cfg.layers:
            lr_ = reading[name]
            for side in SIDES:
                spec = lr_.activation if side == "activation" else lr_.fisher
                row: dict[str, Any] = {"layer": name, "side": side, "n": lr_.n_samples}
                if spec is None:
                    row["approach_error"] = "no Fisher side"
                else:
                    row.update(_spectrum_columns(spec))
                    if cfg.approach:
                        row.update(_approach_columns(work, x, y, name, side, cfg))
                rows.append(row)
        compared = _compared_readings(work, x, y, cfg, seed)
    return rows, compared, counter[0], time.perf_counter() - t0


def _compared_readings(work, x, y, cfg: _Config, seed: int) -> dict[str, Any]:
    """The one-layer readings compared across widths: the activation volume after the MLP's
    ReLU and the sampled-label Fisher volume of ``fc_out`` (labels drawn with ``seed``)."""
    import deadspec

    reading = deadspec.read(
        work,
        x,
        targets=y,
        layers=[ACT_LAYER, FISHER_LAYER],
        labels="sampled",
        seed=seed,
        gap_ratio=cfg.gap_ratio,
    )
    act, fis = reading[ACT_LAYER].activation, reading[FISHER_LAYER].fisher
    return {
        "log10_act_hidden": act.logdet_plus / math.log(10.0),
        "active_act_hidden": act.active,
        "dim_act_hidden": len(act.eigenvalues),
        "log10_fisher_sampled": fis.logdet_plus / math.log(10.0),
        "active_fisher_sampled": fis.active,
    }


def _spectrum_columns(spec) -> dict[str, Any]:
    return dict(
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


def _approach_columns(work, x, y, name: str, side: str, cfg: _Config) -> dict[str, Any]:
    """The approach slope of one layer and side along its dead cluster (or the error)."""
    import deadspec

    try:
        ap = deadspec.approach_slope(
            work, x, layer=name, side=side, targets=y, gap_ratio=cfg.approach_gap_ratio
        )
    except (ValueError, RuntimeError) as exc:
        return {"approach_error": str(exc)[:200]}
    return dict(
        approach_slope=ap.slope,
        approach_r2=ap.r2,
        approach_stderr=ap.stderr,
        approach_lambda_min_slope=ap.lambda_min_slope,
        approach_units=ap.n_directions,
        approach_active=ap.active,
    )


def _llc(model, x, y, *, sz, seed, progress) -> dict[str, Any]:
    """Calibrate (ε, γ) on a fixed (ε, γ) grid, then estimate at the protocol budget."""
    from deadspec import llc

    nbeta = llc.default_nbeta(int(x.shape[0]))
    cal, res = calibrated_llc(
        model,
        (x, y),
        loss_fn=llc.cross_entropy_nll,
        epsilons=list(sz["epsilons"]),
        gammas=list(sz["gammas"]),
        calibration=Chains(sz["cal_chains"], sz["cal_draws"], sz["cal_burnin"]),
        estimate=Chains(sz["chains"], sz["draws"], sz["burnin"]),
        seed=seed,
        estimate_seed=seed + 7919,
        nbeta=nbeta,
        progress=progress,
    )
    out: dict[str, Any] = {
        "llc_nbeta": nbeta,
        "llc_rule": cal.rule,
        "cal_passes": int(cal.passes),
        "cal_seconds": cal.seconds,
    }
    if res is None:
        out.update(
            llc_mean=float("nan"),
            llc_std=float("nan"),
            llc_passes=0,
            llc_seconds=0.0,
            llc_warnings="calibration found no stable setting",
        )
        return out
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
    """The run row's DDS columns: per side, sums over the chosen layers and the mean slope."""
    agg: dict[str, Any] = {}
    for side in SIDES:
        rs = [r for r in layer_rows if r["side"] == side and r.get("logdet_plus") is not None]
        ld = float(sum(r["logdet_plus"] for r in rs)) if rs else float("nan")
        agg[f"logdet_{side}"] = ld
        agg[f"log10_vol_{side}"] = ld / math.log(10.0)
        agg[f"active_{side}"] = int(sum(r["active"] for r in rs))
        agg[f"dead_{side}"] = int(sum(r["dead_count"] for r in rs))
        slopes = [finite_or_nan(r.get("approach_slope")) for r in rs]
        agg[f"mean_approach_slope_{side}"], _ = _stats.summary_stats(slopes)
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


def _size_settings(
    size: str, overrides: dict[str, Any], n_heads: int, train_frac: float, read_dtype: str
) -> dict[str, Any]:
    """The size's preset with the non-None ``overrides`` applied; validates run's arguments."""
    fn = "modadd.run"
    if size not in _SIZES:
        raise ValueError(f"deadspec.{fn}: size must be one of {sorted(_SIZES)}, got {size!r}")
    sz = dict(_SIZES[size])
    sz.update({k: v for k, v in overrides.items() if v is not None})
    sz["d_models"] = tuple(sorted({int(d) for d in sz["d_models"]}))
    sz["p"] = int(sz["p"])
    if sz["p"] < 3:
        raise ValueError(f"deadspec.{fn}: p must be at least 3, got {sz['p']}")
    dms = list(sz["d_models"])
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
    for key in ("max_steps", "eval_every", "chains", "draws", "seeds"):
        if int(sz[key]) < 1:
            raise ValueError(f"deadspec.{fn}: {key} must be a positive integer, got {sz[key]}")
    return sz


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
    seeds: int | None = None,
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
        First seed: the runs use seeds ``seed, seed + 1, …``; each seed draws its own split,
        its initialisations (the same at every width), its sampled labels and its SGLD chains.
    seeds : int, optional
        How many seeds per width (default from the size: 3; quick 2).
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
    size = "quick" if quick else size
    overrides = {
        "p": p,
        "lr": lr,
        "max_steps": max_steps,
        "eval_every": eval_every,
        "chains": chains,
        "draws": draws,
        "burnin": burnin,
        "d_models": None if d_models is None else tuple(int(d) for d in d_models),
        "seeds": seeds,
    }
    sz = _size_settings(size, overrides, n_heads, train_frac, read_dtype)
    cfg = _Config(
        p=sz["p"],
        d_models=sz["d_models"],
        n_heads=n_heads,
        lr=float(sz["lr"]),
        weight_decay=weight_decay,
        betas=tuple(betas),
        max_steps=int(sz["max_steps"]),
        eval_every=int(sz["eval_every"]),
        target_acc=target_acc,
        layers=_resolve_layers(layers),
        approach=approach,
        gap_ratio=gap_ratio,
        approach_gap_ratio=approach_gap_ratio,
        read_dtype=read_dtype,
        llc=sz if llc else None,
        seeds=tuple(range(int(seed), int(seed) + int(sz["seeds"]))),
        train_frac=float(train_frac),
        progress=_harness.resolve_progress(progress),
    )
    _harness.check_out(out, "modadd.run")  # before any work: a bad folder fails now
    if echo is not None:
        echo(f"modadd: {verdict.RULE}; stated before the runs; seeds {list(cfg.seeds)}")
    t_start = time.perf_counter()
    out_dir = Path(out) if out is not None else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    ck_dir = _checkpoint_dir(out_dir, cfg) if save_checkpoints else None
    rows, layer_rows = _sweep(cfg, out_dir, ck_dir)
    summary = summarize(rows)
    widths = verdict.width_rows(rows, cfg.d_models)
    config = {**dataclasses.asdict(cfg), "rule": verdict.RULE, "llc": bool(llc)}
    if llc:
        config["llc_budget"] = {k: sz[k] for k in (*_LLC_BUDGET, "epsilons", "gammas")}
    paths = _write(out_dir, rows, layer_rows, summary, cfg.p if plot else None, widths, config)
    seconds = time.perf_counter() - t_start
    texts = [format_table(rows), format_widths(widths), format_summary(summary)]
    if ck_dir is not None:
        texts.append(
            f"checkpoints in {ck_dir} (re-read: deadspec read {ck_dir}/d_model_NNN_seedS.pt "
            f"--model {ck_dir}/models.py:dNNN --data {ck_dir}/train_data_seedS.pt --out r.csv)"
        )
    _harness.report(echo, texts, paths.values(), seconds)
    return ModAddResult(
        rows=rows,
        layer_rows=layer_rows,
        summary=summary,
        csv_path=paths.get("modadd.csv"),
        layers_csv_path=paths.get("modadd_layers.csv"),
        summary_csv_path=paths.get("modadd_summary.csv"),
        widths_csv_path=paths.get("modadd_widths.csv"),
        png_path=paths.get("modadd.png"),
        checkpoint_dir=ck_dir,
        seconds=seconds,
    )


def _checkpoint_dir(out_dir: Path | None, cfg: _Config) -> Path | None:
    """``out_dir/checkpoints`` with the model factories (None: no out)."""
    if out_dir is None:
        return None
    ck_dir = out_dir / "checkpoints"
    ck_dir.mkdir(parents=True, exist_ok=True)
    write_factories(ck_dir / "models.py", cfg.p, cfg.d_models, cfg.n_heads)
    return ck_dir


def _save_data(ck_dir: Path | None, data, seed: int) -> None:
    """``ck_dir/train_data_seed<seed>.pt``: the seed's training pairs (nothing without a
    folder)."""
    import torch

    if ck_dir is None:
        return
    with _files.atomic_path(ck_dir / f"train_data_seed{seed}.pt") as tmp:
        torch.save({"inputs": data[0], "targets": data[1]}, tmp)


def _sweep(cfg: _Config, out_dir: Path | None, ck_dir: Path | None):
    """Every seed × width of the sweep: (run rows, layer rows); the CSVs are rewritten after
    each run, so an interrupted sweep keeps its finished runs."""
    import torch

    rows: list[dict[str, Any]] = []
    layer_rows: list[dict[str, Any]] = []
    runs = [(s, d) for s in cfg.seeds for d in cfg.d_models]
    with torch.random.fork_rng():
        bar = _harness.progress_bar(runs, "modadd sweep", cfg.progress, unit="run")
        data, data_seed = None, None
        for seed, d in bar:
            bar.set_postfix_str(f"seed={seed} d_model={d}")
            if seed != data_seed:
                data, data_seed = _split(cfg.p, cfg.train_frac, seed), seed
                _save_data(ck_dir, data, seed)
            row, lrows = _width(cfg, d, seed, data, ck_dir)
            rows.append(row)
            layer_rows.extend(lrows)
            if out_dir is not None:
                _write(out_dir, rows, layer_rows)
    return rows, layer_rows


def _width(cfg: _Config, d: int, seed: int, data, ck_dir: Path | None):
    """One width and seed: train it, save it, read its DDS and its LLC; (run row, layer
    rows)."""
    import torch

    from deadspec.models import ModAddTransformer

    xtr, ytr, xte, yte = data
    torch.manual_seed(seed)
    model = ModAddTransformer(p=cfg.p, d_model=d, n_heads=cfg.n_heads)
    tr = _train(model, data, cfg, desc=f"train d={d} seed={seed}")
    row: dict[str, Any] = {
        "p": cfg.p,
        "d_model": d,
        "n_heads": cfg.n_heads,
        "d_mlp": model.blocks[0].mlp.fc_in.out_features,
        "n_params": sum(q.numel() for q in model.parameters()),
        "n_train": int(xtr.shape[0]),
        "n_test": int(xte.shape[0]),
        "lr": cfg.lr,
        "weight_decay": cfg.weight_decay,
        "seed": seed,
        **tr,
    }
    if ck_dir is not None:
        ck = ck_dir / _checkpoint_name(d, seed)
        with _files.atomic_path(ck) as tmp:
            torch.save(model.state_dict(), tmp)
        row["checkpoint"] = str(ck)
    lrows, compared, dds_passes, dds_seconds = _dds(model, xtr, ytr, cfg, seed)
    row.update(_aggregate(lrows))
    row.update(compared)
    row["dds_passes"], row["dds_seconds"] = dds_passes, dds_seconds
    if cfg.llc is not None:
        row.update(_llc(model, xtr, ytr, sz=cfg.llc, seed=seed, progress=cfg.progress))
        ok = row["llc_passes"] > 0 and dds_passes > 0
        row["pass_ratio"] = row["llc_passes"] / dds_passes if ok else float("nan")
        row["time_ratio"] = row["llc_seconds"] / dds_seconds if ok else float("nan")
    return row, [{"p": cfg.p, "d_model": d, "seed": seed, **lr_} for lr_ in lrows]


def _checkpoint_name(d: int, seed: int) -> str:
    return f"d_model_{d:03d}_seed{seed}.pt"


def _write(
    out_dir: Path | None,
    rows: list[dict[str, Any]],
    layer_rows: list[dict[str, Any]],
    summary: dict[str, Any] | None = None,
    plot_p: int | None = None,
    widths: list[dict[str, Any]] | None = None,
    config: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """The run and layer CSVs; the summary and width CSVs when ``summary`` and ``widths`` are
    given; the PNG when ``plot_p`` (the modulus, for the title) is given; config.json."""
    csvs: dict[str, Any] = {
        "modadd.csv": (rows, RUN_COLUMNS),
        "modadd_layers.csv": (layer_rows, LAYER_COLUMNS),
    }
    if summary is not None:
        metrics = [{"metric": k, "value": v} for k, v in summary.items()]
        csvs["modadd_summary.csv"] = (metrics, ("metric", "value"))
    if widths is not None:
        csvs["modadd_widths.csv"] = (widths, list(widths[0]) if widths else ["d_model"])
    figures = None
    if plot_p is not None:
        figures = {"modadd.png": lambda path: plot_sweep(rows, widths or [], summary, path, plot_p)}
    return _harness.write_outputs(out_dir, csvs, figures, config=config)


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------
def _parser():
    ap = _harness.parser(
        "python -m deadspec.experiments.modadd",
        "Modular-addition transformer: DDS volumes vs a calibrated LLC across a "
        "d_model sweep (paper: DDS spans eighteen orders of magnitude, LLC rank-flat).",
        DEFAULT_OUT,
        sizes=sorted(_SIZES),
        size_help="default: p=53, d_model 40..128 (≤30 min on 2 cores); full: p=113, "
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
    ap.add_argument(
        "--no-approach", dest="approach", action="store_false", help="skip the approach slopes"
    )
    ap.add_argument("--gap-ratio", type=float, default=1e3)
    ap.add_argument("--approach-gap-ratio", type=float, default=10.0)
    ap.add_argument("--read-dtype", choices=["float64", "float32"], default="float64")
    ap.add_argument("--chains", type=int, default=None)
    ap.add_argument("--draws", type=int, default=None)
    ap.add_argument("--burnin", type=int, default=None)
    ap.add_argument("--no-llc", dest="llc", action="store_false")
    ap.add_argument("--seeds", type=int, default=None, help="seeds per width (default 3)")
    ap.add_argument("--no-checkpoints", dest="save_checkpoints", action="store_false")
    return ap


def _layers_argument(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``--layers mlp`` (one preset name) is the preset; anything else a list of names."""
    layers = kwargs["layers"]
    if len(layers) == 1 and layers[0] in LAYER_PRESETS:
        kwargs["layers"] = layers[0]
    return kwargs


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns 0 on success, 2 on a bad argument."""
    return _harness.cli_main("modadd", _parser(), run, argv, prepare=_layers_argument)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
