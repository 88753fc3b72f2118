"""DDCMuon: exact gauge equivariance (rescalings, logit shift, per-head rotations; float64),
plain Muon's failure, torch.optim.Muon parity off-gauge, Newton–Schulz, training, state, edges."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from _models import mlp_ln as _mlp_ln
from deadspec import gauges as G
from deadspec.gauges._modules import random_orthogonal
from deadspec.models_transformer import TransformerBlock
from deadspec.optim import DDCAdam, DDCMuon
from deadspec.optim._muon import newton_schulz

pytestmark = pytest.mark.usefixtures("one_thread")

K_STEPS = 5
LR, ADAM_LR, WD = 2e-2, 1e-2, 0.1
NS_F64 = torch.float64


# --------------------------------------------------------------------------------------------
# Models, data, the equivariance harness
# --------------------------------------------------------------------------------------------


_g = torch.Generator().manual_seed(1)
X = torch.randn(64, 6, generator=_g, dtype=torch.float64)
Y = torch.randint(0, 4, (64,), generator=_g)
XT = torch.randn(8, 5, 8, generator=_g, dtype=torch.float64)  # (N, T, d_model)
YT = torch.randint(0, 5, (8, 5), generator=_g)


class _AttnNet(nn.Module):
    """A pre-LN TransformerBlock (2 heads of 4, ReLU MLP) and a per-token cross-entropy head."""

    def __init__(self, rope: bool = False, attn_bias: bool = True) -> None:
        super().__init__()
        self.block = TransformerBlock(8, 2, 12, rope=rope, attn_bias=attn_bias)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(x))


def _attn_net(rope: bool = False, attn_bias: bool = True, seed: int = 0) -> _AttnNet:
    torch.manual_seed(seed)
    return _AttnNet(rope, attn_bias).double()


class _Both:
    """torch.optim.Muon on the hidden matrices + torch.optim.AdamW on the rest."""

    def __init__(self, opts):
        self.opts = opts

    def zero_grad(self):
        for o in self.opts:
            o.zero_grad()

    def step(self):
        for o in self.opts:
            o.step()


def _torch_muon_adamw(m: nn.Module, head: str) -> _Both:
    hidden = [p for n, p in m.named_parameters() if p.ndim == 2 and not n.startswith(head)]
    rest = [p for n, p in m.named_parameters() if not (p.ndim == 2 and not n.startswith(head))]
    return _Both(
        [
            torch.optim.Muon(hidden, lr=LR, weight_decay=WD),
            torch.optim.AdamW(rest, lr=ADAM_LR, betas=(0.9, 0.95), weight_decay=WD, foreach=False),
        ]
    )


def _ns_float64(grad, ns_coefficients, ns_steps, eps):
    """torch.optim.Muon's Newton–Schulz, verbatim except for float64 instead of bfloat16."""
    a, b, c = ns_coefficients
    x = grad.double()
    if grad.size(0) > grad.size(1):
        x = x.T
    x.div_(x.norm().clamp(min=eps))
    for _ in range(ns_steps):
        gram = x @ x.T
        upd = torch.addmm(gram, gram, gram, beta=b, alpha=c)
        x = torch.addmm(x, upd, x, beta=a)
    if grad.size(0) > grad.size(1):
        x = x.T
    return x


@pytest.fixture
def muon_float64(monkeypatch):
    """torch.optim.Muon with its Newton–Schulz in float64 (the baseline without bf16 noise)."""
    import torch.optim._muon as tm

    monkeypatch.setattr(tm, "_zeropower_via_newtonschulz", _ns_float64)


def _ddc(m, gauges=None, **kw):
    kw.setdefault("lr", LR)
    kw.setdefault("adamw_lr", ADAM_LR)
    kw.setdefault("weight_decay", WD)
    return DDCMuon(m, gauges=gauges, **kw)


def _train_mlp(model, opt, k=K_STEPS):
    for i in range(k):
        sl = slice(4 * i, 4 * i + 24)  # overlapping minibatches, the same sequence for every run
        opt.zero_grad()
        F.cross_entropy(model(X[sl]), Y[sl]).backward()
        opt.step()


def _train_attn(model, opt, k=K_STEPS):
    for i in range(k):
        sl = slice(i % 3, i % 3 + 6)
        opt.zero_grad()
        F.cross_entropy(model(XT[sl]).reshape(-1, 5), YT[sl].reshape(-1)).backward()
        opt.step()


def _rel_err(a: nn.Module, b: nn.Module) -> float:
    """Max over parameters of ||a − b|| / ||a||."""
    with torch.no_grad():
        return max(float((p - q).norm() / p.norm()) for p, q in zip(a.parameters(), b.parameters()))


