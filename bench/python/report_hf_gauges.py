"""Gauges of the Hugging Face families and the DDC optimizers' equivariance under them (#17).

For each family of ``tests/python/hf_models.py`` (2-layer models from small configs, float64):
the gauges discovery finds by kind (from the model alone, and with inputs: the torch.export
reader), the discovery time, and the distance between the trajectory trained from g·θ₀ and g
applied to the trajectory trained from θ₀ (3 steps, one random element of every gauge at once,
spread 0.5), for DDCAdam, DDCMuon and AdamW: over all parameters ‖Δθ‖/‖θ‖ ("global") and the
largest per-parameter ‖Δp‖/‖p‖ ("max"; a pure-gauge parameter such as a key bias, whose gradient
is round-off, has no meaningful value of its own), and that largest value over the parameters of
norm above 10⁻⁶‖θ‖.

    python bench/python/report_hf_gauges.py [--steps 3] [--csv out.csv]
"""

from __future__ import annotations

import argparse
import collections
import copy
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests" / "python"))

import deadspec.gauges as G  # noqa: E402
import hf_models  # noqa: E402
from _harness import write_csv  # noqa: E402  (this folder is on sys.path)
from deadspec.optim import DDCAdam, DDCMuon  # noqa: E402

OPTS = {
    "DDCAdam": lambda m: DDCAdam(m, lr=1e-2, weight_decay=0.01),
    "DDCMuon": lambda m: DDCMuon(m, lr=1e-2, weight_decay=0.01),
    "AdamW": lambda m: torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.01),
}


def _loss(m, x, y):
    out = hf_models.logits(m(*x))
    if out.ndim == 3:
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))
    return F.cross_entropy(out, y)


def _errors(a, b) -> tuple[float, float, float]:
    with torch.no_grad():
        pairs = list(zip(a.parameters(), b.parameters()))
        num = sum(float((p - q).square().sum()) for p, q in pairs)
        den = sum(float(p.square().sum()) for p, _ in pairs)
        rel = [
            (float((p - q).norm() / p.norm()), float(p.norm())) for p, q in pairs if p.norm() > 0
        ]
    big = max(r for r, n in rel if n > 1e-6 * den**0.5)
    return (num / den) ** 0.5, max(r for r, _ in rel), big


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--csv", default=None)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    rows = []
    for fam in hf_models.FAMILIES:
        m0, x, y = hf_models.build(fam)
        m0 = m0.double()
        x = tuple(t.double() if t.is_floating_point() else t for t in x)
        t0 = time.perf_counter()
        gs = list(G.discover(m0))
        t1 = time.perf_counter()
        gx = list(G.discover(m0, inputs=x))
        t2 = time.perf_counter()
        kinds = dict(sorted(collections.Counter(g.kind for g in gs).items()))
        kx = dict(sorted(collections.Counter(g.kind for g in gx).items()))
        sources = dict(sorted(collections.Counter(g.source for g in gx).items()))
        els = G.random_elements(m0, gs, torch.Generator().manual_seed(0), spread=0.5)
        row = {"family": fam, "gauges": kinds, "with inputs": kx, "sources (with inputs)": sources,
               "discover s": round(t1 - t0, 3), "discover+export s": round(t2 - t1, 3)}
        for name, make in OPTS.items():
            moved, plain = copy.deepcopy(m0), copy.deepcopy(m0)
            G.apply_elements(moved, gs, els)
            for mm in (moved, plain):
                opt = make(mm)
                for _ in range(args.steps):
                    opt.zero_grad()
                    _loss(mm, x, y).backward()
                    opt.step()
            G.apply_elements(plain, gs, els)
            glob, mx, big = _errors(moved, plain)
            row[f"{name} global"] = f"{glob:.1e}"
            row[f"{name} max"] = f"{mx:.1e}"
            row[f"{name} max (|p| > 1e-6|θ|)"] = f"{big:.1e}"
        rows.append(row)
        print(" | ".join(f"{k}: {v}" for k, v in row.items()), flush=True)
    if args.csv:
        write_csv(args.csv, rows, {})  # (no environment columns: the rows say what ran)


if __name__ == "__main__":
    main()
