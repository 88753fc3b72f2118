"""Issue #12, the numerical findings: no silent number, no hang.

1. A DDC step never writes a NaN/Inf (checked before commit, every variant), its second moment
   overflows where AdamW's does, the non-finite policy applies to what the step produces, and a
   loaded state with non-finite moments is refused.
2. ``approach_slope`` refuses a grid that loses the scaled directions, and ``units`` that are
   not integers.
3. The spectral readings, ``sym_eig`` and ``fit_slope`` are finite for finite inputs at any
   scale, or raise ``OverflowError`` where the result cannot be represented; ``lambda_dir`` is
   NaN (documented: undefined) where k̂ <= 0, never infinite.
4. Every size that makes memory or time is bounded before anything is allocated.
"""

from __future__ import annotations

import copy
import itertools
import math
import threading
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import deadspec
import deadspec.llc as llc
import deadspec.optim._functional as functional
import deadspec.optim._split as split_mod
from deadspec import models
from deadspec.optim import DDCAdam, DDCMuon

# -------------------------------------------------------------------------------------------------
# 1. the DDC step
# -------------------------------------------------------------------------------------------------


def _net(dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3)
    ).to(dtype)


VARIANTS = {
    "coordinate": lambda m, **k: DDCAdam(m, lr=1e-3, **k),
    "coordinate-torch": lambda m, **k: DDCAdam(m, lr=1e-3, foreach=False, **k),
    "split": lambda m, **k: DDCAdam(m, lr=1e-3, form="split", **k),
    "split-torch": lambda m, **k: DDCAdam(m, lr=1e-3, form="split", **k),
    "muon": lambda m, **k: DDCMuon(m, lr=1e-3, **k),
    "damped": lambda m, **k: DDCAdam(m, lr=1e-3, gauge_mode="damped", **k),
}


def _grads(m, scale, seed=0):
    gen = torch.Generator().manual_seed(seed)
    for p in m.parameters():
        p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype) * scale


def _tensors(opt):
    out = []
    for s in opt.state.values():
        out += [v for v in s.values() if isinstance(v, torch.Tensor) and v.is_floating_point()]
    for s in opt._plan.sites:
        out += [v for v in s.state.values() if isinstance(v, torch.Tensor)]
    return out


def _all_finite(m, opt):
    ts = list(m.parameters()) + _tensors(opt)
    return all(bool(torch.isfinite(t).all()) for t in ts)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_huge_gradients_never_write_nonfinite(variant, monkeypatch):
    # Finite gradients of 1e25 in float32: AdamW keeps finite parameters (its second moment is
    # Inf); a DDC step refuses the overflowing coordinates and applies its policy to them.
    if variant == "split-torch":
        monkeypatch.setattr(split_mod, "FUSED", False)
    for policy in ("raise", "skip"):
        m = _net()
        opt = VARIANTS[variant](m, nonfinite=policy)
        names = {n for n, _ in m.named_parameters()}
        for step in range(3):
            _grads(m, 1e25, seed=step)
            if policy == "raise":
                with pytest.raises(RuntimeError, match=r"must produce finite values") as info:
                    opt.step()
                assert any(f"'{n}'" in str(info.value) for n in names)
            else:
                with pytest.warns(RuntimeWarning, match=r"skipped the step"):
                    opt.step()
            assert _all_finite(m, opt), (variant, policy, step)


