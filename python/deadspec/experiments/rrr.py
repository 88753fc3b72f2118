"""Reduced-rank regression validation: calibrated LLC and DDS against the closed-form λ.

Claim (Dead-Direction Signatures, arXiv 2606.21158): on reduced-rank regression, whose
learning coefficient λ is known in closed form (Aoyagi & Watanabe 2005; theory.md §4,
:func:`deadspec.theory.rrr_rlct`), a calibrated LLC recovers λ at 99% on average, and the DDS
observables rank-track λ with the predicted sign (theory.md §3), at a tiny fraction of the
LLC's cost.

Protocol
--------
Grid: architectures (M, N, H) × true ranks r chosen so that the grid spans the four
Aoyagi–Watanabe cases (case 1: balanced; 2: M+H < N+r; 3: N+H < M+r; 4: M+N < H+r). At each
point, in float64:

- **data**: x ~ N(0, I_M), n samples; true product C₀ = U·diag(s)·Vᵀ of rank r (random
  orthonormal U, V; singular values s evenly spaced in [1, 2]); y = C₀x + σ·ε, ε ~ N(0, I_N),
  σ = ``noise`` (default 0.1).
- **model trained to its minimum**: :class:`deadspec.models.ReducedRankRegression` (x ↦ B A x)
  set to the *global* minimiser of the empirical loss, the closed-form reduced-rank
  least-squares solution (Anderson 1951): with Ĉ the OLS fit and V_H the top-H right singular
  vectors of the fitted values XĈᵀ, Ĉ_H = V_H V_Hᵀ Ĉ, factored *balanced* (Ĉ_H = U S Wᵀ,
  B = U S^{1/2}, A = S^{1/2} Wᵀ, the point gradient descent from a small initialisation
  converges to). Its gradient norm is recorded (≈ 1e-13). The H − r spare directions of the
  minimiser fit the label noise at amplitude O(σ·√(dim/n)): they are the dead cluster.
- **λ**: :func:`deadspec.theory.rrr_rlct`.
- **LLC**: :func:`deadspec.llc.calibrate` (loss = Gaussian NLL with the known σ, nβ = n/log n,
  default curvature-scaled ε/γ grid and stability rule), then :func:`deadspec.llc.estimate` at
  the chosen setting with a fresh seed; reported λ̂ = that estimate.
- **DDS**: on the first ``n_dds`` samples (default 256: at least 5× the largest layer's
  parameter count p = H·M or N·H ≤ 48 of the grid, so the N×N Fisher-Gram can reach its full
  rank p; its O(N³) eigendecomposition is most of the reading's cost), :func:`deadspec.read`
  of layers ``"A"`` and ``"B"`` (activation and Fisher spectra, Gaussian NLL targets; also
  their joint Fisher-Gram, ``read(..., joint=True)``: the Fisher-Gram of all the model's
  parameters, the reading of the model that λ is a property of) and
  :func:`deadspec.approach_slope` of layer ``"A"`` with ``units=None`` (the dead cluster of
  A's activation spectrum; NaN when there is none). ``gap_ratio`` (default 1e2) delimits the
  dead cluster in both.

Report
------
- LLC recovery: mean λ̂/λ over the grid (paper 0.99; target ≥ 0.9).
- Rank tracking: Spearman ρ (average ranks for ties; numpy, :func:`spearman`) between each
  observable and λ, with the predicted sign of theory.md §3: log det⁺ (+), |approach slope|
  (−), dead_count (−), effective rank (+). Targets (restated, issue #15): each per-layer
  log det⁺ reading tracks λ *within* every architecture (r varies, (M, N, H) fixed; those
  with ≥ 3 distinct λ): right-sign ρ ≥ 0.95 in the worst architecture; the joint
  Fisher-Gram's log det⁺, a reading of the whole model as λ is, tracks it *across* the grid:
  |ρ| ≥ 0.8 with the right sign. Per-layer readings across architectures are reported, not
  targeted: they measure layers of different shapes (theory.md §3.8).
- Cost per checkpoint: forward-backward passes (counted by a forward hook on the model;
  a forward-only pass counts as a whole pass, which favours the LLC) and wall time, for the
  DDS reading (read + approach slope) against the calibrated LLC, both for the final estimate
  alone and including the calibration sweep. Targets ≥ 1000× fewer passes, ≥ 100× less wall.

Outputs (``--out DIR``, default ``./deadspec-out/rrr``): ``rrr.csv`` (one row per grid point),
``rrr_summary.csv`` (the targets), ``rrr_llc.png`` (λ̂ against λ), ``rrr_dds.png`` (each
observable against λ).

Run: ``python -m deadspec.experiments.rrr [--quick] [--size default|full]`` or
``deadspec repro rrr``.
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

from deadspec.experiments import _harness
from deadspec.experiments._llc_baseline import Chains, calibrated_llc
from deadspec.experiments._stats import spearman

__all__ = [
    "DEFAULT_OUT",
    "OBSERVABLES",
    "RRRResult",
    "aw_case",
    "fit_minimum",
    "grid_for",
    "main",
    "run",
    "spearman",
]

DEFAULT_OUT = Path("deadspec-out") / "rrr"

#: (column, predicted sign of the Spearman correlation with λ, is a log det⁺ reading)
OBSERVABLES: tuple[tuple[str, int, bool], ...] = (
    ("act_logdet_A", +1, True),
    ("act_logdet_B", +1, True),
    ("fisher_logdet_A", +1, True),
    ("fisher_logdet_B", +1, True),
    ("act_logdet", +1, True),
    ("fisher_logdet", +1, True),
    ("fisher_logdet_joint", +1, True),
    ("fisher_active_joint", +1, False),
    ("abs_slope_A", -1, False),
    ("dead_count_A", -1, False),
    ("effective_rank_A", +1, False),
    ("fisher_effective_rank_A", +1, False),
)

#: Observables are ranked at this many significant digits (ties up to round-off, see spearman).
_RANK_DIGITS = 9

#: Architectures (M, N, H) and true ranks per size; chosen to cover the four cases.
_GRIDS: dict[str, list[tuple[int, int, int, tuple[int, ...]]]] = {
    "quick": [
        (3, 3, 2, (1, 2)),  # case 1
        (2, 5, 2, (1,)),  # case 2
        (5, 2, 2, (1,)),  # case 3
        (2, 2, 4, (1,)),  # case 4
    ],
    "default": [
        (6, 6, 4, (1, 2, 3, 4)),  # case 1
        (3, 8, 3, (1, 2, 3)),  # case 2
        (8, 3, 3, (1, 2, 3)),  # case 3
        (3, 3, 8, (1, 2, 3)),  # case 4
    ],
    "full": [
        (6, 6, 4, (1, 2, 3, 4)),
        (8, 8, 6, (1, 2, 3, 4, 5, 6)),
        (3, 8, 3, (1, 2, 3)),
        (4, 10, 4, (1, 2, 3, 4)),
        (8, 3, 3, (1, 2, 3)),
        (10, 4, 4, (1, 2, 3, 4)),
        (3, 3, 8, (1, 2, 3)),
        (4, 4, 10, (1, 2, 3, 4)),
    ],
}
_SIZES = {
    # n, n_dds, chains, draws, burnin, calib draws, calib burnin
    "quick": {
        "n": 600,
        "n_dds": 200,
        "chains": 2,
        "draws": 100,
        "burnin": 50,
        "cal_draws": 60,
        "cal_burnin": 30,
    },
    "default": {
        "n": 2000,
        "n_dds": 256,
        "chains": 4,
        "draws": 2000,
        "burnin": 1000,
        "cal_draws": 600,
        "cal_burnin": 300,
    },
    "full": {
        "n": 5000,
        "n_dds": 256,
        "chains": 8,
        "draws": 4000,
        "burnin": 2000,
        "cal_draws": 1500,
        "cal_burnin": 500,
    },
}

CSV_COLUMNS = (
    "M",
    "N",
    "H",
    "r",
    "case",
    "lam",
    "mult",
    "llc",
    "llc_std",
    "ratio",
    "epsilon",
    "gamma",
    "n_diverged",
    "calib_rule",
    "n",
    "n_dds",
    "noise",
    "grad_norm",
    "train_loss",
    "act_logdet_A",
    "act_logdet_B",
    "fisher_logdet_A",
    "fisher_logdet_joint",
    "fisher_active_joint",
    "fisher_logdet_B",
    "act_logdet",
    "fisher_logdet",
    "slope_A",
    "abs_slope_A",
    "slope_r2_A",
    "lambda_min_slope_A",
    "dead_count_A",
    "active_A",
    "effective_rank_A",
    "fisher_effective_rank_A",
    "fisher_dead_count_A",
    "llc_passes",
    "llc_seconds",
    "calib_passes",
    "calib_seconds",
    "dds_passes",
    "dds_seconds",
    "seed",
    "error",
)


@dataclasses.dataclass(frozen=True)
class RRRResult:
    """Result of :func:`run`.

    Attributes
    ----------
    rows : list of dict
        One per grid point (columns ``CSV_COLUMNS``).
    recovery : float
        Mean λ̂/λ over the points with a finite λ̂.
    spearman : dict
        observable → dict(rho, predicted_sign, n, right_sign, within_rho).
    cost : dict
        Medians over the grid of passes and seconds, and the ratios LLC/DDS.
    targets : dict
        name → bool (recovery ≥ 0.9, log det⁺ |ρ| ≥ 0.8 with the right sign, cost ratios).
    seconds : float
        Total wall time.
    out : Path or None
    """

    rows: list[dict[str, Any]]
    recovery: float
    spearman: dict[str, dict[str, Any]]
    cost: dict[str, float]
    targets: dict[str, bool]
    seconds: float
    out: Path | None


# ---------------------------------------------------------------------------------------------
# small pure helpers
# ---------------------------------------------------------------------------------------------


def aw_case(M: int, N: int, H: int, r: int) -> int:
    """Which of the four Aoyagi–Watanabe cases (theory.md §4) (M, N, H, r) falls in."""
    if M + H < N + r:
        return 2
    if N + H < M + r:
        return 3
    if M + N < H + r:
        return 4
    return 1


def grid_for(size: str) -> list[tuple[int, int, int, int]]:
    """The (M, N, H, r) grid of a size ("quick", "default" or "full")."""
    if size not in _GRIDS:
        raise ValueError(
            f"deadspec.rrr.grid_for: size must be one of {sorted(_GRIDS)}, got {size!r}"
        )
    return [(M, N, H, r) for (M, N, H, rs) in _GRIDS[size] for r in rs]


def _make_data(M: int, N: int, r: int, n: int, noise: float, seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, M, generator=g, dtype=torch.float64)
    if r > 0:
        u, _ = torch.linalg.qr(torch.randn(N, r, generator=g, dtype=torch.float64))
        v, _ = torch.linalg.qr(torch.randn(M, r, generator=g, dtype=torch.float64))
        s = (
            torch.linspace(1.0, 2.0, r, dtype=torch.float64)
            if r > 1
            else torch.tensor([1.5], dtype=torch.float64)
        )
        c0 = u @ torch.diag(s) @ v.T
    else:
        c0 = torch.zeros(N, M, dtype=torch.float64)
    y = x @ c0.T + noise * torch.randn(n, N, generator=g, dtype=torch.float64)
    return x, y, c0


def fit_minimum(model, x, y) -> None:
    """Set a ReducedRankRegression (no bias) to the global minimiser of ‖Y − X(BA)ᵀ‖², balanced.

    Closed-form reduced-rank least squares: Ĉ = OLS fit, V_H = top-H right singular vectors of
    the fitted values XĈᵀ, Ĉ_H = V_H V_Hᵀ Ĉ = U S Wᵀ; B = U S^{1/2}, A = S^{1/2} Wᵀ (padded with
    zeros when rank Ĉ_H < H).
    """
    import torch

    H = model.H
    c_ols = torch.linalg.lstsq(x, y).solution.T  # N×M
    fitted = x @ c_ols.T  # n×N
    _, _, vh = torch.linalg.svd(fitted, full_matrices=False)
    k = min(H, vh.shape[0])
    vH = vh[:k].T  # N×k
    c_h = vH @ vH.T @ c_ols  # N×M
    u, s, wt = torch.linalg.svd(c_h, full_matrices=False)
    k = min(H, s.shape[0])
    sq = s[:k].sqrt()
    A = torch.zeros(H, model.M, dtype=x.dtype)
    B = torch.zeros(model.N, H, dtype=x.dtype)
    A[:k] = sq[:, None] * wt[:k]
    B[:, :k] = u[:, :k] * sq[None, :]
    with torch.no_grad():
        model.A.weight.copy_(A)
        model.B.weight.copy_(B)


# ---------------------------------------------------------------------------------------------
# one grid point
# ---------------------------------------------------------------------------------------------


def _dds(model, x, y, loss_fn, gap_ratio: float) -> dict[str, Any]:
    """The DDS observables of a point and their cost (``dds_passes``, ``dds_seconds``).

    :func:`deadspec.read` of A and B (and their joint Fisher-Gram), and the approach slope of A
    along its dead cluster (NaN when there is none).
    """
    import deadspec

    row: dict[str, Any] = {}
    t0 = time.perf_counter()
    with _harness.count_forwards(model) as counter:
        reading = deadspec.read(
            model,
            x,
            targets=y,
            loss_fn=loss_fn,
            layers=["A", "B"],
            gap_ratio=gap_ratio,
            joint=True,
        )
        la, lb = reading["A"], reading["B"]
        row["act_logdet_A"] = la.activation.logdet_plus
        row["act_logdet_B"] = lb.activation.logdet_plus
        row["fisher_logdet_A"] = la.fisher.logdet_plus
        row["fisher_logdet_B"] = lb.fisher.logdet_plus
        row["act_logdet"] = row["act_logdet_A"] + row["act_logdet_B"]
        row["fisher_logdet"] = row["fisher_logdet_A"] + row["fisher_logdet_B"]
        # the model's Fisher-Gram (both layers' parameters together): λ is the model's
        row["fisher_logdet_joint"] = reading.joint_fisher.logdet_plus
        row["fisher_active_joint"] = reading.joint_fisher.active
        row["dead_count_A"] = la.activation.dead_count
        row["active_A"] = la.activation.active
        row["effective_rank_A"] = la.activation.effective_rank
        row["fisher_effective_rank_A"] = la.fisher.effective_rank
        row["fisher_dead_count_A"] = la.fisher.dead_count
        ap = None
        if la.activation.dead_count > 0:
            ap = deadspec.approach_slope(model, x, layer="A", units=None, gap_ratio=gap_ratio)
    nan = float("nan")
    row["slope_A"] = ap.slope if ap is not None else nan
    row["abs_slope_A"] = abs(ap.slope) if ap is not None else nan
    row["slope_r2_A"] = ap.r2 if ap is not None else nan
    row["lambda_min_slope_A"] = ap.lambda_min_slope if ap is not None else nan
    row["dds_seconds"] = time.perf_counter() - t0
    row["dds_passes"] = counter[0]
    return row


@dataclasses.dataclass(frozen=True)
class _Budget:
    """What every grid point shares: samples, noise, the LLC's budgets and the DDS gap."""

    n: int
    n_dds: int
    noise: float
    chains: int
    draws: int
    burnin: int
    cal_draws: int
    cal_burnin: int
    epsilons: Sequence[float] | None
    gammas: Sequence[float] | None
    gap_ratio: float
    vectorize: bool | str


