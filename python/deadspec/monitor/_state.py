"""The monitor's record as a checkpointable state (``DeadDirectionMonitor.state_dict``).

The state holds only Python scalars, strings, lists, dicts and CPU ``torch.Tensor`` s (float64),
so it round-trips through ``torch.save`` / ``torch.load(weights_only=True)`` and through the
checkpoints of training frameworks (Lightning saves a callback's ``state_dict`` in its own).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from deadspec.monitor._approach import FN, Checkpoint, Point
from deadspec.ops import Spectrum

__all__ = ["STATE_FORMAT", "approach_key", "checkpoints_from_state", "checkpoints_to_state"]

STATE_FORMAT = 1
_ARRAYS = ("eigenvalues", "eigenvectors")
_POINT_ARRAYS = ("singular_values", "weight")


def _tensor(a: np.ndarray | None) -> torch.Tensor | None:
    return None if a is None else torch.from_numpy(np.array(a, dtype=np.float64, copy=True))


def _array(t: Any, what: str) -> np.ndarray | None:
    if t is None:
        return None
    if not isinstance(t, torch.Tensor):
        raise TypeError(
            f"deadspec.{FN}.load_state_dict: {what} must be a tensor or None, got "
            f"{type(t).__name__}"
        )
    return t.detach().to("cpu", torch.float64).numpy().copy()


def _plain(v: Any) -> Any:
    """A numpy scalar as the Python scalar of its kind (``weights_only`` loads no numpy)."""
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return float(v)
    return v


def _spectrum_state(spec: Spectrum | None) -> dict[str, Any] | None:
    if spec is None:
        return None
    out: dict[str, Any] = {}
    for f in dataclasses.fields(Spectrum):
        v = getattr(spec, f.name)
        out[f.name] = _tensor(v) if f.name in _ARRAYS else _plain(v)
    return out


def _spectrum(d: Mapping[str, Any] | None, what: str) -> Spectrum | None:
    if d is None:
        return None
    names = [f.name for f in dataclasses.fields(Spectrum)]
    missing = sorted(set(names) - set(d))
    if missing:
        raise ValueError(
            f"deadspec.{FN}.load_state_dict: {what} must hold the Spectrum fields, got no {missing}"
        )
    kw = {n: (_array(d[n], f"{what}.{n}") if n in _ARRAYS else d[n]) for n in names}
    return Spectrum(**kw)


def approach_key(spec: tuple[str, Any]) -> list[str]:
    """What a state records of a layer's approach: ``[kind, weight module]`` or ``["callable"]``."""
    kind, value = spec
    return [kind] if kind == "callable" else [kind, str(value)]


def checkpoints_to_state(checkpoints: Sequence[Checkpoint]) -> list[dict[str, Any]]:
    out = []
    for c in checkpoints:
        layers = {}
        for name, p in c.layers.items():
            layers[name] = {
                "activation": _spectrum_state(p.activation),
                "fisher": _spectrum_state(p.fisher),
                "n_rows": int(p.n_rows),
                "n_samples": int(p.n_samples),
                "singular_values": _tensor(p.singular_values),
                "weight": _tensor(p.weight),
                "weight_is_gram": bool(p.weight_is_gram),
                "approach": None if p.approach is None else float(p.approach),
            }
        out.append({"step": int(c.step), "seconds": float(c.seconds), "layers": layers})
    return out


def checkpoints_from_state(
    state: Sequence[Mapping[str, Any]], layers: Sequence[str]
) -> list[Checkpoint]:
    out: list[Checkpoint] = []
    for i, c in enumerate(state):
        got = sorted(c["layers"])
        if got != sorted(layers):
            raise ValueError(
                f"deadspec.{FN}.load_state_dict: checkpoint {i} must hold the monitored layers "
                f"{sorted(layers)}, got {got}"
            )
        points = {}
        for name in layers:
            d = c["layers"][name]
            where = f"checkpoint {i} layer {name!r}"
            activation = _spectrum(d["activation"], f"{where} activation")
            if activation is None:
                raise ValueError(
                    f"deadspec.{FN}.load_state_dict: {where} must have an activation spectrum, "
                    f"got None"
                )
            points[name] = Point(
                activation,
                _spectrum(d["fisher"], f"{where} fisher"),
                int(d["n_rows"]),
                int(d["n_samples"]),
                *(_array(d[k], f"{where} {k}") for k in _POINT_ARRAYS),
                bool(d["weight_is_gram"]),
                None if d["approach"] is None else float(d["approach"]),
            )
        out.append(Checkpoint(int(c["step"]), float(c["seconds"]), points))
    steps = [c.step for c in out]
    if any(b <= a for a, b in zip(steps, steps[1:])):
        raise ValueError(
            f"deadspec.{FN}.load_state_dict: checkpoint steps must increase, got {steps}"
        )
    return out
