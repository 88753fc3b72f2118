"""Bit-rot check for bench/python: every benchmark script runs once at its smallest size.

Each script is run with ``--smoke`` in a subprocess; the test asserts a zero exit code and that
the results table was printed. It measures nothing: no timing is ever asserted.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "python"

# bench_fisher keeps its default (one child process per method) so the peak-RSS path is exercised;
# the others run in-process to keep the whole file well under 30 s on 2 cores.
SCRIPTS = [
    ("bench_fisher.py", []),
    ("bench_seq_fisher.py", []),  # three child processes per cell (torch.func, deadspec, capture)
    ("bench_eig.py", ["--no-memory"]),
    ("bench_gram.py", ["--no-memory"]),
    ("bench_read.py", ["--no-memory"]),
    ("bench_optim.py", []),
    ("bench_ddc_stability.py", []),
    ("bench_dist_read.py", []),  # spawns 1 and 2 gloo ranks on loopback (about 10 s)
    ("bench_threads.py", []),  # 3 child processes (1 thread, all, default)
    ("bench_read_scaling.py", ["--png", "{tmp}/scaling.png"]),  # 6 child processes
]


@pytest.mark.parametrize(("script", "extra"), SCRIPTS, ids=[s for s, _ in SCRIPTS])
def test_bench_script_smoke(script: str, extra: list[str], tmp_path: Path) -> None:
    path = BENCH / script
    if not path.is_file():
        raise FileNotFoundError(f"missing benchmark script {path}")
    out_csv = tmp_path / "out.csv"
    env = dict(os.environ, PYTHONHASHSEED="0")
    proc = subprocess.run(
        [sys.executable, str(path), "--smoke", "--csv", str(out_csv),
         *(e.replace("{tmp}", str(tmp_path)) for e in extra)],
        capture_output=True,
        check=False,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 0, f"{script} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    lines = proc.stdout.splitlines()
    header = [i for i, ln in enumerate(lines) if ln.startswith(("method ", "case ", "sweep "))]
    assert header, f"{script} printed no table:\n{proc.stdout}"
    i = header[0]
    assert set(lines[i + 1].replace(" ", "")) == {"-"}, f"{script}: no rule under the table header"
    assert lines[i + 2].strip(), f"{script}: the table has no rows"
    assert out_csv.is_file() and out_csv.read_text().count("\n") >= 2, f"{script}: CSV not written"
    pngs = [e.replace("{tmp}", str(tmp_path)) for e in extra if e.endswith(".png")]
    assert all(Path(p).stat().st_size > 1000 for p in pngs), f"{script}: plot not written"
