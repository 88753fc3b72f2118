"""The DDC paper's reproductions (--quick): over-training, detection, grokking.

Only the plumbing is asserted (files, columns, finite numbers); the paper's outcomes are not
expected at these tiny sizes.
"""

from __future__ import annotations

import csv
import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("matplotlib")

from deadspec.experiments import (  # noqa: E402 - after the importorskip gates
    _corpus,
    _lm,
    _optimizers,
    detection,
    grokking,
    overtraining,
)


def _read_csv(path):
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def _finite(value) -> bool:
    return math.isfinite(float(value))


@pytest.fixture(scope="module")
def ot(tmp_path_factory):
    out = tmp_path_factory.mktemp("over-training")
    # two worker processes: the process pool of the real runs is exercised too
    return overtraining.run(out, quick=True, progress=False, echo=None, workers=2)


@pytest.fixture(scope="module")
def det(tmp_path_factory):
    out = tmp_path_factory.mktemp("detection")
    return detection.run(out, quick=True, progress=False, echo=None)


@pytest.fixture(scope="module")
def grok(tmp_path_factory):
    out = tmp_path_factory.mktemp("grokking")
    return grokking.run(out, quick=True, progress=False, echo=None, workers=1)


# --- shared pieces ---------------------------------------------------------------------------
def test_corpus_is_deterministic_and_in_vocabulary():
    a = _corpus.generate_corpus(500, seed=3)
    assert a == _corpus.generate_corpus(500, seed=3)
    assert a != _corpus.generate_corpus(500, seed=4)
    assert set(a) <= set(_corpus.corpus_vocabulary())
    x, y, xv, _, v = _corpus.lm_batches(4, 3, 8, seed=0)
    assert x.shape == y.shape == (4, 8) and xv.shape == (3, 8)
    assert torch.equal(x[:, 1:], y[:, :-1])  # next-token targets
    assert int(x.max()) < v


def test_lm_head_gauges_are_exact():
    torch.manual_seed(0)
    x, _, _, _, v = _corpus.lm_batches(4, 2, 6, seed=0)
    model = _lm.TinyLM(v, 6, d_model=8, n_heads=2, n_layers=1)
    gauges = _lm.lm_gauges(model)
    kinds = {type(g).__name__ for g in gauges}
    assert {"NormScale", "LogitShift", "Pair"} <= kinds
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for g in gauges[-2:]:  # the declared head gauges
            g.bind(model).check(model, x)  # raises when not an exact symmetry


def test_make_optimizer_rejects_unknown():
    model = _lm.TinyLM(10, 4, d_model=8, n_heads=2, n_layers=1)
    with pytest.raises(ValueError, match="name must be one of"):
        _optimizers.make_optimizer("sgd", model, lr=1e-3, weight_decay=0.0)


# --- over-training ---------------------------------------------------------------------------
def test_overtraining_quick_outputs(ot):
    import json

    assert ot.png_path.exists() and ot.png_path.stat().st_size > 0
    cols, rows = _read_csv(ot.csv_path)
    assert tuple(cols) == overtraining.CSV_COLUMNS
    sizes = ot.sizes
    n_seeds = 2
    assert len(rows) == len(overtraining.OPTIMIZERS) * len(sizes.weight_decays) * n_seeds
    for r in rows:
        for k in ("final_train", "final_val", "gap", "min_val", "val_rise", "logit_rms",
                  "imbalance_final"):
            assert _finite(r[k]), (k, r)
        assert float(r["gap"]) == pytest.approx(float(r["final_val"]) - float(r["final_train"]))
        assert float(r["val_rise"]) == pytest.approx(float(r["final_val"]) - float(r["min_val"]))
        assert r["corpus"] == "stdlib"
    # every arm x weight decay x rate ran on the tuning seed; the evaluation used the choice
    _, tuning = _read_csv(ot.tuning_path)
    assert len(tuning) == len(overtraining.OPTIMIZERS) * len(sizes.weight_decays) * len(sizes.lrs)
    assert {int(r["seed"]) for r in tuning} == {overtraining.TUNE_SEED}
    for s in ot.summary:
        # the rate of the grid with the lowest minimum validation loss on the tuning seed
        theirs = [r for r in ot.tuning if r["optimizer"] == s["optimizer"]
                  and r["weight_decay"] == s["weight_decay"]]
        assert len(theirs) == len(sizes.lrs)
        assert s["lr"] == sorted(theirs, key=lambda r: (r["min_val"], r["lr"]))[0]["lr"]
        assert s["diverged"] == 0
        mine = [r for r in ot.rows if r["optimizer"] == s["optimizer"]
                and r["weight_decay"] == s["weight_decay"]]
        assert {r["lr"] for r in mine} == {s["lr"]} and s["seeds"] == n_seeds
        vals = [r["val_rise"] for r in mine]
        assert s["val_rise_mean"] == pytest.approx(sum(vals) / len(vals))
    cols, curves = _read_csv(ot.curves_path)
    assert tuple(cols) == overtraining.CURVE_COLUMNS
    assert all(_finite(c["train_loss"]) and _finite(c["val_loss"]) for c in curves)
    assert set(ot.verdicts) == {"ddc-adam", "ddc-adam-split", "ddc-muon"}
    config = json.loads((ot.csv_path.parent / "config.json").read_text())
    assert config["rule"] == overtraining.RULE and config["seeds"] == [0, 1]
    assert config["verdicts"] == ot.verdicts


