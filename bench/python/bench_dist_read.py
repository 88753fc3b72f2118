"""Benchmark: deadspec.read over torch.distributed (2 gloo ranks on loopback) against one process,
and the bytes the ranks exchange against gathering per-sample gradients (issue #14, item 5).

Model: one ``nn.Linear(w, w)`` with bias (default w = 512), float32 (``--dtype``), T = 1 (plain
N × w inputs), random float targets, read's default regression loss ``0.5·‖y − f‖²`` per sample
(Gaussian NLL, σ = 1). Both sides are read: the activation side (the Linear's output: an h×h
running Gram when N ≥ w, else the rows) and the Fisher side (the per-sample weight and bias
gradients, through their factors a and δ: never the gradients themselves).

Timed cases, each in freshly spawned processes (``--n`` samples, default 8192; the same x, y and
weights in every case, from fixed seeds):

* ``1 rank x 1 thread`` / ``1 rank x 2 threads``: ``deadspec.read(model, x, targets=y)`` on all
  N samples, with ``torch.set_num_threads(k)`` and ``deadspec.set_num_threads(k)`` (the core's
  OpenBLAS), k = 1, 2;
* ``2 ranks x 1 thread``: gloo on loopback, ``group=dist.group.WORLD``, each rank reads its own
  N/2 samples, 1 torch and 1 core thread per rank (2 cores in all, as the 2-thread case).

Each case: one read at a small size (libraries, thread pools), ``--warmup`` reads at size (1),
then ``--repeat`` timed reads (3); the table gives their median and best (2 ranks: the ranks meet
at a barrier before each read, and a read's time is the slower rank's). ``samples/s`` = N / median.
``bytes sent`` is ``Reading.bytes_sent`` (the tensors and arrays of every rank's payload);
``pickled`` is what the object collectives serialised in that read (every rank's
``all_gather_object`` payload, and rank 0's broadcast of the reading), counted by wrapping
``torch.distributed.all_gather_object`` / ``broadcast_object_list`` in the worker (pickling a
second time costs a few ms per read); ``gather s`` is rank 0's median time inside
``all_gather_object`` (it includes waiting for the slower rank's forward/backward).

Bytes against the naive route (gathering per-sample gradients): N·p·(element size), with
p = w² + w and the model's dtype, computed for ``--n``; at ``--n-naive`` (256) it is also measured
by all-gathering torch.func ``vmap(grad)`` per-sample gradients over the 2 ranks with
``all_gather_object`` (the collective deadspec uses), counting the tensor bytes received. The
ratio is naive / deadspec (issue's target: ≥ 100× less for Linear(512, 512) at T = 1).

Checks (the script exits non-zero when one fails): the 2-rank reading equals the one-process
reading at ``--n`` (max |Δμ|/μ₁ over every side: ≤ 1e-10 in float64, ≤ 1e-5 in float32, where a
shard's forward pass may round differently from the whole batch's); at ``--n-naive``, in float64,
the 2-rank reading against rank 0's one-process reading of the whole batch, to 1e-10 (and
the same at ``--n-check``, 1024, where the activation side merges the ranks' running Grams);
the measured naive bytes equal the formula; the Fisher eigenvalues from the gathered per-sample
gradients (Γ Γᵀ / N) equal deadspec's Fisher reading (≤ 1e-4 of μ₁, float32 Γ Γᵀ).

Run ``python bench/python/bench_dist_read.py --help``; the numbers in bench/README.md came from
``python bench/python/bench_dist_read.py --csv dist_read.csv``.
"""

from __future__ import annotations

import os
import pickle
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

# Shared harness (bench/python/_harness.py; this folder is on sys.path).
from _harness import environment, parser, print_env, print_table, write_csv

SIDES = ("activation", "fisher")

# ---------------------------------------------------------------------------------------------
# Worker side (runs in spawned processes)
# ---------------------------------------------------------------------------------------------


def _problem(width: int, dtype_name: str, n: int):
    import torch

    dtype = getattr(torch, dtype_name)
    torch.manual_seed(0)
    model = torch.nn.Linear(width, width).to(dtype).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, width, generator=g, dtype=dtype)
    y = torch.randn(n, width, generator=g, dtype=dtype)
    return model, x, y


