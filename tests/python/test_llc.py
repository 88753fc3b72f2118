"""Tests of deadspec.llc: the SGLD LLC estimator and its calibration.

Scaling: the data have noise σ = 0.1 and the loss is the Gaussian NLL ‖y − f‖²/(2σ²). For a
*regular* model λ̂ is invariant to a constant rescaling c of the loss only in the limit γ → 0 and
ε → 0 (a rescaled loss is the right loss at inverse temperature c·nβ); at an (ε, γ) set for the
right loss, plain MSE (c = 2σ² = 0.02 here) leaves the chains 50× less confined by the data than
by the localisation and 50× slower, so its λ̂ falls far outside the ±20% band: the tests check
that, and that the Gaussian-scaling check flags it.

Settings (documented, not tuned per seed): regular model, P = nβ·h_max from
``curvature_scale``, ε = 0.1/P, γ = 1e-2·P. y = abx with true product 0 (λ = 1/2, multiplicity
m = 2): the expected value under the localised tempered posterior approaches 1/2 only as
1/2 − O(1/log(nβ/γ²)) (m = 2), and SGLD needs long chains to visit the hyperbola's arms; with
t = nβ/σ² ≈ 2.6e4, γ = 0.01·√t ≈ 1.6, ε = 0.03/√t ≈ 1.8e-4, 8 chains × 2000 steps, λ̂ lands
within 10% of 1/2 (seeds 0–3 gave 0.45, 0.44, 0.56, 0.46).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from deadspec import llc

SIGMA = 0.1
N = 2000


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _mse(out, y):
    return nn.functional.mse_loss(out, y, reduction="none").reshape(out.shape[0], -1).mean(1)


def _linear_problem(d=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, d, generator=g, dtype=torch.float64)
    w = torch.randn(d, 1, generator=g, dtype=torch.float64)
    y = x @ w + SIGMA * torch.randn(N, 1, generator=g, dtype=torch.float64)
    net = nn.Linear(d, 1, bias=False).double()
    with torch.no_grad():
        net.weight.copy_(torch.linalg.lstsq(x, y).solution.T)
    return net, x, y


class _AB(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.zeros((), dtype=torch.float64))
        self.b = nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, x):
        return self.a * self.b * x


def _ab_problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, 1, generator=g, dtype=torch.float64)
    y = SIGMA * torch.randn(N, 1, generator=g, dtype=torch.float64)  # true product 0
    m = _AB()
    c = float((x * y).sum() / (x * x).sum())  # empirical minimum ab = c, balanced
    with torch.no_grad():
        m.a.fill_(math.copysign(abs(c) ** 0.5, c))
        m.b.fill_(abs(c) ** 0.5)
    return m, x, y


def _regular_settings(net, x, y):
    h = llc.curvature_scale(net, (x, y), loss_fn=llc.gaussian_nll(SIGMA))
    p = llc.default_nbeta(N) * h
    return {"epsilon": 0.1 / p, "gamma": 1e-2 * p, "chains": 4, "draws": 200, "burnin": 100}


def test_regular_model_gives_half_the_dimension_and_mse_does_not():
    net, x, y = _linear_problem(d=10)
    kw = _regular_settings(net, x, y)
    res = llc.estimate(net, (x, y), loss_fn=llc.gaussian_nll(SIGMA), seed=0, **kw)
    assert res.ok and not res.warnings
    assert abs(res.mean - 5.0) <= 0.2 * 5.0, res.per_chain
    assert res.nll_scale == pytest.approx(1.0, abs=0.05)
    assert res.passes == 4 * 300 + 1 and res.batch_size == N and res.n_params == 10
    assert res.nbeta == pytest.approx(N / math.log(N))
    assert res.loss_trace.shape == (4, 200) and np.isfinite(res.loss_trace).all()
    # the same settings with plain MSE (the NLL times 2σ²): flagged, and λ̂ far off d/2
    with pytest.warns(llc.LLCWarning, match="Gaussian NLL scale"):
        bad = llc.estimate(net, (x, y), loss_fn=_mse, seed=0, **kw)
    assert bad.nll_scale == pytest.approx(2 * SIGMA**2, rel=0.1)
    assert abs(bad.mean - 5.0) > 0.2 * 5.0, bad.mean


def test_product_zero_gives_one_half():
    m, x, y = _ab_problem()
    t = llc.default_nbeta(N) / SIGMA**2
    res = llc.estimate(m, (x, y), loss_fn=llc.gaussian_nll(SIGMA), epsilon=0.03 / t**0.5,
                       gamma=0.01 * t**0.5, chains=8, draws=1500, burnin=500, seed=0)
    assert res.ok
    assert abs(res.mean - 0.5) <= 0.2 * 0.5, res.per_chain
    with pytest.warns(llc.LLCWarning, match="Gaussian NLL scale"):
        llc.estimate(m, (x, y), loss_fn=_mse, epsilon=1e-4, gamma=1.0, chains=2, draws=5,
                     burnin=0, seed=0)


def test_seeded_runs_are_reproducible_and_vectorisation_agrees():
    net, x, y = _linear_problem(d=4, seed=1)
    kw = _regular_settings(net, x, y)
    kw.update(draws=60, burnin=20)
    a = llc.estimate(net, (x, y), loss_fn=llc.gaussian_nll(SIGMA), seed=7, vectorize=True, **kw)
    b = llc.estimate(net, (x, y), loss_fn=llc.gaussian_nll(SIGMA), seed=7, vectorize=True, **kw)
    c = llc.estimate(net, (x, y), loss_fn=llc.gaussian_nll(SIGMA), seed=7, vectorize=False, **kw)
    d = llc.estimate(net, (x, y), loss_fn=llc.gaussian_nll(SIGMA), seed=8, vectorize=True, **kw)
    assert a.vectorized and not c.vectorized
    np.testing.assert_array_equal(a.loss_trace, b.loss_trace)
    # same per-chain generators: the loop and the vmap differ by round-off only
    np.testing.assert_allclose(a.loss_trace, c.loss_trace, rtol=1e-9)
    np.testing.assert_allclose(a.per_chain, c.per_chain, rtol=1e-6)
    assert not np.allclose(a.per_chain, d.per_chain)


def test_minibatch_and_model_left_unchanged():
    net, x, y = _linear_problem(d=4, seed=2)
    before = net.weight.detach().clone()
    kw = _regular_settings(net, x, y)
    res = llc.estimate(net, (x, y), loss_fn=llc.gaussian_nll(SIGMA), batch_size=500, seed=0,
                       **{**kw, "draws": 50, "burnin": 10})
    assert res.batch_size == 500 and res.passes == 4 * 60 + 4
    assert res.samples_processed == 4 * 60 * 500 + N
    assert torch.equal(net.weight, before) and net.weight.grad is None
    seq = llc.estimate(net, torch.utils.data.TensorDataset(x, y), loss_fn=llc.gaussian_nll(SIGMA),
                       batch_size=500, seed=0, vectorize=False, **{**kw, "draws": 50, "burnin": 10})
    np.testing.assert_allclose(res.loss_trace, seq.loss_trace, rtol=1e-9)


def test_divergence_is_reported_not_hidden():
    net, x, y = _linear_problem(d=4, seed=3)
    p = llc.default_nbeta(N) * llc.curvature_scale(net, (x, y), loss_fn=llc.gaussian_nll(SIGMA))
    with pytest.warns(llc.LLCWarning, match="diverged"):
        res = llc.estimate(net, (x, y), loss_fn=llc.gaussian_nll(SIGMA), epsilon=10.0 / p,
                           gamma=1.0, chains=3, draws=50, burnin=0, seed=0)
    assert res.diverged.all() and (res.diverged_at >= 0).all()
    assert math.isnan(res.mean) and np.isnan(res.per_chain).all() and not res.ok
    assert res.to_dict()["n_diverged"] == 3


def test_calibrate_picks_a_stable_plateau_setting(tmp_path):
    net, x, y = _linear_problem(d=6, seed=4)
    cal = llc.calibrate(net, (x, y), loss_fn=llc.gaussian_nll(SIGMA), chains=3, draws=150,
                        burnin=50, seed=0, progress=False)
    assert cal.epsilon is not None and cal.best is not None and "plateau" in cal.rule
    assert len(cal.sweep) == 15 and sum(r["chosen"] for r in cal.sweep) == 1
    assert {r["reason"] for r in cal.sweep} <= {
        "stable", "diverged", "nan", "non-positive", "drift"
    }
    assert abs(cal.best.mean - 3.0) <= 0.2 * 3.0
    assert cal.passes == sum(r["passes"] for r in cal.sweep)
    cal.plot(tmp_path / "cal.png")
    assert (tmp_path / "cal.png").stat().st_size > 0
    # nothing stable: reported, not hidden
    bad = llc.calibrate(net, (x, y), loss_fn=llc.gaussian_nll(SIGMA), epsilons=[1.0],
                        gammas=[1.0], chains=2, draws=10, burnin=0, seed=0)
    assert bad.epsilon is None and bad.best is None and "no stable" in bad.rule


def test_calibrate_extends_a_default_grid_that_diverges_everywhere(monkeypatch):
    # A curvature at w* far below the curvature a chain meets (as at a grokked checkpoint):
    # simulated by under-reporting h_max 1000-fold, so the whole default ε grid diverges.
    net, x, y = _linear_problem(d=6, seed=4)
    true_h = llc.curvature_scale(net, (x, y), loss_fn=llc.gaussian_nll(SIGMA))
    monkeypatch.setattr(llc, "curvature_scale", lambda *a, **k: true_h / 1000.0)
    kw = dict(loss_fn=llc.gaussian_nll(SIGMA), chains=3, draws=150, burnin=50, seed=0,
              progress=False)
    cal = llc.calibrate(net, (x, y), **kw)
    first = cal.sweep[:15]
    assert all(r["reason"] in ("diverged", "nan") for r in first)
    # moved down until a sweep has no divergence: three moves, back onto the right scale
    assert len(cal.sweep) == 4 * 15 and "10 3×" in cal.rule
    assert all(r["reason"] not in ("diverged", "nan") for r in cal.sweep[45:])
    assert cal.epsilon is not None and "plateau" in cal.rule
    assert abs(cal.best.mean - 3.0) <= 0.2 * 3.0
    # without extension: reported as nothing stable
    bare = llc.calibrate(net, (x, y), extend=0, **kw)
    assert len(bare.sweep) == 15 and bare.epsilon is None and "no stable" in bare.rule
    with pytest.raises(ValueError, match="extend"):
        llc.calibrate(net, (x, y), extend=-1, **kw)


def test_validation_messages():
    net, x, y = _linear_problem(d=2, seed=5)
    lf = llc.gaussian_nll(SIGMA)
    with pytest.raises(ValueError, match="deadspec.llc.estimate: epsilon"):
        llc.estimate(net, (x, y), loss_fn=lf, epsilon=0.0, gamma=1.0)
    with pytest.raises(ValueError, match="gamma"):
        llc.estimate(net, (x, y), loss_fn=lf, epsilon=1e-5, gamma=-1.0)
    with pytest.raises(ValueError, match="chains"):
        llc.estimate(net, (x, y), loss_fn=lf, epsilon=1e-5, gamma=1.0, chains=0)
    with pytest.raises(ValueError, match="batch_size"):
        llc.estimate(net, (x, y), loss_fn=lf, epsilon=1e-5, gamma=1.0, batch_size=N + 1)
    with pytest.raises(TypeError, match="data"):
        llc.estimate(net, x, loss_fn=lf, epsilon=1e-5, gamma=1.0)
    with pytest.raises(ValueError, match="leading sample axis"):
        llc.estimate(net, (x, y[:10]), loss_fn=lf, epsilon=1e-5, gamma=1.0)
    with pytest.raises(ValueError, match="per-sample losses of shape"):
        llc.estimate(net, (x, y), loss_fn=lambda o, t: ((o - t) ** 2).T, epsilon=1e-5, gamma=1.0)
    with pytest.raises(ValueError, match="sigma"):
        llc.gaussian_nll(0.0)
    assert llc.default_nbeta(100) == pytest.approx(100 / math.log(100))


def test_elementwise_losses_are_summed_per_sample():
    # a reduction="none" loss returning (B, outputs) is summed per sample, then batch-averaged
    net, x, y = _linear_problem(d=4, seed=3)
    y2 = torch.cat([y, 2.0 * y], dim=1)
    net2 = nn.Linear(4, 2, bias=False).double()
    with torch.no_grad():
        net2.weight.copy_(torch.linalg.lstsq(x, y2).solution.T)

    def elementwise(out, t):
        return (t - out).pow(2) / (2 * SIGMA**2)

    def summed(out, t):
        return elementwise(out, t).sum(1)

    kw = dict(epsilon=1e-6, gamma=10.0, chains=2, draws=20, burnin=5, seed=0, check_nll=False)
    a = llc.estimate(net2, (x, y2), loss_fn=elementwise, **kw)
    b = llc.estimate(net2, (x, y2), loss_fn=summed, **kw)
    assert a.init_loss == b.init_loss and a.mean == b.mean
    with pytest.raises(ValueError, match=r"element-wise losses \(2000, \.\.\.\)"):
        llc.estimate(net2, (x, y2), loss_fn=lambda o, t: elementwise(o, t).T, **kw)
