"""The fused C++ DDCAdam block step against the torch reference path of deadspec.optim."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deadspec import _core
from deadspec.optim._functional import ddc_adam_update


def _reference(p, g, m, v, step, scale, lr, b1, b2, eps):
    # The torch path of ddc_adam_update, spelled out (float64 throughout).
    gt = g * scale
    m = b1 * m + (1 - b1) * gt
    v = b2 * v + (1 - b2) * gt * gt
    denom = v.sqrt() / (1 - b2**step) ** 0.5 + eps
    return p - lr / (1 - b1**step) * (m / denom) * scale, m, v


@pytest.mark.parametrize(
    "shape,scale_kind", [((5, 4), "row"), ((5, 4), "col"), ((5, 4), "full"), ((6,), "row")]
)
def test_fused_step_matches_reference_over_several_steps(shape, scale_kind):
    gen = torch.Generator().manual_seed(0)
    p = torch.randn(shape, dtype=torch.float64, generator=gen)
    m, v = torch.zeros_like(p), torch.zeros_like(p)
    step_t = torch.tensor(0.0)
    if scale_kind == "row":
        ones = [1] * (len(shape) - 1)
        scale = torch.rand(shape[0], *ones, dtype=torch.float64, generator=gen) + 0.5
    elif scale_kind == "col":
        scale = torch.rand(1, shape[1], dtype=torch.float64, generator=gen) + 0.5
    else:
        scale = torch.rand(shape, dtype=torch.float64, generator=gen) + 0.5
    rp, rm, rv = p.clone(), m.clone(), v.clone()
    for k in range(1, 5):
        g = torch.randn(shape, dtype=torch.float64, generator=gen)
        ddc_adam_update(p, g, m, v, step_t, scale, lr=1e-2, beta1=0.9, beta2=0.99, eps=1e-8)
        rp, rm, rv = _reference(rp, g, rm, rv, k, scale, 1e-2, 0.9, 0.99, 1e-8)
    assert step_t.item() == 4
    torch.testing.assert_close(p, rp, rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(m, rm, rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(v, rv, rtol=1e-13, atol=1e-15)


def test_fused_step_float32_and_strided_grad():
    gen = torch.Generator().manual_seed(1)
    p = torch.randn(4, 3, generator=gen)
    g = torch.randn(3, 4, generator=gen).T  # non-contiguous gradient
    scale = torch.rand(4, 1, generator=gen) + 0.5
    m, v = torch.zeros_like(p), torch.zeros_like(p)
    p64 = p.double()
    ddc_adam_update(p, g, m, v, torch.tensor(0.0), scale, lr=1e-1, beta1=0.9, beta2=0.999,
                    eps=1e-8)
    ref, _, _ = _reference(p64, g.double(), 0 * p64, 0 * p64, 1, scale.double(), 1e-1, 0.9,
                           0.999, 1e-8)
    assert p.dtype == torch.float32
    # float32 arithmetic (as torch's Adam) against a float64 reference: float32 round-off.
    torch.testing.assert_close(p.double(), ref, rtol=1e-5, atol=2e-6)


def test_fused_step_validates_its_inputs():
    p = torch.zeros(3, 2, dtype=torch.float64)
    z = torch.zeros_like(p)
    kw = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, step=1)
    with pytest.raises(ValueError, match="step must be >= 1"):
        _core.ddc_adam_update(p.__dlpack__(), z.__dlpack__(), z.clone().__dlpack__(),
                              z.clone().__dlpack__(), None, **{**kw, "step": 0})
    with pytest.raises(ValueError, match="must have the shape of param"):
        _core.ddc_adam_update(p.__dlpack__(), torch.zeros(2, 3, dtype=torch.float64).__dlpack__(),
                              z.clone().__dlpack__(), z.clone().__dlpack__(), None, **kw)
    with pytest.raises(ValueError, match="must have param's dtype float64, got float32"):
        _core.ddc_adam_update(p.__dlpack__(), z.float().__dlpack__(), z.clone().__dlpack__(),
                              z.clone().__dlpack__(), None, **kw)
    with pytest.raises(ValueError, match="exp_avg must be C-contiguous"):
        _core.ddc_adam_update(p.__dlpack__(), z.__dlpack__(),
                              torch.zeros(2, 3, dtype=torch.float64).T.__dlpack__(),
                              z.clone().__dlpack__(), None, **kw)
    ro = np.zeros((3, 2))
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="param must be writable"):
        _core.ddc_adam_update(ro.__dlpack__(max_version=(1, 0)), np.zeros((3, 2)).__dlpack__(),
                              np.zeros((3, 2)).__dlpack__(), np.zeros((3, 2)).__dlpack__(), None,
                              **kw)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fused_step_row_and_column_vectors_with_decay(dtype):
    # σ_ij = row_i · col_j passed as two vectors (no h×d σ), decay folded into the same pass.
    gen = torch.Generator().manual_seed(2)
    p = torch.randn(7, 5, dtype=dtype, generator=gen)
    row = torch.rand(7, 1, dtype=dtype, generator=gen) + 0.5
    col = torch.rand(5, dtype=dtype, generator=gen) + 0.5
    m, v = torch.zeros_like(p), torch.zeros_like(p)
    step_t = torch.tensor(0.0)
    rp, rm, rv = p.double().clone(), m.double().clone(), v.double().clone()
    for k in range(1, 4):
        g = torch.randn(7, 5, dtype=dtype, generator=gen)
        ddc_adam_update(p, g, m, v, step_t, row, lr=1e-2, beta1=0.9, beta2=0.99, eps=1e-8,
                         col_scale=col, decay=0.97)
        sigma = row.double() * col.double().reshape(1, -1)
        rp, rm, rv = _reference(0.97 * rp, g.double(), rm, rv, k, sigma, 1e-2, 0.9, 0.99, 1e-8)
    tol = dict(rtol=1e-12, atol=1e-14) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(p.double(), rp, **tol)
    torch.testing.assert_close(m.double(), rm, **tol)
    # the torch path (no fused kernel for a non-contiguous parameter) computes the same step
    q = torch.randn(5, 7, dtype=torch.float64, generator=gen).T
    q0 = q.clone()
    g = torch.randn(7, 5, dtype=torch.float64, generator=gen)
    mq, vq = torch.zeros(7, 5, dtype=torch.float64), torch.zeros(7, 5, dtype=torch.float64)
    ddc_adam_update(q, g, mq, vq, torch.tensor(0.0), row.double(), lr=1e-2, beta1=0.9,
                     beta2=0.99, eps=1e-8, col_scale=col.double(), decay=0.97)
    sigma = row.double() * col.double().reshape(1, -1)
    ref, _, _ = _reference(0.97 * q0, g, 0 * g, 0 * g, 1, sigma, 1e-2, 0.9, 0.99, 1e-8)
    torch.testing.assert_close(q, ref, rtol=1e-12, atol=1e-14)


def test_fused_step_rejects_a_bad_column_scale_or_decay():
    p = torch.zeros(3, 2, dtype=torch.float64)
    z = torch.zeros_like(p)
    kw = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, step=1)
    with pytest.raises(ValueError, match="col_scale must be a vector with one entry per column"):
        _core.ddc_adam_update(p.__dlpack__(), z.__dlpack__(), z.clone().__dlpack__(),
                              z.clone().__dlpack__(), None,
                              col_scale=torch.ones(3, dtype=torch.float64).__dlpack__(), **kw)
    with pytest.raises(ValueError, match="decay must be finite"):
        _core.ddc_adam_update(p.__dlpack__(), z.__dlpack__(), z.clone().__dlpack__(),
                              z.clone().__dlpack__(), None, decay=float("nan"), **kw)
    # what torch's AdamW accepts, the kernel accepts: eps = 0, lr·wd > 1 (a negative factor)
    q = torch.ones(3, 2, dtype=torch.float64)
    g = torch.ones_like(q)
    _core.ddc_adam_update(q.__dlpack__(), g.__dlpack__(), z.clone().__dlpack__(),
                          z.clone().__dlpack__(), None, decay=-0.5, **{**kw, "eps": 0.0})
    torch.testing.assert_close(q, torch.full_like(q, -0.5 - 1e-3))
    # an empty block (torch calls a (3, 0) tensor contiguous whatever its strides) is no error
    e = torch.empty(3, 0, dtype=torch.float64)
    _core.ddc_adam_update_many([dict(param=e.__dlpack__(), grad=e.__dlpack__(),
                                     exp_avg=e.clone().__dlpack__(),
                                     exp_avg_sq=e.clone().__dlpack__(), lr=1e-3, beta1=0.9,
                                     beta2=0.999, eps=1e-8, step=1)])



def test_fused_many_takes_named_blocks():
    p = torch.ones(3, 2, dtype=torch.float64)
    g = torch.ones_like(p)

    def block(**entries):
        b = dict(param=p.__dlpack__(), grad=g.__dlpack__(),
                 exp_avg=torch.zeros_like(p).__dlpack__(),
                 exp_avg_sq=torch.zeros_like(p).__dlpack__(), lr=1e-3, beta1=0.9, beta2=0.999,
                 eps=1e-8, step=1)
        b.update(entries)
        return b

    where = "deadspec.ddc_adam_update_many: block 0"
    with pytest.raises(ValueError, match=f"{where} has an unknown entry 'row_scale'"):
        _core.ddc_adam_update_many([block(row_scale=None)])
    no_eps = block()
    del no_eps["eps"]
    with pytest.raises(ValueError, match=f"{where} needs 'eps'"):
        _core.ddc_adam_update_many([no_eps])
    with pytest.raises(ValueError, match=f"{where}: 'rot_axis' needs 'rot_segments'"):
        _core.ddc_adam_update_many([block(rot_axis=0)])
    with pytest.raises(TypeError, match=f"{where}: 'step' must be an int, got float"):
        _core.ddc_adam_update_many([block(step=1.0)])
    with pytest.raises(TypeError, match="block 1 must be a dict, got tuple"):
        _core.ddc_adam_update_many([block(), (1, 2)])
    assert torch.equal(p, torch.ones_like(p))  # nothing written by a rejected call
    # optional entries given as None are absent: σ = 1, decay 1
    _core.ddc_adam_update_many([block(scale=None, col_scale=None, decay=None)])
    torch.testing.assert_close(p, torch.full_like(p, 1.0 - 1e-3))

_ISA_SCRIPT = r"""
import sys, torch
from deadspec.optim._functional import ddc_adam_update
out = {}
for dtype in (torch.float32, torch.float64):
    gen = torch.Generator().manual_seed(3)
    p = torch.randn(9, 37, dtype=dtype, generator=gen)
    m, v, s = torch.zeros_like(p), torch.zeros_like(p), torch.tensor(0.0)
    row = torch.rand(9, 1, dtype=dtype, generator=gen) + 0.5
    col = torch.rand(37, dtype=dtype, generator=gen) + 0.5
    for k in range(3):
        g = torch.randn(9, 37, dtype=dtype, generator=gen)
        ddc_adam_update(p, g, m, v, s, row if k != 1 else None, lr=1e-2, beta1=0.9,
                         beta2=0.99, eps=1e-8, col_scale=col, decay=0.99)
    # a rotated block (the per-head shared second moment)
    from deadspec import _core
    q = torch.randn(8, 37, dtype=dtype, generator=gen)
    mq, vq = torch.zeros(8, 37, dtype=dtype), torch.zeros(8, 37, dtype=dtype)
    for k in range(1, 3):
        g = torch.randn(8, 37, dtype=dtype, generator=gen)
        _core.ddc_adam_update_many([dict(param=q.__dlpack__(), grad=g.__dlpack__(),
                                         exp_avg=mq.__dlpack__(), exp_avg_sq=vq.__dlpack__(),
                                         col_scale=col.__dlpack__(), lr=1e-2, beta1=0.9,
                                         beta2=0.99, eps=1e-8, step=k, decay=0.99, rot_axis=0,
                                         rot_segments=[(0, 4), (4, 8)])])
    out[str(dtype)] = (p, m, v, q, mq, vq)
torch.save(out, sys.argv[1])
"""


def test_fused_step_is_bitwise_the_same_on_every_instruction_set(tmp_path):
    # The fused step picks an AVX2 loop at run time where the CPU has it; built without
    # contraction into FMAs, it must round exactly like the baseline loop.
    import os
    import subprocess
    import sys

    res = {}
    for isa in ("baseline", "auto"):
        env = dict(os.environ, DEADSPEC_DDC_ISA=isa)
        f = tmp_path / f"{isa}.pt"
        subprocess.run([sys.executable, "-c", _ISA_SCRIPT, str(f)], env=env, check=True)
        res[isa] = torch.load(f)
    for key, tensors in res["baseline"].items():
        for a, b in zip(tensors, res["auto"][key]):
            assert torch.equal(a, b), key