def _equivariance_error(m0, gauges, make_opt, train, seed=0) -> float:
    """‖g·θ_k − θ'_k‖/‖θ'_k‖ (max over parameters), θ'_k trained from g·θ_0."""
    els = G.random_elements(m0, gauges, torch.Generator().manual_seed(seed))
    moved, plain = copy.deepcopy(m0), copy.deepcopy(m0)
    G.apply_elements(moved, gauges, els)
    train(moved, make_opt(moved))
    train(plain, make_opt(plain))
    G.apply_elements(plain, gauges, els)
    return _rel_err(moved, plain)


MLP_SUBSETS = {
    "pair": {"pair"},
    "norm": {"norm"},
    "logit_shift": {"logit_shift"},
    "chain": {"chain"},
    "all": {"pair", "norm", "logit_shift"},
}
ATTN_SUBSETS = {
    "head_rotation": {"head_rotation"},
    "norm": {"norm"},
    "pair": {"pair"},
    "logit_shift": {"logit_shift"},
    "all": {"head_rotation", "norm", "pair", "logit_shift"},
}


def _mlp_gauges(kinds):
    m0 = _mlp_ln()
    return m0, [g for g in G.discover(m0) if g.kind in kinds]


def _attn_gauges(kinds, rope=False, attn_bias=True):
    m0 = _attn_net(rope, attn_bias)
    gs = [g for g in G.discover(m0, inputs=XT) if g.kind in kinds]
    assert {g.kind for g in gs} == kinds
    return m0, gs


# --------------------------------------------------------------------------------------------
# Newton–Schulz
# --------------------------------------------------------------------------------------------


def test_newton_schulz_is_torch_muons_and_orthogonally_equivariant():
    import torch.optim._muon as tm

    g = torch.Generator().manual_seed(0)
    coeffs = (3.4445, -4.7750, 2.0315)
    for shape in ((6, 9), (9, 6), (7, 7)):
        m = torch.randn(*shape, generator=g)
        ref = tm._zeropower_via_newtonschulz(m, coeffs, 5, 1e-7)
        assert torch.equal(newton_schulz(m, coeffs, 5, 1e-7, torch.bfloat16), ref)
        # exact arithmetic: NS(R M Q) = R NS(M) Q for orthogonal R, Q (a polynomial p(MMᵀ)M)
        md = m.double()
        r = random_orthogonal(1, shape[0], g)[0]
        q = random_orthogonal(1, shape[1], g)[0]
        lhs = newton_schulz(r @ md @ q, coeffs, 5, 1e-7, NS_F64)
        rhs = r @ newton_schulz(md, coeffs, 5, 1e-7, NS_F64) @ q
        assert float((lhs - rhs).norm() / rhs.norm()) < 1e-13
        # ... but not with a diagonal rescaling
        d = torch.exp(torch.rand(shape[0], generator=g, dtype=torch.float64) * 2 - 1)
        lhs = newton_schulz(d[:, None] * md, coeffs, 5, 1e-7, NS_F64)
        rhs = d[:, None] * newton_schulz(md, coeffs, 5, 1e-7, NS_F64)
        assert float((lhs - rhs).norm() / rhs.norm()) > 1e-2
        # batched = one by one; the cubic iteration converges to the polar factor UVᵀ
        batch = torch.stack([md, 2 * md])
        one = newton_schulz(md, coeffs, 5, 1e-7, NS_F64)
        torch.testing.assert_close(newton_schulz(batch, coeffs, 5, 1e-7, NS_F64)[1], one)
        u, _, vh = torch.linalg.svd(md, full_matrices=False)
        polar = newton_schulz(md, (1.5, -0.5, 0.0), 80, 1e-7, NS_F64)
        torch.testing.assert_close(polar, u @ vh, rtol=0, atol=1e-10)


# --------------------------------------------------------------------------------------------
# Parity with torch.optim.Muon + AdamW when there is no gauge
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ns", ["bf16", "f64"])
def test_no_gauges_is_torch_muon_plus_adamw_bitwise(ns, monkeypatch):
    if ns == "f64":
        import torch.optim._muon as tm

        monkeypatch.setattr(tm, "_zeropower_via_newtonschulz", _ns_float64)
    a, b = _mlp_ln(), _mlp_ln()
    oa = _ddc(a, [], ns_dtype=torch.bfloat16 if ns == "bf16" else NS_F64)
    assert [g["use_muon"] for g in oa.param_groups] == [True, False]
    assert [len(g["params"]) for g in oa.param_groups] == [3, 7]  # 0/2/4.weight | the rest
    _train_mlp(a, oa)
    _train_mlp(b, _torch_muon_adamw(b, head="6."))
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


# --------------------------------------------------------------------------------------------
# Equivariance: MLP
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["zero", "damped"])
@pytest.mark.parametrize("subset", list(MLP_SUBSETS))
def test_ddcmuon_equivariant_mlp(subset, mode):
    m0, gs = _mlp_gauges(MLP_SUBSETS[subset])
    err = _equivariance_error(m0, gs, lambda m: _ddc(m, gauge_mode=mode), _train_mlp)
    assert err <= 1e-10, err