@pytest.mark.parametrize("axis", [0, 1])
def test_gauge_dots_whose_products_overflow_are_exact(axis):
    """Σ x·g and Σ |x·g| where the products (1e300·1e150) overflow: never NaN; ±inf with the
    sign of the exact sum (rational arithmetic) where it exceeds float64; elsewhere within the
    error bound of any float64 summation, n·ε·Σ|x·g| (cancellation against a 1e450 term loses a
    2, as a plain sum of 1e20, −1e20 and 2 in another order would)."""
    from fractions import Fraction

    from deadspec import _core

    x = np.array([[1e300, -1e300, 2.0], [1e300, 1e300, 0.0], [3e-200, 1.0, -1.0]])
    g = np.array([[1e150, 1e150, 1.0], [1e-150, -1e-150, 5.0], [1e150, 4.0, 4.0]])
    s, a = _core.ddc_gauge_dots(x.__dlpack__(), g.__dlpack__(), axis)
    n = x.shape[1 - axis]
    for k in range(n):
        line = (x[k], g[k]) if axis == 1 else (x[:, k], g[:, k])
        es = sum(Fraction(float(p)) * Fraction(float(q)) for p, q in zip(*line))
        ea = sum(abs(Fraction(float(p)) * Fraction(float(q))) for p, q in zip(*line))
        for got, exact in ((s[k], es), (a[k], ea)):
            assert not math.isnan(got)
            if abs(exact) > Fraction(np.finfo(np.float64).max):
                assert math.isinf(got) and (got > 0) == (exact > 0)
            else:
                assert math.isfinite(got)
                bound = 3 * n * Fraction(np.finfo(np.float64).eps) * ea + Fraction(1e-300)
                assert abs(Fraction(float(got)) - exact) <= bound


def test_llc_std_of_huge_estimates_is_finite():
    from deadspec._sgld import scaled_std

    v = np.array([1e300, -1e300, 5e299])
    assert scaled_std(v) == pytest.approx(float(np.std(v / 1e300, ddof=1)) * 1e300)
    assert math.isfinite(scaled_std(v))
    assert scaled_std(np.array([1.0, 2.0, 3.0])) == pytest.approx(1.0)


def test_gauge_check_refuses_nonfinite_outputs():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).double()
    with torch.no_grad():
        m[0].weight.mul_(1e300)
        m[2].weight.mul_(1e300)
    g = deadspec.gauges.Pair("0", "2")
    with pytest.raises(ValueError, match="must be finite"):
        g.check(m, torch.randn(5, 3, dtype=torch.float64), raise_on_fail=False)


def test_muon_lr_beyond_the_dtype_is_refused_before_any_write():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    opt = DDCMuon(m, lr=1e130, weight_decay=0.1)
    m(torch.randn(5, 3)).square().sum().backward()
    before = [p.detach().clone() for p in m.parameters()]
    with pytest.raises(ValueError, match="lr times Muon's shape scale"):
        opt.step()
    assert all(torch.equal(a, p) for a, p in zip(before, m.parameters()))


@pytest.mark.parametrize("seed", [2**64, -(2**63) - 1])
def test_seeds_beyond_a_generator_are_refused(seed):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).double()
    x = torch.randn(6, 3, dtype=torch.float64)
    y = torch.randint(0, 2, (6,))
    with pytest.raises(ValueError, match="seed"):
        deadspec.classify_directions(m, x, targets=y, seed=seed)
    with pytest.raises(ValueError, match="seed"):
        deadspec.read(m, x, targets=y, seed=seed)
    assert deadspec.read(m, x, targets=y, seed=2**64 - 1) is not None


@pytest.mark.parametrize("form", ["coordinate", "split"])
def test_refused_coordinates_keep_their_pre_step_values(form):
    m = _net()
    opt = DDCAdam(m, lr=1e-2, form=form, nonfinite="skip")
    _grads(m, 1.0)
    opt.step()  # moments to keep
    w = m[4].weight
    before = w.detach().clone()
    m_before = opt.state[w]["exp_avg"].clone()
    v_before = opt.state[w]["exp_avg_sq"].clone()
    _grads(m, 1.0, seed=1)
    w.grad[1, 2] = 3e37  # its second moment overflows float32 (the others are ordinary)
    with pytest.warns(RuntimeWarning, match=r"'4\.weight' \(\d+\)"):
        opt.step()
    assert opt.state[w]["exp_avg_sq"][1, 2] == v_before[1, 2]
    assert opt.state[w]["exp_avg"][1, 2] == m_before[1, 2]
    if form == "coordinate":
        assert w[1, 2] == before[1, 2]
        assert int((w != before).sum()) == w.numel() - 1
    # (the split form: the coordinate moves by the update of the moments it kept; its value
    # would be kept only if the new value itself overflowed)
    assert _all_finite(m, opt)


