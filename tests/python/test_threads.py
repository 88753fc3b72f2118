"""The core's thread setting: a fixed count, and the default ("auto") that drops to 1 thread
while the machine is oversubscribed (cpp/src/blas.cpp, "Threads")."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

import deadspec
from deadspec import _core


@pytest.fixture
def restore_threads():
    yield
    deadspec.set_num_threads("auto")


def _run(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items()
            if k not in ("DEADSPEC_NUM_THREADS", "OPENBLAS_THREAD_TIMEOUT")}
    full.update(env or {})
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env=full, timeout=120, check=False)


def test_fixed_count_and_back_to_auto(restore_threads):
    deadspec.set_num_threads("auto")
    every = deadspec.num_threads()
    assert every >= 1
    deadspec.set_num_threads(1)
    assert deadspec.num_threads() == 1 and _core.threads_in_use() == 1
    deadspec.set_num_threads("AUTO ")
    assert deadspec.num_threads() == every
    assert _core.threads_in_use() == every


@pytest.mark.parametrize("bad", [0, -1, "two", 2.5])
def test_bad_counts_raise(bad, restore_threads):
    with pytest.raises((ValueError, TypeError), match="set_num_threads"):
        deadspec.set_num_threads(bad)


def test_environment_variable_auto():
    code = "import deadspec; from deadspec import _core; print(deadspec.num_threads())"
    auto, unset = _run(code, {"DEADSPEC_NUM_THREADS": "auto"}), _run(code)
    assert auto.returncode == 0, auto.stderr
    assert int(auto.stdout) == int(unset.stdout) >= 1


CONTENDED = """
    import subprocess, sys, numpy as np
    import deadspec
    from deadspec import _core
    {setup}
    rng = np.random.default_rng(0)
    x = rng.standard_normal((768, 768))
    a = x @ x.T
    deadspec.sym_eig(a)  # alone: all threads
    before = _core.threads_in_use()
    spin = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
            for _ in range({spinners})]
    try:
        seen = []
        for _ in range(8):
            deadspec.sym_eig(a)
            seen.append(_core.threads_in_use())
    finally:
        for p in spin:
            p.kill()
    print(before, seen[-1])
"""


@pytest.mark.skipif(deadspec.num_threads() < 2 or not os.path.exists("/proc/thread-self/schedstat"),
                    reason="needs an OpenBLAS with >= 2 threads and Linux's per-thread schedstat")
def test_auto_drops_to_one_thread_next_to_busy_processes():
    spinners = (os.cpu_count() or 2) + 1
    out = _run(CONTENDED.format(setup="", spinners=spinners))
    assert out.returncode == 0, out.stderr
    before, after = map(int, out.stdout.split())
    assert before == deadspec.num_threads() >= 2
    assert after == 1
    # a count the user set is never changed
    fixed = _run(CONTENDED.format(setup="deadspec.set_num_threads(2)", spinners=spinners))
    assert fixed.returncode == 0, fixed.stderr
    assert fixed.stdout.split() == ["2", "2"]


def test_loading_leaves_the_environment_as_found():
    code = "import os, deadspec; print(os.environ.get('OPENBLAS_THREAD_TIMEOUT', '-'))"
    assert _run(code).stdout.strip() == "-"
    assert _run(code, {"OPENBLAS_THREAD_TIMEOUT": "25"}).stdout.strip() == "25"


TEAM = """
import hashlib, torch, deadspec
from torch import nn
from deadspec.optim import DDCAdam
from deadspec._core import openmp_runtime
deadspec.set_num_threads(2)
torch.manual_seed(0)
m = nn.Sequential(nn.Linear(256, 1100), nn.ReLU(), nn.Linear(1100, 8))  # (passes on 2 threads)
opt = DDCAdam(m, lr=1e-2, weight_decay=0.1)
x, y = torch.randn(16, 256), torch.randint(0, 8, (16,))
for _ in range(3):
    opt.zero_grad()
    nn.functional.cross_entropy(m(x), y).backward()
    opt.step()
h = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in m.parameters()))
print("gomp" if "gomp" in openmp_runtime() else repr(openmp_runtime()), h.hexdigest())
"""


def test_the_optimizer_team_runs_on_torchs_openmp_pool_and_gives_the_same_bits():
    # In a process with torch the DDC plans' passes run in torch's OpenMP pool (the runtime
    # found among the loaded objects); DEADSPEC_OPENMP=0 keeps the core's own threads. The
    # trajectory does not depend on which team ran it.
    runs = {}
    for flag in ("1", "0"):
        proc = _run(TEAM, {"DEADSPEC_OPENMP": flag})
        assert proc.returncode == 0, proc.stderr
        runs[flag] = proc.stdout.split()
    assert runs["1"][0] == "gomp" and runs["0"][0] == "''"
    assert runs["1"][1] == runs["0"][1]
