"""DDCMuon's step paths against their references (issue #16): the kept work tensors against
fresh ones, the view of equal head blocks against the stacked blocks, the AdamW blocks in the
core's pass against torch's, the check before commit's all-finite shortcut against its exact
path, and the radial inputs' fast row dots against the exact ones."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from _models import mlp_ln
from deadspec import gauges as G
from deadspec.models_transformer import TransformerBlock
from deadspec.optim import DDCMuon
from deadspec.optim import _muon as muon_kernels
from deadspec.optim._functional import gauge_dots
from deadspec.optim._muon import ddc_muon_update

pytestmark = pytest.mark.usefixtures("one_thread")

_g = torch.Generator().manual_seed(4)
X = torch.randn(48, 6, generator=_g, dtype=torch.float64)
Y = torch.randint(0, 4, (48,), generator=_g)
XT = torch.randn(6, 5, 8, generator=_g, dtype=torch.float64)
YT = torch.randint(0, 5, (6, 5), generator=_g)


class _AttnNet(nn.Module):
    """Two pre-LN TransformerBlocks (2 heads of 4: head blocks of equal shape in every
    projection) and a per-token head."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.Sequential(TransformerBlock(8, 2, 12), TransformerBlock(8, 2, 12))
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(x))


def _wide_mlp() -> nn.Sequential:
    """Three hidden layers of one width (matrices of one shape share the work tensors)."""
    torch.manual_seed(2)
    return nn.Sequential(
        nn.Linear(6, 9), nn.ReLU(), nn.Linear(9, 9), nn.ReLU(), nn.Linear(9, 9), nn.ReLU(),
        nn.Linear(9, 9), nn.ReLU(), nn.Linear(9, 4),
    ).double()


def _attn() -> _AttnNet:
    torch.manual_seed(5)
    return _AttnNet().double()


def _train(model, opt, k=4):
    for i in range(k):
        opt.zero_grad()
        if isinstance(model, _AttnNet):
            sl = slice(i % 2, i % 2 + 4)
            F.cross_entropy(model(XT[sl]).reshape(-1, 5), YT[sl].reshape(-1)).backward()
        else:
            sl = slice(6 * i, 6 * i + 24)
            F.cross_entropy(model(X[sl]), Y[sl]).backward()
        opt.step()


def _opt(m, **kw):
    head = "head" if isinstance(m, _AttnNet) else "auto"
    return DDCMuon(m, lr=2e-2, adamw_lr=1e-2, weight_decay=0.1, head=head, **kw)


def _params(m):
    return [p.detach().clone() for p in m.parameters()]


def _fresh_get(self, role, like, dtype=None):
    """Scratch.get without keeping: a new tensor on every call (the reference)."""
    return torch.empty(like.shape, dtype=like.dtype if dtype is None else dtype,
                       device=like.device)


@pytest.mark.parametrize("make", [_wide_mlp, mlp_ln, _attn])
def test_kept_work_tensors_are_the_fresh_ones_bit_for_bit(make, monkeypatch):
    runs = []
    for keep in (True, False):
        if not keep:
            monkeypatch.setattr(muon_kernels.Scratch, "get", _fresh_get)
        m = make()
        opt = _opt(m)
        assert opt.gauges  # (every path of the step: σ, producer rows, head blocks)
        _train(m, opt)
        runs.append(_params(m))
    assert all(torch.equal(a, b) for a, b in zip(*runs))


@pytest.mark.parametrize("axis", [0, 1])
def test_equal_head_blocks_through_a_view_are_the_stacked_blocks(axis):
    # the blocks given in order (tiling the axis: the view) and out of order (the stacked path)
    gen = torch.Generator().manual_seed(1)
    shape = (12, 7) if axis == 0 else (7, 12)
    grad = torch.randn(shape, generator=gen, dtype=torch.float64)
    p0 = torch.randn(shape, generator=gen, dtype=torch.float64)
    scale = torch.rand(shape, generator=gen, dtype=torch.float64) + 0.5
    out = []
    for ranges in ([(0, 4), (4, 8), (8, 12)], [(8, 12), (0, 4), (4, 8)]):
        p, buf = p0.clone(), torch.zeros(shape, dtype=torch.float64)
        for _ in range(3):
            ddc_muon_update(p, grad, buf, scale, (axis, ranges), lr=0.02, momentum=0.95,
                            nesterov=True, ns_coefficients=(3.4445, -4.7750, 2.0315),
                            ns_steps=5, ns_eps=1e-7, ns_dtype=torch.float64)
        out.append((p, buf))
    for a, b in zip(*out):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    assert not torch.equal(out[0][0], p0)


