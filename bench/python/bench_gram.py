"""Benchmark: activation Gram, deadspec.gram vs numpy (and torch for the record).

Feature side (N×h → h×h): ``deadspec.gram(x, side="feature")`` vs ``x.T @ x / N`` in numpy (the
baseline; numpy recognises the ``x.T @ x`` pattern and calls BLAS ``syrk``) and torch. Sample side
(N×h → N×N): ``deadspec.gram(x, side="sample")`` vs ``x @ x.T / N``. float64 and float32 inputs;
deadspec always accumulates and returns float64, so the float32 rows also time numpy on a float64
copy (``numpy f64``) for a same-precision reference. Ratios are method time / numpy time at the
input's dtype (target ≤ 1.2).

By default everything runs in this process; ``--memory`` runs each (configuration, method) in a
fresh child process and reports its peak RSS increase. Run ``python bench/python/bench_gram.py --help``.
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

# ---------------------------------------------------------------------------------------------
# Harness (the same block is in every bench/python/bench_*.py: the scripts stay standalone).
# ---------------------------------------------------------------------------------------------

_MARK = "@@BENCH-RESULT@@"


def _status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> tuple[str, int]:
    """Start a peak-RSS window: reset VmHWM where Linux allows it, else fall back to ru_maxrss."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        rss = _status_kib("VmRSS")
        if rss is not None and _status_kib("VmHWM") is not None:
            return "VmHWM", rss
    except OSError:
        pass
    return "ru_maxrss", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _peak_mib(how: str, base_kib: int) -> float:
    top = _status_kib("VmHWM") if how == "VmHWM" else None
    if top is None:
        top = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return max(top - base_kib, 0) / 1024.0


def _time_runs(run: Callable[[], tuple[Any, dict]], repeat: int, budget: float) -> dict:
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


def _measure_here(spec: dict, memory: bool) -> dict:
    build = CASES[spec["method"]]
    run, _ = build(small_config(spec["cfg"]))  # initialise libraries, thread pools, BLAS buffers
    run()
    del run
    run, finalize = build(spec["cfg"])
    how, base = _reset_peak() if memory else ("", 0)
    res = _time_runs(run, spec["repeat"], spec["budget"])
    res["peak_mib"] = _peak_mib(how, base) if memory else None
    res["peak_how"] = how
    res["arrays"] = finalize(res.pop("out"))
    return res


def _child_main(payload: str) -> None:
    spec = json.loads(payload)
    res = _measure_here(spec, memory=True)
    np.savez(spec["npz"], **res.pop("arrays"))
    print(_MARK + json.dumps(res), flush=True)


def _measure(method: str, cfg: dict, args: argparse.Namespace) -> dict:
    spec = {"method": method, "cfg": cfg, "repeat": args.repeat, "budget": args.budget}
    if not args.memory:
        return _measure_here(spec, memory=False)
    with tempfile.TemporaryDirectory() as tmp:
        spec["npz"] = os.path.join(tmp, "out.npz")
        proc = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--_child", json.dumps(spec)],
            capture_output=True,
            check=False,
            text=True,
        )
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(_MARK)]
        if proc.returncode != 0 or not lines:
            raise RuntimeError(
                f"{method} {cfg}: child exited with {proc.returncode}\n{proc.stderr[-3000:]}"
            )
        res = json.loads(lines[-1][len(_MARK) :])
        with np.load(spec["npz"]) as z:
            res["arrays"] = {k: z[k] for k in z.files}
    return res


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def _environment() -> dict[str, str]:
    env = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} logical CPUs, {_cpu_model()}",
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
            f"{info.get('version')} eig_backend={info.get('eig_backend')!r} blas={info.get('blas_info')!r}"
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


def _print_env(env: dict[str, str]) -> None:
    for k, v in env.items():
        print(f"# {k}: {v}")


def _print_table(rows: list[dict], cols: list[tuple[str, str, str]]) -> None:
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


def _write_csv(path: str, rows: list[dict], env: dict[str, str]) -> None:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    keys += [f"env_{k}" for k in env]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({**r, **{f"env_{k}": v for k, v in env.items()}})


def _summary(res: dict) -> dict:
    t = res["times"]
    return {
        "best_s": min(t),
        "median_s": statistics.median(t),
        "runs": f"{len(t)}{'c' if res['cold'] else ''}",
    }


def _common_args(p: argparse.ArgumentParser, memory_default: bool) -> None:
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


# ---------------------------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------------------------


def _matrix(cfg: dict) -> np.ndarray:
    rng = np.random.default_rng(cfg["n"] + cfg["h"])
    return rng.standard_normal((cfg["n"], cfg["h"]), dtype=np.float64).astype(cfg["dtype"])


def _fin(g) -> dict:
    return {"g": np.asarray(g, dtype=np.float64)}