def test_overtraining_runs_are_reproducible_in_workers(ot):
    """A run in a worker process equals the same run here (seeded data and initialisation)."""
    r = next(r for r in ot.rows if r["optimizer"] == "ddc-adam" and r["seed"] == 1)
    again = overtraining.one_run("stdlib", ot.sizes, "ddc-adam", r["lr"], r["weight_decay"], 1)
    for k in ("min_val", "final_val", "final_train", "logit_rms", "imbalance_final"):
        assert again[k] == pytest.approx(r[k], rel=1e-6, abs=1e-7), k


def test_unit_imbalance_reads_the_rescaling_gauge():
    torch.manual_seed(0)
    model = _lm.TinyLM(16, 4, d_model=8, n_heads=2, n_layers=1)
    mlp = model.blocks[0].mlp
    with torch.no_grad():  # a balanced start: every unit's in- and out-norm equal
        mlp.fc_in.weight.copy_(torch.ones_like(mlp.fc_in.weight))
        mlp.fc_in.bias.zero_()
        mlp.fc_out.weight.copy_(torch.ones_like(mlp.fc_out.weight))  # both norms √8
    assert overtraining.unit_imbalance(model) == pytest.approx(0.0, abs=1e-12)
    x = torch.randint(0, 16, (3, 4))
    before = model(x)
    s = torch.exp(torch.randn(mlp.fc_in.out_features))
    with torch.no_grad():  # the ReLU gauge: unit j scaled by s_j in, 1/s_j out
        mlp.fc_in.weight.mul_(s[:, None])
        mlp.fc_out.weight.div_(s[None, :])
    torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-6)
    expect = float((2 * torch.log(s)).double().std())  # log(a_j/c_j) moves by 2 log s_j
    assert overtraining.unit_imbalance(model) == pytest.approx(expect, rel=1e-6)


def test_overtraining_rate_choice():
    def row(lr, min_val, diverged=False):
        return {"optimizer": "adamw", "weight_decay": 0.1, "lr": lr, "min_val": min_val,
                "diverged": diverged}

    # a diverged run never wins, even with the lowest minimum before it blew up
    tuning = [row(1e-3, 2.9), row(3e-3, 2.7), row(1e-2, 2.1, diverged=True)]
    assert overtraining.choose_lr(tuning, "adamw", 0.1) == 3e-3
    # a non-finite minimum never wins; a tie goes to the smaller rate
    tuning = [row(1e-2, 2.5), row(1e-3, 2.5), row(3e-3, math.nan)]
    assert overtraining.choose_lr(tuning, "adamw", 0.1) == 1e-3


def _ot_row(o, seed, rise, min_val=2.6, diverged=False):
    return {"optimizer": o, "weight_decay": 0.1, "seed": seed, "lr": 1e-3, "val_rise": rise,
            "min_val": min_val, "diverged": diverged,
            **{m: 0.0 for m in ("final_val", "gap", "logit_rms", "imbalance_final")}}


