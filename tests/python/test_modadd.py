"""The modular-addition d_model sweep (--quick): outputs, columns, finite volumes, summary."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("matplotlib")

from deadspec.experiments import modadd


@pytest.fixture(scope="module")
def quick_result(tmp_path_factory):
    out = tmp_path_factory.mktemp("modadd")
    return modadd.run(out, quick=True, progress=False, echo=None)


def _read(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_outputs_written(quick_result):
    for path in (quick_result.csv_path, quick_result.layers_csv_path,
                 quick_result.summary_csv_path, quick_result.png_path):
        assert path is not None and path.is_file(), path
    assert quick_result.png_path.stat().st_size > 1000
    rows = _read(quick_result.csv_path)
    assert [int(r["d_model"]) for r in rows] == [8, 12, 16]
    assert set(modadd.RUN_COLUMNS) == set(rows[0])
    lrows = _read(quick_result.layers_csv_path)
    assert set(modadd.LAYER_COLUMNS) == set(lrows[0])
    # one row per d_model x chosen layer x side
    assert len(lrows) == 3 * len(modadd.LAYER_PRESETS["mlp"]) * 2
    assert {r["layer"] for r in lrows} == set(modadd.LAYER_PRESETS["mlp"])


def test_volumes_finite_and_consistent(quick_result):
    for row in quick_result.rows:
        for side in modadd.SIDES:
            v = row[f"log10_vol_{side}"]
            assert math.isfinite(v), row
            assert math.isclose(v, row[f"logdet_{side}"] / math.log(10.0), rel_tol=1e-12)
            layer_sum = sum(
                lr["log10_volume"] for lr in quick_result.layer_rows
                if lr["d_model"] == row["d_model"] and lr["side"] == side
            )
            assert math.isclose(v, layer_sum, rel_tol=1e-9, abs_tol=1e-9)
        assert math.isclose(
            row["log10_vol_total"], row["log10_vol_activation"] + row["log10_vol_fisher"],
            rel_tol=1e-12,
        )
        assert row["steps"] >= 1 and 0.0 <= row["test_acc"] <= 1.0
        assert row["dds_passes"] >= 1 and row["cal_passes"] >= 1
        assert row["dds_seconds"] > 0 and row["train_seconds"] > 0


def test_summary_consistent_with_csv(quick_result):
    rows = _read(quick_result.csv_path)
    d = np.array([float(r["d_model"]) for r in rows])
    s = quick_result.summary
    assert s["n_points"] == 3
    for col in ("log10_vol_activation", "log10_vol_fisher", "log10_vol_total"):
        v = np.array([float(r[col]) for r in rows])
        assert math.isclose(s[f"{col}_orders"], float(v.max() - v.min()), rel_tol=1e-9)
        assert math.isclose(s[f"{col}_spearman"], modadd.spearman(d, v), abs_tol=1e-12)
        diffs = np.diff(v)
        expect = ("increasing" if np.all(diffs > 0)
                  else "decreasing" if np.all(diffs < 0) else "no")
        assert s[f"{col}_monotone"] == expect
    lam = np.array([float(r["llc_mean"]) if r["llc_mean"] not in ("", None) else math.nan
                    for r in rows])
    fin = lam[np.isfinite(lam)]
    if len(fin):
        assert math.isclose(s["llc_spread"], float(fin.max() - fin.min()), abs_tol=1e-12)
    # the summary CSV holds the same numbers
    srows = {r["metric"]: r["value"] for r in _read(quick_result.summary_csv_path)}
    assert math.isclose(float(srows["log10_vol_total_orders"]), s["log10_vol_total_orders"],
                        rel_tol=1e-9)
    assert srows["log10_vol_fisher_monotone"] == s["log10_vol_fisher_monotone"]


def test_checkpoints_reload(quick_result):
    import torch

    from deadspec.models import ModAddTransformer

    ck = quick_result.checkpoint_dir
    assert (ck / "models.py").is_file() and (ck / "train_data.pt").is_file()
    state = torch.load(ck / "d_model_016.pt", map_location="cpu", weights_only=True)
    model = ModAddTransformer(p=23, d_model=16, n_heads=4)
    model.load_state_dict(state, strict=True)
    data = torch.load(ck / "train_data.pt", weights_only=True)
    assert data["inputs"].shape == (quick_result.rows[0]["n_train"], 3)


def test_spearman_matches_definition():
    assert modadd.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert modadd.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ties get average ranks: ranks y = (1.5, 1.5, 3, 4) -> rho = 0.9486...
    assert modadd.spearman([1, 2, 3, 4], [5, 5, 6, 7]) == pytest.approx(0.9486832980505138)
    assert math.isnan(modadd.spearman([1, 2], [3, 4]))
    assert math.isnan(modadd.spearman([1, 2, 3], [1, 1, 1]))
    with pytest.raises(ValueError, match="deadspec.modadd.spearman"):
        modadd.spearman([1, 2, 3], [1, 2])


def test_main_bad_args(tmp_path, capsys):
    assert modadd.main(["--quick", "--d-models", "10", "--out", str(tmp_path)]) == 2
    assert "multiples of n_heads" in capsys.readouterr().err
    with pytest.raises(ValueError, match="layers must be one of"):
        modadd.run(None, quick=True, layers="bogus", echo=None)
