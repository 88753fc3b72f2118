"""DDCAdam: exact gauge equivariance (float64), AdamW parity off-gauge, training, state, edges."""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from _models import mlp_ln as _mlp_ln
from deadspec import gauges as G
from deadspec.optim import DDCAdam

pytestmark = pytest.mark.usefixtures("one_thread")

K_STEPS = 5
LR, WD = 1e-2, 0.1


def _data(n: int = 64, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=g, dtype=torch.float64), torch.randint(
        0, 4, (n,), generator=g
    )


X, Y = _data()


def _train(model: nn.Module, opt: torch.optim.Optimizer, k: int = K_STEPS) -> None:
    for i in range(k):
        sl = slice(4 * i, 4 * i + 24)  # overlapping minibatches, same sequence for every run
        opt.zero_grad()
        F.cross_entropy(model(X[sl]), Y[sl]).backward()
        opt.step()


def _rel_err(a: nn.Module, b: nn.Module) -> float:
    """Max over parameters of ||a − b|| / ||a||."""
    with torch.no_grad():
        return max(float((p - q).norm() / p.norm()) for p, q in zip(a.parameters(), b.parameters()))


def _equivariance_error(make_opt, kinds: set[str], seed: int = 0) -> float:
    m0 = _mlp_ln()
    gs = [g for g in G.discover(m0) if g.kind in kinds]
    assert gs, kinds
    els = G.random_elements(m0, gs, torch.Generator().manual_seed(seed))  # c = exp(U(-1, 1))
    moved = copy.deepcopy(m0)
    G.apply_elements(moved, gs, els)  # g·θ0
    plain = copy.deepcopy(m0)
    _train(moved, make_opt(moved))  # θ'_k from g·θ0
    _train(plain, make_opt(plain))  # θ_k from θ0
    G.apply_elements(plain, gs, els)  # g·θ_k
    return _rel_err(moved, plain)


SUBSETS = {
    "pair": {"pair"},
    "norm": {"norm"},
    "logit_shift": {"logit_shift"},
    "chain": {"chain"},
    "all": {"pair", "norm", "logit_shift"},
}


@pytest.mark.parametrize("form", ["coordinate", "split"])
@pytest.mark.parametrize("mode", ["zero", "damped"])
@pytest.mark.parametrize("subset", list(SUBSETS))
def test_ddcadam_is_equivariant(subset, mode, form):
    err = _equivariance_error(
        lambda m: DDCAdam(m, lr=LR, weight_decay=WD, gauge_mode=mode, form=form),
        SUBSETS[subset],
    )
    assert err <= 1e-10, err


@pytest.mark.parametrize("subset", list(SUBSETS))
def test_adamw_is_not_equivariant(subset):
    # the same test must fail for AdamW: it is sensitive
    err = _equivariance_error(
        lambda m: torch.optim.AdamW(m.parameters(), lr=LR, weight_decay=WD), SUBSETS[subset]
    )
    assert err > 1e-3, err


def test_balance_mode_is_not_equivariant_but_runs():
    err = _equivariance_error(
        lambda m: DDCAdam(m, lr=LR, weight_decay=WD, gauge_mode="balance"), SUBSETS["all"]
    )
    assert err > 1e-3


def test_equivariant_with_param_groups():
    def make(m):
        decay = [p for n, p in m.named_parameters() if n.endswith("weight") and n != "5.weight"]
        rest = [
            p for n, p in m.named_parameters() if not (n.endswith("weight") and n != "5.weight")
        ]
        return DDCAdam(
            m,
            params=[
                {"params": decay, "lr": 2e-2, "weight_decay": 0.2},
                {"params": rest, "lr": 5e-3, "betas": (0.8, 0.99)},
            ],
        )

    assert _equivariance_error(make, SUBSETS["all"]) <= 1e-10


def test_gauge_mode_gradient_vanishes_on_exact_gauges():
    models = [(_mlp_ln(), X, Y)]
    from deadspec.models_transformer import ModAddTransformer, modadd_data

    tm = ModAddTransformer(p=7, d_model=8, n_heads=2, layernorm=True).double()
    tok, tt = modadd_data(7, 30)
    models.append((tm, tok, tt))
    for m, x, y in models:
        gs = [g for g in G.discover(m, inputs=x) if not isinstance(g, G.HeadRotation)]
        opt = DDCAdam(m, gauges=gs, track_residuals=True)
        F.cross_entropy(m(x), y).backward()
        opt.step()
        res = opt.gauge_residuals(relative=True)
        assert set(res) == set(opt.sites) and len(res) >= 3
        for name, r in res.items():
            assert float(r.max()) <= 1e-10, (name, float(r.max()))


