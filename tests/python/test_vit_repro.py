"""`deadspec repro vit` (issue #15, part 5): the data, the model and its gauges, the verdict rule,
and the experiment at --quick size (plumbing: no outcome is expected at that size)."""

from __future__ import annotations

import csv
import json
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("matplotlib")
pytest.importorskip("sklearn")

from deadspec.experiments import vit  # noqa: E402 - after the importorskip gates


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    return vit.run(tmp_path_factory.mktemp("vit"), quick=True, progress=False, echo=None)


def test_digits_and_patches():
    x, y = vit.load_digits()
    assert x.shape == (1797, 8, 8) and x.dtype == torch.float32
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert sorted(set(y.tolist())) == list(range(10))
    img = torch.arange(64.0).reshape(1, 8, 8)
    p = vit.patches(img)
    assert p.shape == (1, 16, 4)
    assert p[0, 0].tolist() == [0.0, 1.0, 8.0, 9.0]  # the top-left 2 × 2 block
    assert p[0, 5].tolist() == [18.0, 19.0, 26.0, 27.0]  # row 1, column 1 of the 4 × 4 grid
    assert sorted(p.flatten().tolist()) == list(range(64))
    with pytest.raises(ValueError, match=r"\(N, 8, 8\)"):
        vit.patches(torch.zeros(2, 64))


def test_gauges_are_symmetries_of_the_vit():
    torch.manual_seed(0)
    model = vit.TinyViT(16, 2, 2)
    x, y = vit.load_digits()
    gauges = vit.vit_gauges(model)
    kinds = {type(g).__name__ for g in gauges}
    assert {"NormScale", "Pair", "LogitShift"} <= kinds
    assert sum("ln_f -> head" in g.describe() for g in gauges) == 1  # declared once
    assert sum(g.describe() == "LogitShift head" for g in gauges) == 1
    for g in gauges:
        assert g.check(model, x[:64], y[:64], generator=torch.Generator().manual_seed(1)) < 1e-10


def _rows(arm, deltas, base=2.0, diverged=()):
    return [
        {
            "optimizer": arm,
            "seed": s,
            "final_val": float("nan") if s in diverged else base + d,
            "min_val": base + d / 2,
            "diverged": s in diverged,
        }
        for s, d in enumerate(deltas)
    ]


def test_verdict_rule():
    base = _rows("adamw", [0.0, 0.01, -0.01, 0.02, 0.0])
    lower = _rows("ddc-adam", [-0.10, -0.09, -0.12, -0.08, -0.11])
    higher = _rows("ddc-adam", [0.10, 0.09, 0.12, 0.08, 0.11])
    mixed = _rows("ddc-adam", [0.10, -0.09, 0.12, -0.08, 0.01])
    verdict = {}
    for name, rows in (("lower", lower), ("higher", higher), ("mixed", mixed)):
        (v,) = vit.verdicts(base + rows, ["adamw", "ddc-adam"])
        verdict[name] = v["verdict"]
        assert v["pairs"] == 5
    assert verdict == {"lower": "reproduced", "higher": "refuted", "mixed": "inconclusive"}
    # fewer than MIN_SEEDS pairs: inconclusive whatever the test says
    (v,) = vit.verdicts(base[:3] + lower[:3], ["adamw", "ddc-adam"])
    assert v["verdict"] == "inconclusive" and v["p_final_val"] < 0.05
    assert vit.verdicts(lower, ["ddc-adam"]) == []  # no adamw arm: no verdict
    # a diverged DDC run is not dropped in its favour: more divergences than adamw refute
    lower_div = _rows("ddc-adam", [-0.10, -0.09, -0.12, -0.08, -0.11, -0.1], diverged=(5,))
    base6 = _rows("adamw", [0.0, 0.01, -0.01, 0.02, 0.0, 0.0])
    (v,) = vit.verdicts(base6 + lower_div, ["adamw", "ddc-adam"])
    assert v["verdict"] == "refuted" and v["diverged"] == 1 and v["pairs"] == 5


def test_quick_run(quick):
    names = {p.name for p in quick.paths.values()}
    assert names == {"vit.csv", "vit_tuning.csv", "vit_curves.csv", "vit.png", "config.json"}
    with open(quick.paths["vit.csv"], newline="") as f:
        rows = list(csv.DictReader(f))
    sz = quick.sizes
    assert len(rows) == 2 * sz.seeds
    assert {r["optimizer"] for r in rows} == {"adamw", "ddc-adam"}
    with open(quick.paths["vit_tuning.csv"], newline="") as f:
        tuning = list(csv.DictReader(f))
    assert len(tuning) == 2 * len(sz.lrs) * sz.tune_seeds
    cfg = json.loads(quick.paths["config.json"].read_text())
    assert cfg["measured_seeds"] == [0, 1] and cfg["tuning_seeds"] == [1000]
    assert set(cfg["chosen_lr"]) == {"adamw", "ddc-adam"}
    (v,) = quick.verdicts
    assert v["optimizer"] == "ddc-adam" and v["verdict"] == "inconclusive"  # 2 seeds < 5
    for r in quick.summary:
        assert 0.0 <= r["final_acc_mean"] <= 1.0


def test_cli_errors(tmp_path, capsys, monkeypatch):
    assert vit.main(["--quick", "--out", str(tmp_path), "--seed", "999"]) == 2  # overlaps 1000
    assert "must not include the tuning seeds" in capsys.readouterr().err
    assert vit.main(["--quick", "--out", str(tmp_path), "--seeds", "1"]) == 2
    assert "seeds must be an integer >= 2" in capsys.readouterr().err
    assert vit.main(["--quick", "--out", str(tmp_path), "--lrs", "0"]) == 2
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # scikit-learn not installed
    assert vit.main(["--quick", "--out", str(tmp_path)]) == 2
    assert "needs scikit-learn" in capsys.readouterr().err