def _point(M: int, N: int, H: int, r: int, budget: _Budget, seed: int) -> dict[str, Any]:
    """One grid point: the data, the model at its minimum, the DDS reading and the LLC."""
    import torch

    from deadspec import llc
    from deadspec.models import ReducedRankRegression
    from deadspec.theory import rrr_rlct

    n, noise = budget.n, budget.noise
    lam, mult = rrr_rlct(M, N, H, r)
    row: dict[str, Any] = {
        "M": M,
        "N": N,
        "H": H,
        "r": r,
        "case": aw_case(M, N, H, r),
        "lam": lam,
        "mult": mult,
        "n": n,
        "n_dds": min(budget.n_dds, n),
        "noise": noise,
        "seed": seed,
        "error": "",
    }
    x, y, _ = _make_data(M, N, r, n, noise, seed)
    model = ReducedRankRegression(M, N, H).double()
    fit_minimum(model, x, y)
    loss_fn = llc.gaussian_nll(noise)
    # gradient at the minimum (a check that it is one)
    loss = loss_fn(model(x), y).mean()
    grads = torch.autograd.grad(loss, list(model.parameters()))
    row["grad_norm"] = float(torch.sqrt(sum((g * g).sum() for g in grads)))
    row["train_loss"] = float(loss.detach())
    model.zero_grad(set_to_none=True)

    # DDS first (cheap), on a subset
    xs, ys = x[: row["n_dds"]], y[: row["n_dds"]]
    try:
        row.update(_dds(model, xs, ys, loss_fn, budget.gap_ratio))
    except Exception as exc:  # noqa: BLE001 - recorded, the point still gets its LLC
        row["error"] += f"dds: {type(exc).__name__}: {exc}; "
    llc_row, error = _llc(model, (x, y), loss_fn, lam, budget, seed)
    row.update(llc_row)
    row["error"] += error
    return row


