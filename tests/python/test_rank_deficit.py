"""The rank-deficit experiment (--quick, constructed setting): slope ratios count dead units."""

from __future__ import annotations

import csv
import math

import pytest

pytest.importorskip("torch")
pytest.importorskip("matplotlib")

from deadspec.experiments import rank_deficit


@pytest.fixture(scope="module")
def quick_result(tmp_path_factory):
    out = tmp_path_factory.mktemp("rank-deficit")
    return rank_deficit.run(out, quick=True, settings=["constructed"], progress=False, echo=None)


def test_constructed_ratios_count_dead_units(quick_result):
    rows = quick_result.rows
    assert len(rows) == 2 * 2 * 4  # network x side x r
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
    assert len(rows) == 16
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
