"""Benchmark: one optimizer step of DDCAdam (and DDCMuon) against torch's AdamW and Muon.

Models: a 4-layer MLP of width 1024 (ReLU; 3.2 M parameters, per-unit rescaling gauges on every
hidden layer) and a small pre-LN transformer block stack (deadspec.models.TransformerBlock,
d_model 256, 4 heads, 2 blocks). Gradients are random and fixed; the timed region is
``opt.step()`` only. Ratios are method / AdamW (fused), torch's fastest, measured in the same run;
issue #16's targets are DDCAdam ≤ 1.5× and its split form ≤ 2.5× fused AdamW.

The memory-traffic bound: ``MB`` is what a method must read and write per step at the least
(elements × dtype size): AdamW reads p, g, m, v and writes p, m, v (7 per element); DDCAdam reads
g once more for its non-finite check (which must finish before anything is written) and the
producer weights and biases for the scales ρ (7 + 1 per element + 1 per producer element); the
split form reads x, g (sums), x, g, m, v (moments, m and v written) and x, m, v (apply, x
written), its check fused into the first pass (12 per element + 1 per producer element). ``bound
ms`` is that traffic at the rate of ``torch.add(a, b, out=c)`` on buffers of the step's size,
measured in the same run (a STREAM "add": 3 per element), and ``/bound`` the method's best over it.

Before each timed step the script runs an untimed torch matmul (``--after torch``, the
default), as a backward pass precedes every step in training; ``--after none`` times the steps
back to back.

The methods are taken in turn ``--rounds`` times (3), ``--repeat`` steps each time; best and
median are over all rounds. On the 2-core VM of issue #16, every step ran about 1.8× slower for
spells of seconds to minutes (both threads busy, no steal time reported), whatever ran; timed
one after another, a method that fell in such a spell looked slower than one that did not.
``--isolate`` times every method in a fresh process of the script (the same models: seeded), so
that none inherits another's heap, thread pools or state.

    python bench/python/bench_optim.py [--repeat 20] [--rounds 3] [--threads 2]
                                       [--after torch|none] [--isolate] [--csv out.csv] [--smoke]
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import subprocess
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


def _traffic(model: nn.Module, method: str) -> int | None:
    """Bytes a method must move per step at the least (module docstring); None: not modelled."""
    params = list(model.parameters())
    size = params[0].element_size()
    n = sum(p.numel() for p in params)
    if method.startswith("AdamW"):
        return 7 * n * size
    if not method.startswith("DDCAdam"):
        return None
    opt = DDCAdam(model, lr=1e-3)
    producers = sum(t.numel() for s in opt._plan.sites for t in (s.weight, s.bias)
                    if t is not None)
    per = 12 if "split" in method else 8
    return (per * n + producers) * size


def _stream_add_rate(model: nn.Module, repeat: int) -> float:
    """Bytes per second of ``torch.add(a, b, out=c)`` on buffers with the model's element count
    and dtype (best of ``repeat``): the machine's rate for a read-read-write stream."""
    p0 = next(model.parameters())
    n = sum(p.numel() for p in model.parameters())
    a, b, c = (torch.rand(n, dtype=p0.dtype) for _ in range(3))
    torch.add(a, b, out=c)
    best = math.inf
    for _ in range(max(repeat, 5)):
        t0 = time.perf_counter()
        torch.add(a, b, out=c)
        best = min(best, time.perf_counter() - t0)
    return 3 * n * p0.element_size() / best


def _torch_work(model: nn.Module):
    """An untimed torch op before each timed step, as a backward pass precedes every step in
    training: a matmul of the model's width on torch's thread pool (whose threads then spin for
    a while, holding the cores)."""
    w = next(p for p in model.parameters() if p.ndim == 2)
    x = torch.randn(256, w.shape[1], dtype=w.dtype)
    return lambda: torch.mm(x, w.detach().t())


def _time_step(make, model: nn.Module, repeat: int, after: str) -> list[float]:
    gen = torch.Generator().manual_seed(0)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype) * 1e-3
    opt = make()
    opt.step()  # warm-up: state allocation
    work = _torch_work(model) if after == "torch" else None
    times = []
    for _ in range(repeat):
        if work is not None:
            work()
        t0 = time.perf_counter()
        opt.step()
        times.append(time.perf_counter() - t0)
    return times


