"""Gauges of the model families people train (issue #17): GPT-2, Llama, Mistral, Qwen2, BERT,
ViT (Hugging Face, built from small configs, no weights) and nn.TransformerEncoderLayer.

For each: the gauges discovery reports (counts by kind), each numerically invariant; DDCAdam and
DDCMuon exactly equivariant under a random element of all of them at once, where AdamW drifts;
a short training run of each optimizer lowers the loss; per-head readings of the attention."""

from __future__ import annotations

import collections
import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("transformers")

import deadspec  # noqa: E402
import deadspec.gauges as G  # noqa: E402
import hf_models  # noqa: E402  (tests/python is on the path: conftest)
from deadspec.optim import DDCAdam, DDCMuon  # noqa: E402

LM = ("gpt2", "llama", "mistral", "qwen2")
# (kind -> count) for the 2-layer models of hf_models; sources by recogniser
EXPECTED = {
    # ln_1, ln_2 per block (ln_f -> lm_head is tied to wte: not reported; nor is its logit
    # shift); QK and VO rotations of the fused c_attn
    "gpt2": {"norm": 4, "head_rotation": 2},
    # input and post-attention norms per layer, the final norm -> lm_head, SwiGLU up -> down,
    # the logit shift of the untied lm_head, the rotations (RoPE planes, grouped K/V heads)
    "llama": {"norm": 5, "pair": 2, "head_rotation": 2, "logit_shift": 1},
    "mistral": {"norm": 5, "pair": 2, "head_rotation": 2, "logit_shift": 1},
    "qwen2": {"norm": 5, "pair": 2, "head_rotation": 2, "logit_shift": 1},
    # post-LN: no norm gauge; rotations, the classifier's logit shift
    "bert": {"head_rotation": 2, "logit_shift": 1},
    # pre-LN: before/after norms per layer and the final norm -> classifier
    "vit": {"norm": 5, "head_rotation": 2, "logit_shift": 1},
    # pre-LN layer: norm1 -> self_attn, norm2 -> linear1; both layers: linear1 -> linear2 (ReLU)
    "torch_encoder": {"norm": 2, "pair": 2, "head_rotation": 2, "logit_shift": 1},
}


def _build(family: str, double: bool = True):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # transformers' config notes
        m, x, y = hf_models.build(family)
    if double:
        m = m.double()
        x = tuple(t.double() if t.is_floating_point() else t for t in x)
    return m, x, y


def _loss(m: nn.Module, x, y) -> torch.Tensor:
    out = hf_models.logits(m(*x))
    if out.ndim == 3:  # a language model: every position predicts its token id
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))
    return F.cross_entropy(out, y)


def _discover(m: nn.Module) -> list[G.Gauge]:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # discovery of these models is silent
        return list(G.discover(m))


@pytest.mark.parametrize("family", hf_models.FAMILIES)
def test_expected_gauges_each_invariant(family):
    m, x, y = _build(family)
    gs = _discover(m)
    counts = collections.Counter(g.kind for g in gs)
    assert dict(counts) == EXPECTED[family], G.summary(gs)
    gen = torch.Generator().manual_seed(0)
    for g in gs:
        # the outputs themselves (their log-softmax for a logit shift), then the loss
        assert g.check(m, x, generator=gen) <= 1e-10, g.describe()
        if family not in LM:
            assert g.check(m, x, y, generator=gen) <= 1e-10, g.describe()
    # summary() says where each gauge came from
    table = G.summary(gs)
    for g in gs:
        assert g.source in table
    assert any(g.source.startswith("recogniser:") for g in gs)


def test_llama_rotations_follow_rope_and_grouped_heads():
    m, x, _ = _build("llama")
    rot = [g for g in _discover(m) if isinstance(g, G.HeadRotation)]
    assert all(g.rope and g.num_heads == 4 and g.kv_heads == 2 and g.dim == 8 for g in rot)
    assert "kv_heads=2" in rot[0].describe()
    el = rot[0].random_element(m, torch.Generator().manual_seed(1))
    assert el["qk"].shape == (2, 8, 8) and el["vo"].shape == (2, 8, 8)
    # a general orthogonal QK rotation does not commute with RoPE: the check fails (it has teeth)
    with pytest.raises(ValueError, match="invariant"):
        G.HeadRotation(rot[0].attention, part="qk", rope=False).check(m, x)
    # VO rotations applied per query head instead of per K/V group break the model too
    g = rot[0].bind(m)
    lay = g.layout(m)
    wo = lay.output(m)
    before = hf_models.logits(m(*x)).detach()
    with torch.no_grad():
        q = G.kinds.random_orthogonal(1, lay.head_dim, torch.Generator().manual_seed(2))[0]
        wv, _, _ = lay.tensors(m, "v")
        wv[: lay.head_dim] = q @ wv[: lay.head_dim]
        wo[:, : lay.head_dim] = wo[:, : lay.head_dim] @ q.T  # only the first query head of group 0
    after = hf_models.logits(m(*x)).detach()
    assert float((after - before).abs().max()) > 1e-6


