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


def _planted_run(gauged: bool):
    """Three units of block 0 shrink as t = 0.5**k (incoming and outgoing weights together),
    read at 12 checkpoints; with ``gauged`` a fresh random gauge element (strength 0.5) is
    applied before each reading (the function, and every gauge-invariant number, is unchanged)."""
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
        with torch.no_grad():
            for param, value in zip((mlp.fc_in.weight, mlp.fc_in.bias, mlp.fc_out.weight,
                                     ln.weight, ln.bias), start):  # fmt: skip
                param.copy_(value)
            mlp.fc_in.weight[DEAD] *= t
            mlp.fc_in.bias[DEAD] *= t
            mlp.fc_out.weight[:, DEAD] *= t
        if gauged:
            _gauge(model, rng, strength=0.5)
        mon(k)
        units.append(detection.unit_sizes(model, x)[0])
    return mon, np.stack(units), x


@pytest.mark.parametrize("gauged", [False, True])
def test_a_planted_dead_cluster_reads_its_rate_along_any_gauge_path(gauged):
    mon, units, _ = _planted_run(gauged)
    r = detection._reference_count(mon.records(), "blocks.0.mlp.act")
    assert r == 3
    a = detection.approach_from_units(units, r)
    np.testing.assert_allclose(a[1:] / a[:-1], 0.5, rtol=1e-9)  # exactly ∝ t, any gauge
    rates = mon.rates(approach_values={"blocks.0.mlp.act": a, "blocks.0.mlp.fc_out": a})
    cells = detection.classify_cells(
        rates, [("blocks.0.mlp.act", "blocks.0.mlp.fc_out")], rows=128, width=32, n_probe=16,
        fisher_params=32 * 8 + 8, readable=detection.Readable(),
    )  # fmt: skip
    act = {c["observable"]: c for c in cells if c["side"] == "activation"}
    # the activation Gram itself moves with the unit gauge (act_j × c_j): a random gauge element
    # at every checkpoint scatters the points about the line, the approach parameter does not
    rel = 0.1 if gauged else 0.02
    assert act["logdet_plus"]["slope"] == pytest.approx(6.0, rel=rel)
    assert act["lambda_min"]["slope"] == pytest.approx(2.0, rel=rel)
    assert all(c["eligible"] and c["dead"] and c["reads"] for c in act.values())
    fisher = [c for c in cells if c["side"] == "fisher"]
    assert fisher and not any(c["eligible"] or c["reads"] for c in fisher)  # not computed
    assert all("parameters 264" in c["why_not"] for c in fisher)
    # the monitor's own approach here, fc_in's dead-norm, cannot see dead units: fc_in is 32 × 9
    # (with its bias), so its 3 smallest singular values are those of the 29 live rows
    own = [row for row in mon.rates() if row["layer"] == "blocks.0.mlp.act"]
    assert not any(row["reads"] for row in own)


def test_readable_rule_is_explicit():
    rate = {"layer": "A", "side": "activation", "observable": "logdet_plus", "dead_count": 2,
            "predicted": 4.0, "slope": 4.1, "r2": 0.99, "n_points": 9, "log_range": 2.0,
            "reads": True}  # fmt: skip
    rates = [
        rate,
        {**rate, "observable": "lambda_min", "reads": False},
        {**rate, "layer": "F", "side": "fisher", "dead_count": 0, "reads": False},
    ]
    kw = {"rows": 100, "width": 64, "n_probe": 50, "fisher_params": 40}
    cells = detection.classify_cells(rates, [("A", "F")], readable=detection.Readable(), **kw)
    got = {(c["side"], c["observable"]): (c["eligible"], c["dead"], c["reads"]) for c in cells}
    assert got == {
        ("activation", "logdet_plus"): (True, True, True),
        ("activation", "lambda_min"): (True, True, False),
        ("fisher", "logdet_plus"): (True, False, False),  # eligible, no dead cluster
        ("fisher", "lambda_min"): (False, False, False),  # no rate row
    }
    strict = detection.Readable(rows_per_width=2.0, fisher_margin=2.0)
    cells = detection.classify_cells(rates, [("A", "F")], readable=strict, **kw)
    assert not any(c["eligible"] or c["reads"] for c in cells)
    assert "rows 100 ≤ 2 × units 64" in cells[0]["why_not"]
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


def test_readable_and_arguments_are_checked(tmp_path):
    with pytest.raises(ValueError, match="rows_per_width must be a positive number"):
        detection.run(None, quick=True, readable=detection.Readable(rows_per_width=0), echo=None)
    with pytest.raises(ValueError, match="min_r2 must be ≤ 1"):
        detection.run(None, quick=True, readable=detection.Readable(min_r2=2.0), echo=None)
    with pytest.raises(ValueError, match="optimizers must be a non-empty subset"):
        detection.run(None, quick=True, optimizers=("sgd",), echo=None)
    assert detection.main(["--quick", "--out", str(tmp_path), "--fisher-margin", "-1"]) == 2


def test_fisher_cells_are_read_where_the_probe_outnumbers_the_parameters():
    res = detection.run(
        None, quick=True, optimizers=("adamw",), seeds=1, lrs=(3e-3,), weight_decays=(0.1,),
        readable=detection.Readable(fisher_margin=1e-3), workers=1, progress=False, echo=None,
    )  # fmt: skip
    fisher = [c for c in res.cells if c["side"] == "fisher"]
    assert fisher and all(c["eligible"] for c in fisher)
    assert all(c["predicted"] is not None for c in fisher)  # the Fisher side was computed
