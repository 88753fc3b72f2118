"""Benchmark: one deadspec.read of an MLP end to end vs the same readings written naively.

Model: a 4-layer MLP (Linear d→w, ReLU, Linear w→w, ReLU, Linear w→w, ReLU, Linear w→10; default
w = d = 512), N samples (default 2048), integer labels, ``CrossEntropyLoss(reduction="none")``.
Every Linear is read on both sides (activation = the Linear's output, Fisher = per-sample weight
and bias gradients).

* ``deadspec.read(model, x, targets=y, loss_fn=...)``.
* naive (the baseline): forward hooks for the activations, torch ``A.T @ A / N`` (float64) and
  ``torch.linalg.eigvalsh``; torch.func ``vmap(grad(per-sample loss))`` for the per-sample
  gradients of all parameters, per layer Γ (N × p) and K = ΓΓᵀ/N, ``torch.linalg.eigvalsh(K)``;
  the readings (active set, log det⁺, λ_min, ...) computed in numpy with deadspec's rules.

Both must give the same eigenvalues (checked). By default each method runs in a fresh child
process, which also gives its peak RSS increase (``--no-memory``: in this process).
Run ``python bench/python/bench_read.py --help``.
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

CLASSES = 10
GAP_RATIO = 1e3


def _setup(cfg: dict):
    import torch
    from torch import nn

    torch.manual_seed(0)
    d, w = cfg["width"], cfg["width"]
    dtype = getattr(torch, cfg["dtype"])
    model = (
        nn.Sequential(
            nn.Linear(d, w),
            nn.ReLU(),
            nn.Linear(w, w),
            nn.ReLU(),
            nn.Linear(w, w),
            nn.ReLU(),
            nn.Linear(w, CLASSES),
        )
        .to(dtype)
        .eval()
    )
    g = torch.Generator().manual_seed(1)
    x = torch.randn(cfg["n"], d, generator=g, dtype=dtype)
    y = torch.randint(0, CLASSES, (cfg["n"],), generator=g)
    return model, x, y, nn.CrossEntropyLoss(reduction="none")


def _linear_names(model) -> list[str]:
    from torch import nn

    return [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]


def _readings(mu: np.ndarray, rtol: float) -> dict[str, float]:
    """deadspec's spectral readings (ops.Spectrum), written out in numpy."""
    mu = np.clip(np.sort(mu)[::-1], 0.0, None)
    act = mu[(mu > rtol * mu[0]) & (mu > 0)]
    out = {
        "active": float(act.size),
        "logdet_plus": float(np.log(act).sum()),
        "lambda_min": float(act[-1]) if act.size else 0.0,
    }
    p = act / act.sum()
    out["effective_rank"] = float(np.exp(-(p * np.log(p)).sum()))
    out["participation_ratio"] = float(act.sum() ** 2 / (act**2).sum())
    gaps = -np.diff(np.log(act))
    out["dead_count"] = float(
        act.size - (int(np.argmax(gaps)) + 1)
        if gaps.size and gaps.max() >= np.log(GAP_RATIO)
        else 0
    )
    return out


def _case_deadspec(cfg: dict):
    import deadspec

    model, x, y, loss_fn = _setup(cfg)
    names = _linear_names(model)

    def run():
        return deadspec.read(model, x, targets=y, loss_fn=loss_fn), {}

    def fin(reading) -> dict:
        arrays = {}
        for name in names:
            for side in ("activation", "fisher"):
                s = getattr(reading[name], side)
                arrays[f"{name}/{side}/mu"] = np.asarray(s.eigenvalues)
                arrays[f"{name}/{side}/readings"] = np.array(
                    [
                        s.active,
                        s.logdet_plus,
                        s.lambda_min,
                        s.effective_rank,
                        s.participation_ratio,
                        s.dead_count,
                    ],
                    dtype=np.float64,
                )
        return arrays

    return run, fin


