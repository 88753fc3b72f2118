"""DDCAdam(form="split") through its bound core plan (optim/_splitplan.py, the C++
DDCSplitPlan): the same trajectory as the per-block path, bit for bit, on every structure it takes
(threads or not); rebuilt or left to the per-block path when the structure moves; the non-finite
policy; clear errors from the core entry points."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import deadspec.gauges as G
from _models import mlp_ln
from deadspec import _core
from deadspec.models import TransformerBlock
from deadspec.optim import DDCAdam
from deadspec.optim._splitplan import SplitCorePlan


def _model(which: str, dtype: torch.dtype) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    if which == "mlp_ln":
        m, x = mlp_ln(), torch.randn(24, 6, generator=g)
    elif which == "wide":  # > 2^18 elements: the plan's passes run on two threads
        m = nn.Sequential(nn.Linear(6, 384), nn.ReLU(), nn.Linear(384, 384), nn.ReLU(),
                          nn.Linear(384, 384), nn.ReLU(), nn.Linear(384, 384), nn.ReLU(),
                          nn.Linear(384, 4))
        x = torch.randn(24, 6, generator=g)
    else:
        m = nn.Sequential(TransformerBlock(16, 4, 32), TransformerBlock(16, 4, 32),
                          nn.Linear(16, 5))
        x = torch.randn(4, 6, 16, generator=g)
    m = m.to(dtype)
    y = torch.randint(0, 4, (x.shape[0],) + x.shape[1:-1], generator=g)
    return m, x.to(dtype), y


def _loss(m, x, y):
    out = m(x)
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))


def _run(m, x, y, make, steps, *, per_block: bool, monkeypatch, hook=None):
    """Parameters, optimizer state and the number of plan steps after ``steps`` steps
    (per_block: the plan switched off)."""
    planned = []
    with monkeypatch.context() as mp:
        if per_block:
            mp.setattr(SplitCorePlan, "build", classmethod(lambda cls, opt: None))
        real = SplitCorePlan.step
        mp.setattr(SplitCorePlan, "step", lambda self: planned.append(1) or real(self))
        opt = make(m)
        for k in range(steps):
            opt.zero_grad()
            _loss(m, x, y).backward()
            if hook is not None:
                hook(k, m, opt)
            opt.step()
    state = [
        (t.clone() if isinstance(t, torch.Tensor) else t)
        for p in m.parameters()
        for t in opt.state[p].values()
    ]
    sites = [
        (t.clone() if isinstance(t, torch.Tensor) else t)
        for s in opt._plan.sites
        for t in s.state.values()
    ]
    return [p.detach().clone() for p in m.parameters()], state + sites, len(planned)


def _equal(a, b) -> bool:
    return len(a) == len(b) and all(
        torch.equal(p, q) if isinstance(p, torch.Tensor) else p == q for p, q in zip(a, b)
    )


def _groups(m):
    params = list(m.parameters())
    return [
        {"params": params[::2], "lr": 3e-2, "weight_decay": 0.1},
        {"params": params[1::2], "lr": 1e-2, "weight_decay": 0.0},
    ]


@pytest.mark.parametrize(
    ("which", "dtype"),
    [(w, d) for w in ("mlp_ln", "transformer") for d in (torch.float64, torch.float32)]
    + [("wide", torch.float32)],
)
def test_plan_equals_per_block_path_bitwise(which, dtype, monkeypatch):
    # pairs, a LayerNorm site, a logit layer (shift-aware decay, centred columns), head rotations
    # (transformer), two threads (wide), param groups with their own lr and decay, the damped
    # policy after the step
    m0, x, y = _model(which, dtype)
    steps = 3 if which == "wide" else 5

    def make(m):
        return DDCAdam(m, params=_groups(m), form="split", gauge_mode="damped")

    ref, sref, n_ref = _run(copy.deepcopy(m0), x, y, make, steps, per_block=True,
                            monkeypatch=monkeypatch)
    got, sgot, n_got = _run(copy.deepcopy(m0), x, y, make, steps, per_block=False,
                            monkeypatch=monkeypatch)
    assert n_ref == 0 and n_got == steps - 1  # (the first step makes the state, per block)
    assert _equal(ref, got) and _equal(sref, sgot)
    assert not _equal(ref, [p.detach() for p in m0.parameters()])  # (it moved)


@pytest.mark.parametrize("which", ["odd", "transformer"])
def test_row_blocks_equal_row_by_row_bitwise(which, monkeypatch):
    # The passes take four rows at a time where a gradient's rows are contiguous, and one row at
    # a time where they are not: gradients with strided columns (the same values) must give the
    # same bits. Row counts that are not multiples of four leave a remainder.
    if which == "odd":
        torch.manual_seed(0)
        m0 = nn.Sequential(nn.Linear(6, 11), nn.ReLU(), nn.Linear(11, 9), nn.ReLU(),
                           nn.Linear(9, 7), nn.ReLU(), nn.Linear(7, 4))
        g = torch.Generator().manual_seed(1)
        x, y = torch.randn(24, 6, generator=g), torch.randint(0, 4, (24,), generator=g)
    else:
        m0, x, y = _model("transformer", torch.float32)

    def strided(k, m, opt):
        for p in m.parameters():
            if p.grad is not None and p.ndim == 2:
                p.grad = p.grad.t().contiguous().t()
                assert p.grad.stride(1) != 1

    def make(m):
        return DDCAdam(m, lr=3e-2, weight_decay=0.1, form="split")

    ref, sref, n_ref = _run(copy.deepcopy(m0), x, y, make, 5, per_block=False,
                            monkeypatch=monkeypatch)
    got, sgot, n_got = _run(copy.deepcopy(m0), x, y, make, 5, per_block=False,
                            monkeypatch=monkeypatch, hook=strided)
    assert n_ref == n_got == 4
    assert _equal(ref, got) and _equal(sref, sgot)
    assert not _equal(ref, [p.detach() for p in m0.parameters()])


def test_plan_follows_the_structure_when_it_moves(monkeypatch):
    # a site that cannot be split at first (a producer without a gradient: no radial state), a
    # parameter whose storage is replaced, an lr changed between steps, a state loaded from a
    # state dict, units of a partial gauge
    m0, x, y = _model("mlp_ln", torch.float64)
    gauges = [G.Pair("0", "2", activation="relu", units=[0, 2, 5, 7]), G.Pair("2", "4"),
              G.NormScale("5", "6")]

    def hook(k, m, opt):
        if k == 0:
            m[0].weight.grad = None
        if k == 2:
            m[2].weight.data = m[2].weight.data.clone()
            opt.param_groups[0]["lr"] = 0.02
        if k == 4:
            m[4].bias.grad = None
        if k == 5:
            opt.load_state_dict(copy.deepcopy(opt.state_dict()))

    def make(m):
        return DDCAdam(m, lr=1e-2, weight_decay=0.1, gauges=gauges, form="split")

    ref, sref, _ = _run(copy.deepcopy(m0), x, y, make, 8, per_block=True,
                        monkeypatch=monkeypatch, hook=hook)
    got, sgot, n_got = _run(copy.deepcopy(m0), x, y, make, 8, per_block=False,
                            monkeypatch=monkeypatch, hook=hook)
    # steps 0 and 1 per block (no state; then the first site gets its radial moments)
    assert n_got == 6
    assert _equal(ref, got) and _equal(sref, sgot)


def test_plan_refuses_what_overflows_as_the_per_block_path(monkeypatch):
    # a gradient whose second moment overflows float32: refused (kept), then the policy
    m0, x, y = _model("mlp_ln", torch.float32)

    def hook(k, m, opt):
        if k == 2:
            m[2].weight.grad[1, 3] = 3e30

    def make(m):
        return DDCAdam(m, lr=1e-2, form="split", nonfinite="skip")

    with pytest.warns(RuntimeWarning, match=r"coordinate\(s\) whose new value or moments "
                      r"overflowed in '2.weight'"):
        ref, sref, _ = _run(copy.deepcopy(m0), x, y, make, 4, per_block=True,
                            monkeypatch=monkeypatch, hook=hook)
    with pytest.warns(RuntimeWarning, match=r"overflowed in '2.weight'"):
        got, sgot, n_got = _run(copy.deepcopy(m0), x, y, make, 4, per_block=False,
                                monkeypatch=monkeypatch, hook=hook)
    assert n_got == 3 and _equal(ref, got) and _equal(sref, sgot)
    assert all(torch.isfinite(p).all() for p in got)


def test_plan_nonfinite_gradient_policy():
    m, x, y = _model("mlp_ln", torch.float64)
    opt = DDCAdam(m, lr=1e-2, form="split")
    for _ in range(2):
        opt.zero_grad()
        _loss(m, x, y).backward()
        opt.step()
    assert opt._split_plan is not None
    before = [p.detach().clone() for p in m.parameters()]
    state = copy.deepcopy(opt.state_dict())
    m[2].weight.grad[1, 3] = float("nan")
    with pytest.raises(RuntimeError, match=r"deadspec.DDCAdam.step: gradients must be finite, "
                       r"got NaN/Inf in '2.weight'"):
        opt.step()
    opt.nonfinite = "skip"
    m[2].weight.grad[1, 3] = float("inf")
    with pytest.warns(RuntimeWarning, match="step skipped"):
        opt.step()
    assert _equal(before, [p.detach() for p in m.parameters()])
    after = opt.state_dict()
    assert _equal(
        [t for s in state["state"].values() for t in s.values()],
        [t for s in after["state"].values() for t in s.values()],
    )


def _capsules(shape=(3, 4), dtype=torch.float32):
    p, m, v = (torch.zeros(shape, dtype=dtype) for _ in range(3))
    step = torch.zeros((), dtype=torch.float32)
    return [p, m, v, step], {
        "param": p.__dlpack__(), "exp_avg": m.__dlpack__(), "exp_avg_sq": v.__dlpack__(),
        "step": step.__dlpack__(),
    }


def test_core_split_plan_entry_point_errors():
    keep, block = _capsules()
    with pytest.raises(ValueError, match=r"^deadspec.DDCSplitPlan: block 0 needs 'step'"):
        _core.DDCSplitPlan([{k: v for k, v in block.items() if k != "step"}], [], [])
    keep, block = _capsules()
    block["row_site"] = 0
    with pytest.raises(ValueError, match=r"^deadspec.DDCSplitPlan: site 0 must name its "
                       r"weight's block"):
        _core.DDCSplitPlan([block], [{"consumers": []}], [0])
    keep, block = _capsules()
    other, b64 = _capsules(dtype=torch.float64)
    with pytest.raises(ValueError, match=r"^deadspec.DDCSplitPlan: block 1 param must be a "
                       r"non-empty 1-D or 2-D float32 tensor \(the plan's dtype\), got float64"):
        _core.DDCSplitPlan([block, b64], [], [])
    keep, block = _capsules()
    plan = _core.DDCSplitPlan([block], [], [])
    group = (1e-3, 0.9, 0.999, 1e-8, 0.0)
    with pytest.raises(ValueError, match=r"^deadspec.DDCSplitPlan: grads\[0\] must have the "
                       r"shape of param \(3, 4\), got \(4, 3\)"):
        plan.check([torch.zeros(4, 3).__dlpack__()], [group])
    with pytest.raises(RuntimeError, match=r"^deadspec.DDCSplitPlan: step needs check"):
        plan.step([])
    with pytest.raises(ValueError, match=r"^deadspec.DDCSplitPlan: groups\[0\] must have "
                       r"lr·weight_decay in \[0, 2\]"):
        plan.check([torch.ones(3, 4).__dlpack__()], [(1.0, 0.9, 0.999, 1e-8, 3.0)])
    g = torch.ones(3, 4)
    g[2, 1] = float("nan")
    assert plan.check([g.__dlpack__()], [group]) == 0
    assert plan.check([torch.ones(3, 4).__dlpack__()], [group]) == -1
    assert plan.step([]) == ([0], [])
    assert float(keep[3]) == 1.0 and not torch.equal(keep[0], torch.zeros(3, 4))


def test_core_split_units_errors_and_values():
    h = 3
    q, g_in, n2, g_out, g_only, m, v = (torch.zeros(h, dtype=torch.float64) for _ in range(7))
    q.fill_(1.0)
    g_in.copy_(torch.tensor([1.0, -2.0, 0.5]))
    out = torch.empty(9, h, dtype=torch.float64)

    def args():  # (a capsule is consumed once)
        return {k: t.__dlpack__() for k, t in
                {"q": q, "g_in": g_in, "n2": n2, "g_out": g_out, "g_only": g_only,
                 "exp_avg": m, "exp_avg_sq": v, "out": out}.items()}

    assert _core.ddc_split_units({**args(), "step": 1, "beta1": 0.9, "beta2": 0.99, "eps": 0.0,
                                  "lrs": [0.1], "units": [0, 2]}) == 0
    # unit 1 is outside the gauge: dead; the live ones take a full first radial Adam step
    assert out[0].tolist() == [1.0, 0.0, 1.0]
    assert torch.allclose(out[4], torch.tensor([-1.0, 0.0, -1.0], dtype=torch.float64) / 2**0.5)
    assert torch.allclose(out[8], torch.exp(0.1 * out[4]))
    with pytest.raises(ValueError, match=r"^deadspec.ddc_split_units: out must be a writable "
                       r"contiguous float64 tensor of shape \(8, 3\), got float64 of shape "
                       r"\(9, 3\)"):
        _core.ddc_split_units({**args(), "step": 1})
    with pytest.raises(ValueError, match=r"^deadspec.ddc_split_units: units must be distinct"):
        _core.ddc_split_units({**args(), "step": 1, "lrs": [0.1], "units": [1, 1]})


_ISA_SCRIPT = r"""
import sys
import torch
import torch.nn.functional as F
from torch import nn
from deadspec.models import TransformerBlock
from deadspec.optim import DDCAdam