def test_second_moment_overflows_where_adamws_does():
    # |t| ~ 4e19 in float32: t² overflows (1.6e39), ((1 - β₂)·t)·t = 1.6e36 does not, in AdamW
    # too. Every form and path (the rotated heads' and the split form's accumulated t² first)
    # now steps where AdamW steps.
    g = 4e19
    for make in (VARIANTS["split"], VARIANTS["coordinate"]):
        m = _net()
        opt = make(m)
        ref = copy.deepcopy(m)
        ropt = torch.optim.AdamW(ref.parameters(), lr=1e-3, weight_decay=0.0)
        for p, q in zip(m.parameters(), ref.parameters()):
            p.grad = torch.full_like(p, g)
            q.grad = torch.full_like(q, g)
        ropt.step()
        opt.step()  # no RuntimeError: nothing overflowed
        assert all(torch.isfinite(ropt.state[q]["exp_avg_sq"]).all() for q in ref.parameters())
        assert _all_finite(m, opt)


def test_rotated_second_moment_in_adamws_order():
    # the rotated heads' torch path and the core's: (1 - β₂)·g² averaged, not g² first
    p = torch.ones(4, 6)
    outs = []
    for fused in (True, False):
        q, mm, vv = p.clone(), torch.zeros_like(p), torch.zeros_like(p)
        g = torch.full_like(p, 4e19)
        rot = type("R", (), {"axis": 1, "segments": [(0, 3), (3, 6)]})()
        b = functional.AdamBlock(q, g, mm, vv, torch.tensor(0.0), None, None, rot, lr=1e-3,
                                 beta1=0.9, beta2=0.999, eps=1e-8)
        n = functional.ddc_adam([b], fused=None if fused else False)[0]
        assert int(n) == 0
        outs.append(vv)
    for vv in outs:
        assert torch.isfinite(vv).all()
        torch.testing.assert_close(vv, torch.full_like(vv, 1.6e36), rtol=1e-4, atol=0)


def test_unit_whose_scale_overflows_is_not_scaled():
    m = _net()
    with torch.no_grad():
        m[0].weight[3] = 3e38  # row norm 6e38: beyond float32
    opt = DDCAdam(m, lr=1e-3)
    rho = opt.gauge_scales()["pair:0"]
    assert rho[3] == 1.0 and torch.isfinite(rho).all()
    _grads(m, 1e-3)
    opt.step()
    assert _all_finite(m, opt)


def test_row_norms_whose_sum_of_squares_overflows_are_exact():
    """ρ of float64 rows near 1e307: Σw² overflows, the norm does not (the core rescales that
    row); a row whose norm itself exceeds float64 keeps the unscaled convention (ρ = 1)."""
    w = torch.tensor([[1e307, 2e307, -3e307], [1.5e308, 1.5e308, 0.0], [3.0, 4.0, 0.0]],
                     dtype=torch.float64)
    rho = functional.site_rho(w, None, None, None)
    exact = [math.sqrt(14.0) * 1e307, 1.0, 5.0]
    for got, want in zip(rho.tolist(), exact):
        assert got == pytest.approx(want, rel=1e-15)
    rho_b = functional.site_rho(w, torch.tensor([1e308, 0.0, 0.0], dtype=torch.float64), None,
                                None, (0.5, 0.25))
    assert rho_b[0].item() == pytest.approx(math.hypot(0.5 * math.sqrt(14.0) * 1e307, 0.25e308))