@pytest.mark.parametrize("subset", list(MLP_SUBSETS))
def test_plain_muon_not_equivariant_mlp(subset, muon_float64):
    # torch.optim.Muon (its Newton–Schulz in float64, so no bf16 noise) + AdamW
    m0, gs = _mlp_gauges(MLP_SUBSETS[subset])
    err = _equivariance_error(m0, gs, lambda m: _torch_muon_adamw(m, "6."), _train_mlp)
    assert err > 1e-3, err


def test_balance_mode_is_not_equivariant_but_runs():
    m0, gs = _mlp_gauges(MLP_SUBSETS["all"])
    err = _equivariance_error(m0, gs, lambda m: _ddc(m, gauge_mode="balance"), _train_mlp)
    assert 1e-3 < err < 10


def test_equivariant_with_param_groups():
    def make(m):
        hidden = [m[0].weight, m[2].weight]
        rest = [p for p in m.parameters() if all(p is not q for q in hidden)]
        return DDCMuon(
            m,
            params=[
                {"params": hidden, "lr": 3e-2, "weight_decay": 0.2, "momentum": 0.9},
                {"params": rest, "lr": 1e-2, "adamw_lr": 5e-3, "adamw_betas": (0.8, 0.99)},
            ],
        )

    m0, gs = _mlp_gauges(MLP_SUBSETS["all"])
    opt = make(_mlp_ln())
    # group 0 -> one Muon group; group 1 -> Muon (4.weight) + AdamW (biases, LN, head)
    assert [(g["use_muon"], len(g["params"])) for g in opt.param_groups] == [
        (True, 2),
        (True, 1),
        (False, 7),
    ]
    assert opt.param_groups[2]["lr"] == 5e-3 and opt.param_groups[2]["weight_decay"] == 0.0
    assert _equivariance_error(m0, gs, make, _train_mlp) <= 1e-10


# --------------------------------------------------------------------------------------------
# Equivariance: attention (rotations, with and without RoPE)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rope", [False, True])
@pytest.mark.parametrize("subset", list(ATTN_SUBSETS))
def test_ddcmuon_equivariant_attention(subset, rope):
    m0, gs = _attn_gauges(ATTN_SUBSETS[subset], rope)
    err = _equivariance_error(m0, gs, lambda m: _ddc(m, gs, head="head"), _train_attn)
    # ~1e-15, except ~1e-11 on the key bias without RoPE: it is itself a gauge direction
    # (softmax ignores q·b_k), its gradient is round-off and Adam's eps turns that into ~1e-11
    assert err <= 1e-10, err


@pytest.mark.parametrize("per_head", [True, False])
@pytest.mark.parametrize("mode", ["zero", "damped"])
def test_ddcmuon_equivariant_attention_modes(per_head, mode):
    m0, gs = _attn_gauges(ATTN_SUBSETS["all"], rope=True)
    err = _equivariance_error(
        m0, gs, lambda m: _ddc(m, gs, head="head", per_head=per_head, gauge_mode=mode), _train_attn
    )
    assert err <= 1e-10, err


@pytest.mark.parametrize("rope", [False, True])
@pytest.mark.parametrize("subset", ["norm", "pair", "all"])
def test_plain_muon_not_equivariant_attention(subset, rope, muon_float64):
    m0, gs = _attn_gauges(ATTN_SUBSETS[subset], rope)
    err = _equivariance_error(m0, gs, lambda m: _torch_muon_adamw(m, "head"), _train_attn)
    assert err > 1e-3, err


def test_plain_muon_and_rotations(muon_float64):
    # Plain Muon on whole matrices is rotation-equivariant (msign(DM) = D msign(M), D the
    # block-diagonal rotation); what breaks it is AdamW on the q/k/v biases. With torch's bf16
    # Newton–Schulz the bf16 round-off alone is at the percent level.
    m0, gs = _attn_gauges({"head_rotation"}, attn_bias=False)
    err = _equivariance_error(m0, gs, lambda m: _torch_muon_adamw(m, "head"), _train_attn)
    assert err <= 1e-10, err
    m0, gs = _attn_gauges({"head_rotation"}, attn_bias=True)
    err = _equivariance_error(m0, gs, lambda m: _torch_muon_adamw(m, "head"), _train_attn)
    assert err > 1e-3, err


class _MHANet(nn.Module):
    """nn.MultiheadAttention (8 wide, 2 heads) under a linear logit head."""

    def __init__(self) -> None:
        super().__init__()
        self.att = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        return self.head(self.att(x, x, x, need_weights=False)[0])


def _mha_net() -> _MHANet:
    torch.manual_seed(0)
    return _MHANet().double()