def _case(lib: str):
    def build(cfg: dict):
        x = _matrix(cfg)
        n, feature = cfg["n"], cfg["side"] == "feature"
        if lib == "deadspec":
            import deadspec

            def run():
                return deadspec.gram(x, side=cfg["side"]), {}
        elif lib in ("numpy", "numpy f64"):
            up = lib == "numpy f64"

            def run():
                xx = x.astype(np.float64) if up else x
                return ((xx.T @ xx) if feature else (xx @ xx.T)) / n, {}
        else:
            import torch

            xt = torch.from_numpy(x)

            def run():
                return (((xt.T @ xt) if feature else (xt @ xt.T)) / n).numpy(), {}

        return run, _fin

    return build


CASES: dict[str, Callable[[dict], tuple[Callable, Callable]]] = {
    m: _case(m) for m in ("numpy", "deadspec", "torch", "numpy f64")
}
BASELINE = "numpy"


def small_config(cfg: dict) -> dict:
    return {**cfg, "n": 64, "h": 32}


def _parse_shapes(text: str) -> list[tuple[int, int, str]]:
    out = []
    for item in text.split(","):
        shape, _, side = item.strip().partition(":")
        n, h = (int(v) for v in shape.lower().split("x"))
        side = side or "feature"
        if side not in ("feature", "sample"):
            raise SystemExit(
                f"bench_gram: side must be feature or sample, got {side!r} in {item!r}"
            )
        out.append((n, h, side))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--sizes",
        default="8192x1024,4096x512,2048x2048:sample",
        help="NxH[:side] items, comma-separated (side feature|sample, default feature)",
    )
    p.add_argument(
        "--dtype", default="float64,float32", help="float64, float32 or both (comma-separated)"
    )
    _common_args(p, memory_default=False)
    args = p.parse_args(argv)
    if args._child:
        _child_main(args._child)
        return 0
    if args.smoke:
        args.sizes, args.repeat, args.budget = "256x64,64x256:sample", 1, 5.0
    shapes = _parse_shapes(args.sizes)
    dtypes = [d.strip() for d in args.dtype.split(",")]

    env = _environment()
    _print_env(env)
    if env["OPENBLAS_CORETYPE"] != "<unset>":
        print(
            "# WARNING: OPENBLAS_CORETYPE is set; numpy's OpenBLAS may run 2-6x slower (build-notes.md)."
        )
    print(
        "# ratio = method time / numpy time at the input dtype (best of runs); deadspec returns float64"
    )
    rows: list[dict] = []
    for dtype in dtypes:
        for n, h, side in shapes:
            cfg = {"n": n, "h": h, "side": side, "dtype": dtype}
            names = ["numpy", "deadspec", "torch"] + (["numpy f64"] if dtype != "float64" else [])
            res = {m: _measure(m, cfg, args) for m in names}
            ref = res["numpy"]["arrays"]["g"]
            scale = float(np.abs(ref).max())
            tol = 1e-12 if dtype == "float64" else 1e-5
            for m in names:
                r = res[m]
                err = float(np.abs(r["arrays"]["g"] - ref).max()) / scale
                if err > tol * max(n, h):
                    raise RuntimeError(
                        f"{m} {n}x{h} {side}: Gram differs from numpy's by {err:.3g}"
                    )
                expr = "x.T @ x / N" if side == "feature" else "x @ x.T / N"
                label = {
                    "numpy": f"numpy {expr}",
                    "torch": f"torch {expr}",
                    "numpy f64": f"numpy f64 copy, {expr}",
                    "deadspec": f"deadspec.gram(side={side!r})",
                }[m]
                rows.append(
                    {
                        "method": label,
                        "shape": f"{n}x{h}",
                        "side": side,
                        "dtype": dtype,
                        **_summary(r),
                        "ratio": min(r["times"]) / min(res["numpy"]["times"]),
                        "gflops": n * n * h / min(r["times"]) / 1e9
                        if side == "sample"
                        else n * h * h / min(r["times"]) / 1e9,
                        "peak_mib": r["peak_mib"],
                        "rel_err": err,
                    }
                )
    print()
    _print_table(
        rows,
        [
            ("method", "method", "s"),
            ("shape", "N x h", "s"),
            ("dtype", "dtype", "s"),
            ("best_s", "best s", ".4f"),
            ("median_s", "median s", ".4f"),
            ("runs", "runs", "s"),
            ("ratio", "vs numpy", ".2f"),
            ("gflops", "GFLOP/s", ".1f"),
            ("peak_mib", "peak MiB", ".1f"),
            ("rel_err", "max|dG|/max|G|", ".1e"),
        ],
    )
    print(
        "# GFLOP/s = (N*h*h for the feature side, N*N*h for the sample side) / best time: the flops of one triangle (syrk)."
    )
    print("# runs: timed runs after a warm-up at size; 'c' = a single run without warm-up at size.")
    if args.csv:
        _write_csv(args.csv, rows, env)
    return 0


if __name__ == "__main__":
    sys.exit(main())