def test_gpt2_tied_head_is_never_moved():
    m, x, _ = _build("gpt2")
    gs = _discover(m)
    assert m.lm_head.weight is m.transformer.wte.weight
    assert not any("lm_head" in g.modules() or "transformer.ln_f" in g.modules() for g in gs)
    # declared by hand, a gauge on the tied head is refused (moving it would break the tie)
    with pytest.raises(ValueError, match="shared"):
        G.NormScale("transformer.ln_f", "lm_head").bind(m)
    with pytest.raises(ValueError, match="shared"):
        G.LogitShift("lm_head").bind(m)
    # the Conv1D consumer is read through its rows: NormScale on ln_1 scales c_attn's rows
    ns = next(g for g in gs if g.modules()[0] == "transformer.h.0.ln_1")
    c = torch.full((32,), 2.0, dtype=torch.float64)
    w0 = m.transformer.h[0].attn.c_attn.weight.detach().clone()
    ns.apply(m, c)
    assert torch.allclose(m.transformer.h[0].attn.c_attn.weight, w0 / 2.0)


def test_post_ln_norms_are_not_gauges():
    # BERT is post-LN: a per-channel scale of a LayerNorm feeding the residual stream is not a
    # gauge, and discovery does not report one; declared by hand, its check fails
    m, x, y = _build("bert")
    lay0 = "bert.encoder.layer.0"
    g = G.NormScale(f"{lay0}.attention.output.LayerNorm", f"{lay0}.intermediate.dense")
    with pytest.raises(ValueError, match="invariant"):
        g.check(m, x, y)


def _global_rel(a: nn.Module, b: nn.Module) -> float:
    """‖θ_a − θ_b‖ / ‖θ_a‖ over all parameters (a pure-gauge parameter such as a key bias,
    whose gradient is round-off, has no meaningful relative error of its own)."""
    with torch.no_grad():
        num = sum(float((p - q).square().sum()) for p, q in zip(a.parameters(), b.parameters()))
        den = sum(float(p.square().sum()) for p in a.parameters())
    return (num / den) ** 0.5


def _train(m, opt, x, y, steps):
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = _loss(m, x, y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


OPTIMIZERS = {
    "DDCAdam": lambda m: DDCAdam(m, lr=1e-2, weight_decay=0.01),
    "DDCMuon": lambda m: DDCMuon(m, lr=1e-2, weight_decay=0.01),
    "AdamW": lambda m: torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.01),
}


def _equivariance(family: str, make) -> float:
    m0, x, y = _build(family)
    gs = _discover(m0)
    els = G.random_elements(m0, gs, torch.Generator().manual_seed(0), spread=0.5)
    moved, plain = copy.deepcopy(m0), copy.deepcopy(m0)
    G.apply_elements(moved, gs, els)
    _train(moved, make(moved), x, y, 3)
    _train(plain, make(plain), x, y, 3)
    G.apply_elements(plain, gs, els)
    return _global_rel(moved, plain)


@pytest.mark.parametrize("family", hf_models.FAMILIES)
def test_ddc_optimizers_exactly_equivariant_adamw_drifts(family):
    for name in ("DDCAdam", "DDCMuon"):
        assert _equivariance(family, OPTIMIZERS[name]) <= 1e-10, name
    assert _equivariance(family, OPTIMIZERS["AdamW"]) > 1e-3


@pytest.mark.parametrize("family", hf_models.FAMILIES)
def test_short_training_lowers_the_loss(family):
    # each optimizer at its defaults (float32), 30 steps on one batch
    for opt_cls in (DDCAdam, DDCMuon):
        m, x, y = _build(family, double=False)
        m.train()
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)  # no fallback, said or unsaid
            opt = opt_cls(m)
        assert opt.gauges
        losses = _train(m, opt, x, y, 30)
        assert losses[-1] < 0.9 * losses[0], (opt_cls.__name__, losses[::5])


class _Opaque(nn.Module):
    """An attention layout deadspec does not know, with a post-norm: no gauge to find."""

    def __init__(self):
        super().__init__()
        self.attention = _MyAttention()
        self.norm = nn.LayerNorm(8)

    def forward(self, x):
        return self.norm(x + self.attention(x))


class _MyAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv = nn.Parameter(torch.randn(24, 8) / 3)

    def forward(self, x):
        q, k, v = (x @ self.qkv.T).split(8, -1)
        return torch.softmax(q @ k.transpose(-1, -2), -1) @ v


