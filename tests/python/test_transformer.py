"""Transformer readings: sequence Linear, Embedding, attention heads, nn.MultiheadAttention,
LayerNorm and logit-shift gauges, direction classification, Hugging Face GPT-2, bench smoke.

Every Fisher-side check compares with brute force: per-sample gradients of each sample's own
loss by one autograd call per sample, K = ΓΓᵀ/N, eigenvalues.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import deadspec
from deadspec.approach import classify_directions, gauge_directions
from deadspec.models_transformer import (
    ModAddTransformer,
    SelfAttention,
    TransformerBlock,
    modadd_data,
)
from deadspec.reading import TokenCrossEntropy

DT = torch.float64
BENCH = Path(__file__).resolve().parents[2] / "bench" / "python" / "bench_transformer.py"


def _ce(out, y):
    return nn.functional.cross_entropy(out, y, reduction="none")


def _brute_eigs(model, inputs, targets, loss_fn, blocks) -> np.ndarray:
    """Eigenvalues of (1/N)ΓΓᵀ; blocks = [(parameter, index fn)] select the gradient entries."""
    n = inputs.shape[0]
    params = [p for p, _ in blocks]
    rows = []
    for i in range(n):
        out = model(inputs[i : i + 1])
        out = out.logits if hasattr(out, "logits") else out
        loss = loss_fn(out, targets[i : i + 1]).sum()
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        parts = []
        for (p, sel), g in zip(blocks, grads):
            g = torch.zeros_like(p) if g is None else g
            parts.append(sel(g).reshape(-1))
        rows.append(torch.cat(parts).detach())
    gamma = torch.stack(rows).double()
    k = gamma @ gamma.T / n
    return np.sort(torch.linalg.eigvalsh(k).numpy())[::-1]


def _close(got, want, rtol=1e-8):
    got, want = np.asarray(got), np.clip(np.asarray(want), 0, None)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * want[0])


def _all(g):
    return g


# ------------------------------------------------------------------ models


def test_models_shapes_and_head_layout():
    torch.manual_seed(0)
    m = ModAddTransformer(p=7, d_model=16, n_heads=2)
    x, y = modadd_data(7)
    assert x.shape == (49, 3) and y.shape == (49,) and int(x[:, 2].unique()) == 7
    assert m(x).shape == (49, 7)
    xs, _ = modadd_data(7, 10, seed=1)
    assert xs.shape == (10, 3)
    blk = TransformerBlock(16, 4, 32, rope=True)
    assert blk(torch.randn(2, 5, 16)).shape == (2, 5, 16)
    assert SelfAttention(16, 4).deadspec_heads()["o"] == ("in", 4)
    with pytest.raises(ValueError, match="n_heads must divide"):
        SelfAttention(10, 3)
    with pytest.raises(ValueError, match="tokens must be"):
        m(torch.zeros(2, 4, dtype=torch.long))


def test_rope_is_relative():
    # RoPE scores depend on positions only through their difference: shifting both q and k
    # sequences by one position changes nothing for equal content.
    torch.manual_seed(1)
    from deadspec.models_transformer import _rope

    q = torch.randn(1, 1, 1, 8, dtype=DT).expand(1, 1, 4, 8)
    k = torch.randn(1, 1, 1, 8, dtype=DT).expand(1, 1, 4, 8)
    s = _rope(q) @ _rope(k).transpose(-1, -2)
    assert torch.allclose(s.diagonal(dim1=-2, dim2=-1), s[..., 0, 0].expand(1, 1, 4))


# ------------------------------------------------------------------ sequence Linear, routes


@pytest.mark.parametrize("route", ["block-sum", "materialize", "auto"])
def test_sequence_linear_routes_match_brute_force(route):
    torch.manual_seed(2)
    n, t, d = 9, 4, 6
    model = nn.Sequential(nn.Linear(d, 5), nn.Tanh(), nn.Linear(5, 3)).to(DT)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(n, t, d, generator=g, dtype=DT)
    y = torch.randint(0, 3, (n, t), generator=g)
    r = deadspec.read(model, x, targets=y, layers=["0"], route=route)
    want = _brute_eigs(
        model, x, y, TokenCrossEntropy(), [(model[0].weight, _all), (model[0].bias, _all)]
    )
    _close(r["0"].fisher.eigenvalues, want)
    expect = deadspec.fisher_route(n, t, d, 5) if route == "auto" else route
    assert r["0"].route == expect


def test_token_cross_entropy_shift_mean_and_sampled():
    logits = torch.randn(3, 5, 4, dtype=DT)
    ids = torch.randint(0, 4, (3, 5))
    ids[0, 3] = -100
    s = TokenCrossEntropy(shift=True)(logits, ids)
    want = torch.stack(
        [
            sum(
                nn.functional.cross_entropy(logits[i, j], ids[i, j + 1])
                for j in range(4)
                if ids[i, j + 1] != -100
            )
            for i in range(3)
        ]
    )
    assert torch.allclose(s, want)
    m = TokenCrossEntropy("mean")(logits, ids)
    assert torch.allclose(m[1], TokenCrossEntropy()(logits, ids)[1] / 5)
    with pytest.raises(ValueError, match="reduction"):
        TokenCrossEntropy("max")
    # sampled labels with a shifted loss run and are reproducible
    torch.manual_seed(4)
    model = nn.Sequential(nn.Embedding(6, 8), nn.Linear(8, 6)).to(DT)
    x = torch.randint(0, 6, (7, 5))
    kw = {"loss_fn": TokenCrossEntropy(shift=True), "labels": "sampled", "task": "classification"}
    a = deadspec.read(model, x, seed=0, **kw)
    b = deadspec.read(model, x, seed=0, **kw)
    np.testing.assert_array_equal(a["1"].fisher.eigenvalues, b["1"].fisher.eigenvalues)


# ------------------------------------------------------------------ Embedding


def test_embedding_fisher_matches_brute_force():
    torch.manual_seed(5)
    v, d, n, t = 7, 4, 8, 6
    emb = nn.Embedding(v, d, padding_idx=0).to(DT)
    model = nn.Sequential(emb, nn.Tanh(), nn.Linear(d, 3)).to(DT)
    g = torch.Generator().manual_seed(6)
    x = torch.randint(0, v, (n, t), generator=g)
    x[0, :3] = 2  # repeated token inside one sample: its gradient rows add up
    y = torch.randint(0, 3, (n, t), generator=g)
    r = deadspec.read(model, x, targets=y, layers=["0", "2"])
    want = _brute_eigs(model, x, y, TokenCrossEntropy(), [(emb.weight, _all)])
    _close(r["0"].fisher.eigenvalues, want)
    assert r["0"].route == "embedding"
    assert r["0"].activation.eigenvalues.shape == (d,)
    # the ModAdd positional table is looked up with per-sample ids: it has a Fisher side too
    m = ModAddTransformer(p=5, d_model=8, n_heads=2).to(DT)
    xs, ys = modadd_data(5, 12)
    rp = deadspec.read(m, xs, targets=ys, layers=["pos", "embed"])
    _close(rp["pos"].fisher.eigenvalues, _brute_eigs(m, xs, ys, _ce, [(m.pos.weight, _all)]))
    _close(rp["embed"].fisher.eigenvalues, _brute_eigs(m, xs, ys, _ce, [(m.embed.weight, _all)]))


def test_broadcast_outputs_are_rejected():
    class Pos(nn.Module):
        def __init__(self):
            super().__init__()
            self.wpe = nn.Embedding(4, 3)
            self.out = nn.Linear(3, 2)

        def forward(self, x):
            return self.out(x + self.wpe(torch.arange(x.shape[1])[None]))

    with pytest.raises(ValueError, match="batch-first"):
        deadspec.read(Pos(), torch.randn(5, 4, 3), fisher=False, layers=["wpe"])


# ------------------------------------------------------------------ heads


def _tiny_block_model(seed=7, layernorm=True, rope=False):
    torch.manual_seed(seed)
    return ModAddTransformer(
        p=5, d_model=8, n_heads=2, d_mlp=12, layernorm=layernorm, rope=rope
    ).to(DT)


@pytest.mark.parametrize("rope", [False, True])
def test_per_head_slices_match_brute_force(rope):
    m = _tiny_block_model(rope=rope)
    attn = m.blocks[0].attn
    attn.q.bias = nn.Parameter(torch.randn(8, dtype=DT))
    x, y = modadd_data(5, 10, seed=2)
    r = deadspec.read(m, x, targets=y, layers=["blocks.0.attn.q", "blocks.0.attn.o"], heads=True)
    assert list(r) == [
        "blocks.0.attn.q",
        "blocks.0.attn.q[h=0]",
        "blocks.0.attn.q[h=1]",
        "blocks.0.attn.o",
        "blocks.0.attn.o[h=0]",
        "blocks.0.attn.o[h=1]",
    ]
    for h in range(2):
        sl = slice(4 * h, 4 * h + 4)
        want = _brute_eigs(
            m,
            x,
            y,
            _ce,
            [(attn.q.weight, lambda g, sl=sl: g[sl]), (attn.q.bias, lambda g, sl=sl: g[sl])],
        )
        _close(r[f"blocks.0.attn.q[h={h}]"].fisher.eigenvalues, want)
        want_o = _brute_eigs(m, x, y, _ce, [(attn.o.weight, lambda g, sl=sl: g[:, sl])])
        _close(r[f"blocks.0.attn.o[h={h}]"].fisher.eigenvalues, want_o)
    # activation side: the head's output columns (q) / the head's write a_h W_hᵀ (o)
    cap = {}
    hq = attn.q.register_forward_hook(lambda mod, a, o: cap.__setitem__("q", o.detach()))
    ho = attn.o.register_forward_hook(lambda mod, a, o: cap.__setitem__("a", a[0].detach()))
    with torch.no_grad():
        m(x)
    hq.remove()
    ho.remove()
    zq = cap["q"][..., 4:8].reshape(-1, 4)
    _close(
        r["blocks.0.attn.q[h=1]"].activation.eigenvalues,
        deadspec.spectrum(deadspec.gram(zq)).eigenvalues,
        1e-10,
    )
    zo = (cap["a"][..., :4] @ attn.o.weight[:, :4].T).reshape(-1, 8).detach()
    want_act = deadspec.spectrum(deadspec.gram(zo)).eigenvalues
    _close(r["blocks.0.attn.o[h=0]"].activation.eigenvalues, want_act, 1e-10)
    # per-head names may be asked for directly
    r2 = deadspec.read(m, x, targets=y, layers=["blocks.0.attn.q[h=1]"])
    _close(
        r2["blocks.0.attn.q[h=1]"].fisher.eigenvalues,
        r["blocks.0.attn.q[h=1]"].fisher.eigenvalues,
        1e-12,
    )


# ------------------------------------------------------------------ nn.MultiheadAttention


class _MHANet(nn.Module):
    def __init__(self, batch_first: bool, kdim=None):
        super().__init__()
        self.emb = nn.Embedding(6, 8)
        self.mha = nn.MultiheadAttention(8, 2, batch_first=batch_first, kdim=kdim, vdim=kdim)
        self.kv = nn.Linear(8, kdim or 8)
        self.head = nn.Linear(8, 3)
        self.batch_first = batch_first

    def forward(self, x):
        e = self.emb(x)
        kv = self.kv(e)
        if not self.batch_first:
            e, kv = e.transpose(0, 1), kv.transpose(0, 1)
        ell = x.shape[1]
        mask = torch.ones(ell, ell, dtype=torch.bool).triu(1)
        out, _ = self.mha(e, kv, kv, attn_mask=mask)
        if not self.batch_first:
            out = out.transpose(0, 1)
        return self.head(out)


@pytest.mark.parametrize(("batch_first", "kdim"), [(True, None), (False, 5)])
def test_multihead_attention_projections_and_heads(batch_first, kdim):
    torch.manual_seed(8)
    net = _MHANet(batch_first, kdim).to(DT).eval()
    g = torch.Generator().manual_seed(9)
    x = torch.randint(0, 6, (7, 4), generator=g)
    y = torch.randint(0, 3, (7, 4), generator=g)
    with torch.no_grad():
        before = net(x)
    r = deadspec.read(net, x, targets=y, heads=True)
    names = list(r)
    assert names[:3] == ["mha.q", "mha.q[h=0]", "mha.q[h=1]"] and "mha.out_proj[h=1]" in names
    assert names.index("mha.k") < names.index("mha.v") < names.index("mha.out_proj")
    assert "mha.q[h=0]" in names and "head" in names
    with torch.no_grad():  # the patched forward is gone and the model is unchanged
        assert torch.equal(net(x), before)
    assert "forward" not in net.mha.__dict__
    loss = TokenCrossEntropy()
    mha = net.mha
    if kdim is None:
        wq, wk = mha.in_proj_weight, mha.in_proj_weight
        q_rows, k_rows = (
            (lambda s: slice(s.start, s.stop)),
            (lambda s: slice(8 + s.start, 8 + s.stop)),
        )
    else:
        wq, wk = mha.q_proj_weight, mha.k_proj_weight
        q_rows = k_rows = lambda s: s
    b = mha.in_proj_bias
    full = slice(0, 8)
    want_q = _brute_eigs(
        net, x, y, loss, [(wq, lambda gr: gr[q_rows(full)]), (b, lambda gr: gr[0:8])]
    )
    _close(r["mha.q"].fisher.eigenvalues, want_q)
    h1 = slice(4, 8)
    want_k1 = _brute_eigs(
        net, x, y, loss, [(wk, lambda gr: gr[k_rows(h1)]), (b, lambda gr: gr[12:16])]
    )
    _close(r["mha.k[h=1]"].fisher.eigenvalues, want_k1)
    want_o0 = _brute_eigs(net, x, y, loss, [(mha.out_proj.weight, lambda gr: gr[:, 0:4])])
    _close(r["mha.out_proj[h=0]"].fisher.eigenvalues, want_o0)
    want_o = _brute_eigs(net, x, y, loss, [(mha.out_proj.weight, _all), (mha.out_proj.bias, _all)])
    _close(r["mha.out_proj"].fisher.eigenvalues, want_o)


def test_patched_mha_equals_torch_forward():
    torch.manual_seed(10)
    from deadspec._engine.mha import mha_forward

    mha = nn.MultiheadAttention(8, 2, dropout=0.0).to(DT).eval()
    q = torch.randn(4, 3, 8, dtype=DT)
    kp = torch.tensor([[False, False, True, False]] * 3)
    masks = [
        (kp, torch.ones(4, 4, dtype=torch.bool).triu(1)),
        (torch.zeros(3, 4, dtype=DT).masked_fill(kp, float("-inf")), torch.randn(4, 4, dtype=DT)),
    ]
    for kpm, mask in masks:
        want, wts = mha(q, q, q, key_padding_mask=kpm, attn_mask=mask)
        got, gw = mha_forward(mha, {}, None, "t", q, q, q, key_padding_mask=kpm, attn_mask=mask)
        assert torch.allclose(got, want, atol=1e-12) and torch.allclose(gw, wts, atol=1e-12)


def test_transformer_encoder_layer_fast_path_is_read():
    torch.manual_seed(11)
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True).eval()
    x = torch.randn(5, 3, 8)
    r = deadspec.read(layer, x, fisher=False, layers=["self_attn.q", "linear1"])
    assert r["self_attn.q"].n_rows == 15


# ------------------------------------------------------------------ gauges


def test_layernorm_kernel_is_a_reported_gauge_zero():
    torch.manual_seed(12)
    h = 6
    model = nn.Sequential(nn.Linear(4, h), nn.LayerNorm(h), nn.Linear(h, 2)).to(DT)
    with torch.no_grad():
        model[1].weight.uniform_(0.5, 2.0)
        model[1].bias.normal_()
    x = torch.randn(200, 4, dtype=DT)
    r = deadspec.read(model, x, fisher=False, layers=["1"])
    (g,) = r["1"].gauges
    assert (g.kind, g.side, g.dim) == ("layernorm-kernel", "activation", 1)
    assert g.residual < 1e-12
    gamma_inv = 1.0 / model[1].weight.detach().numpy()
    np.testing.assert_allclose(np.abs(g.vectors[:, 0]), gamma_inv / np.linalg.norm(gamma_inv))
    spec = r["1"].activation
    assert spec.active == h - 1 and spec.structural_zeros == 1 and spec.dead_count == 0
    with torch.no_grad():
        z = model[1](model[0](x))
    want = deadspec.spectrum(deadspec.gram(z, center=True)).eigenvalues
    np.testing.assert_allclose(spec.eigenvalues[: h - 1], want[: h - 1], rtol=1e-9)
    raw = deadspec.read(model, x, fisher=False, layers=["1"], gauges=False)
    assert raw["1"].gauges == () and raw["1"].activation.active == h  # uncentred: β ≠ 0
    # the same through the rows route (fewer rows than features) and pool="mean"
    rs = deadspec.read(model, x[:4], fisher=False, layers=["1"])
    assert rs["1"].activation.active <= 3 and rs["1"].gauges[0].residual < 1e-12


def test_logit_shift_is_excluded_and_reported():
    torch.manual_seed(13)
    model = nn.Linear(3, 4)  # float32: without the exclusion the gauge would be round-off
    x = torch.randn(60, 3)
    y = torch.randint(0, 4, (60,))
    r = deadspec.read(model, x, targets=y)
    (g,) = r[""].gauges
    assert (g.kind, g.side, g.dim) == ("logit-shift", "fisher", 4)
    assert r[""].fisher.active == (4 - 1) * (3 + 1)
    assert r.gauge_records()[0]["kind"] == "logit-shift"
    m64 = model.to(DT)
    r64 = deadspec.read(m64, x.to(DT), targets=y)
    want = _brute_eigs(m64, x.to(DT), y, _ce, [(m64.weight, _all), (m64.bias, _all)])
    _close(r64[""].fisher.eigenvalues[:12], want[:12])
    # a squared loss has no such gauge
    rr = deadspec.read(m64, x.to(DT), targets=torch.randn(60, 4, dtype=DT))
    assert rr[""].gauges == ()


# ------------------------------------------------------------------ direction classification


def test_classify_gauges_flat_and_eigen_directions():
    m = _tiny_block_model(seed=14)
    x, y = modadd_data(5)
    res = classify_directions(m, x, targets=y, layers=["unembed"], n_small=1, n_probes=1)
    kinds = {c.name.split(":")[0]: c.kind for c in res if c.source == "gauge"}
    assert set(kinds) == {"logit-shift", "qk-scale", "vo-scale", "relu-scale", "ln-scale"}
    assert all(c.kind == "flat-gauge" for c in res if c.source == "gauge")
    eig = [c for c in res if c.source == "eigen-fisher"]
    assert len(eig) == 1 and eig[0].kind in ("regular", "genuine") and np.isfinite(eig[0].k_hat)
    assert set(res[0].to_dict()) >= {"name", "kind", "k_hat", "lambda_dir"}
    names = gauge_directions(m)
    assert "qk-scale:blocks.0.attn[h=1]" in names


def test_classify_genuine_dead_unit():
    torch.manual_seed(15)
    net = nn.Sequential(nn.Linear(4, 3, bias=False), nn.Linear(3, 2, bias=False)).to(DT)
    with torch.no_grad():
        net[0].weight[1] = 0.0
        net[1].weight[:, 1] = 0.0
    x = torch.randn(50, 4, dtype=DT)
    u = {"0.weight": torch.zeros(3, 4, dtype=DT), "1.weight": torch.zeros(2, 3, dtype=DT)}
    u["0.weight"][1] = torch.randn(4, dtype=DT)
    u["1.weight"][:, 1] = torch.randn(2, dtype=DT)
    res = classify_directions(
        net,
        x,
        targets=torch.randn(50, 2, dtype=DT),
        n_small=0,
        gauges=False,
        candidates={"dead-unit": u},
        n_probes=1,
    )
    assert res[0].kind == "genuine" and abs(res[0].k_hat - 2.0) < 0.05
    assert abs(res[0].lambda_dir - 0.25) < 0.01


# ------------------------------------------------------------------ Hugging Face GPT-2


def test_hf_gpt2_from_config():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(16)
    cfg = transformers.GPT2Config(
        n_layer=2,
        n_embd=8,
        n_head=2,
        vocab_size=11,
        n_positions=8,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    model = transformers.GPT2LMHeadModel(cfg).to(DT).eval()
    g = torch.Generator().manual_seed(17)
    ids = torch.randint(0, 11, (6, 5), generator=g)
    loss = TokenCrossEntropy(shift=True)
    r = deadspec.read(model, ids, targets=ids, loss_fn=loss, heads=True)
    names = list(r)
    assert "transformer.h.0.attn.c_attn" in names and "lm_head" in names
    assert "transformer.h.1.attn.q[h=1]" in names and "transformer.h.0.attn.c_proj[h=0]" in names
    blk = model.transformer.h[0]
    c_attn, c_fc = blk.attn.c_attn, blk.mlp.c_fc
    want = _brute_eigs(model, ids, ids, loss, [(c_fc.weight, _all), (c_fc.bias, _all)])
    _close(r["transformer.h.0.mlp.c_fc"].fisher.eigenvalues, want, 1e-7)
    # head 1 of k: columns 8 + 4..8 of the in×out Conv1D weight and of the bias
    want_k = _brute_eigs(
        model,
        ids,
        ids,
        loss,
        [(c_attn.weight, lambda gr: gr[:, 12:16]), (c_attn.bias, lambda gr: gr[12:16])],
    )
    _close(r["transformer.h.0.attn.k[h=1]"].fisher.eigenvalues, want_k, 1e-7)
    want_p = _brute_eigs(model, ids, ids, loss, [(blk.attn.c_proj.weight, lambda gr: gr[0:4])])
    _close(r["transformer.h.0.attn.c_proj[h=0]"].fisher.eigenvalues, want_p, 1e-7)
    rl = deadspec.read(
        model, ids, targets=ids, loss_fn=loss, layers=["transformer.wte", "transformer.h.0.ln_1"]
    )
    assert rl["transformer.h.0.ln_1"].gauges[0].kind == "layernorm-kernel"
    # wte's own lookup gradient (lm_head shares the table but is a separate module call)
    k = rl["transformer.wte"].fisher
    assert k is not None and k.active > 0


# ------------------------------------------------------------------ bench smoke


def test_bench_transformer_smoke(tmp_path):
    if not BENCH.is_file():
        raise FileNotFoundError(f"missing benchmark script {BENCH}")
    out_csv = tmp_path / "out.csv"
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--smoke", "--no-memory", "--csv", str(out_csv)],
        capture_output=True,
        check=False,
        text=True,
        timeout=120,
        env=dict(os.environ, PYTHONHASHSEED="0"),
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    lines = proc.stdout.splitlines()
    header = [i for i, ln in enumerate(lines) if ln.startswith("method ")]
    assert header and set(lines[header[0] + 1].replace(" ", "")) == {"-"}
    assert out_csv.is_file() and out_csv.read_text().count("\n") >= 2
