"""Core ops through the bindings: values, zero-copy DLPack, errors, and random inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import deadspec
from deadspec import _core


# ---------------------------------------------------------------------------------------------
# values
# ---------------------------------------------------------------------------------------------
def test_gram_sides_and_centering(rng):
    x = rng.standard_normal((40, 6)) + 5.0
    np.testing.assert_allclose(deadspec.gram(x), x.T @ x / 40, rtol=1e-12)
    np.testing.assert_allclose(deadspec.gram(x, side="sample"), x @ x.T / 40, rtol=1e-12)
    c = x - x.mean(0)
    np.testing.assert_allclose(deadspec.gram(x, center=True), c.T @ c / 40, atol=1e-12)
    assert deadspec.gram(x[:3]).shape == (3, 3)  # auto takes the smaller side


def test_torch_in_torch_out_float64():
    t = torch.randn(20, 4, dtype=torch.float32)
    g = deadspec.gram(t)
    assert isinstance(g, torch.Tensor) and g.dtype == torch.float64
    torch.testing.assert_close(g, (t.double().T @ t.double()) / 20, rtol=1e-6, atol=1e-6)


def test_gram_accumulator_matches_one_shot(rng):
    x = rng.standard_normal((90, 5)) + 2.0
    acc = deadspec.GramAccumulator(5)
    for chunk in np.array_split(x, 4):
        acc.add(chunk)
    other = deadspec.GramAccumulator(5).add(torch.from_numpy(x))
    np.testing.assert_allclose(acc.gram(), deadspec.gram(x), rtol=1e-10)
    np.testing.assert_allclose(acc.gram(center=True), deadspec.gram(x, center=True), atol=1e-10)
    acc.merge(other)
    assert acc.count == 180
    np.testing.assert_allclose(acc.gram(), deadspec.gram(x), rtol=1e-10)


def _per_sample_grads(a, d):
    # g_i = Σ_t δ_it a_itᵀ, flattened
    if a.ndim == 2:
        a, d = a[:, None], d[:, None]
    return np.einsum("ntp,ntq->npq", d, a).reshape(a.shape[0], -1)


@pytest.mark.parametrize("route", ["auto", "block-sum", "materialize"])
@pytest.mark.parametrize("bias", [False, True])
def test_fisher_gram_matches_materialised_gradients(rng, route, bias):
    a = rng.standard_normal((9, 3, 5))
    d = rng.standard_normal((9, 3, 4))
    g = _per_sample_grads(a, d)
    if bias:
        g = np.concatenate([g, d.sum(1)], axis=1)
    np.testing.assert_allclose(
        deadspec.fisher_gram(a, d, bias=bias, route=route), g @ g.T / 9, rtol=1e-10, atol=1e-12
    )
    a2, d2 = a[:, 0], d[:, 0]
    g2 = _per_sample_grads(a2, d2)
    np.testing.assert_allclose(deadspec.fisher_gram(a2, d2, route=route), g2 @ g2.T / 9, rtol=1e-10)
    np.testing.assert_allclose(deadspec.fisher_gram_from_grads(g2), g2 @ g2.T / 9, rtol=1e-12)


@pytest.mark.parametrize("layout", ["float64", "float32", "strided"])
def test_fisher_gram_routes_agree_to_1e12(rng, layout):
    # Both exact routes and the automatic choice against the float64 Γ Γᵀ / N, for sizes where
    # auto picks each route (short sequences: block sums; long ones through a narrow layer:
    # materialise), float32 inputs converted in blocks and non-contiguous views read in place.
    for n, t, di, do in [(12, 2, 9, 7), (10, 24, 3, 2)]:
        a = rng.standard_normal((n, t, di)).astype(np.float32).astype(np.float64)
        d = rng.standard_normal((n, t, do)).astype(np.float32).astype(np.float64)
        g = np.concatenate([_per_sample_grads(a, d), d.sum(1)], axis=1)
        want = g @ g.T / n
        if layout == "float32":
            a, d = torch.from_numpy(a).float(), torch.from_numpy(d).float()
        elif layout == "strided":
            a = torch.from_numpy(np.ascontiguousarray(a.transpose(1, 0, 2))).transpose(0, 1)
            d = torch.from_numpy(np.asfortranarray(d))
        got = {
            r: np.asarray(deadspec.fisher_gram(a, d, bias=True, route=r))
            for r in ("auto", "block-sum", "materialize")
        }
        assert deadspec.fisher_route(n, t, di, do) == ("block-sum" if t == 2 else "materialize")
        for r, k in got.items():
            err = np.abs(k - want).max() / np.abs(want).max()
            assert err <= 1e-12, (n, t, r, err)


def test_fisher_gram_equals_torch_func_per_sample_gradients():
    torch.manual_seed(0)
    lin = torch.nn.Linear(5, 3).double()
    x = torch.randn(16, 5, dtype=torch.float64)
    y = torch.randn(16, 3, dtype=torch.float64)

    def loss_one(params, xi, yi):
        out = torch.func.functional_call(lin, params, (xi[None],))
        return 0.5 * ((out - yi[None]) ** 2).sum()

    params = {k: v.detach() for k, v in lin.named_parameters()}
    grads = torch.func.vmap(torch.func.grad(loss_one), in_dims=(None, 0, 0))(params, x, y)
    gam = torch.cat([grads["weight"].reshape(16, -1), grads["bias"]], dim=1)
    delta = (lin(x) - y).detach()
    k = deadspec.fisher_gram(x, delta, bias=True)
    torch.testing.assert_close(k, gam @ gam.T / 16, rtol=1e-10, atol=1e-12)


def test_spectrum_readings(rng):
    basis = rng.standard_normal((3, 6))
    x = rng.standard_normal((100, 3)) @ basis
    x[:, :] += 1e-4 * rng.standard_normal((100, 6)) @ np.diag([0, 0, 0, 0, 1, 1.0])
    s = deadspec.spectrum(deadspec.gram(x), vectors=True)
    w = np.linalg.eigvalsh(x.T @ x / 100)[::-1]
    np.testing.assert_allclose(s.eigenvalues, w, rtol=1e-8, atol=1e-14)
    # rank 3 + two directions at 1e-4: 5 active (2 of them dead), one exact zero
    assert s.active == 5 and s.dead_count == 2 and s.structural_zeros == 1
    assert s.logdet_plus == pytest.approx(np.log(w[:5]).sum(), rel=1e-6)
    assert s.eigenvectors.shape == (6, 6)
    assert s.logdet_top(3) == pytest.approx(np.log(w[:3]).sum(), rel=1e-10)
    assert set(s.to_dict()) >= {"logdet_plus", "active", "dead_count", "effective_rank"}


def test_spectrum_default_rtol_follows_input_dtype():
    vals = np.array([1.0, 1e-6, 1e-12])
    s64 = deadspec.spectrum_from_eigenvalues(vals)
    s32 = deadspec.spectrum_from_eigenvalues(vals, input_dtype="float32", rtol_size=100)
    assert s64.active == 3 and s32.active == 1
    assert s32.rtol == pytest.approx(100 * np.finfo(np.float32).eps)
    assert deadspec.default_rtol("float32", 100) == pytest.approx(s32.rtol)


@pytest.mark.parametrize("d", [30, 300])  # 300: LAPACK's dsyevd, 30: Eigen's solver
def test_sym_eig_values_and_vectors(rng, d):
    a = rng.standard_normal((d, d))
    a = a + a.T
    w, v = deadspec.sym_eig(a, vectors=True)
    np.testing.assert_allclose(w, np.linalg.eigvalsh(a)[::-1], rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(a @ v, v * w, atol=1e-9)
    w2, none = deadspec.sym_eig(torch.from_numpy(a))
    assert none is None
    np.testing.assert_allclose(w2, w, rtol=1e-12)


def test_sym_eig_reads_the_lower_triangle():
    a = np.diag([3.0, 2.0, 1.0])
    a[0, 2] = 100.0  # above the diagonal: ignored
    np.testing.assert_allclose(deadspec.sym_eig(a)[0], [3.0, 2.0, 1.0], atol=1e-12)
    np.testing.assert_allclose(deadspec.sym_eig(torch.from_numpy(a.T.copy()))[0][0],
                               np.linalg.eigvalsh(a.T, UPLO="L")[-1], rtol=1e-12)


@pytest.mark.parametrize("n", [300, 520])
def test_sym_eig_lapack_path_reads_the_lower_triangle(rng, n):
    # above 256 LAPACK solves on a copy made by tiles: still the lower triangle of `a` only,
    # values and vectors, for numpy and torch inputs
    x = rng.standard_normal((n, n))
    sym = x + x.T
    a = np.tril(sym) + np.triu(np.full((n, n), 1e3), 1)  # garbage above the diagonal
    ref = np.linalg.eigvalsh(sym)[::-1]
    for inp in (a, torch.from_numpy(a)):
        w, v = deadspec.sym_eig(inp, vectors=True)
        np.testing.assert_allclose(w, ref, rtol=1e-12, atol=1e-12 * abs(ref).max())
        assert np.abs(sym @ v - v * w).max() <= 1e-11 * abs(ref).max()
    psd = x @ x.T / n  # a Gram, as spectrum expects
    s = deadspec.spectrum(psd)
    ref = np.linalg.eigvalsh(psd)[::-1]
    np.testing.assert_allclose(np.sort(s.eigenvalues)[::-1], ref, rtol=1e-12, atol=1e-12 * ref[0])
    bad = psd.copy()
    bad[n - 43, 70] += 1.0  # one pair off symmetry, away from the tiles' edges and diagonal
    with pytest.raises(ValueError, match=r"must be symmetric, got max \|g - gᵀ\| = 1"):
        deadspec.spectrum(bad)


def test_sym_eig_values_at_two_stage_size(rng):
    # n >= 1024 eigenvalues-only goes through the core's two-stage reduction (band_tridiag.cpp;
    # band width 48 at this size).
    # A = H D H with H = I - 2 v v^T (a dense matrix with the known spectrum D); half of D is 0.
    n = 4096
    d = np.concatenate([np.sort(rng.uniform(0.5, 2.0, n // 2))[::-1], np.zeros(n // 2)])
    v = rng.standard_normal(n)
    v /= np.linalg.norm(v)
    dv = d * v
    a = np.diag(d) - 2 * np.outer(v, dv) - 2 * np.outer(dv, v) + 4 * (v @ dv) * np.outer(v, v)
    a[np.triu_indices(n, 1)] = 7.0  # above the diagonal: must be ignored
    w, _ = deadspec.sym_eig(a)
    assert np.abs(w - d).max() <= 1e-12 * d[0]


def test_fit_slope():
    s = deadspec.fit_slope(np.log([1e-3, 1e-2, 1e-1]), 2 * np.log([1e-3, 1e-2, 1e-1]) + 1)
    assert s.slope == pytest.approx(2.0) and s.r2 == pytest.approx(1.0) and s.n == 3
    assert deadspec.fit_slope([0, 1, 2, 3, 4], [0, 1, 2, 3, 40], method="theil-sen").slope == 1.0


def test_num_threads_round_trip():
    before = deadspec.num_threads()
    try:
        deadspec.set_num_threads(1)
        assert deadspec.num_threads() == 1 or deadspec.build_info()["lapack"] != "scipy-openblas32"
    finally:
        deadspec.set_num_threads(before)
    with pytest.raises(ValueError, match="n must be >= 1"):
        deadspec.set_num_threads(0)


def test_num_threads_from_environment():
    import subprocess
    import sys

    code = "import deadspec; print(deadspec.num_threads())"
    env = dict(__import__("os").environ, DEADSPEC_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    if deadspec.build_info()["lapack"] == "scipy-openblas32":
        assert out.stdout.strip() == "1"
    env["DEADSPEC_NUM_THREADS"] = "zero"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode != 0 and "DEADSPEC_NUM_THREADS must be a positive integer" in out.stderr


def test_build_info_and_backend():
    info = deadspec.build_info()
    assert info["cuda"] is False
    assert info["version"] == deadspec.__version__
    assert info["lapack"] in ("scipy-openblas32", "system", "none")
    assert info["eig_backend"]


# ---------------------------------------------------------------------------------------------
# zero-copy DLPack
# ---------------------------------------------------------------------------------------------
def test_dlpack_view_is_zero_copy_for_torch_and_numpy():
    t = torch.randn(8, 3, dtype=torch.float64)
    cap = t.__dlpack__()
    # The core reports the address it reads from: it must be the tensor's own storage.
    assert _core.gram(cap).shape == (3, 3)
    a = np.random.default_rng(1).standard_normal((8, 3))
    ptr_before = a.__array_interface__["data"][0]
    view = np.from_dlpack(a)
    assert view.__array_interface__["data"][0] == ptr_before
    # A write through the original is seen through the DLPack route (no hidden copy):
    t2 = torch.zeros(4, 2, dtype=torch.float64)
    g0 = deadspec.gram(t2)
    t2[0, 0] = 2.0
    g1 = deadspec.gram(t2)
    assert float(g0[0, 0]) == 0.0 and float(g1[0, 0]) == pytest.approx(1.0)


def test_data_pointer_seen_by_core_matches_tensor():
    t = torch.randn(6, 2, dtype=torch.float64)
    assert _core.dlpack_data_ptr(t.__dlpack__()) == t.data_ptr()
    a = np.random.default_rng(2).standard_normal((6, 2))
    assert _core.dlpack_data_ptr(a.__dlpack__()) == a.__array_interface__["data"][0]
    v = np.random.default_rng(3).standard_normal((6, 2))
    assert (_core.dlpack_data_ptr(v.__dlpack__(max_version=(1, 0)))
            == v.__array_interface__["data"][0])


def test_output_is_zero_copy_into_torch():
    t = torch.randn(10, 3, dtype=torch.float64)
    g = deadspec.gram(t)
    assert g.is_contiguous()
    # torch.from_numpy shares memory with the array the core returned
    assert g.numpy().__array_interface__["data"][0] == g.data_ptr()


def test_capsule_is_consumed_once():
    cap = torch.ones(3, 2, dtype=torch.float64).__dlpack__()
    _core.gram(cap)
    with pytest.raises(TypeError, match="unused DLPack capsule"):
        _core.gram(cap)


# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------
def test_errors_have_clear_messages():
    with pytest.raises(ValueError,
                       match=r"deadspec.gram: x must be 2-D \(N, h\), got shape \(2, 2, 2\)"):
        deadspec.gram(np.ones((2, 2, 2)))
    with pytest.raises(TypeError, match="x must be float32 or float64, got int64"):
        deadspec.gram(torch.ones(3, 2, dtype=torch.int64))
    with pytest.raises(TypeError, match="got bool"):
        deadspec.gram(np.ones((3, 2), dtype=bool))
    with pytest.raises(TypeError, match="complex"):
        deadspec.gram(np.ones((3, 2), dtype=np.complex128))
    with pytest.raises(ValueError, match="must be finite, got NaN"):
        deadspec.gram(np.array([[1.0, np.nan]]))
    with pytest.raises(ValueError, match="must be finite, got Inf"):
        deadspec.gram(torch.tensor([[1.0, float("inf")]]))
    with pytest.raises(ValueError, match="must not be empty"):
        deadspec.gram(np.ones((0, 3)))
    with pytest.raises(ValueError, match=r"same number of samples N as acts \(4\)"):
        deadspec.fisher_gram(np.ones((4, 2)), np.ones((3, 2)))
    with pytest.raises(ValueError, match="must be a square matrix"):
        deadspec.spectrum(np.ones((2, 3)))
    with pytest.raises(ValueError, match="must be symmetric"):
        deadspec.spectrum(np.array([[1.0, 1.0], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="side must be one of"):
        deadspec.gram(np.ones((2, 2)), side="left")
    with pytest.raises(ValueError, match="rtol must be in"):
        deadspec.spectrum(np.eye(2), rtol=2.0)
    with pytest.raises(TypeError, match="both be torch tensors or both numpy"):
        deadspec.fisher_gram(torch.ones(2, 2), np.ones((2, 2)))
    with pytest.raises(OverflowError, match="overflowed float64"):
        deadspec.gram(np.full((2, 2), 1e200))
    with pytest.raises(TypeError, match="must be a DLPack capsule"):
        _core.gram(np.ones((2, 2)))


def test_half_precision_is_upcast_and_noncontiguous_is_read():
    t = torch.randn(12, 4)
    for dt in (torch.float16, torch.bfloat16):
        g = deadspec.gram(t.to(dt))
        ref = t.to(dt).double()
        torch.testing.assert_close(g, ref.T @ ref / 12, rtol=1e-6, atol=1e-6)
    tt = torch.randn(4, 12, dtype=torch.float64).T  # non-contiguous
    torch.testing.assert_close(deadspec.gram(tt), tt.T @ tt / 12)
    a = np.random.default_rng(0).standard_normal((12, 8))[:, ::2]
    np.testing.assert_allclose(deadspec.gram(a), a.T @ a / 12, rtol=1e-12)


def test_cuda_tensor_is_refused_before_export(monkeypatch):
    class FakeCuda:
        __module__ = "torch"
        device = torch.device("cuda", 0)
        dtype = torch.float32

        def data_ptr(self):  # pragma: no cover - never reached
            return 0

    FakeCuda.__module__ = "torch"
    with pytest.raises(RuntimeError, match="built without CUDA support"):
        deadspec.gram(FakeCuda())


# ---------------------------------------------------------------------------------------------
# random shapes, dtypes, strides and values through every binding
# ---------------------------------------------------------------------------------------------
_dtypes = st.sampled_from([np.float32, np.float64])


@st.composite
def _matrices(draw, min_rows=1, max_rows=12, max_cols=8):
    dtype = draw(_dtypes)
    rows = draw(st.integers(min_rows, max_rows))
    cols = draw(st.integers(1, max_cols))
    arr = draw(
        hnp.arrays(dtype, (rows, cols), elements=st.floats(-1e3, 1e3, width=32, allow_nan=False))
    )
    if draw(st.booleans()):
        arr = np.asfortranarray(arr)
    if draw(st.booleans()) and cols > 1:
        arr = np.concatenate([arr, arr], axis=1)[:, ::2]
    return arr


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(x=_matrices(), side=st.sampled_from(["auto", "feature", "sample"]), center=st.booleans())
def test_hypothesis_gram(x, side, center):
    x64 = x.astype(np.float64)
    if center:
        x64 = x64 - x64.mean(0)
    n = x.shape[0]
    use_feature = side == "feature" or (side == "auto" and n >= x.shape[1])
    ref = x64.T @ x64 / n if use_feature else x64 @ x64.T / n
    np.testing.assert_allclose(deadspec.gram(x, side=side, center=center), ref,
                               rtol=1e-9, atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(x=_matrices(min_rows=2), data=st.data())
def test_hypothesis_fisher_and_spectrum(x, data):
    n = x.shape[0]
    d = data.draw(hnp.arrays(x.dtype, (n, data.draw(st.integers(1, 5))),
                             elements=st.floats(-10, 10, width=32)))
    k = deadspec.fisher_gram(x, d)
    g = _per_sample_grads(x.astype(np.float64), d.astype(np.float64))
    np.testing.assert_allclose(k, g @ g.T / n, rtol=1e-9, atol=1e-6)
    s = deadspec.spectrum(k)
    assert s.active + s.structural_zeros == n
    assert np.all(np.diff(s.eigenvalues) <= 0)
    assert 0 <= s.dead_count <= s.active
    if s.active:
        assert s.effective_rank <= s.active + 1e-9


@settings(max_examples=40, deadline=None)
@given(
    x=hnp.arrays(np.float64, st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(0, 3)).map(
        lambda s: tuple(v for v in s if v >= 0)),
        elements=st.floats(allow_nan=True, allow_infinity=True)),
)
def test_hypothesis_bad_shapes_and_values_raise_cleanly(x):
    # Whatever comes in, the bindings answer with a Python exception or a finite result.
    for fn in (deadspec.gram, deadspec.spectrum, deadspec.fisher_gram_from_grads):
        try:
            out = fn(x)
        except (ValueError, TypeError, OverflowError):
            continue
        values = out.eigenvalues if isinstance(out, deadspec.Spectrum) else out
        assert np.all(np.isfinite(values))