def test_overtraining_summary_pairs_by_seed_and_flags_divergence():
    chosen = {("adamw", 0.1): 1e-3, ("ddc-adam", 0.1): 1e-3}
    base = [_ot_row("adamw", s, 6.0 + 0.1 * s) for s in range(5)]
    ddc = [_ot_row("ddc-adam", s, 5.0 + 0.1 * s + 0.01 * (s % 2)) for s in range(5)]
    s = overtraining.summarize(base + ddc, ["adamw", "ddc-adam"], [0.1], chosen)
    d = next(x for x in s if x["optimizer"] == "ddc-adam")
    assert d["rise_diff"] == pytest.approx(-1.0 + 0.004) and d["verdict"].startswith("reproduced")
    assert overtraining.arm_verdicts(s) == {"ddc-adam": "reproduced"}
    # a base run that diverged (its rise is infinite) makes the comparison inconclusive
    base[2] = _ot_row("adamw", 2, math.inf, diverged=True)
    s = overtraining.summarize(base + ddc, ["adamw", "ddc-adam"], [0.1], chosen)
    d = next(x for x in s if x["optimizer"] == "ddc-adam")
    assert d["verdict"].startswith("inconclusive (1 paired runs diverged")
    assert next(x for x in s if x["optimizer"] == "adamw")["diverged"] == 1
    # one pair only: no test
    s = overtraining.summarize(base[:1] + ddc[:1], ["adamw", "ddc-adam"], [0.1], chosen)
    assert s[1]["verdict"] == "inconclusive (too few paired seeds)"


def test_overtraining_verdict_rule():
    t = {"mean": -0.5, "se": 0.1, "t": -5.0, "p": 0.01, "n": 5}
    flat = {"mean": 0.0, "se": 0.1, "t": 0.0, "p": 1.0, "n": 5}
    worse_fit = {"mean": 0.2, "se": 0.02, "t": 10.0, "p": 0.001, "n": 5}
    assert overtraining.verdict(t, flat).startswith("reproduced")
    assert overtraining.verdict(t, worse_fit).startswith("inconclusive (rise lower")
    assert overtraining.verdict(dict(t, mean=0.5), flat).startswith("refuted")
    assert overtraining.verdict(dict(t, p=0.2), flat).startswith("inconclusive (rise")
    rows = [{"optimizer": "ddc-adam", "verdict": v} for v in ("reproduced (x)", "refuted (y)")]
    assert overtraining.arm_verdicts(rows) == {"ddc-adam": "inconclusive"}
    rows[0]["verdict"] = "inconclusive (z)"
    assert overtraining.arm_verdicts(rows) == {"ddc-adam": "refuted"}


def test_stdlib_corpus_windows_do_not_overlap():
    x, y, xv, yv, v = _corpus.stdlib_batches(16, 8, 12, seed=3)
    assert x.shape == (16, 12) and xv.shape == (8, 12) and v == 128
    assert torch.equal(x[:, 1:], y[:, :-1]) and int(x.max()) < v
    again = _corpus.stdlib_batches(16, 8, 12, seed=3)
    assert all(torch.equal(a, b) for a, b in zip((x, y, xv, yv), again[:4]))
    rows = {tuple(r.tolist()) for r in torch.cat([x, y[:, -1:]], 1)}
    assert not rows & {tuple(r.tolist()) for r in torch.cat([xv, yv[:, -1:]], 1)}
    # real library text, every byte above 126 read as 127
    text = _corpus.stdlib_text().translate(bytes(min(b, 127) for b in range(256)))
    assert all(bytes(r.tolist()) in text for r in x[:4])
    assert not torch.equal(x, _corpus.stdlib_batches(16, 8, 12, seed=4)[0])


def test_overtraining_cli_rejects_bad_grid(tmp_path, capsys):
    assert overtraining.main(["--quick", "--out", str(tmp_path), "--lrs", "-1"]) == 2
    assert "lrs must be positive" in capsys.readouterr().err
    with pytest.raises(ValueError, match="corpus must be"):
        overtraining.run(None, quick=True, corpus="wiki", echo=None)
    with pytest.raises(ValueError, match="seeds must be"):
        overtraining.run(None, quick=True, seeds=0, echo=None)


