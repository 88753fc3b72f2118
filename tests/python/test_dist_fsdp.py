"""The DDC optimizers and a reading on an FSDP2 model (``fully_shard``: parameters are
DTensors sharded by rows), gloo on loopback (issue #14, item 2): discovery works on the sharded
model, the trajectory is one process's on the whole batch (float64, ≤ 1e-10 relative over 6
steps), a torch.distributed.checkpoint save and resume continues the run exactly, and the
ranks agree on the non-finite policy. Each set of ranks is spawned once per module (the
fixtures) and serves several tests."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from dist_workers import READ_KW, read_problem, run_ranks

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")

OPTS = ("DDCAdam", "DDCMuon")
CASES = {2: [(p, o) for p in ("mlp", "transformer") for o in OPTS],
         3: [("mlp", o) for o in OPTS] + [("transformer", "DDCAdam")]}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm()) / max(float(b.norm()), 1e-300)


@pytest.fixture(scope="module", params=[2, 3])
def trained(request, tmp_path_factory):
    from fsdp_workers import fsdp_rank

    world = request.param
    return world, run_ranks(fsdp_rank, world, tmp_path_factory.mktemp(f"fsdp{world}"),
                            CASES[world], timeout=150.0)


@pytest.fixture(scope="module")
def misc(tmp_path_factory):
    from fsdp_workers import fsdp_misc_rank

    return run_ranks(fsdp_misc_rank, 2, tmp_path_factory.mktemp("misc"))


def test_ddc_under_fsdp2_is_the_single_process_trajectory(trained):
    from fsdp_workers import fsdp_single

    world, outs = trained
    for case in CASES[world]:
        if "error" in outs[0][case]:
            continue
        ref = fsdp_single(*case)
        assert ref["sites"]  # the model has gauges: the test is about conditioning, not AdamW
        # the parameters are sharded (3 ranks on the MLP: a rank holds no row of the output)
        rows = outs[0][case]["local_rows"]
        assert any(r < p.shape[0] for r, p in zip(rows, ref["params"]))
        for o in outs:
            got = o[case]
            assert got["sites"] == ref["sites"], case  # discovered on the sharded model
            for a, b in zip(got["params"], ref["params"]):
                assert _rel(a, b) <= 1e-10, (world, case, _rel(a, b))


def test_ddc_adam_refuses_head_blocks_split_between_ranks(trained):
    world, outs = trained
    case = ("transformer", "DDCAdam")
    for o in outs:  # every rank alike (none is left waiting in a collective)
        if world == 3:  # 2 heads of 8 rows over 3 ranks: rows 0:6, 6:12, 12:16
            assert "heads split between ranks" in o[case]["error"]
        else:
            assert "error" not in o[case]


def test_fsdp2_checkpoint_resume_continues_the_run_exactly(tmp_path):
    from fsdp_workers import fsdp_checkpoint_rank

    outs = run_ranks(fsdp_checkpoint_rank, 2, tmp_path, str(tmp_path / "ckpt"))
    for o in outs:
        for name in OPTS:
            for a, b in zip(o[name]["resumed"], o[name]["uninterrupted"]):
                assert torch.equal(a, b), name
    # DDCMuon's radial state of the producers travels in their parameter state
    assert "site.scale_exp_avg" in outs[0]["DDCMuon"]["keys"]


def test_fsdp2_nonfinite_gradient_on_one_rank_skips_the_step_on_every_rank(misc):
    for o in misc:
        got = o["nonfinite"]
        assert got["warned"]
        for a, b in zip(got["after"], got["before"]):
            assert torch.equal(a, b)


def test_fsdp2_options_the_sharded_step_does_not_cover_raise(misc):
    for o in misc:
        assert len(o["options"]) == 3
        for kw, msg in o["options"].items():
            assert msg is not None and "FSDP2" in msg, kw


def test_read_of_an_fsdp2_model_is_the_read_of_the_whole_batch(misc):
    import deadspec

    net, x, y = read_problem()
    ref = deadspec.read(net, x, targets=y, **READ_KW).to_records()
    for o in misc:
        got_all = o["read"]["records"]
        assert len(got_all) == len(ref)
        for got, want in zip(got_all, ref):
            assert (got["layer"], got["side"]) == (want["layer"], want["side"])
            assert got["active"] == want["active"]
            assert abs(got["logdet_plus"] - want["logdet_plus"]) <= 1e-10 * abs(
                want["logdet_plus"])


def test_the_readme_torchrun_examples_run(tmp_path):
    """examples/distributed: the DDP read and the FSDP2 DDCAdam run of the README, launched as
    the README says (torchrun, 2 processes; small sizes)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "examples" / "distributed"
    runs = {
        "read_ddp.py": ["--samples", "256", "--steps", "10"],
        "fsdp_ddcadam.py": ["--steps", "10", "--ckpt", str(tmp_path / "ckpt")],
    }
    for script, args in runs.items():
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", "2", str(root / script), *args]
        env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo"}
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
        assert res.returncode == 0, (script, res.stdout[-2000:], res.stderr[-3000:])
        assert "step 10: loss" in res.stdout, (script, res.stdout)
    assert (tmp_path / "ckpt" / ".metadata").exists()  # the checkpoint was written