def _llc(model, data, loss_fn, lam: float, budget: _Budget, seed: int) -> tuple[dict, str]:
    """The calibrated LLC of a point: (its columns, error text)."""
    cal, res = calibrated_llc(
        model,
        data,
        loss_fn=loss_fn,
        epsilons=budget.epsilons,
        gammas=budget.gammas,
        calibration=Chains(budget.chains, budget.cal_draws, budget.cal_burnin),
        estimate=Chains(budget.chains, budget.draws, budget.burnin),
        seed=seed + 1,
        estimate_seed=seed + 2,
        vectorize=budget.vectorize,
    )
    row: dict[str, Any] = {
        "calib_passes": cal.passes,
        "calib_seconds": cal.seconds,
        "calib_rule": cal.rule,
    }
    if res is None:
        nan = float("nan")
        row.update(llc=nan, llc_std=nan, ratio=nan, epsilon=nan, gamma=nan, n_diverged=-1)
        row.update(llc_passes=0, llc_seconds=0.0)
        return row, "llc: no stable setting; "
    row.update(
        llc=res.mean,
        llc_std=res.std,
        ratio=res.mean / lam if lam > 0 else float("nan"),
        epsilon=cal.epsilon,
        gamma=cal.gamma,
        n_diverged=int(res.diverged.sum()),
        llc_passes=res.passes,
        llc_seconds=res.seconds,
    )
    return row, ("llc: " + " | ".join(res.warnings) + "; ") if res.warnings else ""


