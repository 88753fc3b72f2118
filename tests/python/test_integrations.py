"""Tests of deadspec.integrations: the transformers.Trainer and Lightning callbacks.

Real trainers on tiny models (a GPT-2 from a config, no weights; a small MLP), a few steps each.
"""

from __future__ import annotations

import csv
import inspect
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import deadspec

KEYS = ("logdet_plus", "active", "dead_count", "lambda_min", "effective_rank")
SIDES = ("activation", "fisher")


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _names(layers, sides=SIDES):
    return {f"deadspec/{layer}/{side}/{key}" for layer in layers for side in sides for key in KEYS}


def _record_values(monitor, step):
    """The monitor's record at ``step`` as the callback names them."""
    out = {}
    for r in monitor.records():
        if r["step"] == step:
            for key in KEYS:
                out[f"deadspec/{r['layer']}/{r['side']}/{key}"] = float(r[key])
    return out


def _same_records(a, b):
    """Records equal except the approach parameter (it depends on the latest checkpoint)."""
    assert len(a) == len(b)
    for ra, rb in zip(a, b):
        assert {k: v for k, v in ra.items() if k != "approach"} == {
            k: v for k, v in rb.items() if k != "approach"
        }


# ------------------------------------------------------------------ import hygiene


def test_imports_are_lazy_and_missing_frameworks_are_named():
    script = """
import json, sys
import deadspec, deadspec.monitor
deadspec.integrations
light = [m for m in ("transformers", "lightning") if m in sys.modules]
sys.modules["transformers"] = None  # as if not installed
sys.modules["lightning"] = None
errors = {}
for sub in ("huggingface", "lightning"):
    try:
        __import__(f"deadspec.integrations.{sub}")
    except ImportError as exc:
        errors[sub] = str(exc)
print(json.dumps({"imported": light, "errors": errors}))
"""
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["imported"] == []
    assert out["errors"]["huggingface"].startswith("deadspec.integrations.huggingface: needs")
    assert "pip install transformers" in out["errors"]["huggingface"]
    assert out["errors"]["lightning"].startswith("deadspec.integrations.lightning: needs")
    assert "pip install lightning" in out["errors"]["lightning"]


# ------------------------------------------------------------------ transformers.Trainer


def _gpt2_run(tmp_path, callbacks, seed=0):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")  # the Trainer needs it
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

    torch.manual_seed(seed)
    cfg = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=50, n_positions=16)
    cfg.bos_token_id = cfg.eos_token_id = 0
    model = GPT2LMHeadModel(cfg)
    ids = torch.randint(0, 50, (64, 16), generator=torch.Generator().manual_seed(1))
    data = [{"input_ids": row, "labels": row} for row in ids]
    args = TrainingArguments(
        output_dir=str(tmp_path / "hf"),
        max_steps=6,
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        logging_steps=5,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
        use_cpu=True,
        seed=seed,
        data_seed=seed,
    )
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=callbacks)
    transformers.logging.set_verbosity_error()
    trainer.train()
    return trainer, ids


def _hf_reporter():
    from transformers import TrainerCallback

    class Reporter(TrainerCallback):
        """A minimal reporting integration: keeps what on_log receives."""

        def __init__(self):
            self.logs = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            self.logs.append((state.global_step, dict(logs)))

    return Reporter()


def test_huggingface_trainer_logs_scalars_to_reporters(tmp_path):
    pytest.importorskip("transformers")
    from deadspec.integrations.huggingface import DeadDirectionCallback

    layers = ["transformer.h.0.mlp.c_fc", "transformer.h.1.attn.c_proj"]
    probe = torch.randint(0, 50, (8, 16), generator=torch.Generator().manual_seed(2))
    cb = DeadDirectionCallback(
        layers=layers,
        every=2,
        inputs=probe,
        targets=probe,
        loss_fn=deadspec.TokenCrossEntropy(shift=True),
    )
    reporter = _hf_reporter()
    # the reporter comes first, as the report_to integrations do
    trainer, _ = _gpt2_run(tmp_path, [reporter, cb])

    monitor = cb.monitor
    assert monitor is not None and monitor.model is trainer.model
    assert monitor.layers == layers
    assert monitor.steps == [0, 2, 4, 6]  # the start, then every 2 optimizer steps
    assert len(monitor.records()) == 4 * 2 * 2

    names = _names(layers) | {"deadspec/seconds"}
    by_step = {}
    for step, logs in reporter.logs:
        got = {k for k in logs if k.startswith("deadspec/")}
        if got:
            assert step not in by_step  # once per reading
            by_step[step] = logs
            assert got == names
    assert sorted(by_step) == [2, 4, 6]  # logged at each reading's step, not at step 0
    for step, logs in by_step.items():
        expected = _record_values(monitor, step)
        assert {k: logs[k] for k in expected} == expected
        assert logs["deadspec/seconds"] > 0 and "loss" in logs
    # the regular log at step 5 carries no deadspec scalars
    assert any(s == 5 and "loss" in logs for s, logs in reporter.logs)
    history = {h["step"]: h for h in trainer.state.log_history if "loss" in h}
    assert (
        history[4]["deadspec/transformer.h.0.mlp.c_fc/fisher/logdet_plus"]
        == (by_step[4]["deadspec/transformer.h.0.mlp.c_fc/fisher/logdet_plus"])
    )
    assert all(math.isfinite(by_step[6][n]) for n in names if n.endswith("logdet_plus"))
    assert trainer.callback_handler.callbacks[0] is cb  # how: it moved before the reporters


