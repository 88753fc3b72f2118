"""Benchmark: Fisher-Gram of a Linear layer without materialising per-sample gradients.

deadspec route: one forward + one backward of Σ_i loss_i to capture the layer's input a and the
output gradient δ, then ``deadspec.fisher_gram(a, δ, bias=True)`` (K = (AAᵀ)∘(ΔΔᵀ)/N + bias block
for T = 1; block sums or chunked materialisation for T > 1, see ``deadspec.fisher_route``).

Baseline: torch.func ``vmap(grad(per-sample loss))`` per-sample gradients of the same layer
(weight and bias), flattened to Γ (N × p) and K = ΓΓᵀ/N. Both routes use the same loss,
0.5·Σ_t ||W a_it + b − y_it||² per sample, so both compute the same K (checked every run).

Every (configuration, method) runs in a fresh child process (imports, inputs, a small warm-up,
then the timed runs), which also gives its peak RSS increase; ``--no-memory`` runs everything in
this process instead (no memory column). Run ``python bench/python/bench_fisher.py --help``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import numpy as np

# Shared timing / peak-memory harness (bench/python/_harness.py; this folder is on sys.path).
from _harness import Bench, environment, parser, print_env, print_table, summary, write_csv

# ---------------------------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------------------------

D_IN = D_OUT = 512


def make_inputs(cfg: dict):
    import torch

    dtype = getattr(torch, cfg["dtype"])
    g = torch.Generator().manual_seed(0)
    n, t = cfg["n"], cfg["t"]
    lin = torch.nn.Linear(cfg["d_in"], cfg["d_out"], dtype=dtype)
    with torch.no_grad():
        lin.weight.copy_(
            torch.randn(lin.weight.shape, generator=g, dtype=dtype) / cfg["d_in"] ** 0.5
        )
        lin.bias.copy_(torch.randn(lin.bias.shape, generator=g, dtype=dtype) * 0.1)
    shape = (n, cfg["d_in"]) if t == 1 else (n, t, cfg["d_in"])
    a = torch.randn(shape, generator=g, dtype=dtype)
    y = torch.randn(shape[:-1] + (cfg["d_out"],), generator=g, dtype=dtype)
    return lin, a, y


def sum_loss(out, target, kind: str = "expanded"):
    """0.5·Σ (out − target)²: written out (``expanded``: the difference, its square and two
    backward temporaries, each the size of ``out``) or by ``F.mse_loss(reduction="sum")``
    (``mse``: one fused kernel each way). Both give the same δ = out − target exactly."""
    import torch.nn.functional as F

    if kind == "mse":
        return 0.5 * F.mse_loss(out, target, reduction="sum")
    return 0.5 * ((out - target) ** 2).sum()


def _case_deadspec(cfg: dict):
    import torch

    import deadspec

    lin, a, y = make_inputs(cfg)

    def run():
        t0 = time.perf_counter()
        with torch.enable_grad():
            out = lin(a)
            loss = sum_loss(out, y, cfg.get("loss", "expanded"))  # Σ_i loss_i: each sample's δ_i
            (delta,) = torch.autograd.grad(loss, out)
        t1 = time.perf_counter()
        k = deadspec.fisher_gram(a, delta, bias=True)
        t2 = time.perf_counter()
        return k, {"capture_s": t1 - t0, "fisher_gram_s": t2 - t1}

    return run, lambda k: {"k": k.numpy()}


def _case_torch_func(cfg: dict):
    import torch
    from torch.func import functional_call, grad, vmap

    lin, a, y = make_inputs(cfg)
    params = {k: v.detach() for k, v in lin.named_parameters()}
    n = cfg["n"]

    def loss_one(p, x, target):  # one sample: x (d_in,) or (T, d_in)
        out = functional_call(lin, p, (x.unsqueeze(0),))
        return sum_loss(out, target.unsqueeze(0), cfg.get("loss", "expanded"))

    per_sample = vmap(grad(loss_one), in_dims=(None, 0, 0), chunk_size=cfg.get("chunk_size"))

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
    "deadspec": _case_deadspec,
    "torch.func": _case_torch_func,
}
BASELINE = "torch.func"


def small_config(cfg: dict) -> dict:
    return {**cfg, "n": 8, "t": min(cfg["t"], 2)}


BENCH = Bench(__file__, CASES, small_config)


def check_same_k(k_ds: np.ndarray, k_ref: np.ndarray, dtype: str, label: str) -> float:
    scale = float(np.abs(k_ref).max())
    err = float(np.abs(k_ds - k_ref).max()) / scale
    tol = 1e-4 if dtype == "float32" else 1e-10
    if not np.allclose(k_ds, k_ref, rtol=tol, atol=tol * scale):
        raise RuntimeError(
            f"{label}: deadspec and torch.func K differ: max|ΔK|/max|K| = {err:.3g} > {tol}"
        )
    return err


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument(
        "--sizes", default="256,1024", help="N values, comma-separated (default 256,1024)"
    )
    p.add_argument("--seq", default="1,16", help="T values (positions per sample), default 1,16")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument(
        "--chunk-size",
        type=int,
        default=None,
        help="vmap chunk_size for the torch.func baseline (default: no chunking)",
    )
    args = BENCH.parse_args(p, argv, memory_default=True)
    if args is None:  # a --_child process: it has measured and reported
        return 0
    if args.smoke:
        args.sizes, args.seq, args.repeat, args.budget = "16", "2", 1, 5.0
    sizes = [int(s) for s in args.sizes.split(",")]
    seqs = [int(s) for s in args.seq.split(",")]

    import deadspec

    env = environment()
    print_env(env)
    print(
        f"# Linear {D_IN}->{D_OUT} with bias, dtype {args.dtype}; "
        f"ratios = baseline ({BASELINE}) / method,"
        " from best times and peak RSS increases"
    )
    rows: list[dict] = []
    for t in seqs:
        for n in sizes:
            cfg = {
                "n": n,
                "t": t,
                "d_in": D_IN,
                "d_out": D_OUT,
                "dtype": args.dtype,
                "chunk_size": args.chunk_size,
            }
            res = {m: BENCH.measure(m, cfg, args) for m in (BASELINE, "deadspec")}
            err = check_same_k(
                res["deadspec"]["arrays"]["k"],
                res[BASELINE]["arrays"]["k"],
                args.dtype,
                f"N={n} T={t}",
            )
            base = res[BASELINE]
            for m in (BASELINE, "deadspec"):
                r = res[m]
                row = {
                    "method": m,
                    "n": n,
                    "t": t,
                    "dtype": args.dtype,
                    "route": deadspec.fisher_route(n, t, D_IN, D_OUT)
                    if m == "deadspec"
                    else "vmap+GGt",
                    **summary(r),
                    **{k: v for k, v in r["parts"].items()},
                    "peak_mib": r["peak_mib"],
                }
                row["speedup"] = min(base["times"]) / min(r["times"])
                if r["peak_mib"] is not None and base["peak_mib"] is not None:
                    row["mem_ratio"] = base["peak_mib"] / max(r["peak_mib"], 0.1)
                row["max_rel_err"] = err if m == "deadspec" else None
                rows.append(row)
    print()
    print_table(
        rows,
        [
            ("method", "method", "s"),
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
        ],
    )
    print(
        "# runs: timed runs after a warm-up at size; 'c' = a single run with no warm-up at size "
        "(it alone took more than half the --budget; libraries were warmed at a small size)."
    )
    print(
        "# capture = forward+backward (deadspec) or vmap per-sample grads (torch.func); "
        "K = fisher_gram (deadspec) or Gamma @ Gamma.T / N (torch.func)."
    )
    if args.csv:
        write_csv(args.csv, rows, env)
    return 0


if __name__ == "__main__":
    sys.exit(main())
