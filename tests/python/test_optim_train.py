"""The DDC optimizers train small models to convergence at their default hyper-parameters
(issue #12): DDCAdam (both forms) and DDCMuon on a ReLU MLP, a LayerNorm MLP, a SwiGLU MLP and
the small modular-addition transformer, full batch, float32, generated data. Each run asserts a
finite loss at every step, a low loss at the end, a high train accuracy, and gauge scales ρ
that stay within [1e-3, 1e3]. The slow tests hold issue #12's exact reproduction (2,000 steps
of DDCMuon at weight decays 0, 0.01, 0.1; bench/python/bench_ddc_stability.py prints it)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deadspec.models_transformer import ModAddTransformer, modadd_data
from deadspec.optim import DDCAdam, DDCMuon

pytestmark = pytest.mark.usefixtures("one_thread")

RHO_BOUNDS = (1e-3, 1e3)


def _data(n: int = 512, d: int = 20, k: int = 5, seed: int = 0):
    """Generated classification data: labels ``argmax(x·T + 0.5·noise)`` (bench_ddc_stability)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    t = torch.randn(d, k, generator=g)
    return x, (x @ t + 0.5 * torch.randn(n, k, generator=g)).argmax(1)


class _SwiGLU(nn.Module):
    """ReLU input layer, a SwiGLU block (gate, up → down), a ReLU, a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(20, 32)
        self.gate = nn.Linear(32, 64)
        self.up = nn.Linear(32, 64)
        self.down = nn.Linear(64, 32)
        self.head = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.inp(x))
        return self.head(torch.relu(self.down(F.silu(self.gate(h)) * self.up(h))))


def _model(name: str) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    if name == "relu":  # the model of issue #12
        m = nn.Sequential(
            nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 5)
        )
        return (m, *_data())
    if name == "layernorm":
        m = nn.Sequential(
            nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.LayerNorm(64), nn.Linear(64, 5)
        )
        return (m, *_data())
    if name == "swiglu":
        return (_SwiGLU(), *_data())
    m = ModAddTransformer(p=13, d_model=32, n_heads=2, d_mlp=64)
    return (m, *modadd_data(13))


OPTIMIZERS: dict[str, tuple[Callable[..., torch.optim.Optimizer], int]] = {
    # name: (constructor at the defaults, steps)
    "DDCMuon": (lambda m, **kw: DDCMuon(m, **kw), 300),
    "DDCAdam": (lambda m, **kw: DDCAdam(m, **kw), 300),
    "DDCAdam-split": (lambda m, **kw: DDCAdam(m, form="split", **kw), 600),  # slower radial step
}


def _fit(model: nn.Module, x, y, opt, steps: int) -> dict[str, object]:
    """Full-batch training; the losses, the final accuracy and the range of the live ρ (read
    every 10 steps; dead units have ρ := 1)."""
    losses: list[float] = []
    lo, hi = math.inf, 0.0
    for t in range(steps + 1):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        losses.append(float(loss.detach()))
        if t % 10 == 0 or t == steps:
            for rho in opt.gauge_scales().values():
                lo, hi = min(lo, float(rho.min())), max(hi, float(rho.max()))
        if t == steps:
            break
        loss.backward()
        opt.step()
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).float().mean())
    return {"losses": losses, "acc": acc, "rho": (lo, hi)}


def _assert_trained(r: dict[str, object]) -> None:
    losses = r["losses"]
    assert all(math.isfinite(v) for v in losses), "non-finite loss"
    tail = sorted(losses[-25:])[12]  # median of the last 25 steps: a lone spike is not a failure
    assert tail < 0.1 * losses[0], (losses[0], tail, losses[-25:])
    assert r["acc"] >= 0.95, r["acc"]
    lo, hi = r["rho"]
    assert RHO_BOUNDS[0] <= lo and hi <= RHO_BOUNDS[1], r["rho"]


CASES = [
    pytest.param(
        o, m, marks=[pytest.mark.slow] if (o, m) == ("DDCAdam-split", "modadd") else []
    )
    for o in OPTIMIZERS
    for m in ("relu", "layernorm", "swiglu", "modadd")
]


@pytest.mark.parametrize(("optimizer", "model"), CASES)
def test_trains_at_the_defaults(optimizer: str, model: str) -> None:
    m, x, y = _model(model)
    make, steps = OPTIMIZERS[optimizer]
    # the transformer cannot be traced: DDCMuon is told its head (as docs/ddc.md says)
    opt = make(m, head="unembed") if (optimizer, model) == ("DDCMuon", "modadd") else make(m)
    assert opt.sites, "the model has rescaling sites"  # the gauged path is what is tested
    _assert_trained(_fit(m, x, y, opt, steps))


@pytest.mark.slow
@pytest.mark.parametrize("weight_decay", [0.0, 0.01, 0.1])
def test_issue_12_reproduction(weight_decay: float) -> None:
    """Issue #12: 2,000 steps of ``DDCMuon(model)`` on the ReLU MLP. Before the fix the loss
    reached 4e6 and ρ 8e10 (wd = 0; 9e5 / 3e10 at 0.01, 4e3 / 8e7 at 0.1) while Muon + AdamW
    (``gauges=[]``) reached 0. ρ is bounded by 1e4 here (about 1.3e3 measured after the fix)."""
    m, x, y = _model("relu")
    r = _fit(m, x, y, DDCMuon(m, weight_decay=weight_decay), 2000)
    assert all(math.isfinite(v) for v in r["losses"])
    assert max(r["losses"][1000:]) < 0.1 * r["losses"][0], max(r["losses"][1000:])
    assert r["acc"] >= 0.95, r["acc"]
    assert r["rho"][1] <= 1e4, r["rho"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no gauges": the reference is plain Muon + AdamW
        m, x, y = _model("relu")
        plain = _fit(m, x, y, DDCMuon(m, weight_decay=weight_decay, gauges=[]), 2000)
    assert plain["losses"][-1] < 0.1 * plain["losses"][0]
