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
