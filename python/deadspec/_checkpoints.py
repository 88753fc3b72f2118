"""Checkpoint forms for ``deadspec read``: state_dict files (torch or safetensors), wrapped and
prefixed state_dicts, and Hugging Face model folders.

Every function raises :class:`CheckpointError` (a ValueError) with the text the command line
prints after ``deadspec: error:``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "HF_PREFIX",
    "WRAPPER_KEYS",
    "CheckpointError",
    "apply_state",
    "common_prefix",
    "hf_factory",
    "hf_weight_files",
    "load_state",
]

#: ``--model hf:<folder>``: a Hugging Face model folder (config.json and weights).
HF_PREFIX = "hf:"
#: Keys under which a checkpoint dict may hold the state_dict (Lightning, common scripts).
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_INDEX = "pytorch_model.bin.index.json"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model."""


def _is_state(obj: Any) -> bool:
    import torch

    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) for k in obj)
        and all(isinstance(v, torch.Tensor) for v in obj.values())
    )


def _torch_file(p: Path) -> Any:
    import torch

    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"cannot load checkpoint {str(p)!r} with torch.load(weights_only=True): "
            f"{type(exc).__name__}: {exc}"
        ) from exc


def _safetensors_file(p: Path) -> dict[str, Any]:
    try:
        from safetensors.torch import load_file
    except ImportError as exc:  # pragma: no cover - a dependency of the package
        raise CheckpointError(
            f"checkpoint {str(p)!r} is a safetensors file: install the safetensors package"
        ) from exc
    try:
        return dict(load_file(str(p), device="cpu"))
    except Exception as exc:
        raise CheckpointError(
            f"cannot load checkpoint {str(p)!r} with safetensors: {type(exc).__name__}: {exc}"
        ) from exc


def _unwrap(obj: Any, p: Path) -> dict[str, Any]:
    """The state_dict inside a loaded checkpoint object (dicts nested under WRAPPER_KEYS)."""
    while isinstance(obj, Mapping) and not _is_state(obj):
        for key in WRAPPER_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
        else:
            break
    if _is_state(obj):
        return dict(obj)
    if isinstance(obj, Mapping):
        keys = sorted(map(str, obj))[:12]
        raise CheckpointError(
            f"checkpoint {str(p)!r} must hold a state_dict (a dict of tensors), bare or under "
            f"one of the keys {list(WRAPPER_KEYS)}, got a dict with keys {keys}"
        )
    raise CheckpointError(
        f"checkpoint {str(p)!r} must hold a state_dict (a dict of tensors), got "
        f"{type(obj).__name__}"
    )