@pytest.mark.parametrize("form", ["coordinate", "split"])
def test_no_gauges_is_adamw_bitwise(form):
    a, b = _mlp_ln(), _mlp_ln()
    oa = DDCAdam(a, lr=LR, weight_decay=WD, gauges=[], form=form)
    ob = torch.optim.AdamW(b.parameters(), lr=LR, weight_decay=WD, foreach=True)
    _train(a, oa)
    _train(b, ob)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
    c = _mlp_ln()
    with pytest.warns(UserWarning, match="plain AdamW"):
        oc = DDCAdam(c.parameters(), lr=LR, weight_decay=WD)
    _train(c, oc)
    for p, q in zip(c.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_off_gauge_parameters_get_adamw():
    class WithEmbedding(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(5, 6)
            self.mlp = _mlp_ln()

        def forward(self, t):
            return self.mlp(self.emb(t))

    torch.manual_seed(0)
    a = WithEmbedding().double()
    b = copy.deepcopy(a)
    oa = DDCAdam(a, lr=LR, weight_decay=WD)
    ob = torch.optim.AdamW([b.emb.weight], lr=LR, weight_decay=WD, foreach=True)
    ob2 = DDCAdam(b.mlp, lr=LR, weight_decay=WD)
    t = torch.randint(0, 5, (16,))
    for _ in range(3):
        for m, opts in ((a, [oa]), (b, [ob, ob2])):
            for o in opts:
                o.zero_grad()
            F.cross_entropy(m(t), Y[:16]).backward()
            for o in opts:
                o.step()
    # AdamW's formula in the fused pass: equal to torch's AdamW up to float64 round-off (and
    # the gauged blocks are unaffected by the extra parameter)
    assert not torch.equal(a.emb.weight, WithEmbedding().double().emb.weight)
    torch.testing.assert_close(a.emb.weight, b.emb.weight, rtol=1e-13, atol=1e-15)
    for p, q in zip(a.mlp.parameters(), b.mlp.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-13, atol=1e-15)


def test_trains_comparably_to_adamw():
    g = torch.Generator().manual_seed(0)
    n = 256
    x = torch.randn(n, 2, generator=g)
    r = x.norm(dim=1)
    y = (r > 1.2).long() + (r > 0.7).long()  # three rings: not linearly separable

    def fit(make):
        torch.manual_seed(0)
        m = nn.Sequential(
            nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3)
        )
        opt = make(m)
        first = None
        for _ in range(150):
            opt.zero_grad()
            loss = F.cross_entropy(m(x), y)
            loss.backward()
            opt.step()
            first = float(loss.detach()) if first is None else first
        with torch.no_grad():
            return first, float(F.cross_entropy(m(x), y))

    l0, ddc = fit(lambda m: DDCAdam(m, lr=1e-2, weight_decay=1e-2))
    _, adamw = fit(lambda m: torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=1e-2))
    assert ddc < 0.5 * l0
    assert ddc < 1.5 * adamw + 0.05, (ddc, adamw)


@pytest.mark.parametrize(("mode", "form"), [("zero", "coordinate"), ("damped", "coordinate"),
                                             ("damped", "split")])
def test_state_dict_resume_is_bitwise(mode, form):
    full = _mlp_ln()
    of = DDCAdam(full, lr=LR, weight_decay=WD, gauge_mode=mode, form=form)
    _train(full, of, k=6)

    part = _mlp_ln()
    op = DDCAdam(part, lr=LR, weight_decay=WD, gauge_mode=mode, form=form)
    _train(part, op, k=3)
    buf = io.BytesIO()
    torch.save({"model": part.state_dict(), "opt": op.state_dict()}, buf)
    buf.seek(0)
    ck = torch.load(buf)
    resumed = _mlp_ln(seed=5)
    resumed.load_state_dict(ck["model"])
    orr = DDCAdam(resumed, lr=LR, weight_decay=WD, gauge_mode=mode, form=form)
    orr.load_state_dict(ck["opt"])
    for i in range(3, 6):  # continue the same minibatch sequence
        sl = slice(4 * i, 4 * i + 24)
        orr.zero_grad()
        F.cross_entropy(resumed(X[sl]), Y[sl]).backward()
        orr.step()
    for p, q in zip(full.parameters(), resumed.parameters()):
        assert torch.equal(p, q)