def test_ddcmuon_equivariant_multihead_attention():
    m0 = _mha_net()
    with torch.no_grad():  # torch zero-initialises it; the key part is a gauge (zero gradient)
        m0.att.in_proj_bias.normal_(0, 0.3)
    for part in ("both", "qk"):
        gs = [G.HeadRotation("att", part=part), G.LogitShift("head", source="fx")]
        err = _equivariance_error(m0, gs, lambda m, gs=gs: _ddc(m, gs), _train_attn)
        assert err <= 1e-10, (part, err)


# --------------------------------------------------------------------------------------------
# What the per-head Muon step is
# --------------------------------------------------------------------------------------------


def test_per_head_orthogonalisation():
    # with the converging cubic iteration, one step from rest is −lr·s·U_hV_hᵀ per head block
    # (U, V over the nonzero singular values: the q gradient has rank 7 of 8; 30 steps leave
    # its round-off null direction at ~1e-11)
    cubic = {"ns_coefficients": (1.5, -0.5, 0.0), "ns_steps": 30, "momentum": 0.0}

    def polar(a):
        u, s, vh = torch.linalg.svd(a, full_matrices=False)
        r = int((s > 1e-8 * s[0]).sum())
        return u[:, :r] @ vh[:r]

    for per_head in (True, False):
        m = _attn_net()
        att = m.block.attn
        gs = [G.HeadRotation("block.attn")]
        opt = _ddc(m, gs, head="head", weight_decay=0.0, per_head=per_head, **cubic)
        before = {k: getattr(att, k).weight.detach().clone() for k in "qo"}
        F.cross_entropy(m(XT).reshape(-1, 5), YT.reshape(-1)).backward()
        grads = {k: getattr(att, k).weight.grad.clone() for k in "qo"}
        opt.step()
        for k in "qo":
            delta = (getattr(att, k).weight.detach() - before[k]) / -LR
            if per_head:
                for h in range(2):
                    sl = (slice(4 * h, 4 * h + 4), slice(None))
                    sl = sl if k == "q" else sl[::-1]
                    # q block 4×8: s = 1; o block 8×4: s = (8/8)^½ = 1 (the RMS of whole Muon)
                    torch.testing.assert_close(delta[sl], polar(grads[k][sl]), rtol=0, atol=1e-9)
            else:
                torch.testing.assert_close(delta, polar(grads[k]), rtol=0, atol=1e-9)
        # the o update's Frobenius norm is whole-matrix Muon's, √(rank) = √8 (RMS 1/√cols)
        assert math.isclose(float(delta.norm()), math.sqrt(8), rel_tol=1e-9)


def test_producer_rows_step_written_out():
    # theory §6.8 unit by unit on one Pair (fc0 → fc2, fc2 the AdamW head): decay; ρ; Muon on
    # g̃ = g·ρ with the update's radial part along x̃ = w/ρ removed on the live producer rows;
    # AdamW on g̃ for the rest; then each live unit's scalar Adam on ĝ = ⟨g_row, w_row⟩ (Muon lr,
    # the bias's AdamW betas and eps) scales its row by e^Δ. Units 6, 7 are outside the gauge
    # and unit 5 starts dead: plain Muon there, no radial step.
    torch.manual_seed(3)
    m = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4)).double()
    with torch.no_grad():
        m[0].weight[5] = 0.0
        m[0].bias[5] = 0.0
    ref = copy.deepcopy(m)
    mu, betas, eps, units = 0.95, (0.8, 0.99), 1e-8, torch.arange(6)
    opt = _ddc(m, [G.Pair("0", "2", units=units.tolist())], head="2", ns_dtype=NS_F64,
               adamw_betas=betas)
    w0, b0, w2, b2 = ref[0].weight, ref[0].bias, ref[2].weight, ref[2].bias
    buf = torch.zeros_like(w0)
    moments = {k: [torch.zeros_like(t), torch.zeros_like(t)] for k, t in
               (("b0", b0), ("w2", w2), ("b2", b2), ("radial", b0))}
    inside = torch.zeros(8, dtype=torch.bool)
    inside[units] = True
    with torch.no_grad():
        for t in range(1, K_STEPS + 1):
            sl = slice(4 * t, 4 * t + 24)
            for net in (m, ref):
                net.zero_grad()
                with torch.enable_grad():
                    F.cross_entropy(net(X[sl]), Y[sl]).backward()
            opt.step()
            g0, gb0, g2, gb2 = (p.grad for p in (w0, b0, w2, b2))
            w0.mul_(1 - LR * WD)
            for p in (b0, w2, b2):
                p.mul_(1 - ADAM_LR * WD)
            raw = (w0.square().sum(1) + b0.square()).sqrt()
            live = inside & (raw > torch.finfo(raw.dtype).tiny)
            rho = torch.where(live, raw, 1.0)  # dead and outside units: ρ := 1
            ghat = torch.where(live, (g0 * w0).sum(1) + gb0 * b0, 0.0)
            gt = g0 * rho[:, None]
            buf.lerp_(gt, 1 - mu)
            u = newton_schulz(gt.lerp(buf, mu), (3.4445, -4.7750, 2.0315), 5, 1e-7, NS_F64)
            u = u * math.sqrt(8 / 6)  # Keller's scale of the tall 8×6 matrix
            xt = w0 / rho[:, None]
            radial = (u * xt).sum(1) / xt.square().sum(1).clamp_min(1e-300)
            u = u - torch.where(live, radial, 0.0)[:, None] * xt
            bc1, bc2 = 1 - betas[0] ** t, 1 - betas[1] ** t
            for k, p, g, sig in (("b0", b0, gb0, rho), ("w2", w2, g2, 1 / rho[None, :]),
                                 ("b2", b2, gb2, torch.ones(()))):
                mo, v = moments[k]
                mo.lerp_(g * sig, 1 - betas[0])
                v.mul_(betas[1]).addcmul_(g * sig, g * sig, value=1 - betas[1])
                p.sub_(ADAM_LR / bc1 * mo / ((v / bc2).sqrt() + eps) * sig)
            w0.sub_(LR * u * rho[:, None])
            mo, v = moments["radial"]
            mo.lerp_(ghat, 1 - betas[0])
            v.mul_(betas[1]).addcmul_(ghat, ghat, value=1 - betas[1])
            c = torch.where(live, torch.exp(-LR / bc1 * mo / ((v / bc2).sqrt() + eps)), 1.0)
            w0.mul_(c[:, None])
            b0.mul_(c)
            assert bool((c != 1).any())
            assert _rel_err(ref, m) < 1e-12, (t, _rel_err(ref, m))