def hf_weight_files(folder: Path) -> list[Path]:
    """The weight files of a Hugging Face model folder (single or sharded, safetensors
    preferred), or [] when it has none."""
    for single, index in (("model.safetensors", SAFETENSORS_INDEX),
                          ("pytorch_model.bin", TORCH_INDEX)):
        if (folder / single).is_file():
            return [folder / single]
        if (folder / index).is_file():
            try:
                weight_map = json.loads((folder / index).read_text())["weight_map"]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise CheckpointError(
                    f"cannot read the shard index {str(folder / index)!r}: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            return [folder / name for name in sorted(set(weight_map.values()))]
    return []


def load_state(path: str | Path) -> dict[str, Any]:
    """The state_dict of a checkpoint: a ``.safetensors`` file, a ``torch.save`` d file (bare
    or wrapped, see WRAPPER_KEYS), or a Hugging Face model folder (its weight files merged)."""
    p = Path(path)
    if p.is_dir():
        files = hf_weight_files(p)
        if not files:
            raise CheckpointError(
                f"checkpoint folder {str(p)!r} must hold Hugging Face weights (model.safetensors, "
                f"{SAFETENSORS_INDEX} with its shards, or pytorch_model.bin), got none"
            )
        state: dict[str, Any] = {}
        for f in files:
            if not f.is_file():
                raise CheckpointError(f"checkpoint shard {str(f)!r} does not exist")
            state.update(load_state(f))
        return state
    if not p.is_file():
        raise CheckpointError(f"checkpoint {str(p)!r} does not exist")
    if p.suffix == ".safetensors":
        return _safetensors_file(p)
    return _unwrap(_torch_file(p), p)


def common_prefix(state: Mapping[str, Any]) -> str | None:
    """The first dotted component every key shares (``"model."``), or None."""
    heads = {k.split(".", 1)[0] for k in state if "." in k}
    if len(heads) == 1 and all("." in k for k in state):
        return heads.pop() + "."
    return None


def _tied_keys(model: Any) -> dict[str, set[str]]:
    """Per state_dict key of a parameter, the other keys naming the same tensor (tied)."""
    by_id: dict[int, set[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(p), set()).add(name)
    return {n: names - {n} for names in by_id.values() for n in names}


def apply_state(model: Any, state: dict[str, Any], where: str) -> str | None:
    """Load ``state`` into ``model``: strict, except that a key missing from the state is
    allowed when its tensor is tied to a key the state holds (Hugging Face drops tied copies).
    A prefix every key carries is stripped when that makes the keys match (returned).
    ``where`` names the checkpoint in messages."""
    wanted = set(model.state_dict().keys())
    tied = _tied_keys(model)

    def fits(keys: set[str]) -> bool:
        missing = wanted - keys
        return not (keys - wanted) and all(tied.get(k, set()) & keys for k in missing)

    stripped = None
    if not fits(set(state)):
        prefix = ""
        keys = set(state)
        while (p := common_prefix({k[len(prefix):]: None for k in keys})) is not None:
            prefix += p
            if fits({k[len(prefix):] for k in keys}):
                state = {k[len(prefix):]: v for k, v in state.items()}
                stripped = prefix
                break
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        msg = str(exc).strip().replace("\n\t", "\n  ")
        raise CheckpointError(f"{where} does not match the model from --model: {msg}") from exc
    keys = set(state)
    missing = [k for k in result.missing_keys if not (tied.get(k, set()) & keys)]
    unexpected = list(result.unexpected_keys)
    if missing or unexpected:
        hint = ""
        p = common_prefix(state)
        if p is not None and stripped is None:
            hint = f" (every key starts with {p!r}; stripped, the keys do not match either)"
        raise CheckpointError(
            f"{where} does not match the model from --model: missing keys {missing[:10]}"
            f"{' ...' if len(missing) > 10 else ''}, unexpected keys {unexpected[:10]}"
            f"{' ...' if len(unexpected) > 10 else ''}{hint}"
        )
    return stripped


def hf_factory(folder_spec: str) -> Callable[[], Any]:
    """``hf:<folder>`` -> a zero-argument callable building the model of the folder's
    ``config.json`` (randomly initialised; the weights are the folder's checkpoint). The class
    is the config's first ``architectures`` entry that transformers has, else
    ``AutoModelForCausalLM``, else ``AutoModel``; nothing is downloaded."""
    folder = Path(folder_spec[len(HF_PREFIX):])
    if not folder_spec[len(HF_PREFIX):]:
        raise CheckpointError(f"--model hf:<folder> needs a folder, got {folder_spec!r}")
    if not (folder / "config.json").is_file():
        raise CheckpointError(
            f"--model {folder_spec}: the folder must hold a Hugging Face config.json, got "
            f"{'no such folder' if not folder.is_dir() else 'a folder without config.json'}"
        )
    try:
        import transformers
    except ImportError as exc:
        raise CheckpointError(
            f"--model {folder_spec} needs the transformers package (pip install transformers)"
        ) from exc
    try:
        config = transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"--model {folder_spec}: cannot read {str(folder / 'config.json')!r}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    classes = []
    for name in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, str(name), None)
        if isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel):
            classes.append(cls)

    def build() -> Any:
        if classes:
            return classes[0](config)
        for auto in (transformers.AutoModelForCausalLM, transformers.AutoModel):
            try:
                return auto.from_config(config)
            except ValueError:
                continue
        raise CheckpointError(
            f"--model {folder_spec}: transformers has no model class for this config "
            f"(model_type {getattr(config, 'model_type', None)!r}, architectures "
            f"{getattr(config, 'architectures', None)!r})"
        )

    return build
