"""approach_slope, direction_order and DeadDirectionMonitor over 2 and 3 gloo ranks on loopback
(issue #14, item 1): each rank passes its shard of the batch; every rank gets the result of one
process on the concatenated batch (ranks in order), in float64 to 1e-10 relative."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.distributed as dist

import deadspec
from deadspec.monitor import DeadDirectionMonitor
from dist_workers import (
    APPROACH_T,
    approach_problem,
    approach_rank,
    run_ranks,
    two_ranks,
)

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")

RTOL = 1e-10


def _differences(
    got, want, where: str = "", scale: float = 0.0, rtol: float = RTOL
) -> list[str]:
    """Where ``got`` and ``want`` differ: numbers beyond ``rtol`` relative (to the larger of the
    two and ``scale``; NaN equals NaN), anything else unequal."""
    if isinstance(want, dict):
        if got.keys() != want.keys():
            return [f"{where}: keys {sorted(got)} != {sorted(want)}"]
        return [d for k in want
                for d in _differences(got[k], want[k], f"{where}.{k}", scale, rtol)]
    if isinstance(want, (list, tuple)) and not isinstance(got, np.ndarray):
        if len(got) != len(want):
            return [f"{where}: length {len(got)} != {len(want)}"]
        return [d for i, (g, w) in enumerate(zip(got, want))
                for d in _differences(g, w, f"{where}[{i}]", scale, rtol)]
    if isinstance(want, (float, np.ndarray)) and not isinstance(want, bool):
        a = np.asarray(got, dtype=np.float64)
        b = np.asarray(want, dtype=np.float64)
        if a.shape != b.shape:
            return [f"{where}: shape {a.shape} != {b.shape}"]
        nan = np.isnan(a) & np.isnan(b)
        big = np.maximum(np.maximum(np.abs(a), np.abs(b)), scale)
        with np.errstate(invalid="ignore"):
            ok = nan | (a == b) | (np.abs(a - b) <= rtol * big)
        return [] if ok.all() else [f"{where}: {got!r} != {want!r}"]
    return [] if got == want else [f"{where}: {got!r} != {want!r}"]


def _approach_differences(got: dict, want: dict) -> list[str]:
    """An ApproachSlope's fields (as a dict). ``directions`` (units=None: eigenvectors of the
    dead cluster, defined up to a rotation within it) are compared as their projector UUᵀ; on
    the activation side log det⁺ is exactly ``2r·log t`` + const, so ``stderr`` is the
    round-off of the residuals (~1e-12 of the slope): it is compared on the slope's scale."""
    got, want = dict(got), dict(want)
    u, v = got.pop("directions"), want.pop("directions")
    out = _differences(u @ u.T, v @ v.T, ".directions (projector)")
    out += _differences(got.pop("stderr"), want.pop("stderr"), ".stderr", abs(want["slope"]))
    return out + _differences(got, want)


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    """One run of 2 ranks doing all the 2-rank work (approach readings, a monitored training
    writing its files to ``files/``, the error cases), rank 0 also the single-process
    references: one start-up of the ranks."""
    tmp = tmp_path_factory.mktemp("two")
    (tmp / "files").mkdir()
    return tmp, run_ranks(two_ranks, 2, tmp, str(tmp / "files"))


@pytest.fixture(scope="module")
def reference(two):
    """One process reading the whole batch (no group), set up as the ranks are."""
    return two[1][0]["reference"]


@pytest.mark.parametrize("world", [2, 3])
def test_approach_over_ranks_is_the_single_process_result(world, reference, request, tmp_path):
    ref = reference["approach"]
    assert ref["cluster"]["units"] is None and ref["cluster"]["directions"].shape == (6, 2)
    assert ref["order-expected"]["fisher"].min() > 0 and ref["order-observed"]["fisher"].min() > 0
    if world == 2:
        outs = [o["approach"] for o in request.getfixturevalue("two")[1]]
    else:
        outs = run_ranks(approach_rank, world, tmp_path)
    for rank, o in enumerate(outs):
        for key, want in ref.items():
            check = _approach_differences if key in ("cluster", "fisher") else _differences
            bad = check(o["group"][key], want)
            assert not bad, (world, rank, key, bad)
            # a rank's shard alone reads otherwise: the equality above is not trivial
            assert check(o["local"][key], want), (world, rank, key, "local equals the whole")
        # every rank returns the same result, bit for bit (broadcast / all-reduced)
        assert not _differences(o["group"], outs[0]["group"], rtol=0.0), rank


def test_monitor_over_ranks_records_the_single_process_readings(reference, two):
    ref = reference["monitor"]
    assert len(ref["records"]) == 4 * 2 * 2  # 4 checkpoints × 2 layers × 2 sides
    assert ref["dead"].shape == (8, 3)  # the "dead-projection" reference cluster exists
    assert np.isfinite(ref["approach"]["0"]).all()
    out_dir = two[0] / "files"
    outs = [o["monitor"] for o in two[1]]
    for rank, o in enumerate(outs):
        # (`seconds` is each rank's wall time; `clipped` counts eigenvalues round-off made
        # negative, which a shard's forward pass rounds differently: neither is a reading)
        for got, want in zip(o["group"]["records"], ref["records"], strict=True):
            skip = ("seconds", "clipped")
            bad = _differences({k: v for k, v in got.items() if k not in skip},
                               {k: v for k, v in want.items() if k not in skip})
            assert not bad, (rank, bad)
        assert not _differences(o["group"]["rates"], ref["rates"]), rank
        assert not _differences(o["group"]["approach"], ref["approach"]), rank
        u, v = o["group"]["dead"], ref["dead"]
        assert not _differences(u @ u.T, v @ v.T), rank
        # the monitor of this rank's shard alone records other readings
        assert _differences(o["local"]["records"], ref["records"]), rank
    # only rank 0 wrote its files
    assert sorted(p.name for p in out_dir.iterdir()) == ["monitor-rank0.png", "records-rank0.csv"]
    assert (out_dir / "monitor-rank0.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = (out_dir / "records-rank0.csv").read_text().splitlines()
    assert len(rows) == 1 + len(ref["records"])


def test_errors_on_one_rank_raise_on_every_rank(two):
    outs = [o["errors"] for o in two[1]]
    for rank, o in enumerate(outs):
        assert "every rank of the group must pass the same seed" in o["seed"], rank
        assert "approach_slope: targets must have the inputs' batch size" in o["targets"], rank
        assert "layer '2' has no dead cluster" in o["cluster"], rank
        assert "approach_slope: activations of layer '0' must be finite" in o["nan"], rank
        assert o["after"] == outs[0]["after"]


def test_group_needs_an_initialised_process_group():
    net, x, y = approach_problem()
    with pytest.raises(ValueError, match="approach_slope: group= needs an initialised"):
        deadspec.approach_slope(net, x, layer="0", units=[0], t=APPROACH_T, group=object())
    direction = {"2.weight": torch.ones(3, 6, dtype=torch.float64)}
    with pytest.raises(ValueError, match="direction_order: group= needs an initialised"):
        deadspec.direction_order(net, x, direction, group=object())
    with pytest.raises(ValueError, match="DeadDirectionMonitor: group= needs an initialised"):
        DeadDirectionMonitor(net, ["0"], inputs=x, targets=y, group=object())
