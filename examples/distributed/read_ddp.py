"""A reading of a DistributedDataParallel model over its ranks, then DDCAdam training.

    torchrun --nproc-per-node 2 examples/distributed/read_ddp.py [--samples 4096] [--steps 20]

Each rank holds its own shard of the batch; ``deadspec.read(..., group=)`` returns on every rank
the reading of the concatenated batch (what one process would read on all of it), with the
bytes the ranks exchanged. Backend: NCCL when CUDA is available, else gloo (CPU).
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import deadspec
from deadspec.optim import DDCAdam


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=4096, help="samples in the whole batch")
    ap.add_argument("--steps", type=int, default=20, help="DDCAdam steps after the reading")
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else "cpu"
    if cuda:
        torch.cuda.set_device(device)
    torch.manual_seed(0)  # the same model on every rank (DDP also broadcasts rank 0's)
    model = nn.Sequential(nn.Linear(32, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(),
                          nn.Linear(128, 10)).to(device)
    ddp = DistributedDataParallel(model)
    g = torch.Generator().manual_seed(1)  # the whole (synthetic) batch; each rank takes a shard
    x = torch.randn(args.samples, 32, generator=g)
    y = (x[:, :10] + 0.5 * torch.randn(args.samples, 10, generator=g)).argmax(1)
    mine = slice(rank * args.samples // world, (rank + 1) * args.samples // world)
    xs, ys = x[mine].to(device), y[mine].to(device)

    reading = deadspec.read(ddp, xs, targets=ys, group=dist.group.WORLD)
    if rank == 0:
        print(reading)
        print(f"{world} ranks, N = {reading.n_samples}: {reading.bytes_sent / 1e6:.1f} MB sent")

    opt = DDCAdam(ddp, lr=3e-3, weight_decay=0.01)  # the gauges of the module DDP wraps
    for step in range(args.steps):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(ddp(xs), ys)
        loss.backward()
        opt.step()
        if rank == 0 and (step + 1) % 10 == 0:
            print(f"step {step + 1}: loss {loss.item():.4f}")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
    # Leave without the interpreter's finalisation: gloo's worker threads can still be tearing
    # down there and abort the process ("terminate called without an active exception", seen
    # here in about one run in three under load, after all the work was done).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
