"""torch.distributed helpers: the ``group=`` argument of deadspec's entry points (issue #14).

Only torch.distributed moves data (no transport of deadspec's own); objects travel with
``all_gather_object`` / ``broadcast_object_list``, so the helpers work with any backend (gloo
on CPU, NCCL with CUDA tensors).
"""

from __future__ import annotations

import contextlib
import pickle
from collections.abc import Callable, Iterator
from typing import Any

__all__ = [
    "agreed",
    "all_reduce_sum",
    "broadcast_object",
    "check_group",
    "gather_objects",
    "on_root",
    "rank_and_size",
]


def check_group(fn: str, group: Any) -> Any:
    """``group`` (a ``torch.distributed`` process group, e.g. ``dist.group.WORLD``) or None;
    TypeError for anything else, ValueError when torch.distributed is not initialised."""
    if group is None:
        return None
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        raise ValueError(
            f"deadspec.{fn}: group= needs an initialised torch.distributed process group "
            f"(torch.distributed.init_process_group first), got group={group!r}"
        )
    if not isinstance(group, dist.ProcessGroup):
        raise TypeError(
            f"deadspec.{fn}: group must be a torch.distributed process group (e.g. "
            f"dist.group.WORLD or dist.new_group(...)) or None, got {type(group).__name__}"
        )
    return group


def rank_and_size(group: Any) -> tuple[int, int]:
    """This process's rank in ``group`` and the group's size."""
    import torch.distributed as dist

    return dist.get_rank(group), dist.get_world_size(group)


def gather_objects(obj: Any, group: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    import torch.distributed as dist

    out: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(out, obj, group=group)
    return out


def broadcast_object(obj: Any, group: Any) -> Any:
    """Rank 0's ``obj`` (of ``group``) on every rank."""
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=dist.get_global_rank(group, 0), group=group)
    return box[0]


def _portable(fn: str, exc: BaseException, rank: int) -> BaseException:
    """``exc``, or where it does not pickle a RuntimeError with its type and message."""
    try:
        pickle.dumps(exc)
    except Exception:
        return RuntimeError(
            f"deadspec.{fn}: rank {rank} of the group raised {type(exc).__name__}: {exc}"
        )
    return exc


def _raise_from(exc: BaseException, rank: int) -> None:
    """Raise another rank's exception here, noting where it was raised."""
    exc.add_note(f"(raised on rank {rank} of the process group)")
    raise exc


@contextlib.contextmanager
def agreed(fn: str, group: Any) -> Iterator[dict[str, Any]]:
    """Run the block on every rank of ``group`` and agree on its outcome (a collective on
    exit): where it raised on any rank, every rank raises (its own exception, else the lowest
    failing rank's), so that no rank goes on to a collective the others never reach.

    Yields a dict: the values the block puts in it (picklable, comparable with ``==``) must be
    equal on every rank, else every rank raises ValueError naming the key, rank 0's value and
    the first rank's that differs. With ``group=None`` a plain block (no check)."""
    same: dict[str, Any] = {}
    if group is None:
        yield same
        return
    rank, _ = rank_and_size(group)
    failure: BaseException | None = None
    try:
        yield same
    except Exception as exc:
        failure = exc
    sent = None if failure is None else _portable(fn, failure, rank)
    parts = gather_objects((sent, None if failure is not None else same), group)
    if failure is not None:
        raise failure
    for r, (exc, _) in enumerate(parts):
        if exc is not None:
            _raise_from(exc, r)
    ref = parts[0][1]
    for r, (_, theirs) in enumerate(parts[1:], start=1):
        for key, value in ref.items():
            if theirs.get(key) != value:
                raise ValueError(
                    f"deadspec.{fn}: every rank of the group must pass the same {key}, got "
                    f"{value!r} on rank 0 and {theirs.get(key)!r} on rank {r}"
                )


def on_root(fn: str, compute: Callable[[], Any], group: Any) -> Any:
    """``compute()`` run on rank 0 of ``group``, its result on every rank (a collective); when
    it raises, every rank raises that exception."""
    rank, _ = rank_and_size(group)
    if rank == 0:
        try:
            box: Any = (compute(), None)
        except Exception as exc:
            broadcast_object((None, _portable(fn, exc, 0)), group)
            raise
    else:
        box = None
    value, failure = broadcast_object(box, group)
    if failure is not None and rank != 0:
        _raise_from(failure, 0)
    return value


def all_reduce_sum(values: Any, group: Any, device: Any = None) -> Any:
    """The element-wise sum over the ranks of ``group`` of a float64 array (one
    ``all_reduce`` SUM of a tensor on ``device``, CPU by default: pass a CUDA device with
    NCCL); returned as a numpy float64 array, the same on every rank."""
    import numpy as np
    import torch
    import torch.distributed as dist

    t = torch.as_tensor(np.asarray(values, dtype=np.float64), device=device).clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
    return t.cpu().numpy()
