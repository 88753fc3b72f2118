"""Timing and peak-memory harness shared by the bench/python/bench_*.py scripts.

The scripts are run as ``python bench/python/bench_x.py``, so this folder is on ``sys.path`` and
they ``from _harness import ...``; their ``--_child`` processes run the same way (see ``Bench``).
Protocol (bench/README.md): libraries are warmed at a small size, then the first call at full size
is a warm-up and up to ``--repeat`` timed calls follow within ``--budget`` seconds; with
``--memory`` each (config, method) runs in a fresh child process of the script, which resets the
kernel's peak-RSS counter after its imports, inputs and warm-up and reports the peak increase.
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np

MARK = "@@BENCH-RESULT@@"
SETTLE_S = 0.3


def status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak() -> tuple[str, int]:
    """Start a peak-RSS window: reset VmHWM where Linux allows it, else fall back to ru_maxrss."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        rss = status_kib("VmRSS")
        if rss is not None and status_kib("VmHWM") is not None:
            return "VmHWM", rss
    except OSError:
        pass
    return "ru_maxrss", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def peak_mib(how: str, base_kib: int) -> float:
    top = status_kib("VmHWM") if how == "VmHWM" else None
    if top is None:
        top = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return max(top - base_kib, 0) / 1024.0


def report(result: dict) -> None:
    """A child process's result, on its own marked line of stdout (read by :func:`run_child`)."""
    print(MARK + json.dumps(result), flush=True)


def run_child(cmd: list[str], what: str, env: dict[str, str] | None = None) -> dict:
    """Run ``cmd`` and return the result it reported; RuntimeError naming ``what`` otherwise."""
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(MARK)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{what}: child exited with {proc.returncode}\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len(MARK):])


def time_runs(run: Callable[[], tuple[Any, dict]], repeat: int, budget: float) -> dict:
    """First run = warm-up at size, unless it alone takes >= budget/2 (then it is the sample)."""
    t0 = time.perf_counter()
    out, parts = run()
    first = time.perf_counter() - t0
    if first >= budget / 2:
        return {"times": [first], "parts": parts, "cold": True, "out": out}
    times: list[float] = []
    best_parts = parts
    spent = first
    while len(times) < repeat:
        out = None
        t0 = time.perf_counter()
        out, parts = run()
        dt = time.perf_counter() - t0
        if not times or dt < min(times):
            best_parts = parts
        times.append(dt)
        spent += dt
        if spent + min(times) > budget:
            break
    return {"times": times, "parts": best_parts, "cold": False, "out": out}


class Bench:
    """A script's cases, measured in this process or in a fresh child process of the script.

    ``cases`` maps a method name to ``build(cfg) -> (run, finalize)``: ``run()`` returns
    ``(out, parts)`` (``parts``: named sub-times), ``finalize(out)`` the arrays to check, as a dict
    of numpy arrays. ``small_config(cfg)`` is the size at which libraries are warmed first.
    ``script`` is the benchmark script's path: the child process runs
    ``python script --_child SPEC``, and the script hands ``SPEC`` to ``child_main``.
    """

    def __init__(
        self,
        script: str,
        cases: dict[str, Callable[[dict], tuple[Callable, Callable]]],
        small_config: Callable[[dict], dict],
    ) -> None:
        self.script = script
        self.cases = cases
        self.small_config = small_config

    def measure_here(self, spec: dict, memory: bool) -> dict:
        build = self.cases[spec["method"]]
        # initialise libraries, thread pools, BLAS buffers
        run, _ = build(self.small_config(spec["cfg"]))
        run()
        del run
        run, finalize = build(spec["cfg"])
        how, base = reset_peak() if memory else ("", 0)
        # The previous method's BLAS threads (numpy's, the core's, torch's) busy-wait for about
        # 0.1 s after their last call and would compete with this one's first calls: let them
        # sleep, so that no method pays for the one before it.
        time.sleep(SETTLE_S)
        res = time_runs(run, spec["repeat"], spec["budget"])
        res["peak_mib"] = peak_mib(how, base) if memory else None
        res["peak_how"] = how
        res["arrays"] = finalize(res.pop("out"))
        return res

    def child_main(self, payload: str) -> None:
        spec = json.loads(payload)
        res = self.measure_here(spec, memory=True)
        np.savez(spec["npz"], **res.pop("arrays"))
        report(res)

    def measure(self, method: str, cfg: dict, args: argparse.Namespace) -> dict:
        spec = {"method": method, "cfg": cfg, "repeat": args.repeat, "budget": args.budget}
        if not args.memory:
            return self.measure_here(spec, memory=False)
        with tempfile.TemporaryDirectory() as tmp:
            spec["npz"] = os.path.join(tmp, "out.npz")
            res = run_child(
                [sys.executable, os.path.abspath(self.script), "--_child", json.dumps(spec)],
                f"{method} {cfg}",
            )
            with np.load(spec["npz"]) as z:
                res["arrays"] = {k: z[k] for k in z.files}
        return res

    def parse_args(
        self, p: argparse.ArgumentParser, argv: list[str] | None, memory_default: bool
    ) -> argparse.Namespace | None:
        """Add the common flags (``common_args``) and parse ``argv``. In a ``--_child`` process,
        measure the case it names and report it to the parent, then return None (main returns 0).
        """
        common_args(p, memory_default)
        args = p.parse_args(argv)
        if args._child:
            self.child_main(args._child)
            return None
        return args


