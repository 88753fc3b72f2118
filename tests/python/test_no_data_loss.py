"""No writer of deadspec ever replaces an input or leaves a half-written file.

``deadspec read`` checks ``--out``/``--plot`` before it imports the model's module or loads the
data (a factory that logs its import and its calls proves it), refuses an output that is an
input (also through a symlink or a hard link) or the other output, a folder, a folder that
cannot be written and a figure suffix matplotlib cannot write. Every file (CSV, PNG,
checkpoints) is written to a temporary file renamed into place: a write that fails part-way
leaves the earlier file byte for byte and no temporary file behind. The same holds for the
monitor's ``to_csv``/``plot``, ``Calibration.plot``, ``deadspec demo`` and the experiments.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
import torch
from matplotlib.figure import Figure
from torch import nn

from deadspec import cli
from deadspec.experiments import _harness
from deadspec.llc import Calibration
from deadspec.models import mlp
from deadspec.monitor import DeadDirectionMonitor

FACTORY = '''
from pathlib import Path

from deadspec.models import mlp

LOG = Path(__file__).with_name("factory.log")
with open(LOG, "a") as f:
    f.write("imported\\n")


def make():
    with open(LOG, "a") as f:
        f.write("called\\n")
    return mlp([4, 8, 3])
'''


@pytest.fixture()
def inputs(tmp_path):
    """A checkpoint, a data file and a factory module that logs its import and its calls."""
    torch.manual_seed(0)
    ckpt = tmp_path / "step_7.pt"
    torch.save(mlp([4, 8, 3]).state_dict(), ckpt)
    data = tmp_path / "data.pt"
    torch.save({"inputs": torch.randn(24, 4), "targets": torch.randint(0, 3, (24,))}, data)
    factory = tmp_path / "factory.py"
    factory.write_text(FACTORY)
    return {"ckpt": ckpt, "data": data, "factory": factory}


def _snapshot(paths):
    return {p: p.read_bytes() for p in paths}


def _tmp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*.tmp"))


def _read_argv(inputs, out, plot=None):
    argv = [
        "read",
        str(inputs["ckpt"]),
        "--model",
        f"{inputs['factory']}:make",
        "--data",
        str(inputs["data"]),
        "--out",
        str(out),
        "--no-progress",
    ]
    return argv + (["--plot", str(plot)] if plot is not None else [])


def _refused(capsys, inputs, out, plot=None) -> str:
    """Run ``deadspec read`` expecting a refusal before anything is read; returns stderr."""
    before = _snapshot([inputs["ckpt"], inputs["data"], inputs["factory"]])
    rc = cli.main(_read_argv(inputs, out, plot))
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("deadspec: error: ") and "Traceback" not in err
    assert _snapshot(before) == before  # every input byte for byte
    log = inputs["factory"].with_name("factory.log")
    assert not log.exists(), "the factory module was imported before the output was checked"
    return err


# ------------------------------------------------------------------------------ deadspec read
def test_out_equal_to_the_checkpoint_is_refused(capsys, inputs):
    err = _refused(capsys, inputs, inputs["ckpt"])
    assert "--out must not be the same file as the checkpoint" in err


def test_out_equal_to_the_data_is_refused(capsys, inputs):
    err = _refused(capsys, inputs, inputs["data"])
    assert "--out must not be the same file as --data" in err


def test_out_equal_to_the_model_file_is_refused(capsys, inputs):
    err = _refused(capsys, inputs, inputs["factory"])
    assert "--out must not be the same file as the --model file" in err


def test_plot_equal_to_the_out_is_refused(capsys, inputs, tmp_path):
    err = _refused(capsys, inputs, tmp_path / "r.png", plot=tmp_path / "r.png")
    assert "--plot must not be the same file as --out" in err
    assert not (tmp_path / "r.png").exists()


def test_plot_equal_to_an_input_is_refused(capsys, inputs, tmp_path):
    err = _refused(capsys, inputs, tmp_path / "r.csv", plot=inputs["data"])
    assert "--plot must not be the same file as --data" in err


def test_out_through_a_symlink_to_an_input_is_refused(capsys, inputs, tmp_path):
    link = tmp_path / "readings.csv"
    link.symlink_to(inputs["data"])
    err = _refused(capsys, inputs, link)
    assert "--out must not be the same file as --data" in err and "readings.csv" in err
    folder_link = tmp_path / "elsewhere"
    folder_link.symlink_to(tmp_path, target_is_directory=True)
    err = _refused(capsys, inputs, folder_link / inputs["ckpt"].name)
    assert "the same file as the checkpoint" in err


def test_out_through_a_hard_link_to_an_input_is_refused(capsys, inputs, tmp_path):
    hard = tmp_path / "readings.csv"
    os.link(inputs["ckpt"], hard)
    err = _refused(capsys, inputs, hard)
    assert "--out must not be the same file as the checkpoint" in err


def test_out_that_is_a_folder_is_refused(capsys, inputs, tmp_path):
    err = _refused(capsys, inputs, tmp_path)
    assert "--out must be a file path, got the folder" in err


def test_out_below_a_file_is_refused(capsys, inputs, tmp_path):
    err = _refused(capsys, inputs, inputs["data"] / "readings.csv")
    assert "--out must be in a folder that can be written" in err and "is a file" in err


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes read-only folders"
)
def test_out_in_a_read_only_folder_is_refused(capsys, inputs, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        err = _refused(capsys, inputs, locked / "readings.csv")
    finally:
        locked.chmod(0o700)
    assert "is not writable" in err


@pytest.mark.parametrize("name", ["readings.txt", "readings", "readings.csv"])
def test_plot_suffix_matplotlib_cannot_write_is_refused(capsys, inputs, tmp_path, name):
    err = _refused(capsys, inputs, tmp_path / "r.csv", plot=tmp_path / name)
    assert "--plot must end in .png (or another format matplotlib writes:" in err
    assert ".pdf" in err and ".svg" in err


def test_a_good_read_writes_both_files_and_no_temporary(capsys, inputs, tmp_path):
    out, plot = tmp_path / "out" / "r.csv", tmp_path / "out" / "r.pdf"
    rc = cli.main(_read_argv(inputs, out, plot))
    assert rc == 0, capsys.readouterr().err
    assert out.is_file() and plot.read_bytes()[:5] == b"%PDF-"  # the suffix names the format
    log = inputs["factory"].with_name("factory.log").read_text().split()
    assert log == ["imported", "called"]
    assert _tmp_files(tmp_path) == []


def _partial_csv_writer(monkeypatch):
    """``csv.DictWriter.writerow`` that writes the first row, then fails (a full disk)."""
    real = csv.DictWriter.writerow
    calls = []

    def writerow(self, row):
        calls.append(row)
        if len(calls) > 1:
            raise OSError(28, "No space left on device")
        return real(self, row)

    monkeypatch.setattr(csv.DictWriter, "writerow", writerow)
    return calls


def _partial_savefig(monkeypatch):
    """``Figure.savefig`` that writes some bytes to its target, then fails."""
    calls = []

    def savefig(self, fname, *args, **kwargs):
        calls.append(fname)
        Path(fname).write_bytes(b"\x89PNG half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", savefig)
    return calls


def test_a_csv_write_failing_part_way_keeps_the_previous_file(
    capsys, inputs, tmp_path, monkeypatch
):
    out = tmp_path / "r.csv"
    out.write_text("the previous readings\n")
    calls = _partial_csv_writer(monkeypatch)
    rc = cli.main(_read_argv(inputs, out))
    err = capsys.readouterr().err
    assert len(calls) == 2  # the writer did write a row before failing
    assert rc == 2 and err.startswith("deadspec: error: --out: cannot write")
    assert "No space left" in err and "Traceback" not in err
    assert out.read_text() == "the previous readings\n"
    assert _tmp_files(tmp_path) == []


def test_a_png_write_failing_part_way_keeps_the_previous_file(
    capsys, inputs, tmp_path, monkeypatch
):
    out, plot = tmp_path / "r.csv", tmp_path / "r.png"
    plot.write_bytes(b"the previous figure")
    calls = _partial_savefig(monkeypatch)
    rc = cli.main(_read_argv(inputs, out, plot))
    err = capsys.readouterr().err
    assert len(calls) == 1 and Path(calls[0]).name.startswith(".r.png.")  # a temporary file
    assert rc == 2 and err.startswith("deadspec: error: --plot: cannot write")
    assert plot.read_bytes() == b"the previous figure"
    assert out.is_file()  # the CSV, written first, is complete
    assert _tmp_files(tmp_path) == []


def test_an_output_in_a_hugging_face_folder_is_refused_where_it_would_replace_its_file(
    capsys, tmp_path
):
    from safetensors.torch import save_file

    folder = tmp_path / "hf"
    folder.mkdir()
    torch.manual_seed(0)
    save_file(mlp([4, 8, 3]).state_dict(), folder / "model.safetensors")
    data = tmp_path / "data.pt"
    torch.save({"inputs": torch.randn(24, 4), "targets": torch.randint(0, 3, (24,))}, data)
    before = (folder / "model.safetensors").read_bytes()
    argv = ["read", str(folder), "--model", "deadspec.models:mlp", "--data", str(data)]
    rc = cli.main([*argv, "--out", str(folder / "model.safetensors")])
    err = capsys.readouterr().err
    assert rc == 2 and "--out must not be a file of the checkpoint" in err
    assert "'model.safetensors' read from it" in err
    assert (folder / "model.safetensors").read_bytes() == before
    rc = cli.main([*argv, "--out", str(folder / "readings.csv")])  # a new file there is fine
    assert rc == 2 and "--model" in capsys.readouterr().err  # (this factory needs arguments)


# ----------------------------------------------------------------------------- deadspec demo
def test_demo_into_a_file_is_refused_before_training(capsys, inputs, monkeypatch):
    trained = []
    monkeypatch.setattr(cli, "_demo_train", lambda *a, **k: trained.append(1) or [])
    before = inputs["data"].read_bytes()
    rc = cli.main(["demo", "--out", str(inputs["data"]), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("deadspec: error: demo: --out must be a folder")
    assert trained == [] and inputs["data"].read_bytes() == before


# ----------------------------------------------------------------------- the library writers
@pytest.fixture()
def monitor():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    mon = DeadDirectionMonitor(model, ["0"], inputs=torch.randn(16, 4), fisher=False)
    for step in range(3):
        mon.step(step)
    return mon


def test_monitor_outputs_are_checked_before_any_work(monitor, tmp_path, monkeypatch):
    computed = []
    monkeypatch.setattr(DeadDirectionMonitor, "rates", lambda *a, **k: computed.append(1))
    with pytest.raises(ValueError, match=r"DeadDirectionMonitor\.plot: path must end in \.png"):
        monitor.plot(tmp_path / "monitor.txt")
    with pytest.raises(ValueError, match=r"DeadDirectionMonitor\.to_csv: path must be a file"):
        monitor.to_csv(tmp_path, what="rates")
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    with pytest.raises(ValueError, match=r"to_csv: path must be in a folder that can be written"):
        monitor.to_csv(blocker / "r.csv", what="rates")
    with pytest.raises(TypeError, match=r"to_csv: path must be a path \(str or os.PathLike\)"):
        monitor.to_csv(3)
    assert computed == []


def test_monitor_writes_failing_part_way_keep_the_previous_files(monitor, tmp_path, monkeypatch):
    records, png = tmp_path / "records.csv", tmp_path / "monitor.png"
    records.write_text("previous\n")
    png.write_bytes(b"previous")
    calls = _partial_csv_writer(monkeypatch)
    with pytest.raises(OSError, match="No space left"):
        monitor.to_csv(records)
    assert len(calls) == 2 and records.read_text() == "previous\n"
    saves = _partial_savefig(monkeypatch)
    with pytest.raises(OSError, match="No space left"):
        monitor.plot(png)
    assert len(saves) == 1 and png.read_bytes() == b"previous"
    assert _tmp_files(tmp_path) == []
    monkeypatch.undo()
    monitor.plot(tmp_path / "monitor.svg")  # any format matplotlib writes, in that format
    assert b"<svg" in (tmp_path / "monitor.svg").read_bytes()[:400]


def test_a_symlinked_output_is_written_through(monitor, tmp_path):
    target = tmp_path / "runs" / "r5.csv"
    target.parent.mkdir()
    target.write_text("previous\n")
    link = tmp_path / "latest.csv"
    link.symlink_to(target)
    monitor.to_csv(link)
    assert link.is_symlink() and target.read_text().startswith("step,layer,side")
    assert _tmp_files(tmp_path) == []


def _calibration() -> Calibration:
    sweep = [
        {"gamma": 1.0, "epsilon": e, "llc_mean": 1.0 + e, "llc_std": 0.1, "stable": True}
        for e in (1e-4, 1e-3, 1e-2)
    ]
    return Calibration(None, None, None, sweep, {}, "test", 0, 0.0)


def test_calibration_plot_checks_its_path_and_writes_atomically(tmp_path, monkeypatch):
    cal = _calibration()
    with pytest.raises(ValueError, match=r"llc\.Calibration\.plot: path must end in \.png"):
        cal.plot(tmp_path / "cal.csv")
    png = tmp_path / "cal.png"
    png.write_bytes(b"previous")
    _partial_savefig(monkeypatch)
    with pytest.raises(OSError, match="No space left"):
        cal.plot(png)
    assert png.read_bytes() == b"previous" and _tmp_files(tmp_path) == []
    monkeypatch.undo()
    cal.plot(png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_experiment_output_folder_is_checked_before_any_work(capsys, tmp_path):
    blocker = tmp_path / "results"
    blocker.write_text("not a folder")
    rc = cli.main(["repro", "rank-deficit", "--quick", "--out", str(blocker), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "out must be a folder, got the file" in err and "Traceback" not in err
    assert blocker.read_text() == "not a folder"
    from deadspec.experiments import rrr

    with pytest.raises(ValueError, match=r"deadspec\.rrr\.run: out must be a folder"):
        rrr.run(blocker, quick=True, echo=None)


def test_experiment_outputs_failing_part_way_keep_the_previous_files(tmp_path, monkeypatch):
    rows = [{"a": 1, "b": 2.5}, {"a": 2, "b": float("nan")}]
    paths = _harness.write_outputs(tmp_path, {"t.csv": (rows, ("a", "b"))})
    good = paths["t.csv"].read_text()
    assert good.splitlines() == ["a,b", "1,2.5", "2,nan"]
    _partial_csv_writer(monkeypatch)
    with pytest.raises(OSError, match="No space left"):
        _harness.write_outputs(tmp_path, {"t.csv": ([{"a": 9, "b": 9}] * 3, ("a", "b"))})
    assert paths["t.csv"].read_text() == good and _tmp_files(tmp_path) == []


def test_modadd_checkpoints_and_factories_are_written_atomically(tmp_path, monkeypatch):
    from deadspec.experiments import _modadd_output

    target = tmp_path / "models.py"
    target.write_text("previous")

    def fail(self, text, *args, **kwargs):
        Path.write_bytes(self, text[:10].encode())
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", fail)
    with pytest.raises(OSError, match="No space left"):
        _modadd_output.write_factories(target, 7, [8, 16], 2)
    monkeypatch.undo()
    assert target.read_text() == "previous" and _tmp_files(tmp_path) == []
    _modadd_output.write_factories(target, 7, [8, 16], 2)
    assert "def d16():" in target.read_text()
