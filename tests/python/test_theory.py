"""Tests of deadspec.theory.rrr_rlct (Aoyagi & Watanabe 2005; theory.md §4)."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from deadspec.theory import rrr_rlct, rrr_rlct_exact


def test_checks_from_theory_md():
    assert rrr_rlct(1, 1, 1, 1) == (0.5, 1)
    assert rrr_rlct(1, 1, 1, 0) == (0.5, 2)  # K = (ab)^2


@pytest.mark.parametrize(
    ("M", "N", "H", "r", "lam", "m"),
    [
        # case 1, M+H+N+r even: [2(H+r)(M+N) - (M-N)^2 - (H+r)^2] / 8
        (2, 3, 2, 1, Fraction(2 * 3 * 5 - 1 - 9, 8), 1),  # 20/8 = 5/2
        (4, 4, 4, 0, Fraction(2 * 4 * 8 - 0 - 16, 8), 1),  # 6
        (2, 2, 2, 2, Fraction(2, 1), 1),  # full rank 2x2: d/2 = 4/2 (regular)
        # case 1, odd: [... + 1] / 8, m = 2
        (3, 3, 2, 1, Fraction(2 * 3 * 6 - 0 - 9 + 1, 8), 2),  # 28/8 = 7/2
        (3, 2, 2, 0, Fraction(2 * 2 * 5 - 1 - 4 + 1, 8), 2),  # 16/8 = 2
        # case 2: M+H < N+r -> (HM - Hr + Nr)/2
        (1, 5, 2, 1, Fraction(2 * 1 - 2 * 1 + 5 * 1, 2), 1),  # 5/2
        (2, 6, 2, 2, Fraction(4 - 4 + 12, 2), 1),  # 6 = H(M+N-H)/2, regular
        # case 3: N+H < M+r -> (HN - Hr + Mr)/2
        (5, 1, 2, 1, Fraction(2 - 2 + 5, 2), 1),  # 5/2
        (7, 2, 1, 1, Fraction(2 - 1 + 7, 2), 1),  # 4
        # case 4: M+N < H+r -> MN/2
        (1, 1, 3, 1, Fraction(1, 2), 1),
        (2, 1, 5, 1, Fraction(1, 1), 1),
    ],
)
def test_hand_computed_values(M, N, H, r, lam, m):
    assert rrr_rlct_exact(M, N, H, r) == (lam, m)
    got_lam, got_m = rrr_rlct(M, N, H, r)
    assert isinstance(got_lam, float) and isinstance(got_m, int)
    assert got_lam == float(lam) and got_m == m


def test_regular_case_is_half_the_dimension():
    # r = H <= min(M, N): the model is regular at the truth, lambda = dim/2 = H(M+N-H)/2.
    for M, N, H in [(3, 4, 2), (5, 5, 3), (6, 3, 3), (4, 4, 4)]:
        lam, m = rrr_rlct(M, N, H, H)
        assert lam == H * (M + N - H) / 2 and m == 1


def test_monotone_in_r_and_bounded_by_half_dimension():
    M, N, H = 5, 4, 3
    lams = [rrr_rlct(M, N, H, r)[0] for r in range(4)]
    assert lams == sorted(lams)
    assert all(lam <= H * (M + N) / 2 for lam in lams)


def test_numpy_integers_accepted():
    assert rrr_rlct(np.int64(1), np.int32(1), np.int64(1), np.int64(1)) == (0.5, 1)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((1, 1, 1, 2), r"r must satisfy 0 <= r <= min\(M, N, H\) = 1, got 2"),
        ((3, 3, 2, 3), r"r must satisfy .* = 2, got 3"),
        ((2, 2, 2, -1), r"r must satisfy .* got -1"),
        ((0, 2, 2, 0), r"M must be >= 1, got 0"),
        ((2, -1, 2, 0), r"N must be >= 1, got -1"),
        ((2, 2, 0, 0), r"H must be >= 1, got 0"),
        ((2.0, 2, 2, 1), r"M must be an integer, got float 2.0"),
        ((2, 2, 2, 1.5), r"r must be an integer, got float 1.5"),
        ((True, 2, 2, 1), r"M must be an integer, got bool"),
        (("2", 2, 2, 1), r"M must be an integer, got str"),
    ],
)
def test_errors(args, match):
    with pytest.raises(ValueError, match=match):
        rrr_rlct(*args)
