"""The approach parameter a(t) of the trajectory-rate readout (see :mod:`deadspec.monitor`).

``"dead-norm"``: the norm of the r smallest singular values of ``[W b]`` (Eckart–Young: the
distance to the nearest matrix of rank q − r); ``"dead-projection"``: ``‖U_refᵀ [W b]‖_F``
against the reference dead cluster U_ref of the activation Gram; or a user callable.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from deadspec._engine.sites import SiteSpec, module_kind, weight_out_in
from deadspec.ops import Spectrum, sym_eig

__all__ = [
    "BUILTIN",
    "DEAD_NORM",
    "DEAD_PROJECTION",
    "FN",
    "Checkpoint",
    "Point",
    "approach_table",
    "call_approach",
    "dead_directions",
    "reference_cluster",
    "resolve_approach",
    "singular_values",
    "weight_summary",
]

FN = "DeadDirectionMonitor"
DEAD_NORM = "dead-norm"
DEAD_PROJECTION = "dead-projection"
BUILTIN = (DEAD_NORM, DEAD_PROJECTION)


@dataclasses.dataclass
class Point:
    """What one checkpoint keeps for one layer."""

    activation: Spectrum
    fisher: Spectrum | None
    n_rows: int
    n_samples: int
    singular_values: np.ndarray | None = None  # σ([W b]) descending, "dead-norm"
    weight: np.ndarray | None = None  # [W b][W b]ᵀ (h×h) or [W b] (h×p), "dead-projection"
    weight_is_gram: bool = False
    approach: float | None = None  # callable approach, evaluated at the reading


@dataclasses.dataclass
class Checkpoint:
    step: int
    seconds: float
    layers: dict[str, Point]


def call_approach(fn: Callable[[nn.Module], Any], model: nn.Module, layer: str) -> float:
    """A callable approach parameter evaluated under ``torch.no_grad`` (a scalar)."""
    with torch.no_grad():
        value = fn(model)
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(
                f"deadspec.{FN}: approach callable for layer {layer!r} must return a scalar, "
                f"got a tensor of shape {tuple(value.shape)}"
            )
        value = value.item()
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(
            f"deadspec.{FN}: approach callable for layer {layer!r} must return a float, "
            f"got {type(value).__name__}"
        ) from None


def _augmented_weight(module: nn.Module) -> torch.Tensor:
    """``[W b]`` (h × (d_in + 1), or h × d_in without a bias) as a float64 CPU tensor."""
    with torch.no_grad():
        w = weight_out_in(module).detach().to("cpu", torch.float64)
        b = getattr(module, "bias", None)
        if isinstance(b, torch.Tensor):
            w = torch.cat([w, b.detach().to("cpu", torch.float64).reshape(-1, 1)], dim=1)
    return w


def weight_summary(module: nn.Module) -> tuple[np.ndarray, bool]:
    """``[W b]`` as float64 numpy, or its h×h Gram ``[W b][W b]ᵀ`` when that is smaller."""
    m = _augmented_weight(module).numpy()
    if m.shape[0] <= m.shape[1]:
        return m @ m.T, True
    return m.copy(), False


def singular_values(module: nn.Module) -> np.ndarray:
    """Singular values of ``[W b]``, descending (min(h, p) of them)."""
    return torch.linalg.svdvals(_augmented_weight(module)).numpy().copy()


def _builtin_spec(name: str, value: str, spec: SiteSpec, module: nn.Module | None) -> tuple:
    """(value, name) for a built-in approach at a layer that reads its own weight."""
    plain = spec.view is None and module is spec.module
    mod = module if plain else None
    if mod is None or module_kind(mod) not in ("linear", "conv1d"):
        what = type(spec.module).__name__ if plain else "an attention projection/head"
        raise ValueError(
            f"deadspec.{FN}: approach={value!r} needs a linear-like layer (nn.Linear or Conv1D "
            f"module) with a weight matrix; layer {name!r} is {what}: pass "
            f"approach={{{name!r}: '<linear module feeding it>'}} or a callable "
            f"approach(model) -> float"
        )
    return (value, name)


def _per_layer(approach: Any, layers: Sequence[str]) -> dict[str, Any]:
    choices = f"{DEAD_NORM!r}, {DEAD_PROJECTION!r}, a callable or a dict"
    if callable(approach) and not isinstance(approach, (str, Mapping)):
        return {name: approach for name in layers}
    if isinstance(approach, str):
        if approach not in BUILTIN:
            raise ValueError(f"deadspec.{FN}: approach must be {choices}, got {approach!r}")
        return {name: approach for name in layers}
    if isinstance(approach, Mapping):
        extra = sorted(set(approach) - set(layers))
        if extra:
            raise ValueError(
                f"deadspec.{FN}: approach keys must be monitored layers {list(layers)}, got "
                f"{extra}"
            )
        return {name: approach.get(name, DEAD_NORM) for name in layers}
    raise TypeError(f"deadspec.{FN}: approach must be {choices}, got {type(approach).__name__}")


def resolve_approach(
    model: nn.Module, sites: Sequence[tuple[str, SiteSpec]], approach: Any
) -> dict[str, tuple[str, Any]]:
    """Per layer: (DEAD_NORM | DEAD_PROJECTION, weight module name) or ("callable", fn)."""
    named = dict(model.named_modules())
    specs = dict(sites)
    out: dict[str, tuple[str, Any]] = {}
    for name, value in _per_layer(approach, [n for n, _ in sites]).items():
        if callable(value) and not isinstance(value, str):
            out[name] = ("callable", value)
            continue
        if not isinstance(value, str):
            raise TypeError(
                f"deadspec.{FN}: approach for layer {name!r} must be {DEAD_NORM!r}, "
                f"{DEAD_PROJECTION!r}, a module name or a callable, got {type(value).__name__}"
            )
        if value in BUILTIN:
            out[name] = _builtin_spec(name, value, specs[name], named.get(name))
            continue
        module = named.get(value)
        if module is None or module_kind(module) not in ("linear", "conv1d"):
            got = "no such module" if module is None else type(module).__name__
            raise ValueError(
                f"deadspec.{FN}: approach for layer {name!r} must name a linear-like module "
                f"(nn.Linear or Conv1D) of the model, got {value!r} ({got})"
            )
        out[name] = (DEAD_NORM, value)
    return out


def reference_cluster(checkpoints: Sequence[Checkpoint], layer: str) -> tuple[int, int]:
    """Index range ``[lo, hi)`` (descending order) of the reference dead cluster.

    The ``dead_count`` eigenvalues at the bottom of the last checkpoint's active set, plus
    the directions that sank below the active threshold since the largest active count
    recorded (a dead direction approached far enough becomes a round-off "structural
    zero"; it is still dead).
    """
    specs = [c.layers[layer].activation for c in checkpoints]
    last = specs[-1]
    lost = max(0, max(int(s.active) for s in specs) - int(last.active))
    lo = int(last.active) - int(last.dead_count)
    hi = min(int(last.active) + lost, last.dim)
    return lo, hi


def dead_directions(gram: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Eigenvectors ``[lo, hi)`` (descending order) of the reference Gram (``h × (hi − lo)``)."""
    if hi == lo:
        return np.zeros((gram.shape[0], 0))
    _, vecs = sym_eig(gram, vectors=True)
    return np.asarray(vecs, dtype=np.float64)[:, lo:hi]


def approach_table(
    checkpoints: Sequence[Checkpoint],
    layers: Sequence[str],
    approach: Mapping[str, tuple[str, Any]],
    ref_gram: Mapping[str, np.ndarray],
) -> dict[str, np.ndarray]:
    """a(t) per layer at every checkpoint (NaN where undefined: no dead cluster)."""
    n = len(checkpoints)
    table: dict[str, np.ndarray] = {}
    for name in layers:
        kind = approach[name][0]
        if kind == "callable":
            table[name] = np.array([c.layers[name].approach for c in checkpoints], dtype=float)
            continue
        values = np.full(n, np.nan)
        lo, hi = reference_cluster(checkpoints, name) if n else (0, 0)
        r = hi - lo
        if kind == DEAD_NORM and r > 0:
            for i, c in enumerate(checkpoints):
                s = c.layers[name].singular_values
                values[i] = float(np.sqrt(np.sum(s[max(len(s) - r, 0) :] ** 2)))
        elif kind == DEAD_PROJECTION and r > 0:
            u = dead_directions(ref_gram[name], lo, hi)
            for i, c in enumerate(checkpoints):
                p = c.layers[name]
                if p.weight_is_gram:
                    a2 = float(np.sum((p.weight @ u) * u))
                else:
                    a2 = float(np.sum((u.T @ p.weight) ** 2))
                values[i] = math.sqrt(max(a2, 0.0))
        table[name] = values
    return table
