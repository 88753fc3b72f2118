"""Helpers shared by the approach readings: the t grid, layer and unit arguments."""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from deadspec._dist import on_root
from deadspec._engine import collect, read_states, reading_options, validate
from deadspec._engine.gather import collect_over_group
from deadspec._engine.inputs import names_list
from deadspec._limits import MAX_GRID, MAX_PROBES, check_at_most
from deadspec._util import check_choice, check_model

__all__ = [
    "as_real_tensor",
    "DIR_LABELS",
    "METHODS",
    "SIDES",
    "check_order_options",
    "check_read",
    "check_units",
    "default_next_layer",
    "linear_named",
    "read_as",
    "t_grid",
    "unit_direction",
]

SIDES = ("activation", "fisher")
METHODS = ("ols", "theil-sen")
DIR_LABELS = ("expected", "observed", "sampled")


def t_grid(t: Any, fn: str) -> np.ndarray:
    """The t grid, ascending: at least 2 distinct finite positive values, at most
    ``deadspec._limits.MAX_GRID`` (10,000: one reading each)."""
    if t is None:
        return np.logspace(-3, -1, 7)
    try:
        if isinstance(t, (str, bytes, dict)):
            raise TypeError(type(t).__name__)
        arr = np.asarray(t, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(
            f"deadspec.{fn}: t must be a 1-D sequence, array or tensor of positive numbers, got "
            f"{type(t).__name__}"
        ) from None
    if arr.ndim != 1 or arr.size < 2:
        raise ValueError(
            f"deadspec.{fn}: t must be a 1-D grid of at least 2 values, got shape {arr.shape}"
        )
    check_at_most(fn, "the number of t values", int(arr.size), MAX_GRID,
                  "each t is one reading of the model; a log grid of 5–20 points is usual")
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(f"deadspec.{fn}: t must hold finite positive values, got {arr.tolist()}")
    arr = np.sort(arr)
    if np.any(np.diff(arr) == 0):
        raise ValueError(f"deadspec.{fn}: t must hold distinct values, got {arr.tolist()}")
    return arr


def linear_named(model: nn.Module, name: Any, what: str, fn: str) -> nn.Linear:
    named = dict(model.named_modules())
    if not isinstance(name, str):
        raise TypeError(
            f"deadspec.{fn}: {what} must be a module name (str), got {type(name).__name__}"
        )
    if name not in named:
        raise ValueError(
            f"deadspec.{fn}: {what} {name!r} is not a module name of the model; "
            f"available names: {names_list(named)}"
        )
    mod = named[name]
    if not isinstance(mod, nn.Linear):
        raise TypeError(
            f"deadspec.{fn}: {what} {name!r} must be an nn.Linear, got {type(mod).__name__}"
        )
    return mod


def default_next_layer(model: nn.Module, layer: str, width: int) -> str | None:
    after = False
    for name, mod in model.named_modules():
        if name == layer:
            after = True
            continue
        if after and isinstance(mod, nn.Linear) and mod.in_features == width:
            return name
    return None


def _is_int(u: Any) -> bool:
    """An integer index: int or numpy integer (a 0-d integer array/tensor too), not a bool."""
    if isinstance(u, (bool, np.bool_)):
        return False
    if isinstance(u, (int, np.integer)):
        return True
    dtype = getattr(u, "dtype", None)
    if dtype is None or getattr(u, "ndim", None) != 0:
        return False
    return str(dtype).removeprefix("torch.") in (
        "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"
    )


def check_units(units: Any, width: int, fn: str) -> tuple[int, ...]:
    """Hidden-unit indices: an int or a sequence of ints (numpy/torch integers too), distinct
    and in ``[0, width)``. A string (``"37"`` is not units 3 and 7), a bool, or a non-integer
    (``1.5``, and ``2.0`` too: no silent truncation) raises TypeError."""
    if isinstance(units, (str, bytes)):
        raise TypeError(
            f"deadspec.{fn}: units must be an int or a sequence of int, got a string {units!r}"
        )
    if _is_int(units):
        units = [units]
    elif isinstance(units, (bool, np.bool_)):
        raise TypeError(f"deadspec.{fn}: units must be an int or a sequence of int, got a bool")
    try:
        items = list(units)
    except TypeError:
        raise TypeError(
            f"deadspec.{fn}: units must be a sequence of int, got {type(units).__name__}"
        ) from None
    bad_type = [u for u in items if not _is_int(u)]
    if bad_type:
        raise TypeError(
            f"deadspec.{fn}: units must be integers, got {bad_type[0]!r} "
            f"({type(bad_type[0]).__name__})"
        )
    vals = [int(u) for u in items]
    if not vals:
        raise ValueError(f"deadspec.{fn}: units must name at least one hidden unit, got []")
    if len(set(vals)) != len(vals):
        raise ValueError(f"deadspec.{fn}: units must be distinct, got {vals}")
    bad = [u for u in vals if not 0 <= u < width]
    if bad:
        raise ValueError(f"deadspec.{fn}: units must lie in [0, {width}), got {bad}")
    return tuple(vals)


def check_order_options(
    fn: str,
    model: Any,
    labels: str,
    method: str,
    n_probes: Any,
    slope_tol: Any,
    gauge_rtol: Any,
    gauge_atol: Any,
    path: Any,
) -> None:
    """The option checks of :func:`deadspec.direction_order` (also made by
    :func:`deadspec.classify_directions` up front, naming itself)."""
    check_model(model, fn)
    check_choice(fn, "labels", labels, DIR_LABELS)
    check_choice(fn, "method", method, METHODS)
    if isinstance(n_probes, bool) or not isinstance(n_probes, (int, np.integer)) or n_probes < 1:
        raise ValueError(f"deadspec.{fn}: n_probes must be a positive int, got {n_probes!r}")
    usual = "each probe is one Jacobian–vector pass per t; 2–10 are usual"
    check_at_most(fn, "n_probes", int(n_probes), MAX_PROBES, usual)
    for nm, val in (
        ("slope_tol", slope_tol),
        ("gauge_rtol", gauge_rtol),
        ("gauge_atol", gauge_atol),
    ):
        if not (isinstance(val, (int, float)) and math.isfinite(val) and val >= 0):
            raise ValueError(
                f"deadspec.{fn}: {nm} must be a finite non-negative number, got {val!r}"
            )
    if path is not None and not callable(path):
        raise TypeError(f"deadspec.{fn}: path must be callable or None, got {type(path).__name__}")


def _read_options(fn: str, options: dict[str, Any]) -> Any:
    """:func:`deadspec.read`'s options (its defaults, then ``options``) for a reading that
    calls it on behalf of ``deadspec.<fn>``."""
    from deadspec.reading import read

    keyword = inspect.Parameter.KEYWORD_ONLY
    params = inspect.signature(read).parameters.values()
    # (`group` is how read runs, over a process group, not a reading option)
    kw = {
        p.name: p.default
        for p in params
        if p.kind is keyword and p.name not in ("layers", "group")
    }
    return reading_options(**{**kw, **options, "fn": fn})


def check_read(fn: str, model: Any, inputs: Any, layers: list[str], **options: Any) -> None:
    """The checks :func:`deadspec.read` makes before running the model (options, inputs,
    targets, layers), for a reading that calls it: errors name ``deadspec.<fn>``, not read."""
    collect_opts, _ = _read_options(fn, options)
    validate(model, inputs, layers, collect_opts)


def read_as(
    fn: str, model: Any, inputs: Any, layers: list[str], group: Any = None, **options: Any
) -> Any:
    """:func:`deadspec.read` run on behalf of ``deadspec.<fn>``: its errors, and the note on an
    error of the model's own forward, name ``fn``. With a process ``group``, read's
    ``group=`` reading (a collective: the reading of the ranks' concatenated batch)."""
    collect_opts, read_opts = _read_options(fn, options)
    if group is None:
        return read_states(collect(model, inputs, layers, collect_opts), read_opts)
    collected, _ = collect_over_group(model, inputs, layers, collect_opts, group)
    return on_root(fn, lambda: read_states(collected, read_opts), group)


def as_real_tensor(value: Any, what: str, fn: str) -> torch.Tensor:
    """``value`` (a tensor, array or sequence of real numbers) as a tensor, else TypeError."""
    if value is None or isinstance(value, (str, bytes)):
        v = None
    else:
        try:
            v = torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError):
            v = None
    if v is None or v.dtype == torch.bool or v.is_complex():
        got = type(value).__name__ if v is None else f"a tensor of dtype {v.dtype}"
        raise TypeError(
            f"deadspec.{fn}: {what} must be a tensor, array or sequence of real numbers (a "
            f"direction is a dict parameter name -> tensor, or one flat 1-D tensor), got {got}"
        )
    return v