out = {}
for name in ("mlp", "transformer"):
    for dtype in (torch.float32, torch.float64):
        torch.manual_seed(0)
        g = torch.Generator().manual_seed(1)
        if name == "mlp":  # rows of 70 and 67 columns: whole lanes and a tail
            m = nn.Sequential(nn.Linear(6, 70), nn.ReLU(), nn.Linear(70, 67), nn.ReLU(),
                              nn.Linear(67, 4))
            x = torch.randn(24, 6, generator=g)
        else:  # head rotations, a logit layer
            m = nn.Sequential(TransformerBlock(16, 4, 32), nn.Linear(16, 5))
            x = torch.randn(4, 6, 16, generator=g)
        m, x = m.to(dtype), x.to(dtype)
        y = torch.randint(0, 4, x.shape[:-1], generator=g)
        opt = DDCAdam(m, lr=1e-2, weight_decay=0.1, form="split")
        for _ in range(4):
            opt.zero_grad()
            o = m(x)
            F.cross_entropy(o.reshape(-1, o.shape[-1]), y.reshape(-1)).backward()
            opt.step()
        assert opt._split_plan is not None
        state = [t for p in m.parameters() for t in opt.state[p].values()]
        state += [t for s in opt._plan.sites for t in s.state.values()
                  if isinstance(t, torch.Tensor)]
        out[f"{name} {dtype}"] = [p.detach() for p in m.parameters()] + state
torch.save(out, sys.argv[1])
"""


def test_split_passes_are_bitwise_the_same_on_every_instruction_set(tmp_path):
    # The passes pick AVX2 or AVX-512 loops at run time (fused multiply-adds on the float32 row
    # sums' exact products, 32 partial sums per row in a fixed order): every ISA must round
    # exactly as the baseline loops.
    import os
    import subprocess
    import sys

    res = {}
    for isa in ("baseline", "avx2", "auto"):
        env = dict(os.environ, DEADSPEC_DDC_ISA=isa)
        f = tmp_path / f"{isa}.pt"
        subprocess.run([sys.executable, "-c", _ISA_SCRIPT, str(f)], env=env, check=True)
        res[isa] = torch.load(f)
    for isa in ("avx2", "auto"):
        for key, tensors in res["baseline"].items():
            assert len(tensors) == len(res[isa][key])
            for a, b in zip(tensors, res[isa][key]):
                assert torch.equal(a, b), (isa, key)