# --------------------------------------------------------------------------------------------
# Training, state, edges
# --------------------------------------------------------------------------------------------


def test_trains_comparably_to_muon():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 2, generator=g)
    r = x.norm(dim=1)
    y = (r > 1.2).long() + (r > 0.7).long()  # three rings: not linearly separable

    def fit(make):
        torch.manual_seed(0)
        m = nn.Sequential(
            nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3)
        )
        opt = make(m)
        losses = []
        for _ in range(150):
            opt.zero_grad()
            loss = F.cross_entropy(m(x), y)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        with torch.no_grad():
            return losses[0], float(F.cross_entropy(m(x), y))

    l0, ddc = fit(lambda m: DDCMuon(m, lr=0.02, adamw_lr=1e-2, weight_decay=1e-2))
    _, muon = fit(lambda m: _torch_muon_adamw(m, "4."))
    assert ddc < 0.3 * l0, (l0, ddc)
    assert ddc < 2.0 * muon + 0.05, (ddc, muon)


@pytest.mark.parametrize("mode", ["zero", "damped"])
def test_state_dict_resume_is_bitwise(mode):
    gs = [g for g in G.discover(_attn_net(), inputs=XT) if g.kind != "chain"]

    def make(m):
        return _ddc(m, gs, head="head", gauge_mode=mode)

    full = _attn_net()
    of = make(full)
    _train_attn(full, of, k=6)
    part = _attn_net()
    op = make(part)
    _train_attn(part, op, k=3)
    buf = io.BytesIO()
    torch.save({"model": part.state_dict(), "opt": op.state_dict()}, buf)
    buf.seek(0)
    ck = torch.load(buf)
    resumed = _attn_net(seed=5)
    resumed.load_state_dict(ck["model"])
    orr = make(resumed)
    orr.load_state_dict(ck["opt"])
    for i in range(3, 6):  # continue the same minibatch sequence
        sl = slice(i % 3, i % 3 + 6)
        orr.zero_grad()
        F.cross_entropy(resumed(XT[sl]).reshape(-1, 5), YT[sl].reshape(-1)).backward()
        orr.step()
    for p, q in zip(full.parameters(), resumed.parameters()):
        assert torch.equal(p, q)
    st = orr.state_dict()
    assert st["ddc"]["rotated"] and "momentum_buffer" in st["state"][0]


def test_load_state_dict_mismatch_rejected():
    gs = [G.HeadRotation("block.attn")]
    sd = _ddc(_attn_net(), gs, head="head").state_dict()
    with pytest.raises(ValueError, match="same head rotations"):
        _ddc(_attn_net(), [], head="head").load_state_dict(sd)
    sd = _ddc(_mlp_ln(), []).state_dict()  # groups [Muon, AdamW]
    other = _mlp_ln()
    ps = list(other.parameters())
    opt = DDCMuon(
        other, gauges=[], params=[{"params": ps[:3], "use_muon": False}, {"params": ps[3:]}]
    )
    with pytest.raises(ValueError, match="same Muon/AdamW"):
        opt.load_state_dict(sd)


