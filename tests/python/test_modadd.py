"""The modular-addition d_model sweep (--quick, 2 seeds): outputs, columns, finite volumes, the
compared one-layer readings, the per-width statistics, the summary and the verdict rule."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("matplotlib")

from deadspec.experiments import _modadd_verdict as verdict
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
                 quick_result.summary_csv_path, quick_result.widths_csv_path,
                 quick_result.png_path):
        assert path is not None and path.is_file(), path
    assert quick_result.png_path.stat().st_size > 1000
    rows = _read(quick_result.csv_path)
    # one run per seed x width, the quick size's two seeds
    assert [(int(r["seed"]), int(r["d_model"])) for r in rows] == [
        (s, d) for s in (0, 1) for d in (8, 12, 16)
    ]
    assert set(modadd.RUN_COLUMNS) == set(rows[0])
    lrows = _read(quick_result.layers_csv_path)
    assert set(modadd.LAYER_COLUMNS) == set(lrows[0])
    # one row per run x chosen layer x side
    assert len(lrows) == 6 * len(modadd.LAYER_PRESETS["mlp"]) * 2
    assert {r["layer"] for r in lrows} == set(modadd.LAYER_PRESETS["mlp"])
    widths = _read(quick_result.widths_csv_path)
    assert [int(w["d_model"]) for w in widths] == [8, 12, 16]
    assert all(int(w["n_seeds"]) == 2 for w in widths)
    config = json.loads((quick_result.csv_path.parent / "config.json").read_text())
    assert config["seeds"] == [0, 1] and config["rule"] == verdict.RULE
    assert config["llc_budget"]["chains"] == 2


def test_volumes_finite_and_consistent(quick_result):
    for row in quick_result.rows:
        for side in modadd.SIDES:
            v = row[f"log10_vol_{side}"]
            assert math.isfinite(v), row
            assert math.isclose(v, row[f"logdet_{side}"] / math.log(10.0), rel_tol=1e-12)
            layer_sum = sum(
                lr["log10_volume"] for lr in quick_result.layer_rows
                if lr["d_model"] == row["d_model"] and lr["seed"] == row["seed"]
                and lr["side"] == side
            )
            assert math.isclose(v, layer_sum, rel_tol=1e-9, abs_tol=1e-9)
        assert math.isclose(
            row["log10_vol_total"], row["log10_vol_activation"] + row["log10_vol_fisher"],
            rel_tol=1e-12,
        )
        assert row["steps"] >= 1 and 0.0 <= row["test_acc"] <= 1.0
        assert row["dds_passes"] >= 1 and row["cal_passes"] >= 1
        assert row["dds_seconds"] > 0 and row["train_seconds"] > 0


def _width_means(rows, col):
    ds = sorted({int(r["d_model"]) for r in rows})
    return np.array([np.mean([float(r[col]) for r in rows if int(r["d_model"]) == d])
                     for d in ds])


def _widths(result):
    return [{k: float(v) for k, v in w.items()} for w in _read(result.widths_csv_path)]


def test_summary_consistent_with_csv(quick_result):
    rows = _read(quick_result.csv_path)
    d = np.array([float(r["d_model"]) for r in rows])
    s = quick_result.summary
    assert s["n_points"] == 6 and s["n_widths"] == 3 and s["n_seeds"] == 2
    for col in ("log10_vol_activation", "log10_vol_fisher", "log10_vol_total"):
        v = np.array([float(r[col]) for r in rows])
        means = _width_means(rows, col)
        assert math.isclose(s[f"{col}_orders"], float(means.max() - means.min()), rel_tol=1e-9)
        assert math.isclose(s[f"{col}_spearman"], modadd.spearman(d, v), abs_tol=1e-12)
        diffs = np.diff(means)
        expect = ("increasing" if np.all(diffs > 0)
                  else "decreasing" if np.all(diffs < 0) else "no")
        assert s[f"{col}_monotone"] == expect
    for key in verdict.METRICS:
        v = np.array([float(r[key]) if r[key] not in ("", None) else math.nan for r in rows])
        ok = np.isfinite(v)
        # Pearson on ranks, computed here (the widths tie: average ranks)
        rd = np.array([np.mean(np.flatnonzero(np.sort(d[ok]) == x)) for x in d[ok]])
        rv = np.argsort(np.argsort(v[ok])).astype(float)
        assert math.isclose(s[f"{key}_rho"], float(np.corrcoef(rd, rv)[0, 1]), abs_tol=1e-12)
    # the per-width table is the mean and the standard error over the seeds
    for w, dm in zip(_widths(quick_result), (8, 12, 16)):
        v = np.array([float(r["log10_act_hidden"]) for r in rows if int(r["d_model"]) == dm])
        assert math.isclose(w["log10_act_hidden_mean"], v.mean(), rel_tol=1e-12)
        assert math.isclose(w["log10_act_hidden_se"], v.std(ddof=1) / math.sqrt(2),
                            rel_tol=1e-9, abs_tol=1e-12)
    lam = _width_means(rows, "llc_mean")
    fin = lam[np.isfinite(lam)]
    if len(fin):
        assert math.isclose(s["llc_spread"], float(fin.max() - fin.min()), abs_tol=1e-12)
    # the summary CSV holds the same numbers and the verdicts
    srows = {r["metric"]: r["value"] for r in _read(quick_result.summary_csv_path)}
    assert math.isclose(float(srows["log10_vol_total_orders"]), s["log10_vol_total_orders"],
                        rel_tol=1e-9)
    assert srows["log10_vol_fisher_monotone"] == s["log10_vol_fisher_monotone"]
    assert srows["verdict_claim"] == s["verdict_claim"]


def test_compared_readings_match_a_direct_computation(quick_result):
    """The run's one-layer activation volume is log det⁺ of the Gram of the post-ReLU hidden
    units, computed here from a forward hook on the reloaded checkpoint; the sampled-label
    Fisher volume is reproduced by reading the checkpoint again with the same seed."""
    import torch

    import deadspec
    from deadspec.models import ModAddTransformer

    ck = quick_result.checkpoint_dir
    row = next(r for r in quick_result.rows if r["d_model"] == 12 and r["seed"] == 1)
    model = ModAddTransformer(p=23, d_model=12, n_heads=4)
    model.load_state_dict(torch.load(ck / "d_model_012_seed1.pt", weights_only=True))
    model = model.double().eval()
    data = torch.load(ck / "train_data_seed1.pt", weights_only=True)
    x, y = data["inputs"], data["targets"]
    seen = []
    hook = model.blocks[0].mlp.act.register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.no_grad():
        model(x)
    hook.remove()
    h = seen[0].reshape(-1, seen[0].shape[-1])  # one row per token, 4 * d_model features
    assert h.shape == (3 * x.shape[0], 48) and bool((h >= 0).all())
    ev = torch.linalg.eigvalsh(h.T @ h / h.shape[0]).flip(0)  # the Gram is a mean over rows
    k = row["active_act_hidden"]
    assert row["dim_act_hidden"] == 48 and 1 <= k <= 48
    direct = float(torch.log10(ev[:k]).sum())
    assert math.isclose(row["log10_act_hidden"], direct, rel_tol=1e-9, abs_tol=1e-9)
    again = deadspec.read(model, x, targets=y, layers=["blocks.0.mlp.fc_out"],
                          labels="sampled", seed=1)["blocks.0.mlp.fc_out"].fisher
    assert math.isclose(row["log10_fisher_sampled"], again.logdet_plus / math.log(10.0),
                        rel_tol=1e-9)
    assert row["active_fisher_sampled"] == again.active


def _rows(values_by_width, key):
    return [{"d_model": d, "generalised": True, "train_loss": 0.01, key: v}
            for d, vs in values_by_width.items() for v in vs]


def test_separation_is_the_closest_pair_in_standard_errors():
    rows = _rows({8: [0.0, 2.0], 16: [10.0, 12.0], 32: [13.0, 15.0]}, "llc_mean")
    widths = verdict.width_rows(rows, [8, 16, 32])
    # SE of each width = 1; closest pair 16 vs 32: |14 - 11| / sqrt(2)
    assert verdict.separation(widths, "llc_mean") == pytest.approx(3 / math.sqrt(2))
    assert math.isnan(verdict.separation(widths[:1], "llc_mean"))


def _summaries(act, fis, llc):
    rows = []
    for d in (8, 16, 32, 64):
        for i in range(3):
            rows.append({"d_model": d, "generalised": True, "train_loss": 0.01,
                         "log10_act_hidden": act(d, i), "log10_fisher_sampled": fis(d, i),
                         "llc_mean": llc(d, i)})
    widths = verdict.width_rows(rows, [8, 16, 32, 64])
    return {m: verdict.metric_summary(rows, widths, m) for m in verdict.METRICS}


def test_verdict_rule():
    noise = (-1.0, 0.0, 1.0)
    separated = lambda d, i: 10.0 * math.log2(d) + 0.1 * noise[i]  # noqa: E731
    flat = lambda d, i: 5.0 + noise[(i + d // 8) % 3]  # noqa: E731
    s = _summaries(separated, separated, flat)
    assert s["log10_act_hidden"]["separates"] and abs(s["llc_mean"]["rho"]) < verdict.FLAT_RHO
    assert verdict.verdicts(s)["claim"] == "reproduced"
    assert verdict.verdicts(s)["magnitude"] == "matched (30.0 orders)"
    # the LLC ordering the widths as well refutes the claim
    s = _summaries(separated, separated, separated)
    assert verdict.verdicts(s)["claim"].startswith("refuted (the calibrated LLC")
    # an activation volume whose seeds overlap across widths refutes it
    overlapping = lambda d, i: math.log2(d) + 5.0 * noise[i]  # noqa: E731
    s = _summaries(overlapping, separated, flat)
    assert not s["log10_act_hidden"]["separates"]
    assert verdict.verdicts(s)["claim"].startswith("refuted (the one-layer")
    # an LLC that is neither flat nor separated leaves it open
    trending = lambda d, i: math.log2(d) + 2.0 * noise[i]  # noqa: E731
    s = _summaries(separated, separated, trending)
    assert abs(s["llc_mean"]["rho"]) >= verdict.FLAT_RHO and not s["llc_mean"]["separates"]
    assert verdict.verdicts(s)["claim"].startswith("inconclusive")
    assert verdict.verdicts(_summaries(lambda d, i: 2.0 * d, separated, flat))[
        "magnitude"].startswith("not matched")
    # no LLC: a volume that does not separate is still refuted; one that does is open
    nan = lambda d, i: math.nan  # noqa: E731
    assert verdict.verdicts(_summaries(overlapping, separated, nan))["claim"].startswith(
        "refuted (the one-layer")
    assert verdict.verdicts(_summaries(separated, separated, nan))["claim"].startswith(
        "inconclusive (no calibrated LLC")


def test_verdict_needs_two_seeds_at_every_width():
    # one seed per width: no standard error, so no separation and no verdict, however ordered
    rows = [{"d_model": d, "generalised": True, "train_loss": 0.01, "log10_act_hidden": d,
             "log10_fisher_sampled": d, "llc_mean": 1.0 + (d % 3)} for d in (8, 16, 32, 64)]
    widths = verdict.width_rows(rows, [8, 16, 32, 64])
    s = {m: verdict.metric_summary(rows, widths, m) for m in verdict.METRICS}
    assert s["log10_act_hidden"]["rho"] == pytest.approx(1.0)
    assert math.isnan(s["log10_act_hidden"]["separation"])
    assert verdict.verdicts(s)["claim"].startswith("inconclusive (the activation volume needs")
    # a width with one finite seed among several: its neighbours are not compared across it
    rows = _rows({8: [0.0, 1.0], 16: [5.0, math.nan], 32: [10.0, 11.0]}, "llc_mean")
    assert math.isnan(verdict.separation(verdict.width_rows(rows, [8, 16, 32]), "llc_mean"))


def test_checkpoints_reload(quick_result):
    import torch

    from deadspec.models import ModAddTransformer

    ck = quick_result.checkpoint_dir
    assert (ck / "models.py").is_file()
    for seed in (0, 1):
        state = torch.load(ck / f"d_model_016_seed{seed}.pt", map_location="cpu",
                           weights_only=True)
        model = ModAddTransformer(p=23, d_model=16, n_heads=4)
        model.load_state_dict(state, strict=True)
        data = torch.load(ck / f"train_data_seed{seed}.pt", weights_only=True)
        assert data["inputs"].shape == (quick_result.rows[0]["n_train"], 3)
    # each seed draws its own split
    a = torch.load(ck / "train_data_seed0.pt", weights_only=True)["inputs"]
    b = torch.load(ck / "train_data_seed1.pt", weights_only=True)["inputs"]
    assert not torch.equal(a, b)


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
