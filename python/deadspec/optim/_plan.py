"""The plan of a DDC optimizer: the rescaling sites, the role of each parameter (rows of a
site, columns of a site, a logit-shift layer), the topological order of the sites and the head
blocks a HeadRotation rotates."""

from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from deadspec import gauges as G
from deadspec._attention import consumer_param
from deadspec._attention import layout as attention_layout
from deadspec.gauges._modules import as_tuple, is_norm, norm_params

__all__ = ["Plan", "Rot", "Site", "build_plan", "warn_unread"]


@dataclass
class Site:
    name: str
    kind: str  # "pair" | "norm"
    weight: torch.Tensor  # producer rows: Linear weight (h×d) or norm γ (h,)
    bias: torch.Tensor | None  # Linear bias or norm β
    consumers: list[torch.Tensor]  # weights whose columns index the units
    units: torch.Tensor | None
    size: int  # number of units in the gauge
    in_site: int | None = None
    state: dict[str, Any] = field(default_factory=dict)
    # per consumer, the stored axis its units index: 1 (nn.Linear columns), 0 (a Conv1D's rows)
    consumer_axes: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.consumer_axes:
            self.consumer_axes = [1] * len(self.consumers)

    def consumer_views(self, grad: bool = False) -> list[torch.Tensor]:
        """The consumers (``grad``: their gradients) as ``out × in`` matrices, whose columns
        index the units (a Conv1D weight transposed: a view)."""
        out = []
        for c, axis in zip(self.consumers, self.consumer_axes):
            t = c.grad if grad else c
            out.append(t if t is None or axis == 1 else t.T)
        return out


class Plan:
    def __init__(self) -> None:
        self.sites: list[Site] = []
        self.row: dict[int, int] = {}
        self.col: dict[int, int] = {}
        self.col_axis: dict[int, int] = {}  # id(consumer) -> the stored axis of its units
        self.shift: set[int] = set()
        self.order: list[int] = []
        self.gauges: list[G.Gauge] = []
        self.rot: dict[int, Rot] = {}  # id(param) -> rotated head blocks (DDCMuon)
        self.chain_layers: dict[str, nn.Module] = {}  # the Chains' layers, by name

    def add_site(self, site: Site, fn: str) -> None:
        idx = len(self.sites)
        for t in (site.weight, site.bias):
            if t is None:
                continue
            if id(t) in self.row:
                other = self.sites[self.row[id(t)]]
                raise ValueError(
                    f"deadspec.{fn}: gauges must not share a producer, got "
                    f"{site.name!r} and {other.name!r}"
                )
            if id(t) in self.shift:
                raise ValueError(
                    f"deadspec.{fn}: a LogitShift layer cannot also be a "
                    f"producer, got {site.name!r}"
                )
        for c in site.consumers:
            if id(c) in self.col:
                other = self.sites[self.col[id(c)]]
                raise ValueError(
                    f"deadspec.{fn}: a consumer's columns must belong to one "
                    f"gauge, got {site.name!r} and {other.name!r}"
                )
        self.sites.append(site)
        for t in (site.weight, site.bias):
            if t is not None:
                self.row[id(t)] = idx
        for c, axis in zip(site.consumers, site.consumer_axes):
            self.col[id(c)] = idx
            self.col_axis[id(c)] = axis

    def finish(self, fn: str) -> None:
        for s in self.sites:
            s.in_site = self.col.get(id(s.weight)) if s.kind == "pair" else None
        # topological order over "producer columns come from site t"
        state = [0] * len(self.sites)
        order: list[int] = []

        def visit(i: int) -> None:
            if state[i] == 2:
                return
            if state[i] == 1:
                raise ValueError(
                    f"deadspec.{fn}: gauges must form an acyclic network, got a "
                    f"cycle through {self.sites[i].name!r}"
                )
            state[i] = 1
            j = self.sites[i].in_site
            if j is not None:
                visit(j)
            state[i] = 2
            order.append(i)

        for i in range(len(self.sites)):
            visit(i)
        self.order = order


