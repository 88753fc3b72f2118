"""Discovery of a model's gauges (:func:`discover`) and group elements over several gauges."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from deadspec._util import check_bool, check_real
from deadspec.gauges._binding import map_refs
from deadspec.gauges._export import exported_gauges
from deadspec.gauges._homogeneity import HOMOGENEOUS_MODULES
from deadspec.gauges._modules import (
    as_tuple,
    check_data,
    check_gauges,
    check_generator,
    check_module,
    is_norm,
    join,
    norm_params,
    shared_param_ids,
)
from deadspec.gauges._recognise import recognised
from deadspec.gauges._tracing import call_counts, fallback_logit, trace_info, walk
from deadspec.gauges.kinds import Chain, Gauge, HeadRotation, LogitShift, NormScale, Pair

__all__ = [
    "GaugeSet",
    "apply_elements",
    "bind",
    "derived_chains",
    "discover",
    "fallback_gauges",
    "random_elements",
    "summary",
]


class GaugeSet(list):
    """A list of gauges whose ``repr`` is the :func:`summary` table."""

    def __repr__(self) -> str:
        return summary(self)

    __str__ = __repr__


def summary(gauges: Sequence[Gauge]) -> str:
    """A printable table of gauges: index, kind, modules, group dimension, source."""
    gauges = check_gauges("summary", gauges)
    rows = [("#", "kind", "modules", "dim", "source")]
    for i, g in enumerate(gauges):
        if isinstance(g, Pair):
            mods = f"{g.producer} -> {', '.join(str(c) for c in as_tuple(g.consumer))}"
        elif isinstance(g, NormScale):
            mods = f"{g.norm} -> {', '.join(str(c) for c in as_tuple(g.consumer))}"
        elif isinstance(g, Chain):
            mods = " -> ".join(str(x) for x in g.layers) + (" (covered)" if g.covered else "")
        elif isinstance(g, HeadRotation):
            mods = f"{g.attention} [{g.part}{', rope' if g.rope else ''}]"
        else:
            mods = ", ".join(g.modules())
        dim = "" if getattr(g, "dim", None) is None else str(g.dim)
        if isinstance(g, Chain) and g.dim is not None:
            dim = str(g.dim - 1)
        if isinstance(g, HeadRotation) and g.dim is not None:
            dim = f"{g.num_heads}x{g.dim}"
        rows.append((str(i), g.kind, mods, dim, g.source))
    widths = [max(len(r[k]) for r in rows) for k in range(5)]
    lines = ["  ".join(r[k].ljust(widths[k]) for k in range(5)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if not gauges:
        lines.append("(no gauges)")
    return "\n".join(lines)


MLP_NAMES = (("fc1", "fc2"), ("fc_in", "fc_out"), ("c_fc", "c_proj"), ("lin1", "lin2"))
SWIGLU_NAMES = (("w1", "w3", "w2"), ("gate_proj", "up_proj", "down_proj"))


def discover(
    model: nn.Module,
    *,
    loss: str | None = "cross_entropy",
    check: bool = False,
    inputs: Any = None,
    targets: torch.Tensor | None = None,
    loss_fn: Any = None,
    heads: bool = True,
    chains: bool = True,
    generator: torch.Generator | None = None,
) -> GaugeSet:
    """Find the gauges of a model.

    Parameters
    ----------
    model : nn.Module
        The model (not modified). A ``torch.compile`` d model is read through the module it
        compiles (names as in the uncompiled model).
    loss : {"cross_entropy", None}
        ``"cross_entropy"``: the output layer's logit shift is a gauge (softmax cross-entropy
        over the last axis). None: no loss-dependent gauges.
    check : bool
        Verify each gauge numerically (:meth:`Gauge.check`, float64, a random group element,
        relative tolerance 1e-10) on ``inputs`` (required); gauges that fail are dropped with a
        warning.
    inputs, targets, loss_fn
        For ``check`` (see :meth:`Gauge.check`). ``inputs`` also let discovery read a model that
        ``torch.fx`` cannot trace on its ``torch.export`` graph (``source="export"``: the
        Pairs, NormScales and logit layers of the data flow, whatever the model's layout) and
        find the logit layer of a model that cannot be exported either.
    heads : bool
        Report :class:`HeadRotation` s (every attention module with a known head layout:
        ``nn.MultiheadAttention``, ``deadspec_heads()`` modules, Hugging Face GPT-2,
        Llama-style ``q_proj/k_proj/v_proj/o_proj`` and BERT-style attention).
    chains : bool
        Report :class:`Chain` s: maximal chains of three or more layers linked by Pairs
        (``covered=True``).
    generator : torch.Generator, optional
        For the group elements of ``check``.

    Returns
    -------
    GaugeSet
        A list of gauges (names, not modules), printable as a table.
    """
    model = check_module("discover", model)
    if loss not in ("cross_entropy", None):
        raise ValueError(f"deadspec.discover: loss must be 'cross_entropy' or None, got {loss!r}")
    check = check_bool("discover", "check", check)
    heads = check_bool("discover", "heads", heads)
    chains = check_bool("discover", "chains", chains)
    if check and inputs is None:
        raise ValueError("deadspec.discover: inputs must be given with check=True, got None")
    check_data("discover", inputs, targets, loss_fn, generator)
    info = trace_info(model)
    found = _Found(model)
    _traced_gauges(info, found)
    if inputs is not None and not info.root_traced:
        for g in exported_gauges(model, inputs, found.unshared, loss) or []:
            found.add(g.bind(model))
    if not info.root_traced:
        for g in fallback_gauges(model, found.unshared):
            found.add(g)
    if loss == "cross_entropy":
        _logit_shifts(model, info, inputs, found)
    for g in recognised(model, found.unshared, heads=heads, loss=loss):
        found.add(g.bind(model))
    if chains:
        for ch in derived_chains([g for g in found.gauges if isinstance(g, Pair)]):
            found.add(ch)
    out = found.ordered()
    naming = [g for g in out if g.source == "naming"]
    if naming and not check:
        warnings.warn(
            f"deadspec.discover: {len(naming)} gauge(s) found by module names only (the model "
            f"could not be traced); verify them with check=True",
            UserWarning,
            stacklevel=2,
        )
    if check:
        out = _checked(out, model, inputs, targets, loss_fn, generator)
    return GaugeSet(out)


class _Found:
    """The gauges found so far, one per (kind, first module); parameters shared between
    modules (tied weights) are never part of one."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.shared = shared_param_ids(model)
        self.gauges: list[Gauge] = []
        self.keys: set[tuple[str, str]] = set()

    def unshared(self, *ts: torch.Tensor | None) -> bool:
        return all(t is None or id(t) not in self.shared for t in ts)

    def add(self, g: Gauge) -> None:
        key = (g.kind, g.modules()[0])
        if key not in self.keys:
            self.keys.add(key)
            self.gauges.append(g)

    def ordered(self) -> list[Gauge]:
        """In ``named_modules()`` order of their first module, then by kind."""
        order = {name: i for i, (name, _) in enumerate(self.model.named_modules())}
        rank = {"norm": 0, "pair": 1, "chain": 2, "logit_shift": 3, "head_rotation": 4}
        return sorted(self.gauges, key=lambda g: (order.get(g.modules()[0], 1 << 30), rank[g.kind]))


def _traced_gauges(info: Any, found: _Found) -> None:
    """Pairs and NormScales from the traced graphs: a producer (Linear or norm) called once whose
    output reaches its consumers through homogeneous operations only."""
    for gr in info.graphs:
        counts = call_counts(gr.graph)
        for node in gr.graph.nodes:
            if node.op != "call_module" or counts.get(node.target, 0) != 1:
                continue
            mod = gr.root.get_submodule(node.target)
            is_lin = isinstance(mod, nn.Linear)
            if not (is_lin or is_norm(mod)):
                continue
            params = (mod.weight, mod.bias) if is_lin else norm_params(mod)
            if not found.unshared(*params):
                continue
            cons, _verdict, _why = walk(gr, node, counts)
            if cons is None:
                continue
            h = mod.out_features if is_lin else mod.weight.shape[0]
            cmods = [gr.root.get_submodule(c) for c in cons]
            if not all(
                isinstance(c, nn.Linear)
                and c.in_features == h
                and found.unshared(c.weight)
                and c is not mod
                for c in cmods
            ):
                continue
            names = tuple(join(gr.prefix, c) for c in cons)
            cref: Any = names[0] if len(names) == 1 else names
            kind = Pair if is_lin else NormScale
            found.add(kind(join(gr.prefix, node.target), cref, source="fx", dim=h))


def _logit_shifts(model: nn.Module, info: Any, inputs: Any, found: _Found) -> None:
    """The layers returning the logits (traced, else the fallbacks) as LogitShifts."""
    logit = set(info.logit_layers)
    if not info.root_traced:
        logit |= fallback_logit(model, inputs)
    source = "fx" if info.root_traced else "fallback"
    for name in sorted(logit):
        mod = model.get_submodule(name)
        if isinstance(mod, nn.Linear) and found.unshared(mod.weight, mod.bias):
            found.add(LogitShift(name, source=source, dim=mod.out_features))


def _checked(
    gauges: list[Gauge],
    model: nn.Module,
    inputs: Any,
    targets: Any,
    loss_fn: Any,
    generator: torch.Generator | None,
) -> list[Gauge]:
    """The gauges whose numerical check passes; the others dropped with a warning."""
    kept = []
    for g in gauges:
        rel = g.check(model, inputs, targets, loss_fn, generator=generator, raise_on_fail=False)
        if rel <= 1e-10:
            kept.append(g)
        else:
            warnings.warn(
                f"deadspec.discover: dropped {g.describe()}: the loss changed by {rel:.3g} "
                f"(relative) along it",
                UserWarning,
                stacklevel=3,
            )
    return kept


def derived_chains(pairs: list[Pair]) -> list[Chain]:
    """Maximal chains of three or more layers linked by whole-layer Pairs (``covered=True``)."""
    nxt = {p.producer: p.consumer for p in pairs if p.units is None and isinstance(p.consumer, str)}
    targets = set(nxt.values())
    out = []
    for start in nxt:
        if start in targets:
            continue
        layers = [start]
        while layers[-1] in nxt and len(layers) < 10_000:
            layers.append(nxt[layers[-1]])
        if len(layers) >= 3:
            out.append(Chain(tuple(layers), source="derived", covered=True, dim=len(layers)))
    return out


def _sequential_gauges(
    seq_name: str, seq: nn.Sequential, unshared: Callable[..., bool]
) -> list[Gauge]:
    """In an ``nn.Sequential``: a Linear or norm, homogeneous modules, then a Linear."""
    out: list[Gauge] = []
    kids = list(seq.named_children())
    for i, (n0, m0) in enumerate(kids):
        lin0 = isinstance(m0, nn.Linear)
        if not (lin0 or is_norm(m0)):
            continue
        j = i + 1
        while j < len(kids) and isinstance(kids[j][1], HOMOGENEOUS_MODULES):
            j += 1
        if j >= len(kids) or not isinstance(kids[j][1], nn.Linear):
            continue
        m1 = kids[j][1]
        h = m0.out_features if lin0 else m0.weight.shape[0]
        params = (m0.weight, m0.bias) if lin0 else norm_params(m0)
        if m1.in_features != h or not unshared(*params, m1.weight):
            continue
        p, c = join(seq_name, n0), join(seq_name, kids[j][0])
        kind = Pair if lin0 else NormScale
        out.append(kind(p, c, source="sequential", dim=h))
    return out


def _named_pairs(name: str, mod: nn.Module, unshared: Callable[..., bool]) -> list[Gauge]:
    """By the common MLP child names: ``fc1/act/fc2``-style (a homogeneous ``act``) and
    SwiGLU ``gate/up/down`` (the linear branch ``up`` → ``down``)."""
    children = dict(mod.named_children())
    act = children.get("act", children.get("activation"))
    candidates = [(a, b) for a, b in MLP_NAMES if isinstance(act, HOMOGENEOUS_MODULES)]
    candidates += [(up, down) for gate, up, down in SWIGLU_NAMES if gate in children]
    out: list[Gauge] = []
    for a, b in candidates:
        m0, m1 = children.get(a), children.get(b)
        if (
            isinstance(m0, nn.Linear)
            and isinstance(m1, nn.Linear)
            and m1.in_features == m0.out_features
            and unshared(m0.weight, m0.bias, m1.weight)
        ):
            out.append(Pair(join(name, a), join(name, b), source="naming", dim=m0.out_features))
    return out


def fallback_gauges(model: nn.Module, unshared: Callable[..., bool]) -> list[Gauge]:
    """Gauges of a model whose root cannot be traced: by ``nn.Sequential`` order and by the
    common MLP names (``source="naming"``: verify with ``check=True``)."""
    out: list[Gauge] = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Sequential):
            out.extend(_sequential_gauges(name, mod, unshared))
        out.extend(_named_pairs(name, mod, unshared))
    return out