def test_nonfinite_raise_names_parameter():
    m = _mlp_ln()
    opt = _ddc(m)
    F.cross_entropy(m(X), Y).backward()
    m[2].weight.grad[0, 0] = float("nan")
    with pytest.raises(RuntimeError, match=r"DDCMuon\.step: .*'2\.weight'"):
        opt.step()


def test_nonfinite_skip_leaves_state_untouched():
    m = _attn_net()
    gs = [g for g in G.discover(m, inputs=XT) if g.kind != "chain"]
    opt = _ddc(m, gs, head="head", nonfinite="skip", gauge_mode="damped")
    _train_attn(m, opt, k=2)
    params = [p.detach().clone() for p in m.parameters()]
    state = copy.deepcopy(opt.state_dict())
    opt.zero_grad()
    F.cross_entropy(m(XT).reshape(-1, 5), YT.reshape(-1)).backward()
    m.block.attn.q.weight.grad[1, 1] = float("inf")
    with pytest.warns(RuntimeWarning, match="skipped"):
        opt.step()
    for p, q in zip(m.parameters(), params):
        assert torch.equal(p, q)
    after = opt.state_dict()
    assert any(k.startswith("site.") for v in state["state"].values() for k in v)
    for k, v in state["state"].items():
        assert v.keys() == after["state"][k].keys()
        for key, t in v.items():  # (a site's step count is an int)
            got = after["state"][k][key]
            assert torch.equal(t, got) if isinstance(t, torch.Tensor) else t == got


def test_param_groups_routes_and_scheduler():
    m = _mlp_ln()
    ln = [m[5].weight, m[5].bias]
    rest = [p for p in m.parameters() if all(p is not q for q in ln)]
    before = [p.detach().clone() for p in ln]
    opt = DDCMuon(m, params=[{"params": rest}, {"params": ln, "use_muon": False, "lr": 0.0}])
    names = {id(p): n for n, p in m.named_parameters()}
    routes = {names[id(p)]: g["use_muon"] for g in opt.param_groups for p in g["params"]}
    assert routes == {
        "0.weight": True,
        "2.weight": True,
        "4.weight": True,
        "0.bias": False,
        "2.bias": False,
        "4.bias": False,
        "6.weight": False,  # the output head (the LogitShift layer) goes to AdamW
        "6.bias": False,
        "5.weight": False,
        "5.bias": False,
    }
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    for _ in range(4):

        def closure():
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(m(X), Y)
            loss.backward()
            return loss

        assert isinstance(opt.step(closure), torch.Tensor)
        sched.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([5e-3, 7.5e-5, 0.0])
    for p, q in zip(ln, before):
        assert torch.equal(p, q)
    # forcing the head onto Muon keeps it equivariant (the logit shift is handled by the decay)
    m0, gs = _mlp_gauges(MLP_SUBSETS["all"])
    e = _equivariance_error(
        m0,
        gs,
        lambda m: DDCMuon(
            m,
            weight_decay=WD,
            params=[
                {"params": [m[6].weight], "use_muon": True},
                {"params": [p for n, p in m.named_parameters() if n != "6.weight"]},
            ],
        ),
        _train_mlp,
    )
    assert e <= 1e-10


def test_head_detection_and_embeddings():
    class Emb(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(7, 8)
            self.block = TransformerBlock(8, 2, 12)
            self.unembed = nn.Linear(8, 7)

        def forward(self, t):
            return self.unembed(self.block(self.emb(t)))

    m = Emb()
    with pytest.warns(UserWarning, match="output head"):
        opt = DDCMuon(m)  # untraceable root, no LogitShift: every Linear gets Muon
    muon = {id(p) for g in opt.param_groups if g["use_muon"] for p in g["params"]}
    assert id(m.unembed.weight) in muon and id(m.emb.weight) not in muon
    opt = DDCMuon(m, head="unembed")
    muon = {id(p) for g in opt.param_groups if g["use_muon"] for p in g["params"]}
    assert id(m.unembed.weight) not in muon and id(m.block.attn.q.weight) in muon
    assert any(isinstance(g, G.HeadRotation) for g in opt.gauges)  # discovered and used
    with pytest.warns(UserWarning, match="plain Muon"):
        DDCMuon(m.parameters())


def test_ddcadam_declared_rotation_needs_rotations():
    m = _attn_net()
    with pytest.raises(ValueError, match="rotations=True"):
        DDCAdam(m, gauges=[G.HeadRotation("block.attn")], rotations=False)


# --------------------------------------------------------------------------------------------
# DDCAdam on attention: head rotations through a per-head shared second moment
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["coordinate", "split"])
@pytest.mark.parametrize("rope", [False, True])
@pytest.mark.parametrize("subset", list(ATTN_SUBSETS))
def test_ddcadam_equivariant_attention(subset, rope, form):
    m0, gs = _attn_gauges(ATTN_SUBSETS[subset], rope)
    make = lambda m: DDCAdam(  # noqa: E731
        m, lr=ADAM_LR, weight_decay=WD, gauges=gs, form=form
    )
    err = _equivariance_error(m0, gs, make, _train_attn)
    # as DDCMuon: ~1e-15, up to ~1e-11 on the key bias without RoPE (a gauge direction itself)
    assert err <= 1e-10, err
    if "head_rotation" in ATTN_SUBSETS[subset]:
        # AdamW, and DDCAdam without its rotation conditioning, are not equivariant
        adamw = lambda m: torch.optim.AdamW(m.parameters(), lr=ADAM_LR, weight_decay=WD)  # noqa: E731
        assert _equivariance_error(m0, gs, adamw, _train_attn) > 1e-3
        rest = [g for g in gs if g.kind != "head_rotation"]
        no_rot = lambda m: DDCAdam(  # noqa: E731
            m, lr=ADAM_LR, weight_decay=WD, gauges=rest, rotations=False
        )
        assert _equivariance_error(m0, gs, no_rot, _train_attn) > 1e-3


