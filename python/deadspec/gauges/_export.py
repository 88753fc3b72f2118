"""Discovery on a ``torch.export`` graph: the backend for models ``torch.fx`` cannot trace
(Hugging Face models, data-dependent Python), given example inputs.

The model is exported (``strict=False``, a Hugging Face model with ``use_cache=False`` and its
``logits`` as the output) to an ATen graph whose placeholders name the parameters. On it:

- a *producer* is an ``aten.linear`` with a parameter weight (a :class:`Pair`), an
  ``aten.layer_norm`` with a parameter weight, or an ``aten.mul`` of a 1-D parameter and a tensor
  (an RMSNorm's scale; a :class:`NormScale`);
- from a producer's output, the walk passes the operations a per-channel scale of the last axis
  commutes with (dtype casts, clones, dropout, ReLU, views and reshapes that keep the last axis,
  selections and reductions over other axes, a product with a tensor that does not depend on
  the producer — the linear branch of SwiGLU) and stops at the consumers: ``aten.linear`` /
  ``aten.addmm`` (Conv1D) / ``aten.matmul`` with a parameter weight reading the last axis.
  Any other use (a residual add, a norm, the output) means no gauge;
- the layers whose output reaches the model's output through such operations only are the
  logit layers (:class:`LogitShift` with a cross-entropy).

Gauges found here carry ``source="export"``.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from deadspec._attention import consumer_param
from deadspec._util import output_logits
from deadspec.gauges._modules import as_inputs, is_norm, norm_params
from deadspec.gauges._tracing import descendants

__all__ = ["exported_gauges"]

aten = torch.ops.aten

# one tensor argument (the first), the last axis kept as is
PASS = {
    aten.to.dtype, aten.to.dtype_layout, aten.to.device, aten._to_copy.default, aten.clone.default,
    aten.alias.default, aten.detach.default, aten.contiguous.default, aten.relu.default,
    aten.dropout.default, aten.native_dropout.default, aten.lift_fresh_copy.default,
}
# view-like: allowed when the output's last axis is the input's
VIEWS = {
    aten.view.default, aten.reshape.default, aten._unsafe_view.default, aten.unsqueeze.default,
    aten.expand.default, aten.squeeze.dim, aten.squeeze.default, aten.flatten.using_ints,
}
# selections / reductions over an axis other than the last (ViT's CLS token, mean pooling)
AXIS_OPS = {
    aten.select.int: 1, aten.slice.Tensor: 1, aten.mean.dim: 1, aten.sum.dim_IntList: 1,
    aten.index_select.default: 1,
}
MUL = {aten.mul.Tensor}
CONSUMERS = {aten.linear.default: (0, 1), aten.addmm.default: (1, 2)}


class _Wrapped(nn.Module):
    """The model as a function of its positional inputs returning one tensor (the logits)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.m = model

    def forward(self, *args: Any) -> torch.Tensor:
        kw = {"use_cache": False} if hasattr(self.m, "generation_config") else {}
        out = output_logits(self.m(*args, **kw))
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out


def _last(node: Any) -> int | None:
    val = node.meta.get("val") if hasattr(node, "meta") else None
    return None if val is None or not hasattr(val, "shape") or val.ndim == 0 else int(val.shape[-1])


def _keeps_last_axis(node: Any, src: Any) -> bool:
    """A view-like op whose last axis is the source's (same size; the other axes may merge)."""
    a, b = node.meta.get("val"), src.meta.get("val")
    if a is None or b is None or a.ndim == 0 or b.ndim == 0:
        return False
    if node.target is aten.unsqueeze.default:
        return int(node.args[1]) not in (-1, b.ndim)
    if node.target is aten.expand.default:
        return int(a.shape[-1]) == int(b.shape[-1])
    return int(a.shape[-1]) == int(b.shape[-1])


def _axis_ok(node: Any) -> bool:
    """A selection / reduction over axes other than the last."""
    val = node.args[0].meta.get("val")
    if val is None:
        return False
    nd = val.ndim
    dims = node.args[AXIS_OPS[node.target]] if len(node.args) > 1 else None
    if dims is None:
        return False
    dims = dims if isinstance(dims, (list, tuple)) else [dims]
    return all(int(d) % nd != nd - 1 for d in dims)


