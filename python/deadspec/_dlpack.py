"""Tensor ↔ DLPack capsule helpers for the core.

Contract: the core reads CPU float32/float64 tensors of any strides, zero-copy when they are
float64 and C-contiguous (otherwise it converts to float64 internally). torch tensors and numpy
arrays both cross through ``__dlpack__``; nothing here copies except the documented upcast of
float16/bfloat16 to float32. There is no CUDA backend yet: CUDA tensors are refused with a
RuntimeError before anything is exported, tensors without data (the ``meta`` device) with a
ValueError.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_UPCAST_TORCH = ("float16", "bfloat16")


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "data_ptr")


def kind(x: Any) -> str:
    """'torch' for a torch.Tensor, 'numpy' for anything numpy can view."""
    return "torch" if _is_torch(x) else "numpy"


def refuse_without_data(x: Any, fn: str, arg: str) -> None:
    """ValueError for a torch tensor without data (the ``meta`` device holds a shape and a dtype
    only): nothing can be read from it, on the host or elsewhere."""
    if _is_torch(x) and x.device.type == "meta":
        raise ValueError(
            f"{fn}: {arg} must be a tensor that holds its values, got a tensor without data "
            f"(device 'meta', shape {tuple(x.shape)})"
        )


def prepare(x: Any, fn: str, arg: str) -> Any:
    """Return an object with ``__dlpack__`` that the core can read (validating the device).

    float16/bfloat16 are upcast to float32 (documented); other dtypes pass through so the core's
    TypeError names them. numpy-like inputs (lists, scalars) are turned into arrays.
    """
    if _is_torch(x):
        refuse_without_data(x, fn, arg)
        if x.device.type != "cpu":
            raise RuntimeError(
                f"{fn}: {arg} is on {x.device}; deadspec was built without CUDA support, "
                "move the input to the CPU"
            )
        if str(x.dtype).removeprefix("torch.") in _UPCAST_TORCH:
            x = x.float()
        if x.requires_grad:
            x = x.detach()
        if x.is_conj() or x.is_neg():
            x = x.resolve_conj().resolve_neg()
        return x
    if isinstance(x, np.ndarray):
        arr = x
    elif hasattr(x, "__dlpack__") and not isinstance(x, (list, tuple)):
        return x
    elif x is None or isinstance(x, (str, bytes, dict)):
        raise TypeError(
            f"{fn}: {arg} must be a torch.Tensor or a numpy array of float32 or float64, got "
            f"{type(x).__name__}"
        )
    else:
        try:
            arr = np.asarray(x)
        except (TypeError, ValueError) as exc:  # ragged nested lists, ...
            raise TypeError(
                f"{fn}: {arg} must be a torch.Tensor or a numpy array of float32 or float64, got "
                f"a {type(x).__name__} that numpy cannot turn into an array ({exc})"
            ) from None
    if arr.dtype == np.float16:
        arr = arr.astype(np.float32)
    if arr.dtype.byteorder not in ("=", "|", "<" if np.little_endian else ">"):
        raise TypeError(f"{fn}: {arg} must be in native byte order, got dtype {arr.dtype}")
    if arr.dtype.kind == "O" or arr.dtype.kind in "USV":
        raise TypeError(f"{fn}: {arg} must be float32 or float64, got {arr.dtype}")
    if not arr.flags.writeable:
        # numpy refuses to export read-only arrays through the legacy DLPack protocol.
        arr = arr.copy()
    return arr


def capsule(x: Any) -> Any:
    """The DLPack capsule of a prepared tensor (CPU: no stream)."""
    return x.__dlpack__()


def wrap(result: np.ndarray, like: Any) -> Any:
    """Return ``result`` as the same kind of array as ``like`` (zero-copy for torch)."""
    if _is_torch(like):
        import torch

        return torch.from_numpy(np.ascontiguousarray(result))
    return result


def dtype_name(x: Any) -> str:
    """'float32', 'float64', ... of a torch tensor or numpy array."""
    if _is_torch(x):
        return str(x.dtype).removeprefix("torch.")
    return str(np.asarray(x).dtype) if not hasattr(x, "dtype") else str(x.dtype)
