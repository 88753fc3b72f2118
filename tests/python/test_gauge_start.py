"""`deadspec repro gauge-start` (issue #15, part 2): the gauge element, the orbit coordinate, the
statistics and the experiment at --quick size.

Unlike the plumbing tests of the other reproductions, the quick run asserts an outcome: the DDC
arms trained from g·θ₀ end at θ₀'s function to rounding, AdamW's and Muon's do not. That is the
exact-equivariance property at a small size, and it fails if a DDC optimizer's state stops
being invariant.
"""

from __future__ import annotations

import csv
import json
import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("matplotlib")

from deadspec.experiments import _corpus, _stats, gauge_start  # noqa: E402 - after the gates


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("gauge-start")
    return gauge_start.run(out, quick=True, progress=False, echo=None)


@pytest.fixture()
def lm():
    sz = gauge_start.SIZES["quick"].lm
    data = _corpus.lm_batches(sz.n_train, sz.n_val, sz.ctx, seed=3)
    return gauge_start._model(sz, 3, data[4]), data


def test_student_t_tail_matches_tables():
    # two-sided 5 % and 1 % critical values of Student's t
    cases = (
        (12.706205, 1, 0.05),
        (2.7764451, 4, 0.05),
        (2.2281389, 10, 0.05),
        (4.6040949, 4, 0.01),
    )
    for t, df, p in cases:
        assert _stats.student_t_sf2(t, df) == pytest.approx(p, rel=1e-6)
    assert _stats.student_t_sf2(1.9599640, 10**6) == pytest.approx(0.05, abs=1e-6)  # normal
    assert _stats.student_t_sf2(0.0, 3) == 1.0
    assert _stats.student_t_sf2(1.0, 1) == pytest.approx(0.5, rel=1e-12)


def test_paired_t_and_mean_se():
    r = _stats.paired_t([1.0, 2.0, 3.0, 4.0], [0.0, 0.5, 1.0, 2.0])
    d = [1.0, 1.5, 2.0, 2.0]
    mean = sum(d) / 4
    se = math.sqrt(sum((x - mean) ** 2 for x in d) / 3 / 4)
    assert r["mean"] == pytest.approx(mean) and r["se"] == pytest.approx(se)
    assert r["t"] == pytest.approx(mean / se)
    assert r["p"] == pytest.approx(_stats.student_t_sf2(mean / se, 3))
    assert r["n"] == 4
    same = _stats.paired_t([1.0, 2.0], [1.0, 2.0])
    assert same["p"] == 1.0 and same["mean"] == 0.0
    assert math.isnan(_stats.paired_t([1.0], [0.0])["p"])
    assert _stats.paired_t([1.0, float("nan"), 3.0], [0.0, 0.0, 1.0])["n"] == 2
    m, s = _stats.mean_se([1.0, 3.0, float("inf")])
    assert m == 2.0 and s == pytest.approx(1.0)


def test_element_moves_the_orbit_coordinate_by_2_log_c_and_keeps_the_function(lm):
    model, data = lm
    element = gauge_start.draw_element(model, 1.0, 0)
    assert element and all(bool((c > 0).all()) for c in element)
    assert gauge_start.verify_element(model, element, data[2]) <= 1e-9
    m64 = model.to(torch.float64)
    sizes = [c.numel() for c in element]
    starts = [sum(sizes[:k]) for k in range(len(sizes))]
    for k, c in enumerate(element):  # one gauge at a time: its own units move by 2·log c
        alone = [c if i == k else torch.ones_like(e) for i, e in enumerate(element)]
        before = gauge_start.orbit_coordinates(m64)
        gauge_start.apply_element(m64, alone)
        after = gauge_start.orbit_coordinates(m64)
        own = slice(starts[k], starts[k] + sizes[k])
        assert float((after[own] - before[own] - 2 * torch.log(c)).abs().max()) < 1e-12
    # the same seed draws the same element; another strength another one
    again = gauge_start.draw_element(model, 1.0, 0)
    assert all(torch.equal(a, b) for a, b in zip(element, again))
    other = gauge_start.draw_element(model, 2.0, 0)
    assert not all(torch.equal(a, b) for a, b in zip(element, other))


def test_verify_element_refuses_a_non_symmetry(lm, monkeypatch):
    model, data = lm
    element = gauge_start.draw_element(model, 1.0, 0)
    real = gauge_start.apply_element

    def broken(m, el):  # the producers scaled, one consumer left as it was
        real(m, el)
        with torch.no_grad():
            m.unembed.weight.mul_(1.5)

    monkeypatch.setattr(gauge_start, "apply_element", broken)
    with pytest.raises(ValueError, match="not a symmetry"):
        gauge_start.verify_element(model, element, data[2])
    with pytest.raises(ValueError, match="one element per gauge"):
        real(model, element[:-1])


def test_quick_run_shows_exact_equivariance(quick):
    top = max(quick.sizes.strengths)
    for key in ("kl_mean", "kl_at_min_mean"):  # the last step and the base's minimum
        kl = {(r["optimizer"], r["strength"]): r[key] for r in quick.summary}
        for arm in ("ddc-adam", "ddc-adam-split", "ddc-muon"):
            assert kl[(arm, top)] < 1e-9, arm  # the same function, to rounding
            assert kl[(arm, 0.0)] == 0.0
        for base in ("adamw", "muon"):
            assert kl[(base, top)] > 1e-4, base  # a different model
    rule1 = [v for v in quick.verdicts if v["rule"] == "equivariance"]
    assert {v["optimizer"] for v in rule1} == {"ddc-adam", "ddc-adam-split", "ddc-muon"}
    assert all(v["verdict"] == "reproduced" for v in rule1)
    assert {v["verdict"] for v in quick.verdicts} <= {"reproduced", "refuted", "inconclusive"}


