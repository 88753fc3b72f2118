"""Inputs, batches, model state and the small checks every reading shares."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "ModelState",
    "as_input_tuple",
    "batch_slices",
    "check_finite",
    "check_targets",
    "dtype_name",
    "make_generator",
    "names_list",
]


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` -> ``"float32"`` (the core's dtype names)."""
    return str(dtype).replace("torch.", "")


def as_input_tuple(inputs: Any, fn: str) -> tuple[tuple[torch.Tensor, ...], int]:
    """Normalise ``inputs`` (a tensor or a tuple/list of tensors) to a tuple and its N."""
    if isinstance(inputs, torch.Tensor):
        tup: tuple[torch.Tensor, ...] = (inputs,)
    elif (
        isinstance(inputs, (tuple, list))
        and inputs
        and all(isinstance(x, torch.Tensor) for x in inputs)
    ):
        tup = tuple(inputs)
    else:
        raise TypeError(
            f"deadspec.{fn}: inputs must be a torch.Tensor or a non-empty tuple of tensors "
            f"(passed as model(*inputs)), got {type(inputs).__name__}"
        )
    for x in tup:
        if x.ndim == 0:
            raise ValueError(f"deadspec.{fn}: inputs must have a batch axis, got a 0-d tensor")
    n = tup[0].shape[0]
    if any(x.shape[0] != n for x in tup):
        raise ValueError(
            f"deadspec.{fn}: all inputs must share the batch size, got "
            f"{[tuple(x.shape) for x in tup]}"
        )
    if n == 0:
        raise ValueError(f"deadspec.{fn}: inputs must hold at least one sample, got N=0")
    return tup, int(n)


def check_targets(targets: Any, n: int, fn: str) -> None:
    """TypeError unless ``targets`` is a tensor, ValueError unless its axis 0 holds the inputs'
    batch size ``n`` (checked before anything reads the targets: their dtype, their rows)."""
    if not isinstance(targets, torch.Tensor):
        raise TypeError(
            f"deadspec.{fn}: targets must be a torch.Tensor, got {type(targets).__name__}"
        )
    if targets.ndim == 0 or targets.shape[0] != n:
        raise ValueError(
            f"deadspec.{fn}: targets must have the inputs' batch size {n} on axis 0, got "
            f"shape {tuple(targets.shape)}"
        )


def batch_slices(n: int, batch_size: int | None, fn: str) -> list[slice]:
    """``[0, n)`` in slices of ``batch_size`` (one slice for None)."""
    if batch_size is None:
        return [slice(0, n)]
    if (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, (int, np.integer))
        or batch_size < 1
    ):
        raise ValueError(
            f"deadspec.{fn}: batch_size must be a positive int or None, got {batch_size!r}"
        )
    b = int(batch_size)
    return [slice(i, min(i + b, n)) for i in range(0, n, b)]


def names_list(named: Mapping[str, nn.Module]) -> str:
    """``"fc1 (Linear), act (ReLU), ..."`` for error messages."""
    return ", ".join(f"{(n or '<root>')!s} ({type(m).__name__})" for n, m in named.items())


def make_generator(seed: int | None, device: torch.device) -> torch.Generator:
    """A generator on ``device`` seeded with ``seed`` (None: fresh entropy)."""
    g = torch.Generator(device=device)
    if seed is None:
        g.seed()
    else:
        g.manual_seed(int(seed))
    return g


def check_finite(x: torch.Tensor, what: str, name: str, fn: str) -> None:
    """Raise ValueError naming the layer when ``x`` holds NaN/Inf."""
    # A finite sum means every entry is finite (NaN/Inf propagate); only an overflowing sum
    # needs the elementwise test. One reduction instead of a full-size boolean temporary.
    if x.numel() and bool(torch.isfinite(x.sum())):
        return
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"deadspec.{fn}: {what} of layer {name!r} must be finite, got NaN/Inf")


class ModelState:
    """Snapshot of modes, grads, requires_grad and buffers; ``restore()`` puts them back."""

    def __init__(self, model: nn.Module) -> None:
        self.modes = [(m, m.training) for m in model.modules()]
        self.params = [(p, p.requires_grad, p.grad) for p in model.parameters()]
        self.buffers: list[tuple[nn.Module, str, torch.Tensor, torch.Tensor]] = []
        # A train-mode forward may update buffers (batch-norm running statistics).
        if any(training for _, training in self.modes):
            for m in model.modules():
                for key, buf in m._buffers.items():
                    if buf is not None:
                        self.buffers.append((m, key, buf, buf.detach().clone()))

    def restore(self) -> None:
        for m, training in self.modes:
            m.training = training
        for p, requires_grad, grad in self.params:
            if p.requires_grad != requires_grad:
                p.requires_grad_(requires_grad)
            if p.grad is not grad:
                p.grad = grad
        with torch.no_grad():
            for m, key, buf, saved in self.buffers:
                m._buffers[key] = buf
                buf.copy_(saved)
