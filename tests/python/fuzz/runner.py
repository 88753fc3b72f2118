"""Run fuzz cases in worker child processes, with a time bound per case, and classify them.

Parent side: :class:`Worker` (one child process, restarted when it dies, hangs or has run
``RECYCLE`` cases), :func:`execute` (cases over ``workers`` children, one thread each),
:func:`run` (generate with hypothesis, execute, summarise), :func:`summarize`.

Child side: ``python runner.py --child`` reads pickled :class:`~fuzz.specs.Case` s on stdin,
runs each (:func:`run_case`) and writes the outcome back on its original stdout; anything the
library prints goes to the child's log (stderr), which also gets faulthandler's traceback of a
crash. The child sets ``deadline`` aside: the parent alone enforces the time bound.

Outcome classes (:data:`fuzz.specs.OUTCOMES`): ``ok``; ``clean_error`` (an exception whose
message starts with ``deadspec.``, or the user's own exception passed through; for the private
bindings, entries ``_core.*`` only, also pybind11's "incompatible function arguments"
TypeError, see below); ``model_error`` (informative: the user's model, loss_fn or path raised
its own exception and deadspec passed it unchanged with a note ``deadspec.<function>: raised
by ...``, see ``deadspec._usercode``); ``crash`` (the child died: segfault, abort, out of
memory); ``hang`` (no answer within the time bound); ``nonfinite`` (a must-be-finite output is
NaN/Inf while every input was finite, beyond the documented exceptions each entry declares);
``unclear_error`` (any other exception, e.g. pybind11's "incompatible function arguments"
from a public entry point); ``overwrite`` (an input file's bytes changed); ``nonfinite_in``
(informative: a non-finite input accepted and echoed into the output); ``harness_error`` (the
suite could not build the input: a bug of the suite).

pybind11's argument TypeError (it lists the accepted signatures) is accepted from the private
extension's own entries ``_core.*``: they are not public entry points, and every public entry
validates its arguments before it calls ``_core``. From a public entry the same TypeError means
a wrong-typed argument leaked through to the binding: it stays an ``unclear_error``.

Command line (the long run; one worker by default, the machine is shared)::

    python tests/python/fuzz/runner.py --size long --workers 1 --json /tmp/fuzz.json
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import queue
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:  # run as a script: make `fuzz` importable
    sys.path.insert(0, str(HERE.parent))

from fuzz.specs import (  # noqa: E402
    CLEAN,
    CRASH,
    FINDINGS,
    HANG,
    MODEL_ERROR,
    NONFINITE,
    NONFINITE_IN,
    OK,
    OUTCOMES,
    OVERWRITE,
    UNCLEAR,
    Case,
)

HARNESS = "harness_error"
ALL_OUTCOMES = OUTCOMES + (HARNESS,)
#: Default time bound of one case, seconds (DEADSPEC_FUZZ_TIMEOUT). Cases take milliseconds to
#: about a second; the bound leaves room for a loaded shared machine.
TIMEOUT = float(os.environ.get("DEADSPEC_FUZZ_TIMEOUT", "20"))
#: Address-space limit of a worker (DEADSPEC_FUZZ_MEMORY, bytes; torch alone maps ~3.5 GB).
MEMORY = int(os.environ.get("DEADSPEC_FUZZ_MEMORY", str(8 << 30)))
#: A worker is restarted after this many cases (bounds leaks and global-state drift).
RECYCLE = 2000
START_TIMEOUT = 300.0


# ---------------------------------------------------------------------------------------------
# Messages: 4-byte length + pickle
# ---------------------------------------------------------------------------------------------
def _send(fd: int, obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    view = memoryview(struct.pack("<I", len(data)) + data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _read_exact(fd: int, n: int) -> bytes | None:
    chunks = []
    while n:
        chunk = os.read(fd, n)
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _recv(fd: int) -> Any:
    head = _read_exact(fd, 4)
    if head is None:
        return None
    body = _read_exact(fd, struct.unpack("<I", head)[0])
    return None if body is None else pickle.loads(body)


# ---------------------------------------------------------------------------------------------
# Child
# ---------------------------------------------------------------------------------------------
def run_case(case: Case, root: Path) -> dict[str, Any]:
    """Run one case in this (child) process and classify its outcome."""
    import numpy as np
    import torch

    from fuzz.build import Context, is_finite
    from fuzz.entries import ENTRIES

    workdir = Path(tempfile.mkdtemp(dir=root))
    ctx = Context(workdir)
    torch.manual_seed(0)
    np.random.seed(0)
    t0 = time.perf_counter()
    try:
        try:
            args, kwargs = ctx.build(case.args), ctx.build(case.kwargs)
        except Exception as exc:  # noqa: BLE001
            if str(exc).startswith("deadspec."):  # a deadspec factory refused the input
                return _result(CLEAN, f"{type(exc).__name__}: {str(exc)[:300]}", t0)
            return _result(HARNESS, f"building the input: {type(exc).__name__}: {exc}", t0)
        outcome, detail = _call(ENTRIES[case.entry], ctx, args, kwargs, case.ops, case.entry)
        if outcome is None:
            bad = [k for k, v in detail.items() if not is_finite(v)]
            if not bad:
                outcome, detail = OK, ""
            else:
                outcome = NONFINITE if ctx.inputs_finite() else NONFINITE_IN
                detail = "non-finite: " + ", ".join(bad[:6]) + (" ..." if len(bad) > 6 else "")
        changed = ctx.changed_files()
        if changed:
            names = ", ".join(Path(p).name for p in changed)
            outcome, detail = OVERWRITE, f"input file(s) written: {names} ({outcome}: {detail})"
        return _result(outcome, detail, t0)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


#: pybind11's TypeError for arguments no overload accepts, of a function or a constructor
#: (accepted from ``_core.*`` entries only).
PYBIND_ARGS = re.compile(
    r"incompatible (function|constructor) arguments\. The following argument types are supported"
)


def _call(
    fn: Any, ctx: Any, args: Any, kwargs: Any, ops: Any, entry: str = ""
) -> tuple[str | None, Any]:
    from fuzz.build import UserLossError
    from fuzz.entries import Classified

    try:
        return None, fn(ctx, args, kwargs, ops)
    except Classified as c:
        return c.outcome, c.detail
    except UserLossError:
        return CLEAN, "the user's loss error, passed through"
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - classifying is the point
        msg = str(exc)
        if isinstance(exc.__cause__, UserLossError) or isinstance(exc.__context__, UserLossError):
            if msg.startswith("deadspec."):
                return CLEAN, f"{type(exc).__name__}: {msg[:300]}"
        if msg.startswith("deadspec.") and not isinstance(exc, SystemExit):
            return CLEAN, f"{type(exc).__name__}: {msg[:300]}"
        if entry.startswith("_core.") and isinstance(exc, TypeError) and PYBIND_ARGS.search(msg):
            return CLEAN, f"TypeError (pybind11): {msg[:200]}"
        notes = [str(n) for n in getattr(exc, "__notes__", ()) if str(n).startswith("deadspec.")]
        if notes and not isinstance(exc, SystemExit):
            return MODEL_ERROR, f"{type(exc).__name__}: {msg[:200]} [{notes[0][:160]}]"
        return UNCLEAR, f"{type(exc).__name__}: {msg[:300]} [{origin(exc)}]"


def origin(exc: BaseException) -> str:
    """Where an exception was raised and the innermost deadspec frame it passed through."""
    import traceback

    frames = traceback.extract_tb(exc.__traceback__)

    def short(f: traceback.FrameSummary) -> str:
        path = f.filename.replace(os.sep, "/")
        for mark in ("/deadspec/", "/torch/", "/numpy/", "/fuzz/"):
            if mark in path:
                path = mark[1:] + path.split(mark, 1)[1]
                break
        return f"{path}:{f.lineno} {f.name}"

    if not frames:
        return "raised by the call itself"
    ours = [f for f in frames if "/deadspec/" in f.filename.replace(os.sep, "/")]
    if "/fuzz/" in frames[-1].filename.replace(os.sep, "/"):  # no Python frame below the call
        return f"raised by the callee of {short(frames[-1])} (a binding or its arguments)"
    where = f"raised at {short(frames[-1])}"
    if ours and ours[-1] is not frames[-1]:
        where += f", via {short(ours[-1])}"
    return where


def _result(outcome: str, detail: str, t0: float) -> dict[str, Any]:
    return {"outcome": outcome, "detail": detail, "seconds": time.perf_counter() - t0}


def _die_with_parent() -> None:
    """Exit when the parent process is gone (a hanging input would otherwise keep a core busy
    after an interrupted run): a daemon thread watches the parent id once a second."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(3)
            time.sleep(1.0)

    threading.Thread(target=watch, daemon=True).start()


