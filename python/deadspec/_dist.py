"""torch.distributed helpers: the ``group=`` argument of deadspec's entry points (issue #14).

Only torch.distributed moves data (no transport of deadspec's own); objects travel with
``all_gather_object`` / ``broadcast_object_list``, so the helpers work with any backend (gloo
on CPU, NCCL with CUDA tensors).
"""

from __future__ import annotations

from typing import Any

__all__ = ["broadcast_object", "check_group", "gather_objects", "rank_and_size"]


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
