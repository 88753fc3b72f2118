"""Benchmark: transformer readings (issue #5, part 3).

Two measurements:

1. ``read``: one ``deadspec.read`` of a checkpoint of the d_model = 128 modular-addition
   transformer (``deadspec.models_transformer.ModAddTransformer(p=113, d_model=128, n_heads=4)``,
   T = 3 tokens, N = 512 samples): every linear layer (q, k, v, o, mlp.fc_in, mlp.fc_out,
   unembed), activation and Fisher sides, cross-entropy with observed labels. Target ≤ 5 s.
   No baseline: the time is the number.
2. ``seq-fisher``: the sequence Fisher-Gram of a ``Linear(128, 512)`` with bias (the model's
   ``mlp.fc_in``) applied at every position, N = 512, T ∈ {3, 64}. deadspec: one forward + one
   backward of Σ_i loss_i to capture a and δ, then ``deadspec.fisher_gram(a, δ, bias=True)``
   (route chosen by operation count, reported). Baseline: torch.func ``vmap(grad(per-sample
   loss))`` → Γ (N × p), ``Γ @ Γ.T / N``. Same loss (0.5·Σ_t ||W a_t + b − y_t||² per sample), K
   checked equal every run. Target ≥ 10× at both T.

``--core-threads K`` sets ``deadspec.set_num_threads(K)`` (the core's OpenBLAS) in every process
before timing; default: leave the library default. Run ``python bench/python/bench_transformer.py
--help``.
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

D_MODEL, P, HEADS = 128, 113, 4


def _threads(cfg: dict) -> None:
    if cfg.get("core_threads"):
        import deadspec

        deadspec.set_num_threads(int(cfg["core_threads"]))


def _case_read(cfg: dict):
    import deadspec
    import torch
    from deadspec.models_transformer import ModAddTransformer, modadd_data

    _threads(cfg)
    torch.manual_seed(0)
    model = ModAddTransformer(p=cfg["p"], d_model=cfg["d_model"], n_heads=HEADS).eval()
    x, y = modadd_data(cfg["p"], cfg["n"], seed=1)

    def run():
        t0 = time.perf_counter()
        r = deadspec.read(model, x, targets=y)
        t1 = time.perf_counter()
        return r, {"layers": len(r), "read_s": t1 - t0}

    def finalize(r):
        return {
            f"{name}|{side}": (lr.activation if side == "a" else lr.fisher).eigenvalues
            for name, lr in r.items()
            for side in ("a", "f")
        }

    return run, finalize


def _seq_inputs(cfg: dict):
    import torch

    dtype = getattr(torch, cfg["dtype"])
    g = torch.Generator().manual_seed(0)
    lin = torch.nn.Linear(cfg["d_in"], cfg["d_out"], dtype=dtype)
    with torch.no_grad():
        lin.weight.copy_(
            torch.randn(lin.weight.shape, generator=g, dtype=dtype) / cfg["d_in"] ** 0.5
        )
        lin.bias.copy_(torch.randn(lin.bias.shape, generator=g, dtype=dtype) * 0.1)
    a = torch.randn(cfg["n"], cfg["t"], cfg["d_in"], generator=g, dtype=dtype)
    y = torch.randn(cfg["n"], cfg["t"], cfg["d_out"], generator=g, dtype=dtype)
    return lin, a, y


def _case_deadspec(cfg: dict):
    import deadspec
    import torch

    _threads(cfg)
    lin, a, y = _seq_inputs(cfg)

    def run():
        t0 = time.perf_counter()
        with torch.enable_grad():
            out = lin(a)
            loss = 0.5 * ((out - y) ** 2).sum()
            (delta,) = torch.autograd.grad(loss, out)
        t1 = time.perf_counter()
        k = deadspec.fisher_gram(a, delta, bias=True)
        t2 = time.perf_counter()
        return k, {"capture_s": t1 - t0, "fisher_gram_s": t2 - t1}

    return run, lambda k: {"k": k.numpy()}


def _case_torch_func(cfg: dict):
    import torch
    from torch.func import functional_call, grad, vmap

    _threads(cfg)
    lin, a, y = _seq_inputs(cfg)
    params = {k: v.detach() for k, v in lin.named_parameters()}
    n = cfg["n"]

    def loss_one(p, x, target):
        out = functional_call(lin, p, (x.unsqueeze(0),))
        return 0.5 * ((out - target.unsqueeze(0)) ** 2).sum()

    per_sample = vmap(grad(loss_one), in_dims=(None, 0, 0))

    def run():
        t0 = time.perf_counter()
        g = per_sample(params, a, y)
        gamma = torch.cat([g["weight"].reshape(n, -1), g["bias"].reshape(n, -1)], dim=1)
        del g
        t1 = time.perf_counter()
        k = gamma @ gamma.T / n
        t2 = time.perf_counter()
        return k, {"capture_s": t1 - t0, "fisher_gram_s": t2 - t1}

    return run, lambda k: {"k": k.double().numpy()}


CASES: dict[str, Callable[[dict], tuple[Callable, Callable]]] = {
    "deadspec.read": _case_read,
    "deadspec": _case_deadspec,
    "torch.func": _case_torch_func,
}
BASELINE = "torch.func"


def small_config(cfg: dict) -> dict:
    if "p" in cfg:
        return {**cfg, "p": 7, "n": 16}
    return {**cfg, "n": 8, "t": min(cfg["t"], 2)}


def _check_same_k(k_ds: np.ndarray, k_ref: np.ndarray, dtype: str, label: str) -> float:
    scale = float(np.abs(k_ref).max())
    err = float(np.abs(k_ds - k_ref).max()) / scale
    tol = 1e-4 if dtype == "float32" else 1e-10
    if not np.allclose(k_ds, k_ref, rtol=tol, atol=tol * scale):
        raise RuntimeError(
            f"{label}: deadspec and torch.func K differ: max|dK|/max|K| = {err:.3g} > {tol}"
        )
    return err


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--n", type=int, default=512, help="samples N (default 512)")
    p.add_argument("--seq", default="3,64", help="T values of the seq-fisher case (default 3,64)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument(
        "--core-threads",
        type=int,
        default=None,
        help="deadspec.set_num_threads(K) in every process (default: library default)",
    )
    p.add_argument("--skip-read", action="store_true", help="only the seq-fisher case")
    _common_args(p, memory_default=True)
    args = p.parse_args(argv)
    if args._child:
        _child_main(args._child)
        return 0
    n, p_mod, d_model = args.n, P, D_MODEL
    if args.smoke:
        args.seq, args.repeat, args.budget, n, p_mod, d_model = "2", 1, 5.0, 16, 7, 16

    import deadspec

    env = _environment()
    env["core_threads"] = str(args.core_threads or deadspec.num_threads())
    _print_env(env)
    print(
        f"# read: ModAddTransformer(p={p_mod}, d_model={d_model}, n_heads={HEADS}), N={n}, T=3,"
        f" all linear layers, both sides. seq-fisher: Linear({d_model}->{4 * d_model}) with bias,"
        f" dtype {args.dtype}; speedup = {BASELINE} / deadspec (best times)"
    )
    rows: list[dict] = []
    if not args.skip_read:
        cfg = {"p": p_mod, "d_model": d_model, "n": n, "core_threads": args.core_threads}
        r = _measure("deadspec.read", cfg, args)
        rows.append(
            {
                "method": "deadspec.read",
                "case": "read",
                "n": n,
                "t": 3,
                "route": "auto",
                **_summary(r),
                **r["parts"],
                "peak_mib": r["peak_mib"],
                "target": "<= 5 s",
            }
        )
    for t in [int(s) for s in args.seq.split(",")]:
        cfg = {
            "n": n,
            "t": t,
            "d_in": d_model,
            "d_out": 4 * d_model,
            "dtype": args.dtype,
            "core_threads": args.core_threads,
        }
        res = {m: _measure(m, cfg, args) for m in (BASELINE, "deadspec")}
        err = _check_same_k(
            res["deadspec"]["arrays"]["k"], res[BASELINE]["arrays"]["k"], args.dtype, f"T={t}"
        )
        base = res[BASELINE]
        for m in (BASELINE, "deadspec"):
            r = res[m]
            row = {
                "method": m,
                "case": "seq-fisher",
                "n": n,
                "t": t,
                "route": deadspec.fisher_route(n, t, d_model, 4 * d_model)
                if m == "deadspec"
                else "vmap+GGt",
                **_summary(r),
                **r["parts"],
                "peak_mib": r["peak_mib"],
                "speedup": min(base["times"]) / min(r["times"]),
                "target": ">= 10x" if m == "deadspec" else None,
            }
            if r["peak_mib"] is not None and base["peak_mib"] is not None:
                row["mem_ratio"] = base["peak_mib"] / max(r["peak_mib"], 0.1)
            row["max_rel_err"] = err if m == "deadspec" else None
            rows.append(row)
    print()
    _print_table(
        rows,
        [
            ("method", "method", "s"),
            ("case", "case", "s"),
            ("n", "N", "d"),
            ("t", "T", "d"),
            ("route", "route", "s"),
            ("best_s", "best s", ".4f"),
            ("median_s", "median s", ".4f"),
            ("runs", "runs", "s"),
            ("capture_s", "capture s", ".4f"),
            ("fisher_gram_s", "K s", ".4f"),
            ("peak_mib", "peak MiB", ".1f"),
            ("speedup", "speedup", ".1f"),
            ("mem_ratio", "mem ratio", ".1f"),
            ("max_rel_err", "max|dK|/max|K|", ".1e"),
            ("target", "target", "s"),
        ],
    )
    print(
        "# runs: timed runs after a warm-up at size; 'c' = a single run with no warm-up at size."
        " capture = forward+backward (deadspec) or vmap per-sample grads (torch.func);"
        " K = fisher_gram or Gamma @ Gamma.T / N."
    )
    if args.csv:
        _write_csv(args.csv, rows, env)
    return 0


if __name__ == "__main__":
    sys.exit(main())
