"""Gauges: the exact continuous symmetries of a network's loss that the DDC optimizers respect.

A *gauge* is a group acting on the parameters that leaves the loss unchanged (theory.md §1:
the gauge directions are exact structural zeros of the Fisher metric, never dead directions).
deadspec knows five kinds, as small dataclasses that users can also declare by hand:

============== ================================================================================
``Pair``       per-hidden-unit positive rescaling between a producer ``nn.Linear`` (row j of the
               weight and ``bias[j]`` scale by ``c_j > 0``) and its consumer(s) (column j of the
               weight scales by ``1/c_j``); valid when everything in between is positively
               homogeneous of degree 1, elementwise (ReLU, LeakyReLU, PReLU, Identity, Dropout,
               multiplication by a tensor that does not depend on the producer — the *linear*
               branch ``W_u`` of SwiGLU ``silu(W_g x) ⊙ (W_u x)``).
``Chain``      whole-layer rescaling ``a_ℓ`` of a chain of such layers with ``∏ a_ℓ = 1`` (the
               bias of layer ℓ scales by ``a_1⋯a_ℓ``). It is the subgroup of the per-unit
               ``Pair`` s of the chain with constant ``c``; reported by :func:`discover` for
               information (``covered=True`` when its Pairs were discovered too).
``NormScale``  LayerNorm/RMSNorm per-channel scale: ``(γ_i, β_i) ↦ c_i (γ_i, β_i)`` and column i
               of the consumer(s) ``↦ / c_i``. (The LayerNorm *output kernel* γ⁻¹ of theory.md §1
               is a reading concern, not a parameter gauge.)
``LogitShift`` the softmax cross-entropy logit shift on the output layer,
               ``W ↦ W + 1vᵀ``, ``b ↦ b + c·1`` (only with ``loss="cross_entropy"``).
``HeadRotation`` per-head attention rotations: ``q_h, k_h ↦ R q_h, R k_h`` (R orthogonal; with
               RoPE, R restricted to the 2×2 rotations that commute with RoPE's frequency
               blocks) and ``v_h ↦ Q v_h``, ``o[:, h] ↦ o[:, h] Qᵀ``. Declared and discovered
               here; the optimizer support is DDCMuon's (``DDCAdam`` refuses an explicit one).
============== ================================================================================

Contract
--------
- Modules are addressed by their ``model.named_modules()`` names (or passed as the modules
  themselves; :meth:`Gauge.bind` turns them into names). Gauges returned by :func:`discover`
  hold names, so they are printable, picklable and apply to a copy of the model.
- Every gauge offers ``validate(model)`` (structural checks: types, shapes, unshared
  parameters, and — when the model can be traced with ``torch.fx`` — that everything between
  producer and consumer is positively homogeneous), ``random_element(model, generator)``,
  ``apply(model, element)`` (acts in place, under ``torch.no_grad()``) and
  ``check(model, inputs, targets, loss_fn)`` (numerical invariance, float64, on a copy).
- Elements are float64 tensors: positive vectors ``c`` (Pair, NormScale), a positive vector
  ``a`` with product 1 (Chain), a pair ``(v, c)`` (LogitShift) and a dict of per-head orthogonal
  matrices (HeadRotation). ``apply`` casts them to each parameter's dtype and device.
- Discovery traces the model with ``torch.fx``; a model (or a submodule) that cannot be traced
  is handled bottom-up (untraceable submodules become opaque leaves), then by ``nn.Sequential``
  order and by the common MLP names (``fc1/act/fc2``, ``fc_in/act/fc_out``, SwiGLU
  ``w1/w2/w3`` and ``gate_proj/up_proj/down_proj``); gauges found by name only carry
  ``source="naming"`` and a warning recommends ``check=True``. Parameters shared between modules
  (tied weights) are never part of a discovered gauge, and a declared gauge on one is rejected.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import operator
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "Chain",
    "Gauge",
    "GaugeSet",
    "HeadRotation",
    "LogitShift",
    "NormScale",
    "Pair",
    "apply_elements",
    "discover",
    "random_elements",
    "summary",
]

Ref = str | nn.Module

# --------------------------------------------------------------------------------------------
# Homogeneity registry
# --------------------------------------------------------------------------------------------

#: module types that are positively homogeneous of degree 1 and act elementwise
_HOMOGENEOUS_MODULES: tuple[type, ...] = (
    nn.ReLU,
    nn.LeakyReLU,
    nn.PReLU,
    nn.RReLU,
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
)
#: module types known NOT to be positively homogeneous of degree 1
_NON_HOMOGENEOUS_MODULES: tuple[type, ...] = (
    nn.GELU,
    nn.Tanh,
    nn.Sigmoid,
    nn.SiLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.Softplus,
    nn.Mish,
    nn.Hardtanh,
    nn.ReLU6,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Softsign,
    nn.Tanhshrink,
    nn.LogSigmoid,
    nn.Softmax,
    nn.LogSoftmax,
    nn.GLU,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.Threshold,
    nn.Softmin,
    nn.Hardshrink,
    nn.Softshrink,
)
_HOMOGENEOUS_NAMES = frozenset(
    {"relu", "leaky_relu", "prelu", "rrelu", "identity", "linear", "dropout", "swiglu"}
)
_NON_HOMOGENEOUS_NAMES = frozenset(
    {
        "gelu",
        "tanh",
        "sigmoid",
        "silu",
        "swish",
        "elu",
        "selu",
        "celu",
        "softplus",
        "mish",
        "hardtanh",
        "relu6",
        "hardswish",
        "hardsigmoid",
        "softsign",
        "logsigmoid",
        "softmax",
        "exp",
        "sin",
        "cos",
        "square",
        "abs",
    }
)
_HOMOGENEOUS_FUNCTIONS = frozenset(
    {F.relu, torch.relu, F.leaky_relu, F.dropout, F.rrelu, F.prelu} | {F.relu_, torch.relu_}
)
_NON_HOMOGENEOUS_FUNCTIONS = frozenset(
    {
        F.gelu,
        torch.tanh,
        torch.sigmoid,
        F.silu,
        F.elu,
        F.selu,
        F.celu,
        F.softplus,
        F.mish,
        F.hardtanh,
        F.relu6,
        F.hardswish,
        F.hardsigmoid,
        F.softsign,
        F.logsigmoid,
        F.softmax,
        F.log_softmax,
        torch.softmax,
        torch.exp,
        torch.sin,
        torch.cos,
        F.layer_norm,
        F.tanh,
        F.sigmoid,
        torch.square,
        torch.abs,
        operator.add,
        operator.sub,
        operator.pow,
        torch.add,
        torch.sub,
        operator.iadd,
        operator.isub,
        torch.pow,
        operator.abs,
    }
)
_MUL_FUNCTIONS = frozenset({operator.mul, torch.mul, operator.imul})
_DIV_FUNCTIONS = frozenset({operator.truediv, torch.div, torch.true_divide, operator.itruediv})
_NEG_FUNCTIONS = frozenset({operator.neg, torch.neg})
_TRANSPARENT_METHODS = frozenset({"relu", "relu_", "contiguous", "clone", "neg", "neg_"})
_MUL_METHODS = frozenset({"mul", "mul_", "__mul__", "__rmul__"})
_DIV_METHODS = frozenset({"div", "div_", "__truediv__", "true_divide"})
_NON_HOMOGENEOUS_METHODS = frozenset(
    {
        "tanh",
        "sigmoid",
        "exp",
        "add",
        "add_",
        "sub",
        "sub_",
        "pow",
        "softmax",
        "log_softmax",
        "abs",
        "square",
        "sin",
        "cos",
        "__add__",
        "__radd__",
        "__sub__",
        "__rsub__",
        "__pow__",
    }
)


def _activation_name(act: Any) -> str:
    if isinstance(act, str):
        return act
    if isinstance(act, nn.Module):
        return type(act).__name__
    if isinstance(act, type):
        return act.__name__
    return getattr(act, "__name__", repr(act))


def _check_activation(fn: str, act: Any) -> None:
    """Raise ValueError unless ``act`` is known to be positively homogeneous of degree 1."""
    if act is None:
        return
    if isinstance(act, (list, tuple)):
        for a in act:
            _check_activation(fn, a)
        return
    if isinstance(act, str):
        key = act.lower()
        if key in _HOMOGENEOUS_NAMES:
            return
        if key in _NON_HOMOGENEOUS_NAMES:
            raise ValueError(
                f"deadspec.{fn}: activation must be positively homogeneous of degree 1 "
                f"(relu, leaky_relu, prelu, identity, dropout, swiglu's linear branch), got "
                f"{act!r}, which is not: the rescaling is not a symmetry across it"
            )
        raise ValueError(
            f"deadspec.{fn}: activation must be one of {sorted(_HOMOGENEOUS_NAMES)}, a module "
            f"or a function, got {act!r}"
        )
    typ = act if isinstance(act, type) else type(act) if isinstance(act, nn.Module) else None
    if typ is not None:
        if issubclass(typ, _HOMOGENEOUS_MODULES):
            return
    elif act in _HOMOGENEOUS_FUNCTIONS:
        return
    known_bad = (typ is not None and issubclass(typ, _NON_HOMOGENEOUS_MODULES)) or (
        typ is None and act in _NON_HOMOGENEOUS_FUNCTIONS
    )
    if known_bad:
        raise ValueError(
            f"deadspec.{fn}: activation must be positively homogeneous of degree 1 (relu, "
            f"leaky_relu, prelu, identity, dropout, swiglu's linear branch), got "
            f"{_activation_name(act)}, which is not: the rescaling is not a symmetry across it"
        )
    raise ValueError(
        f"deadspec.{fn}: activation must be known to be positively homogeneous of degree 1 "
        f"(one of {sorted(_HOMOGENEOUS_NAMES)} or the matching torch modules/functions), got "
        f"{_activation_name(act)}"
    )


# --------------------------------------------------------------------------------------------
# Module helpers
# --------------------------------------------------------------------------------------------


def _is_norm(m: nn.Module) -> bool:
    """A per-channel-affine normalisation over the last axis (LayerNorm / RMSNorm-like)."""
    if isinstance(m, nn.LayerNorm):
        return bool(m.elementwise_affine) and len(m.normalized_shape) == 1 and m.weight is not None
    rms = getattr(nn, "RMSNorm", None)
    if rms is not None and isinstance(m, rms):
        return m.weight is not None and len(m.normalized_shape) == 1
    name = type(m).__name__.lower()
    if ("rmsnorm" in name or "layernorm" in name) and not list(m.children()):
        params = dict(m.named_parameters(recurse=False))
        w = params.get("weight")
        b = params.get("bias")
        extra = set(params) - {"weight", "bias"}
        if w is not None and w.ndim == 1 and not extra and (b is None or b.shape == w.shape):
            return True
    return False


def _norm_params(m: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    return m.weight, getattr(m, "bias", None)


def _heads_map(m: nn.Module) -> dict[str, Any] | None:
    """The q/k/v/o map of a module following deadspec's ``deadspec_heads`` convention."""
    fn = getattr(m, "deadspec_heads", None)
    if fn is None or not callable(fn):
        return None
    try:
        mp = dict(fn())
    except Exception:  # noqa: BLE001 - a foreign method; treat as absent
        return None
    if not {"q", "k", "v", "o"} <= set(mp):
        return None
    return mp


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _resolve(model: nn.Module, ref: Ref, fn: str, arg: str) -> tuple[str, nn.Module]:
    if isinstance(ref, str):
        try:
            return ref, model.get_submodule(ref)
        except AttributeError:
            raise ValueError(
                f"deadspec.{fn}: {arg} must name a submodule of the model, got {ref!r}"
            ) from None
    if isinstance(ref, nn.Module):
        for name, mod in model.named_modules(remove_duplicate=False):
            if mod is ref:
                return name, mod
        raise ValueError(
            f"deadspec.{fn}: {arg} must be a submodule of the model, got a "
            f"{type(ref).__name__} that is not in it"
        )
    raise TypeError(
        f"deadspec.{fn}: {arg} must be a module name (str) or an nn.Module, got "
        f"{type(ref).__name__}"
    )