def _time_isolated(argv: list[str] | None, mname: str, oname: str) -> list[float]:
    """``_time_step`` of one method in a fresh process of this script (``--isolate``)."""
    rest = [a for a in (sys.argv[1:] if argv is None else argv) if a not in ("--isolate",)]
    out = subprocess.run([sys.executable, __file__, *rest, "--only", f"{mname}::{oname}"],
                         capture_output=True, text=True)
    for line in out.stdout.splitlines():
        if line.startswith("#times "):
            return json.loads(line[len("#times "):])
    raise RuntimeError(f"{oname} on {mname}: the isolated run failed: {out.stderr[-500:]}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3,
                    help="times the methods are taken in turn, --repeat steps each time (best "
                    "and median over all rounds)")
    ap.add_argument("--threads", type=int, default=None, help="torch and deadspec threads")
    ap.add_argument("--csv", default=None)
    ap.add_argument("--smoke", action="store_true", help="tiny models, 2 steps (CI bit-rot check)")
    ap.add_argument("--isolate", action="store_true",
                    help="time every method in a fresh process of this script, so that none "
                    "inherits another's heap, thread pools or state")
    ap.add_argument("--only", default=None, help=argparse.SUPPRESS)  # (MODEL::METHOD, --isolate)
    ap.add_argument("--after", choices=["torch", "none"], default="torch",
                    help="before each timed step: a torch matmul, as training's backward pass "
                    "(default), or nothing (steps back to back)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
        deadspec.set_num_threads(args.threads)
    repeat = 2 if args.smoke else args.repeat
    rounds = 1 if args.smoke else args.rounds
    torch.manual_seed(0)  # (the same models in every process of --isolate)
    models = (
        {"mlp 4x64": _mlp(64, 4), "transformer 2x32": _transformer(32, 2)}
        if args.smoke
        else {"mlp 4x1024": _mlp(1024, 4), "transformer 2x256": _transformer(256, 2)}
    )
    if args.only:
        mname, oname = args.only.split("::")
        times = _time_step(_optimizers(models[mname])[oname], models[mname], repeat, args.after)
        print("#times " + json.dumps(times))
        return 0
    print(f"# torch {torch.__version__} ({torch.get_num_threads()} threads), deadspec "
          f"{deadspec.__version__} ({deadspec.num_threads()} threads), load {os.getloadavg()}, "
          f"before each step: {'a torch matmul' if args.after == 'torch' else 'nothing'}")
    rows = []
    for mname, model in models.items():
        n_params = sum(p.numel() for p in model.parameters())
        rate = _stream_add_rate(model, repeat)
        print(f"# {mname}: torch.add stream rate {rate / 1e9:.1f} GB/s")
        first = len(rows)
        timed: dict[str, list[float]] = {}
        skipped: set[str] = set()
        for _ in range(rounds):  # (rounds interleaved: a slow spell of the machine hits all)
            for oname, make in _optimizers(model).items():
                if oname in skipped:
                    continue
                try:
                    times = (_time_isolated(argv, mname, oname) if args.isolate
                             else _time_step(make, model, repeat, args.after))
                except (RuntimeError, ValueError, TypeError) as exc:  # e.g. no fused AdamW
                    print(f"# {mname}: {oname} skipped: {exc}", file=sys.stderr)
                    skipped.add(oname)
                    continue
                timed.setdefault(oname, []).extend(times)
        for oname, times in timed.items():
            best, med = min(times), statistics.median(times)
            traffic = _traffic(model, oname)
            bound = None if traffic is None else traffic / rate
            rows.append({"model": mname, "params": n_params, "optimizer": oname,
                         "best_ms": best * 1e3, "median_ms": med * 1e3, "vs_fused": None,
                         "traffic_mb": None if traffic is None else traffic / 1e6,
                         "bound_ms": None if bound is None else bound * 1e3,
                         "vs_bound": None if bound is None else best / bound})
        base = next((r["best_ms"] for r in rows[first:] if r["optimizer"] == "AdamW (fused)"),
                    None)
        for r in rows[first:]:
            r["vs_fused"] = None if base is None else r["best_ms"] / base

    def fmt(v: float | None, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    header = (f"{'method':<18} {'model':<18} {'params':>9} {'best ms':>9} {'median ms':>10} "
              f"{'vs fused':>9} {'MB':>7} {'bound ms':>9} {'/bound':>7}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['optimizer']:<18} {r['model']:<18} {r['params']:>9} {r['best_ms']:>9.2f} "
              f"{r['median_ms']:>10.2f} {fmt(r['vs_fused'], '.2f'):>9} "
              f"{fmt(r['traffic_mb'], '.1f'):>7} {fmt(r['bound_ms'], '.2f'):>9} "
              f"{fmt(r['vs_bound'], '.2f'):>7}")
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
