"""Workers of the FSDP2 (``fully_shard``) tests, run in spawned gloo processes (see
``dist_workers.run_ranks``): the DDC optimizers and a reading on a model whose parameters are
DTensors sharded by rows."""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
import torch.nn.functional as F

from dist_workers import READ_KW, ddc_problem, read_problem, shard


def sharded(net: torch.nn.Module) -> torch.nn.Module:
    """``fully_shard`` on every Linear/LayerNorm (or transformer block), then the root."""
    from torch.distributed.fsdp import fully_shard

    blocks = getattr(net, "blocks", None)
    for m in (blocks if blocks is not None else net):
        if list(m.parameters()):
            fully_shard(m)
    fully_shard(net)
    return net


def transformer_problem():
    from deadspec.models_transformer import ModAddTransformer

    torch.manual_seed(7)
    net = ModAddTransformer(p=7, d_model=16, n_heads=2, d_mlp=24, layernorm=True).double()
    g = torch.Generator().manual_seed(8)
    a = torch.randint(0, 7, (24, 2), generator=g)
    x = torch.cat([a, torch.full((24, 1), 7)], 1)
    return net, x, (a[:, 0] + a[:, 1]) % 7


PROBLEMS = {"mlp": ddc_problem, "transformer": transformer_problem}


def make_opt(name: str, model: torch.nn.Module, **kw):
    from deadspec.optim import DDCAdam, DDCMuon

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (the transformer's output head: not traceable)
        if name == "DDCAdam":
            return DDCAdam(model, lr=1e-2, weight_decay=0.1, **kw)
        return DDCMuon(model, lr=1e-2, weight_decay=0.1, **kw)


def train(model, opt, x, y, steps: int) -> None:
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()


def full(model: torch.nn.Module) -> list[torch.Tensor]:
    return [(p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()
            for p in model.parameters()]


def fsdp_single(problem: str, opt_name: str) -> dict:
    """One process on the whole batch: the reference trajectory (6 steps)."""
    net, x, y = PROBLEMS[problem]()
    opt = make_opt(opt_name, net)
    train(net, opt, x, y, 6)
    return {"params": full(net), "sites": opt.sites}


def fsdp_rank(rank: int, world: int, cases: list[tuple[str, str]]) -> dict:
    """For each (problem, optimizer): the same 6 steps on an FSDP2 model, each rank its (equal)
    shard of the batch (or the NotImplementedError the optimizer raised)."""
    out = {}
    for problem, opt_name in cases:
        net, x, y = PROBLEMS[problem]()
        net = sharded(net)
        try:
            opt = make_opt(opt_name, net)
        except NotImplementedError as e:
            out[problem, opt_name] = {"error": str(e)}
            continue
        local_rows = [p.to_local().shape[0] for p in net.parameters()]
        sl = shard(x.shape[0], rank, world)
        train(net, opt, x[sl], y[sl], 6)
        out[problem, opt_name] = {"params": full(net), "sites": opt.sites,
                                  "local_rows": local_rows}
    return out


def fsdp_checkpoint_rank(rank: int, world: int, folder: str) -> dict:
    """Per optimizer: 3 steps, a torch.distributed.checkpoint save, 3 more steps; then a fresh
    model and optimizer loaded from the checkpoint take the same 3 steps."""
    return {name: _checkpoint_run(rank, world, name, f"{folder}/{name}")
            for name in ("DDCAdam", "DDCMuon")}


def _checkpoint_run(rank: int, world: int, opt_name: str, folder: str) -> dict:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    def fresh():
        net, x, y = ddc_problem()
        net = sharded(net)
        return net, make_opt(opt_name, net), x, y

    net, opt, x, y = fresh()
    sl = shard(x.shape[0], rank, world)
    train(net, opt, x[sl], y[sl], 3)
    osd = get_optimizer_state_dict(net, opt)
    keys = sorted({k for v in osd["state"].values() for k in v})
    dcp.save({"model": get_model_state_dict(net), "optim": osd}, checkpoint_id=folder)
    train(net, opt, x[sl], y[sl], 3)
    uninterrupted = full(net)
    net2, opt2, _, _ = fresh()
    sd = {"model": get_model_state_dict(net2), "optim": get_optimizer_state_dict(net2, opt2)}
    dcp.load(sd, checkpoint_id=folder)
    set_model_state_dict(net2, sd["model"])
    set_optimizer_state_dict(net2, opt2, sd["optim"])
    train(net2, opt2, x[sl], y[sl], 3)
    return {"uninterrupted": uninterrupted, "resumed": full(net2), "keys": keys}


def fsdp_misc_rank(rank: int, world: int) -> dict:
    """The non-finite policy, the refused options and a reading, in one set of ranks."""
    return {"nonfinite": _nonfinite(rank, world), "options": _options(),
            "read": _read(rank, world)}


def _nonfinite(rank: int, world: int) -> dict:
    """An Inf gradient on rank 1 only: every rank skips the step (nonfinite='skip')."""
    net, x, y = ddc_problem()
    net = sharded(net)
    opt = make_opt("DDCAdam", net, nonfinite="skip")
    sl = shard(x.shape[0], rank, world)
    train(net, opt, x[sl], y[sl], 1)
    before = full(net)
    opt.zero_grad()
    F.cross_entropy(net(x[sl]), y[sl]).backward()
    if rank == 1:
        next(iter(net.parameters())).grad.to_local().view(-1)[0] = float("inf")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opt.step()
    return {"before": before, "after": full(net),
            "warned": any("step skipped" in str(w.message) for w in caught)}


def _options() -> dict:
    """The options the sharded step does not cover raise NotImplementedError on every rank."""
    from deadspec.optim import DDCAdam

    net, _, _ = ddc_problem()
    net = sharded(net)
    out = {}
    for kw in ({"form": "split"}, {"gauge_mode": "damped"}, {"track_residuals": True}):
        try:
            DDCAdam(net, **kw)
            out[str(kw)] = None
        except NotImplementedError as e:
            out[str(kw)] = str(e)
    return out


def _read(rank: int, world: int) -> dict:
    """A read over the ranks of an FSDP2 model (its forward gathers the parameters)."""
    import deadspec

    net, x, y = read_problem()
    net = sharded(net)
    sl = shard(x.shape[0], rank, world)
    r = deadspec.read(net, x[sl], targets=y[sl], group=dist.group.WORLD, **READ_KW)
    return {"records": r.to_records()}

