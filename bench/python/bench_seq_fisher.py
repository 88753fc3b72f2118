"""Benchmark: the sequence Fisher-Gram grid of issue #16 against torch.func and the GEMM bound.

A ``Linear(d, d)`` with bias, float32 inputs, N samples of T positions each. deadspec: one forward
and one backward of Σ_i loss_i to capture the layer's input a and output gradient δ, then
``deadspec.fisher_gram(a, δ, bias=True)`` (float64 accumulation). Baseline: torch.func
``vmap(grad(per-sample loss))`` → Γ (N × p, float32), ``Γ @ Γ.T / N``. Both are the cases of
``bench_fisher.py``; K is checked equal in every cell.

The GEMM bound of a cell is the multiply-add count of the cheaper exact route
(``deadspec._core.fisher_gram_cost``: block sums (NT)²(d_in + d_out)/2, or materialising
N·T·d_in·d_out + N²·d_in·d_out/2, bias included) at this machine's ``dsyrk`` rate, measured in the
same run by ``deadspec.gram`` on a float64 matrix (``--rate-shape``, default 4096x1024: a 1024 ×
1024 result, K's size at N = 1024). A second bound takes the ``dsyrk`` rate measured at the cell's
own Gram shape (``own_shape``: the (NT)×(NT) Gram with k = d for block sums, the N×N Gram with
k = d_in·d_out + d_out for materialising; capped at n = 4096 and k = 16384). ``vs torch`` =
torch.func / deadspec (end to end: capture + K); ``K/bound`` and ``K/own`` = deadspec's
``fisher_gram`` time / each bound.

Both methods use the same per-sample loss ½·Σ(out − y)², by default through
``F.mse_loss(reduction="sum")``; ``--loss expanded`` writes it out as ``((out − y) ** 2).sum()``
(the difference, its square and their backward temporaries as separate N×T×d tensors: the
capture's peak memory and time of the earlier tables).

Every (cell, method) runs in a fresh child process (peak RSS increase, VmHWM), as in
``bench_fisher.py``. Split the grid with ``--sizes``, ``--seq``, ``--dims`` so that no invocation
holds the shared CPU lock for more than a few minutes. Run ``--help`` for the options.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

# Shared harness (bench/python/_harness.py) and the two cases of bench_fisher.py (same folder).
from _harness import Bench, environment, parser, print_env, print_table, summary, write_csv
from bench_fisher import BASELINE, CASES, check_same_k, make_inputs, small_config, sum_loss


def _case_capture(cfg: dict):
    """The deadspec case without fisher_gram: its forward + backward alone (time, peak memory)."""
    import torch

    lin, a, y = make_inputs(cfg)

    def run():
        t0 = time.perf_counter()
        with torch.enable_grad():
            out = lin(a)
            loss = sum_loss(out, y, cfg.get("loss", "expanded"))
            (delta,) = torch.autograd.grad(loss, out)
        return delta, {"capture_s": time.perf_counter() - t0, "fisher_gram_s": 0.0}

    return run, lambda k: {}


CAPTURE = "capture only"
BENCH = Bench(__file__, {**CASES, CAPTURE: _case_capture}, small_config)


def dsyrk_rate(shape: tuple[int, int], repeat: int = 5) -> float:
    """Multiply-adds per second of ``deadspec.gram`` (BLAS dsyrk) on a float64 rows × cols array:
    the cols × cols Gram XᵀX, with k = rows."""
    import deadspec

    rows, cols = shape
    x = np.random.default_rng(0).standard_normal((rows, cols))
    deadspec.gram(x, side="feature")
    best = min(_timed(lambda: deadspec.gram(x, side="feature")) for _ in range(repeat))
    return rows * cols * cols / 2 / best


#: Caps of the own-shape probe: a Gram of at most 4096 × 4096 (128 MiB), k at most 16384 (a
#: probe array of at most 128 MiB); the dsyrk rate has levelled off well before either.
MAX_PROBE_N, MAX_PROBE_K = 4096, 16384


def own_shape(n: int, t: int, d: int, route: str) -> tuple[int, int]:
    """(k, n) of the dsyrk the cell's cheaper exact route needs: block sums, the (NT)×(NT) Gram
    of A (and of D) with k = d; materialise, the N×N Gram of Γ with k = d_in·d_out + d_out."""
    if route == "block-sum":
        return d, min(n * t, MAX_PROBE_N)
    return min(d * d + d, MAX_PROBE_K), n


def _timed(f) -> float:
    t0 = time.perf_counter()
    f()
    return time.perf_counter() - t0


def _ints(s: str) -> list[int]:
    return [int(v) for v in s.split(",")]


def _arguments(argv: list[str] | None):
    p = parser(__doc__)
    p.add_argument("--sizes", default="256,1024", help="N values (default 256,1024)")
    p.add_argument("--seq", default="1,4,16,32,64", help="T values (default 1,4,16,32,64)")
    p.add_argument("--dims", default="128,512", help="d of Linear(d, d) (default 128,512)")
    p.add_argument("--rate-shape", default="4096x1024", help="rows x cols of the dsyrk probe")
    p.add_argument(
        "--loss",
        choices=["mse", "expanded"],
        default="mse",
        help="the per-sample loss 0.5·Σ(out − y)², for both methods: F.mse_loss(reduction='sum')"
        " (default) or written out (the difference and its square as separate tensors)",
    )
    args = BENCH.parse_args(p, argv, memory_default=True)
    if args is not None and args.smoke:
        args.sizes, args.seq, args.dims, args.repeat, args.budget = "16", "2", "8", 1, 5.0
        args.rate_shape = "256x64"
    return args


def _measure_cell(args, n: int, t: int, d: int, rate: float, own_rates: dict) -> tuple:
    """The three children of one cell: their table rows and the cell's summary."""
    import deadspec
    from deadspec import _core

    cfg = {"n": n, "t": t, "d_in": d, "d_out": d, "dtype": "float32", "loss": args.loss}
    res = {m: BENCH.measure(m, cfg, args) for m in (BASELINE, "deadspec", CAPTURE)}
    ks = res["deadspec"]["arrays"]["k"], res[BASELINE]["arrays"]["k"]
    err = check_same_k(*ks, "float32", f"N={n} T={t} d={d}")
    cost = _core.fisher_gram_cost(n, t, d, d)
    cheaper = min(cost, key=cost.get)
    route = deadspec.fisher_route(n, t, d, d)
    shape = own_shape(n, t, d, cheaper)
    if shape not in own_rates:
        own_rates[shape] = dsyrk_rate(shape)
    rows = []
    for m in (BASELINE, "deadspec", CAPTURE):
        r = res[m]
        rows.append(
            {
                "method": m,
                "n": n,
                "t": t,
                "d": d,
                "route": {"deadspec": route, BASELINE: "vmap+GGt"}.get(m, "-"),
                **summary(r),
                **r["parts"],
                "peak_mib": r["peak_mib"],
                "max_rel_err": err if m == "deadspec" else None,
            }
        )
    ds, tf = res["deadspec"], res[BASELINE]
    k_s = ds["parts"]["fisher_gram_s"]
    bound, own = cost[cheaper] / rate, cost[cheaper] / own_rates[shape]
    cell = {
        "n": n,
        "t": t,
        "d": d,
        "route": route,
        "torch_s": min(tf["times"]),
        "deadspec_s": min(ds["times"]),
        "k_s": k_s,
        "bound_s": bound,
        "own_bound_s": own,
        "own_rate": own_rates[shape] / 1e9,
        "speedup": min(tf["times"]) / min(ds["times"]),
        "k_bound": k_s / bound,
        "k_own": k_s / own,
        "total_bound": min(ds["times"]) / bound,
        "torch_mib": tf["peak_mib"],
        "deadspec_mib": ds["peak_mib"],
        "capture_mib": res[CAPTURE]["peak_mib"],
        "capture_s": min(res[CAPTURE]["times"]),
    }
    if tf["peak_mib"] is not None and ds["peak_mib"] is not None:
        # "capture": over, but the forward + backward alone peaks as high (the core adds nothing
        # above it)
        over = ds["peak_mib"] > tf["peak_mib"]
        capture_high = res[CAPTURE]["peak_mib"] >= 0.95 * ds["peak_mib"]
        cell["mem_ok"] = "NO (capture)" if over and capture_high else ("NO" if over else "yes")
    cell["time_ok"] = "yes" if cell["speedup"] >= 1.0 else "NO"
    cell["bound_ok"] = ("yes" if cell["k_bound"] <= 1.5 else "NO") + (
        " / yes" if cell["k_own"] <= 1.5 else " / NO"
    )
    return rows, cell


