"""Workers of the torch.distributed tests (gloo on loopback), run in spawned processes."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def run_ranks(target: Any, world: int, tmp: Path, *args: Any, timeout: float = 90.0) -> list:
    """Run ``target(rank, world, init_file, out_file, *args)`` on ``world`` spawned processes
    (a guard against a hang, not a timing); returns each rank's ``torch.save`` d result."""
    init = tmp / "init"
    outs = [tmp / f"rank{r}.pt" for r in range(world)]
    ctx = mp.start_processes(
        _entry, args=(target, world, str(init), [str(o) for o in outs], args), nprocs=world,
        join=False, start_method="spawn",
    )
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=1.0):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            raise AssertionError(f"the {world} ranks did not finish within {timeout:.0f} s")
    return [torch.load(o, weights_only=False) for o in outs]


def _entry(rank: int, target: Any, world: int, init: str, outs: list[str], args: tuple) -> None:
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    try:
        torch.save(target(rank, world, *args), outs[rank])
        dist.barrier()  # every rank done before any leaves (a peer gone mid-way aborts gloo)
    finally:
        dist.destroy_process_group()
    # Done: leave without the interpreter's finalisation, where gloo's worker threads can still
    # be tearing down and abort the process ("terminate called without an active exception":
    # the rare SIGABRT of a full-suite run; 3 of 6 torchrun runs of the examples under load).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def llc_data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(200, 4, generator=g, dtype=torch.float64)
    y = x @ torch.ones(4, 1, dtype=torch.float64) + 0.5 * torch.randn(200, 1, generator=g,
                                                                       dtype=torch.float64)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1))
    net = net.double()
    torch.manual_seed(seed)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.5)
    return net, (x, y)


LLC_KW = dict(epsilon=1e-4, gamma=10.0, chains=5, draws=40, burnin=10, batch_size=50,
              warn=False, progress=False, check_nll=False)


def llc_rank(rank: int, world: int, seed: Any, vectorize: Any, same: bool) -> dict:
    import deadspec.llc as llc

    net, data = llc_data(0 if same else rank)
    try:
        res = llc.estimate(net, data, loss_fn=llc.gaussian_nll(0.5), seed=seed,
                           vectorize=vectorize, group=dist.group.WORLD, **LLC_KW)
    except ValueError as exc:
        return {"error": str(exc)}
    return {"trace": res.loss_trace, "per_chain": res.per_chain, "mean": res.mean,
            "std": res.std, "passes": res.passes}


def read_problem():
    g = torch.Generator().manual_seed(3)
    torch.manual_seed(3)
    net = torch.nn.Sequential(torch.nn.Linear(4, 100), torch.nn.ReLU(), torch.nn.Linear(100, 3))
    net = net.double().eval()
    x = torch.randn(60, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (60,), generator=g)
    return net, x, y


READ_KW = dict(layers=["0", "1", "2"], center=True)


