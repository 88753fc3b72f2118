"""Benchmark: symmetric eigendecomposition, deadspec.sym_eig vs numpy.linalg and torch.linalg.

Random PSD float64 matrices A = XXᵀ/d (X d×d Gaussian). Values only: ``deadspec.sym_eig(a)`` vs
``numpy.linalg.eigvalsh`` (the baseline) and ``torch.linalg.eigvalsh``; with vectors:
``deadspec.sym_eig(a, vectors=True)`` vs ``numpy.linalg.eigh`` (baseline) and
``torch.linalg.eigh``. Ratios are method time / numpy time and method time / the faster of numpy
and torch ("vs best"; issue #16: values ≤ 0.8, vectors ≤ 1.0 at d ∈ {2048, 4096}).
Eigenvalues are checked against numpy's, eigenvectors by the residual max|AV − VΛ|/max|A|.

By default everything runs in this process (no memory column); ``--memory`` runs each
(configuration, method) in a fresh child process and reports its peak RSS increase.
Run ``python bench/python/bench_eig.py --help``.
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


BENCH = Bench(__file__, CASES, small_config)


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("--sizes", default="1024,2048,4096", help="d values, comma-separated")
    p.add_argument(
        "--dtype",
        default="float64",
        choices=["float64", "float32"],
        help="input dtype (deadspec always solves in float64; numpy/torch in the input's)",
    )
    p.add_argument("--kinds", default="values,vectors", help="values, vectors or both")
    args = BENCH.parse_args(p, argv, memory_default=False)
    if args is None:  # a --_child process: it has measured and reported
        return 0
    if args.smoke:
        args.sizes, args.repeat, args.budget = "64", 1, 5.0
    sizes = [int(s) for s in args.sizes.split(",")]
    kinds = [k.strip() for k in args.kinds.split(",")]

    env = environment()
    print_env(env)
    if env["OPENBLAS_CORETYPE"] != "<unset>":
        print(
            "# WARNING: OPENBLAS_CORETYPE is set; numpy's OpenBLAS may run 2-6x slower "
            "(build-notes.md): ratios against numpy are not representative."
        )
    print(
        f"# random PSD A = X X^T / d, dtype {args.dtype}; "
        "ratio = method time / numpy time (best of runs); vs best = method time / the faster of "
        "numpy and torch (issue #16 targets: values <= 0.8, vectors <= 1.0 at d 2048, 4096)"
    )
    rows: list[dict] = []
    for kind in kinds:
        for d in sizes:
            cfg = {"d": d, "dtype": args.dtype}
            names = [f"{lib} {kind}" for lib in ("numpy", "deadspec", "torch")]
            res = {m: BENCH.measure(m, cfg, args) for m in names}
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
                        **summary(r),
                        "ratio": min(r["times"]) / min(res[names[0]]["times"]),
                        "vs_best": min(r["times"])
                        / min(min(res[n]["times"]) for n in (names[0], names[2])),
                        "peak_mib": r["peak_mib"],
                        "eig_err": err,
                        "residual": resid,
                    }
                )
    print()
    print_table(
        rows,
        [
            ("method", "method", "s"),
            ("d", "d", "d"),
            ("best_s", "best s", ".4f"),
            ("median_s", "median s", ".4f"),
            ("runs", "runs", "s"),
            ("ratio", "vs numpy", ".2f"),
            ("vs_best", "vs best", ".2f"),
            ("peak_mib", "peak MiB", ".1f"),
            ("eig_err", "max|dw|/w1", ".1e"),
            ("residual", "|AV-VW|/|A|", ".1e"),
        ],
    )
    print("# runs: timed runs after a warm-up at size; 'c' = a single run without warm-up at size.")
    if args.csv:
        write_csv(args.csv, rows, env)
    return 0


if __name__ == "__main__":
    sys.exit(main())
