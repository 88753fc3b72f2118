"""DDCAdam and DDCMuon on a DistributedDataParallel model (issue #14, item 2, DDP part): gloo on
loopback, 2 and 3 ranks with equal shards. The optimizers find the gauges through the wrapper,
the ranks stay bitwise identical, and the trajectory is one process's on the whole batch."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from dist_workers import ddc_ddp_rank, ddc_single, run_ranks

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")


@pytest.mark.parametrize("opt_name", ["DDCAdam", "DDCMuon"])
@pytest.mark.parametrize("world", [2, 3])
def test_ddc_under_ddp_is_the_single_process_trajectory(world, opt_name, tmp_path):
    (tmp_path / "ref").mkdir()
    ref = run_ranks(ddc_single, 1, tmp_path / "ref", opt_name)[0]
    assert ref["sites"]  # the model has gauges: the test is about conditioning, not AdamW
    outs = run_ranks(ddc_ddp_rank, world, tmp_path, opt_name)
    for o in outs:
        assert o["sites"] == ref["sites"]  # discovered through the DDP wrapper
        for a, b in zip(o["params"], outs[0]["params"]):
            assert torch.equal(a, b)  # ranks bitwise identical
        for a, b in zip(o["params"], ref["params"]):
            assert float((a - b).norm()) <= 1e-10 * float(b.norm()), opt_name