def test_load_state_dict_for_other_sites_rejected():
    sd = DDCAdam(_mlp_ln(), gauges=[]).state_dict()
    with pytest.raises(ValueError, match="same gauge sites"):
        DDCAdam(_mlp_ln()).load_state_dict(sd)
    m = _mlp_ln()
    opt = DDCAdam(m, form="split")
    _train(m, opt, k=1)
    with pytest.raises(ValueError, match="same form"):
        DDCAdam(_mlp_ln()).load_state_dict(opt.state_dict())


def test_nonfinite_raise_names_parameter():
    m = _mlp_ln()
    opt = DDCAdam(m)
    F.cross_entropy(m(X), Y).backward()
    m[2].weight.grad[0, 0] = float("nan")
    with pytest.raises(RuntimeError, match=r"'2\.weight'"):
        opt.step()


def test_nonfinite_skip_leaves_state_untouched():
    m = _mlp_ln()
    opt = DDCAdam(m, weight_decay=WD, nonfinite="skip", gauge_mode="damped")
    _train(m, opt, k=2)
    params = [p.detach().clone() for p in m.parameters()]
    state = copy.deepcopy(opt.state_dict())
    opt.zero_grad()
    F.cross_entropy(m(X), Y).backward()
    m[6].bias.grad[1] = float("inf")
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


@pytest.mark.parametrize("form", ["coordinate", "split"])
def test_zero_norm_unit_never_nan(form):
    m = _mlp_ln(act=lambda: nn.LeakyReLU(0.1))
    with torch.no_grad():
        m[0].weight[3].zero_()
        m[0].bias[3] = 0.0
        m[2].weight[:, 3].zero_()  # dead both ways
        m[2].weight[5].zero_()
        m[2].bias[5] = 0.0
        m[6].weight[:, 2].zero_()  # a zero consumer-only column (split: not split, plain Adam)
    opt = DDCAdam(m, lr=LR, weight_decay=WD, gauge_mode="damped", form=form)
    scales = opt.gauge_scales()
    assert float(scales["pair:0"][3]) == 1.0
    _train(m, opt, k=5)
    for p in m.parameters():
        assert torch.isfinite(p).all()
    assert all(torch.isfinite(r).all() for r in opt.gauge_residuals().values())
    # LeakyReLU passes gradient through a zero pre-activation: the unit 5 row moves again
    assert float(m[2].weight.detach()[5].abs().sum()) > 0
    assert float(m[6].weight.detach()[:, 2].abs().sum()) > 0


@pytest.mark.parametrize("frozen", ["norm", "head"])
@pytest.mark.parametrize("form", ["coordinate", "split"])
def test_param_groups_different_lr(form, frozen):
    # a group with lr = 0 does not move, whichever side of a site it is on (split form: the
    # site's radial factor is scaled by each block's own lr)
    m = _mlp_ln()
    ln = [m[5].weight, m[5].bias] if frozen == "norm" else [m[6].weight, m[6].bias, m[4].weight]
    rest = [p for p in m.parameters() if all(p is not q for q in ln)]
    before = [p.detach().clone() for p in ln]
    opt = DDCAdam(m, params=[{"params": rest}, {"params": ln, "lr": 0.0}], lr=LR, form=form)
    _train(m, opt, k=3)
    for p, q in zip(ln, before):
        assert torch.equal(p, q)
    assert not torch.equal(m[0].weight, _mlp_ln()[0].weight)