def test_huggingface_callback_does_not_disturb_training(tmp_path):
    # GPT-2 trains with dropout: a reading (train-mode forward, or the RNG it draws from) must
    # change neither the weights nor the random stream of the run
    pytest.importorskip("transformers")
    from deadspec.integrations.huggingface import DeadDirectionCallback

    probe = torch.randint(0, 50, (8, 16), generator=torch.Generator().manual_seed(2))
    plain, _ = _gpt2_run(tmp_path / "plain", [])
    for eval_mode in (True, False):
        cb = DeadDirectionCallback(
            every=3,
            layers="transformer.h.0.mlp.c_proj",
            inputs=probe,
            targets=probe,
            loss_fn=deadspec.TokenCrossEntropy(shift=True),
            scalars=["logdet_plus"],
            eval_mode=eval_mode,
        )
        watched, _ = _gpt2_run(tmp_path / f"watched{eval_mode}", [cb])
        assert cb.monitor.steps == [0, 3, 6]
        for (name, p), q in zip(plain.model.named_parameters(), watched.model.parameters()):
            assert torch.equal(p, q), (eval_mode, name)
        assert watched.model.training or not plain.model.training


def test_huggingface_callback_driven_by_hand_warns_and_still_logs():
    # outside a Trainer (no CallbackHandler on the stack) it cannot move itself before the
    # reporters: it says so, and its own on_log still adds the scalars
    pytest.importorskip("transformers")
    from transformers import TrainerControl, TrainerState

    from deadspec.integrations.huggingface import DeadDirectionCallback

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2))
    x, y = torch.randn(16, 3), torch.randn(16, 2)
    cb = DeadDirectionCallback(["0"], every=2, inputs=x, targets=y, scalars=["dead_count"])
    state, control = TrainerState(), TrainerControl()
    with pytest.warns(RuntimeWarning, match="could not find the Trainer's callback list"):
        cb.on_train_begin(None, state, control, model=model)
    state.global_step = 1
    assert not cb.on_step_end(None, state, control).should_log
    state.global_step = 2
    assert cb.on_step_end(None, state, control).should_log
    logs = {"loss": 1.0}
    state.log_history.append({**logs, "step": 2})
    cb.on_log(None, state, control, logs=logs)
    assert set(logs) == {"loss", "deadspec/seconds"} | {
        f"deadspec/0/{side}/dead_count" for side in SIDES
    }
    assert (
        state.log_history[-1]["deadspec/0/fisher/dead_count"]
        == logs["deadspec/0/fisher/dead_count"]
    )
    assert cb.monitor.steps == [0, 2] and cb.monitor.model is model


def test_huggingface_callback_errors():
    pytest.importorskip("transformers")
    from deadspec.integrations.huggingface import DeadDirectionCallback

    x = torch.zeros(4, 3, dtype=torch.long)
    with pytest.raises(ValueError, match=r"deadspec.DeadDirectionCallback: every must be >= 1"):
        DeadDirectionCallback(every=0, inputs=x)
    with pytest.raises(TypeError, match="every must be an int, got float"):
        DeadDirectionCallback(every=2.0, inputs=x)
    with pytest.raises(ValueError, match=r"scalars must be among .*got \['rank'\]"):
        DeadDirectionCallback(every=1, inputs=x, scalars=["rank"])
    with pytest.raises(TypeError, match="the trainer supplies the model"):
        DeadDirectionCallback(every=1, inputs=x, model=nn.Linear(3, 3))


# ------------------------------------------------------------------ Lightning


def _lightning_module():
    pl = pytest.importorskip("lightning.pytorch")

    class Regressor(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1))

        def forward(self, x):
            return self.model(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = ((self(x) - y) ** 2).mean()
            self.log("loss", loss)
            return loss

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-2, weight_decay=0.1)

    return pl, Regressor