def _case_naive(cfg: dict):
    import torch
    from torch.func import functional_call, grad, vmap

    model, x, y, loss_fn = _setup(cfg)
    names = _linear_names(model)
    modules = dict(model.named_modules())
    n = cfg["n"]
    eps = float(np.finfo(cfg["dtype"]).eps)

    def loss_one(p, xi, yi):
        return loss_fn(functional_call(model, p, (xi.unsqueeze(0),)), yi.unsqueeze(0)).sum()

    per_sample = vmap(grad(loss_one), in_dims=(None, 0, 0), chunk_size=cfg.get("chunk_size"))

    def run():
        parts = {}
        t0 = time.perf_counter()
        outs: dict[str, torch.Tensor] = {}
        hooks = [
            modules[nm].register_forward_hook(
                lambda m, a, o, nm=nm: outs.__setitem__(nm, o.detach())
            )
            for nm in names
        ]
        try:
            with torch.no_grad():
                model(x)
        finally:
            for h in hooks:
                h.remove()
        mus: dict[str, np.ndarray] = {}
        for nm in names:
            a = outs.pop(nm).double()
            mus[f"{nm}/activation"] = torch.linalg.eigvalsh(a.T @ a / n).numpy()
            rt = max(a.shape) * eps
            mus[f"{nm}/activation/rtol"] = rt
        t1 = time.perf_counter()
        params = {k: v.detach() for k, v in model.named_parameters()}
        g = per_sample(params, x, y)
        t2 = time.perf_counter()
        kt = 0.0
        for nm in names:
            t3 = time.perf_counter()
            gamma = torch.cat(
                [g.pop(f"{nm}.weight").reshape(n, -1), g.pop(f"{nm}.bias").reshape(n, -1)], 1
            )
            k = (gamma @ gamma.T / n).double()
            del gamma
            kt += time.perf_counter() - t3
            mus[f"{nm}/fisher"] = torch.linalg.eigvalsh(k).numpy()
            m = modules[nm]
            mus[f"{nm}/fisher/rtol"] = max(n, m.in_features + m.out_features) * eps
        t4 = time.perf_counter()
        readings = {
            key: _readings(mu, mus[key + "/rtol"])
            for key, mu in list(mus.items())
            if not key.endswith("/rtol")
        }
        t5 = time.perf_counter()
        parts.update(
            {
                "activations_s": t1 - t0,
                "per_sample_grads_s": t2 - t1,
                "fisher_grams_s": kt,
                "fisher_eig_s": t4 - t2 - kt,
                "readings_s": t5 - t4,
            }
        )
        return (mus, readings), parts

    def fin(out) -> dict:
        mus, readings = out
        arrays = {}
        for key, r in readings.items():
            arrays[f"{key}/mu"] = np.sort(mus[key])[::-1].copy()
            arrays[f"{key}/readings"] = np.array(
                [
                    r["active"],
                    r["logdet_plus"],
                    r["lambda_min"],
                    r["effective_rank"],
                    r["participation_ratio"],
                    r["dead_count"],
                ],
                dtype=np.float64,
            )
        return arrays

    return run, fin


CASES: dict[str, Callable[[dict], tuple[Callable, Callable]]] = {
    "naive torch+numpy": _case_naive,
    "deadspec.read": _case_deadspec,
}
BASELINE = "naive torch+numpy"


