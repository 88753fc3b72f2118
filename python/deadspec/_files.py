"""Writing files without losing data: output paths checked before any work, atomic writes.

Every file deadspec writes (CSV, PNG, checkpoints, text) goes through :func:`atomic_path`: the
content is written to a temporary file beside the target and renamed over it only once
complete, so an interrupted or failed write leaves the previous file as it was and no temporary
file behind. Before a long computation the caller checks its output paths with
:func:`output_problem` / :func:`check_output` (a file path, in a folder that exists or can be
created and is writable, not one of the inputs, a figure format matplotlib writes), so a bad
path is refused before minutes of work, never after.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_path",
    "check_folder",
    "check_output",
    "figure_format",
    "figure_formats",
    "folder_problem",
    "output_problem",
    "same_file",
    "save_figure",
    "write_text",
]

PathLike = str | os.PathLike


def _as_path(arg: str, path: Any) -> tuple[Path | None, str | None]:
    if isinstance(path, bool) or not isinstance(path, (str, os.PathLike)):
        return None, f"{arg} must be a path (str or os.PathLike), got {type(path).__name__}"
    if not os.fspath(path):
        return None, f"{arg} must be a path, got an empty string"
    return Path(path), None


def same_file(a: PathLike, b: PathLike) -> bool:
    """Whether ``a`` and ``b`` are the same file: through symlinks and hard links where both
    exist (``os.path.samefile``), else by their resolved paths."""
    try:
        if os.path.exists(a) and os.path.exists(b):
            return os.path.samefile(a, b)
    except OSError:
        pass
    return os.path.realpath(a) == os.path.realpath(b)


def figure_formats() -> tuple[str, ...]:
    """The file formats matplotlib's Agg canvas writes (``png``, ``pdf``, ``svg``, ...)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    return tuple(FigureCanvasAgg.get_supported_filetypes())


def figure_format(path: PathLike) -> str | None:
    """The matplotlib format named by the suffix of ``path`` (lower case), else None."""
    fmt = Path(path).suffix.lower().removeprefix(".")
    return fmt if fmt in figure_formats() else None


def _writable_ancestor(folder: Path) -> tuple[Path, str | None]:
    """The nearest existing ancestor of ``folder`` (itself included) and what stops files
    being created below it (None: nothing)."""
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        return probe, f"{str(probe)!r} is a file, not a folder"
    if not os.access(probe, os.W_OK | os.X_OK):
        return probe, f"the folder {str(probe)!r} is not writable"
    return probe, None


def folder_problem(arg: str, folder: Any) -> str | None:
    """What is wrong with ``folder`` as an output folder (created if missing), else None."""
    p, problem = _as_path(arg, folder)
    if problem is not None:
        return problem
    assert p is not None
    if p.exists() and not p.is_dir():
        return f"{arg} must be a folder, got the file {str(p)!r}"
    _, why = _writable_ancestor(p)
    if why is not None:
        return f"{arg} must be a folder that can be written, got {str(p)!r} ({why})"
    return None


def output_problem(
    arg: str,
    path: Any,
    *,
    inputs: Iterable[tuple[str, Any]] = (),
    figure: bool = False,
) -> str | None:
    """What is wrong with ``path`` as an output file, else None (the message names ``arg``).

    ``inputs``: ``(label, path)`` pairs (a file, or a folder whose model/data files count) of
    the inputs and of the other outputs, which ``path`` must not be. ``figure``: the suffix
    must name a format matplotlib writes.
    """
    p, problem = _as_path(arg, path)
    if problem is not None:
        return problem
    assert p is not None
    if p.is_dir():
        return f"{arg} must be a file path, got the folder {str(p)!r}"
    for label, other in inputs:
        if other is None or not _overwrites(p, Path(other)):
            continue
        if Path(other).is_dir():
            return (
                f"{arg} must not be a file of {label} {str(other)!r} (a folder: writing it "
                f"would replace the file {p.name!r} read from it), got {str(p)!r}"
            )
        return (
            f"{arg} must not be the same file as {label} {str(other)!r} (writing it would "
            f"replace that file), got {str(p)!r}"
        )
    if figure and figure_format(p) is None:
        return (
            f"{arg} must end in .png (or another format matplotlib writes: "
            f"{', '.join('.' + f for f in figure_formats() if f != 'png')}), got {str(p)!r}"
        )
    _, why = _writable_ancestor(p.parent)
    if why is not None:
        return f"{arg} must be in a folder that can be written, got {str(p)!r} ({why})"
    return None


_OUTPUT_SUFFIXES = (".csv", ".tmp")


def _overwrites(p: Path, other: Path) -> bool:
    """Whether writing ``p`` replaces ``other`` or, for a folder ``other``, one of its files
    (other than earlier CSV/figure outputs written there)."""
    if other.is_dir():
        if not p.exists() or not same_file(p.parent, other):
            return False
        suffix = p.suffix.lower()
        return suffix not in _OUTPUT_SUFFIXES and figure_format(p) is None
    return same_file(p, other)


def check_output(
    fn: str,
    arg: str,
    path: Any,
    *,
    inputs: Iterable[tuple[str, Any]] = (),
    figure: bool = False,
) -> Path:
    """:func:`output_problem` as ``TypeError``/``ValueError`` naming ``deadspec.<fn>``;
    returns the path."""
    problem = output_problem(arg, path, inputs=inputs, figure=figure)
    if problem is not None:
        kind = TypeError if problem.startswith(f"{arg} must be a path (") else ValueError
        raise kind(f"deadspec.{fn}: {problem}")
    return Path(path)


def check_folder(fn: str, arg: str, folder: Any) -> Path:
    """:func:`folder_problem` as ``TypeError``/``ValueError`` naming ``deadspec.<fn>``."""
    problem = folder_problem(arg, folder)
    if problem is not None:
        kind = TypeError if problem.startswith(f"{arg} must be a path (") else ValueError
        raise kind(f"deadspec.{fn}: {problem}")
    return Path(folder)


def _temp_beside(p: Path) -> tuple[int, Path]:
    """A new file ``.<name>.<random>.tmp`` beside ``p`` (mode 0o666 less the umask)."""
    while True:
        tmp = p.with_name(f".{p.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:  # pragma: no cover - 32 random bits
            continue


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` to write; renamed over ``path`` when the block ends
    without an error, removed otherwise (``path`` is then as it was). The folder is created;
    a symlink is written through (its target replaced, the link kept)."""
    p = Path(os.path.realpath(path)) if os.path.islink(path) else Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _temp_beside(p)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def save_figure(fig: Any, path: PathLike, *, dpi: float = 100, **kwargs: Any) -> Path:
    """``fig.savefig`` atomically, in the format the suffix of ``path`` names (PNG when it
    names none); returns the path."""
    fmt = figure_format(path) or "png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format=fmt, **kwargs)
    return Path(path)