def child_main() -> None:
    import faulthandler
    import resource
    import warnings

    _die_with_parent()
    proto_out = os.dup(1)
    os.dup2(2, 1)  # the library's prints go to the log, not into the protocol
    sys.stdout = sys.stderr
    faulthandler.enable(sys.stderr)
    try:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY, MEMORY))
    except (ValueError, OSError):
        pass
    warnings.simplefilter("ignore")
    import torch

    import deadspec

    torch.set_num_threads(1)
    deadspec.set_num_threads(1)
    import fuzz.entries  # noqa: F401 - import everything before saying ready

    root = Path(os.environ["DEADSPEC_FUZZ_ROOT"])
    _send(proto_out, ("ready", os.getpid()))
    fd_in = sys.stdin.fileno()
    while True:
        case = _recv(fd_in)
        if case is None:
            return
        print(f"--- case {case!r}", file=sys.stderr, flush=True)
        _send(proto_out, run_case(case, root))


# ---------------------------------------------------------------------------------------------
# Parent
# ---------------------------------------------------------------------------------------------
class Worker:
    """One child process; :meth:`run` sends a case and waits at most ``timeout`` seconds."""

    def __init__(self, root: Path, index: int) -> None:
        self.root = root
        self.log = root / f"worker{index}.log"
        self.proc: subprocess.Popen | None = None
        self.served = 0
        self.restarts = 0

    def start(self) -> None:
        env = dict(os.environ)
        env.update(
            DEADSPEC_FUZZ_ROOT=str(self.root),
            DEADSPEC_NUM_THREADS="1",
            OMP_NUM_THREADS="1",
            OPENBLAS_NUM_THREADS="1",
            MKL_NUM_THREADS="1",
            MPLBACKEND="Agg",
            PYTHONFAULTHANDLER="1",
        )
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(HERE.parent), env.get("PYTHONPATH", "")) if p
        )
        with open(self.log, "wb") as log:  # the log of the current child only
            self.proc = subprocess.Popen(
                [sys.executable, str(HERE / "runner.py"), "--child"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                env=env,
                start_new_session=True,
            )
        msg = self._wait(START_TIMEOUT)
        if not (isinstance(msg, tuple) and msg and msg[0] == "ready"):
            tail = self._log_tail()
            self.stop()
            raise RuntimeError(f"fuzz: the worker did not start ({msg!r}); its log ends:\n{tail}")
        self.served = 0

    def _wait(self, timeout: float) -> Any:
        fd = self.proc.stdout.fileno()
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            return "timeout"
        return _recv(fd)

    def _log_tail(self, n: int = 1500) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass
        self.proc = None

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                _send(self.proc.stdin.fileno(), None)
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self.stop()

    def run(self, case: Case, timeout: float) -> dict[str, Any]:
        if self.proc is None or self.served >= RECYCLE:
            self.stop()
            self.start()
        self.served += 1
        t0 = time.perf_counter()
        try:
            _send(self.proc.stdin.fileno(), case)
            msg = self._wait(timeout)
        except (BrokenPipeError, OSError):
            msg = None
        if isinstance(msg, dict):
            return msg
        elapsed = time.perf_counter() - t0
        if msg == "timeout":
            self.stop()
            self.restarts += 1
            return {"outcome": HANG, "detail": f"no answer in {timeout:g} s", "seconds": elapsed}
        self.proc.wait()
        code = self.proc.returncode
        tail = self._log_tail()
        self.stop()
        self.restarts += 1
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
        lines = [ln for ln in tail.splitlines() if ln.strip()][-12:]
        return {"outcome": CRASH, "detail": f"{how}; log: " + " | ".join(lines), "seconds": elapsed}


class Pool:
    """``workers`` worker children (one thread each in the parent), kept across calls of
    :meth:`run`; a context manager that leaves no child behind, also on KeyboardInterrupt."""

    def __init__(self, workers: int = 1, root: Path | None = None) -> None:
        self._own_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="deadspec-fuzz-")) if root is None else root
        self.workers = [Worker(self.root, k) for k in range(max(1, workers))]

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for w in self.workers:
            w.close()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def run(self, cases: Sequence[Case], timeout: float = TIMEOUT,
            progress: bool = False) -> list[dict[str, Any]]:
        """One result dict per case, in order: ``entry``, ``case`` (its repr), ``outcome``,
        ``detail``, ``seconds``."""
        results: list[dict[str, Any] | None] = [None] * len(cases)
        todo: queue.Queue[int] = queue.Queue()
        for i in range(len(cases)):
            todo.put(i)
        done = [0]
        lock = threading.Lock()
        errors: list[BaseException] = []

        def loop(w: Worker) -> None:
            try:
                while True:
                    try:
                        i = todo.get_nowait()
                    except queue.Empty:
                        return
                    r = w.run(cases[i], timeout)
                    r.update(entry=cases[i].entry, case=repr(cases[i]))
                    results[i] = r
                    with lock:
                        done[0] += 1
                        if progress and done[0] % 500 == 0:
                            print(f"fuzz: {done[0]}/{len(cases)}", file=sys.stderr, flush=True)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
                errors.append(exc)

        threads = [threading.Thread(target=loop, args=(w,), daemon=True) for w in self.workers]
        try:
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        except BaseException:
            for w in self.workers:  # no child outlives an interrupted run
                w.stop()
            raise
        if errors:
            raise errors[0]
        return [r for r in results if r is not None]