@pytest.mark.parametrize("opt", [DDCAdam, DDCMuon])
def test_no_gauge_on_a_model_with_norms_or_attention_warns(opt):
    with pytest.warns(UserWarning, match=r"found no gauge .*attention.*normalisation|found no "):
        o = opt(_Opaque())
    assert not o.gauges
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        opt(_Opaque(), gauges=[])  # declared empty: the user chose it, no warning
        opt(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)))  # nothing to read
    assert not [r for r in rec if "found no gauge" in str(r.message)]


def test_warning_names_what_was_not_read():
    with pytest.warns(UserWarning) as rec:
        DDCAdam(_Opaque())
    msg = " ".join(str(r.message) for r in rec)
    assert "'attention'" in msg and "'norm'" in msg and "NormScale" in msg and "AdamW" in msg


def test_split_form_refuses_conv1d_consumers_clearly():
    m, _, _ = _build("gpt2")
    with pytest.raises(ValueError, match="split.*Conv1D"):
        DDCAdam(m, form="split")


def test_per_head_readings_of_hf_attention():
    m, x, y = _build("llama", double=False)
    r = deadspec.read(m, *x, targets=y, loss_fn=deadspec.TokenCrossEntropy(), heads=True)
    names = {rec["layer"] for rec in r.to_records()}
    att = "model.layers.0.self_attn"
    assert {f"{att}.q_proj[h={i}]" for i in range(4)} <= names
    # grouped-query attention: 2 K/V heads, each shared by 2 query heads, named kv=
    assert {f"{att}.k_proj[kv={i}]" for i in range(2)} <= names
    assert {f"{att}.v_proj[kv={i}]" for i in range(2)} <= names
    assert f"{att}.k_proj[h=0]" not in names
    assert {f"{att}.o_proj[h={i}]" for i in range(4)} <= names
    m, x, y = _build("bert", double=False)
    r = deadspec.read(m, *x, targets=y, heads=True)
    names = {rec["layer"] for rec in r.to_records()}
    base = "bert.encoder.layer.1.attention"
    assert {f"{base}.self.query[h={i}]" for i in range(4)} <= names
    assert {f"{base}.output.dense[h={i}]" for i in range(4)} <= names


# --------------------------------------------------------------------------------------------
# the torch.export backend (discover with inputs)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", hf_models.FAMILIES)
def test_export_backend_reads_the_same_gauges(family):
    m, x, y = _build(family)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with_inputs = list(G.discover(m, inputs=x))
    plain = {(g.kind, g.modules()) for g in _discover(m)}
    read = {(g.kind, g.modules()) for g in with_inputs}
    assert plain <= read
    extra = read - plain
    if family == "bert":
        # the data flow shows what the block structure cannot: the last LayerNorm feeds only
        # the pooler (the classifier reads its CLS row), so its scale is a gauge of the loss
        lay = "bert.encoder.layer.1.output.LayerNorm"
        assert extra == {("norm", (lay, "bert.pooler.dense"))}
    else:
        assert not extra
    if family != "torch_encoder":  # (the root of that one is traced by torch.fx)
        assert any(g.source == "export" for g in with_inputs)
    gen = torch.Generator().manual_seed(3)
    for g in with_inputs:
        if g.source == "export":
            assert g.check(m, x, generator=gen) <= 1e-10, g.describe()


class _MyRMSNorm(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.weight = nn.Parameter(torch.rand(d) + 0.5)

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight


class _Untraceable(nn.Module):
    """torch.fx cannot trace it (int() of a shape); no recogniser knows its names."""

    def __init__(self):
        super().__init__()
        self.norm = _MyRMSNorm(8)
        self.up = nn.Linear(8, 16)
        self.down = nn.Linear(16, 8)
        self.head = nn.Linear(8, 3)
        self.other = nn.Linear(8, 16)

    def forward(self, x):
        n = int(x.shape[0])
        h = self.norm(x)
        u = torch.relu(self.up(h)) * torch.sigmoid(self.other(x))  # a gate not from up
        o = self.down(u).reshape(n, -1)
        return self.head(o)


def test_export_backend_reads_an_untraceable_custom_model():
    torch.manual_seed(0)
    m = _Untraceable().double()
    x = torch.randn(5, 8, dtype=torch.float64)
    y = torch.randint(0, 3, (5,))
    assert not [g for g in G.discover(m) if g.kind in ("norm", "pair")]
    gs = G.discover(m, inputs=(x,))
    got = {(g.kind, g.modules(), g.source) for g in gs}
    assert ("norm", ("norm", "up"), "export") in got
    assert ("pair", ("up", "down"), "export") in got
    assert ("pair", ("down", "head"), "export") in got  # nothing in between: the identity
    assert ("logit_shift", ("head",), "export") in got
    # `other` feeds a sigmoid: no gauge; its output multiplies `up`'s without depending on it
    assert not any("other" == g.modules()[0] for g in gs)
    for g in gs:
        assert g.check(m, (x,), y) <= 1e-10, g.describe()
