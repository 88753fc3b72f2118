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
