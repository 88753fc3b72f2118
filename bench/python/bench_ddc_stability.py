"""Benchmark: do the DDC optimizers train at their defaults? (issue #12's reproduction)

A 2-hidden-layer ReLU MLP (20 → 64 → 64 → 5, float32, torch's default init, seed 0), full-batch
cross-entropy on 512 generated points (labels: the argmax of a random linear map plus noise,
separable by the MLP), trained for ``--steps`` steps with each optimizer at its default
hyper-parameters, at weight decays 0, 0.01 and 0.1. Reported: the loss and the largest gauge
scale ρ (``opt.gauge_scales()``, max over sites and units) at steps 0, steps/4, steps/2 and
steps, and the final train accuracy. Nothing is timed.

Before the fix of issue #12, ``DDCMuon(model)`` reached a loss of 4e6 and ρ = 8e10 at step 2000
(wd = 0), while plain Muon + AdamW (``DDCMuon(model, gauges=[])``) reached 0; the numbers after
the fix are in docs/ddc.md ("DDCMuon", "Training at the defaults").

    python bench/python/bench_ddc_stability.py [--steps 2000] [--threads 1] [--csv out.csv]
    python bench/python/bench_ddc_stability.py --smoke      # 20 steps (CI bit-rot check)
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

import deadspec

# (bench/python/_harness.py: this folder is on sys.path)
from _harness import write_csv
from deadspec._util import progress
from deadspec.optim import DDCAdam, DDCMuon

WEIGHT_DECAYS = (0.0, 0.01, 0.1)


def data(seed: int = 0, n: int = 512, d: int = 20, k: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` standard-normal points in ``d`` dimensions, labels ``argmax(x·T + 0.5·noise)``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    t = torch.randn(d, k, generator=g)
    y = (x @ t + 0.5 * torch.randn(n, k, generator=g)).argmax(1)
    return x, y


def mlp(seed: int = 0) -> nn.Sequential:
    """The 20 → 64 → 64 → 5 ReLU MLP of the finding (torch's default initialisation)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 5)
    )


def optimizers(wd: float) -> dict[str, Callable[[nn.Module], torch.optim.Optimizer]]:
    """Each optimizer at its defaults, with weight decay ``wd``."""
    return {
        "DDCMuon": lambda m: DDCMuon(m, weight_decay=wd),
        "Muon+AdamW": lambda m: DDCMuon(m, weight_decay=wd, gauges=[]),
        "DDCAdam": lambda m: DDCAdam(m, weight_decay=wd),
        "DDCAdam (split)": lambda m: DDCAdam(m, weight_decay=wd, form="split"),
    }


def max_rho(opt: torch.optim.Optimizer) -> float:
    """The largest gauge scale over sites and units (nan without gauges)."""
    scales = opt.gauge_scales() if hasattr(opt, "gauge_scales") else {}
    return max((float(v.max()) for v in scales.values()), default=math.nan)


def train(make: Callable[[nn.Module], torch.optim.Optimizer], steps: int, marks: list[int],
          show: bool | None) -> dict[str, float]:
    """Full-batch training; the loss and max ρ at each mark, the final accuracy."""
    x, y = data()
    model = mlp()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DDCMuon(gauges=[]): "no gauges" is the point here
        opt = make(model)
    row: dict[str, float] = {}
    for t in progress(range(steps + 1), show, "steps"):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        if t in marks:
            row[f"loss@{t}"] = float(loss.detach())
            row[f"rho@{t}"] = max_rho(opt)
        if t == steps:
            break
        loss.backward()
        opt.step()
    with torch.no_grad():
        row["acc"] = float((model(x).argmax(1) == y).float().mean())
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=1, help="torch and deadspec threads")
    ap.add_argument("--csv", default=None)
    ap.add_argument("--only", default=None, help="comma-separated optimizer names")
    ap.add_argument("--progress", action="store_true", default=None, help="show progress bars")
    ap.add_argument("--smoke", action="store_true", help="20 steps (CI bit-rot check)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    deadspec.set_num_threads(args.threads)
    steps = 20 if args.smoke else args.steps
    marks = sorted({0, steps // 4, steps // 2, steps})
    only = None if args.only is None else set(args.only.split(","))
    print(f"# torch {torch.__version__} ({torch.get_num_threads()} threads), deadspec "
          f"{deadspec.__version__}, {steps} steps, load {os.getloadavg()}")
    rows = []
    for wd in WEIGHT_DECAYS:
        for name, make in optimizers(wd).items():
            if only is not None and name not in only:
                continue
            rows.append({"method": name, "weight_decay": wd,
                         **train(make, steps, marks, args.progress)})
    cols = [f"loss@{t}" for t in marks] + [f"rho@{t}" for t in marks]
    header = f"{'method':<16} {'wd':>5} " + " ".join(f"{c:>10}" for c in cols) + f" {'acc':>6}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['method']:<16} {r['weight_decay']:>5} "
              + " ".join(f"{r[c]:>10.3g}" for c in cols) + f" {r['acc']:>6.3f}")
    if args.csv:
        write_csv(args.csv, rows, {})  # (no environment columns: the rows say what ran)
    return 0


if __name__ == "__main__":
    sys.exit(main())