def _shard(n: int, rank: int, world: int) -> slice:
    """Rank r's rows of n, contiguous and in rank order (sizes differ by at most one)."""
    sizes = [n // world + (1 if r < n % world else 0) for r in range(world)]
    start = sum(sizes[:rank])
    return slice(start, start + sizes[rank])


def _spectra(reading) -> dict[str, np.ndarray]:
    out = {}
    for name in reading:
        for side in SIDES:
            s = getattr(reading[name], side)
            if s is not None:
                out[f"{name or '(model)'}/{side}"] = np.asarray(s.eigenvalues, dtype=np.float64)
    return out


def _actives(reading) -> dict[str, int]:
    return {
        f"{name or '(model)'}/{side}": int(getattr(reading[name], side).active)
        for name in reading
        for side in SIDES
        if getattr(reading[name], side) is not None
    }


class _Collectives:
    """Wraps torch.distributed's object collectives: time in each and the pickled size of this
    rank's objects (what ``all_gather_object`` / ``broadcast_object_list`` serialise)."""

    def __init__(self) -> None:
        import torch.distributed as dist

        self.dist = dist
        self.orig = (dist.all_gather_object, dist.broadcast_object_list)
        self.reset()

    def reset(self) -> None:
        self.gather_s = 0.0
        self.gathered = 0
        self.broadcast = 0

    def __enter__(self) -> _Collectives:
        gather, bcast = self.orig

        def all_gather_object(out, obj, group=None):
            self.gathered += len(pickle.dumps(obj))
            t0 = time.perf_counter()
            try:
                return gather(out, obj, group=group)
            finally:
                self.gather_s += time.perf_counter() - t0

        def broadcast_object_list(objs, src=None, group=None, **kw):
            if self.dist.get_rank() == src:
                self.broadcast += sum(len(pickle.dumps(o)) for o in objs)
            return bcast(objs, src=src, group=group, **kw)

        self.dist.all_gather_object = all_gather_object
        self.dist.broadcast_object_list = broadcast_object_list
        return self

    def __exit__(self, *exc: Any) -> None:
        self.dist.all_gather_object, self.dist.broadcast_object_list = self.orig


def _timed_reads(rank: int, world: int, cfg: dict) -> dict:
    """``--warmup`` + ``--repeat`` reads of the N samples (this rank's shard of them)."""
    import torch.distributed as dist

    import deadspec

    model, x, y = _problem(cfg["width"], cfg["dtype"], cfg["n"])
    kw = {"group": dist.group.WORLD} if world > 1 else {}

    def read(n: int):
        sl = _shard(n, rank, world)
        return deadspec.read(model, x[:n][sl], targets=y[:n][sl], **kw)

    read(min(64, cfg["n"]))  # libraries, thread pools
    for _ in range(cfg["warmup"]):
        read(cfg["n"])
    times, gather_s, pickled = [], [], []
    coll = _Collectives() if world > 1 else None
    for _ in range(cfg["repeat"]):
        if coll is not None:
            coll.reset()
            dist.barrier()
            with coll:
                t0 = time.perf_counter()
                r = read(cfg["n"])
                times.append(time.perf_counter() - t0)
            gather_s.append(coll.gather_s)
            pickled.append((coll.gathered, coll.broadcast))
        else:
            t0 = time.perf_counter()
            r = read(cfg["n"])
            times.append(time.perf_counter() - t0)
    return {
        "times": times,
        "gather_s": gather_s,
        "pickled": pickled,
        "bytes_sent": r.bytes_sent,
        "n_samples": r.n_samples,
        "mu": _spectra(r),
        "active": _actives(r),
    }


def _naive_gather(rank: int, world: int, cfg: dict) -> dict:
    """At ``n_naive``: gather torch.func per-sample gradients over the ranks (the naive route),
    read the same batch with deadspec over the group, and (float64) check that reading against
    rank 0's one-process reading of the whole batch."""
    import torch
    import torch.distributed as dist
    from torch.func import functional_call, grad, vmap

    import deadspec

    n = cfg["n_naive"]
    sl = _shard(n, rank, world)
    model, x, y = _problem(cfg["width"], cfg["dtype"], n)
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss_one(p, xi, yi):  # read's default regression loss, 0.5·‖y − f‖²
        f = functional_call(model, p, (xi.unsqueeze(0),))
        return 0.5 * ((f - yi.unsqueeze(0)) ** 2).sum()

    t0 = time.perf_counter()
    g = vmap(grad(loss_one), in_dims=(None, 0, 0))(params, x[sl], y[sl])
    vmap_s = time.perf_counter() - t0
    obj = {k: g[k] for k in ("weight", "bias")}
    pickled = len(pickle.dumps(obj))
    parts: list[Any] = [None] * world
    dist.barrier()
    t0 = time.perf_counter()
    dist.all_gather_object(parts, obj)
    gather_s = time.perf_counter() - t0
    received = sum(t.numel() * t.element_size() for p in parts for t in p.values())
    p_count = sum(t[0].numel() for t in obj.values())
    elem = obj["weight"].element_size()

    r = deadspec.read(model, x[sl], targets=y[sl], group=dist.group.WORLD)
    out: dict[str, Any] = {
        "vmap_s": vmap_s,
        "gather_s": gather_s,
        "received": received,
        "pickled": pickled,
        "p": p_count,
        "elem": elem,
        "bytes_sent": r.bytes_sent,
    }
    if rank == 0:
        gamma = torch.cat([torch.cat([p["weight"].flatten(1), p["bias"]], 1) for p in parts], 0)
        del parts, g, obj
        k = (gamma @ gamma.T / n).double()
        mu_naive = np.sort(torch.linalg.eigvalsh(k).numpy())[::-1]
        mu_ds = _spectra(r)["(model)/fisher"]
        out["naive_fisher_err"] = float(np.abs(mu_naive - mu_ds).max() / mu_ds[0])
    # the float64 checks: the reading over the group against one process's of the whole batch,
    # at n (rows kept when n < w) and at n_check (merged running Grams when n_check >= w)
    out["f64"] = {}
    for m in (n, cfg["n_check"]):
        m64, x64, y64 = _problem(cfg["width"], "float64", m)
        sm = _shard(m, rank, world)
        r64 = deadspec.read(m64, x64[sm], targets=y64[sm], group=dist.group.WORLD)
        if rank == 0:
            ref = deadspec.read(m64, x64, targets=y64)
            out["f64"][m] = {"group": _spectra(r64), "single": _spectra(ref),
                             "active_group": _actives(r64), "active_single": _actives(ref)}
    return out


def _two_ranks(rank: int, world: int, cfg: dict) -> dict:
    out = {"naive": _naive_gather(rank, world, cfg)}
    out["timed"] = _timed_reads(rank, world, cfg)
    return out


def _entry(rank: int, job: Any, world: int, threads: int, init: str, outs: list, cfg: dict):
    import torch
    import torch.distributed as dist

    import deadspec

    torch.set_num_threads(threads)
    deadspec.set_num_threads(threads)
    if world == 1:
        torch.save(job(rank, world, cfg), outs[rank])
        return
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    try:
        torch.save(job(rank, world, cfg), outs[rank])
        dist.barrier()  # every rank done before any leaves
    finally:
        dist.destroy_process_group()


def _spawn(job: Any, world: int, threads: int, cfg: dict, timeout: float) -> list[dict]:
    """Run ``job(rank, world, cfg)`` on ``world`` spawned processes; each rank's result."""
    import torch
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        init = str(Path(tmp) / "init")
        outs = [str(Path(tmp) / f"rank{r}.pt") for r in range(world)]
        ctx = mp.start_processes(
            _entry, args=(job, world, threads, init, outs, cfg), nprocs=world, join=False,
            start_method="spawn",
        )
        deadline = time.monotonic() + timeout
        while not ctx.join(timeout=1.0):
            if time.monotonic() > deadline:
                for p in ctx.processes:
                    p.kill()
                raise RuntimeError(f"{world} rank(s) did not finish within {timeout:.0f} s")
        return [torch.load(o, weights_only=False) for o in outs]


# ---------------------------------------------------------------------------------------------
# Main side
# ---------------------------------------------------------------------------------------------


def _max_rel(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    """max over sides of max|Δμ|/μ₁ (inf when the sides or sizes differ)."""
    if a.keys() != b.keys():
        return float("inf")
    err = 0.0
    for k in a:
        if a[k].shape != b[k].shape:
            return float("inf")
        err = max(err, float(np.abs(a[k] - b[k]).max() / max(abs(b[k][0]), 1e-300)))
    return err


def _max_rel_each(a: dict[str, np.ndarray], b: dict[str, np.ndarray], cut: float) -> float:
    """max |Δμ_i|/μ_i over the eigenvalues μ_i > cut·μ₁ (each eigenvalue against itself)."""
    err = 0.0
    for k in a:
        keep = b[k] > cut * b[k][0]
        err = max(err, float((np.abs(a[k] - b[k])[keep] / b[k][keep]).max()))
    return err


def _timing_row(method: str, ranks: int, threads: int, res: dict, cfg: dict, ref) -> dict:
    t = res["times"]
    row = {
        "method": method,
        "ranks": ranks,
        "threads_per_rank": threads,
        "n": cfg["n"],
        "width": cfg["width"],
        "dtype": cfg["dtype"],
        "median_s": statistics.median(t),
        "best_s": min(t),
        "runs": len(t),
        "samples_per_s": cfg["n"] / statistics.median(t),
        "bytes_sent": res["bytes_sent"],
        "mu_err_vs_1x1": _max_rel(res["mu"], ref["mu"]),
        "active_same_as_1x1": res["active"] == ref["active"],
    }
    if res["pickled"]:
        row["pickled_gathered"] = res["pickled"][-1][0]
        row["pickled_broadcast"] = res["pickled"][-1][1]
        row["gather_s"] = statistics.median(res["gather_s"])
    return row


def _bytes_rows(cfg: dict, two: list[dict], timed: dict) -> list[dict]:
    nv = two[0]["naive"]
    p, elem, w = nv["p"], nv["elem"], cfg["width"]

    def deadspec_formula(n: int) -> int:  # a and δ, plus the activation side's payload
        act = n * w * elem if n < w else 2 * (w + w * w) * 8  # rows, or per rank mean + Gram
        return n * 2 * w * elem + act

    rows = []
    for n, sent in ((cfg["n"], timed["bytes_sent"]), (cfg["n_naive"], nv["bytes_sent"])):
        naive = n * p * elem
        rows.append({"method": "deadspec (Reading.bytes_sent)", "n": n, "bytes": sent,
                     "formula": deadspec_formula(n), "ratio": naive / sent})
        rows.append({"method": "naive: per-sample grads, N*p*elem", "n": n, "bytes": naive,
                     "formula": naive, "ratio": 1.0})
    n = cfg["n_naive"]
    rows.append({"method": "naive: measured all_gather_object", "n": n,
                 "bytes": sum(o["naive"]["received"] for o in two[:1]),
                 "formula": n * p * elem, "ratio": None,
                 "pickled": sum(o["naive"]["pickled"] for o in two),
                 "vmap_s": max(o["naive"]["vmap_s"] for o in two),
                 "gather_s": max(o["naive"]["gather_s"] for o in two)})
    return rows


def _checks(cfg: dict, two: list[dict], timed_rows: list[dict], bytes_rows: list[dict]):
    tol = 1e-10 if cfg["dtype"] == "float64" else 1e-5
    nv = two[0]["naive"]
    measured = bytes_rows[-1]
    checks = [
        {"method": f"2 ranks vs 1 rank x 1 thread, N={cfg['n']} {cfg['dtype']}: max|dmu|/mu1",
         "value": timed_rows[-1]["mu_err_vs_1x1"], "tol": tol},
    ]
    for m, f64 in nv["f64"].items():
        act = "rows" if m < cfg["width"] else "Grams"
        checks += [
            {"method": f"2 ranks vs 1 process, N={m} float64 ({act}): max|dmu|/mu1",
             "value": _max_rel(f64["group"], f64["single"]), "tol": 1e-10},
            {"method": f"2 ranks vs 1 process, N={m} float64: max|dmu_i|/mu_i, mu_i > 1e-8 mu1",
             "value": _max_rel_each(f64["group"], f64["single"], 1e-8), "tol": None},
            {"method": f"2 ranks vs 1 process, N={m} float64: active counts differ",
             "value": float(f64["active_group"] != f64["active_single"]), "tol": 0.0},
        ]
    checks += [
        {"method": f"naive measured bytes - N*p*elem, N={cfg['n_naive']}",
         "value": float(measured["bytes"] - measured["formula"]), "tol": 0.0},
        {"method": f"naive Gamma Gamma^T/N vs deadspec fisher, N={cfg['n_naive']}: |dmu|/mu1",
         "value": nv["naive_fisher_err"], "tol": 1e-4},
    ]
    for c in checks:
        c["ok"] = "-" if c["tol"] is None else ("yes" if abs(c["value"]) <= c["tol"] else "NO")
    return checks


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("--n", type=int, default=8192, help="samples N of the timed read (8192)")
    p.add_argument("--width", type=int, default=512, help="Linear(w, w) width (default 512)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--n-naive", type=int, default=256,
                   help="N at which the per-sample-gradient gather is measured (default 256)")
    p.add_argument("--n-check", type=int, default=1024,
                   help="second N of the float64 2-rank check (default 1024: merged Grams)")
    p.add_argument("--repeat", type=int, default=3, help="timed reads per case (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed reads at size first (1)")
    p.add_argument("--timeout", type=float, default=3600.0,
                   help="seconds before a case's processes are killed (a hang guard; 3600)")
    p.add_argument("--csv", metavar="OUT.csv", help="also write the rows as CSV")
    p.add_argument("--smoke", action="store_true",
                   help="smallest sizes, one run each: checks the script works")
    args = p.parse_args(argv)
    if args.smoke:
        args.n, args.width, args.n_naive, args.n_check = 64, 16, 32, 8
        args.repeat, args.warmup = 1, 0
    if min(args.n, args.n_naive, args.n_check) < 2 or args.repeat < 1 or args.warmup < 0:
        p.error("need --n, --n-naive, --n-check >= 2, --repeat >= 1, --warmup >= 0, got "
                f"{vars(args)}")
    cfg = {"n": args.n, "width": args.width, "dtype": args.dtype, "n_naive": args.n_naive,
           "n_check": args.n_check, "repeat": args.repeat, "warmup": args.warmup}

    env = environment()
    print_env(env)
    w = args.width
    print(f"# Linear({w}, {w}) with bias, T = 1, {args.dtype}, loss 0.5*|y - f|^2 per sample, "
          f"both sides; N = {args.n}; {args.warmup} warm-up + {args.repeat} timed reads per case")

    two = _spawn(_two_ranks, 2, 1, cfg, args.timeout)
    single1 = _spawn(_timed_reads, 1, 1, cfg, args.timeout)[0]
    single2 = _spawn(_timed_reads, 1, 2, cfg, args.timeout)[0]
    timed = dict(two[0]["timed"])  # rank 0's, with each read's time the slower rank's
    timed["times"] = [max(ts) for ts in zip(*(o["timed"]["times"] for o in two))]
    # every rank's pickled payloads (gathered, broadcast), summed per read
    timed["pickled"] = [tuple(map(sum, zip(*ps))) for ps in zip(*(o["timed"]["pickled"]
                                                                   for o in two))]
    timed_rows = [
        _timing_row("deadspec.read, 1 rank x 1 thread", 1, 1, single1, cfg, single1),
        _timing_row("deadspec.read, 1 rank x 2 threads", 1, 2, single2, cfg, single1),
        _timing_row("deadspec.read, 2 ranks x 1 thread (gloo)", 2, 1, timed, cfg, single1),
    ]
    print()
    print_table(timed_rows, [
        ("method", "method", "s"), ("n", "N", "d"), ("median_s", "median s", ".3f"),
        ("best_s", "best s", ".3f"), ("runs", "runs", "d"),
        ("samples_per_s", "samples/s", ".0f"), ("bytes_sent", "bytes sent", "d"),
        ("pickled_gathered", "pickled gathered", "d"),
        ("pickled_broadcast", "pickled bcast", "d"), ("gather_s", "gather s", ".3f"),
        ("mu_err_vs_1x1", "max|dmu|/mu1 vs 1x1", ".1e"),
    ])
    print("# 2 ranks: each read's time is the slower rank's; gather s = rank 0 inside "
          "all_gather_object (median).")

    bytes_rows = _bytes_rows(cfg, two, timed)
    print()
    print_table(bytes_rows, [
        ("method", "bytes (all ranks' payloads)", "s"), ("n", "N", "d"), ("bytes", "bytes", "d"),
        ("formula", "formula", "d"), ("ratio", "naive/deadspec", ".1f"),
        ("pickled", "pickled", "d"), ("vmap_s", "vmap s", ".3f"), ("gather_s", "gather s", ".3f"),
    ])
    print(f"# p = {w}*{w} + {w} = {two[0]['naive']['p']}; deadspec formula: N*(d_in + d_out)*elem "
          "(a, delta) + the activation side (N < w: rows N*w*elem; else mean + Gram, "
          "(w + w^2)*8 per rank)")

    checks = _checks(cfg, two, timed_rows, bytes_rows)
    print()
    print_table(checks, [("method", "check", "s"), ("value", "value", ".3g"),
                         ("tol", "tolerance", ".0e"), ("ok", "ok", "s")])
    if args.csv:
        rows = [{"table": "timing", **r} for r in timed_rows]
        rows += [{"table": "bytes", **r} for r in bytes_rows]
        rows += [{"table": "check", **r} for r in checks]
        write_csv(args.csv, rows, env)
    bad = [c["method"] for c in checks if c["ok"] == "NO"]
    if bad:
        print(f"FAILED: {bad}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
