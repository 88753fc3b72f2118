"""DDCAdam's bound core plan (optim/_coreplan.py, the C++ DDCAdamPlan): the same trajectory as
the per-block path, bit for bit, on every structure it takes; rebuilt when the structure moves;
the non-finite policy; clear errors from the core entry point."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import deadspec
import deadspec.gauges as G
from _models import mlp_ln
from deadspec import _core
from deadspec.models import TransformerBlock
from deadspec.optim import DDCAdam
from deadspec.optim._coreplan import CorePlan


class Conv1D(nn.Module):
    """Hugging Face's Conv1D layout (``y = x @ W + b``, W stored in × out)."""

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.randn(nx, nf) * 0.3)
        self.bias = nn.Parameter(torch.randn(nf) * 0.1)

    def forward(self, x):
        return x @ self.weight + self.bias


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 9)
        self.proj = Conv1D(5, 9)  # consumes inp's units along its stored rows
        self.head = nn.Linear(5, 4)

    def forward(self, x):
        return self.head(torch.relu(self.proj(torch.relu(self.inp(x)))))


def _transformer() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(TransformerBlock(16, 4, 32), TransformerBlock(16, 4, 32), nn.Linear(16, 5))


def _model(which: str, dtype: torch.dtype) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    if which == "mlp_ln":
        m, x = mlp_ln(), torch.randn(24, 6, generator=g)
    elif which == "conv1d":
        m, x = ConvNet(), torch.randn(24, 6, generator=g)
    else:
        m, x = _transformer(), torch.randn(4, 6, 16, generator=g)
    m = m.to(dtype)
    y = torch.randint(0, 4, (x.shape[0],) + x.shape[1:-1], generator=g)
    return m, x.to(dtype), y


def _loss(m, x, y):
    out = m(x)
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))


def _run(m, x, y, make, steps, *, per_block: bool, monkeypatch, hook=None):
    """Parameters and optimizer state after ``steps`` steps (per_block: the plan switched off)."""
    with monkeypatch.context() as mp:
        if per_block:
            mp.setattr(CorePlan, "build", classmethod(lambda cls, opt: None))
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
    return [p.detach().clone() for p in m.parameters()], state, opt


def _equal(a, b) -> bool:
    return len(a) == len(b) and all(
        torch.equal(p, q) if isinstance(p, torch.Tensor) else p == q for p, q in zip(a, b)
    )


@pytest.mark.filterwarnings("ignore:deadspec.Pair. could not verify")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("which", ["mlp_ln", "transformer", "conv1d"])
def test_plan_equals_per_block_path_bitwise(which, dtype, monkeypatch):
    # pairs, a LayerNorm site, a logit layer (shift-aware decay), head rotations (transformer),
    # a Conv1D consumer (rows indexed by the units), param groups with their own lr and decay
    m0, x, y = _model(which, dtype)

    def make(m):
        params = list(m.parameters())
        groups = [
            {"params": params[::2], "lr": 3e-2, "weight_decay": 0.1},
            {"params": params[1::2], "lr": 1e-2, "weight_decay": 0.0},
        ]
        # (the Conv1D pair is declared: discovery does not trace through x @ W)
        gauges = [G.Pair("inp", "proj", activation="relu")] if which == "conv1d" else None
        return DDCAdam(m, params=groups, track_residuals=True, gauges=gauges)

    ref, sref, oref = _run(copy.deepcopy(m0), x, y, make, 4, per_block=True,
                           monkeypatch=monkeypatch)
    got, sgot, opt = _run(copy.deepcopy(m0), x, y, make, 4, per_block=False,
                          monkeypatch=monkeypatch)
    assert opt._core_plan is not None and oref._core_plan is None
    assert _equal(ref, got) and _equal(sref, sgot)
    assert not _equal(ref, [p.detach() for p in m0.parameters()])  # (it moved)
    for k, v in oref.gauge_residuals().items():
        assert torch.equal(v, opt.gauge_residuals()[k])


def test_plan_rebuilds_when_the_structure_moves(monkeypatch):
    # a parameter without a gradient at first, a parameter whose storage is replaced, a state
    # loaded from a state dict, an lr changed between steps, units of a partial gauge
    m0, x, y = _model("mlp_ln", torch.float64)
    gauges = [G.Pair("0", "2", activation="relu", units=[0, 2, 5, 7]), G.NormScale("5", "6")]

    def hook(k, m, opt):
        if k == 0:
            m[0].weight.grad = None
        if k == 2:
            m[2].weight.data = m[2].weight.data.clone()
            opt.param_groups[0]["lr"] = 0.02
        if k == 3:
            opt.load_state_dict(copy.deepcopy(opt.state_dict()))

    def make(m):
        return DDCAdam(m, lr=1e-2, weight_decay=0.1, gauges=gauges)

    ref, sref, _ = _run(copy.deepcopy(m0), x, y, make, 6, per_block=True,
                        monkeypatch=monkeypatch, hook=hook)
    got, sgot, opt = _run(copy.deepcopy(m0), x, y, make, 6, per_block=False,
                          monkeypatch=monkeypatch, hook=hook)
    assert opt._core_plan is not None
    assert _equal(ref, got) and _equal(sref, sgot)


def test_plan_nonfinite_gradient_policy():
    m, x, y = _model("mlp_ln", torch.float64)
    opt = DDCAdam(m, lr=1e-2)
    for _ in range(2):
        opt.zero_grad()
        _loss(m, x, y).backward()
        opt.step()
    assert opt._core_plan is not None
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
    assert _equal(
        [t for s in state["state"].values() for t in s.values()],
        [t for s in opt.state_dict()["state"].values() for t in s.values()],
    )


