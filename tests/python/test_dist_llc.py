"""LLC chains spread over the ranks of a process group (issue #14, item 3): gloo on loopback,
2 and 3 spawned processes, compared with one process given the same seed."""

from __future__ import annotations

import numpy as np
import pytest
import torch.distributed as dist

import deadspec.llc as llc
from dist_workers import LLC_KW, llc_data, llc_rank, llc_single, run_ranks

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")


@pytest.mark.parametrize("world", [2, 3])
def test_chains_over_ranks_are_the_single_process_run(world, tmp_path):
    # sequential chains: bitwise; vectorised: fewer chains per vmap batch, equal to round-off
    # (the reference runs in a spawned process set up as the ranks are: one thread each)
    for vectorize, tol in ((False, 0.0), (True, 1e-10)):
        (tmp_path / f"ref{int(vectorize)}").mkdir()
        ref = run_ranks(llc_single, 1, tmp_path / f"ref{int(vectorize)}", 7, vectorize)[0]
        sub = tmp_path / f"v{int(vectorize)}"
        sub.mkdir()
        outs = run_ranks(llc_rank, world, sub, 7, vectorize, True)
        for o in outs:  # every rank holds the whole result
            assert "error" not in o, o
            np.testing.assert_allclose(o["trace"], ref["trace"], rtol=tol, atol=0)
            assert abs(o["mean"] - ref["mean"]) <= tol * abs(ref["mean"])
            assert o["passes"] == ref["passes"]
        assert ref["trace"].shape == (LLC_KW["chains"], LLC_KW["draws"])


def test_ranks_without_a_seed_share_rank_zeros_entropy(tmp_path):
    outs = run_ranks(llc_rank, 2, tmp_path, None, False, True)
    np.testing.assert_array_equal(outs[0]["trace"], outs[1]["trace"])


def test_ranks_with_different_data_are_refused(tmp_path):
    outs = run_ranks(llc_rank, 2, tmp_path, 7, False, False)
    for o in outs:
        assert "every rank must pass the same model" in o["error"]


def test_group_needs_an_initialised_process_group():
    net, data = llc_data(0)
    with pytest.raises(ValueError, match="initialised torch.distributed"):
        llc.estimate(net, data, loss_fn=llc.gaussian_nll(0.5), group=object(), **LLC_KW)