def small_config(cfg: dict) -> dict:
    return {**cfg, "n": 16}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--sizes", default="2048", help="N values, comma-separated (default 2048)")
    p.add_argument(
        "--width", type=int, default=512, help="input dim and hidden width (default 512)"
    )
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument(
        "--chunk-size",
        type=int,
        default=None,
        help="vmap chunk_size for the naive per-sample gradients (default: none)",
    )
    _common_args(p, memory_default=True)
    args = p.parse_args(argv)
    if args._child:
        _child_main(args._child)
        return 0
    if args.smoke:
        args.sizes, args.width, args.repeat, args.budget = "64", 32, 1, 5.0
    sizes = [int(s) for s in args.sizes.split(",")]

    env = _environment()
    _print_env(env)
    print(
        f"# MLP {args.width}-{args.width}-{args.width}-{args.width}-{CLASSES} (4 Linear, ReLU), "
        f"dtype {args.dtype}, cross-entropy; speedup / mem ratio = baseline ({BASELINE}) / method"
    )
    rows: list[dict] = []
    agree: list[dict] = []
    for n in sizes:
        cfg = {"n": n, "width": args.width, "dtype": args.dtype, "chunk_size": args.chunk_size}
        res = {m: _measure(m, cfg, args) for m in (BASELINE, "deadspec.read")}
        base = res[BASELINE]
        for m, r in res.items():
            row = {
                "method": m,
                "n": n,
                "width": args.width,
                "dtype": args.dtype,
                **_summary(r),
                "peak_mib": r["peak_mib"],
                "speedup": min(base["times"]) / min(r["times"]),
            }
            if r["peak_mib"] is not None and base["peak_mib"] is not None:
                row["mem_ratio"] = base["peak_mib"] / max(r["peak_mib"], 0.1)
            row.update(r["parts"])
            rows.append(row)
        ds, nv = res["deadspec.read"]["arrays"], base["arrays"]
        tol = 1e-4 if args.dtype == "float32" else 1e-10
        for key in sorted(k[: -len("/mu")] for k in nv if k.endswith("/mu")):
            mu_d, mu_n = ds[key + "/mu"], nv[key + "/mu"]
            err = float(np.abs(mu_d - mu_n).max() / mu_n[0])
            if mu_d.shape != mu_n.shape or err > tol:
                raise RuntimeError(
                    f"N={n} {key}: eigenvalues differ: max|dmu|/mu1 = {err:.3g} > {tol}"
                )
            rd, rn = ds[key + "/readings"], nv[key + "/readings"]
            layer, side = key.rsplit("/", 1)
            agree.append(
                {
                    "n": n,
                    "layer": layer,
                    "side": side,
                    "dim": mu_d.size,
                    "active_ds": int(rd[0]),
                    "active_naive": int(rn[0]),
                    "logdet_ds": rd[1],
                    "logdet_naive": rn[1],
                    "dead_ds": int(rd[5]),
                    "dead_naive": int(rn[5]),
                    "mu_err": err,
                }
            )
    print()
    _print_table(
        rows,
        [
            ("method", "method", "s"),
            ("n", "N", "d"),
            ("best_s", "best s", ".3f"),
            ("median_s", "median s", ".3f"),
            ("runs", "runs", "s"),
            ("peak_mib", "peak MiB", ".1f"),
            ("speedup", "speedup", ".1f"),
            ("mem_ratio", "mem ratio", ".1f"),
            ("activations_s", "act s", ".3f"),
            ("per_sample_grads_s", "vmap s", ".3f"),
            ("fisher_grams_s", "GGt s", ".3f"),
            ("fisher_eig_s", "eig s", ".3f"),
        ],
    )
    print(
        "# naive breakdown: act = forward + activation Grams + eigvalsh; vmap = per-sample grads; "
        "GGt = Gamma Gamma^T / N; eig = eigvalsh of the Fisher-Grams."
    )
    print("# runs: timed runs after a warm-up at size; 'c' = a single run without warm-up at size.")
    print()
    _print_table(
        agree,
        [
            ("layer", "layer", "s"),
            ("side", "side", "s"),
            ("dim", "dim", "d"),
            ("active_ds", "active ds", "d"),
            ("active_naive", "active naive", "d"),
            ("logdet_ds", "logdet+ ds", ".4f"),
            ("logdet_naive", "logdet+ naive", ".4f"),
            ("dead_ds", "dead ds", "d"),
            ("dead_naive", "dead naive", "d"),
            ("mu_err", "max|dmu|/mu1", ".1e"),
        ],
    )
    if args.csv:
        _write_csv(args.csv, rows, env)
    return 0


if __name__ == "__main__":
    sys.exit(main())
