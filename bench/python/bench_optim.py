"""Benchmark: one optimizer step of DDCAdam (and DDCMuon) against torch's AdamW and Muon.

Models: a 4-layer MLP of width 1024 (ReLU; 3.2 M parameters, per-unit rescaling gauges on every
hidden layer) and a small pre-LN transformer block stack (deadspec.models.TransformerBlock,
d_model 256, 4 heads, 2 blocks). Gradients are random and fixed; the timed region is
``opt.step()`` only. Ratios are method / AdamW (foreach), measured in the same run; the issue's
target is DDCAdam ≤ 1.5× AdamW.

    python bench/python/bench_optim.py [--repeat 20] [--threads 2] [--csv out.csv] [--smoke]
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import time

import torch
from torch import nn

import deadspec
from deadspec.optim import DDCAdam


def _mlp(width: int, depth: int) -> nn.Module:
    layers: list[nn.Module] = []
    for _ in range(depth - 1):
        layers += [nn.Linear(width, width), nn.ReLU()]
    layers.append(nn.Linear(width, 10))
    return nn.Sequential(*layers)


def _transformer(d_model: int, blocks: int) -> nn.Module:
    from deadspec.models import TransformerBlock

    return nn.Sequential(*[TransformerBlock(d_model, 4, 4 * d_model) for _ in range(blocks)])


def _optimizers(model: nn.Module) -> dict[str, object]:
    params = list(model.parameters())
    out: dict[str, object] = {
        "AdamW (foreach)": lambda: torch.optim.AdamW(params, lr=1e-3, weight_decay=0.1,
                                                     foreach=True),
        "AdamW (fused)": lambda: torch.optim.AdamW(params, lr=1e-3, weight_decay=0.1, fused=True),
        "DDCAdam": lambda: DDCAdam(model, lr=1e-3, weight_decay=0.1),
        "DDCAdam (split)": lambda: DDCAdam(model, lr=1e-3, weight_decay=0.1, form="split"),
    }
    if hasattr(torch.optim, "Muon"):
        # like for like with DDCMuon: the same matrices on Muon (not the output head), Newton–
        # Schulz in bfloat16 (torch's; DDCMuon's default is the parameter's dtype), AdamW on
        # the rest
        head = str(len(model) - 1) if isinstance(model[-1], nn.Linear) else None
        muon = [p for p in params if p.ndim == 2 and (head is None or p is not model[-1].weight)]
        rest = [p for p in params if all(p is not q for q in muon)]
        out["Muon+AdamW"] = lambda: _Both(
            torch.optim.Muon(muon, lr=0.02, weight_decay=0.1),
            torch.optim.AdamW(rest, lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True),
        )
        out["DDCMuon"] = lambda: deadspec.optim.DDCMuon(
            model, lr=0.02, weight_decay=0.1, ns_dtype=torch.bfloat16, head=head
        )
        out["DDCMuon (f32 NS)"] = lambda: deadspec.optim.DDCMuon(
            model, lr=0.02, weight_decay=0.1, head=head
        )
    return out


class _Both:
    """torch's Muon on the hidden matrices and AdamW on the rest, stepped together."""

    def __init__(self, *opts: torch.optim.Optimizer) -> None:
        self.opts = opts

    def step(self) -> None:
        for o in self.opts:
            o.step()


def _time_step(make, model: nn.Module, repeat: int) -> list[float]:
    gen = torch.Generator().manual_seed(0)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype) * 1e-3
    opt = make()
    opt.step()  # warm-up: state allocation
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        opt.step()
        times.append(time.perf_counter() - t0)
    return times


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None, help="torch and deadspec threads")
    ap.add_argument("--csv", default=None)
    ap.add_argument("--smoke", action="store_true", help="tiny models, 2 steps (CI bit-rot check)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
        deadspec.set_num_threads(args.threads)
    repeat = 2 if args.smoke else args.repeat
    models = (
        {"mlp 4x64": _mlp(64, 4), "transformer 2x32": _transformer(32, 2)}
        if args.smoke
        else {"mlp 4x1024": _mlp(1024, 4), "transformer 2x256": _transformer(256, 2)}
    )
    print(f"# torch {torch.__version__} ({torch.get_num_threads()} threads), deadspec "
          f"{deadspec.__version__} ({deadspec.num_threads()} threads), load {os.getloadavg()}")
    rows = []
    for mname, model in models.items():
        n_params = sum(p.numel() for p in model.parameters())
        base = None
        for oname, make in _optimizers(model).items():
            try:
                times = _time_step(make, model, repeat)
            except (RuntimeError, ValueError, TypeError) as exc:  # e.g. fused AdamW unsupported
                print(f"# {mname}: {oname} skipped: {exc}", file=sys.stderr)
                continue
            best, med = min(times), statistics.median(times)
            if base is None:
                base = best
            rows.append({"model": mname, "params": n_params, "optimizer": oname,
                         "best_ms": best * 1e3, "median_ms": med * 1e3, "vs_adamw": best / base})
    header = (f"{'method':<18} {'model':<18} {'params':>9} {'best ms':>9} {'median ms':>10} "
              f"{'vs AdamW':>9}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['optimizer']:<18} {r['model']:<18} {r['params']:>9} {r['best_ms']:>9.2f} "
              f"{r['median_ms']:>10.2f} {r['vs_adamw']:>9.2f}")
    for mname in models:  # issue #16: DDCMuon <= 1.2x torch's Muon (+ AdamW on the rest)
        best = {r["optimizer"]: r["best_ms"] for r in rows if r["model"] == mname}
        if {"Muon+AdamW", "DDCMuon", "DDCMuon (f32 NS)"} <= set(best):
            print(f"# {mname}: DDCMuon / Muon+AdamW = {best['DDCMuon'] / best['Muon+AdamW']:.2f}x"
                  f" (f32 NS: {best['DDCMuon (f32 NS)'] / best['Muon+AdamW']:.2f}x)")
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