@pytest.mark.parametrize("nonfinite", ["skip", "raise"])
def test_plan_overflow_in_one_row_range_matches_the_per_block_path(nonfinite, monkeypatch):
    # a producer of 1100 rows is stepped in the ρ pass by row ranges (128 rows of 256 columns),
    # each screened over its own rows' σ: one weight near float32's largest value makes its
    # row's ρ, σ and g̃² overflow there only; the coordinates refused, their kept values and
    # the policy's message must be the per-block path's (whose screen is the whole block's).
    # 290 k elements: the plan's passes run on two threads (from 2^18).
    torch.manual_seed(0)
    m0 = nn.Sequential(nn.Linear(256, 1100), nn.ReLU(), nn.Linear(1100, 8))
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 256, generator=g), torch.randint(0, 8, (16,), generator=g)
    deadspec.set_num_threads(2)
    try:
        _overflow_case(m0, x, y, nonfinite, monkeypatch)
    finally:
        deadspec.set_num_threads("auto")


def _overflow_case(m0, x, y, nonfinite, monkeypatch):
    def hook(k, m, opt):
        if k == 1:
            with torch.no_grad():
                m[0].weight[3, 5] = 3.0e38

    def make(m):
        return DDCAdam(m, lr=1e-2, weight_decay=0.1, nonfinite=nonfinite)

    def run(per_block):
        if nonfinite == "skip":
            with pytest.warns(RuntimeWarning, match=r"overflowed in '0.weight' \(\d+\)"):
                return _run(copy.deepcopy(m0), x, y, make, 2, per_block=per_block,
                            monkeypatch=monkeypatch, hook=hook)
        with pytest.raises(RuntimeError, match=r"overflowed in '0.weight' \(\d+\)") as err:
            _run(copy.deepcopy(m0), x, y, make, 2, per_block=per_block,
                 monkeypatch=monkeypatch, hook=hook)
        return str(err.value)

    ref, got = run(True), run(False)
    if nonfinite == "raise":
        assert ref == got
        return
    assert got[2]._core_plan is not None and ref[2]._core_plan is None
    assert _equal(ref[0], got[0]) and _equal(ref[1], got[1])
    assert float(got[0][0][3, 5]) == float(torch.tensor(3.0e38))  # (refused: kept)


def _capsules(shape=(3, 4), dtype=torch.float32):
    p, m, v = (torch.zeros(shape, dtype=dtype) for _ in range(3))
    step = torch.zeros((), dtype=torch.float32)
    return [p, m, v, step], {
        "param": p.__dlpack__(), "exp_avg": m.__dlpack__(), "exp_avg_sq": v.__dlpack__(),
        "step": step.__dlpack__(),
    }


def test_core_plan_entry_point_errors():
    keep, block = _capsules()
    with pytest.raises(ValueError, match=r"^deadspec.DDCAdamPlan: block 0 needs 'step'"):
        _core.DDCAdamPlan([{k: v for k, v in block.items() if k != "step"}], [], [])
    keep, block = _capsules()
    block["step"] = torch.zeros(2).__dlpack__()
    with pytest.raises(ValueError, match=r"^deadspec.DDCAdamPlan: block 0 step must be a "
                       r"writable float32 CPU scalar, got float32 of shape \(2,\)"):
        _core.DDCAdamPlan([block], [], [])
    keep, block = _capsules()
    block["row_site"] = 0
    w = torch.ones(5, 2)
    with pytest.raises(ValueError, match=r"^deadspec.DDCAdamPlan: block 0 must have one row per "
                       r"unit of its row site"):
        _core.DDCAdamPlan([block], [{"weight": w.__dlpack__()}], [0])
    with pytest.raises(ValueError, match=r"^deadspec.DDCAdamPlan: site 0 units must be distinct"):
        _core.DDCAdamPlan([], [{"weight": w.__dlpack__(), "units": [1, 1]}], [0])
    with pytest.raises(ValueError, match=r"^deadspec.DDCAdamPlan: site 0 has an unknown entry"):
        _core.DDCAdamPlan([], [{"weight": w.__dlpack__(), "unit": [1]}], [0])
    keep, block = _capsules()
    plan = _core.DDCAdamPlan([block], [], [])
    with pytest.raises(ValueError, match=r"^deadspec.DDCAdamPlan: grads\[0\] must have the shape "
                       r"of param \(3, 4\), got \(4, 3\)"):
        plan.check([torch.zeros(4, 3).__dlpack__()])
    with pytest.raises(RuntimeError, match=r"^deadspec.DDCAdamPlan: step needs check"):
        plan.step([(1e-3, 0.9, 0.999, 1e-8, 0.0)], True)
    assert plan.check([torch.ones(3, 4).__dlpack__()]) == -1
    with pytest.raises(ValueError, match=r"^deadspec.DDCAdamPlan: groups\[0\].lr must be finite"):
        plan.step([(float("nan"), 0.9, 0.999, 1e-8, 0.0)], True)
    g = torch.ones(3, 4)
    g[2, 1] = float("nan")
    assert plan.check([g.__dlpack__()]) == 0
    assert plan.check([torch.full((3, 4), -2.0).__dlpack__()]) == -1
    assert plan.grad_max(0) == 2.0
    refused, kept = plan.step([(1e-3, 0.9, 0.999, 1e-8, 0.0)], True)
    assert refused == [0] and kept == [False] and float(keep[3]) == 1.0
