"""Cross-check deadspec.llc against the PyPI ``devinterp`` package on RRR checkpoints.

Not a test dependency: devinterp lives in its own virtual environment, outside the repository,
and the comparison runs in a subprocess there.

    python bench/python/bench_devinterp.py --setup     # create /tmp/devinterp-venv,
                                                       # install devinterp
    python bench/python/bench_devinterp.py             # run the comparison, print a Markdown table
    python bench/python/bench_devinterp.py --json out.json

``--setup`` runs ``python -m venv VENV --system-site-packages`` (so the venv reuses the
installed torch), then ``pip install --no-deps devinterp==VERSION`` and, with ``--no-deps``
too, only those of devinterp's requirements (einops, pandas, cloudpickle, matplotlib, tqdm,
numpy) that the venv cannot already import; it then checks that torch is still the system one.
Version 1.3.2 by default: the callback API (``estimate_learning_coeff_with_summary`` with the
SGLD optimizer) that takes any model and DataLoader; devinterp 2.x is LLM-oriented (Hugging Face
datasets of ``input_ids``) and does not take a regression model.

The comparison: for each RRR checkpoint (the grid points of ``deadspec repro rrr``, same data,
same closed-form minimum), both tools estimate the LLC with the same ε, γ, nβ = n/log n, chains,
burn-in and draws, full-batch SGLD and the Gaussian NLL ‖y − f‖²/(2σ²). ε and γ are the centre
of the default calibration grid (ε = 0.4/P, γ = 1e-4·P, P = nβ·h_max) rather than a fresh
calibration, so both tools see the identical setting. devinterp's update is the same as ours
(``w ← w − (ε/2)(nβ∇L + γ(w − w*)) + N(0, ε)``); it runs its chains one after another
(``cores=1``) in float64 here (the model's dtype), with its loss trace stored in float32.
devinterp is given an explicit list of chain seeds, ``1000·seed + i`` (its docstring says an
integer seed is an offset added to the chain index; version 1.3.2's code derives the chain
seeds from ``numpy.random.SeedSequence(seed)`` instead), so the chains a run uses are stated.
Agreement: |ours − theirs| ≤ max(std_ours, std_theirs) (their chain standard deviation, ddof=1
both). Wall time is measured around each tool's estimate call, with one torch thread each.

``--same-noise`` runs both tools on one shared noise stream instead of their own generators
(float32-representable N(0, 1) draws, chain after chain; devinterp's ``torch.normal`` and
deadspec's ``torch.randn`` are replaced for the run, deadspec's chains run sequentially), and
reports the largest difference between the two loss traces step by step and both estimates: if
the samplers are the same algorithm, the traces agree to devinterp's float32 loss storage.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_VENV = Path("/tmp/devinterp-venv")
DEFAULT_VERSION = "1.3.2"
#: (M, N, H, r): one point per Aoyagi–Watanabe case, from the default RRR grid.
POINTS = [(6, 6, 4, 2), (3, 8, 3, 2), (8, 3, 3, 1), (3, 3, 8, 1)]
_DEPS = {"einops": "einops", "pandas": "pandas", "cloudpickle": "cloudpickle",
         "matplotlib": "matplotlib", "tqdm": "tqdm", "numpy": "numpy"}


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def setup(venv: Path, version: str) -> None:
    """Create the venv and install devinterp without touching torch."""
    venv = Path(venv)
    repo = Path(__file__).resolve().parents[2]
    if repo in venv.resolve().parents or venv.resolve() == repo:
        raise SystemExit(f"bench_devinterp: the venv must live outside the repository, got {venv}")
    if not _venv_python(venv).exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv), "--system-site-packages"],
                       check=True)
    py = str(_venv_python(venv))
    torch_before = subprocess.run([py, "-c", "import torch; print(torch.__version__)"],
                                  check=True, capture_output=True, text=True).stdout.strip()
    subprocess.run([py, "-m", "pip", "install", "--no-deps", f"devinterp=={version}"], check=True)
    missing = []
    for mod, pkg in _DEPS.items():
        ok = subprocess.run([py, "-c", f"import {mod}"], capture_output=True,
                            check=False).returncode == 0
        if not ok:
            missing.append(pkg)
    if missing:
        subprocess.run([py, "-m", "pip", "install", "--no-deps", *missing], check=True)
    torch_after = subprocess.run([py, "-c", "import torch; print(torch.__version__)"],
                                 check=True, capture_output=True, text=True).stdout.strip()
    if torch_after != torch_before:
        raise SystemExit(f"bench_devinterp: torch changed from {torch_before} to {torch_after}")
    out = subprocess.run([py, "-c", ("import devinterp, importlib.metadata as m; "
                          "print(m.version('devinterp'))")],
                         check=True, capture_output=True, text=True)
    print(f"devinterp {out.stdout.strip()} installed in {venv} (torch {torch_after}; "
          f"installed missing deps: {missing or 'none'})")


# ---------------------------------------------------------------------------------------------
# worker: runs inside the devinterp venv
# ---------------------------------------------------------------------------------------------


def _stream_normal(noise):
    """A stand-in for ``torch.normal(mean, std, size=...)`` that hands out the next entries of
    ``noise`` (rows of the flat parameter vector, one row per SGLD step, consumed in order)."""
    import torch

    at = {"row": 0, "col": 0}

    def normal(mean=0.0, std=1.0, size=None, device=None, generator=None, **kw):
        n = 1
        for v in size:
            n *= int(v)
        row = noise[at["row"]]
        out = row[at["col"] : at["col"] + n].reshape(size).to(torch.float32) * std + mean
        at["col"] += n
        if at["col"] == row.numel():
            at["row"], at["col"] = at["row"] + 1, 0
        return out

    normal.consumed = lambda: at["row"] == noise.shape[0] and at["col"] == 0
    return normal


def worker(job_path: str, out_path: str) -> None:
    import warnings

    import torch
    from torch import nn

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    import importlib.metadata as md

    from devinterp.optim import SGLD
    from devinterp.slt.sampler import estimate_learning_coeff_with_summary

    job = torch.load(job_path, weights_only=False)
    results = []
    real_normal = torch.normal
    for item in job["items"]:
        M, N, H = item["M"], item["N"], item["H"]
        if item.get("noise") is not None:
            torch.normal = _stream_normal(item["noise"])  # devinterp's SGLD draws its noise here
        else:
            torch.normal = real_normal

        class RRR(nn.Module):
            def __init__(self, M: int, N: int, H: int) -> None:
                super().__init__()
                self.A = nn.Linear(M, H, bias=False)
                self.B = nn.Linear(H, N, bias=False)

            def forward(self, x):
                return self.B(self.A(x))

        model = RRR(M, N, H).double()
        model.load_state_dict(item["state"])
        x, y = item["x"], item["y"]
        sigma = item["sigma"]
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y),
                                             batch_size=x.shape[0], shuffle=False)

        def evaluate(m, data, sigma=sigma):
            xb, yb = data
            return ((yb - m(xb)) ** 2).sum(1).mean() / (2 * sigma * sigma)

        with torch.no_grad():
            init_loss = float(evaluate(model, (x, y)))
        t0 = time.perf_counter()
        res = estimate_learning_coeff_with_summary(
            model, loader, evaluate=evaluate, sampling_method=SGLD,
            optimizer_kwargs={"lr": item["epsilon"], "localization": item["gamma"],
                                  "nbeta": item["nbeta"]},
            num_chains=item["chains"], num_draws=item["draws"], num_burnin_steps=item["burnin"],
            cores=1, seed=[1000 * item["seed"] + i for i in range(item["chains"])],
            device="cpu", verbose=False, online=False,
        )
        sec = time.perf_counter() - t0
        # per chain, from its loss trace (the estimator returns only the mean and std)
        per = [float(item["nbeta"] * (float(t.mean()) - init_loss)) for t in res["loss/trace"]]
        results.append({"point": item["point"], "mean": float(res["llc/mean"]),
                            "std": float(res["llc/std"]), "per_chain": per, "seconds": sec,
                            "loss_trace": (res["loss/trace"].tolist()
                                           if item.get("noise") is not None else None)})
        if item.get("noise") is not None and not torch.normal.consumed():
            raise RuntimeError("bench_devinterp: devinterp did not use every noise row")
    with open(out_path, "w") as f:
        json.dump({"version": md.version("devinterp"), "torch": torch.__version__,
                       "results": results}, f)


# ---------------------------------------------------------------------------------------------
# driver: runs in the project's environment
# ---------------------------------------------------------------------------------------------


def compare(venv: Path, n: int, sigma: float, chains: int, draws: int, burnin: int,
            seed: int, points: list | None = None, chain_seed: int | None = None,
            same_noise: bool = False) -> dict:
    import torch

    from deadspec import llc
    from deadspec.experiments import rrr
    from deadspec.models import ReducedRankRegression
    from deadspec.theory import rrr_rlct

    torch.set_num_threads(1)
    py = _venv_python(venv)
    if not py.exists():
        raise SystemExit(f"bench_devinterp: no venv at {venv}; run with --setup first")
    items, ours = [], []
    cs = seed if chain_seed is None else chain_seed  # the samplers' seed (both tools)
    for k, (M, N, H, r) in enumerate(POINTS):
        if points is not None and (M, N, H, r) not in points:
            continue
        # the checkpoint depends on --seed and the point's place in POINTS only
        x, y, _ = rrr._make_data(M, N, r, n, sigma, seed + 10 * k)
        model = ReducedRankRegression(M, N, H).double()
        rrr.fit_minimum(model, x, y)
        lf = llc.gaussian_nll(sigma)
        nbeta = llc.default_nbeta(n)
        p = nbeta * llc.curvature_scale(model, (x, y), loss_fn=lf)
        eps, gamma = 0.4 / p, 1e-4 * p
        noise = None
        if same_noise:
            d = sum(q.numel() for q in model.parameters())
            gen = torch.Generator().manual_seed(cs)
            noise = torch.randn(chains * (burnin + draws), d, generator=gen).double()
            res = seq = _estimate_on_stream(llc, noise, model, (x, y), loss_fn=lf, epsilon=eps,
                                            gamma=gamma, chains=chains, draws=draws,
                                            burnin=burnin, seed=cs, warn=False,
                                            vectorize=False)
        else:
            res = llc.estimate(model, (x, y), loss_fn=lf, epsilon=eps, gamma=gamma,
                               chains=chains, draws=draws, burnin=burnin, seed=cs, warn=False)
            seq = llc.estimate(model, (x, y), loss_fn=lf, epsilon=eps, gamma=gamma,
                               chains=chains, draws=draws, burnin=burnin, seed=cs, warn=False,
                               vectorize=False)
        lam, _ = rrr_rlct(M, N, H, r)
        ours.append({"point": [M, N, H, r], "lam": lam, "epsilon": eps, "gamma": gamma,
                         "nbeta": nbeta,
                         "mean": res.mean, "std": res.std, "seconds": res.seconds,
                         "per_chain": [float(v) for v in res.per_chain],
                         "seconds_sequential": seq.seconds, "mean_sequential": seq.mean,
                         "trace": res.loss_trace if same_noise else None})
        items.append({"point": [M, N, H, r], "M": M, "N": N, "H": H, "state": model.state_dict(),
                          "x": x, "y": y,
                          "sigma": sigma, "epsilon": eps, "gamma": gamma, "nbeta": nbeta,
                          "chains": chains,
                          "draws": draws, "burnin": burnin, "seed": cs, "noise": noise})
    with tempfile.TemporaryDirectory() as tmp:
        job, out = os.path.join(tmp, "job.pt"), os.path.join(tmp, "out.json")
        torch.save({"items": items}, job)
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        subprocess.run([str(py), os.path.abspath(__file__), "--worker", job, out], check=True,
                       env=env)
        with open(out) as f:
            theirs = json.load(f)
    rows = []
    for o, t in zip(ours, theirs["results"]):
        diff = abs(o["mean"] - t["mean"])
        tol = max(o["std"], t["std"])
        row = dict(**o, di_mean=t["mean"], di_std=t["std"], di_seconds=t["seconds"],
                   agree=bool(diff <= tol), diff=diff)
        trace = row.pop("trace")
        row["di_per_chain"] = t["per_chain"]
        if same_noise:
            import numpy as np

            row["trace_max_diff"] = float(np.abs(np.asarray(t["loss_trace"]) - trace).max())
        rows.append(row)
    return {"devinterp": theirs["version"], "torch": theirs["torch"], "n": n, "sigma": sigma,
                "chains": chains, "draws": draws, "burnin": burnin, "same_noise": same_noise,
                "rows": rows}


def _estimate_on_stream(llc, noise, *args, **kwargs):
    """``llc.estimate`` (sequential chains) with its per-step noise taken from the rows of
    ``noise`` in order, instead of its generators."""
    import torch

    real = torch.randn
    d = noise.shape[1]
    at = {"row": 0}

    def randn(*a, **kw):
        if a == (d,) and "generator" in kw:
            row = noise[at["row"]]
            at["row"] += 1
            return row.to(kw.get("dtype") or torch.float64)
        return real(*a, **kw)

    torch.randn = randn
    try:
        res = llc.estimate(*args, **kwargs)
    finally:
        torch.randn = real
    if at["row"] != noise.shape[0]:
        raise RuntimeError(f"bench_devinterp: used {at['row']} of {noise.shape[0]} noise rows")
    return res


def markdown(report: dict) -> str:
    if report.get("same_noise"):
        lines = [
            (f"devinterp {report['devinterp']}; one shared noise stream; {report['chains']} "
             f"chains × ({report['burnin']} + {report['draws']}) steps, float64."),
            "",
            "| (M, N, H, r) | λ | deadspec λ̂ per chain | devinterp λ̂ per chain | "
            "max |Δ loss| per step |",
            "|---|---|---|---|---|",
        ]
        for r in report["rows"]:
            ours = ", ".join(f"{v:.4f}" for v in r["per_chain"])
            theirs = ", ".join(f"{v:.4f}" for v in r["di_per_chain"])
            lines.append(f"| {tuple(r['point'])} | {r['lam']:.2f} | {ours} | {theirs} | "
                         f"{r['trace_max_diff']:.2e} |")
        return "\n".join(lines)
    lines = [
        (f"devinterp {report['devinterp']} (torch {report['torch']}); n = {report['n']}, "
        f"σ = {report['sigma']}, nβ = n/log n, full batch, {report['chains']} chains × "
        f"({report['burnin']} burn-in + {report['draws']} draws), ε = 0.4/P, γ = 1e-4·P, "
        "float64, 1 thread."),
        "",
        "| (M, N, H, r) | λ | ε | γ | deadspec λ̂ ± std | devinterp λ̂ ± std | agree | "
        "deadspec s (vmap / loop) | devinterp s | speed-up (vmap / loop) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {tuple(r['point'])} | {r['lam']:.2f} | {r['epsilon']:.2e} | {r['gamma']:.3g} | "
            f"{r['mean']:.2f} ± {r['std']:.2f} | {r['di_mean']:.2f} ± {r['di_std']:.2f} | "
            f"{'yes' if r['agree'] else 'NO'} | "
            f"{r['seconds']:.1f} / {r['seconds_sequential']:.1f} | "
            f"{r['di_seconds']:.1f} | {r['di_seconds'] / r['seconds']:.1f}× / "
            f"{r['di_seconds'] / r['seconds_sequential']:.1f}× |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--setup", action="store_true", help="create the venv and install devinterp")
    p.add_argument("--venv", type=Path, default=DEFAULT_VENV)
    p.add_argument("--version", default=DEFAULT_VERSION, help="devinterp version for --setup")
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--sigma", type=float, default=0.1)
    p.add_argument("--chains", type=int, default=4)
    p.add_argument("--draws", type=int, default=2000)
    p.add_argument("--burnin", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0, help="data seed (and sampler seed by default)")
    p.add_argument("--chain-seed", type=int, default=None,
                   help="sampler seed of both tools (default: --seed), "
                        "to rerun the same checkpoints")
    p.add_argument("--points", default=None,
                   help="only these grid points of POINTS, e.g. '8,3,3,1' or '8,3,3,1;6,6,4,2'")
    p.add_argument("--same-noise", action="store_true",
                   help="both tools on one shared noise stream (are the samplers the same?)")
    p.add_argument("--json", type=Path, default=None, help="also write the report as JSON")
    p.add_argument("--worker", nargs=2, metavar=("JOB", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(*args.worker)
        return 0
    if args.setup:
        setup(args.venv, args.version)
        return 0
    points = None
    if args.points:
        points = [tuple(int(v) for v in pt.split(",")) for pt in args.points.split(";")]
        unknown = [pt for pt in points if pt not in POINTS]
        if unknown or any(len(pt) != 4 for pt in points):
            p.error(f"--points must be among {POINTS}, got {args.points!r}")
    report = compare(args.venv, args.n, args.sigma, args.chains, args.draws, args.burnin,
                     args.seed, points, args.chain_seed, args.same_noise)
    print(markdown(report))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=1))
    if args.same_noise:
        worst = max(r["trace_max_diff"] for r in report["rows"])
        gap = max(abs(a - b) for r in report["rows"]
                  for a, b in zip(r["per_chain"], r["di_per_chain"]))
        print(f"\nsame noise: largest per-step loss difference {worst:.2e}, largest per-chain "
              f"λ̂ difference {gap:.2e}")
        return 0 if worst < 1e-5 and gap < 1e-3 else 1
    ok = all(r["agree"] for r in report["rows"])
    print(f"\nagreement within chain std: "
          f"{sum(r['agree'] for r in report['rows'])}/{len(report['rows'])}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
