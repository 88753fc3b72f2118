"""DDCAdam(form="split"): theory.md §6's split step, written out literally, on a single pair."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from _models import mlp_ln as _mlp_ln
from deadspec import gauges as G
from deadspec.optim import DDCAdam

pytestmark = pytest.mark.usefixtures("one_thread")

LR, WD, BETAS, EPS = 3e-2, 0.1, (0.9, 0.99), 1e-8


def _pair_net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3)).double()


def _batches(k: int):
    g = torch.Generator().manual_seed(3)
    return [
        (
            torch.randn(16, 5, generator=g, dtype=torch.float64),
            torch.randn(16, 3, generator=g, dtype=torch.float64),
        )
        for _ in range(k)
    ]


class _Adam:
    """Bias-corrected Adam direction m̂/(√v̂ + eps) on a tensor of inputs."""

    def __init__(self, like: torch.Tensor) -> None:
        self.m, self.v, self.t = torch.zeros_like(like), torch.zeros_like(like), 0

    def __call__(self, g: torch.Tensor) -> torch.Tensor:
        b1, b2 = BETAS
        self.t += 1
        self.m = b1 * self.m + (1 - b1) * g
        self.v = b2 * self.v + (1 - b2) * g * g
        return (self.m / (1 - b1**self.t)) / ((self.v / (1 - b2**self.t)).sqrt() + EPS)


def _theory_split(params: list[torch.Tensor], batches) -> list[torch.Tensor]:
    """theory.md §6, the multiplicative pair, one unit j at a time, as written there."""
    w_in, b_in, w_out, b_out = (p.detach().clone() for p in params)
    h = w_in.shape[0]
    tan1 = [_Adam(torch.zeros(w_in.shape[1] + 1, dtype=torch.float64)) for _ in range(h)]
    tan2 = [_Adam(torch.zeros(w_out.shape[0], dtype=torch.float64)) for _ in range(h)]
    rad = [_Adam(torch.zeros((), dtype=torch.float64)) for _ in range(h)]
    out_bias = _Adam(b_out)
    for x, y in batches:
        ps = [t.clone().requires_grad_(True) for t in (w_in, b_in, w_out, b_out)]
        F.mse_loss(F.linear(F.relu(F.linear(x, ps[0], ps[1])), ps[2], ps[3]), y).backward()
        g_in, gb_in, g_out, gb_out = (p.grad for p in ps)
        shrink = 1 - LR * WD  # (0) decoupled weight decay as a shrink
        w_in, b_in, w_out, b_out = (t * shrink for t in (w_in, b_in, w_out, b_out))
        new_in, new_bin, new_out = w_in.clone(), b_in.clone(), w_out.clone()
        for j in range(h):
            w1, g1 = torch.cat([w_in[j], b_in[j : j + 1]]), torch.cat([g_in[j], gb_in[j : j + 1]])
            w2, g2 = w_out[:, j], g_out[:, j]
            rho1, rho2 = w1.norm(), w2.norm()
            gh1, gh2 = g1 @ w1, g2 @ w2  # (1) log-norm gradients
            tan_1 = g1 - gh1 / rho1**2 * w1
            tan_2 = g2 - gh2 / rho2**2 * w2
            g_u = (gh1 + gh2) / math.sqrt(2)  # (2) radial; gauge mode g_V policy "zero"
            delta_u = -LR * rad[j](g_u)  # (3) scalar Adam on g_U
            dlog = delta_u / math.sqrt(2)
            u1, u2 = tan1[j](rho1 * tan_1), tan2[j](rho2 * tan_2)  # (4) Adam on ρ·g_tan
            u1 = u1 - (u1 @ w1) / rho1**2 * w1  # re-project
            u2 = u2 - (u2 @ w2) / rho2**2 * w2
            w1 = torch.exp(dlog) * w1 - LR * rho1 * u1  # (5) radial ×, tangential +
            w2 = torch.exp(dlog) * w2 - LR * rho2 * u2
            new_in[j], new_bin[j], new_out[:, j] = w1[:-1], w1[-1], w2
        w_in, b_in, w_out = new_in, new_bin, new_out
        b_out = b_out - LR * out_bias(gb_out)  # in no gauge: AdamW
    return [w_in, b_in, w_out, b_out]


def test_single_pair_is_theory_section_6_literally():
    m = _pair_net()
    expected = _theory_split(list(m.parameters()), _batches(6))
    opt = DDCAdam(
        m, lr=LR, betas=BETAS, eps=EPS, weight_decay=WD, gauges=[G.Pair("0", "2")], form="split"
    )
    for x, y in _batches(6):
        opt.zero_grad()
        F.mse_loss(m(x), y).backward()
        opt.step()
    for p, q in zip(m.parameters(), expected):
        assert torch.allclose(p, q, rtol=1e-12, atol=1e-14), float((p - q).abs().max())
    # and it is not the coordinate form
    c = _pair_net()
    oc = DDCAdam(c, lr=LR, betas=BETAS, eps=EPS, weight_decay=WD, gauges=[G.Pair("0", "2")])
    for x, y in _batches(6):
        oc.zero_grad()
        F.mse_loss(c(x), y).backward()
        oc.step()
    assert not torch.allclose(c[0].weight, m[0].weight, rtol=1e-3)


def test_split_step_keeps_tangential_updates_tangential():
    # Per producer row, w_new = e^{Δ}·w + (a part ⟂ w): the additive update is tangential.
    m = _pair_net(seed=1)
    opt = DDCAdam(m, lr=LR, eps=0.0, gauges=[G.Pair("0", "2")], form="split")
    x, y = _batches(1)[0]
    before = torch.cat([m[0].weight, m[0].bias[:, None]], 1).detach().clone()
    F.mse_loss(m(x), y).backward()
    opt.step()
    after = torch.cat([m[0].weight, m[0].bias[:, None]], 1).detach()
    ratio = (after * before).sum(1) / before.square().sum(1)  # e^{Δ} if the rest is tangential
    additive = after - ratio[:, None] * before
    assert (additive * before).sum(1).abs().max() < 1e-12
    assert additive.norm() > 1e-4  # and it moved
    # the radial factor is e^{Δ_U/√2} with |Δ_U| = lr at the first Adam step (sign of −g_U)
    assert torch.allclose(ratio.log().abs(), torch.full_like(ratio, LR / math.sqrt(2)), rtol=1e-9)


def test_split_trains_comparably_to_adamw():
    torch.manual_seed(0)
    x = torch.randn(256, 6, dtype=torch.float64)
    y = (x[:, 0] * x[:, 1] > 0).long() + 2 * (x[:, 2] > 0).long()

    def fit(make):
        m = _mlp_ln()
        opt = make(m)
        for _ in range(150):
            opt.zero_grad()
            loss = F.cross_entropy(m(x), y)
            loss.backward()
            opt.step()
        with torch.no_grad():
            return float(F.cross_entropy(m(x), y))

    split = fit(lambda m: DDCAdam(m, lr=1e-2, weight_decay=1e-2, form="split"))
    adamw = fit(lambda m: torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=1e-2))
    assert split < 0.5 * math.log(4)
    assert split < 1.5 * adamw + 0.05, (split, adamw)


def test_form_is_validated():
    with pytest.raises(ValueError, match="form must be one of"):
        DDCAdam(_pair_net(), form="radial")


def _run_split(make_model, data, dtype, fused, monkeypatch, steps=5):
    from deadspec import _core
    from deadspec.optim import _split

    monkeypatch.setattr(_split, "FUSED", fused)
    calls = []
    real = _core.ddc_split_moments
    monkeypatch.setattr(_core, "ddc_split_moments", lambda b: calls.append(len(b)) or real(b))
    m = make_model().to(dtype)
    opt = DDCAdam(m, lr=1e-2, weight_decay=0.1, form="split", gauge_mode="damped")
    x, y = data
    x = x.to(dtype) if x.is_floating_point() else x
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(m(x), y).backward()
        opt.step()
    return m, sum(calls)


@pytest.mark.parametrize("which", ["mlp", "transformer"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_core_passes_match_the_torch_passes(which, dtype, monkeypatch):
    from deadspec.models_transformer import ModAddTransformer, modadd_data

    if which == "mlp":
        g = torch.Generator().manual_seed(1)
        data = (torch.randn(48, 6, generator=g, dtype=torch.float64),
                torch.randint(0, 4, (48,), generator=g))
        make = _mlp_ln
    else:
        data = modadd_data(7, 40)

        def make():
            torch.manual_seed(0)  # LayerNorms, a Pair, the head rotations, the logit shift
            return ModAddTransformer(p=7, d_model=8, n_heads=2, layernorm=True)

    core, n_core = _run_split(make, data, dtype, True, monkeypatch)
    ref, n_ref = _run_split(make, data, dtype, False, monkeypatch)
    assert n_core > 0 and n_ref == 0  # the core ran every block; the reference none
    tol = 1e-13 if dtype == torch.float64 else 1e-4
    for p, q in zip(core.parameters(), ref.parameters()):
        assert float((p - q).detach().abs().max() / q.detach().abs().max()) < tol
