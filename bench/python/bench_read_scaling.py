"""Benchmark: how the cost of ``deadspec.read`` grows with N and with layer width (issue #16).

One hidden layer, ``Linear(w, w) → ReLU → Linear(w, 10)``, float32, cross-entropy; ``read`` of
the first layer, both sides (activation Gram w × w of its input, Fisher-Gram N × N by the
Hadamard identity at T = 1, and both spectra). Two sweeps: N ∈ {256, …, 16384} at w = 512, and
w ∈ {128, …, 2048} at N = 2048. Every point runs in a fresh child process, which reports the
read's wall time (best of ``--repeat`` after a warm-up, or one cold run for calls over half the
``--budget``), its peak RSS increase (VmHWM) and where the time went: the core's calls timed by
cProfile (``spectrum``, ``fisher_gram``, ``gram``: the activation Gram's accumulation; the rest is
capture: forward, backward, hooks, copies). The exponents are least-squares slopes of log time
and log memory on log N (log w) over the points with N ≥ 1024 (w ≥ 256), where the leading term
shows.

    python bench/python/bench_read_scaling.py [--ns 256,...,16384] [--widths 128,...,2048]
        [--png read_scaling.png] [--csv out.csv] [--smoke]
"""

from __future__ import annotations

import argparse
import cProfile
import csv
import json
import pstats
import sys
import time

import numpy as np

from _harness import (
    environment,
    parser,
    peak_mib,
    print_env,
    print_table,
    report,
    reset_peak,
    run_child,
    write_csv,
)

PARTS = ("spectrum", "fisher_gram", "gram")


def _model(w: int, n: int):
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(w, w), nn.ReLU(), nn.Linear(w, 10)).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, w, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return model, x, y


def _child(n: int, w: int, repeat: int, budget: float) -> dict:
    from torch import nn

    import deadspec

    ce = nn.CrossEntropyLoss(reduction="none")
    m0, x0, y0 = _model(64, 128)  # warm libraries and pools at a small size
    deadspec.read(m0, x0, targets=y0, loss_fn=ce, layers="0")
    model, x, y = _model(w, n)

    def run() -> float:
        t0 = time.perf_counter()
        deadspec.read(model, x, targets=y, loss_fn=ce, layers="0")
        return time.perf_counter() - t0

    how, base = reset_peak()
    prof = cProfile.Profile()
    prof.enable()
    first = run()  # warm-up at size, profiled: where the time goes
    prof.disable()
    times = [first] if first >= budget / 2 else [run() for _ in range(repeat)]
    peak = peak_mib(how, base)
    parts = dict.fromkeys(PARTS, 0.0)
    for (_, _, name), row in pstats.Stats(prof).stats.items():  # type: ignore[attr-defined]
        if "deadspec._core" in name or "_core." in name:
            key = name.strip("<>").split(" ")[-1].split(".")[-1]
            key = {"add": "gram", "merge": "gram"}.get(key, key)  # GramAccumulator's calls
            if key in parts:
                parts[key] += row[3]  # cumulative time of the built-in call
    parts["capture"] = max(first - sum(parts.values()), 0.0)
    return {"n": n, "w": w, "best_s": min(times), "peak_mib": peak, "cold": len(times) == 1,
            **{f"{k}_frac": v / first for k, v in parts.items()}}


def _run_point(n: int, w: int, args) -> dict:
    cmd = [sys.executable, __file__, "--_child", json.dumps([n, w, args.repeat, args.budget])]
    return run_child(cmd, f"bench_read_scaling: point N={n}, w={w}")


def _point_from_csv(r: dict[str, str]) -> dict:
    """A point as _child returned it, from a row of the CSV this script writes."""
    out: dict = {"n": int(r["n"]), "w": int(r["w"]), "best_s": float(r["best_s"]),
                 "peak_mib": float(r["peak_mib"]), "cold": r["cold"] == "True"}
    for part in (*PARTS, "capture"):
        out[f"{part}_frac"] = float(r[f"{part}_frac"])
    return out


def _slope(xs: list[float], ys: list[float]) -> float:
    if len(xs) < 2:
        return float("nan")
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def _dominant(r: dict) -> str:
    fr = {k: r.get(f"{k}_frac") for k in (*PARTS, "capture")}
    if any(v is None for v in fr.values()):
        return "-"
    k = max(fr, key=lambda q: fr[q])
    return f"{k} {100 * fr[k]:.0f}%"


