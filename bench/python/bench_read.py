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

import sys
import time
from collections.abc import Callable

import numpy as np

# Shared timing / peak-memory harness (bench/python/_harness.py; this folder is on sys.path).
from _harness import Bench, environment, parser, print_env, print_table, summary, write_csv

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


BENCH = Bench(__file__, CASES, small_config)


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
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
    args = BENCH.parse_args(p, argv, memory_default=True)
    if args is None:  # a --_child process: it has measured and reported
        return 0
    if args.smoke:
        args.sizes, args.width, args.repeat, args.budget = "64", 32, 1, 5.0
    sizes = [int(s) for s in args.sizes.split(",")]

    env = environment()
    print_env(env)
    print(
        f"# MLP {args.width}-{args.width}-{args.width}-{args.width}-{CLASSES} (4 Linear, ReLU), "
        f"dtype {args.dtype}, cross-entropy; speedup / mem ratio = baseline ({BASELINE}) / method"
    )
    rows: list[dict] = []
    agree: list[dict] = []
    for n in sizes:
        cfg = {"n": n, "width": args.width, "dtype": args.dtype, "chunk_size": args.chunk_size}
        res = {m: BENCH.measure(m, cfg, args) for m in (BASELINE, "deadspec.read")}
        base = res[BASELINE]
        for m, r in res.items():
            row = {
                "method": m,
                "n": n,
                "width": args.width,
                "dtype": args.dtype,
                **summary(r),
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
    print_table(
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
    print_table(
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
        write_csv(args.csv, rows, env)
    return 0


if __name__ == "__main__":
    sys.exit(main())