def unit_direction(model: nn.Module, direction: Any, fn: str) -> dict[str, torch.Tensor]:
    """``direction`` (a dict parameter name -> tensor, missing names zero, or one flat vector
    in ``named_parameters()`` order) as a unit-norm dict over every parameter, in each
    parameter's dtype and device; TypeError/ValueError naming ``deadspec.<fn>`` otherwise."""
    params = dict(model.named_parameters())
    if not params:
        raise ValueError(f"deadspec.{fn}: the model has no parameters")
    out: dict[str, torch.Tensor] = {}
    if isinstance(direction, Mapping):
        unknown = [k for k in direction if k not in params]
        if unknown:
            raise ValueError(
                f"deadspec.{fn}: direction names {unknown} are not parameters of the model; "
                f"parameters: {list(params)}"
            )
        for name, p in params.items():
            if name in direction:
                v = as_real_tensor(direction[name], f"direction[{name!r}]", fn)
                if tuple(v.shape) != tuple(p.shape):
                    raise ValueError(
                        f"deadspec.{fn}: direction[{name!r}] must have shape {tuple(p.shape)}, "
                        f"got {tuple(v.shape)}"
                    )
                out[name] = v.detach().to(device=p.device, dtype=torch.float64)
            else:
                out[name] = torch.zeros(p.shape, dtype=torch.float64, device=p.device)
    else:
        v = as_real_tensor(direction, "direction", fn).detach()
        total = sum(p.numel() for p in params.values())
        if v.ndim != 1 or v.numel() != total:
            raise ValueError(
                f"deadspec.{fn}: a flat direction must be a 1-D vector of length {total} "
                f"(sum of parameter sizes, named_parameters() order), got shape {tuple(v.shape)}"
            )
        off = 0
        for name, p in params.items():
            out[name] = (
                v[off : off + p.numel()].reshape(p.shape).to(device=p.device, dtype=torch.float64)
            )
            off += p.numel()
    for name, v in out.items():
        if v.is_complex() or not bool(torch.isfinite(v).all()):
            raise ValueError(f"deadspec.{fn}: direction[{name!r}] must be real and finite")
    norm = math.sqrt(sum(float(v.pow(2).sum()) for v in out.values()))
    if norm == 0.0:
        raise ValueError(f"deadspec.{fn}: direction must be non-zero, got norm 0")
    return {name: (v / norm).to(params[name].dtype) for name, v in out.items()}