@pytest.mark.parametrize("make", [mlp_ln, _attn])
def test_adamw_blocks_in_the_core_are_torchs(make):
    # foreach=False: the AdamW blocks one by one through torch; default: one call of the core.
    # Fixed gradients (no feedback through the loss): the difference is the steps' round-off.
    runs = []
    for foreach in (None, False):
        m = make()
        opt = _opt(m, foreach=foreach)
        for k in range(3):
            gen = torch.Generator().manual_seed(k)
            for p in m.parameters():
                p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)
            opt.step()
        runs.append(m)
    with torch.no_grad():
        err = max(float((p - q).norm() / p.norm())
                  for p, q in zip(runs[0].parameters(), runs[1].parameters()))
    assert err <= 1e-12


def test_overflowing_muon_coordinates_keep_their_pre_step_values():
    """The Muon step overflows a parameter near float32's largest value in some coordinates:
    those keep their pre-step value and momentum (the exact path behind the all-finite
    shortcut), every other coordinate takes the step ddc_muon_update computes unchecked, and
    the policy applies."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 3))
    w = m[2].weight
    with torch.no_grad():
        w[0].fill_(3.3e38)
        w[1].fill_(-3.3e38)
    gen = torch.Generator().manual_seed(1)
    for p in m.parameters():
        p.grad = torch.randn(p.shape, generator=gen)
    before = w.detach().clone()
    raw, raw_buf = before.clone(), torch.zeros_like(before)  # the unchecked step
    ddc_muon_update(raw, w.grad, raw_buf, None, None, lr=3e37, momentum=0.95, nesterov=True,
                    ns_coefficients=(3.4445, -4.7750, 2.0315), ns_steps=5, ns_eps=1e-7,
                    ns_dtype=torch.float32)
    opt = DDCMuon(m, lr=3e37, weight_decay=0.0, nonfinite="skip", gauges=[], head="4")
    with pytest.warns(RuntimeWarning, match=r"deadspec\.DDCMuon\.step: the step must produce "
                                            r"finite values, got \d+ coordinate.*'2\.weight'"):
        opt.step()
    ok = torch.isfinite(raw) & torch.isfinite(raw_buf)
    assert bool(ok.any()) and bool((~ok).any())
    assert torch.equal(w.detach(), torch.where(ok, raw, before))
    assert torch.equal(opt.state[w]["momentum_buffer"], torch.where(ok, raw_buf, 0.0))
    with pytest.raises(RuntimeError, match=r"deadspec\.DDCMuon\.step: the step must produce"):
        DDCMuon(m, lr=3e37, weight_decay=0.0, gauges=[], head="4").step()


def test_radial_inputs_take_the_exact_row_dots_when_products_overflow():
    # ĝ = ⟨g_row, w_row⟩ of a Pair's producer whose products overflow float64 (1e300·1e150)
    # while the row's sum is finite: the exact dots of the core, not inf − inf
    m = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).double()
    opt = DDCMuon(m, gauges=[G.Pair("0", "2")], head="2")
    with torch.no_grad():
        m[0].weight.copy_(torch.tensor([[1e300, -1e300, 2.0]] * 4, dtype=torch.float64))
        m[0].bias.zero_()
    for p in m.parameters():
        p.grad = torch.zeros_like(p)
    m[0].weight.grad = torch.tensor([[1e150, 1e150, 1.0]] * 4, dtype=torch.float64)
    with torch.no_grad():
        (_, live, ghat), = opt._radial_inputs(opt._site_scales()).values()
    exact = gauge_dots(m[0].weight.detach(), m[0].weight.grad, 1)[0]
    assert bool(live.all())
    assert torch.equal(ghat, exact) and bool(torch.isfinite(ghat).all())
