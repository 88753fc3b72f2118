"""Tests of the reduced-rank regression validation (deadspec.experiments.rrr)."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch

from deadspec.experiments import rrr
from deadspec.models import ReducedRankRegression
from deadspec.theory import rrr_rlct


def test_spearman_matches_scipy_with_ties_and_nans():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 5, 30).astype(float)
    y = x + rng.normal(0, 1.0, 30)
    y[3] = np.nan
    rho, n = rrr.spearman(x, y)
    assert n == 29
    stats = pytest.importorskip("scipy.stats")
    ok = np.isfinite(y)
    assert rho == pytest.approx(stats.spearmanr(x[ok], y[ok]).statistic, abs=1e-12)
    assert rrr.spearman([1, 2, 3, 4], [4, 3, 2, 1])[0] == pytest.approx(-1.0)
    assert math.isnan(rrr.spearman([1, 1, 1], [1, 2, 3])[0])
    assert math.isnan(rrr.spearman([1, 2], [1, 2])[0])
    # values equal up to round-off tie only when asked to (sig_digits)
    x = [4.0 + 1e-13, 4.0 - 1e-13, 2.0, 6.0]
    lam = [1.0, 2.0, 0.5, 3.0]
    assert rrr.spearman(x, lam)[0] == pytest.approx(0.8)  # the 1e-13 decides the order
    assert rrr.spearman(x, lam, sig_digits=9)[0] == pytest.approx(
        rrr.spearman([4, 4, 2, 6], lam)[0]
    )
    assert rrr.spearman([0.0, -3.0, 1e-300, np.nan], [1, 2, 3, 4], sig_digits=3)[1] == 3
    with pytest.raises(ValueError, match="deadspec.spearman"):
        rrr.spearman([1, 2, 3], [1, 2])


def test_grids_cover_the_four_cases():
    for size in ("quick", "default", "full"):
        cases = {rrr.aw_case(*p) for p in rrr.grid_for(size)}
        assert cases == {1, 2, 3, 4}, size
    with pytest.raises(ValueError, match="size"):
        rrr.grid_for("huge")


def test_fit_minimum_is_a_critical_point_of_rank_h():
    M, N, H, r = 5, 4, 3, 1
    x, y, _ = rrr._make_data(M, N, r, 500, 0.1, 0)
    model = ReducedRankRegression(M, N, H).double()
    rrr.fit_minimum(model, x, y)
    loss = ((y - model(x)) ** 2).sum(1).mean()
    grads = torch.autograd.grad(loss, list(model.parameters()))
    assert max(float(g.abs().max()) for g in grads) < 1e-10
    assert torch.linalg.matrix_rank(model.product()).item() == H
    # balanced factorisation: AAᵀ = BᵀB
    a, b = model.A.weight.detach(), model.B.weight.detach()
    torch.testing.assert_close(a @ a.T, b.T @ b)


def test_quick_run_writes_csv_and_pngs(tmp_path):
    out = tmp_path / "rrr"
    assert rrr.main(["--quick", "--out", str(out), "--no-progress"]) == 0
    for name in ("rrr.csv", "rrr_summary.csv", "rrr_llc.png", "rrr_dds.png"):
        assert (out / name).stat().st_size > 0, name
    with open(out / "rrr.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(rrr.grid_for("quick"))
    assert set(rows[0]) == set(rrr.CSV_COLUMNS)
    for row in rows:
        M, N, H, r = (int(row[k]) for k in "MNHr")
        assert float(row["lam"]) == rrr_rlct(M, N, H, r)[0]
        assert "dds:" not in row["error"], row["error"]
        assert float(row["grad_norm"]) < 1e-8
        assert int(row["dds_passes"]) >= 1
        # the LLC ran (finite) and costs many more passes than the DDS reading
        assert math.isfinite(float(row["llc"])), row["error"]
        assert int(row["llc_passes"]) > 10 * int(row["dds_passes"])
        assert math.isfinite(float(row["act_logdet_A"]))
        if int(row["dead_count_A"]) == 0:
            assert row["slope_A"] == "nan"
    with open(out / "rrr_summary.csv") as f:
        summary = {r["quantity"]: r for r in csv.DictReader(f)}
    assert "llc_recovery_mean_ratio" in summary and "spearman_act_logdet_A" in summary


def test_run_validates_arguments():
    with pytest.raises(ValueError, match="size"):
        rrr.run(None, size="huge", echo=None)
    with pytest.raises(ValueError, match="noise"):
        rrr.run(None, quick=True, noise=0.0, echo=None)


def test_within_architecture_targets_take_the_worst_architecture():
    # two architectures of three ranks: act_logdet_A tracks λ in the first and runs against it
    # in the second (mean within ρ 0, worst −1: the target fails); the joint reading tracks λ
    # across the grid (target passes); a per-layer reading is no longer targeted across
    rows = []
    for arch, sign in (((3, 3, 2), 1.0), ((4, 4, 3), -1.0)):
        for k, lam in enumerate((1.0, 2.0, 3.0)):
            lam = lam + 10 * (arch[0] - 3)
            row = {"M": arch[0], "N": arch[1], "H": arch[2], "lam": lam}
            for col, _, _ in rrr.OBSERVABLES:
                row[col] = float(k)
            row["act_logdet_A"] = sign * k
            row["fisher_logdet_joint"] = lam
            rows.append(row)
    recovery, sp, cost, targets = rrr._summarise(rows)
    s = sp["act_logdet_A"]
    assert s["within_rho"] == pytest.approx(0.0) and s["within_worst"] == pytest.approx(-1.0)
    assert targets["act_logdet_A: within each arch, right-sign rho>=0.95"] is False
    assert targets["act_logdet_B: within each arch, right-sign rho>=0.95"] is True
    assert targets["fisher_logdet_joint: |rho|>=0.8 right sign"] is True
    assert not any(k.startswith("act_logdet_A: |rho|") for k in targets)
