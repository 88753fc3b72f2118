"""The detection experiment's pieces: the gauge-invariant approach parameter, a planted dead
cluster that must read, the readable-cell rule and the verdict."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from deadspec.experiments import _lm, detection  # noqa: E402 - after the importorskip gate
from deadspec.monitor import DeadDirectionMonitor  # noqa: E402

DEAD = [3, 11, 20]  # the planted dead units of block 0


def _model(seed=0):
    torch.manual_seed(seed)
    return _lm.TinyLM(20, 8, d_model=8, n_heads=2, n_layers=1).double().eval()


def _probe(n=16):
    return torch.randint(0, 20, (n, 8), generator=torch.Generator().manual_seed(5))


def _gauge(model, rng, strength=2.0):
    """A random ReLU-unit and LayerNorm gauge element on block 0 (function unchanged)."""
    mlp, ln = model.blocks[0].mlp, model.blocks[0].ln2
    h, d = mlp.fc_in.weight.shape
    c = torch.from_numpy(np.exp(rng.uniform(-strength, strength, h)))
    s = torch.from_numpy(np.exp(rng.uniform(-strength, strength, d)))
    with torch.no_grad():
        mlp.fc_in.weight.mul_(c[:, None])
        mlp.fc_in.bias.mul_(c)
        mlp.fc_out.weight.div_(c[None, :])
        ln.weight.mul_(s)
        ln.bias.mul_(s)
        mlp.fc_in.weight.div_(s[None, :])


def test_unit_sizes_are_gauge_invariant_and_the_weight_norms_are_not():
    model, x = _model(), _probe()
    before = detection.unit_sizes(model, x)[0]
    out0 = model(x)
    w0 = torch.linalg.vector_norm(model.blocks[0].mlp.fc_in.weight.detach(), dim=1)
    _gauge(model, np.random.default_rng(1))
    torch.testing.assert_close(model(x), out0, rtol=1e-10, atol=1e-10)  # the function is kept
    np.testing.assert_allclose(detection.unit_sizes(model, x)[0], before, rtol=1e-10)
    w1 = torch.linalg.vector_norm(model.blocks[0].mlp.fc_in.weight.detach(), dim=1)
    assert float((w1 / w0).max() / (w1 / w0).min()) > 5  # raw norms move along the orbit


def test_approach_from_units_picks_the_smallest_at_the_end():
    units = np.array([[1.0, 2.0, 3.0], [1.0, 0.5, 3.0], [2.0, 0.25, 0.1]])
    np.testing.assert_allclose(
        detection.approach_from_units(units, 2), np.sqrt(units[:, 1] ** 2 + units[:, 2] ** 2)
    )
    assert np.isnan(detection.approach_from_units(units, 0)).all()


def _planted_run(gauge: str):
    """Three units of block 0 shrink as t = 0.5**k (incoming and outgoing weights together),
    read at 12 checkpoints. ``gauge``: ``"none"``; ``"random"``, a fresh random gauge element
    (strength 0.5) before each reading; ``"drift"``, the dead units' incoming weights × e^{0.3k}
    and outgoing ÷ e^{0.3k}, a steady drift along their orbits (the function, and every
    gauge-invariant number, is unchanged either way)."""
    model, x = _model(), _probe()
    y = torch.randint(0, 20, x.shape, generator=torch.Generator().manual_seed(6))
    mlp, ln = model.blocks[0].mlp, model.blocks[0].ln2
    start = [t.detach().clone() for t in (mlp.fc_in.weight, mlp.fc_in.bias, mlp.fc_out.weight,
                                          ln.weight, ln.bias)]  # fmt: skip
    mon = DeadDirectionMonitor(
        model, ["blocks.0.mlp.act", "blocks.0.mlp.fc_out"], inputs=x, targets=y, fisher=False,
        approach={"blocks.0.mlp.act": "blocks.0.mlp.fc_in"},
    )  # fmt: skip
    rng, units = np.random.default_rng(2), []
    for k in range(2, 14):
        t = 0.5**k
        c = math.exp(0.3 * k) if gauge == "drift" else 1.0
        with torch.no_grad():
            for param, value in zip((mlp.fc_in.weight, mlp.fc_in.bias, mlp.fc_out.weight,
                                     ln.weight, ln.bias), start):  # fmt: skip
                param.copy_(value)
            mlp.fc_in.weight[DEAD] *= t * c
            mlp.fc_in.bias[DEAD] *= t * c
            mlp.fc_out.weight[:, DEAD] *= t / c
        if gauge == "random":
            _gauge(model, rng, strength=0.5)
        mon(k)
        units.append(detection.unit_sizes(model, x)[0])
    return mon, np.stack(units)


def _planted_cells(gauge: str):
    mon, units = _planted_run(gauge)
    records = mon.records()
    r = detection._reference_count(records, "blocks.0.mlp.act")
    assert r == 3
    a = detection.approach_from_units(units, r)
    np.testing.assert_allclose(a[1:] / a[:-1], 0.5, rtol=1e-9)  # exactly ∝ t, on every path
    rates = mon.rates(approach_values={"blocks.0.mlp.act": a, "blocks.0.mlp.fc_out": a})
    cells = detection.classify_cells(
        rates, [("blocks.0.mlp.act", "blocks.0.mlp.fc_out")],
        dead_counts={("blocks.0.mlp.act", "activation"): r}, rows=128, width=32, n_probe=16,
        fisher_params=32 * 8 + 8, min_points=4, readable=detection.Readable(),
    )  # fmt: skip
    return mon, cells


@pytest.mark.parametrize("gauge", ["none", "random"])
def test_a_planted_dead_cluster_reads_its_rate_along_a_balanced_path(gauge):
    mon, cells = _planted_cells(gauge)
    act = {c["observable"]: c for c in cells if c["side"] == "activation"}
    # the activation Gram itself moves with the unit gauge (act_j × c_j): a random gauge element
    # at every checkpoint scatters the points about the line, the approach parameter does not
    rel = 0.1 if gauge == "random" else 0.02
    assert act["logdet_plus"]["slope"] == pytest.approx(6.0, rel=rel)
    assert act["lambda_min"]["slope"] == pytest.approx(2.0, rel=rel)
    assert all(c["eligible"] and c["dead"] and c["approached"] and c["reads"]
               for c in act.values())  # fmt: skip
    fisher = [c for c in cells if c["side"] == "fisher"]
    assert fisher and not any(c["eligible"] or c["approached"] for c in fisher)  # not computed
    assert all("parameters 264" in c["why_not"] for c in fisher)
    # the monitor's own approach here, fc_in's dead-norm, cannot see dead units: fc_in is 32 × 9
    # (with its bias), so its 3 smallest singular values are those of the 29 live rows
    own = [row for row in mon.rates() if row["layer"] == "blocks.0.mlp.act"]
    assert not any(row["reads"] for row in own)


def test_an_unbalanced_approach_reads_another_rate():
    # the dead units drift along their orbits while they shrink: a(t) is still exactly ∝ t, but
    # each activation eigenvalue goes as (t·c)², so log det⁺ falls at 6·(1 − 0.3/ln 2) ≈ 3.4
    _, cells = _planted_cells("drift")
    act = {c["observable"]: c for c in cells if c["side"] == "activation"}
    assert act["logdet_plus"]["slope"] == pytest.approx(6.0 * (1 - 0.3 / math.log(2)), rel=0.02)
    assert act["logdet_plus"]["approached"] and not act["logdet_plus"]["reads"]


def test_readable_rule_is_explicit():
    rate = {"layer": "A", "side": "activation", "observable": "logdet_plus", "dead_count": 2,
            "predicted": 4.0, "slope": 4.1, "r2": 0.99, "n_points": 9, "log_range": 2.5,
            "reads": True}  # fmt: skip
    rates = [
        rate,
        {**rate, "observable": "lambda_min", "reads": False},
        {**rate, "layer": "F", "side": "fisher", "reads": True, "log_range": 2.0},
    ]
    kw = {"rows": 200, "width": 64, "n_probe": 50, "fisher_params": 40, "min_points": 4}
    dead = {("A", "activation"): 2, ("F", "fisher"): 1}
    cells = detection.classify_cells(rates, [("A", "F")], dead_counts=dead,
                                     readable=detection.Readable(), **kw)  # fmt: skip
    got = {(c["side"], c["observable"]): (c["eligible"], c["dead"], c["approached"], c["reads"])
           for c in cells}  # fmt: skip
    assert got == {
        ("activation", "logdet_plus"): (True, True, True, True),
        ("activation", "lambda_min"): (True, True, True, False),
        ("fisher", "logdet_plus"): (True, True, False, False),  # spans 2.0/ln 10 < 1 decade
        ("fisher", "lambda_min"): (False, False, False, False),  # no rate row
    }
    assert cells[3]["why_not"] == "not computed"
    # no dead cluster at the last checkpoint: nothing is dead, whatever the fit says
    cells = detection.classify_cells(rates, [("A", "F")], dead_counts={},
                                     readable=detection.Readable(), **kw)  # fmt: skip
    assert not any(c["dead"] or c["reads"] for c in cells)
    strict = detection.Readable(rows_per_width=4.0, fisher_margin=2.0)
    cells = detection.classify_cells(rates, [("A", "F")], dead_counts=dead, readable=strict, **kw)
    assert not any(c["eligible"] or c["reads"] for c in cells)
    assert "rows 200 ≤ 4 × units 64" in cells[0]["why_not"]
    assert "probe 50 ≤ 2 × parameters 40" in cells[2]["why_not"]


def test_verdict_rule():
    def t(mean, p):
        return {"mean": mean, "p": p}

    assert detection.verdict(t(2.0, 0.01), 3).startswith("reproduced")
    assert detection.verdict(t(0.0, 1.0), 1).startswith("refuted")
    assert detection.verdict(t(-1.0, 0.3), 2).startswith("refuted")
    assert detection.verdict(t(1.0, 0.2), 2).startswith("inconclusive")
    assert "nothing to read" in detection.verdict(t(0.0, 1.0), 0)
    assert "too few" in detection.verdict(t(math.nan, math.nan), 1)
    assert "diverged" in detection.verdict(t(2.0, 0.01), 3, diverged=1)


def test_readable_and_arguments_are_checked(tmp_path):
    with pytest.raises(ValueError, match="rows_per_width must be a positive number"):
        detection.run(None, quick=True, readable=detection.Readable(rows_per_width=0), echo=None)
    with pytest.raises(ValueError, match="min_r2 must be ≤ 1"):
        detection.run(None, quick=True, readable=detection.Readable(min_r2=2.0), echo=None)
    with pytest.raises(ValueError, match="optimizers must be a non-empty subset"):
        detection.run(None, quick=True, optimizers=("sgd",), echo=None)
    assert detection.main(["--quick", "--out", str(tmp_path), "--fisher-margin", "-1"]) == 2


def test_fisher_cells_are_computed_where_the_probe_outnumbers_the_parameters():
    res = detection.run(
        None, quick=True, optimizers=("adamw",), seeds=1, lrs=(3e-3,), weight_decays=(0.1,),
        readable=detection.Readable(fisher_margin=1e-3), workers=1, progress=False, echo=None,
    )  # fmt: skip
    fisher = [c for c in res.cells if c["side"] == "fisher"]
    assert fisher and all(c["eligible"] and c["why_not"] == "" for c in fisher)
    # the Fisher side was read: a fitted slope against the block's approach parameter exists
    # wherever the post-ReLU reading has a dead cluster, and the predictions are 2r_F or 2
    assert all(c["predicted"] in (0.0, 2.0, 2.0 * c["dead_count"]) for c in fisher)
    with pytest.raises(ValueError, match="probe must be at most n_train"):
        detection.run(None, quick=True, probe=25, echo=None)