ROW_COLUMNS = [
    ("method", "method", "s"),
    ("n", "N", "d"),
    ("t", "T", "d"),
    ("d", "d", "d"),
    ("route", "route", "s"),
    ("best_s", "best s", ".4f"),
    ("median_s", "median s", ".4f"),
    ("runs", "runs", "s"),
    ("capture_s", "capture s", ".4f"),
    ("fisher_gram_s", "K s", ".4f"),
    ("peak_mib", "peak MiB", ".1f"),
    ("max_rel_err", "max|dK|/max|K|", ".1e"),
]
CELL_COLUMNS = [
    ("n", "N", "d"),
    ("t", "T", "d"),
    ("d", "d", "d"),
    ("route", "route", "s"),
    ("torch_s", "torch.func s", ".4f"),
    ("deadspec_s", "deadspec s", ".4f"),
    ("k_s", "K s", ".4f"),
    ("capture_s", "capture alone s", ".4f"),
    ("bound_s", "bound s", ".4f"),
    ("own_rate", "own-shape G/s", ".1f"),
    ("own_bound_s", "own bound s", ".4f"),
    ("speedup", "vs torch", ".2f"),
    ("k_bound", "K/bound", ".2f"),
    ("k_own", "K/own", ".2f"),
    ("torch_mib", "torch MiB", ".1f"),
    ("deadspec_mib", "deadspec MiB", ".1f"),
    ("capture_mib", "capture MiB", ".1f"),
    ("time_ok", ">=1x", "s"),
    ("bound_ok", "<=1.5x bound / own", "s"),
    ("mem_ok", "mem", "s"),
]


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    if args is None:  # a --_child process: it has measured and reported
        return 0
    env = environment()
    rate = dsyrk_rate(tuple(_ints(args.rate_shape.replace("x", ","))))  # type: ignore[arg-type]
    env["dsyrk rate (deadspec.gram, float64 " + args.rate_shape + ")"] = (
        f"{rate / 1e9:.1f} G multiply-adds/s ({2 * rate / 1e9:.1f} GFLOP/s)"
    )
    env["loss"] = args.loss
    print_env(env)
    print("# Linear(d, d) with bias, float32 inputs; K accumulated in float64 by deadspec")
    rows: list[dict] = []
    cells: list[dict] = []
    own_rates: dict = {}
    for d in _ints(args.dims):
        for n in _ints(args.sizes):
            for t in _ints(args.seq):
                r, cell = _measure_cell(args, n, t, d, rate, own_rates)
                rows += r
                cells.append(cell)
    print()
    print_table(rows, ROW_COLUMNS)
    print()
    print_table(cells, CELL_COLUMNS)
    print(f"# load average at end (1/5/15 min): {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    if args.csv:
        write_csv(args.csv, rows + cells, env)
    return 0


if __name__ == "__main__":
    sys.exit(main())
