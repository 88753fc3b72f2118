"""Linear-like layers and attention layouts, shared by the readings and the gauges.

A *linear-like* layer is an ``nn.Linear`` (weight ``out × in``) or a Hugging Face ``Conv1D``
(GPT-2: ``y = x W + b`` with W stored ``in × out``); :func:`weight_out_in` gives either as an
``out × in`` view, so code written for ``nn.Linear`` acts on both.

An *attention layout* (:func:`layout`) says where the heads of an attention module lie: for each
of q, k, v the weight (an ``out × in`` view) and bias whose output rows ``offset + h·dh …`` hold
head h, for the output projection the input columns of each query head; the head counts
(grouped-query attention: ``kv_heads`` < ``heads``, query head h reads K/V head
``h // (heads / kv_heads)``), and the rotary embedding's convention. One recogniser per layout:

=============== ===================================================================================
``mha``          ``nn.MultiheadAttention`` (packed ``in_proj_weight``, ``out_proj``)
``deadspec``     modules with ``q, k, v, o`` ``nn.Linear`` children and ``deadspec_heads()``
``gpt2``         ``GPT2Attention``-style: fused ``c_attn`` ``Conv1D`` (q | k | v), ``c_proj``
``q_proj``       ``q_proj, k_proj, v_proj, o_proj`` ``nn.Linear`` (Llama, Mistral, Qwen2, ViT in
                 transformers ≥ 5, …): head counts from the module or its ``config``
                 (``num_key_value_heads`` for GQA); RoPE in the ``rotate_half`` convention when
                 the config carries rotary parameters
``bert``         a module whose child holds ``query, key, value`` (``num_attention_heads``) and
                 whose ``output.dense`` is the output projection (BERT, RoBERTa, ViT < 5)
=============== ===================================================================================
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

__all__ = [
    "Layout",
    "consumer_matrix",
    "consumer_param",
    "in_features",
    "is_conv1d",
    "is_linear_like",
    "layout",
    "out_features",
    "reads_columns",
    "weight_out_in",
]


def is_conv1d(m: nn.Module) -> bool:
    """Hugging Face ``Conv1D``: ``y = x @ W + b`` with W stored ``in × out`` (GPT-2)."""
    w = getattr(m, "weight", None)
    return (
        type(m).__name__ == "Conv1D"
        and isinstance(w, torch.Tensor)
        and w.ndim == 2
        and hasattr(m, "nf")
    )


def is_linear_like(m: Any) -> bool:
    return isinstance(m, nn.Linear) or (isinstance(m, nn.Module) and is_conv1d(m))


def _packed_mha(m: Any) -> bool:
    return (
        isinstance(m, nn.MultiheadAttention)
        and m._qkv_same_embed_dim
        and m.bias_k is None
        and not m.add_zero_attn
    )


def reads_columns(m: Any) -> bool:
    """A layer whose input features index the columns of one ``out × in`` matrix: an
    ``nn.Linear``, a ``Conv1D``, an ``nn.MultiheadAttention`` with a packed ``in_proj_weight``
    (self-attention: q, k and v read the same input)."""
    return is_linear_like(m) or _packed_mha(m)


def consumer_param(m: nn.Module) -> tuple[torch.Tensor, int]:
    """(the parameter whose entries read the input features of ``m``, its stored axis that
    indexes them): 1 for ``nn.Linear`` and a packed MHA's ``in_proj_weight``, 0 for a Conv1D."""
    if isinstance(m, nn.MultiheadAttention):
        return m.in_proj_weight, 1
    return m.weight, 0 if is_conv1d(m) else 1


def consumer_matrix(m: nn.Module) -> torch.Tensor:
    """The matrix whose columns read the input features of ``m`` (``out × in``; a view)."""
    p, axis = consumer_param(m)
    return p if axis == 1 else p.T


def weight_out_in(m: nn.Module) -> torch.Tensor:
    """The weight of a linear-like module as a ``d_out × d_in`` matrix (a view)."""
    return m.weight.T if is_conv1d(m) else m.weight


def in_features(m: nn.Module) -> int:
    if isinstance(m, nn.MultiheadAttention):
        return int(m.embed_dim)
    return int(weight_out_in(m).shape[1])