def shard(n: int, rank: int, world: int) -> slice:
    """Rank r's rows of n, contiguous and in rank order (sizes differ by at most one)."""
    sizes = [n // world + (1 if r < n % world else 0) for r in range(world)]
    start = sum(sizes[:rank])
    return slice(start, start + sizes[rank])


def read_rank(rank: int, world: int) -> dict:
    import deadspec

    net, x, y = read_problem()
    sl = shard(x.shape[0], rank, world)
    r = deadspec.read(net, x[sl], targets=y[sl], group=dist.group.WORLD, **READ_KW)
    return {"records": r.to_records(), "n": r.n_samples, "bytes": r.bytes_sent}


def llc_single(rank: int, world: int, seed: Any, vectorize: Any) -> dict:
    """The single-process estimate, in a spawned process set up as the ranks are (one thread):
    the reference the spread runs are compared with."""
    import deadspec.llc as llc

    net, data = llc_data(0)
    res = llc.estimate(net, data, loss_fn=llc.gaussian_nll(0.5), seed=seed, vectorize=vectorize,
                       **LLC_KW)
    return {"trace": res.loss_trace, "mean": res.mean, "passes": res.passes}


def read_single(rank: int, world: int) -> dict:
    """The single-process reading of the whole batch, set up as the ranks are."""
    import deadspec

    net, x, y = read_problem()
    return {"records": deadspec.read(net, x, targets=y, **READ_KW).to_records()}


def ddc_problem():
    g = torch.Generator().manual_seed(5)
    torch.manual_seed(5)
    net = torch.nn.Sequential(
        torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.LayerNorm(16), torch.nn.Linear(16, 16),
        torch.nn.ReLU(), torch.nn.Linear(16, 4),
    ).double()
    x = torch.randn(48, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (48,), generator=g)
    return net, x, y


def _ddc_train(model, opt_name: str, x, y, steps: int = 6) -> None:
    from deadspec.optim import DDCAdam, DDCMuon

    make = {"DDCAdam": lambda m: DDCAdam(m, lr=1e-2, weight_decay=0.01),
            "DDCMuon": lambda m: DDCMuon(m, lr=1e-2, weight_decay=0.01)}[opt_name]
    opt = make(model)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return opt


def ddc_single(opt_name: str) -> dict:
    """The single-process trajectory on the whole batch (the reference, run in the test)."""
    net, x, y = ddc_problem()
    opt = _ddc_train(net, opt_name, x, y)
    return {"params": [p.detach().clone() for p in net.parameters()], "sites": opt.sites}


def ddc_ddp_rank(rank: int, world: int, opt_names: list[str]) -> dict:
    """Per optimizer: the same steps on a DDP model, each rank its equal shard."""
    from torch.nn.parallel import DistributedDataParallel

    out = {}
    for opt_name in opt_names:
        net, x, y = ddc_problem()
        ddp = DistributedDataParallel(net)
        sl = shard(x.shape[0], rank, world)  # equal shards: DDP's mean of means is the mean
        opt = _ddc_train(ddp, opt_name, x[sl], y[sl])
        out[opt_name] = {"params": [p.detach().clone() for p in net.parameters()],
                         "sites": opt.sites}
    return out


def read_ddp_rank(rank: int, world: int) -> dict:
    """A read over the ranks of a DDP model, then a DDP training step: the reading reads the
    module DDP wraps and leaves DDP's reducer as it was."""
    from torch.nn.parallel import DistributedDataParallel

    import deadspec

    net, x, y = read_problem()
    ddp = DistributedDataParallel(net)
    sl = shard(x.shape[0], rank, world)
    r = deadspec.read(ddp, x[sl], targets=y[sl], group=dist.group.WORLD, **READ_KW)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    for _ in range(2):  # DDP still trains: its gradients are all-reduced, ranks identical
        opt.zero_grad()
        torch.nn.functional.cross_entropy(ddp(x[sl]), y[sl]).backward()
        opt.step()
    return {"records": r.to_records(), "params": [p.detach().clone() for p in net.parameters()]}


def approach_problem():
    """A ReLU net whose first layer has two near-dead units (rows ×0.05): a dead cluster of
    the layer's activation Gram, and a Fisher side that bends with t (not an exact power)."""
    g = torch.Generator().manual_seed(7)
    torch.manual_seed(7)
    net = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3))
    net = net.double().eval()
    with torch.no_grad():
        net[0].weight[:2] *= 0.05
        net[0].bias[:2] *= 0.05
    x = torch.randn(60, 8, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (60,), generator=g)
    return net, x, y


APPROACH_T = [0.1, 0.2, 0.4, 0.8]


def _approach_readings(net, x, y, group) -> dict:
    import dataclasses

    import deadspec

    cluster = deadspec.approach_slope(net, x, layer="0", t=APPROACH_T, gap_ratio=100.0,
                                      group=group)
    fisher = deadspec.approach_slope(net, x, layer="0", units=[0, 1], side="fisher",
                                     targets=y, t=APPROACH_T, group=group)
    direction = {"0.weight": torch.zeros(6, 8, dtype=torch.float64),
                 "0.bias": torch.zeros(6, dtype=torch.float64)}
    direction["0.weight"][0] = 1.0
    direction["0.bias"][1] = 1.0
    out = {"cluster": dataclasses.asdict(cluster), "fisher": dataclasses.asdict(fisher)}
    for labels in ("expected", "observed"):
        order = deadspec.direction_order(net, x, direction, targets=y, labels=labels,
                                         n_probes=3, seed=11, group=group)
        out[f"order-{labels}"] = dataclasses.asdict(order)
    return out


def approach_rank(rank: int, world: int) -> dict:
    """approach_slope (dead cluster found over the ranks; Fisher side) and direction_order
    over the ranks, each rank passing its shard; and the same on this rank's shard alone."""
    net, x, y = approach_problem()
    sl = shard(x.shape[0], rank, world)
    return {"group": _approach_readings(net, x[sl], y[sl], dist.group.WORLD),
            "local": _approach_readings(net, x[sl], y[sl], None)}


def approach_single(rank: int, world: int) -> dict:
    """The single-process readings of the whole batch, set up as the ranks are."""
    net, x, y = approach_problem()
    return _approach_readings(net, x, y, None)


