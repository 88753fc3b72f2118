"""What the trainer callbacks share: the monitor they drive, its scalars, its saved state.

A :class:`MonitorDriver` holds the options of a :class:`~deadspec.monitor.DeadDirectionMonitor`
until a trainer hands over the model, creates the monitor then (with the probe batch moved to
the model's device), reads at the steps the callback reports, turns a reading into named
scalars, and keeps a loaded state until the monitor exists.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from deadspec._engine.inputs import as_input_tuple
from deadspec._engine.results import RECORD_KEYS
from deadspec._util import check_model
from deadspec.monitor import DeadDirectionMonitor

__all__ = ["DEFAULT_SCALARS", "PREFIX", "MonitorDriver", "scalar_name", "unwrap_model"]

PREFIX = "deadspec"
DEFAULT_SCALARS = ("logdet_plus", "active", "dead_count", "lambda_min", "effective_rank")
_SIDES = ("activation", "fisher")


def scalar_name(layer: str, side: str, key: str) -> str:
    """``deadspec/<layer>/<side>/<key>`` (the whole model, layer ``""``, is named ``model``)."""
    return f"{PREFIX}/{layer or 'model'}/{side}/{key}"


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module a wrapper trains: through ``DataParallel``/``DistributedDataParallel``, a
    DeepSpeed engine (``.module``) and ``torch.compile`` (``._orig_mod``)."""
    wrappers = (nn.DataParallel, nn.parallel.DistributedDataParallel)
    while True:
        inner = getattr(model, "_orig_mod", None)
        if isinstance(inner, nn.Module):
            model = inner
        elif isinstance(model, wrappers) or type(model).__name__ == "DeepSpeedEngine":
            model = model.module
        else:
            return model


def _to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, (tuple, list)):
        return type(value)(_to_device(v, device) for v in value)
    return value


def _model_device(model: nn.Module) -> torch.device | None:
    for p in model.parameters():
        return p.device
    return None


def _undisturbed_step(monitor: DeadDirectionMonitor, step: int, eval_mode: bool) -> Any:
    """``monitor.step(step)`` (which leaves the random number generators as it found them)
    with, for ``eval_mode``, the model in eval mode for the reading (its modes restored)."""
    model = monitor.model
    modes = [(mod, mod.training) for mod in model.modules()]
    try:
        if eval_mode:
            model.eval()
        return monitor.step(step)
    finally:
        for mod, training in modes:
            mod.training = training


class MonitorDriver:
    """The monitor of one callback, created when the trainer hands over the model."""

    def __init__(
        self,
        fn: str,
        layers: str | Sequence[str] | None,
        every: Any,
        inputs: Any,
        targets: Any,
        scalars: Sequence[str],
        eval_mode: bool,
        options: Mapping[str, Any],
    ) -> None:
        if isinstance(every, bool) or not isinstance(every, int):
            raise TypeError(f"deadspec.{fn}: every must be an int, got {type(every).__name__}")
        if every < 1:
            raise ValueError(f"deadspec.{fn}: every must be >= 1, got {every}")
        if isinstance(scalars, str) or not all(isinstance(k, str) for k in scalars):
            raise TypeError(
                f"deadspec.{fn}: scalars must be a sequence of names among {RECORD_KEYS}, got "
                f"{scalars!r}"
            )
        unknown = [k for k in scalars if k not in RECORD_KEYS]
        if unknown:
            raise ValueError(f"deadspec.{fn}: scalars must be among {RECORD_KEYS}, got {unknown}")
        as_input_tuple(inputs, fn)  # the probe batch: checked now, not when training starts
        if targets is not None and not isinstance(targets, torch.Tensor):
            raise TypeError(
                f"deadspec.{fn}: targets must be a torch.Tensor or None, got "
                f"{type(targets).__name__}"
            )
        if "model" in options or "every" in options:
            raise TypeError(
                f"deadspec.{fn}: the trainer supplies the model and every is an argument of its "
                f"own; got them among the monitor options {sorted(options)}"
            )
        self.fn = fn
        self.layers = layers
        self.every = every
        self.inputs = inputs
        self.targets = targets
        self.scalars = tuple(scalars)
        self.eval_mode = bool(eval_mode)
        self.options = dict(options)
        self.monitor: DeadDirectionMonitor | None = None
        self.pending_state: Mapping[str, Any] | None = None

    def attach(self, model: nn.Module) -> DeadDirectionMonitor:
        """The monitor of ``model``; a new one when the trainer trains another model."""
        check_model(model, self.fn)
        if self.monitor is not None and self.monitor.model is model:
            return self.monitor
        device = _model_device(model)
        inputs, targets = self.inputs, self.targets
        if device is not None:
            inputs, targets = _to_device(inputs, device), _to_device(targets, device)
        self.monitor = DeadDirectionMonitor(
            model, self.layers, every=self.every, inputs=inputs, targets=targets, **self.options
        )
        if self.pending_state is not None:
            self.monitor.load_state_dict(self.pending_state)
            self.pending_state = None
        return self.monitor

    def read(self, step: int) -> dict[str, float] | None:
        """Read at ``step`` when it is due and after the last record; the reading's scalars.

        A step at or before the last recorded one (a resumed run, gradient accumulation
        reporting one step several times) is not read again.
        """
        m = self.monitor
        if m is None or step % self.every or (m.steps and step <= m.steps[-1]):
            return None
        t0 = time.perf_counter()
        reading = _undisturbed_step(m, step, self.eval_mode)
        seconds = time.perf_counter() - t0
        out: dict[str, float] = {}
        for name in m.layers:
            lr = reading[name]
            for side, spec in zip(_SIDES, (lr.activation, lr.fisher)):
                if spec is None:
                    continue
                for key in self.scalars:
                    out[scalar_name(name, side, key)] = float(getattr(spec, key))
        out[f"{PREFIX}/seconds"] = seconds
        return out

    def state_dict(self) -> Mapping[str, Any] | None:
        if self.monitor is not None:
            return self.monitor.state_dict()
        return self.pending_state

    def load_state_dict(self, state: Mapping[str, Any] | None) -> None:
        """Load into the monitor, or keep until it is created (the trainer may restore a
        checkpoint before it hands over the model)."""
        if state is None:
            return
        if self.monitor is not None:
            self.monitor.load_state_dict(state)
        else:
            self.pending_state = state