# --- detection -------------------------------------------------------------------------------
def test_detection_quick_outputs(det):
    import json

    assert det.png_path.exists() and det.png_path.stat().st_size > 0
    cols, rows = _read_csv(det.csv_path)
    assert tuple(cols) == detection.CSV_COLUMNS
    sizes = det.sizes
    assert len(rows) == len(detection.OPTIMIZERS) * len(sizes.weight_decays) * 2  # 2 quick seeds
    for r in rows:
        # per block: post-ReLU activation and fc_out Fisher, log det+ and lambda_min
        assert int(r["cells_total"]) == 4 * sizes.n_layers
        counts = [int(r[f"cells_{k}"]) for k in ("reading", "approached", "dead", "eligible")]
        assert 0 <= counts[0] <= counts[1] <= counts[2] <= counts[3]
        # 24 probe sequences × 8 > 2 × 64 units; the Fisher cells cannot read
        assert int(r["cells_eligible"]) == 2 * sizes.n_layers
        assert int(r["readings"]) >= 4
        assert _finite(r["gap"])
    # the monitor leaves the model alone: the same run without it, at the rate it chose
    r = det.rows[0]
    plain = overtraining.one_run("stdlib", sizes, r["optimizer"], r["lr"], r["weight_decay"],
                                 r["seed"])  # fmt: skip
    assert plain["gap"] == pytest.approx(r["gap"], rel=1e-6, abs=1e-7)
    assert plain["min_val"] == pytest.approx(r["min_val"], rel=1e-6, abs=1e-7)
    cols, cells = _read_csv(det.cells_path)
    assert tuple(cols) == detection.CELL_COLUMNS
    assert len(cells) == len(rows) * 4 * sizes.n_layers
    assert {c["why_not"] for c in cells if c["side"] == "fisher"} == {
        f"probe {sizes.probe} ≤ 1 × parameters {4 * sizes.d_model**2 + sizes.d_model}"
    }
    n_units = sum(1 for u in det.units if u["optimizer"] == r["optimizer"] and u["seed"] == 0
                  and u["weight_decay"] == r["weight_decay"])  # fmt: skip
    assert n_units == int(r["readings"]) * sizes.n_layers
    config = json.loads((det.csv_path.parent / "config.json").read_text())
    assert config["readable"]["rows_per_width"] == 2.0 and config["rule"] == detection.RULE
    assert set(det.verdicts) == {"ddc-adam", "ddc-adam-split"}
    for s in det.summary:
        if s["optimizer"] != "adamw":
            assert s["base"] == "adamw" and s["verdict"].split()[0] in (
                "reproduced", "refuted", "inconclusive"
            )


# --- grokking --------------------------------------------------------------------------------
def test_grokking_quick_outputs(grok):
    import json

    assert grok.png_path.exists() and grok.png_path.stat().st_size > 0
    cols, rows = _read_csv(grok.csv_path)
    assert tuple(cols) == grokking.CSV_COLUMNS
    assert len(rows) == 2 * grok.sizes.seeds
    for r in rows:
        for k in ("final_train_acc", "final_test_acc", "best_test_acc", "final_train_loss"):
            assert _finite(r[k]) and float(r[k]) >= 0, (k, r)
        assert r["grokked"] in ("True", "False")
        assert r["model"] == "transformer"
    cols, curves = _read_csv(grok.curves_path)
    assert tuple(cols) == grokking.CURVE_COLUMNS
    assert all(0.0 <= float(c["test_acc"]) <= 1.0 for c in curves)
    assert {s["optimizer"] for s in grok.summary} == {"ddc-muon", "muon"}
    # every arm x rate x tuning seed ran, and each arm's evaluation used the rate it chose
    _, tuning = _read_csv(grok.tuning_path)
    sizes = grok.sizes
    assert len(tuning) == 2 * len(sizes.lrs) * sizes.tune_seeds
    assert {int(r["seed"]) for r in tuning} == {1000 + k for k in range(sizes.tune_seeds)}
    for s in grok.summary:
        # most tuning seeds grokked, then the best mean best-test accuracy, then the smaller rate
        def score(lr, o=s["optimizer"]):
            mine = [r for r in grok.tuning if r["optimizer"] == o and r["lr"] == lr]
            return (sum(r["grokked"] for r in mine),
                    sum(r["best_test_acc"] for r in mine) / len(mine), -lr)

        assert s["lr"] == max(sizes.lrs, key=score)
        assert {float(r["lr"]) for r in rows if r["optimizer"] == s["optimizer"]} == {s["lr"]}
    config = json.loads((grok.csv_path.parent / "config.json").read_text())
    assert config["rule"] == grokking.RULE and config["seeds"] == [0, 1]
    ddc = next(s for s in grok.summary if s["optimizer"] == "ddc-muon")
    assert grok.verdict == ddc["verdict"]
    _, summ = _read_csv(grok.summary_path)
    assert [r["optimizer"] for r in summ] == ["ddc-muon", "muon"]


def test_grokking_in_worker_processes_gives_the_same_runs(grok):
    again = grokking.run(None, quick=True, progress=False, echo=None, workers=2, plot=False)
    key = ("optimizer", "seed", "lr", "final_train_loss", "best_test_acc", "grok_step")
    assert [tuple(r[k] for k in key) for r in again.rows] == [
        tuple(r[k] for k in key) for r in grok.rows
    ]
    assert [r["final_train_loss"] for r in again.tuning] == [
        r["final_train_loss"] for r in grok.tuning
    ]
    assert again.curves == grok.curves