# ---------------------------------------------------------------------------------------------
# run
# ---------------------------------------------------------------------------------------------


def _rank_tracking(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per observable: Spearman ρ with λ over the grid and its mean within architectures."""
    lam = np.array([r["lam"] for r in rows], dtype=np.float64)
    archs = sorted({(r["M"], r["N"], r["H"]) for r in rows})
    sp: dict[str, dict[str, Any]] = {}
    for col, sign, is_logdet in OBSERVABLES:
        v = np.array([r.get(col, np.nan) for r in rows], dtype=np.float64)
        rho, npairs = spearman(v, lam, sig_digits=_RANK_DIGITS)
        within = []
        for a in archs:
            idx = [i for i, r in enumerate(rows) if (r["M"], r["N"], r["H"]) == a]
            # ≥ 3 distinct λ to rank (case 4's λ = MN/2 does not move with r)
            if len(set(lam[idx].tolist())) >= 3:
                w, _ = spearman(v[idx], lam[idx], sig_digits=_RANK_DIGITS)
                within.append(w)  # NaN (a constant reading) counts against the worst
        sp[col] = {
            "rho": rho,
            "predicted_sign": sign,
            "n": npairs,
            "logdet": is_logdet,
            "right_sign": bool(math.isfinite(rho) and np.sign(rho) == sign),
            "within_rho": float(np.nanmean(within)) if np.isfinite(within).any() else float("nan"),
            "within_n": len(within),
            # the worst architecture, signed so that the predicted direction is positive
            "within_worst": float(min(sign * w if math.isfinite(w) else -1.0 for w in within))
            if within
            else float("nan"),
        }
    return sp


def _cost(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Medians over the grid of passes and seconds, and the ratios LLC/DDS."""

    def med(key: str) -> float:
        v = np.array([r.get(key, np.nan) for r in rows], dtype=np.float64)
        return float(np.nanmedian(v)) if np.isfinite(v).any() else float("nan")

    keys = ("llc_passes", "llc_seconds", "calib_passes", "calib_seconds")
    cost = {k: med(k) for k in (*keys, "dds_passes", "dds_seconds")}
    cost["pass_ratio"] = cost["llc_passes"] / cost["dds_passes"]
    cost["time_ratio"] = cost["llc_seconds"] / cost["dds_seconds"]
    cost["pass_ratio_with_calibration"] = (cost["llc_passes"] + cost["calib_passes"]) / cost[
        "dds_passes"
    ]
    cost["time_ratio_with_calibration"] = (cost["llc_seconds"] + cost["calib_seconds"]) / cost[
        "dds_seconds"
    ]
    return cost


def _summarise(rows: list[dict[str, Any]]) -> tuple[float, dict, dict, dict]:
    ratios = np.array([r.get("ratio", np.nan) for r in rows], dtype=np.float64)
    recovery = float(np.nanmean(ratios)) if np.isfinite(ratios).any() else float("nan")
    sp = _rank_tracking(rows)
    cost = _cost(rows)
    targets = {"llc_recovery>=0.9": bool(recovery >= 0.9)}
    # per-layer log det⁺ readings: within each architecture (theory.md §3.8: across
    # architectures they measure layers of different shapes); the joint Fisher-Gram, a reading
    # of the whole model as λ is, across the grid
    for col, _, is_logdet in OBSERVABLES:
        if is_logdet and col != "fisher_logdet_joint":
            targets[f"{col}: within each arch, right-sign rho>=0.95"] = bool(
                sp[col]["within_worst"] >= 0.95
            )
    joint = sp["fisher_logdet_joint"]
    targets["fisher_logdet_joint: |rho|>=0.8 right sign"] = bool(
        joint["right_sign"] and abs(joint["rho"]) >= 0.8
    )
    targets["passes>=1000x (estimate only)"] = bool(cost["pass_ratio"] >= 1000)
    targets["passes>=1000x (with calibration)"] = bool(cost["pass_ratio_with_calibration"] >= 1000)
    targets["wall>=100x (estimate only)"] = bool(cost["time_ratio"] >= 100)
    targets["wall>=100x (with calibration)"] = bool(cost["time_ratio_with_calibration"] >= 100)
    return recovery, sp, cost, targets


def run(
    out: str | Path | None = DEFAULT_OUT,
    *,
    size: str = "default",
    quick: bool = False,
    seed: int = 0,
    n: int | None = None,
    n_dds: int | None = None,
    noise: float = 0.1,
    chains: int | None = None,
    draws: int | None = None,
    burnin: int | None = None,
    epsilons: Sequence[float] | None = None,
    gammas: Sequence[float] | None = None,
    gap_ratio: float = 1e2,
    vectorize: bool | str = "auto",
    threads: int | None = 1,
    plot: bool = True,
    progress: bool | None = None,
    echo: Callable[[str], None] | None = print,
) -> RRRResult:
    """Run the RRR validation; write CSVs and PNGs into ``out``.

    Parameters
    ----------
    out : str or Path or None
        Output folder (created); None writes nothing.
    size : {"default", "full"}
        Grid and budget: "default" 13 points (4 architectures, the four cases), n = 2000,
        4 chains × (1000 burn-in + 2000 draws), calibration 5 ε × 3 γ at 300 + 600 steps;
        "full" 31 points, n = 5000, 8 chains × (2000 + 4000), calibration at 500 + 1500.
    quick : bool
        Tiny grid and budget (5 points, n = 600) for tests; overrides ``size``.
    seed : int
        Base seed (data, calibration and estimate seeds derive from it per point).
    n, n_dds : int, optional
        Samples (LLC) and the subset read by DDS.
    noise : float
        Known noise σ of the data and of the Gaussian NLL.
    chains, draws, burnin : int, optional
        Budget of the final LLC estimate (calibration uses its own, smaller, draws).
    epsilons, gammas : sequences of float, optional
        Calibration grid; default curvature-scaled (:func:`deadspec.llc.calibrate`).
    gap_ratio : float
        Gap delimiting the dead cluster (read and approach slope).
    vectorize : bool or "auto"
        Vectorised chains in the LLC.
    threads : int or None
        torch intra-op threads and the core's BLAS threads (:func:`deadspec.set_num_threads`)
        during the run (default 1 for both methods alike: the problems are tiny and on a
        shared, loaded machine multi-threaded BLAS is slower); restored afterwards. None:
        unchanged.
    plot : bool
        Write the PNGs.
    progress : bool or None
        tqdm bar over the grid.
    echo : callable or None
        Where the table and summary are printed.

    Returns
    -------
    RRRResult
    """
    if quick:
        size = "quick"
    if size not in _SIZES:
        raise ValueError(f"deadspec.rrr.run: size must be one of 'default', 'full', got {size!r}")
    if not (noise > 0):
        raise ValueError(f"deadspec.rrr.run: noise must be > 0, got {noise!r}")
    cfg = dict(_SIZES[size])
    for key, val in (
        ("n", n),
        ("n_dds", n_dds),
        ("chains", chains),
        ("draws", draws),
        ("burnin", burnin),
    ):
        if val is not None:
            if int(val) != val or val < (0 if key == "burnin" else 1):
                raise ValueError(f"deadspec.rrr.run: {key} must be a positive integer, got {val!r}")
            cfg[key] = int(val)
    budget = _Budget(
        noise=noise,
        epsilons=epsilons,
        gammas=gammas,
        gap_ratio=gap_ratio,
        vectorize=vectorize,
        **cfg,
    )
    grid = grid_for(size)
    _harness.check_out(out, "rrr.run")  # before any work: a bad folder fails now
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    with _harness.threads(threads, core=True):
        bar = _harness.progress_bar(grid, "rrr grid", progress, unit="point")
        for i, (M, N, H, r) in enumerate(bar):
            rows.append(_point(M, N, H, r, budget, seed=seed * 1000 + 10 * i))
    recovery, sp, cost, targets = _summarise(rows)
    seconds = time.perf_counter() - t0
    figures = {
        "rrr_llc.png": lambda path: _plot_llc(rows, path),
        "rrr_dds.png": lambda path: _plot_dds(rows, sp, path),
    }
    _harness.write_outputs(
        out,
        {
            "rrr.csv": (rows, CSV_COLUMNS),
            "rrr_summary.csv": (_summary_rows(recovery, sp, cost, targets), SUMMARY_COLUMNS),
        },
        figures if plot else None,
    )
    result = RRRResult(
        rows=rows,
        recovery=recovery,
        spearman=sp,
        cost=cost,
        targets=targets,
        seconds=seconds,
        out=None if out is None else Path(out),
    )
    if echo is not None:
        echo(format_report(result, size=size))
    return result


# ---------------------------------------------------------------------------------------------
# output
# ---------------------------------------------------------------------------------------------

SUMMARY_COLUMNS = ("quantity", "value", "predicted_sign", "pass")

_Col = _harness.Col
_fmt = _harness.fmt
_TABLE = (
    _Col("M", "M", ">3"),
    _Col("N", "N", ">3"),
    _Col("H", "H", ">3"),
    _Col("r", "r", ">3"),
    _Col("case", "case", ">4"),
    _Col("λ", "lam", "6.2f"),
    _Col(
        "λ̂ ± std",
        lambda r: f"{_fmt(r.get('llc'), '6.2f')} ± {_fmt(r.get('llc_std'), '4.2f')}",
        ">13",
    ),
    _Col("λ̂/λ", "ratio", "5.2f"),
    _Col("ε", "epsilon", "8.2e"),
    _Col("γ", "gamma", "8.2e"),
    _Col("logdetA", "act_logdet_A", "7.2f"),
    _Col("fishA", "fisher_logdet_A", "7.1f"),
    _Col("slopeA", "slope_A", "6.2f"),
    _Col("dead", "dead_count_A", "4.0f"),
)


def format_report(res: RRRResult, size: str = "") -> str:
    """The grid table, the recovery, the Spearman table, the costs and the targets."""
    table = _harness.format_table(
        res.rows,
        _TABLE,
        suffix=lambda r: f"  [{r['error'][:80]}]" if r.get("error") else "",
        rule=False,
    )
    lines = [f"RRR validation ({size}): {len(res.rows)} points, {res.seconds:.0f} s", table]
    lines.append(f"LLC recovery: mean λ̂/λ = {res.recovery:.3f} (paper 0.99, target ≥ 0.9)")
    lines.append("Rank tracking (Spearman ρ with λ; predicted sign; within-architecture mean ρ):")
    for col, s in res.spearman.items():
        sign = "+" if s["predicted_sign"] > 0 else "−"
        lines.append(
            f"  {col:24s} ρ = {_fmt(s['rho'], '+.3f'):>6} (pred {sign}, n={s['n']:2d}) "
            f"{'right sign' if s['right_sign'] else 'WRONG SIGN'}"
            f"   within: mean {_fmt(s['within_rho'], '+.3f')}, worst (signed) "
            f"{_fmt(s['within_worst'], '+.3f')} over {s['within_n']} archs"
        )
    c = res.cost
    lines.append(
        f"Cost per checkpoint (medians): DDS {c['dds_passes']:.0f} passes, "
        f"{c['dds_seconds'] * 1e3:.1f} ms; LLC estimate {c['llc_passes']:.0f} passes, "
        f"{c['llc_seconds']:.2f} s; calibration {c['calib_passes']:.0f} passes, "
        f"{c['calib_seconds']:.2f} s"
    )
    lines.append(
        f"  ratios LLC/DDS: passes {c['pass_ratio']:.0f}x (with calibration "
        f"{c['pass_ratio_with_calibration']:.0f}x), wall {c['time_ratio']:.0f}x (with calibration "
        f"{c['time_ratio_with_calibration']:.0f}x)"
    )
    lines.append("Targets:")
    for k, v in res.targets.items():
        lines.append(f"  {'PASS' if v else 'FAIL'}  {k}")
    return "\n".join(lines)


def _summary_rows(recovery, sp, cost, targets) -> list[dict[str, Any]]:
    """The rows of ``rrr_summary.csv`` (:data:`SUMMARY_COLUMNS`)."""
    rows = [
        ("llc_recovery_mean_ratio", recovery, "", targets["llc_recovery>=0.9"]),
    ]
    for col, s in sp.items():
        key = f"{col}: |rho|>=0.8 right sign"
        rows.append(
            (f"spearman_{col}", s["rho"], s["predicted_sign"], targets.get(key, s["right_sign"]))
        )
        key = f"{col}: within each arch, right-sign rho>=0.95"
        rows.append((f"spearman_within_{col}", s["within_rho"], s["predicted_sign"], ""))
        rows.append(
            (f"spearman_within_worst_{col}", s["within_worst"], s["predicted_sign"],
             targets.get(key, ""))
        )
    rows += [(f"cost_{k}", v, "", "") for k, v in cost.items()]
    rows += [(f"target {k}", "", "", v) for k, v in targets.items()]
    return [dict(zip(SUMMARY_COLUMNS, row)) for row in rows]


def _by_case(cases: np.ndarray):
    """``(case, mask)`` for each Aoyagi–Watanabe case present in ``cases``."""
    for c in (1, 2, 3, 4):
        m = cases == c
        if m.any():
            yield c, m


def _plot_llc(rows, path: Path) -> None:
    """The calibrated LLC λ̂ against λ."""
    lam = np.array([r["lam"] for r in rows])
    cases = np.array([r["case"] for r in rows])
    llc_ = np.array([r.get("llc", np.nan) for r in rows], dtype=float)
    std = np.array([r.get("llc_std", np.nan) for r in rows], dtype=float)
    with _harness.figure(path, figsize=(4.5, 4.2), dpi=120) as fig:
        ax = fig.subplots()
        for c, m in _by_case(cases):
            ax.errorbar(lam[m], llc_[m], yerr=std[m], fmt="o", capsize=2, label=f"case {c}")
        hi = float(np.nanmax(np.concatenate([lam, llc_]))) * 1.1
        ax.plot([0, hi], [0, hi], "k--", lw=1, label="λ̂ = λ")
        ax.set_xlabel("λ (Aoyagi–Watanabe)")
        ax.set_ylabel("calibrated LLC λ̂")
        ax.set_title("RRR: LLC recovery")
        ax.legend(fontsize=7)


def _plot_dds(rows, sp, path: Path) -> None:
    """Each DDS observable against λ, with its Spearman ρ."""
    lam = np.array([r["lam"] for r in rows])
    cases = np.array([r["case"] for r in rows])
    cols = [c for c, _, _ in OBSERVABLES]
    ncol = 5
    nrow = math.ceil(len(cols) / ncol)
    with _harness.figure(path, figsize=(3.2 * ncol, 2.9 * nrow), dpi=110) as fig:
        axes = fig.subplots(nrow, ncol, squeeze=False)
        for k, col in enumerate(cols):
            ax = axes[k // ncol, k % ncol]
            v = np.array([r.get(col, np.nan) for r in rows], dtype=float)
            for c, m in _by_case(cases):
                ax.plot(lam[m], v[m], "o", label=f"case {c}")
            s = sp[col]
            sign = "+" if s["predicted_sign"] > 0 else "−"
            ax.set_title(f"{col}\nρ={_fmt(s['rho'], '+.2f')} (pred {sign})", fontsize=8)
            ax.set_xlabel("λ", fontsize=8)
            ax.tick_params(labelsize=7)
        for k in range(len(cols), nrow * ncol):
            axes[k // ncol, k % ncol].axis("off")
        axes[0, 0].legend(fontsize=6)


def _parser():
    p = _harness.parser(
        "deadspec repro rrr",
        "Reduced-rank regression: calibrated LLC and DDS against the closed-form λ.",
        DEFAULT_OUT,
        quick_help="tiny grid and budget (for tests)",
        sizes=("default", "full"),
        threads=True,
    )
    p.add_argument("--n", type=int, default=None, help="samples per problem")
    p.add_argument("--n-dds", type=int, default=None, help="samples read by DDS")
    p.add_argument("--noise", type=float, default=0.1, help="known noise σ")
    p.add_argument("--chains", type=int, default=None)
    p.add_argument("--draws", type=int, default=None)
    p.add_argument("--burnin", type=int, default=None)
    p.add_argument("--epsilons", type=float, nargs="+", default=None)
    p.add_argument("--gammas", type=float, nargs="+", default=None)
    p.add_argument("--gap-ratio", type=float, default=1e2)
    p.add_argument("--no-vectorize", dest="vectorize", action="store_false", default="auto")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry (``deadspec repro rrr``); returns 0 when it ran (targets are reported,
    not enforced), 2 on a bad argument."""
    return _harness.cli_main("rrr", _parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