def test_quick_run_files(quick):
    names = {p.name for p in quick.paths.values()}
    assert names == {
        "gauge_start.csv",
        "gauge_start_summary.csv",
        "gauge_start_tuning.csv",
        "gauge_start_kl.csv",
        "gauge_start.png",
        "config.json",
    }
    rows = _read_csv(quick.paths["gauge_start.csv"])
    sz = quick.sizes
    assert len(rows) == len(gauge_start.ARMS) * sz.seeds * (1 + len(sz.strengths))
    assert all(math.isfinite(float(r["kl"])) and float(r["kl"]) > -1e-12 for r in rows)
    for r in rows:  # a run from g·θ₀ starts at θ₀'s function (float32 rounding)
        assert float(r["init_diff"]) < 1e-4
    cfg = json.loads(quick.paths["config.json"].read_text())
    assert cfg["seeds"] == [0, 1] and cfg["rules"] == list(gauge_start.RULES)
    assert set(cfg["chosen_lr"]) == set(gauge_start.ARMS)
    curve = _read_csv(quick.paths["gauge_start_kl.csv"])
    evals = sz.lm.steps // sz.lm.eval_every + 1
    assert len(curve) == len(gauge_start.ARMS) * sz.seeds * len(sz.strengths) * evals
    assert {int(r["step"]) for r in curve} == set(range(0, sz.lm.steps + 1, sz.lm.eval_every))
    tuning = _read_csv(quick.paths["gauge_start_tuning.csv"])
    assert sum(r["chosen"] == "True" for r in tuning) == len(gauge_start.ARMS)
    assert quick.paths["gauge_start.png"].stat().st_size > 0


def test_cli(tmp_path, capsys):
    args = ["--quick", "--out", str(tmp_path), "--optimizers", "adamw", "ddc-adam", "--no-plot"]
    assert gauge_start.main(args) == 0
    out = capsys.readouterr().out
    assert out.index("rule 1") < out.index("verdict: equivariance: ddc-adam vs adamw")
    assert not (tmp_path / "gauge_start.png").exists()
    assert gauge_start.main(["--quick", "--out", str(tmp_path), "--seeds", "1"]) == 2
    assert "seeds must be an integer >= 2" in capsys.readouterr().err
    assert gauge_start.main(["--quick", "--out", str(tmp_path), "--strengths", "-1"]) == 2
    assert gauge_start.main(["--quick", "--out", str(tmp_path), "--steps", "0"]) == 2


def _summary_row(arm, strength, kl, d_min=0.0, p=1.0, pairs=5, bad=0):
    return {
        "optimizer": arm,
        "strength": strength,
        "seeds": 5,
        "kl_mean": kl,
        "kl_se": 0.0,
        "kl_at_min_mean": kl,
        "kl_at_min_se": 0.0,
        "kl_at_min_bad": bad,
        "pairs": pairs,
        "d_min_val_mean": d_min,
        "d_min_val_se": 0.01,
        "d_min_val_p": p,
    }


def _verdicts(ddc, base, ctrl=1e-3):
    strengths = (gauge_start.CONTROL, 2.0)
    summary = [
        _summary_row("ddc-adam", gauge_start.CONTROL, ctrl),
        _summary_row("ddc-adam", 2.0, **ddc),
        _summary_row("adamw", gauge_start.CONTROL, ctrl),
        _summary_row("adamw", 2.0, **base),
    ]
    got = gauge_start.verdicts(summary, ["adamw", "ddc-adam"], strengths)
    return {v["rule"]: v["verdict"] for v in got}


def test_verdict_rules_on_synthetic_summaries():
    # rule 1 reads the control: within 10x of it (+1e-5) and 10x below the base
    assert _verdicts({"kl": 5e-3}, {"kl": 0.3})["equivariance"] == "reproduced"
    assert _verdicts({"kl": 5e-3}, {"kl": 0.3}, ctrl=1e-4)["equivariance"] == "inconclusive"
    assert _verdicts({"kl": 0.3}, {"kl": 0.2})["equivariance"] == "refuted"
    assert _verdicts({"kl": 1e-3, "bad": 1}, {"kl": 0.3})["equivariance"] == "refuted"
    assert _verdicts({"kl": 0.0}, {"kl": 0.0}, ctrl=0.0)["equivariance"] == "refuted"
    assert _verdicts({"kl": 0.0}, {"kl": 5e-6}, ctrl=0.0)["equivariance"] == "inconclusive"
    # rule 2: the base hurt (Δ > 0, p < 0.05), the DDC arm not
    hurt = {"kl": 0.3, "d_min": 0.05, "p": 0.01}
    assert _verdicts({"kl": 1e-3}, hurt)["what it buys"] == "reproduced"
    assert _verdicts({"kl": 1e-3, "d_min": 0.06, "p": 0.01}, hurt)["what it buys"] == "refuted"
    assert _verdicts({"kl": 1e-3}, {"kl": 0.3, "d_min": -0.05, "p": 0.01})[
        "what it buys"
    ] == "inconclusive"  # the base was helped, not hurt
    assert _verdicts({"kl": 1e-3, "pairs": 4}, hurt)["what it buys"] == "inconclusive"