def test_scheduler_and_closure():
    m = _mlp_ln()
    opt = DDCAdam(m, lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    lrs = []
    for _ in range(4):

        def closure():
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(m(X), Y)
            loss.backward()
            return loss

        loss = opt.step(closure)
        assert isinstance(loss, torch.Tensor)
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs == pytest.approx([1e-2, 5e-3, 5e-3, 2.5e-3])


@pytest.mark.parametrize("form", ["coordinate", "split"])
def test_missing_gradient_in_gauge_block(form):
    m = _mlp_ln()
    m[2].weight.requires_grad_(False)  # consumer of pair:0, producer of pair:2
    opt = DDCAdam(m, lr=LR, track_residuals=True, form=form)
    frozen = m[2].weight.detach().clone()
    _train(m, opt, k=2)
    assert torch.equal(m[2].weight, frozen)
    res = opt.gauge_residuals()
    assert "pair:0" not in res and "pair:2" not in res and "norm:5" in res
    assert all(torch.isfinite(p).all() for p in m.parameters())


def test_head_rotation_policy():
    class Att(nn.Module):
        def __init__(self):
            super().__init__()
            self.att = nn.MultiheadAttention(8, 2, batch_first=True)
            self.head = nn.Linear(8, 3)

        def forward(self, x):
            return self.head(self.att(x, x, x, need_weights=False)[0])

    m = Att()
    with pytest.raises(ValueError, match="rotations=False"):
        DDCAdam(m, gauges=[G.HeadRotation("att")], rotations=False)
    opt = DDCAdam(m, rotations=False)
    assert [g.kind for g in opt.gauges] == ["logit_shift"]
    opt = DDCAdam(m)
    assert sorted(g.kind for g in opt.gauges) == ["head_rotation", "logit_shift"]


def test_damped_moves_along_the_orbit_against_a_broken_gauge():
    # an L2 term inside the loss breaks the rescaling gauge: g_V = 2λ(|w_in|² − |w_out|²) ≠ 0.
    # One step: damped = zero followed by the group element exp(δ), sign(δ) = −sign(g_V).
    out = {}
    for mode in ("zero", "damped"):
        m = _mlp_ln()
        with torch.no_grad():
            m[0].weight.mul_(3.0)
            m[0].bias.mul_(3.0)
            m[2].weight.div_(3.0)
        opt = DDCAdam(
            m, lr=5e-2, gauges=[G.Pair("0", "2")], gauge_mode=mode, track_residuals=True
        )
        reg = sum(p.square().sum() for p in m.parameters())
        (F.cross_entropy(m(X), Y) + 1e-1 * reg).backward()
        opt.step()
        out[mode] = (m, opt.gauge_residuals()["pair:0"])
    (mz, gv), (md, _) = out["zero"], out["damped"]
    with torch.no_grad():
        c = md[0].weight.norm(dim=1) / mz[0].weight.norm(dim=1)
        torch.testing.assert_close(md[0].bias, mz[0].bias * c, rtol=1e-12, atol=0)
        torch.testing.assert_close(md[2].weight, mz[2].weight / c, rtol=1e-12, atol=0)
        logc = c.log()
    assert bool((gv > 0).all())  # producer rows too large: the gauge mode pushes them down
    assert bool((logc < -1e-3).all()) and bool((logc >= -5e-2 * (1 + 1e-9)).all())
    # on an exact gauge the damped policy does nothing measurable
    e = _equivariance_error(lambda m: DDCAdam(m, lr=LR, gauge_mode="damped"), {"pair"})
    assert e <= 1e-10


def test_balance_mode_balances():
    m = _mlp_ln()
    with torch.no_grad():
        m[0].weight.mul_(4.0)
        m[0].bias.mul_(4.0)
    opt = DDCAdam(m, lr=1e-3, gauges=[G.Pair("0", "2")], gauge_mode="balance", balance_rate=0.5)
    p0 = (m[0].weight.detach().square().sum(1) + m[0].bias.detach().square()).sqrt()
    gap0 = float((p0.log() - m[2].weight.detach().norm(dim=0).log()).abs().mean())
    _train(m, opt, k=5)
    p1 = (m[0].weight.detach().square().sum(1) + m[0].bias.detach().square()).sqrt()
    gap1 = float((p1.log() - m[2].weight.detach().norm(dim=0).log()).abs().mean())
    assert gap1 < 0.1 * gap0


def test_argument_validation():
    m = _mlp_ln()
    with pytest.raises(ValueError, match="gauge_mode"):
        DDCAdam(m, gauge_mode="free")
    with pytest.raises(ValueError, match="nonfinite"):
        DDCAdam(m, nonfinite="ignore")
    with pytest.raises(ValueError, match="lr"):
        DDCAdam(m, lr=-1.0)
    with pytest.raises(ValueError, match="betas"):
        DDCAdam(m, betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="gauges need the model"):
        DDCAdam(m.parameters(), gauges=[G.Pair("0", "2")])
    with pytest.raises(ValueError, match="positively homogeneous"):
        DDCAdam(
            nn.Sequential(nn.Linear(3, 4), nn.GELU(), nn.Linear(4, 2)), gauges=[G.Pair("0", "2")]
        )
    with pytest.raises(ValueError, match="share a producer"):
        DDCAdam(m, gauges=[G.Pair("0", "2"), G.Pair("0", "2", units=[1, 2])])


class _SwiGLUNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 5)
        self.ln = nn.LayerNorm(5)
        self.w1 = nn.Linear(5, 9)
        self.w2 = nn.Linear(9, 5)
        self.w3 = nn.Linear(5, 9)
        self.head = nn.Linear(5, 4)

    def forward(self, x):
        h = self.ln(self.inp(x))
        return self.head(self.w2(F.silu(self.w1(h)) * self.w3(h)))


