"""examples/cpp_trainer: a libtorch trainer that embeds the installed deadspec C++ core.

The example is configured and built with CMake in a temporary folder against the installed SDK
(``deadspec.cmake_dir()``) and the installed torch wheel's libtorch
(``torch.utils.cmake_prefix_path``), exactly as a user would, then run with a small size and a
fixed seed. Its DDC step is compared with the Python ``DDCAdam`` on the same data, and its
trajectory under a gauge element with the unscaled one.
"""

from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import deadspec
import deadspec.gauges as G
from deadspec import ops
from deadspec.optim import DDCAdam

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "cpp_trainer"
SIZE = {"steps": 60, "hidden": 24, "samples": 256, "batch": 32, "interval": 20}
LR, WD = 1e-2, 1e-2  # the example's defaults
PARAMS = ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "fc3.weight", "fc3.bias")


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise AssertionError(
            f"command failed ({proc.returncode}): {' '.join(cmd)}"
            f"\n--- stdout\n{proc.stdout[-6000:]}\n--- stderr\n{proc.stderr[-6000:]}"
        )
    return proc


@pytest.fixture(scope="module")
def trainer(tmp_path_factory) -> Path:
    """The example built against the installed deadspec SDK and torch (one job: libtorch's
    headers take ~1.5 GB per compiler process)."""
    build = tmp_path_factory.mktemp("cpp-trainer")
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    _run(
        ["cmake", "-S", str(EXAMPLE), "-B", str(build), *gen, "-DCMAKE_BUILD_TYPE=Release",
         f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
         f"-Ddeadspec_DIR={deadspec.cmake_dir()}"]
    )
    _run(["cmake", "--build", str(build), "--parallel", "1"])
    return build / "cpp_trainer"


def _train(exe: Path, dump: Path, **opts: object) -> dict[str, list[dict[str, str]]]:
    """Run the trainer (small size, seed 0, one thread, its arrays dumped to ``dump``) and parse
    its ``kind key=value ...`` lines by kind."""
    dump.mkdir(parents=True, exist_ok=True)
    args = {**SIZE, "seed": 0, "threads": 1, "dump": dump, **opts}
    cmd = [str(exe)]
    for k, v in args.items():
        cmd += [f"--{k.replace('_', '-')}", str(v)]
    out = _run(cmd).stdout
    assert out.rstrip().endswith("OK"), out
    lines: dict[str, list[dict[str, str]]] = {}
    for line in out.splitlines()[1:-1]:
        kind, *pairs = line.split()
        lines.setdefault(kind, []).append(dict(p.split("=", 1) for p in pairs))
    return lines


def _load(dump: Path, name: str) -> np.ndarray:
    return np.load(dump / f"{name}.npy")