@pytest.mark.parametrize("form", ["coordinate", "split"])
def test_parameters_near_the_float64_limit_never_write_nonfinite(form):
    """Split-form sums of x̃² of 1e300 parameters exceed float64 (+inf, the documented value);
    the check before commit refuses what overflowed and the policy applies: 'raise' names the
    parameters, 'skip' warns; nothing non-finite is written either way."""
    for policy in ("raise", "skip"):
        m = _net(torch.float64)
        with torch.no_grad():
            for p in m.parameters():
                p.mul_(1e300)
        before = [p.detach().clone() for p in m.parameters()]
        _grads(m, 1.0)
        opt = DDCAdam(m, lr=1e-3, form=form, nonfinite=policy)
        if policy == "raise":
            with pytest.raises(RuntimeError, match=r"deadspec\.DDCAdam\.step: the step must "
                                                   r"produce finite values"):
                opt.step()
        else:
            with pytest.warns(RuntimeWarning, match=r"deadspec\.DDCAdam\.step"):
                opt.step()
        assert _all_finite(m, opt)
        for p, b in zip(m.parameters(), before):
            assert torch.isfinite(p).all() and p.shape == b.shape


@pytest.mark.parametrize("opt", ["muon", "adam-torch"])
def test_overshooting_weight_decay_never_writes_nonfinite(opt):
    """lr·wd far above 1 (the decay factor 1 − lr·wd beyond float32): the decay is checked
    before commit like the step (it raised torch's "value cannot be converted", or wrote Inf);
    the overflowing coordinates keep their values and the policy applies."""
    m = _net()
    make = {"muon": lambda: DDCMuon(m, lr=1e-3, weight_decay=1e118, nonfinite="skip"),
            "adam-torch": lambda: DDCAdam(m, lr=1e-3, weight_decay=1e118, foreach=False,
                                          nonfinite="skip")}[opt]
    o = make()
    _grads(m, 1e-3)
    with pytest.warns(RuntimeWarning, match=r"deadspec\.DDC(Muon|Adam)\.step: the step must"):
        o.step()
    assert _all_finite(m, o)
    for g in o.param_groups:
        g["weight_decay"] = 0.5  # lr·wd <= 1: decayed in place, as before
    before = [p.detach().clone() for p in m.parameters()]
    _grads(m, 0.0)
    o.step()
    assert _all_finite(m, o) and any(not torch.equal(p, b) for p, b in zip(m.parameters(), before))


def test_screened_step_is_the_checked_step_bit_for_bit(monkeypatch):
    # The overflow screen only lets the core skip its per-element keep: same bits either way.
    runs = []
    for screen in (True, False):
        if not screen:
            monkeypatch.setattr("deadspec.optim.adam.screen_safe", lambda *a: False)
        m = _net(seed=3)
        opt = DDCAdam(m, lr=1e-2, weight_decay=0.1)
        for k in range(4):
            _grads(m, 1.0, seed=k)
            opt.step()
        runs.append([p.detach().clone() for p in m.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def test_screen_clears_ordinary_steps_and_not_huge_ones():
    b = functional.AdamBlock(torch.zeros(3), torch.zeros(3), torch.zeros(3), torch.zeros(3),
                             torch.tensor(0.0), None, None, None, lr=1e-3, beta1=0.9,
                             beta2=0.999, eps=1e-8)
    assert functional.screen_safe(b, 10.0, 2.0)
    assert not functional.screen_safe(b, 1e18, 2.0)  # |g·σ| beyond √max/16 in float32
    assert not functional.screen_safe(b, 10.0, math.inf)
    b.eps = 0.0  # 0/0 possible
    assert not functional.screen_safe(b, 10.0, 2.0)


def test_load_state_dict_refuses_nonfinite_moments():
    m = _net()
    opt = DDCAdam(m, gauge_mode="damped")
    _grads(m, 1.0)
    opt.step()
    sd = opt.state_dict()
    bad = copy.deepcopy(sd)
    key = sorted(bad["state"])[2]
    bad["state"][key]["exp_avg_sq"][0] = float("inf")
    fresh = DDCAdam(_net(), gauge_mode="damped")
    with pytest.raises(ValueError, match=r"finite values, got NaN/Inf in 'exp_avg_sq' of '2\."):
        fresh.load_state_dict(bad)
    assert len(fresh.state) == 0  # nothing loaded
    bad = copy.deepcopy(sd)
    key = next(k for k, v in bad["state"].items() if "site.exp_avg" in v)  # a site's moments
    bad["state"][key]["site.exp_avg"][0] = float("nan")
    with pytest.raises(ValueError, match=r"NaN/Inf in 'site.exp_avg' of '\d\.weight'"):
        fresh.load_state_dict(bad)
    fresh.load_state_dict(sd)  # a finite state loads
    net = _net()
    mu = DDCMuon(net)
    _grads(net, 1.0)
    mu.step()
    msd = copy.deepcopy(mu.state_dict())
    k = next(k for k, v in msd["state"].items() if "momentum_buffer" in v)
    msd["state"][k]["momentum_buffer"][0, 0] = float("-inf")
    with pytest.raises(ValueError, match=r"DDCMuon\.load_state_dict: .*'momentum_buffer'"):
        DDCMuon(_net()).load_state_dict(msd)


def test_loaded_state_outside_adams_bound_turns_the_screen_off():
    m = _net()
    opt = DDCAdam(m)
    _grads(m, 1.0)
    opt.step()
    sd = copy.deepcopy(opt.state_dict())
    opt2 = DDCAdam(_net())
    opt2.load_state_dict(sd)
    assert opt2._moments_bounded
    key = sorted(sd["state"])[0]
    sd["state"][key]["exp_avg"] += 1e3  # |m| ≫ √v: not moments Adam made
    opt2.load_state_dict(sd)
    assert not opt2._moments_bounded


# -------------------------------------------------------------------------------------------------
# 2. approach_slope
# -------------------------------------------------------------------------------------------------


def _linear(dtype):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 6, bias=False), nn.Linear(6, 5, bias=False)).to(dtype)
    return net, torch.randn(200, 8, dtype=dtype)


