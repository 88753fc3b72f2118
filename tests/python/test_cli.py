"""Tests of the deadspec command line (deadspec.cli)."""

from __future__ import annotations

import csv
import subprocess
import sys

import numpy as np
import pytest
import torch

from deadspec import cli
from deadspec.models import demo_mlp


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_info(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    import deadspec

    assert f"deadspec {deadspec.__version__}" in out
    for key in deadspec.build_info():
        assert f"  {key}: " in out
    assert f"torch {torch.__version__}" in out and f"numpy {np.__version__}" in out
    assert "BLAS=" in out and "LAPACK=" in out


def test_python_dash_m_help():
    res = subprocess.run(
        [sys.executable, "-m", "deadspec", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 0
    for cmd in ("info", "read", "repro", "demo"):
        assert cmd in res.stdout


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    lines: list[str] = []
    rows = cli.run_demo(out, steps=120, progress=False, echo=lines.append)
    return out, rows, "\n".join(lines)


def test_demo_writes_checkpoints_data_csv_png(demo_dir):
    out, rows, text = demo_dir
    ckpts = sorted((out / "checkpoints").glob("step_*.pt"))
    assert len(ckpts) == 6
    assert (out / "data.pt").is_file()
    assert (out / "readings.csv").is_file() and (out / "readings.png").is_file()
    csv_rows = _rows(out / "readings.csv")
    assert len(csv_rows) == len(rows) == 6 * 3 * 2  # checkpoints x Linear layers x sides
    assert list(csv_rows[0])[:4] == ["checkpoint", "step", "layer", "side"]
    assert {r["step"] for r in csv_rows} == {"0", "24", "48", "72", "96", "120"}
    assert {r["layer"] for r in csv_rows} == {"0", "2", "4"}
    assert "deadspec read" in text and "log det+" in text


def test_read_again_with_plot(demo_dir, tmp_path, capsys):
    out, _, _ = demo_dir
    ckpts = [str(p) for p in sorted((out / "checkpoints").glob("step_*.pt"))]
    csv_path, png_path = tmp_path / "r.csv", tmp_path / "r.png"
    rc = cli.main(
        [
            "read",
            *ckpts,
            "--model",
            "deadspec.models:demo_mlp",
            "--data",
            str(out / "data.pt"),
            "--out",
            str(csv_path),
            "--plot",
            str(png_path),
            "--no-progress",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    again = _rows(csv_path)
    first = _rows(out / "readings.csv")
    assert [(r["step"], r["layer"], r["side"]) for r in again] == [
        (r["step"], r["layer"], r["side"]) for r in first
    ]
    for a, b in zip(again, first):
        assert float(a["logdet_plus"]) == pytest.approx(float(b["logdet_plus"]), rel=1e-9, abs=1e-9)
        assert a["active"] == b["active"] and a["dead_count"] == b["dead_count"]
    assert png_path.stat().st_size > 1000


def test_read_layers_no_fisher_npz_and_py_factory(demo_dir, tmp_path):
    out, _, _ = demo_dir
    data = torch.load(out / "data.pt", weights_only=True)
    np.savez(tmp_path / "data.npz", inputs=data["inputs"].numpy())  # no targets
    factory = tmp_path / "mymodels.py"
    factory.write_text(
        "from deadspec.models import demo_mlp\n\ndef make():\n    return demo_mlp()\n"
    )
    ckpt = max((out / "checkpoints").glob("step_*.pt"))
    csv_path = tmp_path / "r.csv"
    rc = cli.main(
        [
            "read",
            str(ckpt),
            "--model",
            f"{factory}:make",
            "--data",
            str(tmp_path / "data.npz"),
            "--layers",
            "1",
            "2",
            "--no-fisher",
            "--out",
            str(csv_path),
            "--batch-size",
            "64",
            "--no-progress",
        ]
    )
    assert rc == 0
    rows = _rows(csv_path)
    assert [(r["layer"], r["side"]) for r in rows] == [("1", "activation"), ("2", "activation")]
    assert {r["step"] for r in rows} == {"120"}


def test_step_from_path():
    assert cli.step_from_path("run3/step_000300.pt", 7) == 300
    assert cli.step_from_path("ckpt-v2-epoch12.pt", 0) == 12
    assert cli.step_from_path("final.pt", 4) == 4


def test_repro_passthrough(tmp_path, capsys):
    rc = cli.main(
        [
            "repro",
            "rank-deficit",
            "--quick",
            "--settings",
            "constructed",
            "--networks",
            "linear",
            "--sides",
            "activation",
            "--ranks",
            "1",
            "2",
            "--out",
            str(tmp_path),
            "--no-plot",
            "--no-progress",
        ]
    )
    assert rc == 0
    assert "PASS" in capsys.readouterr().out
    assert (tmp_path / "rank_deficit.csv").is_file()


def test_repro_rrr_reaches_its_own_parser(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["repro", "rrr", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--quick" in out and "--epsilons" in out


# ------------------------------------------------------------------------------------ errors
def _err(capsys, argv):
    rc = cli.main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("deadspec: error: ")
    return err


@pytest.fixture()
def one_ckpt(tmp_path):
    torch.manual_seed(0)
    model = demo_mlp()
    ckpt = tmp_path / "step_5.pt"
    torch.save(model.state_dict(), ckpt)
    data = tmp_path / "data.pt"
    torch.save({"inputs": torch.randn(32, 8), "targets": torch.randn(32, 4)}, data)
    return ckpt, data


def test_error_missing_checkpoint(capsys, one_ckpt, tmp_path):
    _, data = one_ckpt
    err = _err(
        capsys,
        [
            "read",
            str(tmp_path / "nope.pt"),
            "--model",
            "deadspec.models:demo_mlp",
            "--data",
            str(data),
            "--out",
            str(tmp_path / "o.csv"),
        ],
    )
    assert "not found" in err and "nope.pt" in err


def test_error_missing_data(capsys, one_ckpt, tmp_path):
    ckpt, _ = one_ckpt
    err = _err(
        capsys,
        [
            "read",
            str(ckpt),
            "--model",
            "deadspec.models:demo_mlp",
            "--data",
            str(tmp_path / "missing.pt"),
            "--out",
            str(tmp_path / "o.csv"),
        ],
    )
    assert "--data" in err and "does not exist" in err


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("deadspec.models", "must be MODULE:FACTORY"),
        ("deadspec.models:", "must be MODULE:FACTORY"),
        ("no_such_module_xyz:make", "cannot import module 'no_such_module_xyz'"),
        ("deadspec.models:no_such_factory", "has no attribute 'no_such_factory'"),
        ("deadspec.models:DEMO_WIDTHS", "is not callable"),
        ("deadspec.models:ReducedRankRegression", "calling"),  # needs arguments
        ("/no/such/file.py:make", "does not exist"),
    ],
)
def test_error_bad_factory(capsys, one_ckpt, tmp_path, spec, match):
    ckpt, data = one_ckpt
    err = _err(
        capsys,
        ["read", str(ckpt), "--model", spec, "--data", str(data), "--out", str(tmp_path / "o.csv")],
    )
    assert match in err


def test_error_state_dict_mismatch(capsys, one_ckpt, tmp_path):
    _, data = one_ckpt
    from deadspec.models import mlp

    bad = tmp_path / "bad.pt"
    torch.save(mlp([8, 5, 4]).state_dict(), bad)
    err = _err(
        capsys,
        [
            "read",
            str(bad),
            "--model",
            "deadspec.models:demo_mlp",
            "--data",
            str(data),
            "--out",
            str(tmp_path / "o.csv"),
        ],
    )
    assert "does not match the model" in err and "size mismatch" in err


def test_error_unknown_layer_and_no_targets(capsys, one_ckpt, tmp_path):
    ckpt, data = one_ckpt
    err = _err(
        capsys,
        [
            "read",
            str(ckpt),
            "--model",
            "deadspec.models:demo_mlp",
            "--data",
            str(data),
            "--layers",
            "fc9",
            "--out",
            str(tmp_path / "o.csv"),
        ],
    )
    assert "unknown layer(s) ['fc9']" in err
    torch.save({"inputs": torch.randn(16, 8)}, tmp_path / "x.pt")
    err = _err(
        capsys,
        [
            "read",
            str(ckpt),
            "--model",
            "deadspec.models:demo_mlp",
            "--data",
            str(tmp_path / "x.pt"),
            "--out",
            str(tmp_path / "o.csv"),
        ],
    )
    assert "needs targets" in err
    torch.save({"x": torch.randn(16, 8)}, tmp_path / "bad_data.pt")
    err = _err(
        capsys,
        [
            "read",
            str(ckpt),
            "--model",
            "deadspec.models:demo_mlp",
            "--data",
            str(tmp_path / "bad_data.pt"),
            "--out",
            str(tmp_path / "o.csv"),
        ],
    )
    assert "'inputs'" in err
