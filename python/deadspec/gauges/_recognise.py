"""Structural recognisers: the gauges of the standard transformer blocks, read from the modules
(types, shapes and the families' child names) where tracing cannot reach.

Each recogniser knows one block layout and reports the gauges its structure has, with
``source="recogniser:<family>"``:

============== =========================================================================
``gpt2``        pre-LN block ``ln_1 → attn.c_attn`` (Conv1D), ``ln_2 → mlp.c_fc``;
                the final ``transformer.ln_f → lm_head`` when the head is not tied
``llama``       pre-norm decoder layer ``input_layernorm → self_attn.{q,k,v}_proj``,
                ``post_attention_layernorm → mlp.{gate,up}_proj`` (Llama, Mistral, Qwen2 and
                the other decoders in this layout); the final ``model.norm → lm_head``
``vit``         pre-LN encoder layer ``layernorm_before → attention`` (q/k/v),
                ``layernorm_after → mlp.fc1`` (``intermediate.dense``); ``vit.layernorm →
                classifier``
``torch``       ``nn.TransformerEncoderLayer``: ``norm1 → self_attn`` and ``norm2 → linear1``
                (``norm_first=True``); ``linear1 → linear2`` with a ReLU activation
``heads``       every attention module with a known head layout (:mod:`deadspec._attention`):
                a :class:`HeadRotation` (``part="vo"`` where the QK rotations are not a gauge)
``head``        the output layer of a ``*ForCausalLM`` / ``*For*Classification`` model
                (``lm_head``, ``classifier``): a :class:`LogitShift` (cross-entropy)
============== =========================================================================

Post-LN blocks (BERT, ``norm_first=False``) have no norm gauge: the norm's output is the
residual stream, which the next norm mixes across channels. A gauge whose parameters are shared
(GPT-2's ``lm_head`` tied to ``wte``) is never reported: moving it would break the tie.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch.nn.functional as F
from torch import nn

from deadspec._attention import (
    consumer_param,
    in_features,
    is_linear_like,
    layout,
    reads_columns,
)
from deadspec.gauges._modules import is_norm, join, norm_params
from deadspec.gauges.kinds import Gauge, HeadRotation, LogitShift, NormScale, Pair

__all__ = ["output_layers", "recognised"]

# (family, norm → attention, norm → MLP consumers); children that must be absent
BLOCKS: tuple[tuple[str, tuple[str, str], tuple[str, tuple[str, ...]], tuple[str, ...]], ...] = (
    ("gpt2", ("ln_1", "attn"), ("ln_2", ("mlp.c_fc",)), ()),
    (
        "llama",
        ("input_layernorm", "self_attn"),
        ("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj")),
        # Gemma-2 style sandwich norms: post_attention_layernorm normalises the attention output
        ("pre_feedforward_layernorm", "post_feedforward_layernorm"),
    ),
    ("vit", ("layernorm_before", "attention"), ("layernorm_after", ("mlp.fc1",)), ()),
    ("vit", ("layernorm_before", "attention"), ("layernorm_after", ("intermediate.dense",)), ()),
)
# (family, final norm, output layer)
FINALS = (
    ("gpt2", "transformer.ln_f", "lm_head"),
    ("llama", "model.norm", "lm_head"),
    ("vit", "vit.layernorm", "classifier"),
)
HEADS = ("lm_head", "classifier")


def _sub(mod: nn.Module, path: str) -> nn.Module | None:
    try:
        return mod.get_submodule(path)
    except AttributeError:
        return None


def _norm_scale(
    family: str,
    block: str,
    mod: nn.Module,
    norm: str,
    consumers: list[str],
    unshared: Callable[..., bool],
) -> NormScale | None:
    """NormScale(block.norm → block.consumers) when the structure fits (types, widths, no tie)."""
    n = _sub(mod, norm)
    if n is None or not is_norm(n) or type(n).__name__.startswith("Gemma"):
        return None  # (Gemma's RMSNorm multiplies by 1 + weight: not a scale of its weight)
    d = int(n.weight.shape[0])
    cons = [_sub(mod, c) for c in consumers]
    if not cons or any(c is None or not reads_columns(c) or in_features(c) != d for c in cons):
        return None
    ws = [consumer_param(c)[0] for c in cons]
    if not unshared(*norm_params(n), *ws):
        return None
    names = tuple(join(block, c) for c in consumers)
    return NormScale(
        join(block, norm),
        names[0] if len(names) == 1 else names,
        source=f"recogniser:{family}",
        dim=d,
    )


def _attention_consumers(block: nn.Module, attn: str) -> list[str] | None:
    """The children of ``block`` that read the attention's input: its q/k/v layers."""
    a = _sub(block, attn)
    if a is None:
        return None
    lay = layout(attn, a)
    if lay is None:
        return None
    if lay.kind == "mha":
        return [attn]
    out: list[str] = []
    for mod_name, _ in lay.qkv.values():
        if mod_name not in out:
            out.append(mod_name)
    return out