def _lightning_fit(tmp_path, cb, max_steps, ckpt_path=None):
    pl, regressor = _lightning_module()
    from lightning.pytorch.loggers import CSVLogger

    torch.manual_seed(0)
    x = torch.randn(128, 4, generator=torch.Generator().manual_seed(1))
    y = x[:, :1] - x[:, 1:2]
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    trainer = pl.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        devices=1,
        logger=CSVLogger(str(tmp_path), name="run"),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        log_every_n_steps=3,
        callbacks=[cb],
    )
    fit_kw = {} if ckpt_path is None else {"ckpt_path": str(ckpt_path)}
    if ckpt_path is not None and "weights_only" in inspect.signature(trainer.fit).parameters:
        fit_kw["weights_only"] = True  # the callback's state is plain scalars and tensors
    trainer.fit(regressor(), loader, **fit_kw)
    return trainer


def _metrics_rows(trainer):
    with open(Path(trainer.logger.log_dir) / "metrics.csv") as f:
        return list(csv.DictReader(f))


def _probe():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(32, 4, generator=g)
    return x, x[:, :1] - x[:, 1:2]


@pytest.mark.filterwarnings("ignore:.*treespec.*")  # lightning 2.6 on torch 2.13
@pytest.mark.filterwarnings("ignore:.*does not have many workers.*")  # a CPU test loader
def test_lightning_logs_scalars_and_resumes_the_record(tmp_path):
    pytest.importorskip("lightning")
    from deadspec.integrations.lightning import DeadDirectionCallback

    x, y = _probe()
    layers = ["0", "2"]

    def make():
        return DeadDirectionCallback(layers, every=2, inputs=x, targets=y, module="model")

    cb = make()
    trainer = _lightning_fit(tmp_path / "first", cb, max_steps=8)  # one epoch
    assert cb.monitor.steps == [0, 2, 4, 6, 8]
    assert cb.monitor.model is trainer.lightning_module.model
    # every reading in the logger's file, once, at its step (not only where log_every_n_steps=3
    # has Lightning write its own logs)
    rows = _metrics_rows(trainer)
    names = _names(layers) | {"deadspec/seconds"}
    read_rows = [r for r in rows if r.get("deadspec/0/activation/logdet_plus")]
    assert [int(r["step"]) for r in read_rows] == [2, 4, 6, 8]
    for r in read_rows:
        assert {k for k in r if k.startswith("deadspec/") and r[k]} == names
        expected = _record_values(cb.monitor, int(r["step"]))
        for k, v in expected.items():
            assert float(r[k]) == pytest.approx(v, rel=1e-12, abs=1e-300)
    assert "deadspec/2/fisher/dead_count" in trainer.callback_metrics

    ckpt = tmp_path / "step8.ckpt"
    trainer.save_checkpoint(ckpt)
    saved = torch.load(ckpt, weights_only=True)["callbacks"][cb.state_key]["monitor"]
    assert [c["step"] for c in saved["checkpoints"]] == [0, 2, 4, 6, 8]

    resumed = make()
    trainer2 = _lightning_fit(tmp_path / "second", resumed, max_steps=12, ckpt_path=ckpt)
    assert trainer2.global_step == 12
    assert resumed.monitor.steps == [0, 2, 4, 6, 8, 10, 12]
    old = cb.monitor.records()
    _same_records(resumed.monitor.records()[: len(old)], old)
    rows2 = [r for r in _metrics_rows(trainer2) if r.get("deadspec/0/activation/logdet_plus")]
    assert [int(r["step"]) for r in rows2] == [10, 12]
    assert resumed.monitor.rates() and len(resumed.monitor.records()) == 7 * 2 * 2


def test_lightning_state_key_and_errors():
    pytest.importorskip("lightning")
    from deadspec.integrations.lightning import DeadDirectionCallback

    x, y = _probe()
    a = DeadDirectionCallback(["0"], every=2, inputs=x, targets=y)
    b = DeadDirectionCallback(["2"], every=2, inputs=x, targets=y)
    assert a.state_key != b.state_key  # two callbacks keep two states in one checkpoint
    assert a.state_dict() == {} and a.monitor is None
    with pytest.raises(TypeError, match="module must be a submodule name or None, got int"):
        DeadDirectionCallback(["0"], every=2, inputs=x, module=3)
    with pytest.raises(ValueError, match="every must be >= 1, got 0"):
        DeadDirectionCallback(["0"], every=0, inputs=x)
    _, regressor = _lightning_module()
    nope = DeadDirectionCallback(["0"], every=2, inputs=x, targets=y, module="nope")
    with pytest.raises(
        ValueError,
        match="module must name a submodule of the LightningModule Regressor, got 'nope'",
    ):
        nope.on_train_start(None, regressor())