def monitor_problem():
    g = torch.Generator().manual_seed(9)
    torch.manual_seed(9)
    net = torch.nn.Sequential(torch.nn.Linear(10, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    net = net.double()
    with torch.no_grad():  # three dead ReLU units (no gradient reaches them): a dead cluster
        net[0].weight[:3] *= 0.1  # of the centred activation Gram, for "dead-projection"
        net[0].bias[:3] = -1.0
    x = torch.randn(48, 10, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (48,), generator=g)
    return net, x, y


def _monitor_out(mon) -> dict:
    return {"records": mon.records(), "rates": mon.rates(min_points=3),
            "approach": {name: mon.approach_values(name) for name in mon.layers},
            "dead": mon.dead_directions("0")}


def _monitor_train(group, rank: int, world: int, out_dir: str | None) -> dict:
    """Train the same model on the whole batch on every rank (identical runs), monitored with
    this rank's shard of the probe batch; with ``out_dir``, every rank asks for its files."""
    from deadspec.monitor import DeadDirectionMonitor

    net, x, y = monitor_problem()
    sl = shard(x.shape[0], rank, world)
    kw = dict(every=2, approach={"0": "dead-projection"}, center=True, gap_ratio=5.0)
    model = net
    if group is not None:  # over the ranks, a DDP model: monitored under its module's names
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(net)
    mon = DeadDirectionMonitor(model, ["0", "2"], inputs=x[sl], targets=y[sl], group=group, **kw)
    local = DeadDirectionMonitor(net, ["0", "2"], inputs=x[sl], targets=y[sl], **kw)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, weight_decay=1.0)
    for step in range(8):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        mon(step)
        local(step)
    if out_dir is not None:
        mon.to_csv(Path(out_dir) / f"records-rank{rank}.csv")
        mon.plot(Path(out_dir) / f"monitor-rank{rank}.png", dpi=40)
    return {"group": _monitor_out(mon), "local": _monitor_out(local)}


def monitor_rank(rank: int, world: int, out_dir: str) -> dict:
    """A DeadDirectionMonitor over the ranks (and one of this rank's shard alone)."""
    return _monitor_train(dist.group.WORLD, rank, world, out_dir)


def monitor_single(rank: int, world: int) -> dict:
    """The single-process monitor of the whole probe batch, set up as the ranks are."""
    return _monitor_train(None, 0, 1, None)["group"]


def single_references(rank: int, world: int) -> dict:
    """The single-process approach readings and monitor of the whole batch, in one process."""
    return {"approach": approach_single(rank, world), "monitor": monitor_single(rank, world)}


def approach_errors_rank(rank: int, world: int) -> dict:
    """Errors met on one rank only, or only on rank 0's reading: every rank must raise (a
    rank left waiting in a collective would hang the run, caught by run_ranks' timeout)."""
    import deadspec

    net, x, y = approach_problem()
    sl = shard(x.shape[0], rank, world)
    group = dist.group.WORLD
    direction = {"2.weight": torch.ones(3, 6, dtype=torch.float64)}
    cases = {
        # a different seed on rank 1: different probes, so every rank refuses
        "seed": lambda: deadspec.direction_order(net, x[sl], direction, targets=y[sl],
                                                 seed=rank, group=group),
        # targets of the wrong length on the last rank only: its check fails, all raise
        "targets": lambda: deadspec.approach_slope(
            net, x[sl], layer="0", units=[0], side="fisher", group=group,
            targets=y[sl][:-1] if rank == world - 1 else y[sl]),
        # no dead cluster in the whole batch's Gram of layer "2": found on rank 0 only
        "cluster": lambda: deadspec.approach_slope(net, x[sl], layer="2", group=group),
        # NaN in the last rank's shard: its forward pass fails inside a reading
        "nan": lambda: deadspec.approach_slope(
            net, x[sl] * (float("nan") if rank == world - 1 else 1.0), layer="0", units=[0],
            t=APPROACH_T, group=group),
    }
    out = {}
    for name, call in cases.items():
        try:
            call()
            out[name] = None
        except (ValueError, RuntimeError) as exc:
            out[name] = str(exc)
    # the group still works after them all: every rank took part in every collective
    out["after"] = deadspec.direction_order(net, x[sl], direction, targets=y[sl],
                                            group=group).k_hat
    return out


def two_ranks(rank: int, world: int, out_dir: str) -> dict:
    """Everything the 2-rank tests look at, in one run of the ranks (one start-up); rank 0
    also computes the single-process references (no group: set up as the ranks are)."""
    out = {"reference": single_references(rank, world)} if rank == 0 else {}
    return {**out, "approach": approach_rank(rank, world),
            "monitor": monitor_rank(rank, world, out_dir),
            "errors": approach_errors_rank(rank, world)}
