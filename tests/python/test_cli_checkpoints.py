"""Checkpoint forms of ``deadspec read``: safetensors, wrapped and prefixed state_dicts, Hugging
Face folders; each read equals the plain state_dict's reading, anything else is refused."""

from __future__ import annotations

import csv

import pytest
import torch

from deadspec import cli
from deadspec.models import demo_mlp

DEMO = "deadspec.models:demo_mlp"


def _rows(path):
    with open(path) as f:
        return [{k: v for k, v in r.items() if k not in ("checkpoint", "step")} for r in
                csv.DictReader(f)]


def _read(capsys, tmp_path, ckpts, model=DEMO, data=None, extra=()):
    out = tmp_path / "out.csv"
    argv = ["read", *map(str, ckpts), "--model", model, "--data", str(data), "--out", str(out)]
    rc = cli.main([*argv, "--no-progress", *extra])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    return _rows(out), captured.out


def _err(capsys, tmp_path, ckpts, model=DEMO, data=None):
    argv = ["read", *map(str, ckpts), "--model", model, "--data", str(data)]
    rc = cli.main([*argv, "--out", str(tmp_path / "o.csv"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("deadspec: error: ")
    return err


@pytest.fixture()
def demo(tmp_path):
    """A trained-looking demo MLP's state_dict, its data, and the plain state_dict's reading."""
    torch.manual_seed(3)
    model = demo_mlp()
    with torch.no_grad():
        model[0].weight[:5].mul_(1e-4)  # a few nearly dead units: a non-trivial reading
    state = model.state_dict()
    data = tmp_path / "data.pt"
    g = torch.Generator().manual_seed(4)
    torch.save({"inputs": torch.randn(48, 8, generator=g),
                "targets": torch.randn(48, 4, generator=g)}, data)
    plain = tmp_path / "plain.pt"
    torch.save(state, plain)
    return state, data, plain


def _baseline(capsys, tmp_path, demo):
    _, data, plain = demo
    rows, _ = _read(capsys, tmp_path, [plain], data=data)
    assert len(rows) == 6  # 3 Linear layers x 2 sides
    return rows


# ------------------------------------------------------------------ accepted forms
def test_safetensors_file(capsys, tmp_path, demo):
    from safetensors.torch import save_file

    state, data, _ = demo
    want = _baseline(capsys, tmp_path, demo)
    path = tmp_path / "step_10.safetensors"
    save_file(state, str(path))
    rows, out = _read(capsys, tmp_path, [path], data=data)
    assert rows == want and "stripped" not in out


@pytest.mark.parametrize(
    ("wrap", "prefix"),
    [
        (lambda s: {"model": s, "epoch": 3}, None),
        (lambda s: {"state_dict": s, "optimizer": {"lr": 0.1}}, None),
        (lambda s: {"model_state_dict": s, "step": 7}, None),
        # Lightning: the LightningModule's state_dict, its network under `self.model`
        (lambda s: {"state_dict": {f"model.{k}": v for k, v in s.items()}, "epoch": 1,
                    "global_step": 20}, "model."),
        # DDP: `module.` on every key, under model_state_dict
        (lambda s: {"model_state_dict": {f"module.{k}": v for k, v in s.items()}}, "module."),
        # nested wrappers, a bare prefixed dict (torch.compile's `_orig_mod.`)
        (lambda s: {"model": {"state_dict": s}}, None),
        (lambda s: {f"_orig_mod.{k}": v for k, v in s.items()}, "_orig_mod."),
    ],
    ids=["model", "state_dict", "model_state_dict", "lightning", "ddp", "nested", "compiled"],
)
def test_wrapped_and_prefixed_state_dicts(capsys, tmp_path, demo, wrap, prefix):
    state, data, _ = demo
    want = _baseline(capsys, tmp_path, demo)
    path = tmp_path / "run.ckpt"
    torch.save(wrap(state), path)
    rows, out = _read(capsys, tmp_path, [path], data=data)
    assert rows == want
    if prefix is None:
        assert "stripped" not in out
    else:
        assert f"stripped the prefix {prefix!r} from every key" in out


def test_prefixed_safetensors_and_compiled_factory(capsys, tmp_path, demo):
    from safetensors.torch import save_file

    state, data, _ = demo
    want = _baseline(capsys, tmp_path, demo)
    path = tmp_path / "w.safetensors"
    save_file({f"module.{k}": v for k, v in state.items()}, str(path))
    factory = tmp_path / "compiled_models.py"
    factory.write_text(
        "import torch\nfrom deadspec.models import demo_mlp\n\n"
        "def make():\n    return torch.compile(demo_mlp())\n"
    )
    rows, out = _read(capsys, tmp_path, [path], model=f"{factory}:make", data=data)
    assert rows == want and "'module.'" in out


# ------------------------------------------------------------------ refused forms
def test_refused_forms(capsys, tmp_path, demo):
    state, data, _ = demo
    cases = []
    p = tmp_path / "not_a_state.pt"
    torch.save({"weights": 1, "epoch": 2}, p)
    cases.append((p, "must hold a state_dict (a dict of tensors)"))
    p = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], p)
    cases.append((p, "must hold a state_dict (a dict of tensors), got list"))
    p = tmp_path / "whole_model.pt"
    torch.save(demo_mlp(), p)  # a pickled module: weights_only refuses it
    cases.append((p, "torch.load(weights_only=True)"))
    p = tmp_path / "partial_prefix.pt"  # the prefix does not make the keys match: no guess
    torch.save({f"model.{k}": v for k, v in list(state.items())[:-1]}, p)
    cases.append((p, "every key starts with 'model.'; stripped, the keys do not match"))
    p = tmp_path / "mixed.pt"  # two prefixes: nothing to strip
    torch.save({("a." if i % 2 else "b.") + k: v for i, (k, v) in enumerate(state.items())}, p)
    cases.append((p, "does not match the model from --model: missing keys"))
    p = tmp_path / "broken.safetensors"
    p.write_bytes(b"not a safetensors file")
    cases.append((p, "cannot load checkpoint"))
    p = tmp_path / "empty_folder"
    p.mkdir()
    cases.append((p, "must hold Hugging Face weights"))
    for path, match in cases:
        err = _err(capsys, tmp_path, [path], data=data)
        assert match in err, (path, err)
        assert str(path.name) in err


def test_refused_hf_specs(capsys, tmp_path, demo):
    _, data, plain = demo
    err = _err(capsys, tmp_path, [plain], model=f"hf:{tmp_path / 'nowhere'}", data=data)
    assert "must hold a Hugging Face config.json" in err and "no such folder" in err
    (tmp_path / "noconf").mkdir()
    err = _err(capsys, tmp_path, [], model=f"hf:{tmp_path / 'noconf'}", data=data)
    assert "a folder without config.json" in err
    err = _err(capsys, tmp_path, [], data=data)
    assert "no checkpoints given" in err


# ------------------------------------------------------------------ Hugging Face folders
@pytest.fixture()
def gpt2(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(5)
    cfg = transformers.GPT2Config(
        n_layer=1, n_embd=8, n_head=2, vocab_size=11, n_positions=8, resid_pdrop=0.0,
        embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0,
    )
    model = transformers.GPT2LMHeadModel(cfg)
    folder = tmp_path / "gpt2"
    model.save_pretrained(folder)  # model.safetensors, lm_head tied to wte (not stored)
    assert (folder / "model.safetensors").is_file()
    plain = tmp_path / "gpt2_state.pt"
    torch.save(model.state_dict(), plain)
    ids = torch.randint(0, 11, (6, 5), generator=torch.Generator().manual_seed(6))
    data = tmp_path / "tokens.pt"
    torch.save({"inputs": ids, "targets": ids}, data)
    capsys.readouterr()  # save_pretrained's progress bar
    return folder, plain, data, model


LAYERS = ("--layers", "lm_head", "transformer.h.0.mlp.c_fc", "transformer.h.0.attn.c_proj")


def test_hf_folder_is_the_checkpoint(capsys, tmp_path, gpt2):
    folder, plain, data, model = gpt2
    want, _ = _read(capsys, tmp_path, [plain], model=f"hf:{folder}", data=data, extra=LAYERS)
    assert len(want) == 6
    rows, _ = _read(capsys, tmp_path, [], model=f"hf:{folder}", data=data, extra=LAYERS)
    assert rows == want
    again, _ = _read(capsys, tmp_path, [folder], model=f"hf:{folder}", data=data, extra=LAYERS)
    assert again == want
    # a sharded folder of the same model (model.safetensors.index.json + shards)
    sharded = tmp_path / "sharded"
    model.save_pretrained(sharded, max_shard_size="1KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    rows, _ = _read(capsys, tmp_path, [sharded], model=f"hf:{folder}", data=data, extra=LAYERS)
    assert rows == want


def test_hf_folder_with_a_mismatched_state_dict_is_refused(capsys, tmp_path, gpt2):
    folder, _, data, _ = gpt2
    bad = tmp_path / "bad.pt"
    torch.save(demo_mlp().state_dict(), bad)
    err = _err(capsys, tmp_path, [bad], model=f"hf:{folder}", data=data)
    assert "does not match the model from --model" in err and "transformer.wte.weight" in err