def _as_tuple(ref: Ref | Sequence[Ref]) -> tuple[Ref, ...]:
    if isinstance(ref, (str, nn.Module)):
        return (ref,)
    return tuple(ref)


def _shared_param_ids(model: nn.Module) -> set[int]:
    seen: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        seen[id(p)] = seen.get(id(p), 0) + 1
    return {k for k, v in seen.items() if v > 1}


def _require_linear(fn: str, arg: str, name: str, mod: nn.Module) -> nn.Linear:
    if not isinstance(mod, nn.Linear):
        # the declared gauge does not hold on this model: ValueError, as documented
        raise ValueError(  # noqa: TRY004
            f"deadspec.{fn}: {arg} must be an nn.Linear, got {type(mod).__name__} {name!r}"
        )
    return mod


def _require_unshared(
    fn: str, name: str, params: Iterable[torch.Tensor | None], shared: set[int]
) -> None:
    for p in params:
        if p is not None and id(p) in shared:
            raise ValueError(
                f"deadspec.{fn}: the parameters of {name!r} must not be shared with another "
                f"module (tied weights break the gauge), got a shared parameter"
            )


def _units_index(fn: str, units: Any, h: int) -> torch.Tensor | None:
    if units is None:
        return None
    idx = torch.as_tensor(units)
    if idx.dtype == torch.bool:
        if idx.shape != (h,):
            raise ValueError(
                f"deadspec.{fn}: units as a mask must have shape ({h},), got {tuple(idx.shape)}"
            )
        idx = idx.nonzero().flatten()
    if idx.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise ValueError(
            f"deadspec.{fn}: units must be integer indices or a bool mask, got dtype {idx.dtype}"
        )
    idx = idx.to(torch.int64).flatten()
    if idx.numel() == 0:
        raise ValueError(f"deadspec.{fn}: units must not be empty, got 0 indices")
    if int(idx.min()) < 0 or int(idx.max()) >= h:
        raise ValueError(
            f"deadspec.{fn}: units must lie in [0, {h}), got range "
            f"[{int(idx.min())}, {int(idx.max())}]"
        )
    if idx.unique().numel() != idx.numel():
        raise ValueError(f"deadspec.{fn}: units must be distinct, got repeated indices")
    return idx.sort().values


def _positive_vector(kind: str, element: Any, dim: int) -> torch.Tensor:
    """A group element of a rescaling gauge as float64, checked: shape (dim,), all entries > 0."""
    c = torch.as_tensor(element, dtype=torch.float64)
    if c.shape != (dim,) or not bool((c > 0).all()):
        raise ValueError(
            f"deadspec.{kind}.apply: element must be a positive vector of shape ({dim},), "
            f"got shape {tuple(c.shape)}"
        )
    return c


