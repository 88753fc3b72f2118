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

import sys
import time
from collections.abc import Callable

import numpy as np

# Shared timing / peak-memory harness (bench/python/_harness.py; this folder is on sys.path).
from _harness import Bench, environment, parser, print_env, print_table, summary, write_csv

# ---------------------------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------------------------

D_MODEL, P, HEADS = 128, 113, 4


def _threads(cfg: dict) -> None:
    if cfg.get("core_threads"):
        import deadspec

        deadspec.set_num_threads(int(cfg["core_threads"]))


def _case_read(cfg: dict):
    import torch

    import deadspec
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
    import torch

    import deadspec

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


BENCH = Bench(__file__, CASES, small_config)


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
    p = parser(__doc__)
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
    args = BENCH.parse_args(p, argv, memory_default=True)
    if args is None:  # a --_child process: it has measured and reported
        return 0
    n, p_mod, d_model = args.n, P, D_MODEL
    if args.smoke:
        args.seq, args.repeat, args.budget, n, p_mod, d_model = "2", 1, 5.0, 16, 7, 16

    import deadspec

    env = environment()
    env["core_threads"] = str(args.core_threads or deadspec.num_threads())
    print_env(env)
    print(
        f"# read: ModAddTransformer(p={p_mod}, d_model={d_model}, n_heads={HEADS}), N={n}, T=3,"
        f" all linear layers, both sides. seq-fisher: Linear({d_model}->{4 * d_model}) with bias,"
        f" dtype {args.dtype}; speedup = {BASELINE} / deadspec (best times)"
    )
    rows: list[dict] = []
    if not args.skip_read:
        cfg = {"p": p_mod, "d_model": d_model, "n": n, "core_threads": args.core_threads}
        r = BENCH.measure("deadspec.read", cfg, args)
        rows.append(
            {
                "method": "deadspec.read",
                "case": "read",
                "n": n,
                "t": 3,
                "route": "auto",
                **summary(r),
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
        res = {m: BENCH.measure(m, cfg, args) for m in (BASELINE, "deadspec")}
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
                **summary(r),
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
    print_table(
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
        write_csv(args.csv, rows, env)
    return 0


if __name__ == "__main__":
    sys.exit(main())
