"""Small statistics shared by the experiments (numpy only; scipy is not a dependency).

- :func:`spearman`: Spearman rank correlation over the finite pairs, optionally at a number of
  significant digits (``rrr`` ranks its observables that way; ``modadd`` does not).
- :func:`rank_average`, :func:`round_sig`: its ranking helpers.
- :func:`monotone`: whether y is strictly increasing or decreasing in the order of x.
- :func:`summary_stats`: mean and median of the finite values.
- :func:`finite_or_nan`: ``float(v)`` when finite, else NaN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "finite_or_nan",
    "monotone",
    "rank_average",
    "round_sig",
    "spearman",
    "summary_stats",
]


def finite_or_nan(v: Any) -> float:
    """``float(v)`` if finite, else NaN (also for None and non-numbers)."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return float("nan")
    return f if math.isfinite(f) else float("nan")


def rank_average(a: Sequence[float] | np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank."""
    a = np.asarray(a, dtype=np.float64)
    order = np.argsort(a, kind="mergesort")
    ranks = np.empty(len(a), dtype=np.float64)
    sa = a[order]
    i = 0
    while i < len(a):
        j = i
        while j + 1 < len(a) and sa[j + 1] == sa[i]:
            j += 1
        ranks[order[i : j + 1]] = 0.5 * (i + j) + 1.0
        i = j + 1
    return ranks


def round_sig(a: np.ndarray, digits: int) -> np.ndarray:
    """``a`` rounded to ``digits`` significant digits (0 and non-finite values kept)."""
    out = a.copy()
    nz = np.isfinite(a) & (a != 0)
    mag = np.floor(np.log10(np.abs(a[nz])))
    scale = 10.0 ** (digits - 1 - mag)
    out[nz] = np.round(a[nz] * scale) / scale
    return out


def spearman(
    x: Sequence[float],
    y: Sequence[float],
    sig_digits: int | None = None,
    *,
    name: str = "spearman",
) -> tuple[float, int]:
    """Spearman rank correlation (average ranks for ties) over the pairs where both are finite.

    Parameters
    ----------
    x, y : sequences of float
        1-D, of equal length.
    sig_digits : int, optional
        Rank the values rounded to that many significant digits, so that values equal up to
        round-off (e.g. approach slopes of exactly 2, 4, 6 per dead unit) tie instead of being
        ordered by noise.
    name : str
        The function named in the error message (``deadspec.<name>: ...``).

    Returns
    -------
    (rho, n_pairs)
        rho is NaN with fewer than 3 pairs or a constant input. Same as
        ``scipy.stats.spearmanr`` on the finite pairs.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(
            f"deadspec.{name}: x and y must be 1-D of equal length, got {x.shape}, {y.shape}"
        )
    if sig_digits is not None:
        x, y = round_sig(x, sig_digits), round_sig(y, sig_digits)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    n = len(x)
    if n < 3:
        return float("nan"), n
    rx, ry = rank_average(x), rank_average(y)
    rx -= rx.mean()
    ry -= ry.mean()
    den = math.sqrt(float(rx @ rx) * float(ry @ ry))
    if den == 0.0:
        return float("nan"), n
    return float(rx @ ry) / den, n


def monotone(x: Sequence[float], y: Sequence[float]) -> str:
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


def summary_stats(values: Sequence[float]) -> tuple[float, float]:
    """Mean and median of the finite values (NaN, NaN if none)."""
    v = np.asarray([x for x in values if math.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(np.median(v))


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error of the mean of the finite values (NaN, NaN if none; SE NaN for
    one value)."""
    v = np.asarray([x for x in values if math.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return float("nan"), float("nan")
    se = float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else float("nan")
    return float(v.mean()), se


def student_t_sf2(t: float, df: int) -> float:
    """Two-sided tail probability P(|T| >= |t|) of Student's t with ``df`` degrees of freedom:
    the regularised incomplete beta I_{df/(df+t²)}(df/2, 1/2), by its continued fraction."""
    if not math.isfinite(t):
        return 0.0 if math.isinf(t) else float("nan")
    if df < 1:
        return float("nan")
    x = df / (df + t * t)
    return _betainc(0.5 * df, 0.5, x)


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b) (Lentz's continued fraction)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    lbeta = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
    front = math.exp(lbeta + a * math.log(x) + b * math.log1p(-x))
    if x > (a + 1.0) / (a + b + 2.0):  # the symmetric form converges faster there
        return 1.0 - _betainc(b, a, 1.0 - x)
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    f = d
    for m in range(1, 300):
        for num in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            f *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return front * f / a


def paired_t(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """Paired t-test of a − b over the pairs where both are finite: ``mean``, ``se``, ``t``,
    two-sided ``p`` and ``n`` (NaN statistics below two pairs; p = 1 for identical pairs)."""
    d = np.asarray(
        [x - y for x, y in zip(a, b) if math.isfinite(x) and math.isfinite(y)], dtype=np.float64
    )
    n = int(d.size)
    nan = float("nan")
    if n < 2:
        return {"mean": float(d.mean()) if n else nan, "se": nan, "t": nan, "p": nan, "n": n}
    mean = float(d.mean())
    se = float(d.std(ddof=1) / math.sqrt(n))
    if se == 0.0:
        return {"mean": mean, "se": 0.0, "t": nan, "p": 1.0 if mean == 0.0 else 0.0, "n": n}
    t = mean / se
    return {"mean": mean, "se": se, "t": t, "p": student_t_sf2(t, n - 1), "n": n}


def fisher_exact(k1: int, n1: int, k2: int, n2: int) -> dict[str, float]:
    """Fisher's exact test of two proportions k1/n1 and k2/n2 (a 2×2 table): ``p_two_sided``
    (the hypergeometric probabilities of the tables no likelier than the observed one, as
    ``scipy.stats.fisher_exact``) and ``p_greater`` (one-sided, for k1/n1 > k2/n2)."""
    for name, k, n in (("k1", k1, n1), ("k2", k2, n2)):
        if not (0 <= k <= n) or n < 1:
            raise ValueError(f"deadspec.fisher_exact: need 0 ≤ {name} ≤ n and n ≥ 1, got {k}/{n}")
    total, hits = n1 + n2, k1 + k2
    lo, hi = max(0, hits - n2), min(hits, n1)

    def prob(x: int) -> float:
        return math.comb(n1, x) * math.comb(n2, hits - x) / math.comb(total, hits)

    probs = {x: prob(x) for x in range(lo, hi + 1)}
    observed = probs[k1]
    two = sum(q for q in probs.values() if q <= observed * (1.0 + 1e-7))
    greater = sum(q for x, q in probs.items() if x >= k1)
    return {"p_two_sided": min(1.0, two), "p_greater": min(1.0, greater)}