@pytest.mark.parametrize("form", ["coordinate", "split"])
@pytest.mark.parametrize("which", ["swiglu", "transformer"])
def test_ddcadam_equivariant_multi_consumer_models(which, form):
    # NormScale read by several layers (SwiGLU gate+up, attention q/k/v), SwiGLU's linear
    # branch, an untraceable root (discovery bottom-up + the logit layer found at run time)
    from deadspec.models_transformer import ModAddTransformer, modadd_data

    torch.manual_seed(0)
    if which == "swiglu":
        m0, x, y = _SwiGLUNet().double(), X, Y
    else:
        m0 = ModAddTransformer(p=7, d_model=8, n_heads=2, layernorm=True).double()
        x, y = modadd_data(7, 40)
    gs = [g for g in G.discover(m0, inputs=x) if g.kind not in ("head_rotation", "chain")]
    assert {g.kind for g in gs} == {"pair", "norm", "logit_shift"}
    els = G.random_elements(m0, gs, torch.Generator().manual_seed(0))

    def train(m, opt):
        for _ in range(K_STEPS):
            opt.zero_grad()
            F.cross_entropy(m(x), y).backward()
            opt.step()

    errs = []
    for make in (
        lambda m: DDCAdam(m, lr=LR, weight_decay=WD, gauges=gs, form=form),
        lambda m: torch.optim.AdamW(m.parameters(), lr=LR, weight_decay=WD),
    ):
        moved, plain = copy.deepcopy(m0), copy.deepcopy(m0)
        G.apply_elements(moved, gs, els)
        train(moved, make(moved))
        train(plain, make(plain))
        G.apply_elements(plain, gs, els)
        errs.append(_rel_err(moved, plain))
    assert errs[0] <= 1e-10 and errs[1] > 1e-3, errs


def test_scales_of_the_pending_decay_equal_the_scales_after_it():
    # DDCAdam reads ρ before writing the decayed parameters (decay folded into the update):
    # the scales must be those of the decayed parameters, group by group.
    m = _mlp_ln()
    F.cross_entropy(m(X), Y).backward()
    groups = [
        {"params": [m[0].weight, m[2].weight], "lr": 0.1, "weight_decay": 0.5},
        {"params": [p for n, p in m.named_parameters() if n not in ("0.weight", "2.weight")],
         "lr": 0.2, "weight_decay": 0.25},
    ]
    opt = DDCAdam(m, params=groups)
    pending = opt._site_scales(pending_decay=True)
    with torch.no_grad():
        for g in opt.param_groups:
            for p in g["params"]:
                p.mul_(1 - g["lr"] * g["weight_decay"])
    after = opt._site_scales()
    assert len(pending) >= 2
    for a, b in zip(pending, after):
        torch.testing.assert_close(a, b, rtol=1e-14, atol=0)