def test_grokking_adam_arms_tune_their_own_rate():
    res = [grokking.train_one(grokking.grok_sizes(True, "default", steps=5), "adamw", 0, lr=lr,
                              adamw_lr=3e-3, weight_decay=1.0) for lr in (1e-3, 3e-2)]
    assert res[0]["final_train_loss"] != res[1]["final_train_loss"]


def _tune_row(opt, lr, grokked, best):
    return {"optimizer": opt, "lr": lr, "grokked": grokked, "best_test_acc": best}


def test_grokking_rate_choice_rule():
    tuning = [
        _tune_row("muon", 0.01, True, 0.99), _tune_row("muon", 0.01, False, 0.5),
        _tune_row("muon", 0.03, True, 0.97), _tune_row("muon", 0.03, True, 0.96),
        _tune_row("muon", 0.003, False, 0.9), _tune_row("muon", 0.003, False, 0.9),
    ]
    # most seeds grokked wins, whatever the accuracy
    assert grokking.choose_lr(tuning, "muon", (0.003, 0.01, 0.03)) == 0.03
    # no seed grokked anywhere: the best mean accuracy; a tie: the smaller rate
    none = [dict(r, grokked=False) for r in tuning]
    assert grokking.choose_lr(none, "muon", (0.003, 0.01, 0.03)) == 0.03
    flat = [dict(r, grokked=False, best_test_acc=0.5) for r in tuning]
    assert grokking.choose_lr(flat, "muon", (0.03, 0.01, 0.003)) == 0.003


def test_grokking_verdict_rule_and_fisher_exact():
    from deadspec.experiments._stats import fisher_exact

    # the paper's 10/11 against 0/11; 3/3 against 2/3 (the old run) has p = 1 two-sided
    assert fisher_exact(10, 11, 0, 11)["p_two_sided"] == pytest.approx(3.4021705848e-05)
    assert fisher_exact(3, 3, 2, 3)["p_two_sided"] == pytest.approx(1.0)
    assert fisher_exact(3, 3, 2, 3)["p_greater"] == pytest.approx(0.5)
    # hypergeometric by hand: P(X >= 2) with 8 + 8 seeds and 2 hits in all = C(8,2)/C(16,2)
    assert fisher_exact(2, 8, 0, 8)["p_greater"] == pytest.approx(28 / 120)
    assert grokking.verdict(8, 8, 0, 8).startswith("reproduced")
    assert grokking.verdict(2, 8, 0, 8).startswith("inconclusive (DDCMuon 2/8")
    assert grokking.verdict(1, 8, 2, 8).startswith("refuted")
    assert grokking.verdict(0, 8, 0, 8).startswith("refuted")
    assert grokking.verdict(8, 8, 3, 8).startswith("inconclusive (regime not reached")
    with pytest.raises(ValueError, match="fisher_exact"):
        fisher_exact(3, 2, 0, 2)


def test_deep_mlp_shapes_and_validation():
    model = grokking.DeepModAddMLP(5, d_embed=4, width=8, depth=3)
    assert sum(isinstance(m, torch.nn.Linear) for m in model.modules()) == 3
    tokens = torch.tensor([[1, 2, 5], [0, 4, 5]])
    assert model(tokens).shape == (2, 5)
    with pytest.raises(ValueError, match="depth must be"):
        grokking.DeepModAddMLP(5, depth=1)
    with pytest.raises(ValueError, match="train_frac"):
        grokking.run(None, quick=True, train_frac=1.5, echo=None)
    with pytest.raises(ValueError, match="multiple of n_heads"):
        grokking.run(None, quick=True, width=15, echo=None)
    with pytest.raises(ValueError, match="lrs must be"):
        grokking.run(None, quick=True, lrs=[0.01, -1.0], echo=None)
    with pytest.raises(ValueError, match="model must be"):
        grokking.run(None, quick=True, model="cnn", echo=None)
    # the transformer has depth blocks and the rotation gauge of its heads
    from deadspec import gauges

    sizes = grokking.grok_sizes(True, "default", depth=3)
    model, head = grokking.build_model(sizes)
    assert head == "unembed" and len(model.blocks) == 3
    found = gauges.discover(model)
    assert sum(type(g).__name__ == "HeadRotation" for g in found) == 3