def out_features(m: nn.Module) -> int:
    return int(weight_out_in(m).shape[0])


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where the heads of one attention module lie (module names relative to the model).

    ``qkv[key] = (module, offset)``: head h of ``key`` is the output rows
    ``offset + h·head_dim … offset + (h+1)·head_dim`` of that linear-like module (for ``mha`` the
    module is the attention itself and the rows are those of ``in_proj_weight``); ``o`` is the
    output projection, whose input columns ``h·head_dim …`` read query head h. ``qk`` is False
    (with ``why``) when the QK rotations are not a gauge of this module.
    """

    kind: str
    name: str
    heads: int
    kv_heads: int
    head_dim: int
    qkv: dict[str, tuple[str, int]]
    o: str
    rope: str | None = None  # None, "interleaved" (pairs 2i, 2i+1), "half" (pairs i, i + dh/2)
    qk: bool = True
    why: str = ""

    @property
    def group(self) -> int:
        """Query heads per K/V head."""
        return self.heads // self.kv_heads

    def count(self, key: str) -> int:
        return self.heads if key == "q" else self.kv_heads

    def tensors(self, model: nn.Module, key: str) -> tuple[torch.Tensor, torch.Tensor | None, int]:
        """(weight as ``out × in``, bias or None, row offset) of q, k or v."""
        mod_name, off = self.qkv[key]
        mod = model.get_submodule(mod_name)
        if isinstance(mod, nn.MultiheadAttention):
            return mod.in_proj_weight, mod.in_proj_bias, off
        return weight_out_in(mod), mod.bias, off

    def params(
        self, model: nn.Module, key: str
    ) -> tuple[torch.Tensor, torch.Tensor | None, int, int]:
        """(weight, bias or None, row offset, the weight's stored axis of the output rows: 1 for a
        Conv1D) of q, k or v, as parameters."""
        mod = model.get_submodule(self.qkv[key][0])
        if isinstance(mod, nn.MultiheadAttention):
            return mod.in_proj_weight, mod.in_proj_bias, self.qkv[key][1], 0
        return mod.weight, mod.bias, self.qkv[key][1], 1 if is_conv1d(mod) else 0

    def output_param(self, model: nn.Module) -> tuple[torch.Tensor, int]:
        """(the output projection's weight parameter, its stored axis of the input columns)."""
        mod = model.get_submodule(self.o)
        return mod.weight, 0 if is_conv1d(mod) else 1

    def output(self, model: nn.Module) -> torch.Tensor:
        """The output projection's weight as ``out × in`` (its columns index the heads)."""
        return weight_out_in(model.get_submodule(self.o))


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _int(x: Any) -> int | None:
    try:
        v = int(x)
    except (TypeError, ValueError):
        return None
    return v if v >= 1 else None


def _config_rope(cfg: Any) -> tuple[str | None, str]:
    """("half", "") when the config carries rotary parameters over the whole head, (None, "")
    when it carries none, ("partial", why) for a partial rotary embedding."""
    if cfg is None:
        return None, ""
    d = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(vars(cfg))
    keys = ("rope_parameters", "rope_theta", "rope_scaling")
    has = any(k in d and d[k] is not None for k in keys)
    if not has:
        return None, ""
    params = d.get("rope_parameters") or {}
    factor = d.get("partial_rotary_factor", params.get("partial_rotary_factor", 1.0))
    if factor is not None and float(factor) != 1.0:
        return "partial", f"a partial rotary embedding (partial_rotary_factor={factor})"
    return "half", ""


def layout(name: str, mod: nn.Module, num_heads: int | None = None) -> Layout | None:
    """The head layout of ``mod`` (named ``name`` in its model), or None if it is not an
    attention module deadspec can read. ``num_heads`` stands in for a ``deadspec_heads`` module's
    missing ``num_heads`` attribute."""
    if isinstance(mod, nn.MultiheadAttention):
        if not mod._qkv_same_embed_dim or mod.bias_k is not None or mod.add_zero_attn:
            return None
        h, e = int(mod.num_heads), int(mod.embed_dim)
        return Layout(
            "mha", name, h, h, e // h, {k: (name, i * e) for i, k in enumerate("qkv")},
            _join(name, "out_proj"),
        )
    fn = getattr(mod, "deadspec_heads", None)
    if callable(fn):
        return _deadspec_layout(name, mod, num_heads)
    c_attn = getattr(mod, "c_attn", None)
    if isinstance(c_attn, nn.Module) and is_conv1d(c_attn):
        return _gpt2_layout(name, mod)
    if all(isinstance(getattr(mod, f"{k}_proj", None), nn.Linear) for k in "qkvo"):
        return _qproj_layout(name, mod)
    return _bert_layout(name, mod)


def _deadspec_layout(name: str, mod: nn.Module, num_heads: int | None) -> Layout | None:
    try:
        mp = dict(mod.deadspec_heads())
    except Exception:  # noqa: BLE001 - a foreign method; treat as absent
        return None
    if not {"q", "k", "v", "o"} <= set(mp) or not all(
        isinstance(getattr(mod, k, None), nn.Linear) for k in "qkvo"
    ):
        return None
    h = _int(getattr(mod, "num_heads", getattr(mod, "n_heads", num_heads)))
    d = mod.q.out_features
    if h is None or d % h:
        return None
    rope = "interleaved" if bool(getattr(mod, "rope", False)) else None
    return Layout(
        "deadspec", name, h, h, d // h, {k: (_join(name, k), 0) for k in "qkv"}, _join(name, "o"),
        rope=rope,
    )


def _gpt2_layout(name: str, mod: nn.Module) -> Layout | None:
    c_proj = getattr(mod, "c_proj", None)
    h = _int(getattr(mod, "num_heads", None))
    e = _int(getattr(mod, "embed_dim", None))
    if getattr(mod, "is_cross_attention", False) or h is None or e is None or e % h:
        return None
    if not (isinstance(c_proj, nn.Module) and is_conv1d(c_proj)):
        return None
    if out_features(mod.c_attn) != 3 * e or in_features(c_proj) != e:
        return None
    c = _join(name, "c_attn")
    return Layout(
        "gpt2", name, h, h, e // h, {k: (c, i * e) for i, k in enumerate("qkv")},
        _join(name, "c_proj"),
    )


def _qproj_layout(name: str, mod: nn.Module) -> Layout | None:
    cfg = getattr(mod, "config", None)
    h = _int(getattr(mod, "num_heads", None) or getattr(mod, "num_attention_heads", None))
    if h is None and cfg is not None:
        h = _int(getattr(cfg, "num_attention_heads", None))
    kv = _int(getattr(mod, "num_key_value_heads", None))
    if kv is None and cfg is not None:
        kv = _int(getattr(cfg, "num_key_value_heads", None))
    kv = h if kv is None else kv
    if h is None or kv is None or h % kv:
        return None
    dq = mod.q_proj.out_features
    if dq % h or mod.k_proj.out_features != kv * (dq // h) or mod.o_proj.in_features != dq:
        return None
    if mod.v_proj.out_features != kv * (dq // h):
        return None
    rope, why = _config_rope(cfg)
    qk, dh = True, dq // h
    if rope == "partial":
        rope, qk = None, False
    elif rope == "half" and dh % 2:
        qk, why = False, f"an odd head dim ({dh}) under RoPE"
    for norm in ("q_norm", "k_norm"):
        if isinstance(getattr(mod, norm, None), nn.Module):
            qk, why = False, f"a per-head {norm} (its per-channel weight is not rotation-invariant)"
    return Layout(
        "q_proj", name, h, kv, dh, {k: (_join(name, f"{k}_proj"), 0) for k in "qkv"},
        _join(name, "o_proj"), rope=rope, qk=qk, why=why,
    )


QKV_NAMES = ("query", "key", "value")


def _bert_layout(name: str, mod: nn.Module) -> Layout | None:
    """A BERT-style attention: ``mod.<child>.query/key/value`` and ``mod.output.dense``."""
    out = getattr(mod, "output", None)
    dense = getattr(out, "dense", None) if isinstance(out, nn.Module) else None
    if not isinstance(dense, nn.Linear):
        return None
    for child_name, child in mod.named_children():
        if not all(isinstance(getattr(child, k, None), nn.Linear) for k in QKV_NAMES):
            continue
        if getattr(mod, "is_cross_attention", False) or getattr(child, "is_decoder", False):
            return None
        h = _int(getattr(child, "num_attention_heads", None))
        d = child.query.out_features
        if h is None or d % h or child.key.out_features != d or child.value.out_features != d:
            return None
        if dense.in_features != d:
            return None
        qk, why = True, ""
        pos = getattr(child, "position_embedding_type", "absolute")
        if pos not in (None, "absolute"):
            qk, why = False, f"relative position embeddings ({pos}) in the attention scores"
        base = _join(name, child_name)
        return Layout(
            "bert", name, h, h, d // h,
            {k: (_join(base, w), 0) for k, w in zip("qkv", QKV_NAMES)},
            _join(name, "output.dense"), qk=qk, why=why,
        )
    return None
