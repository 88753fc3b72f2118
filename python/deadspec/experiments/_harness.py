"""The common shape of an experiment: command line, progress, threads, tables, CSV and PNG files.

Every experiment module has a ``run(out, ..., plot, progress, echo)`` that computes its rows,
writes them as CSV files and its figure(s) as PNG into the folder ``out`` (None: nothing is
written), prints tables through ``echo`` (None: silent) and returns a result dataclass; and a
``main(argv)`` that parses its command line and calls ``run``. The pieces they share:

- command line: :func:`parser` (``--out``, ``--quick``, ``--size``, ``--seed``, ``--threads``,
  ``--no-plot``, ``--progress/--no-progress``: each experiment picks those it has) and
  :func:`cli_main` (parse, run, exit status);
- running: :func:`resolve_progress` / :func:`progress_bar` (tqdm, by default only on a
  terminal), :func:`threads` (torch's, and optionally the core's, thread count for the run),
  :func:`count_forwards` (the forward passes a measurement costs), :func:`map_jobs` (independent
  runs, serially or in worker processes of one torch thread each);
- output: :func:`check_out` (the output folder, checked before any work), :func:`write_csv`,
  :func:`write_outputs` (the CSV files and figures of a run, each written atomically),
  :func:`figure` (a matplotlib ``Figure`` on its own Agg canvas, saved as PNG: no pyplot, no
  process-wide backend change), :func:`report` (tables, files written, wall time);
- tables: :func:`fmt` (one number), :class:`Col` and :func:`format_table` (aligned text tables),
  :func:`mean_se_col` (a column of ``<key>_mean ± <key>_se``),
  :func:`groups` (rows per value of a key, in a given order).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from deadspec import _files, _util

__all__ = [
    "Col",
    "check_out",
    "cli_main",
    "count_forwards",
    "figure",
    "fmt",
    "default_workers",
    "format_table",
    "groups",
    "map_jobs",
    "mean_se_col",
    "parser",
    "progress_bar",
    "report",
    "resolve_progress",
    "threads",
    "write_csv",
    "write_outputs",
]

Row = Mapping[str, Any]


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------
def parser(
    prog: str,
    description: str,
    default_out: Path,
    *,
    quick_help: str = "tiny sizes (for tests)",
    sizes: Sequence[str] | None = None,
    size_help: str | None = None,
    seed: bool = True,
    threads: bool = False,
) -> argparse.ArgumentParser:
    """An experiment's argument parser with the arguments the experiments share.

    Always ``--out DIR`` (default ``default_out``), ``--quick``, ``--no-plot`` (dest ``plot``)
    and ``--progress/--no-progress`` (dest ``progress``, default None: only on a terminal).
    ``sizes``: add ``--size`` with these choices (default ``"default"``); ``seed``: add
    ``--seed`` (default 0); ``threads``: add ``--threads`` (default 1; 0 leaves the setting
    alone, see :func:`cli_main`). The experiment adds its own arguments to the result; every
    ``dest`` must be a keyword of its ``run``.
    """
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument(
        "--out",
        default=str(default_out),
        metavar="DIR",
        help=f"output folder (default {default_out})",
    )
    p.add_argument("--quick", action="store_true", help=quick_help)
    if sizes is not None:
        p.add_argument("--size", choices=list(sizes), default="default", help=size_help)
    if seed:
        p.add_argument("--seed", type=int, default=0)
    if threads:
        p.add_argument(
            "--threads", type=int, default=1, help="torch threads (default 1; 0: leave unchanged)"
        )
    p.add_argument("--no-plot", dest="plot", action="store_false", help="write no PNG")
    p.add_argument(
        "--progress",
        dest="progress",
        action="store_true",
        default=None,
        help="progress bars (default: only when stderr is a terminal)",
    )
    p.add_argument("--no-progress", dest="progress", action="store_false")
    return p


def cli_main(
    name: str,
    parser: argparse.ArgumentParser,
    run: Callable[..., Any],
    argv: Sequence[str] | None,
    *,
    prepare: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    status: Callable[[Any], int] | None = None,
) -> int:
    """Parse ``argv``, call ``run(**arguments)`` and return the exit status.

    ``--threads 0`` becomes ``threads=None`` (leave the setting alone). ``prepare`` rewrites
    the keyword arguments first. A ``ValueError``/``TypeError`` from ``run`` (a bad argument,
    an output folder that cannot be written: each ``run`` checks ``out`` before any work) or an
    ``OSError`` from writing the outputs is printed as ``<name>: error: ...`` on stderr and
    gives 2; otherwise the status is ``status(result)`` (default 0).
    """
    kwargs = vars(parser.parse_args(None if argv is None else list(argv)))
    if kwargs.get("threads") == 0:
        kwargs["threads"] = None
    if prepare is not None:
        kwargs = prepare(kwargs)
    try:
        result = run(**kwargs)
    except (ValueError, TypeError) as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a write that failed after the folder was checked (disk full, ...)
        print(f"{name}: error: cannot write the outputs: {exc}", file=sys.stderr)
        return 2
    return 0 if status is None else int(status(result))


# ---------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------
def resolve_progress(progress: bool | None) -> bool:
    """``progress``, or (None) whether stderr is a terminal."""
    return sys.stderr.isatty() if progress is None else bool(progress)


def progress_bar(items: Iterable[Any], desc: str, progress: bool | None, unit: str = "run") -> Any:
    """A tqdm bar over ``items`` (disabled unless :func:`resolve_progress` says so)."""
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit=unit, disable=not resolve_progress(progress))


@contextlib.contextmanager
def threads(n: int | None, *, core: bool = False) -> Iterator[None]:
    """Run the block with torch's intra-op threads set to ``n`` (None: unchanged).

    ``core=True`` sets the C++ core's BLAS threads (:func:`deadspec.set_num_threads`) too. Both
    are restored on exit.
    """
    import torch

    import deadspec

    if n is None:
        yield
        return
    old = torch.get_num_threads()
    old_core = deadspec.num_threads() if core and hasattr(deadspec, "num_threads") else None
    torch.set_num_threads(int(n))
    if old_core is not None:
        deadspec.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)
        if old_core is not None:
            deadspec.set_num_threads(int(old_core))


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def default_workers() -> int:
    """The CPUs this process may use (:func:`map_jobs`' default number of workers)."""
    import os

    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def map_jobs(
    fn: Callable[..., Any],
    jobs: Sequence[tuple[Any, ...]],
    workers: int,
    progress: bool | None,
    desc: str,
) -> list[Any]:
    """``[fn(*job) for job in jobs]``, in order.

    With ``workers`` ≤ 1 (or one job) the calls run here, one after the other, with this
    process's thread setting. Otherwise they run in that many worker processes (``spawn``, so
    ``fn`` must be a module-level function and the jobs picklable), each with one torch thread:
    small models gain nothing from intra-op threads, so independent runs side by side use a
    machine's cores better. The first job that raises cancels the jobs not yet started and
    raises here.
    """
    bar = progress_bar(None, desc, progress)
    bar.total = len(jobs)
    try:
        if workers <= 1 or len(jobs) <= 1:
            out = []
            for job in jobs:
                out.append(fn(*job))
                bar.update(1)
            return out
        import concurrent.futures as cf
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        with cf.ProcessPoolExecutor(
            max_workers=int(workers), mp_context=ctx, initializer=_one_thread
        ) as pool:
            futures = [pool.submit(fn, *job) for job in jobs]
            try:
                for done in cf.as_completed(futures):
                    done.result()  # raises the job's error at once
                    bar.update(1)
            except BaseException:
                pool.shutdown(wait=False, cancel_futures=True)
                raise
            return [f.result() for f in futures]
    finally:
        bar.close()


@contextlib.contextmanager
def count_forwards(model: Any) -> Iterator[list[int]]:
    """Count the forward calls of ``model`` in the block: ``counter[0]``.

    The forward pre-hook is a plain closure, so the deep copies of the model made inside the
    block (:func:`deadspec.approach_slope` reads a copy) share it and their passes count too.
    """
    counter = [0]

    def hook(_module: Any, _inputs: Any) -> None:
        counter[0] += 1

    handle = model.register_forward_pre_hook(hook)
    try:
        yield counter
    finally:
        handle.remove()


@contextlib.contextmanager
def capture_outputs(modules: Sequence[Any]) -> Iterator[list[Any]]:
    """In the block, ``outputs[i]`` is the last output of ``modules[i]`` (None before one)."""
    outputs: list[Any] = [None] * len(modules)

    def keeper(i: int) -> Callable[..., None]:
        def hook(_module: Any, _inputs: Any, out: Any) -> None:
            outputs[i] = out

        return hook

    handles = [m.register_forward_hook(keeper(i)) for i, m in enumerate(modules)]
    try:
        yield outputs
    finally:
        for h in handles:
            h.remove()


# ---------------------------------------------------------------------------------------------
# Output files
# ---------------------------------------------------------------------------------------------
def write_csv(rows: Iterable[Row], columns: Sequence[str], path: str | Path) -> Path:
    """Write ``rows`` (dicts; missing keys empty, extra keys ignored) as a CSV with ``columns``,
    through a temporary file renamed over ``path`` (:func:`deadspec._util.write_csv`)."""
    return _util.write_csv(path, list(rows), columns, extra=False)


#: A figure on its own Agg canvas saved to a path when the block ends (no pyplot).
figure = _util.figure


def check_out(out: str | Path | None, fn: str) -> Path | None:
    """Check the output folder ``out`` of ``deadspec.<fn>`` before any work (None: nothing is
    written): a folder, or a path where one can be created, that can be written. Raises
    ``ValueError`` (``TypeError`` for a non-path) naming ``out``."""
    return None if out is None else _files.check_folder(fn, "out", out)


def write_outputs(
    out: str | Path | None,
    csvs: Mapping[str, tuple[Sequence[Row], Sequence[str]]],
    figures: Mapping[str, Callable[[Path], None]] | None = None,
    config: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """Write a run's files into ``out`` (created); returns file name -> path (empty if None).

    ``csvs``: file name -> (rows, columns); ``figures``: file name -> ``draw(path)`` (pass
    None or {} for ``plot=False``); ``config``: the run's configuration, written as
    ``config.json`` with the torch and Python versions added. Every file is written to a
    temporary name and renamed into place, so a failed write leaves the earlier file as it was.
    """
    if out is None:
        return {}
    out = _files.check_folder("experiments.write_outputs", "out", out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: write_csv(rows, cols, out / name) for name, (rows, cols) in csvs.items()}
    for name, draw in (figures or {}).items():
        draw(out / name)
        paths[name] = out / name
    if config is not None:
        import json
        import platform

        import torch

        full = {**config, "torch": torch.__version__, "python": platform.python_version()}
        text = json.dumps(full, indent=2, default=float) + "\n"
        paths["config.json"] = _files.write_text(out / "config.json", text)
    return paths


def report(
    echo: Callable[[str], None] | None,
    texts: Iterable[str],
    written: Iterable[Path],
    seconds: float,
) -> None:
    """Print ``texts``, then ``wrote a, b and c`` (when files were written) and the wall time."""
    if echo is None:
        return
    for text in texts:
        echo(text)
    names = [str(p) for p in written]
    if names:
        listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
        echo(f"wrote {listed}")
    echo(f"({seconds:.1f} s)")


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------
_WIDTH = re.compile(r"(?:.?[<>=^])?[-+ ]?z?#?0?(\d*)")


def _spec_width(spec: str) -> int:
    m = _WIDTH.match(spec)
    return int(m.group(1)) if m and m.group(1) else 0


def fmt(v: Any, spec: str) -> str:
    """Format a number for a table: ``-`` for None, ``nan`` for a non-finite value (both padded
    to the width of ``spec``); a value that is not a number is shown as text."""
    width = _spec_width(spec)
    if v is None:
        return "-".rjust(width)
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v).rjust(width)
    return format(f, spec) if math.isfinite(f) else "nan".rjust(width)


@dataclasses.dataclass(frozen=True)
class Col:
    """A column of :func:`format_table`.

    Attributes
    ----------
    title : str
        Header.
    value : str or callable
        The row's key, or ``value(row)``.
    spec : str
        Format spec of the value. One ending in a float type (``e f g %``) goes through
        :func:`fmt` (None and NaN handled); any other is applied with ``format`` (None shows
        ``-``). The column is left-aligned when ``spec`` starts with ``<``, else right-aligned,
        and at least as wide as its title.
    """

    title: str
    value: str | Callable[[Row], Any]
    spec: str = ""

    def cell(self, row: Row) -> str:
        v = row.get(self.value) if isinstance(self.value, str) else self.value(row)
        if self.spec[-1:] in ("e", "E", "f", "F", "g", "G", "%"):
            return fmt(v, self.spec)
        return "-".rjust(_spec_width(self.spec)) if v is None else format(v, self.spec)

    def align(self, text: str) -> str:
        width = max(len(self.title), _spec_width(self.spec))
        return text.ljust(width) if self.spec.startswith("<") else text.rjust(width)


def mean_se_col(title: str, key: str, spec: str, align: str) -> Col:
    """A :func:`format_table` column showing ``row[key + "_mean"] ± row[key + "_se"]``, both
    formatted with ``spec``, the pair aligned by ``align`` (e.g. ``">20"``)."""
    return Col(
        title, lambda r: f"{fmt(r[f'{key}_mean'], spec)} ± {fmt(r[f'{key}_se'], spec)}", align
    )


def format_table(
    rows: Iterable[Row],
    columns: Sequence[Col],
    *,
    suffix: Callable[[Row], str] | None = None,
    rule: bool = True,
) -> str:
    """An aligned text table: the header, a rule of dashes, one line per row (+ ``suffix(row)``)."""
    head = " ".join(c.align(c.title) for c in columns).rstrip()
    lines = [head, "-" * len(head)] if rule else [head]
    for row in rows:
        line = " ".join(c.align(c.cell(row)) for c in columns).rstrip()
        lines.append(line + (suffix(row) if suffix is not None else ""))
    return "\n".join(lines)


def groups(rows: Iterable[Row], key: str, values: Iterable[Any]) -> Iterator[tuple[Any, list[Row]]]:
    """``(value, rows with row[key] == value)`` for each of ``values`` that has rows, in order."""
    rows = list(rows)
    for value in values:
        mine = [r for r in rows if r[key] == value]
        if mine:
            yield value, mine
