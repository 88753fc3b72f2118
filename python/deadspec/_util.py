"""Small helpers shared by the whole package: progress bars, CSV rows, number formatting."""

from __future__ import annotations

import contextlib
import csv
import math
import os
import sys
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "agg_figure",
    "check_choice",
    "check_model",
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
    p.parent.mkdir(parents=True, exist_ok=True)
    fields = list(columns) if columns is not None else []
    if extra or columns is None:
        for row in rows:
            for key in row:
                if key not in fields:
                    fields.append(key)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            for row in rows:
                writer.writerow({k: csv_value(row.get(k)) for k in fields})
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
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
    """An :func:`agg_figure` saved to ``path`` (PNG, folder created) when the block ends
    without an error."""
    fig = agg_figure(figsize, layout)
    yield fig
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=dpi)