def test_approach_slope_refuses_a_grid_that_loses_the_directions():
    # float32, t ≤ 1e-4: the two scaled units fall below the active threshold already at the
    # largest t, so the fixed active set left them out (it read slope 0, r² ≈ 1)
    net, x = _linear(torch.float32)
    with pytest.raises(ValueError, match=r"active part .* at t=0\.0001 against 6 .*larger t"):
        deadspec.approach_slope(net, x, layer="0", units=[0, 1], t=np.logspace(-6, -4, 5))
    net, x = _linear(torch.float64)
    with pytest.raises(ValueError, match=r"got 4 active eigenvalues at t=1e-09"):
        deadspec.approach_slope(net, x, layer="0", units=[0, 1], t=np.logspace(-12, -9, 4))


def test_approach_slope_refuses_roundoff_at_the_small_t_end():
    # float64, down to 1e-9: at the small-t end λ_k is round-off (it read a bent slope)
    net, x = _linear(torch.float64)
    match = r"round-off level .* at t=1e-07 .*use a grid with t >= 1e-06"
    with pytest.raises(ValueError, match=match):
        deadspec.approach_slope(net, x, layer="0", units=[0, 1], t=np.logspace(-9, -1, 9))


def test_approach_slope_float32_default_grid_still_reads():
    # below the (conservative) active threshold but above round-off: still read, and right
    net, x = _linear(torch.float32)
    res = deadspec.approach_slope(net, x, layer="0", units=[0, 1])
    assert abs(res.slope - 4.0) < 0.01 and res.active == 6


@pytest.mark.parametrize("units", ["37", b"01", [1.5], [2.0], [True], True, [0, np.float64(1)]])
def test_approach_slope_refuses_non_integer_units(units):
    net, x = _linear(torch.float64)
    with pytest.raises(TypeError, match=r"deadspec\.approach_slope: units must be"):
        deadspec.approach_slope(net, x, layer="0", units=units)


def test_approach_slope_takes_integer_units_of_any_kind():
    net, x = _linear(torch.float64)
    for units in (3, np.int64(3), [3], np.array([3]), torch.tensor([3])):
        assert deadspec.approach_slope(net, x, layer="0", units=units).units == (3,)


# -------------------------------------------------------------------------------------------------
# 3. readings at extreme scales
# -------------------------------------------------------------------------------------------------

BASE = np.array([5.0, 3.0, 2.0, 0.5, 0.25])
exponents = st.integers(min_value=-300, max_value=300)


