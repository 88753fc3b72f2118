"""The gauge kinds: :class:`Pair`, :class:`Chain`, :class:`NormScale`, :class:`LogitShift`,
:class:`HeadRotation` (see :mod:`deadspec.gauges` for their contract)."""

from __future__ import annotations

import copy
import dataclasses
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from deadspec._attention import Layout, consumer_matrix, consumer_param, in_features
from deadspec._attention import layout as attention_layout
from deadspec._usercode import MODEL_FORWARD, user_code
from deadspec._util import check_bool, check_real, unwrap_parallel
from deadspec.gauges._homogeneity import check_activation
from deadspec.gauges._modules import (
    Ref,
    as_inputs,
    as_tuple,
    check_data,
    check_inputs,
    check_refs,
    is_norm,
    norm_params,
    observe,
    positive_element,
    positive_vector,
    random_orthogonal,
    require_linear,
    require_linear_like,
    require_unshared,
    resolve,
    scale_cols_,
    scale_rows_,
    shared_param_ids,
    units_index,
)
from deadspec.gauges._tracing import trace_info, validate_path

__all__ = ["Chain", "Gauge", "HeadRotation", "LogitShift", "NormScale", "Pair"]


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
        fn = f"{type(self).__name__}.check"
        check_inputs(fn, inputs)
        check_data(fn, inputs, targets, loss_fn, generator)
        rtol = check_real(fn, "rtol", rtol)
        spread = check_real(fn, "spread", spread)
        raise_on_fail = check_bool(fn, "raise_on_fail", raise_on_fail)
        g = self.bind(model)
        m = copy.deepcopy(unwrap_parallel(model)).to(torch.float64).eval()
        args = as_inputs(inputs)
        logit = isinstance(g, LogitShift)
        with torch.no_grad():
            with user_code(fn, f"{MODEL_FORWARD} on the inputs (a float64 copy of the model)"):
                out = m(*args)
            before = observe(out, targets, loss_fn, logit, fn)
            if not bool(torch.isfinite(before).all()):
                raise ValueError(
                    f"deadspec.{fn}: the model's outputs (or loss) on these inputs must be finite "
                    f"to be compared, got non-finite values before moving along the gauge (a "
                    f"float64 copy of the model)"
                )
            g.apply(m, g.random_element(m, generator, spread=spread))
            with user_code(fn, f"{MODEL_FORWARD} on the inputs (moved along {g.describe()})"):
                out = m(*args)
            after = observe(out, targets, loss_fn, logit, fn)
        scale = float(before.abs().max()) if before.numel() else 0.0
        with torch.no_grad():
            # relative to the scale, in a scaled form that cannot overflow for finite values
            norm = max(scale, torch.finfo(torch.float64).tiny)
            d = (after / norm - before / norm).abs()
        rel = float(d.max()) if before.numel() else 0.0
        if not math.isfinite(rel):
            raise ValueError(
                f"deadspec.{fn}: moving along {g.describe()} made the model's outputs (or loss) "
                f"non-finite (beyond float64: a smaller spread keeps the element nearer 1)"
            )
        if rel > rtol and raise_on_fail:
            raise ValueError(
                f"deadspec.{fn}: the loss must be invariant along the "
                f"gauge to rtol={rtol:g}, got a relative change {rel:.3g} ({g.describe()})"
            )
        return rel

    def __str__(self) -> str:
        return self.describe()



class _UnitScaling(Gauge):
    """A per-unit positive scaling ``c``: the rows of a producer block (weight and bias, or a
    norm's γ and β) ×c, the columns of the consumers' weights ÷c (:class:`Pair`,
    :class:`NormScale`). Subclasses say which rows (``_rows``) and have ``consumer``."""

    consumer: Any
    dim: int | None

    def _rows(self, model: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None, Any]:
        """(weight, bias or None, unit index or None) of the producer block (after bind)."""
        raise NotImplementedError  # pragma: no cover - overridden

    def random_element(
        self, model: nn.Module, generator: torch.Generator | None = None, *, spread: float = 1.0
    ) -> torch.Tensor:
        g = self.bind(model)
        return positive_element(int(g.dim), generator, spread)

    def apply(self, model: nn.Module, element: torch.Tensor) -> None:
        g = self.bind(model)
        c = positive_vector(type(self).__name__, element, int(g.dim))
        w, b, idx = g._rows(model)
        with torch.no_grad():
            scale_rows_(w, idx, c)
            if b is not None:
                scale_rows_(b, idx, c)
            for cn in as_tuple(g.consumer):
                scale_cols_(consumer_matrix(model.get_submodule(cn)), idx, c)


