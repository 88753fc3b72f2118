"""Gauges whose references are modules: mapping a gauge's references, and the stand-in model
that lets an optimizer given plain parameters resolve such gauges without the model."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from deadspec.gauges.kinds import Gauge

__all__ = [
    "REF_FIELDS",
    "GaugeRoot",
    "map_refs",
    "module_root",
    "parameter_names",
    "references",
]

#: The dataclass fields of the gauge kinds that hold module references (``Ref`` or a tuple).
REF_FIELDS = ("producer", "consumer", "norm", "layer", "layers", "attention")


def _fields(g: Gauge) -> list[str]:
    return [f.name for f in dataclasses.fields(g) if f.name in REF_FIELDS]


def references(g: Gauge) -> list[Any]:
    """Every module reference of ``g`` (names or modules), in field order."""
    out: list[Any] = []
    for name in _fields(g):
        value = getattr(g, name)
        out.extend(value if isinstance(value, (tuple, list)) else (value,))
    return out


def map_refs(g: Gauge, f: Callable[[Any], Any]) -> Gauge:
    """A copy of ``g`` with ``f`` applied to each module reference (tuples kept tuples)."""
    changes: dict[str, Any] = {}
    for name in _fields(g):
        value = getattr(g, name)
        if isinstance(value, (tuple, list)):
            changes[name] = tuple(f(v) for v in value)
        else:
            changes[name] = f(value)
    return dataclasses.replace(g, **changes)


class GaugeRoot(nn.Module):
    """A stand-in model holding the modules that some gauges reference (no forward).

    An optimizer given plain parameters and gauges that hold modules resolves the gauges on it:
    the modules keep their parameters (the root holds references, never copies), and their
    names are the model's where the parameters came named (``model.named_parameters()``), else
    ``<class name><k>``.
    """

    def forward(self, *args: Any, **kwargs: Any) -> Any:  # pragma: no cover - never called
        raise NotImplementedError(
            "deadspec.GaugeRoot: a stand-in for the modules of some gauges has no forward; "
            "got a call"
        )


def _place(root: nn.Module, name: str, module: nn.Module) -> bool:
    """Register ``module`` under the dotted ``name`` (creating empty holders for the missing
    parents); False when the path is taken or runs through a real module."""
    parts = name.split(".")
    node: nn.Module = root
    for part in parts[:-1]:
        child = node._modules.get(part)
        if child is None:
            child = nn.Module()
            node.add_module(part, child)
        elif type(child) is not nn.Module:  # a real module of the model: not ours to extend
            return False
        node = child
    if parts[-1] in node._modules or hasattr(node, parts[-1]):
        return False
    node.add_module(parts[-1], module)
    return True


def _reachable(root: nn.Module, module: nn.Module) -> bool:
    return any(m is module for m in root.modules())


def module_root(
    gauges: list[Gauge], names: Mapping[int, str], fn: str
) -> GaugeRoot:
    """The :class:`GaugeRoot` of ``gauges``, whose references must all be modules.

    ``names`` maps ``id(parameter)`` to its name in the model (from named parameters; may be
    empty). A module is named after its first parameter's name there, less the last component.
    Raises ValueError naming the first reference that is a name (names need the model).
    """
    mods: list[nn.Module] = []
    for g in gauges:
        if not isinstance(g, Gauge):
            raise TypeError(
                f"deadspec.{fn}: gauges must hold deadspec.gauges.Gauge objects, got "
                f"{type(g).__name__}"
            )
        for ref in references(g):
            if isinstance(ref, str):
                raise ValueError(
                    f"deadspec.{fn}: gauges need the model to resolve module names, got plain "
                    f"parameters and {g.describe()!r}, which names {ref!r}; pass the model "
                    f"({fn}(model, gauges=...)) or gauges holding the modules "
                    f"(gauges=deadspec.gauges.bind(gauges, model))"
                )
            if not isinstance(ref, nn.Module):
                raise TypeError(
                    f"deadspec.{fn}: a gauge must reference modules (nn.Module) or module names "
                    f"(str), got {type(ref).__name__} in {type(g).__name__}"
                )
            if all(ref is not m for m in mods):
                mods.append(ref)
    # ancestors first: a module reached through one already placed is not placed again
    order = sorted(range(len(mods)), key=lambda i: -sum(1 for _ in mods[i].modules()))
    root = GaugeRoot()
    for k in order:
        m = mods[k]
        if _reachable(root, m):
            continue
        name = _name_of(m, names)
        if name is None or not _place(root, name, m):
            base = type(m).__name__.lower()
            i = k
            while not _place(root, f"{base}{i}", m):
                i += len(mods)
    return root


def _name_of(m: nn.Module, names: Mapping[int, str]) -> str | None:
    for pname, p in m.named_parameters():
        full = names.get(id(p))
        if full is not None and full.endswith("." + pname):
            return full[: -len(pname) - 1]
    return None


def parameter_names(entries: list[Any]) -> dict[int, str]:
    """``id(parameter) -> name`` from optimizer entries given as ``(name, tensor)`` pairs (also
    inside param-group dicts, as ``torch.optim.Optimizer`` accepts them)."""
    out: dict[int, str] = {}
    for e in entries:
        items = e.get("params", ()) if isinstance(e, dict) else (e,)
        if isinstance(items, torch.Tensor):
            continue
        for item in items:
            if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
                out[id(item[1])] = item[0]
    return out