def build_plan(
    model: nn.Module, gauges: list[G.Gauge], explicit: bool, fn: str, heads: bool = False
) -> Plan:
    """Sites, roles and (``heads=True``) the rotated head blocks of the gauges (``heads=False``:
    discovered HeadRotations are left out, declared ones refused)."""
    plan = Plan()
    rotations: list[G.HeadRotation] = []
    pairs: list[G.Pair] = []
    norms: list[G.NormScale] = []
    shifts: list[G.LogitShift] = []
    chains: list[G.Chain] = []
    for g in gauges:
        if not isinstance(g, G.Gauge):
            raise TypeError(
                f"deadspec.{fn}: gauges must hold deadspec.gauges.Gauge objects, got "
                f"{type(g).__name__}"
            )
        if isinstance(g, G.HeadRotation) and heads:
            b = g.bind(model)
            rotations.append(b)
            plan.gauges.append(b)
            continue
        if isinstance(g, G.HeadRotation):
            if explicit:
                raise ValueError(
                    f"deadspec.{fn}: given {g.describe()} with rotations=False; drop it from "
                    f"gauges= or construct with rotations=True"
                )
            continue
        if explicit and g.source == "declared":
            g.validate(model)  # discovered gauges were checked by discovery
        b = g.bind(model)
        if isinstance(b, G.Pair):
            pairs.append(b)
        elif isinstance(b, G.NormScale):
            norms.append(b)
        elif isinstance(b, G.LogitShift):
            shifts.append(b)
        elif isinstance(b, G.Chain):
            chains.append(b)
        else:  # pragma: no cover - future gauge kinds
            raise NotImplementedError(f"deadspec.{fn}: gauge kind {b.kind!r} is not supported")
        plan.gauges.append(b)
    have = {(p.producer, p.consumer) for p in pairs}
    for ch in chains:
        for name in ch.layers:
            plan.chain_layers[name] = model.get_submodule(name)
        for p in ch.pairs():
            if (p.producer, p.consumer) not in have:
                pairs.append(p.bind(model))
                have.add((p.producer, p.consumer))
    for sh in shifts:
        mod = model.get_submodule(sh.layer)
        plan.shift.add(id(mod.weight))
        if mod.bias is not None:
            plan.shift.add(id(mod.bias))
    for p in pairs:
        prod = model.get_submodule(p.producer)
        cons, axes = consumer_params(model, p.consumer)
        units = None if p.units is None else torch.as_tensor(p.units, dtype=torch.int64)
        plan.add_site(
            Site(
                f"pair:{p.producer}",
                "pair",
                prod.weight,
                prod.bias,
                cons,
                units,
                prod.out_features if units is None else int(units.numel()),
                consumer_axes=axes,
            ),
            fn,
        )
    for n in norms:
        w, bb = norm_params(model.get_submodule(n.norm))
        cons, axes = consumer_params(model, n.consumer)
        plan.add_site(
            Site(f"norm:{n.norm}", "norm", w, bb, cons, None, int(w.shape[0]), consumer_axes=axes),
            fn,
        )
    plan.finish(fn)
    names = {id(p): n for n, p in model.named_parameters()}
    for r in rotations:
        add_rotation(plan, model, r, names, fn)
    return plan


def consumer_params(model: nn.Module, refs: Any) -> tuple[list[torch.Tensor], list[int]]:
    """The consumers' weights and the stored axis of their input units (0 for a Conv1D)."""
    pairs = [consumer_param(model.get_submodule(c)) for c in as_tuple(refs)]
    return [p for p, _ in pairs], [axis for _, axis in pairs]


