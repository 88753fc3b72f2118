"""Small helpers shared by the whole package: argument checks, progress bars, CSV rows, number
formatting."""

from __future__ import annotations

import contextlib
import csv
import math
import numbers
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from deadspec._files import atomic_path, save_figure

__all__ = [
    "INT32_MAX",
    "INT64_MAX",
    "agg_figure",
    "check_bool",
    "check_choice",
    "check_integer",
    "check_model",
    "check_real",
    "csv_value",
    "figure",
    "progress",
    "unwrap_compiled",
    "write_csv",
]


def check_choice(fn: str, arg: str, value: Any, choices: Sequence[Any]) -> None:
    """Raise ValueError unless ``value`` is one of ``choices`` (the message names ``fn``)."""
    if value not in choices:
        raise ValueError(f"deadspec.{fn}: {arg} must be one of {tuple(choices)}, got {value!r}")


def check_bool(fn: str, arg: str, value: Any) -> bool:
    """``value`` as a bool: a bool (Python or numpy) or the int 0 or 1; TypeError otherwise
    (a string such as ``"no"`` is not taken as true)."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, numbers.Integral) and int(value) in (0, 1):
        return bool(value)
    raise TypeError(f"deadspec.{fn}: {arg} must be a bool, got {_describe(value)}")


#: The largest value of the core's integer arguments (std::int64_t; ``int`` for thread counts).
INT64_MAX = 2**63 - 1
INT32_MAX = 2**31 - 1


def check_integer(
    fn: str,
    arg: str,
    value: Any,
    minimum: int | None = None,
    *,
    optional: bool = False,
    maximum: int | None = None,
) -> int | None:
    """``value`` as an int (an integral number, not a bool), at least ``minimum`` and at most
    ``maximum`` (e.g. :data:`INT64_MAX` for an argument of the core); None passes when
    ``optional``. TypeError for a non-integer, ValueError out of range."""
    if value is None and optional:
        return None
    if isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_)):
        v = int(value)
    elif isinstance(value, float) and value.is_integer():
        v = int(value)
    else:
        kind = "an int or None" if optional else "an int"
        raise TypeError(f"deadspec.{fn}: {arg} must be {kind}, got {_describe(value)}")
    if minimum is not None and v < minimum:
        raise ValueError(f"deadspec.{fn}: {arg} must be >= {minimum}, got {v}")
    if maximum is not None and v > maximum:
        raise ValueError(f"deadspec.{fn}: {arg} must be <= {maximum}, got {v}")
    return v


#: The seeds a torch.Generator takes (``manual_seed``: an int64 or a uint64 value).
SEED_RANGE = (-(2**63), 2**64 - 1)


def check_seed(fn: str, seed: Any) -> int | None:
    """``seed`` as an int a ``torch.Generator`` takes, or None (TypeError / ValueError)."""
    return check_integer(
        fn, "seed", seed, SEED_RANGE[0], optional=True, maximum=SEED_RANGE[1]
    )


def check_real(fn: str, arg: str, value: Any, *, optional: bool = False) -> float | None:
    """``value`` as a float (a real number or a one-element tensor/array, not a bool or a
    string); None passes when ``optional``. TypeError otherwise."""
    if value is None and optional:
        return None
    kind = "a number or None" if optional else "a number"
    if isinstance(value, (str, bytes, bool, np.bool_)) or not hasattr(value, "__float__"):
        raise TypeError(f"deadspec.{fn}: {arg} must be {kind}, got {_describe(value)}")
    try:
        return float(value)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"deadspec.{fn}: {arg} must be {kind}, got {_describe(value)}") from None


def _describe(value: Any) -> str:
    """``str 'abc'``, ``float 2.5``, ``Tensor of shape (3,)`` for an error message."""
    shape = getattr(value, "shape", None)
    if shape is not None and not isinstance(value, (str, bytes)):
        return f"{type(value).__name__} of shape {tuple(shape)}"
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def check_model(model: Any, fn: str) -> None:
    """Raise TypeError unless ``model`` is a ``torch.nn.Module``."""
    from torch import nn

    if not isinstance(model, nn.Module):
        raise TypeError(
            f"deadspec.{fn}: model must be a torch.nn.Module, got {type(model).__name__}"
        )


def unwrap_compiled(model: Any) -> Any:
    """The module a ``torch.compile`` wrapper (``OptimizedModule``) compiles, else ``model``.

    The wrapper holds the original module as ``_orig_mod`` (its parameters are the original's,
    under the names ``_orig_mod.*``). deadspec takes the original wherever a model is given:
    module names stay those of the uncompiled model, gauge discovery traces it with torch.fx,
    and a reading's hooks fire in its eager forward (hooks added to a compiled graph after
    compilation are not called).
    """
    from torch import nn

    while type(model).__name__ == "OptimizedModule" and isinstance(
        getattr(model, "_orig_mod", None), nn.Module
    ):
        model = model._orig_mod
    return model


def unwrap_parallel(model: Any) -> Any:
    """:func:`unwrap_compiled`, and the module a ``DistributedDataParallel`` wrapper holds
    (``.module``: the same parameters, names without the ``module.`` prefix). For the optimizers
    and gauge discovery, which read the structure only: a reading runs the model's forward and
    backward through the wrapper it is given."""
    from torch.nn.parallel import DistributedDataParallel

    model = unwrap_compiled(model)
    while isinstance(model, DistributedDataParallel):
        model = unwrap_compiled(model.module)
    return model


def progress(iterable: Any, enabled: bool | None, desc: str, total: int | None = None) -> Any:
    """A tqdm bar over ``iterable``; ``enabled=None`` shows it when stderr is a terminal."""
    from tqdm.auto import tqdm

    disable = (not sys.stderr.isatty()) if enabled is None else (not enabled)
    return tqdm(iterable, desc=desc, total=total, disable=disable, leave=False)


def csv_value(value: Any) -> Any:
    """A CSV cell: None as an empty field, non-finite floats as ``nan``/``inf``/``-inf``."""
    if value is None:
        return ""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def write_csv(
    path: str | os.PathLike,
    rows: Sequence[dict[str, Any]],
    columns: Iterable[str] | None = None,
    *,
    extra: bool = True,
) -> Path:
    """Write dict rows as CSV (header first), through a temporary file renamed into place, so
    a reader (or an interrupted run) never sees a half-written file; returns the path.

    ``columns`` fixes the leading columns (default: the first row's keys). ``extra=True``
    appends keys that appear in any row in order of appearance; ``extra=False`` writes exactly
    ``columns`` (missing keys empty, others ignored). The parent folder is created.
    """
    p = Path(path)
    fields = list(columns) if columns is not None else []
    if extra or columns is None:
        for row in rows:
            for key in row:
                if key not in fields:
                    fields.append(key)
    with atomic_path(p) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: csv_value(row.get(k)) for k in fields})
    return p


def agg_figure(figsize: tuple[float, float], layout: str | None = None) -> Any:
    """A ``matplotlib.figure.Figure`` on its own Agg canvas: matplotlib is imported here, and
    neither pyplot nor the process-wide backend is touched."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout=layout)
    FigureCanvasAgg(fig)
    return fig


@contextlib.contextmanager
def figure(
    path: str | os.PathLike,
    *,
    figsize: tuple[float, float],
    dpi: int = 100,
    layout: str = "constrained",
) -> Iterator[Any]:
    """An :func:`agg_figure` saved to ``path`` (the format its suffix names, else PNG; folder
    created; written to a temporary file and renamed) when the block ends without an error."""
    fig = agg_figure(figsize, layout)
    yield fig
    save_figure(fig, path, dpi=dpi)


def output_logits(out: Any) -> Any:
    """A Hugging Face ``ModelOutput`` (anything with a tensor ``logits``) as its logits; any
    other output unchanged."""
    import torch

    logits = getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor) and not isinstance(out, torch.Tensor):
        return logits
    return out