def bind(gauges: Sequence[Gauge], model: nn.Module) -> GaugeSet:
    """The gauges with their module references replaced by the modules of ``model``.

    Each gauge is bound to ``model`` first (:meth:`Gauge.bind`: names resolved, structure
    checked), then every reference (producer, consumer, norm, layer, layers, attention) becomes
    the module itself. Gauges holding modules resolve without the model, so an optimizer given
    plain parameters can use them::

        gauges = deadspec.gauges.bind(deadspec.gauges.discover(model), model)
        opt = deadspec.optim.DDCAdam(model.parameters(), gauges=gauges)

    They act on the model they were bound to (and, like any gauge, on a model holding those
    modules); they print with the modules' reprs rather than names. A ``torch.compile`` d model
    is bound through the module it compiles.

    Parameters
    ----------
    gauges : sequence of Gauge
        Gauges naming modules of ``model`` (e.g. from :func:`discover`) or holding them.
    model : nn.Module
        The model the names refer to.

    Returns
    -------
    GaugeSet
        New gauge objects (the given ones are not modified), in the same order.
    """
    model = check_module("bind", model)
    out = []
    for g in check_gauges("bind", gauges):
        out.append(map_refs(g.bind(model), model.get_submodule))
    return GaugeSet(out)


def random_elements(
    model: nn.Module,
    gauges: Sequence[Gauge],
    generator: torch.Generator | None = None,
    *,
    spread: float = 1.0,
) -> list[Any]:
    """One random element per gauge (``c = exp(U(−spread, spread))`` for the scalings)."""
    model = check_module("random_elements", model)
    gauges = check_gauges("random_elements", gauges)
    check_generator("random_elements", generator)
    spread = check_real("random_elements", "spread", spread)
    return [g.random_element(model, generator, spread=spread) for g in gauges]


def apply_elements(model: nn.Module, gauges: Sequence[Gauge], elements: Sequence[Any]) -> None:
    """Act on ``model`` in place with one element per gauge, in order."""
    model = check_module("apply_elements", model)
    gauges = check_gauges("apply_elements", gauges)
    if isinstance(elements, (str, bytes)) or not hasattr(elements, "__len__"):
        raise TypeError(
            f"deadspec.apply_elements: elements must be a sequence (one element per gauge, from "
            f"random_elements), got {type(elements).__name__}"
        )
    if len(elements) != len(gauges):
        raise ValueError(
            f"deadspec.apply_elements: elements must hold one element per gauge "
            f"({len(gauges)}), got {len(elements)}"
        )
    for g, e in zip(gauges, elements):
        g.apply(model, e)
