"""The site catalogue: every name a reading can address (modules, MHA projections, heads).

A *site* is where a reading comes from: a capture point (a module's call, or a projection
computed inside a patched ``nn.MultiheadAttention``) and an optional head view (a block of
output rows or input columns of a linear-like layer, theory.md §2).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from torch import nn

from deadspec._attention import is_conv1d, weight_out_in
from deadspec._attention import layout as attention_layout
from deadspec._engine.inputs import names_list

__all__ = [
    "SiteSpec",
    "View",
    "catalog",
    "is_conv1d",
    "module_kind",
    "resolve_sites",
    "weight_out_in",
]


def module_kind(m: nn.Module) -> str:
    if isinstance(m, nn.Linear):
        return "linear"
    if is_conv1d(m):
        return "conv1d"
    if isinstance(m, nn.Embedding):
        return "embedding"
    if isinstance(m, nn.MultiheadAttention):
        return "mha"
    return "other"


@dataclasses.dataclass(frozen=True)
class View:
    """A block of a linear-like layer: output rows ("out") or input columns ("in") start:stop."""

    axis: str
    start: int
    stop: int


@dataclasses.dataclass(frozen=True)
class SiteSpec:
    """Where a reading comes from: a capture point and an optional head view."""

    capture: str  # key of the capture point (a module name, or a virtual MHA name)
    module: nn.Module  # module whose weight the capture point applies
    kind: str  # "linear" | "conv1d" | "embedding" | "mha" | "other" | "proj" (MHA q/k/v)
    view: View | None = None
    mha: str | None = None  # name of the MultiheadAttention that computes this capture point
    proj: str | None = None  # "q" | "k" | "v" | "out_proj" inside that MHA


def mha_widths(mha: nn.MultiheadAttention) -> dict[str, int]:
    """Output width of each projection of an nn.MultiheadAttention."""
    return {"q": mha.embed_dim, "k": mha.embed_dim, "v": mha.embed_dim}


def catalog(model: nn.Module) -> tuple[dict[str, SiteSpec], dict[str, list[str]], list[str]]:
    """Every readable name: modules, MHA projections, attention heads.

    Returns (specs, head_names: projection name -> its head names, default layer order).
    """
    named = dict(model.named_modules())
    specs: dict[str, SiteSpec] = {}
    heads: dict[str, list[str]] = {}
    default: list[str] = []
    mha_out: dict[str, str] = {}
    for name, m in named.items():
        kind = module_kind(m)
        if kind == "mha":
            for p in ("q", "k", "v"):
                vname = f"{name}.{p}" if name else p
                specs[vname] = SiteSpec(vname, m, "proj", None, name, p)
                default.append(vname)
            oname = f"{name}.out_proj" if name else "out_proj"
            mha_out[oname] = name
        if name in mha_out:
            specs[name] = SiteSpec(name, m, "linear", None, mha_out[name], "out_proj")
            default.append(name)
            continue
        if name in specs:  # a module literally named like a virtual MHA projection
            continue
        specs[name] = SiteSpec(name, m, kind)
        if kind in ("linear", "conv1d"):
            default.append(name)

    def add_heads(
        proj: str, key: str, axis: str, h: int, width: int, offset: int, base: str, label="h"
    ):
        if h < 1 or width % h:
            return
        dh = width // h
        for i in range(h):
            hname = f"{base}[{label}={i}]"
            src = specs[key]
            specs[hname] = dataclasses.replace(
                src, view=View(axis, offset + i * dh, offset + (i + 1) * dh)
            )
            heads.setdefault(proj, []).append(hname)

    for name, m in named.items():
        prefix = f"{name}." if name else ""
        if callable(getattr(m, "deadspec_heads", None)):
            for child, (axis, h) in m.deadspec_heads().items():
                cname = prefix + child
                sub = named.get(cname)
                if sub is None or module_kind(sub) not in ("linear", "conv1d"):
                    continue
                w = weight_out_in(sub)
                width = w.shape[0] if axis == "out" else w.shape[1]
                add_heads(cname, cname, axis, int(h), int(width), 0, cname)
        elif isinstance(m, nn.MultiheadAttention):
            h = int(m.num_heads)
            for p, width in mha_widths(m).items():
                add_heads(prefix + p, prefix + p, "out", h, width, 0, prefix + p)
            add_heads(
                prefix + "out_proj",
                prefix + "out_proj",
                "in",
                h,
                m.embed_dim,
                0,
                prefix + "out_proj",
            )
        else:
            lay = attention_layout(name, m)
            if lay is None or lay.kind not in ("gpt2", "q_proj", "bert"):
                continue
            if any(mod not in specs for mod, _ in lay.qkv.values()) or lay.o not in specs:
                continue
            fused = lay.kind == "gpt2"  # q | k | v in one Conv1D: heads named by q/k/v
            for key, (mod, off) in lay.qkv.items():
                count = lay.count(key)
                # grouped-query attention: a K/V head is shared by a group of query heads
                label = "kv" if count < lay.heads else "h"
                base = prefix + key if fused else mod
                add_heads(mod, mod, "out", count, count * lay.head_dim, off, base, label)
            add_heads(lay.o, lay.o, "in", lay.heads, lay.heads * lay.head_dim, 0, lay.o)
    return specs, heads, default


def resolve_sites(
    model: nn.Module, layers: str | Sequence[str] | None, heads: bool, fn: str
) -> list[tuple[str, SiteSpec]]:
    specs, head_names, default = catalog(model)
    if layers is None:
        names = list(default)
        if not names:
            named = dict(model.named_modules())
            raise ValueError(
                f"deadspec.{fn}: layers=None reads every nn.Linear, but the model has none; "
                f"pass layers= from the available names {names_list(named)}"
            )
    else:
        if isinstance(layers, str):
            layers = [layers]
        if not hasattr(layers, "__iter__"):
            raise TypeError(
                f"deadspec.{fn}: layers must be a module name (str), a sequence of them or None, "
                f"got {type(layers).__name__}"
            )
        names = list(layers)
        if not names:
            raise ValueError(f"deadspec.{fn}: layers must name at least one module, got []")
        for name in names:
            if not isinstance(name, str):
                raise TypeError(
                    f"deadspec.{fn}: layer names must be str, got {type(name).__name__} {name!r}"
                )
            if name not in specs:
                named = dict(model.named_modules())
                extra = [n for n in specs if n not in named and "[h=" not in n]
                hint = f"; attention projections: {', '.join(extra)}" if extra else ""
                hint += "; per-head names look like '<projection>[h=0]'" if head_names else ""
                raise ValueError(
                    f"deadspec.{fn}: layer {name!r} is not a module name of the model; "
                    f"available names: {names_list(named)}{hint}"
                )
    out: list[tuple[str, SiteSpec]] = []
    seen: set[str] = set()

    def push(name: str) -> None:
        if name not in seen:
            seen.add(name)
            out.append((name, specs[name]))

    for name in names:
        push(name)
        if heads:
            for hname in head_names.get(name, []):
                push(hname)
            # A packed MHA projection's heads hang off its virtual q/k/v names.
    return out