def test_a_producer_outside_the_param_groups_is_not_decayed_in_the_scales():
    # Only the consumer is optimised here: its producer is not stepped (nor decayed), so the
    # scales read before the decay must be the producer's own.
    m = _mlp_ln()
    F.cross_entropy(m(X), Y).backward()
    opt = DDCAdam(m, lr=0.1, weight_decay=0.5, params=[m[2].weight, m[2].bias])
    names = [s.name for s in opt._plan.sites]
    pending, now = opt._site_scales(pending_decay=True), opt._site_scales()
    i0, i2 = names.index("pair:0"), names.index("pair:2")
    torch.testing.assert_close(pending[i0], now[i0], rtol=0, atol=0)  # m[0]: not stepped
    torch.testing.assert_close(pending[i2], 0.95 * now[i2], rtol=1e-14, atol=0)  # m[2]: decayed


def test_empty_parameter_in_a_gauged_model():
    class WithEmpty(nn.Module):
        def __init__(self):
            super().__init__()
            self.mlp = _mlp_ln()
            self.extra = nn.Parameter(torch.empty(3, 0, dtype=torch.float64))

        def forward(self, x):
            return self.mlp(x) + self.extra.sum()

    m = WithEmpty()
    opt = DDCAdam(m, lr=LR, weight_decay=WD)
    _train(m, opt, k=2)
    assert all(torch.isfinite(p).all() for p in m.parameters())


def test_gauge_residuals_need_tracking():
    m = _mlp_ln()
    opt = DDCAdam(m, lr=LR)
    _train(m, opt, k=1)
    with pytest.raises(RuntimeError, match="track_residuals=True"):
        opt.gauge_residuals()


def test_chain_modes_are_the_dct_of_the_layer_log_scale_gradients():
    m0 = _mlp_ln()
    chain = [g for g in G.discover(m0) if g.kind == "chain"]
    assert len(chain) == 1 and len(chain[0].layers) == 3  # 0 -> 2 -> 4

    def modes(m, l2=0.0):
        opt = DDCAdam(m, gauges=chain)
        opt.zero_grad()
        loss = F.cross_entropy(m(X), Y)
        if l2:  # an L2 term on the weights breaks the rescaling symmetry
            loss = loss + l2 * sum(m[i].weight.square().sum() for i in (0, 2, 4))
        loss.backward()
        (c,) = opt.chain_modes().values()
        return c

    c = modes(m0)
    # the definition, written out: ĝ_ℓ = ⟨g_W, W⟩ + Σ_{m≥ℓ} ⟨g_b, b⟩, orthonormal DCT-II
    lay = [m0[i] for i in (0, 2, 4)]
    wd = [float((x.weight.grad * x.weight.detach()).sum()) for x in lay]
    bd = [float((x.bias.grad * x.bias.detach()).sum()) for x in lay]
    ghat = [wd[0] + sum(bd), wd[1] + bd[1] + bd[2], wd[2] + bd[2]]
    assert float(c[0]) == pytest.approx(sum(ghat) / 3**0.5, rel=1e-12)
    # (c_0 is small here too: the chain feeds a LayerNorm, whose input scale is a gauge up to
    # the norm's eps — one of the deferred LayerNorm-input gauges)
    scale = max(abs(v) for v in wd + bd)
    assert float(c[1:].abs().max()) <= 1e-12 * scale  # the gauge modes vanish
    # invariant under the chain (and every other gauge) ...
    moved = copy.deepcopy(m0)
    gs = [g for g in G.discover(m0) if g.kind in ("chain", "pair", "norm")]
    G.apply_elements(moved, gs, G.random_elements(m0, gs, torch.Generator().manual_seed(2)))
    assert torch.allclose(modes(moved), c, rtol=1e-10, atol=1e-12 * scale)
    # ... and they read a broken gauge
    assert float(modes(copy.deepcopy(m0), l2=0.05)[1:].abs().max()) > 1e-3


def test_split_form_with_eps_zero_on_one_element_blocks():
    # a bias-free RMSNorm channel is a one-element producer block: it has no tangent space, its
    # tangential moments stay 0, and with eps = 0 the step must not divide 0 by 0
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(6, 8), nn.RMSNorm(8), nn.Linear(8, 4)).double()
    opt = DDCAdam(m, lr=LR, eps=0.0, form="split")
    assert any(g.kind == "norm" for g in opt.gauges)
    _train(m, opt, k=3)
    for p in m.parameters():
        assert torch.isfinite(p).all()
    assert not torch.equal(m[1].weight, torch.ones(8, dtype=torch.float64))  # radial steps
