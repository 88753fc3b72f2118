"""Closed-form theory used by deadspec's experiments and tests.

Currently: the learning coefficient (real log canonical threshold, RLCT) of reduced-rank
regression, from Aoyagi & Watanabe (2005), "Stochastic complexities of reduced rank regression
in Bayesian estimation", Neural Networks 18(7). Pure Python (no numpy/torch needed).
"""

from __future__ import annotations

import operator
from fractions import Fraction

__all__ = ["rrr_rlct", "rrr_rlct_exact"]


def _as_int(name: str, value: object) -> int:
    if isinstance(value, bool):
        # ValueError (not TypeError) for every bad argument, as the API contract asks.
        raise ValueError(f"deadspec.rrr_rlct: {name} must be an integer, got bool {value!r}")  # noqa: TRY004
    try:
        return operator.index(value)  # accepts int and numpy integers, rejects floats
    except TypeError:
        raise ValueError(
            f"deadspec.rrr_rlct: {name} must be an integer, got {type(value).__name__} {value!r}"
        ) from None


def rrr_rlct_exact(M: int, N: int, H: int, r: int) -> tuple[Fraction, int]:
    """Exact (rational) version of :func:`rrr_rlct`; same arguments, ``lam`` as a Fraction."""
    M, N, H, r = (_as_int(n, v) for n, v in (("M", M), ("N", N), ("H", H), ("r", r)))
    for name, v in (("M", M), ("N", N), ("H", H)):
        if v < 1:
            raise ValueError(f"deadspec.rrr_rlct: {name} must be >= 1, got {v}")
    if r < 0 or r > min(M, N, H):
        raise ValueError(
            f"deadspec.rrr_rlct: r must satisfy 0 <= r <= min(M, N, H) = {min(M, N, H)}, got {r}"
        )
    if M + H < N + r:  # case 2
        return Fraction(H * M - H * r + N * r, 2), 1
    if N + H < M + r:  # case 3
        return Fraction(H * N - H * r + M * r, 2), 1
    if M + N < H + r:  # case 4
        return Fraction(M * N, 2), 1
    # case 1: N + r <= M + H, M + r <= N + H, H + r <= M + N
    num = 2 * (H + r) * (M + N) - (M - N) ** 2 - (H + r) ** 2
    if (M + H + N + r) % 2 == 0:
        return Fraction(num, 8), 1
    return Fraction(num + 1, 8), 2


def rrr_rlct(M: int, N: int, H: int, r: int) -> tuple[float, int]:
    """Learning coefficient λ and its multiplicity m for reduced-rank regression.

    Model y = B A x + ε with x ∈ ℝ^M, A ∈ ℝ^{H×M}, B ∈ ℝ^{N×H} and Gaussian noise; the true
    product BA has rank r. Aoyagi & Watanabe (2005), the four cases of theory.md §4:

    1. N+r ≤ M+H, M+r ≤ N+H and H+r ≤ M+N:
       λ = [2(H+r)(M+N) − (M−N)² − (H+r)²]/8, m = 1 when M+H+N+r is even;
       λ = [2(H+r)(M+N) − (M−N)² − (H+r)² + 1]/8, m = 2 when it is odd.
    2. M+H < N+r: λ = (HM − Hr + Nr)/2, m = 1.
    3. N+H < M+r: λ = (HN − Hr + Mr)/2, m = 1.
    4. M+N < H+r: λ = MN/2, m = 1.

    Parameters
    ----------
    M, N : int
        Input and output dimensions (≥ 1).
    H : int
        Inner (hidden) dimension of the model (≥ 1).
    r : int
        Rank of the true product, ``0 <= r <= min(M, N, H)``.

    Returns
    -------
    lam : float
        The learning coefficient (computed exactly with fractions, returned as float; use
        :func:`rrr_rlct_exact` for the Fraction).
    m : int
        Its multiplicity (the order of the log log n term of the free energy).

    Raises
    ------
    ValueError
        If an argument is not an integer (bools and floats such as 2.0 are rejected; numpy
        integers are accepted), if M, N or H is < 1, or if r is outside [0, min(M, N, H)].

    Examples
    --------
    >>> rrr_rlct(1, 1, 1, 1)
    (0.5, 1)
    >>> rrr_rlct(1, 1, 1, 0)
    (0.5, 2)
    """
    lam, m = rrr_rlct_exact(M, N, H, r)
    return float(lam), m
