"""Small helpers shared by the whole package: progress bars, CSV rows, number formatting."""

from __future__ import annotations

import csv
import math
import os
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["csv_value", "progress", "write_csv"]


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
) -> None:
    """Write dict rows as CSV (header first), through a temporary file renamed into place.

    ``columns`` fixes the leading columns (default: the first row's keys); keys that appear
    only in later rows are appended in order of appearance. The parent folder is created.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fields = list(columns) if columns is not None else []
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
                writer.writerow({k: csv_value(v) for k, v in row.items()})
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
