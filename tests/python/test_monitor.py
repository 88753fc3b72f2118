"""Tests of deadspec.monitor.DeadDirectionMonitor (trajectory-rate readout)."""

from __future__ import annotations

import csv
import io
import math

import numpy as np
import pytest
import torch
from torch import nn

from deadspec.monitor import DEFAULT_PREDICTIONS, DeadDirectionMonitor

DT = torch.float64
DEAD = [5, 6, 7]  # r = 3 dead output units of branch "a"


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class _TwoBranch(nn.Module):
    """Two independent linear layers read side by side: y = [a(x), b(x)]."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(16, 8)
        self.b = nn.Linear(16, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.a(x), self.b(x)], dim=1)


def _constructed(ks=range(2, 14), dtype=DT, **kwargs):
    """Dead units of "a" shrink as t_k = 0.5**k (set by hand, no training).

    "b" has 3 dead units held at a fixed 1e-3 scale (a dead cluster with no trend) and is read
    against a callable approach parameter that does decrease (t_k): a cell with no trend.
    """
    torch.manual_seed(0)
    model = _TwoBranch().to(dtype)
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(1), dtype=dtype)
    w0, b0 = model.a.weight.detach().clone(), model.a.bias.detach().clone()
    with torch.no_grad():
        model.b.weight[DEAD] *= 1e-3
        model.b.bias[DEAD] *= 1e-3
    current = {"t": 1.0}
    monitor = DeadDirectionMonitor(
        model,
        ["a", "b"],
        every=1,
        inputs=x,
        fisher=False,
        approach={"b": lambda m: current["t"]},
        **kwargs,
    )
    for k in ks:
        t = 0.5**k
        current["t"] = t
        with torch.no_grad():
            model.a.weight[DEAD] = w0[DEAD] * t
            model.a.bias[DEAD] = b0[DEAD] * t
        monitor(k)
    return monitor, model


def _row(rows, layer, side, obs):
    (row,) = [r for r in rows if (r["layer"], r["side"], r["observable"]) == (layer, side, obs)]
    return row


# ------------------------------------------------------------------ constructed trajectory


def test_constructed_trajectory_reads_2r_and_2():
    monitor, _ = _constructed()
    rows = monitor.rates()
    logdet = _row(rows, "a", "activation", "logdet_plus")
    lam = _row(rows, "a", "activation", "lambda_min")
    assert logdet["dead_count"] == 3 and logdet["active"] == 8
    assert logdet["predicted"] == 6.0 and lam["predicted"] == 2.0
    assert logdet["slope"] == pytest.approx(6.0, rel=0.05)
    assert lam["slope"] == pytest.approx(2.0, rel=0.05)
    assert logdet["r2"] >= 0.99 and lam["r2"] >= 0.99
    assert logdet["reads"] and lam["reads"]
    assert logdet["n_points"] == 12 and logdet["first_step"] == 2 and logdet["last_step"] == 13
    # default approach = Eckart–Young distance of [W b] to rank h − r: exactly ∝ t once the
    # dead singular values are the smallest
    a = monitor.approach_values("a")
    np.testing.assert_allclose(a[3:] / a[2:-1], 0.5, rtol=1e-3)


def test_float32_dead_directions_below_threshold_stay_tracked():
    # In float32 the dead eigenvalues drop below the active threshold (rtol ~ size·ε32) late in
    # the trajectory: the reference dead cluster and the fixed active set still include them.
    monitor, _ = _constructed(dtype=torch.float32)
    last = [r for r in monitor.records() if r["layer"] == "a"][-1]
    assert last["active"] == 5 and last["dead_count"] == 0  # read as structural zeros
    row = _row(monitor.rates(frac=0.01), "a", "activation", "logdet_plus")
    assert (row["active"], row["dead_count"], row["predicted"]) == (8, 3, 6.0)
    assert row["slope"] == pytest.approx(6.0, rel=0.01) and row["reads"]


def test_no_trend_cell_does_not_read_and_count():
    monitor, _ = _constructed()
    rows = monitor.rates()
    for obs in ("logdet_plus", "lambda_min"):
        row = _row(rows, "b", "activation", obs)
        assert row["predicted"] in (6.0, 2.0)  # a dead cluster of 3 is there ...
        assert abs(row["slope"]) < 1e-6  # ... but it does not move with the approach parameter
        assert not row["reads"]
    # effective rank: no prediction by default, reported but not counted
    eff = _row(rows, "a", "activation", "effective_rank")
    assert eff["predicted"] is None and not eff["reads"]
    assert abs(eff["slope"]) < 0.1
    assert monitor.cells_reading() == (2, 4)
    assert monitor.cells_reading(tolerance=0.0) == (0, 4)


def test_approach_values_replace_the_approach_parameter():
    monitor, _ = _constructed()
    t = 0.5 ** np.arange(2, 14)
    # b's own approach (a callable, t) sees no trend; a's a(t) given as t**2 halves its slopes
    rows = monitor.rates(approach_values={"a": t**2})
    logdet = _row(rows, "a", "activation", "logdet_plus")
    assert logdet["slope"] == pytest.approx(3.0, rel=0.05) and not logdet["reads"]
    assert monitor.cells_reading(approach_values={"a": t**2}) == (0, 4)
    # the same values as the built-in parameter (∝ t) read the same rates as without them
    assert monitor.cells_reading(approach_values={"a": 7.0 * t}) == monitor.cells_reading()
    # NaN leaves a point out of the window
    a = t.copy()
    a[-3:] = np.nan
    row = _row(monitor.rates(approach_values={"a": a}), "a", "activation", "logdet_plus")
    assert row["n_points"] == 9 and row["last_step"] == 10
    with pytest.raises(ValueError, match="one number per recorded checkpoint"):
        monitor.rates(approach_values={"a": t[:-1]})
    with pytest.raises(ValueError, match="monitored layers"):
        monitor.rates(approach_values={"c": t})
    with pytest.raises(TypeError, match="approach_values must be a dict"):
        monitor.rates(approach_values=t)


def test_prediction_table_and_window_are_parameters():
    monitor, _ = _constructed(predictions={"activation.logdet_plus": 5.0})
    assert _row(monitor.rates(), "a", "activation", "logdet_plus")["predicted"] == 5.0
    assert monitor.cells_reading() == (2, 4)  # 6.0 is within 25% of 5, not within 10%
    assert monitor.cells_reading(tolerance=0.1) == (1, 4)
    # a window of steps: 4 points
    row = _row(monitor.rates(window=(10, 13)), "a", "activation", "lambda_min")
    assert (row["n_points"], row["first_step"], row["last_step"]) == (4, 10, 13)
    assert row["slope"] == pytest.approx(2.0, rel=1e-3)
    # frac keeps the small-a end: there the rate is asymptotically exact
    row = _row(monitor.rates(frac=0.05), "a", "activation", "logdet_plus")
    assert row["slope"] == pytest.approx(6.0, rel=1e-3)
    # too few points -> no slope, no reading
    row = _row(monitor.rates(min_points=50), "a", "activation", "logdet_plus")
    assert math.isnan(row["slope"]) and not row["reads"]
    assert set(DEFAULT_PREDICTIONS) == {
        f"{s}.{o}"
        for s in ("activation", "fisher")
        for o in ("logdet_plus", "lambda_min", "effective_rank")
    }


def test_dead_projection_approach():
    torch.manual_seed(0)
    model = nn.Linear(16, 8).to(DT)
    x = torch.randn(64, 16, dtype=DT)
    w0, b0 = model.weight.detach().clone(), model.bias.detach().clone()
    monitor = DeadDirectionMonitor(
        model, "", every=1, inputs=x, fisher=False, approach="dead-projection"
    )
    for k in range(2, 14):
        with torch.no_grad():
            model.weight[DEAD] = w0[DEAD] * 0.5**k
            model.bias[DEAD] = b0[DEAD] * 0.5**k
        monitor(k)
    u = monitor.dead_directions("")
    assert u.shape == (8, 3)
    # the reference dead cluster is (nearly) spanned by the dead units
    assert np.linalg.norm(u[DEAD, :], ord=2) == pytest.approx(1.0, abs=1e-3)
    assert monitor.cells_reading() == (2, 2)


def test_fisher_side_balanced_shrink_reads_kfac_rate():
    # Balanced shrink (incoming rows and outgoing columns × t) of r = 2 hidden units: the
    # output gradients δ of the dead units shrink ∝ t, so r·(d_in + 1) = 18 Fisher directions
    # die at rate 2 each (K-FAC: one dead factor): Fisher log det⁺ slope 2·18, λ_min 2.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 6), nn.Linear(6, 8)).to(DT)
    x, y = torch.randn(128, 8, dtype=DT), torch.randn(128, 8, dtype=DT)
    dead = [4, 5]
    w1, b1 = model[0].weight.detach().clone(), model[0].bias.detach().clone()
    w2 = model[1].weight.detach().clone()
    monitor = DeadDirectionMonitor(model, ["0"], every=1, inputs=x, targets=y)
    for k in range(2, 12):
        t = 0.5**k
        with torch.no_grad():
            model[0].weight[dead] = w1[dead] * t
            model[0].bias[dead] = b1[dead] * t
            model[1].weight[:, dead] = w2[:, dead] * t
        monitor(k)
    rows = monitor.rates()
    fisher = _row(rows, "0", "fisher", "logdet_plus")
    assert fisher["dead_count"] == 18 and fisher["predicted"] == 36.0
    assert fisher["slope"] == pytest.approx(36.0, rel=0.05) and fisher["reads"]
    assert _row(rows, "0", "fisher", "lambda_min")["reads"]
    assert _row(rows, "0", "activation", "logdet_plus")["slope"] == pytest.approx(4.0, rel=0.05)
    assert monitor.cells_reading() == (4, 4)


# ------------------------------------------------------------------ outputs


def test_records_csv_png(tmp_path):
    monitor, _ = _constructed(ks=range(2, 8))
    recs = monitor.records()
    assert len(recs) == 6 * 2  # 6 checkpoints × 2 layers × activation side
    r0 = recs[0]
    for key in (
        "step",
        "layer",
        "side",
        "approach",
        "logdet_plus",
        "lambda_min",
        "dead_count",
        "effective_rank",
        "active",
        "seconds",
    ):
        assert key in r0
    assert [r["step"] for r in recs if r["layer"] == "a"] == [2, 3, 4, 5, 6, 7]
    path = tmp_path / "records.csv"
    monitor.to_csv(path)
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 12 and float(rows[0]["logdet_plus"]) == pytest.approx(r0["logdet_plus"])
    monitor.to_csv(tmp_path / "rates.csv", what="rates")
    with open(tmp_path / "rates.csv") as f:
        rates = list(csv.DictReader(f))
    assert len(rates) == 6 and "reads" in rates[0]
    png = tmp_path / "monitor.png"
    monitor.plot(png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert monitor.seconds > 0


def test_every_and_force():
    torch.manual_seed(0)
    model = nn.Linear(4, 4)
    monitor = DeadDirectionMonitor(model, every=5, inputs=torch.randn(16, 4), fisher=False)
    assert [monitor(s) is not None for s in range(11)] == [s % 5 == 0 for s in range(11)]
    assert monitor.steps == [0, 5, 10]
    assert monitor.step(12, force=True) is not None
    assert monitor.steps == [0, 5, 10, 12]
    monitor2 = DeadDirectionMonitor(model, every=2, inputs=torch.randn(16, 4), fisher=False)
    for _ in range(5):
        monitor2.step()  # counts the calls 0..4
    assert monitor2.steps == [0, 2, 4]
    with pytest.raises(ValueError, match="after the last recorded step 4"):
        monitor2.step(4, force=True)


# ------------------------------------------------------------------ real training loop


def test_adamw_training_loop_restores_state(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1)
    )
    x, y = torch.randn(48, 4), torch.randn(48, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.5)
    monitor = DeadDirectionMonitor(
        model,
        ["0", "2", "4"],
        every=10,
        inputs=x[:32],
        targets=y[:32],
        approach={"2": "dead-projection"},
    )
    model.train()
    for step in range(60):
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters()]
        state = {k: v.clone() for k, v in model.state_dict().items()}
        reading = monitor(step)
        assert (reading is not None) == (step % 10 == 0)
        assert model.training and all(m.training for m in model.modules())
        for p, g in zip(model.parameters(), grads):
            assert p.grad is not None and torch.equal(p.grad, g)
        for k, v in model.state_dict().items():
            assert torch.equal(v, state[k])
        opt.step()
    assert monitor.steps == [0, 10, 20, 30, 40, 50]
    assert len(monitor.records()) == 6 * 3 * 2
    rows = monitor.rates()
    assert len(rows) == 3 * 2 * 3
    count, total = monitor.cells_reading()
    assert 0 <= count <= total <= 12
    monitor.plot(tmp_path / "train.png")
    monitor.to_csv(tmp_path / "train.csv")


# ------------------------------------------------------------------ errors


def test_errors_are_clear():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    x, y = torch.randn(16, 4), torch.randn(16, 2)
    with pytest.raises(ValueError, match=r"layer 'nope' is not a module name.*available names"):
        DeadDirectionMonitor(model, ["nope"], inputs=x, targets=y)
    with pytest.raises(ValueError, match="every must be >= 1, got 0"):
        DeadDirectionMonitor(model, ["0"], every=0, inputs=x, targets=y)
    with pytest.raises(TypeError, match="every must be an int"):
        DeadDirectionMonitor(model, ["0"], every=2.5, inputs=x, targets=y)
    with pytest.raises(ValueError, match="targets must be given"):
        DeadDirectionMonitor(model, ["0"], inputs=x)
    with pytest.raises(ValueError, match="layer '1' is ReLU"):
        DeadDirectionMonitor(model, ["1"], inputs=x, fisher=False)
    DeadDirectionMonitor(model, ["1"], inputs=x, fisher=False, approach={"1": "0"})
    with pytest.raises(ValueError, match="must name a linear-like module"):
        DeadDirectionMonitor(model, ["1"], inputs=x, fisher=False, approach={"1": "zzz"})
    with pytest.raises(ValueError, match="approach keys must be monitored layers"):
        DeadDirectionMonitor(model, ["0"], inputs=x, fisher=False, approach={"2": "dead-norm"})
    with pytest.raises(ValueError, match="window must be one of"):
        DeadDirectionMonitor(model, ["0"], inputs=x, fisher=False, window="first")
    with pytest.raises(ValueError, match="prediction keys must be among"):
        DeadDirectionMonitor(model, ["0"], inputs=x, fisher=False, predictions={"x.y": 1.0})
    with pytest.raises(TypeError, match="read options must be among"):
        DeadDirectionMonitor(model, ["0"], inputs=x, fisher=False, heads=True)
    monitor = DeadDirectionMonitor(model, ["0"], inputs=x, fisher=False)
    with pytest.raises(ValueError, match="step must be >= 0, got -1"):
        monitor.step(-1)
    with pytest.raises(ValueError, match="layer must be one of the monitored layers"):
        monitor.approach_values("2")
    with pytest.raises(ValueError, match="nothing recorded yet"):
        monitor.plot("unused.png")


# ------------------------------------------------------------------ state_dict


def _same_rows(a, b):
    """Row lists equal key by key (NaN equals NaN)."""
    assert len(a) == len(b)
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys()
        for k in ra:
            va, vb = ra[k], rb[k]
            if isinstance(va, float) and math.isnan(va):
                assert isinstance(vb, float) and math.isnan(vb), k
            else:
                assert va == vb, k


def _reload(monitor, make):
    """Save ``monitor``'s state through torch.save/torch.load(weights_only=True) into
    ``make()``."""
    buf = io.BytesIO()
    torch.save(monitor.state_dict(), buf)
    buf.seek(0)
    other = make()
    other.load_state_dict(torch.load(buf, weights_only=True))
    return other


def test_state_dict_round_trip_gives_same_records_and_rates():
    # the constructed trajectory: default approach on "a", a callable one on "b"
    monitor, model = _constructed()
    x = monitor.inputs

    def make():
        return DeadDirectionMonitor(
            model, ["a", "b"], every=1, inputs=x, fisher=False, approach={"b": lambda m: 1.0}
        )

    fresh = make()
    assert fresh.records() == [] and fresh.steps == []
    restored = _reload(monitor, make)
    assert restored.steps == monitor.steps == list(range(2, 14))
    _same_rows(restored.records(), monitor.records())
    _same_rows(restored.rates(), monitor.rates())
    _same_rows(restored.rates(frac=0.05), monitor.rates(frac=0.05))
    assert restored.cells_reading() == monitor.cells_reading() == (2, 4)
    np.testing.assert_array_equal(restored.approach_values("a"), monitor.approach_values("a"))
    # the record continues after the restored steps (and the implicit step count too)
    with pytest.raises(ValueError, match="after the last recorded step 13"):
        restored.step(13, force=True)
    assert restored.step(14) is not None and restored.steps[-1] == 14
    assert restored.step() is not None and restored.steps[-1] == 15


def test_state_dict_round_trip_fisher_and_dead_projection():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1))
    x, y = torch.randn(32, 4), torch.randn(32, 1)

    def make():
        return DeadDirectionMonitor(
            model, ["0", "2"], every=2, inputs=x, targets=y, approach={"0": "dead-projection"}
        )

    monitor = make()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.5)
    for step in range(16):
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()
        monitor(step)
    state = monitor.state_dict()
    assert sorted(state["reference_grams"]) == ["0"]
    restored = _reload(monitor, make)
    _same_rows(restored.records(), monitor.records())
    _same_rows(restored.rates(), monitor.rates())
    assert {r["side"] for r in restored.records()} == {"activation", "fisher"}
    np.testing.assert_array_equal(restored.dead_directions("0"), monitor.dead_directions("0"))


def test_load_state_dict_refuses_another_monitor():
    monitor, model = _constructed(ks=range(2, 6))
    state = monitor.state_dict()
    x = monitor.inputs
    other = DeadDirectionMonitor(model, ["a"], inputs=x, fisher=False)
    with pytest.raises(ValueError, match=r"load_state_dict: the state must be for a monitor "
                       r"with layers=\['a'\], got layers=\['a', 'b'\]"):
        other.load_state_dict(state)
    other = DeadDirectionMonitor(model, ["a", "b"], inputs=x, fisher=False)  # "b": dead-norm
    with pytest.raises(ValueError, match="with approach="):
        other.load_state_dict(state)
    y = torch.randn(x.shape[0], 16, dtype=x.dtype)
    other = DeadDirectionMonitor(
        model, ["a", "b"], inputs=x, targets=y, approach={"b": lambda m: 1.0}
    )
    with pytest.raises(ValueError, match="with fisher=True, got fisher=False"):
        other.load_state_dict(state)
    with pytest.raises(ValueError, match="must have format 1"):
        monitor.load_state_dict({**state, "format": 0})
    with pytest.raises(TypeError, match="state_dict must be a mapping, got list"):
        monitor.load_state_dict([])
    assert monitor.steps == [2, 3, 4, 5]  # a refused state leaves the record as it was


def test_readings_do_not_change_a_run_with_dropout():
    # a train-mode reading draws dropout masks; the monitor restores the generators it used
    def run(monitored: bool) -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 1))
        x, y = torch.randn(32, 4), torch.randn(32, 1)
        mon = DeadDirectionMonitor(model, ["0", "3"], every=2, inputs=x, targets=y)
        opt = torch.optim.SGD(model.parameters(), lr=1e-2)
        for step in range(6):
            opt.zero_grad()
            ((model(x) - y) ** 2).mean().backward()
            opt.step()
            if monitored:
                mon(step)
        if monitored:
            assert mon.steps == [0, 2, 4]
        return [p.detach().clone() for p in model.parameters()]

    for a, b in zip(run(True), run(False)):
        assert torch.equal(a, b)
