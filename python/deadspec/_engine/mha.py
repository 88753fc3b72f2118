"""``nn.MultiheadAttention`` as capture points: its forward written with one ``F.linear`` per
projection, patched in for the duration of a read so the q/k/v/out projections can be read."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from deadspec._engine.capture import Capture

__all__ = ["PatchedMHA", "mha_forward"]


def mha_forward(
    mha: nn.MultiheadAttention,
    caps: Mapping[str, Capture],
    call: Callable,
    fn: str,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    key_padding_mask: torch.Tensor | None = None,
    need_weights: bool = True,
    attn_mask: torch.Tensor | None = None,
    average_attn_weights: bool = True,
    is_causal: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """nn.MultiheadAttention.forward written with F.linear per projection (capture points)."""
    if mha.bias_k is not None or mha.add_zero_attn:
        raise ValueError(
            f"deadspec.{fn}: nn.MultiheadAttention with add_bias_kv or add_zero_attn is not "
            f"supported"
        )
    if query.ndim != 3:
        raise ValueError(
            f"deadspec.{fn}: nn.MultiheadAttention inputs must be batched (3-D), got "
            f"{tuple(query.shape)}"
        )
    if not mha.batch_first:
        query, key, value = (x.transpose(0, 1) for x in (query, key, value))
    n, lq, e = query.shape
    s = key.shape[1]
    h, dh = mha.num_heads, mha.head_dim
    if mha._qkv_same_embed_dim:
        wq, wk, wv = mha.in_proj_weight.chunk(3)
    else:
        wq, wk, wv = mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight
    bq = bk = bv = None
    if mha.in_proj_bias is not None:
        bq, bk, bv = mha.in_proj_bias.chunk(3)

    def proj(p: str, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        z = F.linear(x, w, b)
        cap = caps.get(p)
        if cap is not None:
            z2 = call(cap, x, z)
            if z2 is not None:
                z = z2
        return z

    q = proj("q", query, wq, bq).reshape(n, lq, h, dh).transpose(1, 2)
    k = proj("k", key, wk, bk).reshape(n, s, h, dh).transpose(1, 2)
    v = proj("v", value, wv, bv).reshape(n, s, h, dh).transpose(1, 2)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(dh)
    if attn_mask is None and is_causal:
        attn_mask = torch.ones(lq, s, dtype=torch.bool, device=q.device).triu(1)
    if attn_mask is not None:
        m = attn_mask if attn_mask.ndim == 2 else attn_mask.reshape(n, h, lq, s)
        if m.dtype == torch.bool:
            scores = scores.masked_fill(m, float("-inf"))
        else:
            scores = scores + m.to(scores.dtype)
    if key_padding_mask is not None:
        kp = key_padding_mask[:, None, None, :]
        if kp.dtype == torch.bool:
            scores = scores.masked_fill(kp, float("-inf"))
        else:
            scores = scores + kp.to(scores.dtype)
    attn = torch.softmax(scores, dim=-1)
    if mha.training and mha.dropout > 0:
        attn = F.dropout(attn, p=mha.dropout)
    z = (attn @ v).transpose(1, 2).reshape(n, lq, e)
    out = proj("out_proj", z, mha.out_proj.weight, mha.out_proj.bias)
    if not mha.batch_first:
        out = out.transpose(0, 1)
    weights = None
    if need_weights:
        weights = attn.mean(1) if average_attn_weights else attn
    return out, weights


class PatchedMHA:
    """Replace ``forward`` of the MultiheadAttention modules read, for the duration of a read."""

    def __init__(self, named: Mapping[str, nn.Module], captures: Sequence[Capture], call, fn):
        self.patched: list[tuple[nn.Module, Any]] = []
        by_mha: dict[str, dict[str, Capture]] = {}
        for cap in captures:
            if cap.mha is not None:
                by_mha.setdefault(cap.mha, {})[cap.proj] = cap
        for name, caps in by_mha.items():
            mha = named[name]
            prev = mha.__dict__.get("forward", None)
            mha.forward = functools.partial(mha_forward, mha, caps, call, fn)
            self.patched.append((mha, prev))

    def restore(self) -> None:
        for mha, prev in self.patched:
            if prev is None:
                mha.__dict__.pop("forward", None)
            else:
                mha.forward = prev
