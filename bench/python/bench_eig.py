"""Benchmark: symmetric eigendecomposition, deadspec.sym_eig vs numpy.linalg and torch.linalg.

Random PSD float64 matrices A = XXᵀ/d (X d×d Gaussian). Values only: ``deadspec.sym_eig(a)`` vs
``numpy.linalg.eigvalsh`` (the baseline) and ``torch.linalg.eigvalsh``; with vectors:
``deadspec.sym_eig(a, vectors=True)`` vs ``numpy.linalg.eigh`` (baseline) and
``torch.linalg.eigh``. Ratios are method time / numpy time (target: ≤ 1.1 at d = 2048).
Eigenvalues are checked against numpy's, eigenvectors by the residual max|AV − VΛ|/max|A|.

By default everything runs in this process (no memory column); ``--memory`` runs each
(configuration, method) in a fresh child process and reports its peak RSS increase.
Run ``python bench/python/bench_eig.py --help``.
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
    rng = np.random.default_rng(cfg["d"])
    x = rng.standard_normal((cfg["d"], cfg["d"]))
    return (x @ x.T / cfg["d"]).astype(cfg["dtype"])


def _finalize(a: np.ndarray, vectors: bool):
    def fin(out):
        w, v = out
        w = np.sort(np.asarray(w, dtype=np.float64))[::-1]
        arrays = {"w": np.ascontiguousarray(w)}
        if vectors:
            v = np.asarray(v, dtype=np.float64)
            a64 = a.astype(np.float64)
            lam = np.asarray(out[0], dtype=np.float64)  # in v's column order
            arrays["residual"] = np.array(np.abs(a64 @ v - v * lam).max() / np.abs(a64).max())
        return arrays

    return fin


def _case(lib: str, vectors: bool):
    def build(cfg: dict):
        a = _matrix(cfg)
        if lib == "deadspec":
            import deadspec

            def run():
                return deadspec.sym_eig(a, vectors=vectors), {}
        elif lib == "numpy":
            fn = np.linalg.eigh if vectors else np.linalg.eigvalsh

            def run():
                out = fn(a)
                return (tuple(out) if vectors else (out, None)), {}
        else:
            import torch

            at = torch.from_numpy(a)
            fn = torch.linalg.eigh if vectors else torch.linalg.eigvalsh

            def run():
                out = fn(at)
                if vectors:
                    return (out[0].numpy(), out[1].numpy()), {}
                return (out.numpy(), None), {}

        return run, _finalize(a, vectors)

    return build


CASES: dict[str, Callable[[dict], tuple[Callable, Callable]]] = {
    f"{lib} {kind}": _case(lib, kind == "vectors")
    for kind in ("values", "vectors")
    for lib in ("numpy", "deadspec", "torch")
}
BASELINE = "numpy"
API = {
    "numpy values": "numpy.linalg.eigvalsh",
    "deadspec values": "deadspec.sym_eig",
    "torch values": "torch.linalg.eigvalsh",
    "numpy vectors": "numpy.linalg.eigh",
    "deadspec vectors": "deadspec.sym_eig(vectors=True)",
    "torch vectors": "torch.linalg.eigh",
}


def small_config(cfg: dict) -> dict:
    return {**cfg, "d": 32}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--sizes", default="256,1024,2048", help="d values, comma-separated")
    p.add_argument(
        "--dtype",
        default="float64",
        choices=["float64", "float32"],
        help="input dtype (deadspec always solves in float64; numpy/torch in the input's)",
    )
    p.add_argument("--kinds", default="values,vectors", help="values, vectors or both")
    _common_args(p, memory_default=False)
    args = p.parse_args(argv)
    if args._child:
        _child_main(args._child)
        return 0
    if args.smoke:
        args.sizes, args.repeat, args.budget = "64", 1, 5.0
    sizes = [int(s) for s in args.sizes.split(",")]
    kinds = [k.strip() for k in args.kinds.split(",")]

    env = _environment()
    _print_env(env)
    if env["OPENBLAS_CORETYPE"] != "<unset>":
        print(
            "# WARNING: OPENBLAS_CORETYPE is set; numpy's OpenBLAS may run 2-6x slower "
            "(build-notes.md): ratios against numpy are not representative."
        )
    print(
        f"# random PSD A = X X^T / d, dtype {args.dtype}; ratio = method time / numpy time (best of runs)"
    )
    rows: list[dict] = []
    for kind in kinds:
        for d in sizes:
            cfg = {"d": d, "dtype": args.dtype}
            names = [f"{lib} {kind}" for lib in ("numpy", "deadspec", "torch")]
            res = {m: _measure(m, cfg, args) for m in names}
            ref = res[names[0]]["arrays"]["w"]
            tol = (1e-10 if args.dtype == "float64" else 1e-4) * d
            for m in names:
                r = res[m]
                err = float(np.abs(r["arrays"]["w"] - ref).max() / ref[0])
                if err > tol:
                    raise RuntimeError(
                        f"{m} d={d}: eigenvalues differ from numpy's by {err:.3g} (rel. to mu_1)"
                    )
                resid = float(r["arrays"]["residual"]) if "residual" in r["arrays"] else None
                if resid is not None and resid > tol:
                    raise RuntimeError(f"{m} d={d}: eigenvector residual {resid:.3g} > {tol:.3g}")
                rows.append(
                    {
                        "method": API[m],
                        "kind": kind,
                        "d": d,
                        "dtype": args.dtype,
                        **_summary(r),
                        "ratio": min(r["times"]) / min(res[names[0]]["times"]),
                        "peak_mib": r["peak_mib"],
                        "eig_err": err,
                        "residual": resid,
                    }
                )
    print()
    _print_table(
        rows,
        [
            ("method", "method", "s"),
            ("d", "d", "d"),
            ("best_s", "best s", ".4f"),
            ("median_s", "median s", ".4f"),
            ("runs", "runs", "s"),
            ("ratio", "vs numpy", ".2f"),
            ("peak_mib", "peak MiB", ".1f"),
            ("eig_err", "max|dw|/w1", ".1e"),
            ("residual", "|AV-VW|/|A|", ".1e"),
        ],
    )
    print("# runs: timed runs after a warm-up at size; 'c' = a single run without warm-up at size.")
    if args.csv:
        _write_csv(args.csv, rows, env)
    return 0


if __name__ == "__main__":
    sys.exit(main())