def parser(doc: str) -> argparse.ArgumentParser:
    """The script's argument parser; its description is the first paragraph of ``doc``."""
    return argparse.ArgumentParser(
        description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def environment() -> dict[str, str]:
    env = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} logical CPUs, {cpu_model()}",
        "python": platform.python_version(),
        "numpy": np.__version__,
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE", "<unset>"),
        "load average at start (1/5/15 min)": " ".join(f"{v:.2f}" for v in os.getloadavg()),
    }
    try:
        import torch

        env["torch"] = f"{torch.__version__} ({torch.get_num_threads()} threads)"
    except ImportError:
        pass
    try:
        import deadspec

        info = deadspec.build_info()
        env["deadspec"] = (
            f"{info.get('version')} eig_backend={info.get('eig_backend')!r} "
            f"blas={info.get('blas_info')!r}"
        )
    except Exception as exc:  # noqa: BLE001 - reported, not hidden
        env["deadspec"] = f"<unavailable: {exc}>"
    try:
        from threadpoolctl import threadpool_info

        pools = [
            f"{p.get('internal_api')} {p.get('version')} {p.get('architecture')} "
            f"{p.get('num_threads')}thr ({os.path.basename(p.get('filepath', ''))})"
            for p in threadpool_info()
        ]
        env["threadpools"] = "; ".join(pools) or "<none>"
    except ImportError:
        cfg = getattr(np, "__config__", None)
        blas = (
            getattr(cfg, "CONFIG", {}).get("Build Dependencies", {}).get("blas", {}) if cfg else {}
        )
        env["numpy_blas"] = (
            f"{blas.get('name', '?')} {blas.get('version', '?')} (threadpoolctl absent)"
        )
    return env


def print_env(env: dict[str, str]) -> None:
    for k, v in env.items():
        print(f"# {k}: {v}")


def print_table(rows: list[dict], cols: list[tuple[str, str, str]]) -> None:
    """cols: (key, header, format spec); missing/None values print as '-'."""
    cells = [[h for _, h, _ in cols]]
    for r in rows:
        line = []
        for key, _, fmt in cols:
            v = r.get(key)
            line.append("-" if v is None else format(v, fmt))
        cells.append(line)
    widths = [max(len(c[i]) for c in cells) for i in range(len(cols))]
    for n, line in enumerate(cells):
        print(
            "  ".join(
                c.rjust(w) if n and i else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths))
            )
        )
        if n == 0:
            print("  ".join("-" * w for w in widths))


def write_csv(path: str, rows: list[dict], env: dict[str, str]) -> None:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    keys += [f"env_{k}" for k in env]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({**r, **{f"env_{k}": v for k, v in env.items()}})


def summary(res: dict) -> dict:
    t = res["times"]
    return {
        "best_s": min(t),
        "median_s": statistics.median(t),
        "runs": f"{len(t)}{'c' if res['cold'] else ''}",
    }


def common_args(p: argparse.ArgumentParser, memory_default: bool) -> None:
    p.add_argument("--repeat", type=int, default=3, help="timed runs after the warm-up (default 3)")
    p.add_argument(
        "--budget",
        type=float,
        default=25.0,
        help="seconds per (config, method): fewer repeats when runs are slow (default 25)",
    )
    p.add_argument("--csv", metavar="OUT.csv", help="also write the rows as CSV")
    p.add_argument(
        "--memory",
        action=argparse.BooleanOptionalAction,
        default=memory_default,
        help="one child process per (config, method), with peak RSS increase"
        f" (default {'on' if memory_default else 'off'})",
    )
    p.add_argument(
        "--smoke", action="store_true", help="smallest size, one run: checks the script works"
    )
    p.add_argument("--_child", help=argparse.SUPPRESS)