def _positive_element(n: int, generator: torch.Generator | None, spread: float) -> torch.Tensor:
    u = torch.rand(n, generator=generator, dtype=torch.float64) * 2.0 - 1.0
    return torch.exp(spread * u)


# --------------------------------------------------------------------------------------------
# Gauge classes
# --------------------------------------------------------------------------------------------


class Gauge:
    """Base class of the gauge dataclasses (see the module docstring)."""

    kind: ClassVar[str] = "gauge"

    # -- interface ---------------------------------------------------------------------------
    def bind(self, model: nn.Module) -> Gauge:  # pragma: no cover - overridden
        raise NotImplementedError

    def validate(self, model: nn.Module) -> None:
        """Structural checks against ``model``; raises ValueError if the gauge cannot hold."""
        self.bind(model)

    def random_element(
        self, model: nn.Module, generator: torch.Generator | None = None, *, spread: float = 1.0
    ) -> Any:  # pragma: no cover - overridden
        raise NotImplementedError

    def apply(self, model: nn.Module, element: Any) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def modules(self) -> tuple[str, ...]:  # pragma: no cover - overridden
        """Names of the modules the gauge touches (after :meth:`bind`)."""
        raise NotImplementedError

    def describe(self) -> str:  # pragma: no cover - overridden
        raise NotImplementedError

    # -- numerical check ---------------------------------------------------------------------
    def check(
        self,
        model: nn.Module,
        inputs: Any,
        targets: torch.Tensor | None = None,
        loss_fn: Any = None,
        *,
        rtol: float = 1e-10,
        generator: torch.Generator | None = None,
        spread: float = 1.0,
        raise_on_fail: bool = True,
    ) -> float:
        """Verify numerically (float64, eval mode, on a copy) that the loss is invariant.

        Parameters
        ----------
        model : nn.Module
            The model (left unchanged).
        inputs : Tensor or tuple of Tensor
            Positional inputs of ``model``; floating tensors are cast to float64.
        targets : Tensor, optional
            With ``loss_fn`` None: integer targets → cross-entropy (mean), floating → MSE.
            Without targets the outputs themselves are compared (their ``log_softmax`` over the
            last axis for a ``LogitShift``).
        loss_fn : callable, optional
            ``loss_fn(outputs, targets) -> scalar``.
        rtol : float
            Tolerance on ``|L(g·θ) − L(θ)| / |L(θ)|`` (max-abs relative for outputs).
        generator : torch.Generator, optional
            Draws the group element (``random_element(..., spread=spread)``).
        raise_on_fail : bool
            Raise ValueError when the relative difference exceeds ``rtol``.

        Returns
        -------
        float
            The relative difference.
        """
        g = self.bind(model)
        m = copy.deepcopy(model).to(torch.float64).eval()
        args = _as_inputs(inputs)
        with torch.no_grad():
            before = _observe(m(*args), targets, loss_fn, isinstance(g, LogitShift))
            g.apply(m, g.random_element(m, generator, spread=spread))
            after = _observe(m(*args), targets, loss_fn, isinstance(g, LogitShift))
        scale = float(before.abs().max()) if before.numel() else 0.0
        diff = float((after - before).abs().max()) if before.numel() else 0.0
        rel = diff / max(scale, torch.finfo(torch.float64).tiny)
        if (not math.isfinite(rel) or rel > rtol) and raise_on_fail:
            raise ValueError(
                f"deadspec.{type(self).__name__}.check: the loss must be invariant along the "
                f"gauge to rtol={rtol:g}, got a relative change {rel:.3g} ({g.describe()})"
            )
        return rel

    def __str__(self) -> str:
        return self.describe()


def _as_inputs(inputs: Any) -> tuple[Any, ...]:
    args = inputs if isinstance(inputs, (tuple, list)) else (inputs,)
    return tuple(
        a.to(torch.float64) if isinstance(a, torch.Tensor) and a.is_floating_point() else a
        for a in args
    )


def _observe(out: Any, targets: Any, loss_fn: Any, logit: bool) -> torch.Tensor:
    if isinstance(out, (tuple, list)):
        out = out[0]
    if loss_fn is not None:
        t = (
            targets.to(torch.float64)
            if isinstance(targets, torch.Tensor) and targets.is_floating_point()
            else targets
        )
        return torch.as_tensor(loss_fn(out, t), dtype=torch.float64).reshape(1)
    if targets is not None:
        if targets.is_floating_point():
            return F.mse_loss(out, targets.to(out.dtype)).reshape(1)
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), targets.reshape(-1)).reshape(1)
    if logit:
        return torch.log_softmax(out, dim=-1)
    return out


def _scale_rows_(w: torch.Tensor, idx: torch.Tensor | None, c: torch.Tensor) -> None:
    c = c.to(dtype=w.dtype, device=w.device)
    shape = (-1,) + (1,) * (w.ndim - 1)
    if idx is None:
        w.mul_(c.reshape(shape))
    else:
        idx = idx.to(w.device)
        w[idx] = w[idx] * c.reshape(shape)


def _scale_cols_(w: torch.Tensor, idx: torch.Tensor | None, c: torch.Tensor) -> None:
    c = c.to(dtype=w.dtype, device=w.device)
    if idx is None:
        w.div_(c.reshape(1, -1))
    else:
        idx = idx.to(w.device)
        w[:, idx] = w[:, idx] / c.reshape(1, -1)