@settings(max_examples=60, deadline=None)
@given(exponents)
def test_spectrum_readings_are_scale_invariant(e):
    ref = deadspec.spectrum_from_eigenvalues(BASE, rtol=1e-3)
    s = deadspec.spectrum_from_eigenvalues(BASE * 10.0**e, rtol=1e-3)
    for k in ("participation_ratio", "effective_rank", "condition_number"):
        assert math.isfinite(getattr(s, k)), (e, k)
        assert getattr(s, k) == pytest.approx(getattr(ref, k), rel=1e-12), (e, k)
    assert s.logdet_plus == pytest.approx(ref.logdet_plus + 5 * e * math.log(10), rel=1e-12)


@settings(max_examples=40, deadline=None)
@given(exponents)
def test_spectrum_of_a_scaled_gram_is_finite(e):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((6, 4))
    g = a @ a.T * 10.0**e
    ref = deadspec.spectrum(a @ a.T)
    s = deadspec.spectrum(g)
    assert math.isfinite(s.participation_ratio) and math.isfinite(s.effective_rank)
    assert s.participation_ratio == pytest.approx(ref.participation_ratio, rel=1e-9)
    assert s.effective_rank == pytest.approx(ref.effective_rank, rel=1e-9)


@settings(max_examples=40, deadline=None)
@given(st.integers(min_value=-300, max_value=307))
def test_sym_eig_is_finite_or_raises_overflow(e):
    rng = np.random.default_rng(1)
    a = rng.standard_normal((5, 5))
    a = a + a.T
    ref, _ = deadspec.sym_eig(a)
    scaled = a * 10.0**e
    if not np.isfinite(scaled).all():
        return
    try:
        vals, _ = deadspec.sym_eig(scaled)
    except OverflowError as exc:
        assert "deadspec.sym_eig" in str(exc)
        assert np.abs(ref).max() * 10.0**e > np.finfo(np.float64).max / 4
        return
    assert np.isfinite(vals).all()
    np.testing.assert_allclose(vals / 10.0**e, ref, rtol=1e-9, atol=1e-9 * np.abs(ref).max())


def test_sym_eig_overflow_raises_like_gram():
    a = np.full((2, 2), 1e308)
    with pytest.raises(OverflowError, match="deadspec.sym_eig"):
        deadspec.sym_eig(a)
    with pytest.raises(OverflowError, match="deadspec.gram"):
        deadspec.gram(a)
    with pytest.raises(OverflowError, match="deadspec.spectrum"):
        deadspec.spectrum(a)


def test_float32_inputs_near_the_float32_limits():
    big = torch.tensor([[3e38, 3e38], [3e38, 3e38]], dtype=torch.float32)
    vals, _ = deadspec.sym_eig(big)
    assert np.isfinite(vals).all() and vals[0] == pytest.approx(6e38, rel=1e-6)
    g = torch.diag(torch.tensor([3e38, 1e38, 1e-38, 1e-45], dtype=torch.float32))
    s = deadspec.spectrum(g, rtol=0.0)
    for k in ("participation_ratio", "effective_rank", "condition_number", "logdet_plus"):
        assert math.isfinite(getattr(s, k)), k
    tiny = torch.diag(torch.tensor([2e-38, 1e-38], dtype=torch.float32))
    assert deadspec.spectrum(tiny).participation_ratio == pytest.approx(1.8, rel=1e-6)


def test_condition_number_beyond_float64_raises():
    with pytest.raises(OverflowError, match=r"condition number .* pass a larger rtol"):
        deadspec.spectrum_from_eigenvalues(np.array([1e300, 1e-300]), rtol=0.0)


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=-300, max_value=300), st.integers(min_value=-300, max_value=300),
       st.sampled_from(["ols", "theil-sen"]))
