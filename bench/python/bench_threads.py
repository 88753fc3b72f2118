"""Benchmark: the core's thread default against 1 thread and all threads (issue #16, "Threads").

Each mode runs in a fresh child process: ``1`` (DEADSPEC_NUM_THREADS=1), ``all``
(DEADSPEC_NUM_THREADS=<cpu count>) and ``default`` (nothing set: what a user gets). Every child runs
the same cases, each right after torch work in the same process (torch's OpenMP pool is warm and
its threads may still be spinning), best of ``--repeat`` (7):

* ``eig-after-torch``: 8 × (an MLP forward + backward in torch, then ``sym_eig`` of a 1024² matrix);
* ``eig 2048`` / ``eigh 1024``: ``sym_eig`` values of a 2048², values + vectors of a 1024²;
* ``gram 8192x1024`` (float64), ``fisher N=1024 T=1`` (Linear(512, 512) factors, float32);
* ``read mlp``: ``deadspec.read`` of bench_read.py's 4-layer 512-wide MLP at N = 1024;
* ``read transformer``: ``deadspec.read`` of bench_transformer.py's modular-addition transformer;
* ``monitor loop``: 10 SGD steps of the MLP, each followed by an activation Gram and its spectrum.

``--load L`` (default ``0,1``) repeats everything with L other processes spinning on the CPU, as
on a shared machine. The verdict: default / min(1 thread, all threads) ≤ 1.2 in every case.

The three modes run in turn ``--rounds`` times (2), and each case keeps its best over the rounds:
the VM of issue #16 ran compute for spells of seconds to minutes at about half speed, so modes
timed one after the other once could differ by 1.5× with the same thread count.

    python bench/python/bench_threads.py [--load 0,1] [--repeat 7] [--rounds 2] [--csv out.csv]
                                         [--smoke]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import numpy as np

from _harness import environment, parser, print_env, print_table, report, run_child, write_csv

MODES = ("1", "all", "default")
TARGET = 1.2


def _mlp(width: int):
    import torch
    from torch import nn

    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(3):
        layers += [nn.Linear(width, width), nn.ReLU()]
    layers.append(nn.Linear(width, 10))
    return nn.Sequential(*layers)


def _cases(small: bool) -> dict:
    import torch
    from torch import nn

    import deadspec
    from deadspec.models_transformer import ModAddTransformer, modadd_data

    s = 4 if small else 1
    rng = np.random.default_rng(0)

    def psd(d: int) -> np.ndarray:
        x = rng.standard_normal((d, d))
        return x @ x.T / d

    a1024, a2048 = psd(1024 // s), psd(2048 // s)
    xg = rng.standard_normal((8192 // s, 1024 // s))
    fa = torch.randn(1024 // s, 513 // s)
    fd = torch.randn(1024 // s, 512 // s)
    mlp = _mlp(512 // s)
    xm = torch.randn(1024 // s, 512 // s)
    ym = torch.randint(0, 10, (1024 // s,))
    ce = nn.CrossEntropyLoss(reduction="none")
    tf = ModAddTransformer(p=113, d_model=128 // s, n_heads=4).eval()
    xt, yt = modadd_data(113, 512 // s, seed=1)
    opt = torch.optim.SGD(mlp.parameters(), lr=1e-3)

    def torch_work() -> None:
        loss = nn.functional.cross_entropy(mlp(xm), ym)
        loss.backward()
        mlp.zero_grad()

    def eig_after_torch() -> None:
        for _ in range(8):
            torch_work()
            deadspec.sym_eig(a1024)

    def monitor_loop() -> None:
        for _ in range(10):
            opt.zero_grad()
            h = mlp[:2](xm)
            nn.functional.cross_entropy(mlp[2:](h), ym).backward()
            opt.step()
            deadspec.spectrum(deadspec.gram(h.detach()))

    return {
        "eig-after-torch": eig_after_torch,
        "eig 2048": lambda: deadspec.sym_eig(a2048),
        "eigh 1024": lambda: deadspec.sym_eig(a1024, vectors=True),
        "gram 8192x1024": lambda: deadspec.gram(xg),
        "fisher N=1024 T=1": lambda: deadspec.fisher_gram(fa, fd, bias=False),
        "read mlp": lambda: deadspec.read(mlp.eval(), xm, targets=ym, loss_fn=ce),
        "read transformer": lambda: deadspec.read(tf, xt, targets=yt),
        "monitor loop": monitor_loop,
        "_torch": torch_work,
    }


def _child(repeat: int, small: bool) -> None:
    import deadspec

    cases = _cases(small)
    warm = cases.pop("_torch")
    out = {"threads": deadspec.num_threads()}
    for name, fn in cases.items():
        fn()  # warm-up at size
        best = float("inf")
        for _ in range(repeat):
            warm()  # torch's pool has just run, as in a training script
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
        out[name] = best
    report(out)


def _spinners(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def _run_mode(mode: str, load: int, args) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENBLAS_", "DEADSPEC_NUM"))}
    if args.thread_timeout:
        env["OPENBLAS_THREAD_TIMEOUT"] = str(args.thread_timeout)
    if mode != "default":
        env["DEADSPEC_NUM_THREADS"] = str(os.cpu_count() if mode == "all" else 1)
    cmd = [sys.executable, __file__, "--_child", "--repeat", str(args.repeat)]
    if args.smoke:
        cmd.append("--smoke")
    spin = _spinners(load)
    try:
        return run_child(cmd, f"bench_threads: child ({mode}, load {load})", env)
    finally:
        for p in spin:
            p.kill()
            p.wait()


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("--load", default="0,1", help="other busy processes, comma list (default 0,1)")
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--rounds", type=int, default=2,
                   help="times the three modes are run in turn (best of all rounds per case)")
    p.add_argument("--thread-timeout", type=int, default=0,
                   help="OPENBLAS_THREAD_TIMEOUT for the children (2^n cycles of busy-waiting)")
    p.add_argument("--csv", default=None)
    p.add_argument("--smoke", action="store_true", help="small sizes, one run, load 0 only")
    p.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._child:
        _child(args.repeat, args.smoke)
        return 0
    if args.smoke:
        args.repeat, args.load, args.rounds = 1, "0", 1
    print_env(environment())
    rows: list[dict] = []
    worst = 0.0
    for load in (int(v) for v in args.load.split(",")):
        res: dict[str, dict] = {}
        for _ in range(args.rounds):  # (the modes in turn: a slow spell of the machine hits all)
            for m in MODES:
                r = _run_mode(m, load, args)
                res[m] = r if m not in res else {k: min(v, r[k]) if k != "threads" else v
                                                  for k, v in res[m].items()}
        print(f"# load {load}: threads per mode " + ", ".join(
            f"{m}={res[m]['threads']}" for m in MODES), flush=True)
        for case in (k for k in res["default"] if k != "threads"):
            t = {m: res[m][case] for m in MODES}
            ratio = t["default"] / min(t["1"], t["all"])
            worst = max(worst, ratio)
            rows.append({"case": case, "load": load, "t1": t["1"], "tall": t["all"],
                         "tdef": t["default"], "ratio": ratio,
                         "ok": "yes" if ratio <= TARGET else "NO"})
    print_table(rows, [("case", "case", ""), ("load", "load", "d"), ("t1", "1 thread s", ".4f"),
                       ("tall", "all threads s", ".4f"), ("tdef", "default s", ".4f"),
                       ("ratio", "default/best", ".2f"), ("ok", f"<= {TARGET}", "")])
    print(f"# worst default/best: {worst:.2f} (target <= {TARGET})")
    if args.csv:
        write_csv(args.csv, rows, environment())
    return 0


if __name__ == "__main__":
    sys.exit(main())