def _blocks(name: str, mod: nn.Module, unshared: Callable[..., bool]) -> list[Gauge]:
    out: list[Gauge] = []
    children = dict(mod.named_children())
    for family, (n_attn, attn), (n_mlp, mlp), absent in BLOCKS:
        if n_attn not in children or any(a in children for a in absent):
            continue
        qkv = _attention_consumers(mod, attn)
        mlp_ok = all(_sub(mod, c) is not None for c in mlp)
        if qkv is None or not mlp_ok:
            continue
        for norm, cons in ((n_attn, qkv), (n_mlp, list(mlp))):
            g = _norm_scale(family, name, mod, norm, cons, unshared)
            if g is not None:
                out.append(g)
        break
    if isinstance(mod, nn.TransformerEncoderLayer):
        out.extend(_torch_encoder(name, mod, unshared))
    return out


def _torch_encoder(name: str, layer: nn.TransformerEncoderLayer, unshared: Callable[..., bool]):
    out: list[Gauge] = []
    if layer.norm_first:
        for norm, cons in (("norm1", ["self_attn"]), ("norm2", ["linear1"])):
            g = _norm_scale("torch", name, layer, norm, cons, unshared)
            if g is not None:
                out.append(g)
    act = getattr(layer, "activation", None)
    l1, l2 = layer.linear1, layer.linear2
    if (act is F.relu or isinstance(act, nn.ReLU)) and unshared(l1.weight, l1.bias, l2.weight):
        out.append(
            Pair(
                join(name, "linear1"), join(name, "linear2"), source="recogniser:torch",
                dim=l1.out_features,
            )
        )
    return out


def _finals(model: nn.Module, unshared: Callable[..., bool]) -> list[Gauge]:
    out: list[Gauge] = []
    for family, norm, head in FINALS:
        if _sub(model, norm) is None or _sub(model, head) is None:
            continue
        # the head must read the norm's output directly: a model of this family type
        g = _norm_scale(family, "", model, norm, [head], unshared)
        if g is not None:
            out.append(g)
    return out


def _heads(model: nn.Module, unshared: Callable[..., bool]) -> list[Gauge]:
    out: list[Gauge] = []
    for name, mod in model.named_modules():
        lay = layout(name, mod)
        if lay is None or not unshared(*mod.parameters()):
            continue
        part = "both" if lay.qk else "vo"
        out.append(HeadRotation(name, part=part, source=f"recogniser:{lay.kind}"))
    return out


def _logit_layers(model: nn.Module, unshared: Callable[..., bool]) -> list[Gauge]:
    out: list[Gauge] = []
    for head in HEADS:
        m = _sub(model, head)
        if isinstance(m, nn.Linear) and is_linear_like(m) and unshared(m.weight, m.bias):
            out.append(LogitShift(head, source="recogniser:head", dim=m.out_features))
    return out


def recognised(
    model: nn.Module, unshared: Callable[..., bool], *, heads: bool, loss: Any
) -> list[Gauge]:
    """The gauges the recognisers find in ``model`` (names; not yet bound)."""
    out: list[Gauge] = []
    for name, mod in model.named_modules():
        out.extend(_blocks(name, mod, unshared))
    out.extend(_finals(model, unshared))
    if heads:
        out.extend(_heads(model, unshared))
    if loss == "cross_entropy" and _is_hf_head_model(model):
        out.extend(_logit_layers(model, unshared))
    return out


def _is_hf_head_model(model: nn.Module) -> bool:
    """A ``*ForCausalLM`` / ``*ForSequenceClassification`` / ``*ForImageClassification`` model
    (its ``lm_head`` / ``classifier`` output is the logits)."""
    name = type(model).__name__
    return name.endswith(("ForCausalLM", "LMHeadModel", "ForSequenceClassification",
                          "ForImageClassification"))


def output_layers(model: nn.Module) -> set[str]:
    """The output layer(s) of a Hugging Face head model (``lm_head``, ``classifier``), tied or
    not; empty for other models."""
    if not _is_hf_head_model(model):
        return set()
    return {h for h in HEADS if is_linear_like(_sub(model, h))}