class _Graph:
    def __init__(self, ep: Any, model: nn.Module) -> None:
        self.graph = ep.graph
        sig = ep.graph_signature
        self.param = {k: v.removeprefix("m.") for k, v in sig.inputs_to_parameters.items()}
        self.model = model

    def pname(self, arg: Any) -> str | None:
        return self.param.get(getattr(arg, "name", None)) if hasattr(arg, "op") else None

    def walk(self, start: Any) -> list[str] | None:
        """The consumer modules of ``start``'s output, or None when it reaches anything else."""
        consumers: list[str] = []
        after: set[Any] | None = None  # what depends on start (read once a product needs it)
        stack, seen = [start], {start}
        while stack:
            n = stack.pop()
            for u in n.users:
                if u in seen:
                    continue
                seen.add(u)
                t = u.target
                if u.op == "output":
                    return None
                if t is aten._assert_tensor_metadata.default:
                    continue
                if t in CONSUMERS:
                    i_in, i_w = CONSUMERS[t]
                    w = self.pname(u.args[i_w]) if len(u.args) > i_w else None
                    if u.args[i_in] is not n or w is None or not w.endswith(".weight"):
                        return None
                    consumers.append(w.removesuffix(".weight"))
                    continue
                if t in PASS and u.args[0] is n:
                    stack.append(u)
                elif t in VIEWS and u.args[0] is n and _keeps_last_axis(u, n):
                    stack.append(u)
                elif t in AXIS_OPS and u.args[0] is n and _axis_ok(u):
                    stack.append(u)
                elif t in MUL and len(u.args) == 2:
                    other = u.args[1] if u.args[0] is n else u.args[0]
                    if hasattr(other, "op") and after is None:
                        after = descendants(start)
                    if other is n or (hasattr(other, "op") and other in after):
                        return None
                    if hasattr(other, "op") and _last(other) not in (1, None, _last(n)):
                        return None
                    stack.append(u)
                else:
                    return None
        return consumers or None

    def producers(self) -> list[tuple[str, str, Any]]:
        """(kind, module name, output node) of every linear and norm-scale node."""
        uses: dict[str, int] = {}
        for n in self.graph.nodes:
            for a in n.all_input_nodes:
                p = self.param.get(a.name)
                if p is not None and n.target is not aten._assert_tensor_metadata.default:
                    uses[p] = uses.get(p, 0) + 1
        out = []
        for n in self.graph.nodes:
            if n.op != "call_function":
                continue
            if n.target is aten.linear.default:
                w = self.pname(n.args[1])
                if w and w.endswith(".weight") and uses.get(w) == 1:
                    out.append(("pair", w.removesuffix(".weight"), n))
            elif n.target is aten.layer_norm.default and len(n.args) > 2:
                w = self.pname(n.args[2])
                if w and w.endswith(".weight") and uses.get(w) == 1:
                    out.append(("norm", w.removesuffix(".weight"), n))
            elif n.target in MUL and len(n.args) == 2:
                for a in n.args:
                    w = self.pname(a)
                    val = a.meta.get("val") if hasattr(a, "meta") else None
                    if w and w.endswith(".weight") and val is not None and val.ndim == 1:
                        if uses.get(w) == 1:
                            out.append(("norm", w.removesuffix(".weight"), n))
        return out

    def logit_layers(self) -> set[str]:
        """Linear layers whose output reaches the graph's output through passing ops only."""
        out_node = next(n for n in self.graph.nodes if n.op == "output")
        found: set[str] = set()
        stack = list(out_node.all_input_nodes)
        while stack:
            n = stack.pop()
            if n.target is aten.linear.default:
                w = self.pname(n.args[1])
                if w and w.endswith(".weight"):
                    found.add(w.removesuffix(".weight"))
            elif n.target in PASS or (n.target in VIEWS and _keeps_last_axis(n, n.args[0])):
                stack.append(n.args[0])
        return found


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """torch's export loggers silenced (a model that cannot be exported is not an error here)."""
    loggers = [logging.getLogger(n) for n in QUIET]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


QUIET = (
    "torch._subclasses.fake_tensor", "torch.export", "torch._export", "torch._dynamo",
    "torch.fx.experimental.symbolic_shapes", "torch._functorch",
)


def exported_gauges(
    model: nn.Module, inputs: Any, unshared: Any, loss: str | None
) -> list[Any] | None:
    """The Pairs, NormScales and LogitShifts of the export graph of ``model`` on ``inputs`` (names;
    not bound), or None when the model cannot be exported."""
    from deadspec.gauges.kinds import LogitShift, NormScale, Pair

    try:
        with warnings.catch_warnings(), _quiet():
            warnings.simplefilter("ignore")
            ep = torch.export.export(_Wrapped(model), as_inputs(inputs), strict=False)
    except Exception:  # noqa: BLE001 - any failure to export: the other readers remain
        return None
    g = _Graph(ep, model)
    mods = dict(model.named_modules())
    out: list[Any] = []
    for kind, name, node in g.producers():
        mod = mods.get(name)
        if mod is None:
            continue
        if kind == "pair" and not isinstance(mod, nn.Linear):
            continue
        if kind == "norm" and not is_norm(mod):
            continue
        cons = g.walk(node)
        if not cons or name in cons or any(c not in mods for c in cons):
            continue
        params = (mod.weight, mod.bias) if kind == "pair" else norm_params(mod)
        cws = [consumer_param(mods[c])[0] for c in cons]
        if not unshared(*params, *cws):
            continue
        cref = cons[0] if len(cons) == 1 else tuple(cons)
        dim = mod.out_features if kind == "pair" else int(mod.weight.shape[0])
        cls = Pair if kind == "pair" else NormScale
        out.append(cls(name, cref, source="export", dim=dim))
    if loss == "cross_entropy":
        for name in sorted(g.logit_layers()):
            mod = mods.get(name)
            if isinstance(mod, nn.Linear) and unshared(mod.weight, mod.bias):
                out.append(LogitShift(name, source="export", dim=mod.out_features))
    return out
