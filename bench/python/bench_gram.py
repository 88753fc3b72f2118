"""Benchmark: activation Gram, deadspec.gram vs numpy (and torch for the record).

Feature side (N×h → h×h): ``deadspec.gram(x, side="feature")`` vs ``x.T @ x / N`` in numpy (the
baseline; numpy recognises the ``x.T @ x`` pattern and calls BLAS ``syrk``) and torch. Sample side
(N×h → N×N): ``deadspec.gram(x, side="sample")`` vs ``x @ x.T / N``. float64 and float32 inputs;
deadspec always accumulates and returns float64, so the float32 rows also time numpy on a float64
copy (``numpy f64``) for a same-precision reference. Ratios are method time / numpy time at the
input's dtype (target ≤ 1.2).

By default everything runs in this process; ``--memory`` runs each (configuration, method) in a
fresh child process and reports its peak RSS increase. Run
``python bench/python/bench_gram.py --help``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import numpy as np

# Shared timing / peak-memory harness (bench/python/_harness.py; this folder is on sys.path).
from _harness import Bench, environment, parser, print_env, print_table, summary, write_csv

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


BENCH = Bench(__file__, CASES, small_config)


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
    p = parser(__doc__)
    p.add_argument(
        "--sizes",
        default="8192x1024,4096x512,2048x2048:sample",
        help="NxH[:side] items, comma-separated (side feature|sample, default feature)",
    )
    p.add_argument(
        "--dtype", default="float64,float32", help="float64, float32 or both (comma-separated)"
    )
    args = BENCH.parse_args(p, argv, memory_default=False)
    if args is None:  # a --_child process: it has measured and reported
        return 0
    if args.smoke:
        args.sizes, args.repeat, args.budget = "256x64,64x256:sample", 1, 5.0
    shapes = _parse_shapes(args.sizes)
    dtypes = [d.strip() for d in args.dtype.split(",")]

    env = environment()
    print_env(env)
    if env["OPENBLAS_CORETYPE"] != "<unset>":
        print(
            "# WARNING: OPENBLAS_CORETYPE is set; numpy's OpenBLAS may run 2-6x slower "
            "(build-notes.md)."
        )
    print(
        "# ratio = method time / numpy time at the input dtype (best of runs); "
        "deadspec returns float64"
    )
    rows: list[dict] = []
    for dtype in dtypes:
        for n, h, side in shapes:
            cfg = {"n": n, "h": h, "side": side, "dtype": dtype}
            names = ["numpy", "deadspec", "torch"] + (["numpy f64"] if dtype != "float64" else [])
            res = {m: BENCH.measure(m, cfg, args) for m in names}
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
                        **summary(r),
                        "ratio": min(r["times"]) / min(res["numpy"]["times"]),
                        "gflops": n * n * h / min(r["times"]) / 1e9
                        if side == "sample"
                        else n * h * h / min(r["times"]) / 1e9,
                        "peak_mib": r["peak_mib"],
                        "rel_err": err,
                    }
                )
    print()
    print_table(
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
        "# GFLOP/s = (N*h*h for the feature side, N*N*h for the sample side) / best time: "
        "the flops of one triangle (syrk)."
    )
    print("# runs: timed runs after a warm-up at size; 'c' = a single run without warm-up at size.")
    if args.csv:
        write_csv(args.csv, rows, env)
    return 0


if __name__ == "__main__":
    sys.exit(main())
