"""The modadd sweep over seeds, compared like with like: per-width statistics and the verdict.

The paper's figure ("DDS separates d_model across eighteen orders, a calibrated LLC is
rank-flat") summed volumes over layers and sides, with an observed-label Fisher that scales with
each width's final train loss. Here every width is trained from several seeds and three readings
are compared, each one number per checkpoint:

- ``log10_act_hidden``: the activation volume of **one layer**, the MLP's post-ReLU hidden units
  (``blocks.0.mlp.act``, width 4·d_model), log10 of exp(log det⁺). It does not depend on the
  labels or the loss.
- ``log10_fisher_sampled``: the Fisher volume of one layer (``blocks.0.mlp.fc_out``) with labels
  **sampled** from the model (the true Fisher, not the empirical one). It still scales with the
  model's confidence; its Spearman ρ against the log train loss is reported beside it.
- ``llc_mean``: the calibrated LLC at the protocol budget.

For each: the per-width mean ± standard error over seeds, Spearman ρ against d_model over all
(width, seed) points, and the **separation** S: the smallest, over neighbouring widths, of
|difference of the means| / √(SE₁² + SE₂²), i.e. how many standard errors resolve the closest
pair of widths.

The rule (:data:`RULE`) is printed before the run and written to config.json.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from deadspec.experiments import _stats
from deadspec.experiments._stats import finite_or_nan

__all__ = [
    "FLAT_RHO",
    "METRICS",
    "PAPER_ORDERS",
    "RHO_MIN",
    "RULE",
    "SEPARATION_MIN",
    "metric_summary",
    "summarize",
    "verdicts",
    "width_means",
    "width_rows",
]

PAPER_ORDERS = 18.0
RHO_MIN = 0.8
SEPARATION_MIN = 2.0
FLAT_RHO = 0.5

#: metric column -> what it is (the three readings compared like with like).
METRICS: dict[str, str] = {
    "log10_act_hidden": "DDS activation volume, blocks.0.mlp.act (post-ReLU, one layer)",
    "log10_fisher_sampled": "DDS Fisher volume, blocks.0.mlp.fc_out (sampled labels)",
    "llc_mean": "calibrated LLC",
}
#: Further per-width means in the width table.
_EXTRA = ("log10_train_loss", "test_acc", "active_act_hidden", "active_fisher_sampled", "steps")

RULE = (
    f"rule: a reading separates the widths when |Spearman ρ| against d_model over all "
    f"(width, seed) points is ≥ {RHO_MIN} and every pair of neighbouring widths' means differs "
    f"by ≥ {SEPARATION_MIN} standard errors of the difference (S ≥ {SEPARATION_MIN}); the LLC "
    f"is rank-flat when |ρ| < {FLAT_RHO}. The claim (DDS separates the widths, the calibrated "
    f"LLC is rank-flat) is reproduced when the one-layer activation volume separates and the "
    f"LLC is rank-flat; refuted when the activation volume does not separate, or the LLC "
    f"separates as well; inconclusive otherwise. The magnitude (the paper's {PAPER_ORDERS:.0f} "
    f"orders) is matched when the activation volume's width means span "
    f"{PAPER_ORDERS / 2:.0f} to {PAPER_ORDERS * 2:.0f} orders. Every run counts, generalised "
    f"or not (the count is reported)"
)


def width_rows(rows: Sequence[dict[str, Any]], d_models: Sequence[int]) -> list[dict[str, Any]]:
    """One row per width: ``n_seeds``, ``n_generalised`` and ``<metric>_mean``/``_se`` for the
    compared readings and the extras (log10 train loss, test accuracy, active counts, steps)."""
    out = []
    for d in d_models:
        rs = [r for r in rows if int(r["d_model"]) == int(d)]
        if not rs:
            continue
        w: dict[str, Any] = {
            "d_model": int(d),
            "n_seeds": len(rs),
            "n_generalised": int(sum(bool(r["generalised"]) for r in rs)),
        }
        for m in (*METRICS, *_EXTRA):
            w[f"{m}_mean"], w[f"{m}_se"] = _stats.mean_se([_value(r, m) for r in rs])
        out.append(w)
    return out


def _value(row: dict[str, Any], metric: str) -> float:
    if metric == "log10_train_loss":
        loss = finite_or_nan(row.get("train_loss"))
        return math.log10(loss) if loss > 0 else float("nan")
    return finite_or_nan(row.get(metric))


def separation(widths: Sequence[dict[str, Any]], metric: str) -> float:
    """min over neighbouring widths of |Δ mean| / √(SE₁² + SE₂²); inf where the SEs are 0 and
    the means differ. NaN with fewer than two widths, or when any width lacks a finite mean and
    standard error (one finite seed, say): its neighbours were never compared with it."""
    pts = [(w[f"{metric}_mean"], w[f"{metric}_se"]) for w in widths]
    if len(pts) < 2 or not all(math.isfinite(m) and math.isfinite(e) for m, e in pts):
        return float("nan")
    ratios = []
    for (m1, s1), (m2, s2) in zip(pts, pts[1:]):
        den = math.hypot(s1, s2)
        ratios.append(abs(m2 - m1) / den if den > 0 else (math.inf if m1 != m2 else 0.0))
    return float(min(ratios))


def metric_summary(
    rows: Sequence[dict[str, Any]], widths: Sequence[dict[str, Any]], metric: str
) -> dict[str, Any]:
    """``rho`` (all points), ``n``, ``separation``, ``span`` (max − min of the width means),
    ``monotone`` (of the width means) and ``separates`` (the rule) for one metric."""
    d = [float(r["d_model"]) for r in rows]
    rho, n = _stats.spearman(d, [_value(r, metric) for r in rows], name="modadd.spearman")
    means = np.array([w[f"{metric}_mean"] for w in widths], dtype=float)
    fin = means[np.isfinite(means)]
    sep = separation(widths, metric)
    out = {
        "rho": rho,
        "n": n,
        "separation": sep,
        "span": float(fin.max() - fin.min()) if fin.size else float("nan"),
        "monotone": _stats.monotone([w["d_model"] for w in widths], means),
        "separates": bool(abs(rho) >= RHO_MIN and sep >= SEPARATION_MIN),
    }
    if metric == "log10_fisher_sampled":
        loss = [_value(r, "log10_train_loss") for r in rows]
        out["rho_train_loss"], _ = _stats.spearman(
            loss, [_value(r, metric) for r in rows], name="modadd.spearman"
        )
    return out


def verdicts(summaries: dict[str, dict[str, Any]]) -> dict[str, str]:
    """``claim`` and ``magnitude`` verdicts by :data:`RULE` from :func:`metric_summary`'s
    results of the three metrics."""
    act, llc = summaries["log10_act_hidden"], summaries["llc_mean"]
    flat = math.isfinite(llc["rho"]) and abs(llc["rho"]) < FLAT_RHO
    if not (math.isfinite(act["rho"]) and math.isfinite(act["separation"])):
        claim = (
            "inconclusive (the activation volume needs a Spearman ρ and, at every width, two "
            "or more finite seeds)"
        )
    elif not act["separates"]:
        claim = "refuted (the one-layer activation volume does not separate the widths)"
    elif not math.isfinite(llc["rho"]):
        claim = "inconclusive (no calibrated LLC to compare)"
    elif llc["separates"]:
        claim = "refuted (the calibrated LLC separates the widths as well)"
    elif flat:
        claim = "reproduced"
    else:
        claim = "inconclusive (the LLC neither is rank-flat nor separates the widths)"
    span = act["span"]
    lo, hi = PAPER_ORDERS / 2, PAPER_ORDERS * 2
    if not math.isfinite(span):
        magnitude = "inconclusive (no finite activation volume)"
    elif lo <= span <= hi:
        magnitude = f"matched ({span:.1f} orders)"
    else:
        magnitude = f"not matched ({span:.1f} orders against the paper's {PAPER_ORDERS:.0f})"
    return {"claim": claim, "magnitude": magnitude}


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Sweep summary from the per-run rows (one per d_model × seed).

    - The readings compared like with like (this module): for each of
      ``log10_act_hidden``, ``log10_fisher_sampled`` and ``llc_mean``, ``<metric>_rho`` (Spearman
      ρ against d_model over all runs), ``_n``, ``_separation``, ``_span`` (of the width means),
      ``_monotone``, ``_separates``; ``log10_fisher_sampled_rho_train_loss``; the verdicts
      ``verdict_claim`` and ``verdict_magnitude``.
    - The paper's summed volumes (``log10_vol_activation``, ``log10_vol_fisher``,
      ``log10_vol_total``, not like with like): ``<col>_orders`` (max − min of the width means),
      ``<col>_monotone`` (of the width means), ``<col>_spearman`` (all runs).
    - The LLC's width means: ``llc_min``, ``llc_max``, ``llc_spread``, ``llc_rel_spread``,
      ``llc_orders`` (log10(max/min), NaN unless both are positive).
    - ``n_points``, ``n_widths``, ``n_seeds`` (most seeds of a width), ``n_generalised``,
      ``paper_orders`` (18) and the median cost ratios.
    """
    dms = sorted({int(r["d_model"]) for r in rows})
    widths = width_rows(rows, dms)
    out: dict[str, Any] = {
        "n_points": len(rows),
        "n_widths": len(widths),
        "n_seeds": max((w["n_seeds"] for w in widths), default=0),
        "n_generalised": int(sum(bool(r["generalised"]) for r in rows)),
        "paper_orders": PAPER_ORDERS,
    }
    per = {m: metric_summary(rows, widths, m) for m in METRICS}
    for m, ms in per.items():
        out.update({f"{m}_{k}": v for k, v in ms.items()})
    out.update({f"verdict_{k}": v for k, v in verdicts(per).items()})
    d_all = [float(r["d_model"]) for r in rows]
    for col in ("log10_vol_activation", "log10_vol_fisher", "log10_vol_total"):
        v = width_means(rows, dms, col)
        fin = v[np.isfinite(v)]
        out[f"{col}_orders"] = float(fin.max() - fin.min()) if len(fin) else float("nan")
        out[f"{col}_monotone"] = _stats.monotone(dms, v)
        out[f"{col}_spearman"], _ = _stats.spearman(
            d_all, [finite_or_nan(r.get(col)) for r in rows], name="modadd.spearman"
        )
    lam = np.array([w["llc_mean_mean"] for w in widths])
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
    for k in ("pass_ratio", "time_ratio"):
        _, out[f"median_{k}"] = _stats.summary_stats([finite_or_nan(r.get(k)) for r in rows])
    return out


def width_means(rows: Sequence[dict[str, Any]], dms: Sequence[int], col: str) -> np.ndarray:
    """The mean of ``col`` over the finite seeds of each width in ``dms`` (NaN where none)."""
    return np.array(
        [
            _stats.mean_se([finite_or_nan(r.get(col)) for r in rows if int(r["d_model"]) == d])[0]
            for d in dms
        ]
    )