@dataclass(eq=True)
class Pair(Gauge):
    """Per-hidden-unit positive rescaling between a producer and its consumer(s).

    ``producer.weight[j, :] ↦ c_j · producer.weight[j, :]``, ``producer.bias[j] ↦ c_j ·
    producer.bias[j]``, ``consumer.weight[:, j] ↦ consumer.weight[:, j] / c_j`` for every
    consumer, for the units ``j`` in ``units`` (all by default), ``c_j > 0``.

    Parameters
    ----------
    producer : str or nn.Linear
        The layer whose output rows are the hidden units.
    consumer : str, nn.Linear or a sequence of them
        The layer(s) reading the hidden units (input columns).
    units : sequence of int, LongTensor or bool mask, optional
        The hidden units in the gauge (default all).
    activation : str, module, function or a sequence of them, optional
        What lies between producer and consumer, for validation when the model cannot be
        traced (``"relu"``, ``"leaky_relu"``, ``"prelu"``, ``"identity"``, ``"dropout"``,
        ``"swiglu"`` for the linear branch of SwiGLU, or the torch modules/functions). A
        non-homogeneous activation (GELU, tanh, sigmoid, SiLU, …) raises ValueError here.
        None: inferred from the model (torch.fx) where possible.
    """

    kind: ClassVar[str] = "pair"
    producer: Ref
    consumer: Ref | tuple[Ref, ...]
    units: Any = None
    activation: Any = None
    source: str = field(default="declared", compare=False)
    dim: int | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        _check_activation("Pair", self.activation)
        if isinstance(self.consumer, list):
            self.consumer = tuple(self.consumer)

    def modules(self) -> tuple[str, ...]:
        return (str(self.producer),) + tuple(str(c) for c in _as_tuple(self.consumer))

    def bind(self, model: nn.Module) -> Pair:
        pname, prod = _resolve(model, self.producer, "Pair", "producer")
        _require_linear("Pair", "producer", pname, prod)
        consumers = _as_tuple(self.consumer)
        if not consumers:
            raise ValueError("deadspec.Pair: consumer must name at least one layer, got none")
        cnames = []
        shared = _shared_param_ids(model)
        _require_unshared("Pair", pname, (prod.weight, prod.bias), shared)
        for c in consumers:
            cname, cons = _resolve(model, c, "Pair", "consumer")
            _require_linear("Pair", "consumer", cname, cons)
            if cons.in_features != prod.out_features:
                raise ValueError(
                    f"deadspec.Pair: consumer {cname!r} must read the producer's "
                    f"{prod.out_features} units (in_features == producer.out_features), got "
                    f"in_features={cons.in_features}"
                )
            if cons is prod:
                raise ValueError(
                    f"deadspec.Pair: consumer must differ from the producer, got {cname!r} twice"
                )
            _require_unshared("Pair", cname, (cons.weight,), shared)
            cnames.append(cname)
        idx = _units_index("Pair", self.units, prod.out_features)
        units = None if idx is None else tuple(int(i) for i in idx)
        return dataclasses.replace(
            self,
            producer=pname,
            consumer=cnames[0] if len(cnames) == 1 else tuple(cnames),
            units=units,
            dim=prod.out_features if units is None else len(units),
        )

    def validate(self, model: nn.Module) -> None:
        g = self.bind(model)
        _validate_path(model, g.producer, _as_tuple(g.consumer), "Pair", self.activation)

    def _index(self) -> torch.Tensor | None:
        return None if self.units is None else torch.as_tensor(self.units, dtype=torch.int64)

    def random_element(
        self, model: nn.Module, generator: torch.Generator | None = None, *, spread: float = 1.0
    ) -> torch.Tensor:
        g = self.bind(model)
        return _positive_element(int(g.dim), generator, spread)

    def apply(self, model: nn.Module, element: torch.Tensor) -> None:
        g = self.bind(model)
        c = _positive_vector("Pair", element, int(g.dim))
        idx = g._index()
        prod = model.get_submodule(g.producer)
        with torch.no_grad():
            _scale_rows_(prod.weight, idx, c)
            if prod.bias is not None:
                _scale_rows_(prod.bias, idx, c)
            for cn in _as_tuple(g.consumer):
                _scale_cols_(model.get_submodule(cn).weight, idx, c)

    def describe(self) -> str:
        cons = ", ".join(str(c) for c in _as_tuple(self.consumer))
        u = "" if self.units is None else f" units={len(self.units)}"
        return f"Pair {self.producer} -> {cons}{u}"


@dataclass(eq=True)
class Chain(Gauge):
    """Whole-layer rescaling of a chain of homogeneous ``nn.Linear`` layers, ``∏ a_ℓ = 1``.

    ``W_ℓ ↦ a_ℓ W_ℓ``, ``b_ℓ ↦ (a_1⋯a_ℓ) b_ℓ``. It is the subgroup of the chain's per-unit
    :class:`Pair` s with ``c_ℓ = (a_1⋯a_ℓ)·1``; :class:`deadspec.optim.DDCAdam` handles it
    through those Pairs (and requires them to be valid).
    """

    kind: ClassVar[str] = "chain"
    layers: tuple[Ref, ...]
    source: str = field(default="declared", compare=False)
    covered: bool = field(default=False, compare=False)
    dim: int | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        self.layers = tuple(self.layers)

    def modules(self) -> tuple[str, ...]:
        return tuple(str(x) for x in self.layers)

    def bind(self, model: nn.Module) -> Chain:
        if len(self.layers) < 2:
            raise ValueError(
                f"deadspec.Chain: layers must hold at least 2 layers, got {len(self.layers)}"
            )
        names, mods = [], []
        for ref in self.layers:
            n, m = _resolve(model, ref, "Chain", "layers")
            _require_linear("Chain", "layers", n, m)
            names.append(n)
            mods.append(m)
        for (n0, m0), (n1, m1) in zip(zip(names, mods), zip(names[1:], mods[1:])):
            if m1.in_features != m0.out_features:
                raise ValueError(
                    f"deadspec.Chain: consecutive layers must match ({n1!r}.in_features == "
                    f"{n0!r}.out_features), got {m1.in_features} and {m0.out_features}"
                )
        return dataclasses.replace(self, layers=tuple(names), dim=len(names))

    def pairs(self) -> list[Pair]:
        """The per-unit Pairs whose constant-c subgroup this chain is."""
        return [Pair(a, b, source=self.source) for a, b in zip(self.layers, self.layers[1:])]

    def validate(self, model: nn.Module) -> None:
        g = self.bind(model)
        for p in g.pairs():
            p.validate(model)

    def random_element(
        self, model: nn.Module, generator: torch.Generator | None = None, *, spread: float = 1.0
    ) -> torch.Tensor:
        g = self.bind(model)
        u = (torch.rand(int(g.dim), generator=generator, dtype=torch.float64) * 2 - 1) * spread
        return torch.exp(u - u.mean())

    def apply(self, model: nn.Module, element: torch.Tensor) -> None:
        g = self.bind(model)
        a = torch.as_tensor(element, dtype=torch.float64)
        if a.shape != (g.dim,) or not bool((a > 0).all()):
            raise ValueError(
                f"deadspec.Chain.apply: element must be a positive vector of shape "
                f"({g.dim},), got shape {tuple(a.shape)}"
            )
        cum = torch.cumprod(a, 0)
        with torch.no_grad():
            for i, name in enumerate(g.layers):
                m = model.get_submodule(name)
                m.weight.mul_(a[i].to(m.weight.dtype))
                if m.bias is not None:
                    m.bias.mul_(cum[i].to(m.bias.dtype))

    def describe(self) -> str:
        tail = " (covered by Pairs)" if self.covered else ""
        return "Chain " + " -> ".join(str(x) for x in self.layers) + tail


@dataclass(eq=True)
class NormScale(Gauge):
    """LayerNorm/RMSNorm per-channel scale: ``(γ_i, β_i) ↦ c_i (γ_i, β_i)``, consumer column
    ``i ↦ / c_i`` (every consumer).

    Parameters
    ----------
    norm : str or module
        ``nn.LayerNorm`` (elementwise affine, 1-D ``normalized_shape``), ``nn.RMSNorm`` or a
        custom ``*RMSNorm``/``*LayerNorm`` class with a 1-D ``weight`` (and optional ``bias``)
        that multiplies the normalised input channelwise.
    consumer : str, nn.Linear or a sequence of them
        The layer(s) reading the normalised output.
    """

    kind: ClassVar[str] = "norm"
    norm: Ref
    consumer: Ref | tuple[Ref, ...]
    source: str = field(default="declared", compare=False)
    dim: int | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.consumer, list):
            self.consumer = tuple(self.consumer)

    def modules(self) -> tuple[str, ...]:
        return (str(self.norm),) + tuple(str(c) for c in _as_tuple(self.consumer))

    def bind(self, model: nn.Module) -> NormScale:
        nname, norm = _resolve(model, self.norm, "NormScale", "norm")
        if not _is_norm(norm):
            raise ValueError(
                f"deadspec.NormScale: norm must be a LayerNorm (elementwise_affine, 1-D "
                f"normalized_shape) or an RMSNorm with a weight, got {type(norm).__name__} "
                f"{nname!r}"
            )
        w, b = _norm_params(norm)
        d = w.shape[0]
        shared = _shared_param_ids(model)
        _require_unshared("NormScale", nname, (w, b), shared)
        consumers = _as_tuple(self.consumer)
        if not consumers:
            raise ValueError("deadspec.NormScale: consumer must name at least one layer, got none")
        cnames = []
        for c in consumers:
            cname, cons = _resolve(model, c, "NormScale", "consumer")
            _require_linear("NormScale", "consumer", cname, cons)
            if cons.in_features != d:
                raise ValueError(
                    f"deadspec.NormScale: consumer {cname!r} must read the norm's {d} channels "
                    f"(in_features == {d}), got in_features={cons.in_features}"
                )
            _require_unshared("NormScale", cname, (cons.weight,), shared)
            cnames.append(cname)
        return dataclasses.replace(
            self, norm=nname, consumer=cnames[0] if len(cnames) == 1 else tuple(cnames), dim=d
        )

    def validate(self, model: nn.Module) -> None:
        g = self.bind(model)
        _validate_path(model, g.norm, _as_tuple(g.consumer), "NormScale", None)

    def random_element(
        self, model: nn.Module, generator: torch.Generator | None = None, *, spread: float = 1.0
    ) -> torch.Tensor:
        g = self.bind(model)
        return _positive_element(int(g.dim), generator, spread)

    def apply(self, model: nn.Module, element: torch.Tensor) -> None:
        g = self.bind(model)
        c = _positive_vector("NormScale", element, int(g.dim))
        w, b = _norm_params(model.get_submodule(g.norm))
        with torch.no_grad():
            _scale_rows_(w, None, c)
            if b is not None:
                _scale_rows_(b, None, c)
            for cn in _as_tuple(g.consumer):
                _scale_cols_(model.get_submodule(cn).weight, None, c)

    def describe(self) -> str:
        cons = ", ".join(str(c) for c in _as_tuple(self.consumer))
        return f"NormScale {self.norm} -> {cons}"


