"""DDC optimizers as torch users hold them: plain parameters with gauges, torch's options
(maximize, foreach, and the refused ones), and a torch.compile d model (training and reading)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import deadspec
import deadspec.gauges as G
from deadspec.monitor import DeadDirectionMonitor
from deadspec.optim import DDCAdam, DDCMuon

STEPS = 4


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 7), nn.ReLU(), nn.Linear(7, 3)
    ).double()


def _data(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(24, 5, generator=g, dtype=torch.float64), torch.randint(
        0, 3, (24,), generator=g
    )


def _train(make_opt, *, sign: float = 1.0, model=None, steps: int = STEPS, l2: float = 0.0):
    """Parameters after ``steps`` steps on ``sign * (cross-entropy + l2·|θ|²)``."""
    m = _mlp() if model is None else model
    x, y = _data()
    opt = make_opt(m)
    x = x.to(next(m.parameters()).dtype)
    for _ in range(steps):
        opt.zero_grad()
        loss = F.cross_entropy(m(x), y)
        if l2:
            loss = loss + l2 * sum(p.square().sum() for p in m.parameters())
        (sign * loss).backward()
        opt.step()
    return [p.detach().clone() for p in m.parameters()], opt


def _same(a, b) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a, b))


# ------------------------------------------------------------------ plain parameters + gauges
@pytest.mark.parametrize(
    "kw",
    [
        {"lr": 1e-2, "weight_decay": 0.1},
        {"lr": 1e-2, "form": "split"},
        {"lr": 1e-2, "gauge_mode": "damped"},
    ],
    ids=["coordinate", "split", "damped"],
)
def test_ddcadam_plain_parameters_with_bound_gauges_equal_model_form(kw):
    ref, oref = _train(lambda m: DDCAdam(m, gauges=G.discover(m), **kw), l2=1e-3)
    got, opt = _train(
        lambda m: DDCAdam(m.parameters(), gauges=G.bind(G.discover(m), m), **kw), l2=1e-3
    )
    assert _same(ref, got)
    assert len(opt.sites) == len(oref.sites) == 2
    # named parameters name the sites as the model does (and so the state)
    named, onamed = _train(
        lambda m: DDCAdam(m.named_parameters(), gauges=G.bind(G.discover(m), m), **kw), l2=1e-3
    )
    assert _same(ref, named)
    assert onamed.sites == oref.sites == ["pair:0", "pair:2"]
    assert list(onamed.state_dict()["ddc"]["sites"]) == list(oref.state_dict()["ddc"]["sites"])


def test_ddcadam_param_groups_and_declared_module_gauges():
    def groups(m):
        return [
            {"params": [m[0].weight, m[2].weight, m[4].weight], "weight_decay": 0.1},
            {"params": [m[0].bias, m[2].bias, m[4].bias], "weight_decay": 0.0},
        ]

    def declared(m):
        return [
            G.Pair(m[0], m[2], activation="relu"),
            G.Pair(m[2], m[4], activation="relu"),
            G.LogitShift(m[4]),
        ]

    named = [G.Pair("0", "2"), G.Pair("2", "4"), G.LogitShift("4")]
    ref, _ = _train(lambda m: DDCAdam(m, lr=1e-2, gauges=named, params=groups(m)))
    with pytest.warns(UserWarning, match="could not trace the model"):  # the LogitShift
        got, opt = _train(lambda m: DDCAdam(groups(m), lr=1e-2, gauges=declared(m)))
    assert _same(ref, got)
    assert opt.sites == ["pair:linear0", "pair:linear1"]  # unnamed parameters


def test_ddcmuon_plain_parameters_with_bound_gauges_equal_model_form():
    ref, oref = _train(lambda m: DDCMuon(m, gauges=G.discover(m), adamw_lr=1e-2))
    got, opt = _train(
        lambda m: DDCMuon(m.parameters(), gauges=G.bind(G.discover(m), m), adamw_lr=1e-2)
    )
    assert _same(ref, got)
    # the head (the LogitShift layer) is on the AdamW path in both forms
    assert [len(g["params"]) for g in opt.param_groups] == [2, 4]
    assert [g["use_muon"] for g in opt.param_groups] == [g["use_muon"] for g in oref.param_groups]


def test_gauge_names_without_the_model_are_refused():
    m = _mlp()
    with pytest.raises(ValueError, match=r"gauges need the model.*deadspec\.gauges\.bind"):
        DDCAdam(m.parameters(), gauges=G.discover(m))
    with pytest.raises(ValueError, match="gauges need the model"):
        DDCMuon(m.parameters(), gauges=[G.Pair(m[0], "2")])
    with pytest.raises(ValueError, match="head must be 'auto' or None with plain parameters"):
        DDCMuon(m.parameters(), gauges=G.bind(G.discover(m), m), head="4")
    with pytest.raises(TypeError, match="must reference modules"):
        DDCAdam(m.parameters(), gauges=[G.LogitShift(3)])


def test_bind_holds_the_modules():
    m = _mlp()
    bound = G.bind(G.discover(m), m)
    pair = next(g for g in bound if isinstance(g, G.Pair))
    assert pair.producer is m[0] and pair.consumer is m[2]
    assert [g.bind(m) for g in bound] == [g.bind(m) for g in G.discover(m)]
    with pytest.raises(TypeError, match="deadspec.bind: model must be an nn.Module"):
        G.bind(bound, [m])


# ------------------------------------------------------------------ torch options
@pytest.mark.parametrize(
    "make",
    [
        lambda m, **k: DDCAdam(m, lr=1e-2, weight_decay=0.1, **k),  # C++ fused blocks
        lambda m, **k: DDCAdam(m, lr=1e-2, gauges=[], **k),  # torch's multi-tensor AdamW
        lambda m, **k: DDCAdam(m, lr=1e-2, form="split", **k),
        lambda m, **k: DDCAdam(m, lr=1e-2, foreach=False, gauge_mode="damped", **k),
        lambda m, **k: DDCAdam(m.float(), lr=1e-2, track_residuals=True, **k),  # float32
        lambda m, **k: DDCMuon(m, adamw_lr=1e-2, weight_decay=0.1, **k),
    ],
    ids=["fused", "adamw", "split", "per-block-damped", "float32", "muon"],
)
def test_maximize_equals_minimising_the_negated_loss(make):
    ref, _ = _train(lambda m: make(m), sign=-1.0, l2=1e-3)
    got, opt = _train(lambda m: make(m, maximize=True), l2=1e-3)
    assert _same(ref, got)
    assert opt.maximize
    # the gradients are left as backward made them
    m = opt.param_groups[0]["params"][0]
    before = m.grad.clone()
    opt.step()
    assert torch.equal(m.grad, before)
    assert not _same(ref, _train(lambda m: make(m), l2=1e-3)[0])  # the sign matters


def test_foreach_false_takes_the_per_block_path():
    ref, _ = _train(lambda m: DDCAdam(m, lr=1e-2, weight_decay=0.1))
    got, opt = _train(lambda m: DDCAdam(m, lr=1e-2, weight_decay=0.1, foreach=False))
    assert opt.foreach is False
    for p, q in zip(ref, got):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)
    got, _ = _train(lambda m: DDCAdam(m, lr=1e-2, gauges=[], foreach=False))
    plain, _ = _train(lambda m: torch.optim.AdamW(m.parameters(), lr=1e-2, foreach=False,
                                                  weight_decay=0.0))
    assert _same(got, plain)


@pytest.mark.parametrize("option", ["fused", "capturable", "differentiable", "amsgrad"])
def test_unsupported_torch_options_raise(option):
    m = _mlp()
    with pytest.raises(NotImplementedError, match=f"deadspec.DDCAdam: {option}=True"):
        DDCAdam(m, **{option: True})
    if option != "amsgrad":
        with pytest.raises(NotImplementedError, match=f"deadspec.DDCMuon: {option}=True"):
            DDCMuon(m, **{option: True})
    DDCAdam(m, **{option: None if option == "fused" else False})  # the off value is accepted


def test_torch_option_values_are_checked():
    m = _mlp()
    with pytest.raises(ValueError, match=r"deadspec.DDCAdam: foreach must be one of"):
        DDCAdam(m, foreach="yes")
    with pytest.raises(ValueError, match=r"deadspec.DDCMuon: maximize must be one of"):
        DDCMuon(m, maximize=1)
    with pytest.raises(NotImplementedError, match="foreach=True.*no multi-tensor path"):
        DDCMuon(m, foreach=True)


# ------------------------------------------------------------------ torch.compile
def test_compiled_model_trains_and_is_read_like_the_uncompiled_one(one_thread):
    x, y = _data()
    eager, compiled = _mlp().float(), torch.compile(_mlp().float())
    x = x.float()
    opts = [DDCAdam(m, lr=1e-2, weight_decay=0.1) for m in (eager, compiled)]
    assert opts[1].sites == opts[0].sites == ["pair:0", "pair:2"]  # not "_orig_mod.0"
    assert [g.describe() for g in opts[1].gauges] == [g.describe() for g in opts[0].gauges]
    mons = [DeadDirectionMonitor(m, inputs=x, targets=y) for m in (eager, compiled)]
    for step in range(STEPS):
        for m, opt, mon in zip((eager, compiled), opts, mons):
            opt.zero_grad()
            F.cross_entropy(m(x), y).backward()
            opt.step()
            mon.step(step)
    for p, q in zip(eager.parameters(), compiled.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)  # compiled round-off
    ra, rb = mons[0].records(), mons[1].records()
    assert [(r["step"], r["layer"], r["side"]) for r in rb] == [
        (r["step"], r["layer"], r["side"]) for r in ra
    ]
    assert {r["layer"] for r in rb} == {"0", "2", "4"}
    for a, b in zip(ra, rb):
        assert a["active"] == b["active"]
        assert math.isclose(a["logdet_plus"], b["logdet_plus"], rel_tol=1e-3, abs_tol=1e-3)
    # at the same parameters a reading of the compiled model is the uncompiled one's
    again = torch.compile(eager)
    r1 = deadspec.read(again, x, targets=y).to_records()
    r0 = deadspec.read(eager, x, targets=y).to_records()
    assert len(r1) == len(r0) == 6
    for a, b in zip(r0, r1):
        assert a.keys() == b.keys()
        for k in a:
            same_nan = isinstance(a[k], float) and math.isnan(a[k]) and math.isnan(b[k])
            assert same_nan or a[k] == b[k], k
    assert G.discover(again) == G.discover(eager)