def test_fit_slope_is_scale_invariant(ex, ey, method):
    x = np.array([1.0, 2.0, 3.0, 4.5, 5.0])
    y = np.array([2.1, 3.9, 6.2, 8.8, 10.1])
    ref = deadspec.fit_slope(x, y, method=method)
    sx, sy = 10.0**ex, 10.0**ey
    try:
        f = deadspec.fit_slope(x * sx, y * sy, method=method)
    except OverflowError as exc:
        assert "deadspec.fit_slope" in str(exc)
        assert ey - ex > 300  # only a slope beyond float64
        return
    if abs(ey - ex) > 290:  # a slope near or below the subnormal range has fewer bits
        return
    assert f.slope * sx / sy == pytest.approx(ref.slope, rel=1e-9)
    assert f.intercept / sy == pytest.approx(ref.intercept, rel=1e-9, abs=1e-9)
    assert f.r2 == pytest.approx(ref.r2, rel=1e-12)
    assert math.isfinite(f.stderr)


def test_fit_slope_near_the_float64_limit():
    x = np.array([-1.7e308, -0.5e308, 0.5e308, 1.7e308])
    f = deadspec.fit_slope(x, x)  # the plain sums overflow: NaN before
    assert f.slope == pytest.approx(1.0) and f.r2 == pytest.approx(1.0)
    tiny = [1e-170, 2e-170, 3e-170]  # (x − x̄)² underflows: "all x equal" before
    f = deadspec.fit_slope(tiny, tiny)
    assert f.slope == pytest.approx(1.0) and f.r2 == pytest.approx(1.0)
    with pytest.raises(OverflowError, match="deadspec.fit_slope"):
        deadspec.fit_slope([1e-300, 2e-300, 3e-300], [1e300, 2e300, 3e300])