def test_ddcadam_equivariant_multihead_attention():
    m0 = _mha_net()
    with torch.no_grad():
        m0.att.in_proj_bias.normal_(0, 0.3)
    for part in ("both", "qk", "vo"):
        gs = [G.HeadRotation("att", part=part), G.LogitShift("head", source="fx")]
        for form in ("coordinate", "split"):
            make = lambda m, gs=gs, form=form: DDCAdam(  # noqa: E731
                m, lr=ADAM_LR, gauges=gs, form=form
            )
            err = _equivariance_error(m0, gs, make, _train_attn)
            assert err <= 1e-10, (part, form, err)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_rotated_rows_with_a_scale_along_the_row_match_the_torch_path(dtype):
    """Rotated rows whose σ varies along the row through the scale tensor itself (a (1, d) scale
    viewed as every row's, times column factors): the core materialises each σ row (sigma_row)
    instead of forming it in the loops. The torch path's values."""
    from deadspec import _core
    from deadspec.optim._functional import ddc_adam_block_update

    gen = torch.Generator().manual_seed(5)
    p = torch.randn(8, 6, dtype=dtype, generator=gen)
    segs = [(0, 3), (3, 6)]
    scale = (torch.rand(1, 6, dtype=dtype, generator=gen) + 0.5).expand(8, 6)
    col = torch.rand(6, dtype=dtype, generator=gen) + 0.5
    q, m, v, mq, vq = p.clone(), *(torch.zeros_like(p) for _ in range(4))
    st = torch.tensor(0.0)
    for k in range(3):
        g = torch.randn(8, 6, dtype=dtype, generator=gen)
        ddc_adam_block_update(p, g, m, v, st, scale, 0, segs, lr=1e-2, beta1=0.9, beta2=0.99,
                               eps=1e-8, col_scale=col)
        _core.ddc_adam_update_many([dict(param=q.__dlpack__(), grad=g.__dlpack__(),
                                         exp_avg=mq.__dlpack__(), exp_avg_sq=vq.__dlpack__(),
                                         scale=scale.__dlpack__(), col_scale=col.__dlpack__(),
                                         lr=1e-2, beta1=0.9, beta2=0.99, eps=1e-8, step=k + 1,
                                         decay=1.0, rot_axis=0, rot_segments=segs)])
    tol = dict(rtol=1e-13, atol=1e-15) if dtype == torch.float64 else dict(rtol=2e-6, atol=1e-7)
    torch.testing.assert_close(q, p, **tol)
    torch.testing.assert_close(mq, m, **tol)
    torch.testing.assert_close(vq, v, **tol)


