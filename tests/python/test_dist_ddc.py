"""DDCAdam and DDCMuon on a DistributedDataParallel model (issue #14, item 2, DDP part): gloo on
loopback, 2 and 3 ranks with equal shards. The optimizers find the gauges through the wrapper,
the ranks stay bitwise identical, and the trajectory is one process's on the whole batch."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from dist_workers import ddc_ddp_rank, ddc_single, run_ranks

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")


@pytest.mark.parametrize("world", [2, 3])
def test_ddc_under_ddp_is_the_single_process_trajectory(world, tmp_path):
    names = ["DDCAdam", "DDCMuon"]
    outs = run_ranks(ddc_ddp_rank, world, tmp_path, names)  # (both optimizers, one spawn)
    for opt_name in names:
        ref = ddc_single(opt_name)
        assert ref["sites"]  # the model has gauges: the test is about conditioning, not AdamW
        for o in outs:
            got = o[opt_name]
            assert got["sites"] == ref["sites"]  # discovered through the DDP wrapper
            for a, b in zip(got["params"], outs[0][opt_name]["params"]):
                assert torch.equal(a, b)  # ranks bitwise identical
            for a, b in zip(got["params"], ref["params"]):
                assert float((a - b).norm()) <= 1e-10 * float(b.norm()), opt_name