class _Power(nn.Module):
    """``f = w^p · x``: along the path w = t, F_u(t) ∝ t^(2(p−1)), k̂ = p."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p
        self.w = nn.Parameter(torch.ones((), dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w**self.p * x


@pytest.mark.parametrize("p", [-1.0, -0.25])
def test_lambda_dir_is_nan_where_k_hat_is_not_positive(p):
    """k̂ <= 0 (F_u grows as t -> 0): λ_dir is the documented NaN (undefined, not a dead
    direction), never an infinity; k̂ and the fit stay finite."""
    x = torch.randn(32, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    res = deadspec.direction_order(_Power(p), x, {"w": torch.tensor(1.0)},
                                   path=lambda t: {"w": torch.tensor(t, dtype=torch.float64)},
                                   task="regression")
    assert res.kind == "regular" and res.k_hat == pytest.approx(p, abs=1e-9)
    assert math.isnan(res.lambda_dir)
    assert all(math.isfinite(v) for v in (res.k_hat, res.slope, res.r2))
    ok = deadspec.direction_order(_Power(2.0), x, {"w": torch.tensor(1.0)},
                                  path=lambda t: {"w": torch.tensor(t, dtype=torch.float64)},
                                  task="regression")
    assert ok.k_hat == pytest.approx(2.0) and ok.lambda_dir == pytest.approx(0.25)


# -------------------------------------------------------------------------------------------------
# 4. sizes: refused before anything is allocated, never a hang
# -------------------------------------------------------------------------------------------------


def _returns(fn, timeout=120.0):
    """Run ``fn`` in a thread; the exception it raised (it must return within ``timeout`` s, a
    guard against a hang, not a timing)."""
    out: dict[str, BaseException] = {}

    def run():
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            out["exc"] = exc

    th = threading.Thread(target=run, daemon=True)
    th.start()
    th.join(timeout)
    assert not th.is_alive(), "the call hung instead of refusing its size"
    return out.get("exc")


def _data():
    torch.manual_seed(0)
    x = torch.randn(20, 3, dtype=torch.float64)
    return nn.Linear(3, 1, bias=False).double(), (x, x.sum(1, keepdim=True))


def _llc_kw():
    return dict(loss_fn=llc.gaussian_nll(1.0), epsilon=1e-4, gamma=1.0, seed=0, progress=False,
                check_nll=False)


def _mlp_dir():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2)).double()
    n = sum(p.numel() for p in net.parameters())
    return net, torch.randn(20, 3, dtype=torch.float64), torch.ones(n, dtype=torch.float64)


SIZES = {
    "estimate chains": (lambda: llc.estimate(*_data(), chains=10**12, **_llc_kw()), "chains"),
    "estimate draws": (lambda: llc.estimate(*_data(), chains=1, draws=10**12, **_llc_kw()),
                       "SGLD steps"),
    "estimate burnin": (lambda: llc.estimate(*_data(), chains=2, burnin=10**12, **_llc_kw()),
                        "SGLD steps"),
    "estimate trace": (lambda: llc.estimate(*_data(), chains=10**4, draws=10**5, burnin=0,
                                            **_llc_kw()), "recorded draws"),
    "calibrate chains": (lambda: llc.calibrate(*_data(), loss_fn=llc.gaussian_nll(1.0),
                                               chains=10**12, progress=False), "chains"),
    "calibrate grid": (lambda: llc.calibrate(
        *_data(), loss_fn=llc.gaussian_nll(1.0), gammas=[1.0], progress=False,
        epsilons=(1e-6 * (1 + k) for k in itertools.count())), "epsilons"),
    "calibrate extend": (lambda: llc.calibrate(*_data(), loss_fn=llc.gaussian_nll(1.0),
                                               extend=10**9, progress=False), "settings"),
    "calibrate steps": (lambda: llc.calibrate(*_data(), loss_fn=llc.gaussian_nll(1.0),
                                              chains=1000, draws=10**5, burnin=0, progress=False),
                        "SGLD steps of the sweep"),
    "curvature iters": (lambda: llc.curvature_scale(*_data(), loss_fn=llc.gaussian_nll(1.0),
                                                    iters=10**12), "iters"),
    "approach t": (lambda: deadspec.approach_slope(
        _mlp_dir()[0], _mlp_dir()[1], layer="0", units=[0], t=np.logspace(-3, -1, 10**5)),
        "number of t values"),
    "order probes": (lambda: deadspec.direction_order(
        *_mlp_dir(), targets=torch.zeros(20, dtype=torch.long), n_probes=10**12), "n_probes"),
    "order t": (lambda: deadspec.direction_order(
        *_mlp_dir(), targets=torch.zeros(20, dtype=torch.long), t=np.logspace(-3, -1, 10**5)),
        "number of t values"),
    "classify probes": (lambda: deadspec.classify_directions(
        _mlp_dir()[0], _mlp_dir()[1], targets=torch.zeros(20, dtype=torch.long),
        n_probes=10**12), "n_probes"),
    "mlp layers": (lambda: models.mlp([4] * 10**6), "number of layers"),
    "mlp parameters": (lambda: models.mlp([10**6] * 3), "number of parameters"),
    "transformer": (lambda: models.TransformerBlock(10**6, 4), "number of parameters"),
    "modadd model": (lambda: models.ModAddTransformer(10**9), "embedding parameters"),
    "modadd data": (lambda: models.modadd_data(10**6), "pairs"),
    "gram accumulator": (lambda: deadspec.GramAccumulator(10**8), "machine's memory"),
    "muon ns_steps": (lambda: DDCMuon(_net(), ns_steps=2**64), "ns_steps"),
}


@pytest.mark.parametrize("case", sorted(SIZES))
def test_absurd_sizes_are_refused_at_once(case):
    call, what = SIZES[case]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (LLC's own warnings are beside the point)
        exc = _returns(call)
    assert isinstance(exc, ValueError), repr(exc)
    msg = str(exc)
    assert msg.startswith("deadspec.") and what in msg, msg
    assert "at most" in msg or "within the machine's memory" in msg, msg


def test_ordinary_sizes_still_run():
    net, data = _data()
    res = llc.estimate(net, data, chains=2, draws=5, burnin=2, warn=False, **_llc_kw())
    assert res.chains == 2 and res.loss_trace.shape == (2, 5)
    assert llc.curvature_scale(net, data, loss_fn=llc.gaussian_nll(1.0), iters=3) > 0
    assert len(models.mlp([3, 5, 2])) == 3