@dataclass
class Rot:
    """The head blocks of one parameter that a HeadRotation rotates.

    ``axis`` 0: the rows of a block are rotated (q/k/v weights and biases, ``W_h ↦ R W_h``);
    ``axis`` 1: its columns (the output projection, ``W_o[:, h] ↦ W_o[:, h] Rᵀ``). ``segments``
    are the disjoint ``[start, stop)`` ranges along ``axis``, one per rotated head.
    """

    name: str
    axis: int
    size: int
    segments: list[tuple[int, int]]

    def cover(self) -> list[tuple[int, int]]:
        """The segments plus the maximal unrotated ranges between them: a partition of the axis."""
        out: list[tuple[int, int]] = []
        at = 0
        for a, b in self.segments:
            if a > at:
                out.append((at, a))
            out.append((a, b))
            at = b
        if at < self.size:
            out.append((at, self.size))
        return out


def add_rotation(
    plan: Plan, model: nn.Module, r: G.HeadRotation, names: dict[int, str], fn: str
) -> None:
    entries = r.blocks(model)
    for p, axis, segs in entries:
        name = names.get(id(p), f"{r.attention}.<param>")
        # the rescaling σ must be constant along the rotated axis and the site scales ρ must not
        # see the rotation: rotated rows may not be a producer's, rotated columns not a consumer's
        if axis == 0 and id(p) in plan.row:
            raise ValueError(
                f"deadspec.{fn}: the rows that {r.describe()} rotates must not also be rescaled "
                f"by a Pair or NormScale, got {name!r} as the producer of "
                f"{plan.sites[plan.row[id(p)]].name!r}"
            )
        if id(p) in plan.col and axis == plan.col_axis[id(p)]:
            raise ValueError(
                f"deadspec.{fn}: the columns that {r.describe()} rotates must not also be "
                f"rescaled by a Pair or NormScale, got {name!r} as a consumer of "
                f"{plan.sites[plan.col[id(p)]].name!r}"
            )
        rot = plan.rot.get(id(p))
        if rot is None:
            rot = plan.rot[id(p)] = Rot(name, axis, int(p.shape[axis]), [])
        elif rot.axis != axis:
            raise ValueError(
                f"deadspec.{fn}: a parameter must be rotated along one axis, got {name!r} "
                f"rotated along its rows and its columns"
            )
        merged = sorted(rot.segments + segs)
        if any(b0 > a1 for (_, b0), (a1, _) in itertools.pairwise(merged)):
            raise ValueError(
                f"deadspec.{fn}: a head block must belong to one HeadRotation, got overlapping "
                f"rotations of {name!r}"
            )
        rot.segments = merged


def warn_unread(model: nn.Module, plan: Plan, fn: str, plain: str) -> None:
    """Warn when discovery gave the optimizer nothing to act on although the model has
    normalisation layers or attention: it then steps as its plain base, and says so."""
    if plan.sites or plan.rot or plan.shift:
        return
    norms = [n for n, m in model.named_modules() if is_norm(m)]
    attn = [n for n, m in model.named_modules() if _looks_like_attention(m)]
    if not norms and not attn:
        return
    what = []
    if norms:
        what.append(f"{len(norms)} normalisation layer(s) ({_few(norms)})")
    if attn:
        what.append(f"{len(attn)} attention module(s) ({_few(attn)})")
    warnings.warn(
        f"deadspec.{fn}: found no gauge in {type(model).__name__}, which has "
        f"{' and '.join(what)} that discovery could not read: {fn} steps as {plain}. Declare "
        f"the gauges by hand (gauges=[deadspec.gauges.NormScale('norm', 'consumer'), "
        f"deadspec.gauges.HeadRotation('attention'), ...]; see docs/gauges.md) and verify them "
        f"with Gauge.check",
        UserWarning,
        stacklevel=4,
    )


def _looks_like_attention(m: nn.Module) -> bool:
    if attention_layout("", m) is not None:
        return True
    return "attention" in type(m).__name__.lower() and any(True for _ in m.parameters())


def _few(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:3])
    return shown + (f", … {len(names) - 3} more" if len(names) > 3 else "")