class _MLP(nn.Module):
    """The example's network: fc1 → ReLU → fc2 → ReLU → fc3."""

    def __init__(self, inputs: int, hidden: int, classes: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(inputs, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


def _python_reference(dump: Path) -> tuple[_MLP, list[float]]:
    """The same run in Python: the dumped start and data, DDCAdam with the two Pairs declared,
    the trainer's batches (in order, cyclic)."""
    x, y = torch.from_numpy(_load(dump, "x")), torch.from_numpy(_load(dump, "y"))
    w1, w3 = _load(dump, "init_fc1.weight"), _load(dump, "init_fc3.weight")
    model = _MLP(x.shape[1], w1.shape[0], w3.shape[0])
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.from_numpy(_load(dump, "init_" + name)))
    opt = DDCAdam(
        model, lr=LR, weight_decay=WD, gauges=[G.Pair("fc1", "fc2"), G.Pair("fc2", "fc3")]
    )
    losses = []
    n, b = x.shape[0], SIZE["batch"]
    for t in range(SIZE["steps"]):
        r = (t * b) % n
        opt.zero_grad()
        loss = F.cross_entropy(model(x[r : r + b]), y[r : r + b])
        loss.backward()
        losses.append(loss.item())
        opt.step()
    return model, losses


def test_trainer_learns_and_reads_its_layers(trainer, tmp_path):
    out = _train(trainer, tmp_path)
    steps, interval, hidden = SIZE["steps"], SIZE["interval"], SIZE["hidden"]
    checkpoints = list(range(0, steps + 1, interval))
    readings = out["reading"]
    # one reading per layer at every checkpoint (step 0 included)
    assert [(int(r["step"]), r["layer"]) for r in readings] == [
        (s, layer) for s in checkpoints for layer in ("relu1", "relu2")
    ]
    for r in readings:
        assert math.isfinite(float(r["logdet_plus"])), r
        assert 1 <= int(r["active"]) <= hidden, r
        assert 0 <= int(r["dead_count"]) < int(r["active"]), r
        assert float(r["lambda_min"]) > 0.0, r
    assert [int(e["step"]) for e in out["eval"]] == checkpoints
    assert [int(g["step"]) for g in out["gauge"]] == [s for s in checkpoints for _ in range(2)]
    final = out["final"][0]
    assert float(final["loss_last"]) < 0.5 * float(final["loss_first"]), final
    assert float(out["eval"][-1]["accuracy"]) > float(out["eval"][0]["accuracy"])
    for name in PARAMS:  # the step was applied to every block
        assert not np.array_equal(_load(tmp_path, "final_" + name), _load(tmp_path, "init_" + name))


def test_trainer_step_equals_python_ddcadam(trainer, tmp_path, one_thread):
    out = _train(trainer, tmp_path)
    model, losses = _python_reference(tmp_path)
    # The same kernels on the same inputs: equal up to round-off (in practice bit for bit).
    np.testing.assert_allclose(_load(tmp_path, "losses"), losses, rtol=1e-6, atol=0)
    for name, p in model.named_parameters():
        np.testing.assert_allclose(
            _load(tmp_path, "final_" + name), p.detach().numpy(), rtol=1e-5, atol=1e-7,
            err_msg=name,
        )
    # The last reading of relu1, recomputed by the Python front on the final parameters.
    x = torch.from_numpy(_load(tmp_path, "x"))
    with torch.no_grad():
        acts = F.relu(model.fc1(x))
    spec = ops.spectrum(ops.gram(acts), input_dtype="float32", rtol_size=max(acts.shape))
    last = [r for r in out["reading"] if r["layer"] == "relu1"][-1]
    assert int(last["active"]) == spec.active
    assert int(last["dead_count"]) == spec.dead_count
    assert float(last["logdet_plus"]) == pytest.approx(spec.logdet_plus, rel=1e-6)


def _gauge_gap(dump_plain: Path, dump_scaled: Path) -> float:
    """Largest relative gap between the scaled run's final parameters and the gauge element
    applied to the unscaled run's (fc1's units by c1, fc2's by c2)."""
    c1 = _load(dump_scaled, "gauge_c1").astype(np.float64)
    c2 = _load(dump_scaled, "gauge_c2").astype(np.float64)
    assert c1.max() / c1.min() > 10.0  # a real scaling, not the identity
    p = {n: _load(dump_plain, "final_" + n).astype(np.float64) for n in PARAMS}
    image = {
        "fc1.weight": p["fc1.weight"] * c1[:, None],
        "fc1.bias": p["fc1.bias"] * c1,
        "fc2.weight": p["fc2.weight"] * c2[:, None] / c1[None, :],
        "fc2.bias": p["fc2.bias"] * c2,
        "fc3.weight": p["fc3.weight"] / c2[None, :],
        "fc3.bias": p["fc3.bias"],
    }
    gaps = []
    for name, want in image.items():
        got = _load(dump_scaled, "final_" + name).astype(np.float64)
        gaps.append(np.abs(got - want).max() / np.abs(got).max())
    return max(gaps)


def test_trainer_is_equivariant_under_the_declared_gauge(trainer, tmp_path):
    # Scaling the hidden units' in/out weights by c and 1/c before training gives the scaled
    # trajectory with DDCAdam (round-off of float32), and not with torch's AdamW (the control).
    gaps = {}
    for opt in ("ddc", "adamw"):
        plain, scaled = tmp_path / f"{opt}-1", tmp_path / f"{opt}-4"
        a = _train(trainer, plain, optimizer=opt)
        b = _train(trainer, scaled, optimizer=opt, gauge_scale=4)
        assert float(a["eval"][0]["loss"]) == pytest.approx(float(b["eval"][0]["loss"]), rel=1e-6)
        gaps[opt] = _gauge_gap(plain, scaled)
    assert gaps["ddc"] < 1e-5, gaps
    assert gaps["adamw"] > 1e-2, gaps