@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_rotated_block_fused_step_matches_the_torch_path(axis, dtype):
    from deadspec import _core
    from deadspec.optim._functional import ddc_adam_block_update

    gen = torch.Generator().manual_seed(4)
    p = torch.randn(8, 6, dtype=dtype, generator=gen)
    segs = [(0, 2), (3, 5)] if axis == 1 else [(0, 3), (3, 6)]
    scale = (torch.rand(1, 6, dtype=dtype, generator=gen) + 0.5) if axis == 0 else (
        torch.rand(8, 1, dtype=dtype, generator=gen) + 0.5
    )
    q, m, v, mq, vq = p.clone(), *(torch.zeros_like(p) for _ in range(4))
    st, stq = torch.tensor(0.0), torch.tensor(0.0)
    for _ in range(3):
        g = torch.randn(8, 6, dtype=dtype, generator=gen)
        ddc_adam_block_update(p, g, m, v, st, scale, axis, segs, lr=1e-2, beta1=0.9,
                               beta2=0.99, eps=1e-8)
        stq += 1
        row = scale.expand_as(q).__dlpack__() if axis == 1 else None
        col = scale.reshape(-1).__dlpack__() if axis == 0 else None
        _core.ddc_adam_update_many([dict(param=q.__dlpack__(), grad=g.__dlpack__(),
                                         exp_avg=mq.__dlpack__(), exp_avg_sq=vq.__dlpack__(),
                                         scale=row, col_scale=col, lr=1e-2, beta1=0.9, beta2=0.99,
                                         eps=1e-8, step=int(stq.item()), decay=1.0, rot_axis=axis,
                                         rot_segments=segs)])
    tol = dict(rtol=1e-13, atol=1e-15) if dtype == torch.float64 else dict(rtol=2e-6, atol=1e-7)
    torch.testing.assert_close(q, p, **tol)
    torch.testing.assert_close(vq, v, **tol)
    with pytest.raises(ValueError, match="rot_segments must be ascending"):
        _core.ddc_adam_update_many([dict(param=q.__dlpack__(), grad=g.__dlpack__(),
                                         exp_avg=mq.__dlpack__(), exp_avg_sq=vq.__dlpack__(),
                                         lr=1e-2, beta1=0.9, beta2=0.99, eps=1e-8, step=1,
                                         rot_axis=axis, rot_segments=[(2, 1)])])


def test_argument_validation():
    m = _attn_net()
    with pytest.raises(ValueError, match="rows that HeadRotation"):
        DDCMuon(
            m,
            head="head",
            gauges=[
                G.HeadRotation("block.attn"),
                G.Pair("block.attn.v", "block.attn.o", source="fx"),
            ],
        )
    with pytest.raises(ValueError, match="2-D matrices"):
        DDCMuon(m, params=[{"params": [m.head.bias], "use_muon": True}], head="head")
    with pytest.raises(ValueError, match="gauge_mode"):
        DDCMuon(m, gauge_mode="free", head="head")
    with pytest.raises(ValueError, match="momentum"):
        DDCMuon(m, momentum=1.0, head="head")
    with pytest.raises(ValueError, match="ns_steps"):
        DDCMuon(m, ns_steps=0, head="head")
    with pytest.raises(ValueError, match="ns_dtype"):
        DDCMuon(m, ns_dtype=torch.int32, head="head")
    with pytest.raises(ValueError, match="adamw_betas"):
        DDCMuon(m, adamw_betas=(0.9, 1.0), head="head")
    with pytest.raises(ValueError, match="head must name"):
        DDCMuon(m, head="nope")
    with pytest.raises(ValueError, match="gauges need the model"):
        DDCMuon(m.parameters(), gauges=[G.HeadRotation("block.attn")])


def _site_state_run(layout: str):
    """3 steps, a state dict (in ``layout``), a fresh optimizer loading it, 3 more steps of
    both: the parameters of the continued and the resumed run."""
    m = _mlp_ln()
    opt = _ddc(m)
    _train_mlp(m, opt, 3)
    sd = copy.deepcopy(opt.state_dict())
    entries = {k: [n for n in v if n.startswith("site.")] for k, v in sd["state"].items()}
    assert any(entries.values())  # DDCMuon's radial state is in its producers' entries
    if layout == "ddc":  # the older layout: the site state under "ddc", by site name
        flat = [p for g in opt.param_groups for p in g["params"]]
        for k in (k for k, v in entries.items() if v):
            site = next(s for s in opt._plan.sites if s.weight is flat[k])
            sd["ddc"]["site_state"][site.name] = {
                n[len("site."):]: sd["state"][k].pop(n) for n in entries[k]}
    fresh_model = copy.deepcopy(m)
    fresh = _ddc(fresh_model)
    fresh.load_state_dict(sd)
    _train_mlp(m, opt, 3)
    _train_mlp(fresh_model, fresh, 3)
    return m, fresh_model


@pytest.mark.parametrize("layout", ["state", "ddc"])
def test_site_state_round_trips_in_both_layouts(layout):
    m, resumed = _site_state_run(layout)
    for p, q in zip(m.parameters(), resumed.parameters()):
        assert torch.equal(p, q)


def test_site_entries_on_a_parameter_that_is_no_producer_are_refused():
    m = _mlp_ln()
    opt = _ddc(m)
    _train_mlp(m, opt, 1)
    sd = copy.deepcopy(opt.state_dict())
    flat = [p for g in opt.param_groups for p in g["params"]]
    producers = {id(s.weight) for s in opt._plan.sites}
    k = next(i for i, p in enumerate(flat) if id(p) not in producers)
    sd["state"][k]["site.scale_exp_avg"] = torch.zeros(3)
    with pytest.raises(ValueError, match="no site's producer"):
        _ddc(copy.deepcopy(m)).load_state_dict(sd)
