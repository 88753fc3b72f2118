"""read(..., group=) over 2 and 3 gloo ranks on loopback (issue #14, item 1): each rank reads
its shard, every rank gets the reading of the concatenated batch, equal to one process's."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist

import deadspec
from dist_workers import read_ddp_rank, read_problem, read_rank, read_single, run_ranks

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")


def _close(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return a == b or abs(a - b) <= 1e-10 * max(abs(a), abs(b), 1e-300)
    return a == b


@pytest.mark.parametrize("world", [2, 3])
def test_read_over_ranks_is_the_read_of_the_whole_batch(world, tmp_path):
    (tmp_path / "ref").mkdir()
    ref = run_ranks(read_single, 1, tmp_path / "ref")[0]["records"]  # (set up as the ranks)
    sides = {(r["layer"], r["side"]) for r in ref}
    # the activation side of layer 0 (100 wide, 60 rows) keeps rows; the others reduce Grams
    assert ("0", "fisher") in sides and ("2", "fisher") in sides
    outs = run_ranks(read_rank, world, tmp_path)
    for o in outs:
        assert o["n"] == 60
        assert len(o["records"]) == len(ref)
        for got, want in zip(o["records"], ref):
            assert got.keys() == want.keys()
            # (`clipped` counts the eigenvalues round-off made negative: a shard's forward pass
            # rounds differently from the whole batch's, so that count is not a reading)
            bad = {k: (got[k], want[k]) for k in want
                   if k != "clipped" and not _close(got[k], want[k])}
            assert not bad, (got["layer"], got["side"], bad)
        # the per-sample factors travel, never per-sample gradients: far below N·d_in·d_out
        assert 0 < o["bytes"] < 60 * (4 * 100 + 100 * 3) * 8


def test_read_of_a_ddp_model_reads_the_wrapped_module_and_ddp_still_trains(tmp_path):
    (tmp_path / "ref").mkdir()
    ref = run_ranks(read_single, 1, tmp_path / "ref")[0]["records"]
    outs = run_ranks(read_ddp_rank, 2, tmp_path)
    for o in outs:
        for got, want in zip(o["records"], ref):
            assert got["layer"] == want["layer"]  # names without DDP's "module." prefix
            assert _close(got["logdet_plus"], want["logdet_plus"])
            assert got["active"] == want["active"]
    for a, b in zip(outs[0]["params"], outs[1]["params"]):
        assert torch.equal(a, b)


def test_read_group_needs_an_initialised_process_group():
    net, x, y = read_problem()
    with pytest.raises(ValueError, match="initialised torch.distributed"):
        deadspec.read(net, x, targets=y, group=object())
