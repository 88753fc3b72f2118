"""The two-stage eigenvalue path (cpp/src/band_reduce.cpp, cpp/src/band_tridiag.cpp): dense ->
band (kd subdiagonals) -> tridiagonal by a bulge chase pipelined over the core's threads ->
dsterf. The core takes it for eigenvalues only from n = 1024; DEADSPEC_EIG_BAND_KD forces it
with a given band width at any n above Eigen's cutoff (256), which is how these tests reach it
at small sizes (and "0" turns it off: LAPACK's dsyevd, the reference here).
"""

from __future__ import annotations

import numpy as np
import pytest

import deadspec

ENV = "DEADSPEC_EIG_BAND_KD"

pytestmark = pytest.mark.skipif(
    deadspec.build_info()["lapack"] == "none", reason="the two-stage path needs LAPACK"
)


def _values(a, monkeypatch, kd: int) -> np.ndarray:
    monkeypatch.setenv(ENV, str(kd))
    w, v = deadspec.sym_eig(a)
    assert v is None
    return w


def _sym(rng, n: int) -> np.ndarray:
    x = rng.standard_normal((n, n))
    return (x + x.T) / 2


def _with_spectrum(rng, d: np.ndarray) -> np.ndarray:
    """Q·diag(d)·Qᵀ with a random orthogonal Q: a dense matrix with the eigenvalues d."""
    q, _ = np.linalg.qr(rng.standard_normal((d.size, d.size)))
    return (q * d) @ q.T


@pytest.mark.parametrize(
    ("n", "kd"),
    [(300, 3), (457, 8), (700, 32), (513, 64)],  # 457/8, 513/64: the last panel has < kd rows
)
def test_matches_dsyevd(rng, monkeypatch, n, kd):
    a = _sym(rng, n)
    ref = _values(a, monkeypatch, 0)  # LAPACK's dsyevd
    w = _values(a, monkeypatch, kd)
    scale = np.abs(ref).max()
    assert np.abs(w - ref).max() <= 1e-13 * scale
    assert np.all(np.diff(w) <= 0)  # descending
    np.testing.assert_allclose(w, np.linalg.eigvalsh(a)[::-1], rtol=0, atol=1e-13 * scale)


def test_repeated_and_zero_eigenvalues(rng, monkeypatch):
    # n = 400: 3 and 1 a hundred times each, 1e-3 sixty times, 0 140 times
    d = np.concatenate([np.full(100, 3.0), np.full(100, 1.0), np.full(60, 1e-3), np.zeros(140)])
    a = _with_spectrum(rng, d)
    for kd in (4, 32):
        w = _values(a, monkeypatch, kd)
        assert np.abs(w - np.sort(d)[::-1]).max() <= 1e-13 * 3.0


def test_rank_deficient_gram(rng, monkeypatch):
    n, r = 480, 160
    x = rng.standard_normal((n, r))
    g = x @ x.T / r  # rank r: n - r zero eigenvalues
    w = _values(g, monkeypatch, 16)
    ref = np.linalg.eigvalsh(g)[::-1]
    assert np.abs(w - ref).max() <= 1e-13 * ref[0]
    assert np.sum(np.abs(w) <= 1e-12 * w[0]) == n - r
    s = deadspec.spectrum(g)  # the same path through spectrum (values only)
    assert s.active == r and s.structural_zeros == n - r


def test_reads_only_the_lower_triangle(rng, monkeypatch):
    n = 333
    lower = np.tril(_sym(rng, n))
    garbage = lower + np.triu(np.full((n, n), 1e3), 1)
    for inp in (garbage, np.asfortranarray(garbage), garbage.astype(np.float32)):
        low = np.tril(inp.astype(np.float64))  # float32 input is solved in float64
        ref = np.linalg.eigvalsh(low + np.tril(low, -1).T)[::-1]
        w = _values(inp, monkeypatch, 8)
        assert np.abs(w - ref).max() <= 1e-13 * np.abs(ref).max()


def test_same_bits_for_any_thread_count(rng, monkeypatch):
    # Every task of the chase and every block of stage 1 does the same arithmetic whichever
    # thread runs it (OpenBLAS runs single-threaded inside), so the values agree bit for bit.
    a = _sym(rng, 520)
    try:
        for kd in (3, 16, 40):
            runs = []
            for threads in (1, 2, 3):
                deadspec.set_num_threads(threads)
                runs.append(_values(a, monkeypatch, kd))
            assert np.array_equal(runs[0], runs[1]) and np.array_equal(runs[0], runs[2]), kd
    finally:
        deadspec.set_num_threads("auto")


@pytest.mark.parametrize("scale", [1e-200, 1e200])
def test_scaled_into_range(rng, monkeypatch, scale):
    # as dsyevd does, the matrix is scaled into a safe range before the reduction
    a = _sym(rng, 300)
    ref = np.linalg.eigvalsh(a)[::-1]
    w = _values(a * scale, monkeypatch, 8)
    assert np.abs(w / scale - ref).max() <= 1e-13 * np.abs(ref).max()


def test_band_width_variable_is_checked(rng, monkeypatch):
    a = _sym(rng, 300)
    for bad in ("1", "257", "-3", "32x"):
        monkeypatch.setenv(ENV, bad)
        msg = rf"deadspec\.sym_eig: {ENV} must be 0 \(off\) or a band width from 2 to 256, got"
        with pytest.raises(ValueError, match=msg):
            deadspec.sym_eig(a)
    monkeypatch.setenv(ENV, "1")
    with pytest.raises(ValueError, match=rf"deadspec\.spectrum: {ENV} must be"):
        deadspec.spectrum(a @ a.T)
    deadspec.sym_eig(a, vectors=True)  # with vectors the variable is not read (dsyevd)