@dataclass(eq=True)
class LogitShift(Gauge):
    """Softmax cross-entropy logit shift on the output layer: ``W ↦ W + 1vᵀ``, ``b ↦ b + c·1``.

    Valid when the layer's output is the logits fed to a softmax cross-entropy (over the last
    axis). The element is ``(v, c)``, ``v`` of length ``in_features``.
    """

    kind: ClassVar[str] = "logit_shift"
    layer: Ref
    source: str = field(default="declared", compare=False)
    dim: int | None = field(default=None, compare=False)

    def modules(self) -> tuple[str, ...]:
        return (str(self.layer),)

    def bind(self, model: nn.Module) -> LogitShift:
        name, mod = _resolve(model, self.layer, "LogitShift", "layer")
        _require_linear("LogitShift", "layer", name, mod)
        _require_unshared("LogitShift", name, (mod.weight, mod.bias), _shared_param_ids(model))
        return dataclasses.replace(self, layer=name, dim=mod.out_features)

    def validate(self, model: nn.Module) -> None:
        g = self.bind(model)
        info = _trace_info(model)
        if info is None or not info.root_traced:
            warnings.warn(
                f"deadspec.LogitShift: could not trace the model to verify that {g.layer!r} "
                f"produces the logits; verify with check()",
                UserWarning,
                stacklevel=3,
            )
            return
        if g.layer not in info.logit_layers:
            raise ValueError(
                f"deadspec.LogitShift: layer must produce the model's output logits directly, "
                f"got {g.layer!r}, whose output is not returned unchanged"
            )

    def random_element(
        self, model: nn.Module, generator: torch.Generator | None = None, *, spread: float = 1.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        g = self.bind(model)
        m = model.get_submodule(g.layer)
        v = torch.rand(m.in_features, generator=generator, dtype=torch.float64) * 2 - 1
        c = torch.rand((), generator=generator, dtype=torch.float64) * 2 - 1
        return v * spread, c * spread

    def apply(self, model: nn.Module, element: tuple[torch.Tensor, torch.Tensor]) -> None:
        g = self.bind(model)
        m = model.get_submodule(g.layer)
        v, c = element
        v = torch.as_tensor(v, dtype=torch.float64)
        if v.shape != (m.in_features,):
            raise ValueError(
                f"deadspec.LogitShift.apply: element[0] must have shape "
                f"({m.in_features},), got {tuple(v.shape)}"
            )
        with torch.no_grad():
            m.weight.add_(v.to(m.weight.dtype).reshape(1, -1))
            if m.bias is not None:
                m.bias.add_(torch.as_tensor(c, dtype=m.bias.dtype))

    def describe(self) -> str:
        return f"LogitShift {self.layer}"


@dataclass(eq=True)
class HeadRotation(Gauge):
    """Per-head attention rotations (QK: ``R`` on q and k rows of head h; VO: ``Q`` on v rows,
    ``Qᵀ`` on the output projection's columns of head h).

    Parameters
    ----------
    attention : str or module
        An ``nn.MultiheadAttention`` (packed ``in_proj_weight``) or a module with ``q, k, v, o``
        ``nn.Linear`` children following deadspec's ``deadspec_heads`` convention
        (:class:`deadspec.models_transformer.SelfAttention`).
    num_heads : int, optional
        Default: the module's ``num_heads`` / ``n_heads``.
    part : {"both", "qk", "vo"}
        Which rotations form the gauge.
    rope : bool, optional
        RoPE on q/k on interleaved pairs ``(2i, 2i+1)``: the QK rotations are then restricted to
        the 2×2 rotations of those pairs (they commute with RoPE). Default: the module's
        ``rope`` attribute (False for ``nn.MultiheadAttention``).

    Notes
    -----
    :class:`deadspec.optim.DDCAdam` is not equivariant under these rotations (an Adam base is
    coordinatewise); their optimizer support is DDCMuon's.
    """

    kind: ClassVar[str] = "head_rotation"
    attention: Ref
    num_heads: int | None = None
    part: str = "both"
    rope: bool | None = None
    source: str = field(default="declared", compare=False)
    dim: int | None = field(default=None, compare=False)

    def modules(self) -> tuple[str, ...]:
        return (str(self.attention),)

    def bind(self, model: nn.Module) -> HeadRotation:
        name, mod = _resolve(model, self.attention, "HeadRotation", "attention")
        if self.part not in ("both", "qk", "vo"):
            raise ValueError(
                f"deadspec.HeadRotation: part must be 'both', 'qk' or 'vo', got {self.part!r}"
            )
        if isinstance(mod, nn.MultiheadAttention):
            if not mod._qkv_same_embed_dim or mod.bias_k is not None or mod.add_zero_attn:
                raise ValueError(
                    f"deadspec.HeadRotation: attention must use a packed in_proj_weight without "
                    f"bias_k/bias_v/add_zero_attn, got {name!r} with another layout"
                )
            heads = mod.num_heads if self.num_heads is None else self.num_heads
            d = mod.embed_dim
            rope = bool(self.rope) if self.rope is not None else False
        elif _heads_map(mod) is not None:
            heads = self.num_heads
            if heads is None:
                heads = getattr(mod, "num_heads", getattr(mod, "n_heads", None))
            if heads is None:
                raise ValueError(
                    f"deadspec.HeadRotation: num_heads must be given for {name!r}, "
                    f"got None and no num_heads/n_heads attribute"
                )
            for key in "qkvo":
                _require_linear("HeadRotation", key, f"{name}.{key}", getattr(mod, key))
            d = mod.q.out_features
            rope = bool(self.rope) if self.rope is not None else bool(getattr(mod, "rope", False))
        else:
            raise ValueError(
                f"deadspec.HeadRotation: attention must be an nn.MultiheadAttention or a module "
                f"with q/k/v/o layers and deadspec_heads(), got {type(mod).__name__} {name!r}"
            )
        heads = int(heads)
        if heads < 1 or d % heads:
            raise ValueError(f"deadspec.HeadRotation: num_heads must divide {d}, got {heads}")
        if rope and (d // heads) % 2:
            raise ValueError(
                f"deadspec.HeadRotation: RoPE needs an even head dim, got {d // heads}"
            )
        return dataclasses.replace(self, attention=name, num_heads=heads, rope=rope, dim=d // heads)

    def _weights(self, mod: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
        if isinstance(mod, nn.MultiheadAttention):
            e = mod.embed_dim
            w, b = mod.in_proj_weight, mod.in_proj_bias
            out = {}
            for i, key in enumerate("qkv"):
                out[key] = (w[i * e : (i + 1) * e], None if b is None else b[i * e : (i + 1) * e])
            out["o"] = (mod.out_proj.weight, mod.out_proj.bias)
            return out
        return {k: (getattr(mod, k).weight, getattr(mod, k).bias) for k in "qkvo"}

    def random_element(
        self, model: nn.Module, generator: torch.Generator | None = None, *, spread: float = 1.0
    ) -> dict[str, torch.Tensor]:
        g = self.bind(model)
        h, dh = int(g.num_heads), int(g.dim)
        el: dict[str, torch.Tensor] = {}
        if g.part in ("both", "qk"):
            if g.rope:
                ang = torch.rand(h, dh // 2, generator=generator, dtype=torch.float64) * 2 - 1
                ang = ang * math.pi * min(1.0, spread)
                r = torch.zeros(h, dh, dh, dtype=torch.float64)
                c, s = ang.cos(), ang.sin()
                i = torch.arange(0, dh, 2)
                r[:, i, i], r[:, i, i + 1], r[:, i + 1, i], r[:, i + 1, i + 1] = c, -s, s, c
                el["qk"] = r
            else:
                el["qk"] = _random_orthogonal(h, dh, generator)
        if g.part in ("both", "vo"):
            el["vo"] = _random_orthogonal(h, dh, generator)
        return el

    def apply(self, model: nn.Module, element: dict[str, torch.Tensor]) -> None:
        g = self.bind(model)
        mod = model.get_submodule(g.attention)
        ws = self._weights(mod)
        h, dh = int(g.num_heads), int(g.dim)
        with torch.no_grad():
            for part, keys in (("qk", "qk"), ("vo", "v")):
                if part not in element:
                    continue
                r = torch.as_tensor(element[part], dtype=torch.float64)
                if r.shape != (h, dh, dh):
                    raise ValueError(
                        f"deadspec.HeadRotation.apply: element[{part!r}] must have "
                        f"shape ({h}, {dh}, {dh}), got {tuple(r.shape)}"
                    )
                for key in keys:
                    w, b = ws[key]
                    for hh in range(h):
                        sl = slice(hh * dh, (hh + 1) * dh)
                        rr = r[hh].to(w.dtype)
                        w[sl] = rr @ w[sl]
                        if b is not None:
                            b[sl] = rr @ b[sl]
                if part == "vo":
                    wo = ws["o"][0]
                    for hh in range(h):
                        sl = slice(hh * dh, (hh + 1) * dh)
                        wo[:, sl] = wo[:, sl] @ r[hh].to(wo.dtype).T

    def describe(self) -> str:
        rope = ", rope" if self.rope else ""
        return f"HeadRotation {self.attention} ({self.part}, heads={self.num_heads}{rope})"


def _random_orthogonal(h: int, d: int, generator: torch.Generator | None) -> torch.Tensor:
    a = torch.randn(h, d, d, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(a)
    return q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)


# --------------------------------------------------------------------------------------------
# Tracing
# --------------------------------------------------------------------------------------------


class _Tracer(torch.fx.Tracer):
    def __init__(self, extra_leaves: set[int]) -> None:
        super().__init__()
        self._extra = extra_leaves

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if id(m) in self._extra or _is_norm(m):
            return True
        return super().is_leaf_module(m, qualname)


@dataclass
class _Graph:
    prefix: str
    graph: torch.fx.Graph
    root: nn.Module


@dataclass
class _TraceInfo:
    graphs: list[_Graph]
    root_traced: bool
    logit_layers: set[str]
    failures: list[str]


def _try_trace(mod: nn.Module, leaves: set[int]) -> torch.fx.Graph | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _Tracer(leaves).trace(mod)
    except Exception:  # noqa: BLE001 - any tracing failure means "use the fallback"
        return None


def _trace_info(model: nn.Module) -> _TraceInfo:
    """Trace the model (or, failing that, each traceable submodule bottom-up)."""
    graph = _try_trace(model, set())
    if graph is not None:
        return _TraceInfo([_Graph("", graph, model)], True, _logit_layers(graph, model, ""), [])
    leaves: set[int] = set()
    graphs: list[_Graph] = []
    failures: list[str] = [""]
    # post-order: children before parents
    order = list(model.named_modules())
    order.reverse()
    for name, mod in order:
        if name == "" or not list(mod.children()):
            continue
        if _is_norm(mod) or torch.fx.Tracer().is_leaf_module(mod, name):
            continue
        g = _try_trace(mod, leaves)
        if g is None:
            leaves.add(id(mod))
            failures.append(name)
        else:
            graphs.append(_Graph(name, g, mod))
    return _TraceInfo(graphs, False, set(), failures)


def _logit_layers(graph: torch.fx.Graph, root: nn.Module, prefix: str) -> set[str]:
    out: set[str] = set()
    for node in graph.nodes:
        if node.op != "output":
            continue
        arg = node.args[0]
        while isinstance(arg, torch.fx.Node):
            if arg.op == "call_module":
                mod = root.get_submodule(arg.target)
                if isinstance(mod, nn.Linear):
                    out.add(_join(prefix, arg.target))
                    break
                if isinstance(mod, nn.Identity):
                    arg = arg.args[0]
                    continue
            elif arg.op == "call_method" and arg.target in ("contiguous", "clone"):
                arg = arg.args[0]
                continue
            break
    return out


def _call_counts(graph: torch.fx.Graph) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            counts[node.target] = counts.get(node.target, 0) + 1
    return counts


def _descendants(start: torch.fx.Node) -> set[torch.fx.Node]:
    seen: set[torch.fx.Node] = set()
    stack = [start]
    while stack:
        n = stack.pop()
        for u in n.users:
            if u not in seen:
                seen.add(u)
                stack.append(u)
    return seen


def _other_operand(node: torch.fx.Node, cur: torch.fx.Node) -> tuple[bool, Any]:
    args = list(node.args) + list(node.kwargs.values())
    hits = [a for a in args if a is cur]
    if len(hits) != 1:
        return False, None
    others = [a for a in args if a is not cur]
    return True, others


def _walk(
    graph: _Graph, start: torch.fx.Node, counts: dict[str, int]
) -> tuple[list[str] | None, str, str]:
    """Follow the users of ``start`` through elementwise, positively homogeneous operations.

    Returns ``(consumers, verdict, reason)``: consumers (module names relative to the graph's
    root) reading the propagated tensor as their input, or None with verdict
    ``"nonhomogeneous"`` (a known non-homogeneous operation, or the model output) or
    ``"unverifiable"`` (an operation deadspec does not know).
    """
    root = graph.root
    desc = _descendants(start) | {start}
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
            v, why = _classify(u, cur, desc, root, counts)
            if v == "consumer":
                consumers.append(u.target)
            elif v == "heads":
                mp = _heads_map(root.get_submodule(u.target))
                consumers.extend(
                    _join(u.target, k)
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


def _classify(
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
        if isinstance(mod, _HOMOGENEOUS_MODULES):
            if u.args and u.args[0] is cur:
                return "transparent", ""
            return "unverifiable", f"{u.target!r} is called with other arguments"
        if _heads_map(mod) is not None:
            if len(u.args) == 1 and u.args[0] is cur and not u.kwargs:
                return "heads", ""
            return "unverifiable", f"{u.target!r} is called with other arguments"
        if isinstance(mod, _NON_HOMOGENEOUS_MODULES):
            return "nonhomogeneous", (
                f"{type(mod).__name__} ({u.target!r}) is not positively homogeneous"
            )
        return "unverifiable", f"module {u.target!r} ({type(mod).__name__}) is not known"
    if u.op == "call_function":
        fn = u.target
        if fn in _HOMOGENEOUS_FUNCTIONS:
            if u.args and u.args[0] is cur:
                return "transparent", ""
            return "unverifiable", f"{getattr(fn, '__name__', fn)} with other arguments"
        if fn in _NEG_FUNCTIONS:
            return "transparent", ""
        if fn in _MUL_FUNCTIONS:
            ok, others = _other_operand(u, cur)
            if not ok:
                return "nonhomogeneous", "a product of the hidden units with themselves"
            if any(isinstance(o, torch.fx.Node) and o in desc for o in others):
                return "nonhomogeneous", "a product with a quantity that depends on the units"
            return "transparent", ""
        if fn in _DIV_FUNCTIONS:
            if u.kwargs.get("rounding_mode") is not None:
                return "nonhomogeneous", "a rounding division"
            if (
                not u.args
                or u.args[0] is not cur
                or any(isinstance(o, torch.fx.Node) and o in desc for o in u.args[1:])
            ):
                return "nonhomogeneous", "a division by a quantity that depends on the units"
            return "transparent", ""
        if fn in _NON_HOMOGENEOUS_FUNCTIONS:
            return "nonhomogeneous", (
                f"{getattr(fn, '__name__', fn)} is not positively homogeneous"
            )
        return "unverifiable", f"function {getattr(fn, '__name__', fn)} is not known"
    if u.op == "call_method":
        name = u.target
        if name in _TRANSPARENT_METHODS and u.args and u.args[0] is cur:
            return "transparent", ""
        if name in _MUL_METHODS:
            ok, others = _other_operand(u, cur)
            if not ok:
                return "nonhomogeneous", "a product of the hidden units with themselves"
            if any(isinstance(o, torch.fx.Node) and o in desc for o in others):
                return "nonhomogeneous", "a product with a quantity that depends on the units"
            return "transparent", ""
        if name in _DIV_METHODS:
            if (
                u.args
                and u.args[0] is cur
                and not any(isinstance(o, torch.fx.Node) and o in desc for o in u.args[1:])
                and u.kwargs.get("rounding_mode") is None
            ):
                return "transparent", ""
            return "nonhomogeneous", "a division by a quantity that depends on the units"
        if name in _NON_HOMOGENEOUS_METHODS:
            return "nonhomogeneous", f".{name}() is not positively homogeneous"
        return "unverifiable", f"method .{name}() is not known"
    return "unverifiable", f"{u.op} {u.target}"


def _find_node(info: _TraceInfo, name: str) -> tuple[_Graph, torch.fx.Node] | None:
    for g in info.graphs:
        for node in g.graph.nodes:
            if node.op == "call_module" and _join(g.prefix, node.target) == name:
                return g, node
    return None


def _validate_path(
    model: nn.Module, start: str, consumers: tuple[str, ...], fn: str, activation: Any
) -> None:
    info = _trace_info(model)
    found = _find_node(info, start)
    if found is None:
        if activation is not None:
            return  # declared activation already checked homogeneous
        if _sequential_between_ok(model, start, consumers, fn):
            return
        warnings.warn(
            f"deadspec.{fn}: could not trace the path from {start!r} to "
            f"{', '.join(consumers)!s}; declare activation= or verify with check()",
            UserWarning,
            stacklevel=3,
        )
        return
    g, node = found
    counts = _call_counts(g.graph)
    if counts.get(node.target, 0) != 1:
        raise ValueError(
            f"deadspec.{fn}: {start!r} must be called exactly once in forward, got "
            f"{counts.get(node.target, 0)} calls"
        )
    cons, verdict, why = _walk(g, node, counts)
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
    full = {_join(g.prefix, c) for c in cons}
    if full != set(consumers):
        raise ValueError(
            f"deadspec.{fn}: consumer must be every layer that reads {start!r}'s units, got "
            f"{sorted(consumers)} but the model reads them in {sorted(full)}"
        )


def _sequential_between_ok(
    model: nn.Module, start: str, consumers: tuple[str, ...], fn: str
) -> bool:
    if len(consumers) != 1:
        return False
    for seq_name, seq in model.named_modules():
        if not isinstance(seq, nn.Sequential):
            continue
        names = [_join(seq_name, n) for n, _ in seq.named_children()]
        if start in names and consumers[0] in names:
            i, j = names.index(start), names.index(consumers[0])
            if j <= i:
                return False
            for mid in list(seq.children())[i + 1 : j]:
                if isinstance(mid, _NON_HOMOGENEOUS_MODULES):
                    raise ValueError(  # noqa: TRY004 - the declared gauge does not hold
                        f"deadspec.{fn}: everything between {start!r} and its consumer must be "
                        f"positively homogeneous of degree 1, got {type(mid).__name__}"
                    )
                if not isinstance(mid, _HOMOGENEOUS_MODULES):
                    return False
            return True
    return False


# --------------------------------------------------------------------------------------------
# Discovery
# --------------------------------------------------------------------------------------------


class GaugeSet(list):
    """A list of gauges whose ``repr`` is the :func:`summary` table."""

    def __repr__(self) -> str:
        return summary(self)

    __str__ = __repr__


def summary(gauges: Sequence[Gauge]) -> str:
    """A printable table of gauges: index, kind, modules, group dimension, source."""
    rows = [("#", "kind", "modules", "dim", "source")]
    for i, g in enumerate(gauges):
        if isinstance(g, Pair):
            mods = f"{g.producer} -> {', '.join(str(c) for c in _as_tuple(g.consumer))}"
        elif isinstance(g, NormScale):
            mods = f"{g.norm} -> {', '.join(str(c) for c in _as_tuple(g.consumer))}"
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


_MLP_NAMES = (("fc1", "fc2"), ("fc_in", "fc_out"), ("c_fc", "c_proj"), ("lin1", "lin2"))
_SWIGLU_NAMES = (("w1", "w3", "w2"), ("gate_proj", "up_proj", "down_proj"))


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
        The model (not modified).
    loss : {"cross_entropy", None}
        ``"cross_entropy"``: the output layer's logit shift is a gauge (softmax cross-entropy
        over the last axis). None: no loss-dependent gauges.
    check : bool
        Verify each gauge numerically (:meth:`Gauge.check`, float64, a random group element,
        relative tolerance 1e-10) on ``inputs`` (required); gauges that fail are dropped with a
        warning.
    inputs, targets, loss_fn
        For ``check`` (see :meth:`Gauge.check`). ``inputs`` also lets discovery find the logit
        layer of a model that cannot be traced (the module whose output object is returned).
    heads : bool
        Report :class:`HeadRotation` s (``nn.MultiheadAttention``; modules with
        ``deadspec_heads()``).
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
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"deadspec.discover: model must be an nn.Module, got {type(model).__name__}"
        )
    if loss not in ("cross_entropy", None):
        raise ValueError(f"deadspec.discover: loss must be 'cross_entropy' or None, got {loss!r}")
    if check and inputs is None:
        raise ValueError("deadspec.discover: inputs must be given with check=True, got None")
    shared = _shared_param_ids(model)
    info = _trace_info(model)
    found: list[Gauge] = []
    keys: set[tuple[str, str]] = set()

    def add(g: Gauge) -> None:
        key = (g.kind, g.modules()[0])
        if key in keys:
            return
        keys.add(key)
        found.append(g)

    def unshared(*ts: torch.Tensor | None) -> bool:
        return all(t is None or id(t) not in shared for t in ts)

    for gr in info.graphs:
        counts = _call_counts(gr.graph)
        for node in gr.graph.nodes:
            if node.op != "call_module" or counts.get(node.target, 0) != 1:
                continue
            mod = gr.root.get_submodule(node.target)
            is_lin = isinstance(mod, nn.Linear)
            is_norm = _is_norm(mod)
            if not (is_lin or is_norm):
                continue
            params = (mod.weight, mod.bias) if is_lin else _norm_params(mod)
            if not unshared(*params):
                continue
            cons, _verdict, _why = _walk(gr, node, counts)
            if cons is None:
                continue
            h = mod.out_features if is_lin else mod.weight.shape[0]
            cmods = [gr.root.get_submodule(c) for c in cons]
            if not all(
                isinstance(c, nn.Linear)
                and c.in_features == h
                and unshared(c.weight)
                and c is not mod
                for c in cmods
            ):
                continue
            names = tuple(_join(gr.prefix, c) for c in cons)
            cref: Any = names[0] if len(names) == 1 else names
            pname = _join(gr.prefix, node.target)
            if is_lin:
                add(Pair(pname, cref, source="fx", dim=h))
            else:
                add(NormScale(pname, cref, source="fx", dim=h))

    if not info.root_traced:
        for g in _fallback_gauges(model, shared):
            add(g)
    if loss == "cross_entropy":
        logit = set(info.logit_layers)
        if not info.root_traced:
            logit |= _fallback_logit(model, inputs)
        for name in sorted(logit):
            mod = model.get_submodule(name)
            if isinstance(mod, nn.Linear) and unshared(mod.weight, mod.bias):
                add(
                    LogitShift(
                        name, source="fx" if info.root_traced else "fallback", dim=mod.out_features
                    )
                )
    if heads:
        for name, mod in model.named_modules():
            try:
                g = HeadRotation(name, source="module").bind(model)
            except ValueError:
                continue
            params = [p for p in mod.parameters()]
            if unshared(*params):
                add(g)
    if chains:
        for ch in _chains([g for g in found if isinstance(g, Pair)]):
            add(ch)
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    rank = {"norm": 0, "pair": 1, "chain": 2, "logit_shift": 3, "head_rotation": 4}
    found.sort(key=lambda g: (order.get(g.modules()[0], 1 << 30), rank[g.kind]))
    naming = [g for g in found if g.source == "naming"]
    if naming and not check:
        warnings.warn(
            f"deadspec.discover: {len(naming)} gauge(s) found by module names only (the model "
            f"could not be traced); verify them with check=True",
            UserWarning,
            stacklevel=2,
        )
    if check:
        kept = []
        for g in found:
            rel = g.check(model, inputs, targets, loss_fn, generator=generator, raise_on_fail=False)
            if rel <= 1e-10:
                kept.append(g)
            else:
                warnings.warn(
                    f"deadspec.discover: dropped {g.describe()}: the loss changed by "
                    f"{rel:.3g} (relative) along it",
                    UserWarning,
                    stacklevel=2,
                )
        found = kept
    return GaugeSet(found)


def _chains(pairs: list[Pair]) -> list[Chain]:
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


def _fallback_gauges(model: nn.Module, shared: set[int]) -> list[Gauge]:
    out: list[Gauge] = []

    def ok(*ts: torch.Tensor | None) -> bool:
        return all(t is None or id(t) not in shared for t in ts)

    for seq_name, seq in model.named_modules():
        if isinstance(seq, nn.Sequential):
            kids = list(seq.named_children())
            for i, (n0, m0) in enumerate(kids):
                lin0 = isinstance(m0, nn.Linear)
                if not (lin0 or _is_norm(m0)):
                    continue
                j = i + 1
                while j < len(kids) and isinstance(kids[j][1], _HOMOGENEOUS_MODULES):
                    j += 1
                if j >= len(kids) or not isinstance(kids[j][1], nn.Linear):
                    continue
                m1 = kids[j][1]
                h = m0.out_features if lin0 else m0.weight.shape[0]
                params = (m0.weight, m0.bias) if lin0 else _norm_params(m0)
                if m1.in_features != h or not ok(*params, m1.weight):
                    continue
                p, c = _join(seq_name, n0), _join(seq_name, kids[j][0])
                out.append(
                    Pair(p, c, source="sequential", dim=h)
                    if lin0
                    else NormScale(p, c, source="sequential", dim=h)
                )
        children = dict(seq.named_children())
        for a, b in _MLP_NAMES:
            act = children.get("act", children.get("activation"))
            if a in children and b in children and isinstance(act, _HOMOGENEOUS_MODULES):
                m0, m1 = children[a], children[b]
                if (
                    isinstance(m0, nn.Linear)
                    and isinstance(m1, nn.Linear)
                    and m1.in_features == m0.out_features
                    and ok(m0.weight, m0.bias, m1.weight)
                ):
                    out.append(
                        Pair(
                            _join(seq_name, a),
                            _join(seq_name, b),
                            source="naming",
                            dim=m0.out_features,
                        )
                    )
        for gate, up, down in _SWIGLU_NAMES:
            if all(k in children for k in (gate, up, down)):
                mu, md = children[up], children[down]
                if (
                    isinstance(mu, nn.Linear)
                    and isinstance(md, nn.Linear)
                    and md.in_features == mu.out_features
                    and ok(mu.weight, mu.bias, md.weight)
                ):
                    out.append(
                        Pair(
                            _join(seq_name, up),
                            _join(seq_name, down),
                            source="naming",
                            dim=mu.out_features,
                        )
                    )
    return out


def _fallback_logit(model: nn.Module, inputs: Any) -> set[str]:
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
        with torch.no_grad():
            res = model(*(inputs if isinstance(inputs, (tuple, list)) else (inputs,)))
    finally:
        for h in hooks:
            h.remove()
    if isinstance(res, torch.Tensor) and id(res) in produced:
        out.add(produced[id(res)])
    return out


# --------------------------------------------------------------------------------------------
# Group elements over several gauges
# --------------------------------------------------------------------------------------------


def random_elements(
    model: nn.Module,
    gauges: Sequence[Gauge],
    generator: torch.Generator | None = None,
    *,
    spread: float = 1.0,
) -> list[Any]:
    """One random element per gauge (``c = exp(U(−spread, spread))`` for the scalings)."""
    return [g.random_element(model, generator, spread=spread) for g in gauges]


def apply_elements(model: nn.Module, gauges: Sequence[Gauge], elements: Sequence[Any]) -> None:
    """Act on ``model`` in place with one element per gauge, in order."""
    if len(elements) != len(gauges):
        raise ValueError(
            f"deadspec.apply_elements: elements must hold one element per gauge "
            f"({len(gauges)}), got {len(elements)}"
        )
    for g, e in zip(gauges, elements):
        g.apply(model, e)