def execute(
    cases: Sequence[Case],
    *,
    workers: int = 1,
    timeout: float = TIMEOUT,
    root: Path | None = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Run the cases over ``workers`` child processes (see :meth:`Pool.run`)."""
    with Pool(workers, root) as pool:
        return pool.run(cases, timeout, progress)


def signature(r: dict[str, Any]) -> str:
    """What distinguishes one finding from another of the same entry and outcome: the exception
    type and where it was raised (unclear errors), the type and deadspec's note (model errors),
    the fields (non-finite results), the signal (crashes), the files (overwrites); digits folded
    so sizes and indices do not split it."""
    d = r["detail"]
    if r["outcome"] == UNCLEAR:
        kind = d.split(":", 1)[0]
        where = d[d.rfind(" [") + 2 : -1] if d.endswith("]") else ""
        return f"{kind} {where}".strip()
    if r["outcome"] == MODEL_ERROR:  # the exception type and whose code deadspec ran
        kind, _, note = d.partition(" [")
        note = note.split(" on ", 1)[0].split(" (", 1)[0].rstrip("]")
        return f"{kind.split(':', 1)[0]} [{note}]"
    if r["outcome"] == CRASH:
        return d.split(";", 1)[0]
    if r["outcome"] == OVERWRITE:
        return d.split(" (", 1)[0]
    if r["outcome"] in (NONFINITE, NONFINITE_IN) and d.startswith("non-finite: "):
        fields = re.sub(r"\d+", "#", d[len("non-finite: ") :]).split(", ")
        return "non-finite: " + ", ".join(dict.fromkeys(f for f in fields if f != "..."))
    return re.sub(r"\d+", "#", d)[:160]


def summarize(results: Iterable[dict[str, Any]], examples: int = 2) -> dict[str, Any]:
    """Counts per entry and outcome, and per (entry, finding) its distinct kinds
    (:func:`signature`), each with its count and shortest inputs."""
    results = list(results)
    counts: dict[str, Counter] = defaultdict(Counter)
    seconds: dict[str, float] = defaultdict(float)
    slowest: dict[str, float] = defaultdict(float)
    found: dict[tuple[str, str], dict[str, list[dict[str, Any]]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for r in results:
        e, o = r["entry"], r["outcome"]
        counts[e][o] += 1
        seconds[e] += r["seconds"]
        slowest[e] = max(slowest[e], r["seconds"])
        if o in FINDINGS or o in (HARNESS, NONFINITE_IN, MODEL_ERROR):
            found[(e, o)][signature(r)].append(r)
    findings = []
    for (e, o), kinds in sorted(found.items()):
        entries = []
        for sig, rs in sorted(kinds.items(), key=lambda kv: -len(kv[1])):
            rs = sorted(rs, key=lambda r: len(r["case"]))
            entries.append(
                {
                    "signature": sig,
                    "count": len(rs),
                    "examples": [
                        {"case": r["case"], "detail": r["detail"]} for r in rs[:examples]
                    ],
                }
            )
        total = sum(k["count"] for k in entries)
        findings.append({"entry": e, "outcome": o, "count": total, "kinds": entries})
    total = Counter()
    for c in counts.values():
        total.update(c)
    return {
        "inputs": len(results),
        "outcomes": {o: total.get(o, 0) for o in ALL_OUTCOMES},
        "per_entry": {
            e: {
                "inputs": sum(c.values()),
                "seconds": round(seconds[e], 3),
                "slowest": round(slowest[e], 3),
                **{o: c.get(o, 0) for o in ALL_OUTCOMES if c.get(o, 0)},
            }
            for e, c in sorted(counts.items())
        },
        "findings": findings,
    }


def format_summary(summary: dict[str, Any], width: int = 160, kinds: int = 4) -> str:
    """The summary as text: totals, a table per entry, the findings by kind."""
    lines = [f"fuzz: {summary['inputs']} inputs"]
    if "wall_seconds" in summary:
        lines[0] += (
            f" in {summary['wall_seconds']:.1f} s ({summary['inputs_per_second']:.1f} inputs/s,"
            f" {summary.get('workers', 1)} worker(s);"
            f" generation {summary['generate_seconds']:.1f} s)"
        )
    lines.append("outcomes: " + ", ".join(f"{k}={v}" for k, v in summary["outcomes"].items() if v))
    lines.append(f"{'entry':34s} {'inputs':>6s} {'s':>7s} {'max s':>6s}  outcomes")
    for e, d in summary["per_entry"].items():
        rest = ", ".join(f"{o}={d[o]}" for o in ALL_OUTCOMES if o in d)
        lines.append(f"{e:34s} {d['inputs']:6d} {d['seconds']:7.2f} {d['slowest']:6.2f}  {rest}")
    if summary["findings"]:
        lines.append("findings (entry outcome xcount; per kind: xcount signature, shortest input):")
        for f in summary["findings"]:
            lines.append(f"- {f['entry']} {f['outcome']} x{f['count']}")
            for k in f["kinds"][:kinds]:
                ex = k["examples"][0]
                lines.append(f"    x{k['count']} {k['signature'][:width]}")
                lines.append(f"      {ex['detail'][:width]}")
                lines.append(f"      {ex['case'][:600]}")
            if len(f["kinds"]) > kinds:
                lines.append(f"    ... {len(f['kinds']) - kinds} more kinds (see the JSON)")
    return "\n".join(lines)


def generate_all(counts: dict[str, int], workers: int = 1, executor: Any = None) -> list[Case]:
    """The cases of every entry, in the order of ``counts``; with several workers the entries
    are generated in parallel processes (the same cases: each is derandomized on its own)."""
    from fuzz.strategies import generate

    if workers <= 1 or len(counts) <= 1:
        return [c for entry, n in counts.items() for c in generate(entry, n)]
    if executor is None:
        with _generators(workers) as executor:
            return generate_all(counts, workers, executor)
    futures = {e: executor.submit(generate, e, n) for e, n in counts.items()}
    return [c for e in counts for c in futures[e].result()]


def _generators(workers: int) -> Any:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))


def run(
    counts: dict[str, int],
    *,
    workers: int = 1,
    timeout: float = TIMEOUT,
    progress: bool = False,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Generate ``counts[entry]`` cases per entry with hypothesis and run them over
    ``workers`` children, a few entries at a time (so memory stays small at the long size);
    summarise. The results of ``ok`` and ``clean_error`` inputs are kept without their input
    and detail."""
    items = list(counts.items())
    step = max(1, workers) * 2
    results: list[dict[str, Any]] = []
    gen_s = exec_s = 0.0
    executor = _generators(workers) if workers > 1 else None
    try:
        with Pool(workers) as pool:
            for k in range(0, len(items), step):
                t0 = time.perf_counter()
                cases = generate_all(dict(items[k : k + step]), workers, executor)
                t1 = time.perf_counter()
                batch = pool.run(cases, timeout)
                exec_s += time.perf_counter() - t1
                gen_s += t1 - t0
                for r in batch:
                    if r["outcome"] in (OK, CLEAN):
                        r = {"entry": r["entry"], "outcome": r["outcome"], "seconds": r["seconds"]}
                    results.append(r)
                if progress:
                    last = items[min(k + step, len(items)) - 1][0]
                    print(f"fuzz: {len(results)} inputs (entries up to {last})", file=sys.stderr,
                          flush=True)
    finally:
        if executor is not None:
            executor.shutdown(cancel_futures=True)
    summary = summarize(results)
    summary.update(
        planned=dict(counts),
        generate_seconds=round(gen_s, 2),
        wall_seconds=round(exec_s, 2),
        inputs_per_second=round(len(results) / max(exec_s, 1e-9), 2),
        workers=workers,
        timeout=timeout,
    )
    return summary, results


def write_json(path: str | os.PathLike, summary: dict[str, Any],
               results: Sequence[dict[str, Any]]) -> None:
    """The summary, plus every result that is not ``ok`` or a clean error (the findings in
    full; all results of a long run would be some 100 MB)."""
    rest = [r for r in results if r["outcome"] not in (OK, CLEAN)]
    Path(path).write_text(json.dumps({**summary, "results": rest}, indent=1))


def main(argv: Sequence[str] | None = None) -> int:
    from fuzz.strategies import SIZES, plan

    p = argparse.ArgumentParser(description="deadspec fuzz suite (issue #12)")
    p.add_argument("--size", default="ci", help=f"{sorted(SIZES)} or a total number of inputs")
    p.add_argument("--entries", default=None, help="comma-separated entry names (default all)")
    p.add_argument("--workers", type=int, default=1, help="worker processes (one core each)")
    p.add_argument("--timeout", type=float, default=TIMEOUT, help="time bound per case, s")
    p.add_argument("--json", default=None,
                   help="write the summary (and the result of every finding) here")
    args = p.parse_args(argv)
    entries = args.entries.split(",") if args.entries else None
    counts = plan(args.size, entries)
    summary, results = run(counts, workers=args.workers, timeout=args.timeout, progress=True)
    print(format_summary(summary))
    if args.json:
        write_json(args.json, summary, results)
        print(f"wrote {args.json}")
    return 0 if not any(summary["outcomes"][o] for o in FINDINGS) else 1


if __name__ == "__main__":
    if sys.argv[1:] == ["--child"]:
        child_main()
    else:
        sys.exit(main())
