"""Gauges: discovery, declaration/validation, group action and numerical invariance (float64)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from _models import mlp_ln as _mlp_ln
from deadspec import gauges as G

pytestmark = pytest.mark.usefixtures("one_thread")


def _data(n: int = 48, d: int = 6, k: int = 4, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64), torch.randint(
        0, k, (n,), generator=g
    )


class SwiGLU(nn.Module):
    def __init__(self, d: int = 5, h: int = 9) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(d)
        self.w1 = nn.Linear(d, h)
        self.w2 = nn.Linear(h, d)
        self.w3 = nn.Linear(d, h)

    def forward(self, x):
        x = self.ln(x)
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Untraceable(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace the root."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))

    def forward(self, x):
        if x.sum() > 1e9:
            x = x * 0
        return self.body(x)


class NamedMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 6)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(6, 3)

    def forward(self, x):
        if x.sum() > 1e9:  # untraceable
            return x
        return self.fc2(self.act(self.fc1(x)))


class MyRMSNorm(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x):
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)


# --------------------------------------------------------------------------------------------
# Discovery
# --------------------------------------------------------------------------------------------


def test_discover_mlp_layernorm_head():
    m = _mlp_ln()
    gs = G.discover(m)
    kinds = [(g.kind, g.modules()) for g in gs]
    assert ("pair", ("0", "2")) in kinds
    assert ("pair", ("2", "4")) in kinds
    assert ("norm", ("5", "6")) in kinds
    assert ("logit_shift", ("6",)) in kinds
    chains = [g for g in gs if isinstance(g, G.Chain)]
    assert len(chains) == 1 and chains[0].layers == ("0", "2", "4") and chains[0].covered
    # "4" feeds the LayerNorm (not homogeneous): no Pair from it
    assert not any(isinstance(g, G.Pair) and g.producer == "4" for g in gs)
    table = G.summary(gs)
    assert "logit_shift" in table and "5 -> 6" in table
    assert repr(gs) == table
    assert G.discover(m, loss=None, chains=False) == [g for g in gs if g.kind in ("pair", "norm")]


def test_discovered_gauges_hold_numerically():
    m = _mlp_ln()
    x, y = _data()
    gen = torch.Generator().manual_seed(3)
    for g in G.discover(m):
        assert g.check(m, x, y, generator=gen) <= 1e-10
        assert g.check(m, x, generator=gen) <= 1e-10  # outputs (log-softmax for the shift)
    kept = G.discover(m, check=True, inputs=x, targets=y)
    assert len(kept) == len(G.discover(m))


def test_discover_swiglu_linear_branch_only():
    m = SwiGLU().double()
    gs = G.discover(m, loss=None)
    pairs = [g for g in gs if isinstance(g, G.Pair)]
    assert [(p.producer, p.consumer) for p in pairs] == [("w3", "w2")]
    norms = [g for g in gs if isinstance(g, G.NormScale)]
    assert len(norms) == 1 and set(norms[0].consumer) == {"w1", "w3"}
    x = torch.randn(16, 5, dtype=torch.float64)
    for g in gs:
        assert g.check(m, x) <= 1e-10
    with pytest.raises(ValueError, match="positively homogeneous"):
        G.Pair("w1", "w2").validate(m)


def test_discover_rmsnorm_custom_and_torch():
    m = nn.Sequential(MyRMSNorm(5), nn.Linear(5, 3))
    gs = G.discover(m, loss=None)
    assert [(g.kind, g.modules()) for g in gs] == [("norm", ("0", "1"))]
    assert gs[0].check(m, torch.randn(8, 5)) <= 1e-6
    m2 = nn.Sequential(nn.RMSNorm(5), nn.Linear(5, 3)).double()
    gs2 = G.discover(m2, loss=None)
    assert [(g.kind, g.modules()) for g in gs2] == [("norm", ("0", "1"))]
    assert gs2[0].check(m2, torch.randn(8, 5, dtype=torch.float64)) <= 1e-10


def test_discover_fallback_sequential_and_naming():
    m = Untraceable().double()
    gs = G.discover(m)
    assert [(g.kind, g.modules(), g.source) for g in gs if g.kind == "pair"] == [
        ("pair", ("body.0", "body.2"), "fx")  # the Sequential child traces on its own
    ]
    with pytest.warns(UserWarning, match="module names only"):
        gs2 = G.discover(NamedMLP().double())
    assert [(g.kind, g.modules(), g.source) for g in gs2] == [("pair", ("fc1", "fc2"), "naming")]
    x = torch.randn(8, 4, dtype=torch.float64)
    assert gs2[0].check(NamedMLP().double(), x) <= 1e-10


def test_discover_logit_shift_needs_cross_entropy_and_direct_output():
    m = _mlp_ln()
    assert not any(isinstance(g, G.LogitShift) for g in G.discover(m, loss=None))
    with pytest.raises(ValueError, match="output logits"):
        G.LogitShift("4").validate(m)
    G.LogitShift("6").validate(m)


def test_discover_transformer_with_inputs_finds_logit_layer():
    from deadspec.models_transformer import ModAddTransformer, modadd_data

    m = ModAddTransformer(p=7, d_model=8, n_heads=2, layernorm=True).double()
    tokens, targets = modadd_data(7, 20)
    gs = G.discover(m, inputs=tokens)
    kinds = {(g.kind, g.modules()[0]) for g in gs}
    assert ("logit_shift", "unembed") in kinds
    assert ("pair", "blocks.0.mlp.fc_in") in kinds
    assert ("norm", "blocks.0.ln2") in kinds
    assert ("head_rotation", "blocks.0.attn") in kinds
    for g in gs:
        assert g.check(m, tokens, targets) <= 1e-10


def test_tied_weights_are_not_gauged():
    m = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))
    m[2].weight = m[0].weight
    assert not any(isinstance(g, G.Pair) for g in G.discover(m))
    with pytest.raises(ValueError, match="shared"):
        G.Pair("0", "2").validate(m)


# --------------------------------------------------------------------------------------------
# Declared gauges
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("act", [nn.GELU(), nn.Tanh(), nn.Sigmoid(), nn.SiLU()])
def test_pair_across_nonhomogeneous_activation_rejected(act):
    m = nn.Sequential(nn.Linear(3, 5), act, nn.Linear(5, 2))
    with pytest.raises(ValueError, match="positively homogeneous"):
        G.Pair("0", "2").validate(m)


@pytest.mark.parametrize("act", ["gelu", "tanh", nn.GELU(), torch.tanh, F.silu])
def test_pair_declared_activation_rejected(act):
    with pytest.raises(ValueError, match="positively homogeneous"):
        G.Pair("0", "2", activation=act)


def test_pair_structural_errors():
    m = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(4, 2), nn.Linear(5, 5))
    with pytest.raises(ValueError, match="in_features"):
        G.Pair("0", "2").validate(m)
    with pytest.raises(ValueError, match="nn.Linear"):
        G.Pair("1", "3").validate(m)
    with pytest.raises(ValueError, match="submodule"):
        G.Pair("0", "nope").validate(m)
    with pytest.raises(ValueError, match="units"):
        G.Pair("0", "3", units=[0, 7]).bind(m)
    with pytest.raises(ValueError, match="activation must be one of"):
        G.Pair("0", "2", activation="foo")


def test_pair_must_name_every_consumer():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(3, 4)
            self.b = nn.Linear(4, 2)
            self.c = nn.Linear(4, 2)

        def forward(self, x):
            h = F.relu(self.a(x))
            return self.b(h) + self.c(h)

    m = Two()
    with pytest.raises(ValueError, match="every layer"):
        G.Pair("a", "b").validate(m)
    G.Pair("a", ("b", "c")).validate(m)
    assert G.Pair(m.a, [m.b, m.c]).bind(m).consumer == ("b", "c")


def test_pair_units_subset_and_modules_as_refs():
    m = _mlp_ln()
    g = G.Pair(m[0], m[2], units=[1, 3, 4])
    b = g.bind(m)
    assert b.producer == "0" and b.units == (1, 3, 4) and b.dim == 3
    x, y = _data()
    assert g.check(m, x, y) <= 1e-10
    c = b.random_element(m, torch.Generator().manual_seed(0))
    before = m[0].weight.detach().clone()
    m2 = copy.deepcopy(m)
    b.apply(m2, c)
    changed = (m2[0].weight != before).any(1)
    assert changed.nonzero().flatten().tolist() == [1, 3, 4]
    with pytest.raises(ValueError, match="positive vector"):
        b.apply(m2, torch.ones(4, dtype=torch.float64))


def test_chain_is_constant_pair_subgroup():
    m = _mlp_ln()
    ch = G.Chain(("0", "2", "4"))
    a = ch.random_element(m, torch.Generator().manual_seed(0))
    assert abs(float(a.prod()) - 1.0) < 1e-12
    x, y = _data()
    assert ch.check(m, x, y) <= 1e-10
    m1, m2 = copy.deepcopy(m), copy.deepcopy(m)
    ch.apply(m1, a)
    cum = torch.cumprod(a, 0)
    G.Pair("0", "2").apply(m2, cum[0].repeat(10))
    G.Pair("2", "4").apply(m2, cum[1].repeat(8))
    for p, q in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-14, atol=0)
    with pytest.raises(ValueError, match="consecutive"):
        G.Chain(("0", "4")).bind(m)


def test_norm_scale_errors():
    m = _mlp_ln()
    with pytest.raises(ValueError, match="LayerNorm"):
        G.NormScale("4", "6").bind(m)
    with pytest.raises(ValueError, match="in_features"):
        G.NormScale("5", "2").bind(m)
    ln = nn.Sequential(nn.LayerNorm(4, elementwise_affine=False), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="LayerNorm"):
        G.NormScale("0", "1").bind(ln)


def test_logit_shift_element_and_check():
    m = _mlp_ln()
    g = G.LogitShift("6")
    x, y = _data()
    assert g.check(m, x, y) <= 1e-10
    # the shift is NOT a symmetry of a squared error: the check must notice
    yf = torch.randn(48, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="invariant"):
        g.check(m, x, yf)


def test_check_catches_a_false_gauge():
    # declared with activation="relu" but the model uses tanh: structure passes, numerics fail
    class Hidden(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(3, 4)
            self.b = nn.Linear(4, 2)

        def forward(self, x):
            if x.sum() > 1e9:
                return x
            return self.b(torch.tanh(self.a(x)))

    m = Hidden().double()
    g = G.Pair("a", "b", activation="relu")
    g.validate(m)  # cannot trace; trusts the declared activation
    rel = g.check(m, torch.randn(8, 3, dtype=torch.float64), raise_on_fail=False)
    assert rel > 1e-3
    with pytest.raises(ValueError, match="invariant"):
        g.check(m, torch.randn(8, 3, dtype=torch.float64))


def test_discover_check_requires_inputs():
    with pytest.raises(ValueError, match="inputs"):
        G.discover(_mlp_ln(), check=True)


# --------------------------------------------------------------------------------------------
# Head rotations
# --------------------------------------------------------------------------------------------


class MHAModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.att = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.att(x, x, x, need_weights=False)[0])


def test_head_rotation_mha():
    torch.manual_seed(0)
    m = MHAModel().double()
    gs = G.discover(m)
    rot = [g for g in gs if isinstance(g, G.HeadRotation)]
    assert len(rot) == 1 and rot[0].num_heads == 2 and rot[0].dim == 4
    x = torch.randn(3, 5, 8, dtype=torch.float64)
    assert rot[0].check(m, x) <= 1e-10
    for part in ("qk", "vo"):
        assert G.HeadRotation("att", part=part).check(m, x) <= 1e-10


def test_head_rotation_rope_restricted():
    from deadspec.models_transformer import SelfAttention

    torch.manual_seed(0)
    m = nn.Sequential(SelfAttention(8, 2, rope=True)).double()
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    g = G.HeadRotation("0")
    assert g.bind(m).rope is True
    assert g.check(m, x) <= 1e-10
    # a general orthogonal QK rotation does not commute with RoPE: not a gauge
    with pytest.raises(ValueError, match="invariant"):
        G.HeadRotation("0", part="qk", rope=False).check(m, x)
    with pytest.raises(ValueError, match="part"):
        G.HeadRotation("0", part="xy").bind(m)
