"""The DDC optimizers on an FSDP2 (``fully_shard``) model: parameters that are DTensors sharded
by rows (``Shard(0)`` on a one-dimensional mesh), issue #14.

Everything a DDC step does per coordinate runs on each rank's local rows (the C++ core and
the torch paths take the local tensors). What couples rows is a vector with one entry per unit,
and it is small: the gauge scales ρ (a producer's row norms: each rank computes its rows' and
the vector is all-gathered), a logit layer's column means (a sum over rows: all-reduced), the
producers' radial gradients of DDCMuon (row-local, all-gathered so that every rank keeps the
same per-unit state). DDCMuon's Newton–Schulz runs on whole matrices: each matrix's update is
gathered to one owning rank (round-robin over the ranks), orthogonalised there and its rows
scattered back. Nothing of a parameter's size is communicated except that.

Gauge discovery reads a plain mirror of the model (:func:`plain_mirror`: the same modules with
each sharded parameter gathered once, hooks dropped), since a forward through one of FSDP2's
submodules before the root's breaks FSDP's lazy initialisation.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = [
    "Shards",
    "check_sharded",
    "is_sharded",
    "local",
    "plain_mirror",
    "sharded_params",
    "transposed",
]


def _dtensor_type() -> Any:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch without distributed
        return None
    return DTensor


def is_sharded(t: Any) -> bool:
    """Whether ``t`` is a DTensor (an FSDP2 parameter, its gradient or its state)."""
    cls = _dtensor_type()
    return cls is not None and isinstance(t, cls)


def local(t: Any) -> Any:
    """The local tensor of a DTensor; anything else as it is (None included)."""
    return t.to_local() if is_sharded(t) else t


def transposed(whole: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """``whole`` (:meth:`Shards.whole` bound to a parameter) for the transposed view of the
    parameter: rank parts are its stored rows, the matrix ``f`` sees is the transpose."""

    def run(u: torch.Tensor, f: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        return whole(u.T, lambda full: f(full.T).T).T

    return run


def sharded_params(params: Any) -> list[torch.Tensor]:
    """The DTensor parameters among ``params``."""
    return [p for p in params if is_sharded(p)]


def plain_mirror(model: nn.Module) -> nn.Module:
    """The model's module tree with every DTensor parameter gathered into a plain one (ties
    kept), FSDP's module classes replaced by the modules they wrap and every hook dropped; the
    other parameters and the buffers are shared. For gauge discovery, which runs forwards
    through submodules and reads parameter values: a collective (every rank must call it)."""
    from torch.distributed.fsdp import FSDPModule

    params: dict[int, nn.Parameter] = {}
    mods: dict[int, nn.Module] = {}

    def param(p: Any) -> Any:
        if p is None or not is_sharded(p):
            return p
        if id(p) not in params:
            params[id(p)] = nn.Parameter(p.full_tensor().detach(), requires_grad=p.requires_grad)
        return params[id(p)]

    def mirror(m: nn.Module) -> nn.Module:
        if id(m) in mods:
            return mods[id(m)]
        cls = type(m)
        if issubclass(cls, FSDPModule):
            cls = next(c for c in cls.__mro__ if not issubclass(c, FSDPModule))
        new = cls.__new__(cls)
        mods[id(m)] = new
        state = dict(m.__dict__)
        for k, v in state.items():
            if "hooks" in k and isinstance(v, dict):
                state[k] = type(v)()
        state["_parameters"] = {k: param(p) for k, p in m._parameters.items()}
        state["_modules"] = {k: None if c is None else mirror(c) for k, c in m._modules.items()}
        state["_buffers"] = copy.copy(m._buffers)
        new.__dict__.update(state)
        return new

    return mirror(model)


class Shards:
    """Where the local rows of each sharded parameter lie, and the collectives of the step
    (over the parameters' mesh: one-dimensional, ``Shard(0)``, as ``fully_shard`` makes)."""

    def __init__(self, params: list[torch.Tensor], fn: str) -> None:
        import torch.distributed as dist
        from torch.distributed.tensor import Shard

        self.fn = fn
        self.dist = dist
        mesh = None
        for p in params:
            if p.device_mesh.ndim != 1 or list(p.placements) != [Shard(0)]:
                raise NotImplementedError(
                    f"deadspec.{fn}: sharded parameters must be FSDP2's (fully_shard on a "
                    f"one-dimensional mesh, Shard(0)), got placements {tuple(p.placements)} on "
                    f"a {p.device_mesh.ndim}-dimensional mesh (HSDP and tensor parallelism are "
                    f"not supported)"
                )
            if mesh is None:
                mesh = p.device_mesh
            elif p.device_mesh != mesh:
                raise NotImplementedError(
                    f"deadspec.{fn}: sharded parameters must share one device mesh, got two"
                )
        assert mesh is not None
        self.group = mesh.get_group()
        self.rank = dist.get_rank(self.group)
        self.world = dist.get_world_size(self.group)
        for p in params:
            a, b = self.rows(p)
            if p.to_local().shape[0] != b - a:  # pragma: no cover - a layout torch may change
                raise NotImplementedError(
                    f"deadspec.{fn}: expected FSDP2's row chunks (torch.chunk), got "
                    f"{p.to_local().shape[0]} local rows of {p.shape[0]} on rank {self.rank}"
                )

    # -- layout ------------------------------------------------------------------------------
    def chunk(self, n: int) -> int:
        return math.ceil(n / self.world) if n else 0

    def rows(self, t: Any, rank: int | None = None) -> tuple[int, int]:
        """[start, stop) of the global rows this rank (or ``rank``) holds of ``t`` (all of them
        for a plain tensor)."""
        n = int(t.shape[0])
        if not is_sharded(t):
            return 0, n
        c = self.chunk(n)
        a = min((self.rank if rank is None else rank) * c, n)
        return a, min(a + c, n)

    def mine(self, vec: torch.Tensor | None, t: Any) -> torch.Tensor | None:
        """This rank's entries of a per-row vector of ``t`` (all of it for a plain ``t``)."""
        if vec is None or not is_sharded(t):
            return vec
        a, b = self.rows(t)
        return vec[a:b]

    def _padded(self, part: torch.Tensor, n: int) -> torch.Tensor:
        """This rank's rows of an ``n``-row tensor, zero-padded to the chunk every rank sends
        (collectives take equal sizes; the last ranks' chunks are shorter or empty)."""
        pad = part.new_zeros((self.chunk(n), *part.shape[1:]))
        pad[: part.shape[0]] = part
        return pad

    # -- collectives -------------------------------------------------------------------------
    def gather_rows(self, part: torch.Tensor, t: Any) -> torch.Tensor:
        """The whole per-row tensor (rows along dim 0) from each rank's rows of ``t``."""
        if not is_sharded(t):
            return part
        n = int(t.shape[0])
        pad = self._padded(part, n)
        parts = [torch.empty_like(pad) for _ in range(self.world)]
        self.dist.all_gather(parts, pad.contiguous(), group=self.group)
        return torch.cat(parts, 0)[:n]

    def all_sum(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` summed over the ranks (in place; returned)."""
        self.dist.all_reduce(x, op=self.dist.ReduceOp.SUM, group=self.group)
        return x

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` holds on any rank."""
        t = torch.tensor([1.0 if flag else 0.0], dtype=torch.float64)
        self.dist.all_reduce(t, op=self.dist.ReduceOp.MAX, group=self.group)
        return bool(t.item() > 0)

    def objects(self, obj: Any) -> list[Any]:
        out: list[Any] = [None] * self.world
        self.dist.all_gather_object(out, obj, group=self.group)
        return out

    def whole(
        self,
        k: int,
        part: torch.Tensor,
        fn: Callable[[torch.Tensor], torch.Tensor],
        *,
        owner: Any,
    ) -> torch.Tensor:
        """This rank's rows of ``fn(whole)``, where ``whole`` is the matrix whose rows the
        ranks hold (``part`` here, rows of the parameter ``owner``): gathered to the owning rank
        ``k mod world``, computed there, its rows scattered back."""
        if not is_sharded(owner):
            return fn(part)
        n = int(owner.shape[0])
        c = self.chunk(n)
        owner = k % self.world
        src = self.dist.get_global_rank(self.group, owner)
        pad = self._padded(part, n)
        gathered = None
        if self.rank == owner:
            gathered = [torch.empty_like(pad) for _ in range(self.world)]
        self.dist.gather(pad, gathered, dst=src, group=self.group)
        chunks = None
        if self.rank == owner:
            assert gathered is not None
            out = fn(torch.cat(gathered, 0)[:n]).to(part.dtype)
            full = out.new_zeros((c * self.world, *out.shape[1:]))
            full[:n] = out
            chunks = list(full.split(c, 0)) if c else [full] * self.world
        back = part.new_empty((c, *part.shape[1:]))
        self.dist.scatter(back, chunks, src=src, group=self.group)
        return back[: part.shape[0]]


def check_sharded(
    fn: str,
    shards: Shards,
    plan: Any,
    param_groups: list[dict[str, Any]],
    *,
    form: str,
    gauge_mode: str,
    track_residuals: bool,
) -> None:
    """The options the sharded step covers; NotImplementedError for the others (on every rank
    alike: each rank checks every rank's rows, so none is left waiting in a collective)."""
    for name, value, ok in (
        ("form", form, "coordinate"),
        ("gauge_mode", gauge_mode, "zero"),
        ("track_residuals", track_residuals, False),
    ):
        if value != ok:
            raise NotImplementedError(
                f"deadspec.{fn}: on an FSDP2 (fully_shard) model {name} must be {ok!r}, got "
                f"{value!r} (the per-unit sums over the consumers' rows it needs are not "
                f"reduced across ranks yet)"
            )
    # Adam's shared second moment of a rotated head (DDCAdam, DDCMuon's AdamW path) is a mean
    # over the head's rows: each head must lie on one rank (Muon orthogonalises whole matrices)
    for p in (p for g in param_groups if not g.get("use_muon") for p in g["params"]):
        r = plan.rot.get(id(p))
        if r is None or r.axis != 0:
            continue
        for rank in range(shards.world):
            a, b = shards.rows(p, rank)
            if any(s < b and e > a and not (a <= s and e <= b) for s, e in r.segments):
                raise NotImplementedError(
                    f"deadspec.{fn}: on an FSDP2 model a rotated head block must lie on one "
                    f"rank, got {r.name!r} with heads split between ranks (rows {a}:{b} on "
                    f"rank {rank}); shard over a number of ranks that splits the rows at "
                    f"head boundaries, or pass rotations=False"
                )