def _plot(path: str, sweeps: dict[str, list[dict]]) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    for i, (key, label) in enumerate((("n", "N (samples)"), ("w", "layer width w"))):
        rows = sweeps[key]
        if not rows:
            continue
        ax = fig.add_subplot(1, 2, i + 1)
        xs = [r[key] for r in rows]
        ax.loglog(xs, [r["best_s"] for r in rows], "o-", label="read time (s)")
        for part in (*PARTS, "capture"):
            ax.loglog(xs, [max(r[f"{part}_frac"] * r["best_s"], 1e-5) for r in rows], ":",
                      alpha=0.8, label=f"  {part} (s)")
        ax.loglog(xs, [max(r["peak_mib"], 1e-3) / 1024 for r in rows], "s--",
                  label="peak memory (GiB)")
        t, m = _fit(rows, key)
        other = "w = " + str(rows[0]["w"]) if key == "n" else "N = " + str(rows[0]["n"])
        ax.set_xlabel(f"{label} ({other})")
        ax.set_xticks(xs, [str(x) for x in xs], rotation=45, fontsize=7)
        ax.minorticks_off()
        ax.set_title(f"deadspec.read: time ~ {key}^{t:.2f}, memory ~ {key}^{m:.2f}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.savefig(path, dpi=110)


def _fit(rows: list[dict], key: str) -> tuple[float, float]:
    lo = 1024 if key == "n" else 256
    sel = [r for r in rows if r[key] >= lo]
    return (_slope([r[key] for r in sel], [r["best_s"] for r in sel]),
            _slope([r[key] for r in sel], [max(r["peak_mib"], 1e-3) for r in sel]))


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("--ns", default="256,512,1024,2048,4096,8192,16384")
    p.add_argument("--widths", default="128,256,512,1024,2048")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--budget", type=float, default=20.0)
    p.add_argument("--png", default="read_scaling.png")
    p.add_argument("--csv", default=None)
    p.add_argument("--smoke", action="store_true", help="tiny sweeps, one run")
    p.add_argument("--plot-csv", default=None,
                   help="comma-separated CSVs of earlier runs: merge them, fit and plot only")
    p.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._child:
        n, w, repeat, budget = json.loads(args._child)
        report(_child(n, w, repeat, budget))
        return 0
    if args.smoke:
        args.ns, args.widths, args.repeat = "128,256,512", "64,128,256", 1
    env = environment()
    print_env(env)
    sweeps: dict[str, list[dict]] = {"n": [], "w": []}
    if args.plot_csv:
        args.ns = args.widths = ""
        for path in args.plot_csv.split(","):
            with open(path, newline="") as f:
                for r in csv.DictReader(f):
                    sweeps[r["sweep"]].append(_point_from_csv(r))
        for key in sweeps:
            sweeps[key].sort(key=lambda r, k=key: r[k])
    for n in (int(v) for v in args.ns.split(",") if v):
        sweeps["n"].append(_run_point(n, 512 if not args.smoke else 64, args))
        print(f"# N={n}: {sweeps['n'][-1]['best_s']:.3f} s", flush=True)
    for w in (int(v) for v in args.widths.split(",") if v):
        sweeps["w"].append(_run_point(2048 if not args.smoke else 256, w, args))
        print(f"# w={w}: {sweeps['w'][-1]['best_s']:.3f} s", flush=True)
    rows = [{"sweep": k, **r, "dominant": _dominant(r)} for k in ("n", "w") for r in sweeps[k]]
    print_table(rows, [("sweep", "sweep", ""), ("n", "N", "d"), ("w", "w", "d"),
                       ("best_s", "read s", ".3f"), ("peak_mib", "peak MiB", ".1f"),
                       ("capture_frac", "capture", ".2f"), ("gram_frac", "gram", ".2f"),
                       ("fisher_gram_frac", "fisher_gram", ".2f"),
                       ("spectrum_frac", "spectrum", ".2f"), ("dominant", "dominant", "")])
    for key in ("n", "w"):
        t, m = _fit(sweeps[key], key)
        print(f"# fitted exponents against {key}: time ~ {key}^{t:.2f}, "
              f"peak memory ~ {key}^{m:.2f}")
    _plot(args.png, sweeps)
    print(f"# plot: {args.png}")
    if args.csv:
        write_csv(args.csv, rows, env)
    return 0


if __name__ == "__main__":
    sys.exit(main())
