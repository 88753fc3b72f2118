"""The rank-deficit experiment (--quick, constructed setting): slope ratios count dead units."""

from __future__ import annotations

import csv
import math

import pytest

pytest.importorskip("torch")
pytest.importorskip("matplotlib")

from deadspec.experiments import _students, rank_deficit


@pytest.fixture(scope="module")
def quick_result(tmp_path_factory):
    out = tmp_path_factory.mktemp("rank-deficit")
    return rank_deficit.run(out, quick=True, settings=["constructed"], progress=False, echo=None)


def test_constructed_ratios_count_dead_units(quick_result):
    rows = quick_result.rows
    assert len(rows) == 2 * 2 * 4 * 2  # network x side x r x seed (quick: 2 seeds)
    for row in rows:
        r = row["r"]
        ctx = f"{row['network']} {row['side']} r={r}: {row}"
        assert row["detected"] == r, ctx
        assert abs(row["ratio"] - r) <= 0.10 * r, ctx
        assert abs(row["lambda_min_ratio"] - 1.0) <= 0.10, ctx
        assert row["r2"] > 0.99, ctx
        assert row["pass"], ctx
    assert quick_result.passed


def test_constructed_slopes_match_theory(quick_result):
    # activation side: 2 per dead unit; Fisher side (weight + bias of layer 0): 2(d_in + 1).
    d_in = 6
    for row in quick_result.rows:
        per_unit = 2.0 if row["side"] == "activation" else 2.0 * (d_in + 1)
        assert math.isclose(row["slope_per_unit"], per_unit, rel_tol=0.02), row
        assert math.isclose(row["lambda_min_slope"], 2.0, rel_tol=0.05), row


def test_outputs_written(quick_result):
    assert quick_result.csv_path.is_file() and quick_result.png_path.is_file()
    assert quick_result.png_path.stat().st_size > 1000
    with open(quick_result.csv_path) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 32
    assert set(rank_deficit.CSV_COLUMNS) == set(rows[0])
    assert {(r["network"], r["setting"], r["side"]) for r in rows} == {
        (n, "constructed", s) for n in ("linear", "relu") for s in ("activation", "fisher")
    }


def test_main_quick_constructed(tmp_path, capsys):
    rc = rank_deficit.main(
        [
            "--quick",
            "--settings",
            "constructed",
            "--sides",
            "activation",
            "--networks",
            "linear",
            "--out",
            str(tmp_path),
            "--no-progress",
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "PASS" in out and "FAIL" not in out
    assert (tmp_path / "rank_deficit.csv").is_file() and (tmp_path / "rank_deficit.png").is_file()


def test_validation_errors(tmp_path):
    with pytest.raises(ValueError, match="ranks must include 1"):
        rank_deficit.run(None, ranks=[2, 3], echo=None)
    with pytest.raises(ValueError, match="ranks must be < hidden"):
        rank_deficit.run(None, ranks=[1, 6], hidden=6, echo=None)
    with pytest.raises(ValueError, match="networks must be a non-empty subset"):
        rank_deficit.run(None, networks=["tanh"], echo=None)
    assert rank_deficit.main(["--ranks", "2", "--out", str(tmp_path)]) == 2


def test_trained_relu_spare_units_die_and_count(tmp_path):
    # one seed, r = 1, 2: the group penalty leaves exactly r units at norm 0, they are read
    # after the ReLU and counted by the slope ratio
    res = rank_deficit.run(
        tmp_path, settings=["trained"], networks=["relu"], ranks=[1, 2], seeds=1, seed=0,
        progress=False, echo=None, plot=False,
    )
    assert res.verdicts == {"trained relu": "reproduced (1 of 1 seeds pass)"}, res.rows
    for row in res.rows:
        assert row["detected"] == row["r"] and row["dead_residue"] == 0.0, row
        assert row["alive_margin"] > 0.1, row  # the alive units are far from dead
        assert abs(row["ratio"] - row["r"]) <= 0.1 * row["r"], row
        assert row["read_at"] == ("1" if row["side"] == "activation" else "0"), row
    assert (tmp_path / "config.json").is_file() and res.summary_path.is_file()
    assert {(s["side"], s["r"], s["passed"]) for s in res.summary} == {
        (side, r, 1) for side in ("activation", "fisher") for r in (1, 2)
    }


def test_group_lasso_kills_units_and_revival_is_exact_at_t0():
    import torch

    sizes = rank_deficit._sizes(False, None, None, None, None, None)
    training = rank_deficit._Training(1e-2, 1e-3, 3e-2, "adam", 0.1, 1e2)
    ck = rank_deficit._checkpoint("trained", "relu", 2, sizes, 1, training)
    assert ck.reason is None and ck.units is not None and len(ck.units) == 2
    # the revived units at t = 0 give back the trained function: zero them and compare
    l0, l2 = ck.model[0], ck.model[-1]
    with torch.no_grad():
        before = ck.model(ck.x)
        l0.weight[ck.units] = 0.0
        l0.bias[ck.units] = 0.0
        l2.weight[:, ck.units] = 0.0
        after = ck.model(ck.x)
    # the revived units fire on part of the inputs: they changed the output, and zeroing them
    # (t = 0) is the trained checkpoint, whose loss is the training loss
    assert not torch.allclose(before, after)
    loss = 0.5 * ((after - ck.y) ** 2).sum(dim=1).mean()
    assert float(loss) == pytest.approx(ck.train_loss, rel=1e-12)


def test_linear_alignment_is_a_symmetry():
    import torch

    sizes = rank_deficit._sizes(True, None, None, None, None, None)
    model = rank_deficit._student("linear", sizes, 7)
    x = torch.randn(64, sizes.d_in, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model[0].weight[2] *= 1e-5  # a dead direction along unit 2
        model[0].bias[2] *= 1e-5
        model[-1].weight[:, 2] *= 1e-5
        before = model(x)
    dead, residue, margin, reason = _students.align_dead_linear(model, x, 1e2)
    assert reason is None and dead == [0] and residue < 1e-4 and margin > 0.01
    with torch.no_grad():
        assert torch.allclose(model(x), before, rtol=0, atol=1e-12)


def test_verdict_needs_every_seed():
    rows = [
        {"setting": "trained", "network": "relu", "seed": s, "r": r, "pass": (s, r) != (1, 2)}
        for s in (0, 1)
        for r in (1, 2)
    ]
    v = rank_deficit._verdicts(rows, [0, 1])
    assert v == {"trained relu": "not reproduced (1 of 2 seeds pass)"}
    for row in rows:
        row["pass"] = True
    v = rank_deficit._verdicts(rows, [0, 1])
    assert v == {"trained relu": "reproduced (2 of 2 seeds pass)"}
