"""torch.fx tracing of a model for the gauges: the graph walk from a producer through
positively homogeneous operations to its consumers, the logit layers, path validation."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from deadspec._usercode import MODEL_FORWARD, user_code
from deadspec.gauges._homogeneity import (
    DIV_FUNCTIONS,
    DIV_METHODS,
    HOMOGENEOUS_FUNCTIONS,
    HOMOGENEOUS_MODULES,
    MUL_FUNCTIONS,
    MUL_METHODS,
    NEG_FUNCTIONS,
    NON_HOMOGENEOUS_FUNCTIONS,
    NON_HOMOGENEOUS_METHODS,
    NON_HOMOGENEOUS_MODULES,
    TRANSPARENT_METHODS,
)
from deadspec.gauges._modules import heads_map, is_norm, join

__all__ = [
    "Graph",
    "TraceInfo",
    "call_counts",
    "descendants",
    "fallback_logit",
    "find_node",
    "trace_info",
    "validate_path",
    "walk",
]


class Tracer(torch.fx.Tracer):
    def __init__(self, extra_leaves: set[int]) -> None:
        super().__init__()
        self._extra = extra_leaves

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if id(m) in self._extra or is_norm(m):
            return True
        return super().is_leaf_module(m, qualname)


@dataclass
class Graph:
    prefix: str
    graph: torch.fx.Graph
    root: nn.Module


@dataclass
class TraceInfo:
    graphs: list[Graph]
    root_traced: bool
    logit_layers: set[str]
    failures: list[str]


def try_trace(mod: nn.Module, leaves: set[int]) -> torch.fx.Graph | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return Tracer(leaves).trace(mod)
    except Exception:  # noqa: BLE001 - any tracing failure means "use the fallback"
        return None


def trace_info(model: nn.Module) -> TraceInfo:
    """Trace the model (or, failing that, each traceable submodule bottom-up)."""
    graph = try_trace(model, set())
    if graph is not None:
        return TraceInfo([Graph("", graph, model)], True, logit_layers(graph, model, ""), [])
    leaves: set[int] = set()
    graphs: list[Graph] = []
    failures: list[str] = [""]
    # post-order: children before parents
    order = list(model.named_modules())
    order.reverse()
    for name, mod in order:
        if name == "" or not list(mod.children()):
            continue
        if is_norm(mod) or torch.fx.Tracer().is_leaf_module(mod, name):
            continue
        g = try_trace(mod, leaves)
        if g is None:
            leaves.add(id(mod))
            failures.append(name)
        else:
            graphs.append(Graph(name, g, mod))
    return TraceInfo(graphs, False, set(), failures)


def logit_layers(graph: torch.fx.Graph, root: nn.Module, prefix: str) -> set[str]:
    out: set[str] = set()
    for node in graph.nodes:
        if node.op != "output":
            continue
        arg = node.args[0]
        while isinstance(arg, torch.fx.Node):
            if arg.op == "call_module":
                mod = root.get_submodule(arg.target)
                if isinstance(mod, nn.Linear):
                    out.add(join(prefix, arg.target))
                    break
                if isinstance(mod, nn.Identity):
                    arg = arg.args[0]
                    continue
            elif arg.op == "call_method" and arg.target in ("contiguous", "clone"):
                arg = arg.args[0]
                continue
            break
    return out


def call_counts(graph: torch.fx.Graph) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            counts[node.target] = counts.get(node.target, 0) + 1
    return counts


def descendants(start: torch.fx.Node) -> set[torch.fx.Node]:
    seen: set[torch.fx.Node] = set()
    stack = [start]
    while stack:
        n = stack.pop()
        for u in n.users:
            if u not in seen:
                seen.add(u)
                stack.append(u)
    return seen


def other_operand(node: torch.fx.Node, cur: torch.fx.Node) -> tuple[bool, Any]:
    args = list(node.args) + list(node.kwargs.values())
    hits = [a for a in args if a is cur]
    if len(hits) != 1:
        return False, None
    others = [a for a in args if a is not cur]
    return True, others


def walk(
    graph: Graph, start: torch.fx.Node, counts: dict[str, int]
) -> tuple[list[str] | None, str, str]:
    """Follow the users of ``start`` through elementwise, positively homogeneous operations.

    Returns ``(consumers, verdict, reason)``: consumers (module names relative to the graph's
    root) reading the propagated tensor as their input, or None with verdict
    ``"nonhomogeneous"`` (a known non-homogeneous operation, or the model output) or
    ``"unverifiable"`` (an operation deadspec does not know).
    """
    root = graph.root
    desc = descendants(start) | {start}
    consumers: list[str] = []
    seen: set[torch.fx.Node] = set()
    stack = [start]
    while stack:
        cur = stack.pop()
        if not cur.users:
            return None, "unverifiable", f"{cur.name} is never used"
        for u in cur.users:
            if u in seen:
                continue
            seen.add(u)
            v, why = classify_use(u, cur, desc, root, counts)
            if v == "consumer":
                consumers.append(u.target)
            elif v == "heads":
                mp = heads_map(root.get_submodule(u.target))
                consumers.extend(
                    join(u.target, k)
                    for k, (side, _h) in mp.items()
                    if side == "out" and k in ("q", "k", "v")
                )
            elif v == "transparent":
                stack.append(u)
            else:
                return None, v, why
    if not consumers:
        return None, "unverifiable", "no consumer layer reached"
    return consumers, "ok", ""


def _product(u: torch.fx.Node, cur: torch.fx.Node, desc: set[torch.fx.Node]) -> tuple[str, str]:
    """A multiplication passes the units through when its other factor does not depend on them."""
    ok, others = other_operand(u, cur)
    if not ok:
        return "nonhomogeneous", "a product of the hidden units with themselves"
    if any(isinstance(o, torch.fx.Node) and o in desc for o in others):
        return "nonhomogeneous", "a product with a quantity that depends on the units"
    return "transparent", ""


def classify_use(
    u: torch.fx.Node,
    cur: torch.fx.Node,
    desc: set[torch.fx.Node],
    root: nn.Module,
    counts: dict[str, int],
) -> tuple[str, str]:
    if u.op == "output":
        return "nonhomogeneous", "it is returned by the model"
    if u.op == "call_module":
        mod = root.get_submodule(u.target)
        if counts.get(u.target, 0) != 1:
            return "unverifiable", f"module {u.target!r} is called more than once"
        if isinstance(mod, nn.Linear):
            if len(u.args) == 1 and u.args[0] is cur and not u.kwargs:
                return "consumer", ""
            return "unverifiable", f"{u.target!r} is called with other arguments"
        if isinstance(mod, HOMOGENEOUS_MODULES):
            if u.args and u.args[0] is cur:
                return "transparent", ""
            return "unverifiable", f"{u.target!r} is called with other arguments"
        if heads_map(mod) is not None:
            if len(u.args) == 1 and u.args[0] is cur and not u.kwargs:
                return "heads", ""
            return "unverifiable", f"{u.target!r} is called with other arguments"
        if isinstance(mod, NON_HOMOGENEOUS_MODULES):
            return "nonhomogeneous", (
                f"{type(mod).__name__} ({u.target!r}) is not positively homogeneous"
            )
        return "unverifiable", f"module {u.target!r} ({type(mod).__name__}) is not known"
    if u.op == "call_function":
        fn = u.target
        if fn in HOMOGENEOUS_FUNCTIONS:
            if u.args and u.args[0] is cur:
                return "transparent", ""
            return "unverifiable", f"{getattr(fn, '__name__', fn)} with other arguments"
        if fn in NEG_FUNCTIONS:
            return "transparent", ""
        if fn in MUL_FUNCTIONS:
            return _product(u, cur, desc)
        if fn in DIV_FUNCTIONS:
            if u.kwargs.get("rounding_mode") is not None:
                return "nonhomogeneous", "a rounding division"
            if (
                not u.args
                or u.args[0] is not cur
                or any(isinstance(o, torch.fx.Node) and o in desc for o in u.args[1:])
            ):
                return "nonhomogeneous", "a division by a quantity that depends on the units"
            return "transparent", ""
        if fn in NON_HOMOGENEOUS_FUNCTIONS:
            return "nonhomogeneous", (
                f"{getattr(fn, '__name__', fn)} is not positively homogeneous"
            )
        return "unverifiable", f"function {getattr(fn, '__name__', fn)} is not known"
    if u.op == "call_method":
        name = u.target
        if name in TRANSPARENT_METHODS and u.args and u.args[0] is cur:
            return "transparent", ""
        if name in MUL_METHODS:
            return _product(u, cur, desc)
        if name in DIV_METHODS:
            if (
                u.args
                and u.args[0] is cur
                and not any(isinstance(o, torch.fx.Node) and o in desc for o in u.args[1:])
                and u.kwargs.get("rounding_mode") is None
            ):
                return "transparent", ""
            return "nonhomogeneous", "a division by a quantity that depends on the units"
        if name in NON_HOMOGENEOUS_METHODS:
            return "nonhomogeneous", f".{name}() is not positively homogeneous"
        return "unverifiable", f"method .{name}() is not known"
    return "unverifiable", f"{u.op} {u.target}"


def find_node(info: TraceInfo, name: str) -> tuple[Graph, torch.fx.Node] | None:
    for g in info.graphs:
        for node in g.graph.nodes:
            if node.op == "call_module" and join(g.prefix, node.target) == name:
                return g, node
    return None


def validate_path(
    model: nn.Module, start: str, consumers: tuple[str, ...], fn: str, activation: Any
) -> None:
    info = trace_info(model)
    found = find_node(info, start)
    if found is None:
        if activation is not None:
            return  # declared activation already checked homogeneous
        if sequential_between_ok(model, start, consumers, fn):
            return
        warnings.warn(
            f"deadspec.{fn}: could not trace the path from {start!r} to "
            f"{', '.join(consumers)!s}; declare activation= or verify with check()",
            UserWarning,
            stacklevel=3,
        )
        return
    g, node = found
    counts = call_counts(g.graph)
    if counts.get(node.target, 0) != 1:
        raise ValueError(
            f"deadspec.{fn}: {start!r} must be called exactly once in forward, got "
            f"{counts.get(node.target, 0)} calls"
        )
    cons, verdict, why = walk(g, node, counts)
    if cons is None:
        if verdict == "nonhomogeneous":
            raise ValueError(
                f"deadspec.{fn}: everything between {start!r} and its consumer must be "
                f"positively homogeneous of degree 1, elementwise, got: {why}"
            )
        warnings.warn(
            f"deadspec.{fn}: could not verify the path from {start!r} ({why}); verify with check()",
            UserWarning,
            stacklevel=3,
        )
        return
    full = {join(g.prefix, c) for c in cons}
    if full != set(consumers):
        raise ValueError(
            f"deadspec.{fn}: consumer must be every layer that reads {start!r}'s units, got "
            f"{sorted(consumers)} but the model reads them in {sorted(full)}"
        )


def sequential_between_ok(
    model: nn.Module, start: str, consumers: tuple[str, ...], fn: str
) -> bool:
    if len(consumers) != 1:
        return False
    for seq_name, seq in model.named_modules():
        if not isinstance(seq, nn.Sequential):
            continue
        names = [join(seq_name, n) for n, _ in seq.named_children()]
        if start in names and consumers[0] in names:
            i, j = names.index(start), names.index(consumers[0])
            if j <= i:
                return False
            for mid in list(seq.children())[i + 1 : j]:
                if isinstance(mid, NON_HOMOGENEOUS_MODULES):
                    raise ValueError(  # noqa: TRY004 - the declared gauge does not hold
                        f"deadspec.{fn}: everything between {start!r} and its consumer must be "
                        f"positively homogeneous of degree 1, got {type(mid).__name__}"
                    )
                if not isinstance(mid, HOMOGENEOUS_MODULES):
                    return False
            return True
    return False



def fallback_logit(model: nn.Module, inputs: Any) -> set[str]:
    out: set[str] = set()
    if isinstance(model, nn.Sequential) and len(model) and isinstance(model[-1], nn.Linear):
        out.add(str(len(model) - 1))
        return out
    if inputs is None:
        return out
    produced: dict[int, str] = {}
    hooks = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            hooks.append(
                mod.register_forward_hook(
                    lambda m, i, o, name=name: produced.__setitem__(id(o), name)
                )
            )
    try:
        with torch.no_grad(), user_code("discover", f"{MODEL_FORWARD} on the inputs (finding "
                                                     f"the layer that returns the logits)"):
            res = model(*(inputs if isinstance(inputs, (tuple, list)) else (inputs,)))
    finally:
        for h in hooks:
            h.remove()
    if isinstance(res, torch.Tensor) and id(res) in produced:
        out.add(produced[id(res)])
    return out