@dataclass(eq=True)
class Pair(_UnitScaling):
    """Per-hidden-unit positive rescaling between a producer and its consumer(s).

    ``producer.weight[j, :] ↦ c_j · producer.weight[j, :]``, ``producer.bias[j] ↦ c_j ·
    producer.bias[j]``, ``consumer.weight[:, j] ↦ consumer.weight[:, j] / c_j`` for every
    consumer, for the units ``j`` in ``units`` (all by default), ``c_j > 0``.

    Parameters
    ----------
    producer : str or nn.Linear
        The layer whose output rows are the hidden units.
    consumer : str, nn.Linear or a sequence of them
        The layer(s) reading the hidden units (input columns; a Hugging Face ``Conv1D``, stored
        ``in × out``, reads them through its rows).
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
        check_activation("Pair", self.activation)
        self.producer = check_refs("Pair", "producer", self.producer, many=False)
        self.consumer = check_refs("Pair", "consumer", self.consumer)

    def modules(self) -> tuple[str, ...]:
        return (str(self.producer),) + tuple(str(c) for c in as_tuple(self.consumer))

    def bind(self, model: nn.Module) -> Pair:
        pname, prod = resolve(model, self.producer, "Pair", "producer")
        require_linear("Pair", "producer", pname, prod)
        consumers = as_tuple(self.consumer)
        if not consumers:
            raise ValueError("deadspec.Pair: consumer must name at least one layer, got none")
        cnames = []
        shared = shared_param_ids(model)
        require_unshared("Pair", pname, (prod.weight, prod.bias), shared)
        for c in consumers:
            cname, cons = resolve(model, c, "Pair", "consumer")
            require_linear_like("Pair", "consumer", cname, cons)
            if in_features(cons) != prod.out_features:
                raise ValueError(
                    f"deadspec.Pair: consumer {cname!r} must read the producer's "
                    f"{prod.out_features} units (in_features == producer.out_features), got "
                    f"in_features={in_features(cons)}"
                )
            if cons is prod:
                raise ValueError(
                    f"deadspec.Pair: consumer must differ from the producer, got {cname!r} twice"
                )
            require_unshared("Pair", cname, (consumer_param(cons)[0],), shared)
            cnames.append(cname)
        idx = units_index("Pair", self.units, prod.out_features)
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
        validate_path(model, g.producer, as_tuple(g.consumer), "Pair", self.activation)

    def _index(self) -> torch.Tensor | None:
        return None if self.units is None else torch.as_tensor(self.units, dtype=torch.int64)

    def _rows(self, model: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None, Any]:
        prod = model.get_submodule(self.producer)
        return prod.weight, prod.bias, self._index()

    def describe(self) -> str:
        cons = ", ".join(str(c) for c in as_tuple(self.consumer))
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
        if isinstance(self.layers, (str, nn.Module)) or not hasattr(self.layers, "__iter__"):
            raise TypeError(
                f"deadspec.Chain: layers must be a sequence of module names or modules, got "
                f"{type(self.layers).__name__}"
            )
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
            n, m = resolve(model, ref, "Chain", "layers")
            require_linear("Chain", "layers", n, m)
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
class NormScale(_UnitScaling):
    """LayerNorm/RMSNorm per-channel scale: ``(γ_i, β_i) ↦ c_i (γ_i, β_i)``, consumer column
    ``i ↦ / c_i`` (every consumer).

    Parameters
    ----------
    norm : str or module
        ``nn.LayerNorm`` (elementwise affine, 1-D ``normalized_shape``), ``nn.RMSNorm`` or a
        custom ``*RMSNorm``/``*LayerNorm`` class with a 1-D ``weight`` (and optional ``bias``)
        that multiplies the normalised input channelwise.
    consumer : str, nn.Linear, Conv1D or a sequence of them
        The layer(s) reading the normalised output.
    """

    kind: ClassVar[str] = "norm"
    norm: Ref
    consumer: Ref | tuple[Ref, ...]
    source: str = field(default="declared", compare=False)
    dim: int | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        self.norm = check_refs("NormScale", "norm", self.norm, many=False)
        self.consumer = check_refs("NormScale", "consumer", self.consumer)

    def modules(self) -> tuple[str, ...]:
        return (str(self.norm),) + tuple(str(c) for c in as_tuple(self.consumer))

    def bind(self, model: nn.Module) -> NormScale:
        nname, norm = resolve(model, self.norm, "NormScale", "norm")
        if not is_norm(norm):
            raise ValueError(
                f"deadspec.NormScale: norm must be a LayerNorm (elementwise_affine, 1-D "
                f"normalized_shape) or an RMSNorm with a weight, got {type(norm).__name__} "
                f"{nname!r}"
            )
        w, b = norm_params(norm)
        d = w.shape[0]
        shared = shared_param_ids(model)
        require_unshared("NormScale", nname, (w, b), shared)
        consumers = as_tuple(self.consumer)
        if not consumers:
            raise ValueError("deadspec.NormScale: consumer must name at least one layer, got none")
        cnames = []
        for c in consumers:
            cname, cons = resolve(model, c, "NormScale", "consumer")
            require_linear_like("NormScale", "consumer", cname, cons)
            if in_features(cons) != d:
                raise ValueError(
                    f"deadspec.NormScale: consumer {cname!r} must read the norm's {d} channels "
                    f"(in_features == {d}), got in_features={in_features(cons)}"
                )
            require_unshared("NormScale", cname, (consumer_param(cons)[0],), shared)
            cnames.append(cname)
        return dataclasses.replace(
            self, norm=nname, consumer=cnames[0] if len(cnames) == 1 else tuple(cnames), dim=d
        )

    def validate(self, model: nn.Module) -> None:
        g = self.bind(model)
        validate_path(model, g.norm, as_tuple(g.consumer), "NormScale", None)

    def _rows(self, model: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None, Any]:
        w, b = norm_params(model.get_submodule(self.norm))
        return w, b, None

    def describe(self) -> str:
        cons = ", ".join(str(c) for c in as_tuple(self.consumer))
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
        name, mod = resolve(model, self.layer, "LogitShift", "layer")
        require_linear("LogitShift", "layer", name, mod)
        require_unshared("LogitShift", name, (mod.weight, mod.bias), shared_param_ids(model))
        return dataclasses.replace(self, layer=name, dim=mod.out_features)

    def validate(self, model: nn.Module) -> None:
        g = self.bind(model)
        info = trace_info(model)
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
    """Per-head attention rotations (QK: ``R`` on the q and k rows of a head; VO: ``Q`` on the v
    rows of a head, ``Qᵀ`` on the output projection's columns of the query heads that read it).

    Parameters
    ----------
    attention : str or module
        An attention module whose head layout deadspec knows (:mod:`deadspec._attention`):
        ``nn.MultiheadAttention`` (packed ``in_proj_weight``), modules with ``q, k, v, o``
        ``nn.Linear`` children and ``deadspec_heads()``
        (:class:`deadspec.models_transformer.SelfAttention`), Hugging Face GPT-2 attention
        (fused ``c_attn`` Conv1D), ``q_proj/k_proj/v_proj/o_proj`` attention (Llama, Mistral,
        Qwen2, ViT, grouped-query attention included) and BERT-style attention
        (``self.query/key/value``, ``output.dense``).
    num_heads : int, optional
        Default: the module's (``num_heads`` / ``n_heads`` / its config's); given, it must agree.
    part : {"both", "qk", "vo"}
        Which rotations form the gauge.
    rope : bool, optional
        RoPE on q/k: the QK rotations are then restricted to the 2×2 rotations of RoPE's planes,
        which commute with it (pairs ``(2i, 2i+1)`` for deadspec's modules, ``(i, i + dh/2)``
        in Hugging Face's ``rotate_half`` convention). Default: from the module (its ``rope``
        attribute, its config's rotary parameters).

    Notes
    -----
    With grouped-query attention (``kv_heads`` < ``num_heads``) the element holds one rotation
    per K/V head: it acts on that K/V head and on every query head of its group (QK), and on the
    output columns of those query heads (VO). An Adam base is coordinatewise, so
    :class:`deadspec.optim.DDCAdam` is equivariant under these rotations only through its
    per-head shared second moment (``rotations=True``); :class:`deadspec.optim.DDCMuon` through
    its orthogonaliser.
    """

    kind: ClassVar[str] = "head_rotation"
    attention: Ref
    num_heads: int | None = None
    part: str = "both"
    rope: bool | None = None
    source: str = field(default="declared", compare=False)
    dim: int | None = field(default=None, compare=False)
    kv_heads: int | None = field(default=None, compare=False)

    def modules(self) -> tuple[str, ...]:
        return (str(self.attention),)

    def layout(self, model: nn.Module) -> Layout:
        """The head layout of the attention module (after checks)."""
        name, mod = resolve(model, self.attention, "HeadRotation", "attention")
        lay = attention_layout(name, mod, self.num_heads)
        if lay is None:
            raise ValueError(
                f"deadspec.HeadRotation: attention must be an attention module with a known head "
                f"layout (nn.MultiheadAttention with a packed in_proj_weight and no "
                f"bias_k/bias_v/add_zero_attn; q/k/v/o layers with deadspec_heads(); GPT-2's "
                f"c_attn/c_proj; q_proj/k_proj/v_proj/o_proj; BERT-style query/key/value with "
                f"output.dense), got {type(mod).__name__} {name!r}"
            )
        return lay

    def bind(self, model: nn.Module) -> HeadRotation:
        if self.part not in ("both", "qk", "vo"):
            raise ValueError(
                f"deadspec.HeadRotation: part must be 'both', 'qk' or 'vo', got {self.part!r}"
            )
        lay = self.layout(model)
        if self.num_heads is not None and int(self.num_heads) != lay.heads:
            raise ValueError(
                f"deadspec.HeadRotation: num_heads must be the module's {lay.heads} heads of "
                f"{lay.name!r}, got {self.num_heads}"
            )
        if self.part != "vo" and not lay.qk:
            raise ValueError(
                f"deadspec.HeadRotation: the QK rotations of {lay.name!r} are not a gauge "
                f"({lay.why}); use part='vo'"
            )
        rope = lay.rope is not None if self.rope is None else bool(self.rope)
        if rope and self.part != "vo" and lay.head_dim % 2:
            raise ValueError(
                f"deadspec.HeadRotation: RoPE needs an even head dim, got {lay.head_dim}"
            )
        return dataclasses.replace(
            self,
            attention=lay.name,
            num_heads=lay.heads,
            rope=rope,
            dim=lay.head_dim,
            kv_heads=lay.kv_heads,
        )

    def blocks(self, model: nn.Module) -> list[tuple[torch.Tensor, int, list[tuple[int, int]]]]:
        """(tensor, stored axis, per-head ``[start, stop)`` ranges along it) of every parameter
        block the gauge rotates: q/k/v weight rows and biases, the output projection's columns.
        Each range is rotated by the element of its (K/V) head."""
        g = self.bind(model)
        lay = g.layout(model)
        keys = {"both": "qkv", "qk": "qk", "vo": "v"}[g.part]
        out: list[tuple[torch.Tensor, int, list[tuple[int, int]]]] = []
        for key in keys:
            w, b, off, axis = lay.params(model, key)
            segs = [
                (off + i * lay.head_dim, off + (i + 1) * lay.head_dim)
                for i in range(lay.count(key))
            ]
            out.append((w, axis, segs))
            if b is not None:
                out.append((b, 0, segs))
        if "v" in keys:
            wo, axis = lay.output_param(model)
            segs = [(i * lay.head_dim, (i + 1) * lay.head_dim) for i in range(lay.heads)]
            out.append((wo, axis, segs))
        return out

    def random_element(
        self, model: nn.Module, generator: torch.Generator | None = None, *, spread: float = 1.0
    ) -> dict[str, torch.Tensor]:
        g = self.bind(model)
        kv, dh = int(g.kv_heads), int(g.dim)
        el: dict[str, torch.Tensor] = {}
        if g.part in ("both", "qk"):
            if g.rope:
                lay = g.layout(model)
                half = lay.rope == "half"
                ang = torch.rand(kv, dh // 2, generator=generator, dtype=torch.float64) * 2 - 1
                ang = ang * math.pi * min(1.0, spread)
                r = torch.zeros(kv, dh, dh, dtype=torch.float64)
                c, s = ang.cos(), ang.sin()
                i = torch.arange(0, dh // 2) if half else torch.arange(0, dh, 2)
                j = i + dh // 2 if half else i + 1
                r[:, i, i], r[:, i, j], r[:, j, i], r[:, j, j] = c, -s, s, c
                el["qk"] = r
            else:
                el["qk"] = random_orthogonal(kv, dh, generator)
        if g.part in ("both", "vo"):
            el["vo"] = random_orthogonal(kv, dh, generator)
        return el

    def apply(self, model: nn.Module, element: dict[str, torch.Tensor]) -> None:
        g = self.bind(model)
        lay = g.layout(model)
        kv, dh = lay.kv_heads, lay.head_dim
        with torch.no_grad():
            for part, keys in (("qk", "qk"), ("vo", "v")):
                if part not in element:
                    continue
                r = torch.as_tensor(element[part], dtype=torch.float64)
                if r.shape != (kv, dh, dh):
                    raise ValueError(
                        f"deadspec.HeadRotation.apply: element[{part!r}] must have "
                        f"shape ({kv}, {dh}, {dh}), got {tuple(r.shape)}"
                    )
                for key in keys:
                    w, b, off = lay.tensors(model, key)
                    for hh in range(lay.count(key)):
                        sl = slice(off + hh * dh, off + (hh + 1) * dh)
                        rr = r[hh if key != "q" else hh // lay.group].to(w.dtype)
                        w[sl] = rr @ w[sl]
                        if b is not None:
                            b[sl] = rr @ b[sl]
                if part == "vo":
                    wo = lay.output(model)
                    for hh in range(lay.heads):
                        sl = slice(hh * dh, (hh + 1) * dh)
                        wo[:, sl] = wo[:, sl] @ r[hh // lay.group].to(wo.dtype).T

    def describe(self) -> str:
        rope = ", rope" if self.rope else ""
        kv = ""
        if self.kv_heads not in (None, self.num_heads):
            kv = f", kv_heads={self.kv_heads}"
        return f"HeadRotation {self.attention} ({self.part}, heads={self.num_heads}{kv}{rope})"
