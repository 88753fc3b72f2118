"""Candidate directions and their classification: genuine singularity, flat gauge or regular.

Candidates come from the one gauge detector, :func:`deadspec.gauges.discover` (the gauges the
DDC optimizers condition on, as parameter-space tangents), from the small eigen-directions of
each layer's Fisher-Gram, and from the user; each is measured by
:func:`~deadspec.approach.direction_order` (theory.md §3).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from deadspec import gauges as G
from deadspec._engine import CollectOptions, collect
from deadspec._engine.inputs import as_input_tuple, check_targets
from deadspec._engine.losses import infer_task
from deadspec._util import check_bool, check_model, check_seed, unwrap_compiled
from deadspec._util import progress as progress_bar
from deadspec.approach._common import (
    check_order_options,
    linear_named,
    t_grid,
    unit_direction,
)
from deadspec.approach.order import DirectionOrder, direction_order
from deadspec.ops import fisher_gram, spectrum

__all__ = ["DirectionClass", "classify_directions", "gauge_directions"]


@dataclasses.dataclass(frozen=True, repr=False)
class DirectionClass:
    """One classified candidate direction (:func:`classify_directions`).

    Attributes
    ----------
    name : str
        ``"<source>:<where>"``, e.g. ``"qk-scale:blocks.0.attn[h=1]"``,
        ``"eigen-fisher:blocks.0.mlp.fc_in[0]"``.
    source : str
        ``"gauge"`` (a symmetry detector), ``"eigen-fisher"`` (a small eigen-direction of a
        layer's Fisher-Gram) or ``"user"``.
    layer : str or None
        The layer (or module) the direction lives in.
    order : DirectionOrder
        The measurement: ``kind`` ∈ {"genuine", "flat-gauge", "regular"}, ``k_hat``,
        ``lambda_dir``.
    direction : dict
        The unit direction ``{parameter name: tensor}`` (non-zero entries only).
    """

    name: str
    source: str
    layer: str | None
    order: DirectionOrder
    direction: dict = dataclasses.field(default_factory=dict)

    @property
    def kind(self) -> str:
        return self.order.kind

    @property
    def k_hat(self) -> float:
        return self.order.k_hat

    @property
    def lambda_dir(self) -> float:
        return self.order.lambda_dir

    def to_dict(self) -> dict[str, Any]:
        """Scalars: name, source, layer, kind, k_hat, lambda_dir, slope, r2, F_u at the
        largest t."""
        o = self.order
        return {
            "name": self.name,
            "source": self.source,
            "layer": self.layer,
            "kind": o.kind,
            "k_hat": float(o.k_hat),
            "lambda_dir": float(o.lambda_dir),
            "slope": float(o.slope),
            "r2": float(o.r2),
            "fisher": float(o.fisher[-1]),
            "reference": float(o.reference[-1]) if o.reference is not None else float("nan"),
        }

    def __repr__(self) -> str:
        return (
            f"DirectionClass(name={self.name!r}, kind={self.kind!r}, k_hat={self.k_hat:.4g}, "
            f"lambda_dir={self.lambda_dir:.4g})"
        )


def _consumers(g: Any) -> tuple[str, ...]:
    return (g.consumer,) if isinstance(g.consumer, str) else tuple(g.consumer)


def _zeros_but(w: torch.Tensor, idx: slice | int, axis: str, sign: float = 1.0) -> torch.Tensor:
    """A zero tensor shaped like ``w`` holding ``sign·w`` in rows (or columns) ``idx``."""
    z = torch.zeros_like(w)
    if axis == "row":
        z[idx] = sign * w[idx]
    else:
        z[:, idx] = sign * w[:, idx]
    return z


class _Tangents:
    """Parameter-space tangents ``{parameter name: tensor}`` of discovered gauges."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.names = {id(p): n for n, p in model.named_parameters()}

    def put(self, d: dict[str, torch.Tensor], p: torch.Tensor | None, t: torch.Tensor) -> None:
        if p is not None:
            name = self.names[id(p)]
            d[name] = d[name] + t if name in d else t

    def unit_scale(
        self, rows: list[torch.Tensor | None], cols: list[torch.Tensor], j: int
    ) -> dict[str, torch.Tensor]:
        """Rows j of ``rows`` scaled up, columns j of ``cols`` scaled down: (w, −w)."""
        d: dict[str, torch.Tensor] = {}
        for w in rows:
            if w is not None:
                self.put(d, w, _zeros_but(w, j, "row"))
        for w in cols:
            self.put(d, w, _zeros_but(w, j, "col", -1.0))
        return d

    def pair(self, g: G.Pair) -> tuple[str, dict[str, torch.Tensor]]:
        """The rescaling of the unit with the largest ``‖w_in‖·‖w_out‖``."""
        prod = self.model.get_submodule(g.producer)
        cons = [self.model.get_submodule(c).weight for c in _consumers(g)]
        out_sq = sum(c.square().sum(0) for c in cons)
        score = prod.weight.norm(dim=1) * out_sq.sqrt()
        if g.units is not None:
            keep = torch.zeros_like(score, dtype=torch.bool)
            keep[list(g.units)] = True
            score = torch.where(keep, score, torch.full_like(score, -1.0))
        j = int(score.argmax())
        return f"relu-scale:{g.producer}[j={j}]", self.unit_scale([prod.weight, prod.bias], cons, j)

    def norm(self, g: G.NormScale) -> tuple[str, dict[str, torch.Tensor]] | None:
        """The scale of the channel with the largest ``|γ_k|``."""
        norm = self.model.get_submodule(g.norm)
        gamma = getattr(norm, "weight", None)
        if gamma is None:
            return None
        k = int(gamma.abs().argmax())
        cons = [self.model.get_submodule(c).weight for c in _consumers(g)]
        rows = [gamma, getattr(norm, "bias", None)]
        return f"ln-scale:{g.norm}[i={k}]", self.unit_scale(rows, cons, k)

    def logit_shift(self, layer: str) -> tuple[str, dict[str, torch.Tensor]]:
        """``W ↦ W + 1vᵀ``, ``b ↦ b + c1`` with ``v = 1``, ``c = 1``."""
        lin = self.model.get_submodule(layer)
        d: dict[str, torch.Tensor] = {}
        self.put(d, lin.weight, torch.ones_like(lin.weight))
        self.put(d, lin.bias, None if lin.bias is None else torch.ones_like(lin.bias))
        return f"logit-shift:{layer}", d

    def heads(self, g: G.HeadRotation) -> list[tuple[str, dict[str, torch.Tensor]]]:
        """Per head: ``(W_q,h, W_k,h) ↦ (cW_q,h, W_k,h/c)`` and ``(W_v,h, W_o[:,h]) ↦ (cW_v,h,
        W_o[:,h]/c)``, the scalar part of the GL(d_head) the rotations live in."""
        mod = self.model.get_submodule(g.attention)
        qkvo = _attention_weights(mod)
        dh = int(g.dim)
        out = []
        for h in range(int(g.num_heads)):
            sl = slice(h * dh, (h + 1) * dh)
            for label, a, b in (("qk-scale", "q", "k"), ("vo-scale", "v", "o")):
                if g.part not in ("both", label[:2]):
                    continue
                d: dict[str, torch.Tensor] = {}
                for (p, off), sign in ((qkvo[a], 1.0), (qkvo[b], -1.0)):
                    w, bias = p
                    axis = "col" if b == "o" and sign < 0 else "row"
                    rows = slice(off + sl.start, off + sl.stop)
                    self.put(d, w, _zeros_but(w, rows, axis, sign))
                    if bias is not None and axis == "row":
                        self.put(d, bias, _zeros_but(bias, rows, "row", sign))
                out.append((f"{label}:{g.attention}[h={h}]", d))
        return out


def _attention_weights(mod: nn.Module) -> dict[str, tuple[tuple[torch.Tensor, Any], int]]:
    """q/k/v/o as ((weight, bias or None), row offset in that weight)."""
    if isinstance(mod, nn.MultiheadAttention):
        e = mod.embed_dim
        w, b = mod.in_proj_weight, mod.in_proj_bias
        out = {key: ((w, b), i * e) for i, key in enumerate("qkv")}
        out["o"] = ((mod.out_proj.weight, None), 0)
        return out
    return {k: ((getattr(mod, k).weight, getattr(mod, k).bias), 0) for k in "qkvo"}


def _tangents(
    model: nn.Module, found: Sequence[G.Gauge], output_layer: str | None, logit_shift: bool
) -> dict[str, dict[str, torch.Tensor]]:
    tg = _Tangents(model)
    out: dict[str, dict[str, torch.Tensor]] = {}
    with torch.no_grad():
        if logit_shift and output_layer is not None:
            name, d = tg.logit_shift(output_layer)
            out[name] = d
        for g in found:
            if isinstance(g, G.LogitShift):
                if logit_shift and output_layer is None:
                    name, d = tg.logit_shift(g.layer)
                    out[name] = d
            elif isinstance(g, G.Pair):
                name, d = tg.pair(g)
                out[name] = d
            elif isinstance(g, G.NormScale):
                item = tg.norm(g)
                if item is not None:
                    out[item[0]] = item[1]
            elif isinstance(g, G.HeadRotation):
                out.update(tg.heads(g))
    return out


def _discovered(model: nn.Module, logit_shift: bool, inputs: Any = None) -> list[G.Gauge]:
    """The gauges :func:`deadspec.gauges.discover` finds (the optimizers' detector)."""
    with warnings.catch_warnings():
        # gauges found by module names only: their flatness is measured here anyway
        warnings.filterwarnings("ignore", message=r"deadspec\.discover: .* by module names only")
        return list(
            G.discover(
                model,
                loss="cross_entropy" if logit_shift else None,
                inputs=inputs,
                chains=False,
            )
        )


def gauge_directions(
    model: nn.Module, *, output_layer: str | None = None, logit_shift: bool = True
) -> dict[str, dict[str, torch.Tensor]]:
    """Parameter-space tangents of the gauges :func:`deadspec.gauges.discover` finds.

    The detector is the DDC optimizers' own (one detector for both), so the directions are
    those DDCAdam/DDCMuon condition on. Tangents are at the model's current parameters, not
    normalised, one per gauge:

    - ``logit-shift:<layer>`` (a :class:`~deadspec.gauges.LogitShift`): ``W ↦ W + 1vᵀ``,
      ``b ↦ b + c1`` with ``v = 1``: exact for cross-entropy (softmax is shift-invariant).
      ``output_layer`` names the logit layer explicitly (default: the discovered ones).
    - ``qk-scale:<attn>[h=i]`` and ``vo-scale:<attn>[h=i]`` for each
      :class:`~deadspec.gauges.HeadRotation` (``nn.MultiheadAttention`` and modules with a
      ``deadspec_heads()`` layout): ``(W_q,h, W_k,h) ↦ (cW_q,h, W_k,h/c)`` (commutes with RoPE)
      and ``(W_v,h, W_o[:,h]) ↦ (cW_v,h, W_o[:,h]/c)``.
    - ``relu-scale:<producer>[j=u]`` for each :class:`~deadspec.gauges.Pair` (ReLU-type
      activations and SwiGLU's linear branch): the rescaling of hidden unit u, the one with the
      largest ``‖w_in‖·‖w_out‖``.
    - ``ln-scale:<norm>[i=k]`` for each :class:`~deadspec.gauges.NormScale`: channel k (largest
      ``|γ_k|``) scaled against the input column k of the layers it feeds.

    A model whose root torch.fx cannot trace gets the gauges discovery finds bottom-up; its
    logit layer then needs ``output_layer`` (or :func:`classify_directions`, which passes its
    inputs to discovery).

    Returns
    -------
    dict
        ``name -> {parameter name: tangent tensor}``.
    """
    check_model(model, "gauge_directions")
    logit_shift = check_bool("gauge_directions", "logit_shift", logit_shift)
    if output_layer is not None:
        linear_named(model, output_layer, "output_layer", "gauge_directions")
    found = _discovered(model, logit_shift and output_layer is None)
    return _tangents(model, found, output_layer, logit_shift)


def _fisher_eigen_directions(
    model: nn.Module,
    inputs: Any,
    layers: Sequence[str],
    n_small: int,
    targets: torch.Tensor | None,
    loss_fn: Callable | None,
    batch_size: int | None,
) -> list[tuple[str, str, dict[str, torch.Tensor]]]:
    """Parameter directions Γᵀv of the smallest active eigenvectors v of each layer's K."""
    opts = CollectOptions(
        targets=targets,
        loss_fn=loss_fn,
        batch_size=batch_size,
        gauges=True,
        fn="classify_directions",
    )
    collected = collect(model, inputs, list(layers), opts)
    out = []
    params = dict(model.named_parameters())
    for st in collected.states:
        cap = st.capture
        if cap is None or cap.kind not in ("linear", "conv1d") or st.view is not None:
            continue
        acts, grads = cap.concatenated()
        acts, grads = acts.double(), grads.double()
        if grads.shape[-1] >= 2:  # exclude an exact shift gauge, as read() does
            s = grads.sum(-1).abs().max() / grads.abs().max().clamp_min(1e-300)
            if float(s) < 1e-6:
                grads = grads - grads.mean(-1, keepdim=True)
        has_bias = getattr(cap.module, "bias", None) is not None
        k = fisher_gram(acts, grads, bias=has_bias)
        spec = spectrum(k, vectors=True)
        if spec.active == 0:
            continue
        vec = torch.as_tensor(spec.eigenvectors)
        lo = max(spec.active - n_small, 0)
        a3 = acts if acts.ndim == 3 else acts[:, None, :]
        g3 = grads if grads.ndim == 3 else grads[:, None, :]
        for j in range(spec.active - 1, lo - 1, -1):
            v = vec[:, j]
            w = torch.einsum("n,nte,ntd->ed", v, g3, a3)  # d_out × d_in
            prefix = f"{st.name}." if st.name else ""
            wname = f"{prefix}weight"
            d: dict[str, torch.Tensor] = {}
            pw = params[wname]
            d[wname] = (w.T if cap.kind == "conv1d" else w).to(pw.dtype)
            if has_bias:
                d[f"{prefix}bias"] = torch.einsum("n,nte->e", v, g3).to(pw.dtype)
            out.append((f"eigen-fisher:{st.name}[{spec.active - 1 - j}]", st.name, d))
        cap.release()
    return out


def classify_directions(
    model: nn.Module,
    inputs: torch.Tensor | Sequence[torch.Tensor],
    *,
    targets: torch.Tensor | None = None,
    loss_fn: Callable | None = None,
    layers: Sequence[str] | None = None,
    n_small: int = 1,
    gauges: bool = True,
    candidates: Mapping[str, Any] | None = None,
    output_layer: str | None = None,
    t: Sequence[float] | np.ndarray | None = None,
    labels: str = "expected",
    task: str | None = None,
    slope_tol: float = 0.5,
    gauge_rtol: float = 1e-8,
    n_probes: int = 2,
    seed: int | None = 0,
    batch_size: int | None = None,
    progress: bool | None = False,
) -> list[DirectionClass]:
    """Classify candidate directions: genuine singularity (k̂, λ_dir), flat gauge or regular.

    Candidates come from three places:

    1. **Gauge detectors** (``gauges=True``): :func:`gauge_directions`. A gauge is tested at the
       checkpoint itself (the path is constant): ``"flat-gauge"`` when ``F_u`` is below
       ``gauge_rtol`` times the random-direction reference, else ``"regular"`` (a detector
       that does not apply, e.g. the logit shift under a squared loss).
    2. **Small eigen-directions** of each layer's Fisher-Gram (``n_small`` per layer, for the
       ``nn.Linear``/``Conv1D`` layers in ``layers``, default all ``nn.Linear``; needs
       ``targets``): ``u = Γᵀv/‖Γᵀv‖`` for the smallest active eigenvectors v of K. Path:
       the component of the layer's parameters along u is scaled by t (``θ(t) = θ −
       (1 − t)⟨θ, u⟩u``), the approach of theory.md §3; the slope of ``log F_u`` gives k̂.
    3. ``candidates``: ``{name: direction}`` in :func:`direction_order`'s format, measured
       along its default path ``θ + t·u``.

    Parameters
    ----------
    model, inputs, targets, loss_fn, t, labels, task, slope_tol, gauge_rtol, n_probes, seed,
    batch_size, progress
        As in :func:`direction_order` (``t`` for the eigen and user candidates).
    layers : sequence of str, optional
        Layers whose Fisher eigen-directions are candidates; default every ``nn.Linear``.
    n_small : int
        Eigen-directions per layer (0 disables them).
    gauges : bool
        Include the gauge detectors' candidates.
    candidates : dict, optional
        Extra user directions.
    output_layer : str, optional
        The logit layer for the logit-shift detector (default the last ``nn.Linear``); the
        detector is used only for classification (integer targets or ``task``).

    Returns
    -------
    list of DirectionClass
    """
    fn = "classify_directions"
    check_order_options(fn, model, labels, "ols", n_probes, slope_tol, gauge_rtol, 0.0, None)
    seed = check_seed(fn, seed)
    gauges = check_bool(fn, "gauges", gauges)
    model = unwrap_compiled(model)
    if isinstance(layers, str):
        layers = [layers]
    if layers is not None and not hasattr(layers, "__iter__"):
        raise TypeError(
            f"deadspec.{fn}: layers must be a sequence of module names (str) or None, got "
            f"{type(layers).__name__}"
        )
    if isinstance(n_small, bool) or not isinstance(n_small, (int, np.integer)) or n_small < 0:
        raise ValueError(f"deadspec.{fn}: n_small must be a non-negative int, got {n_small!r}")
    # the t grid every candidate's direction_order will use, checked before anything is read
    # (n_probes is bounded by check_order_options above)
    t_grid(t, fn)
    if candidates is not None and not isinstance(candidates, Mapping):
        raise TypeError(
            f"deadspec.{fn}: candidates must be a dict name -> direction, got "
            f"{type(candidates).__name__}"
        )
    _, n = as_input_tuple(inputs, fn)
    if targets is not None:
        check_targets(targets, n, fn)
    task = infer_task(targets, loss_fn, task, fn)
    common = {
        "targets": targets,
        "loss_fn": loss_fn,
        "labels": labels,
        "task": task,
        "slope_tol": slope_tol,
        "gauge_rtol": gauge_rtol,
        "n_probes": n_probes,
        "seed": seed,
        "batch_size": batch_size,
    }
    params = dict(model.named_parameters())
    todo: list[tuple[str, str, str | None, dict, Callable | None, Any]] = []
    if gauges:
        shift = task == "classification"
        if output_layer is not None:
            linear_named(model, output_layer, "output_layer", fn)
        found = _discovered(model, shift and output_layer is None, inputs)
        for name, d in _tangents(model, found, output_layer, shift).items():
            where = name.split(":", 1)[1]
            todo.append((name, "gauge", where, d, lambda tv: {}, np.array([1e-2, 1e-1])))
    if n_small:
        if layers is None:
            layers = [nm for nm, m in model.named_modules() if isinstance(m, nn.Linear)]
        if targets is None:
            raise ValueError(
                f"deadspec.{fn}: Fisher eigen-directions need targets (or pass n_small=0)"
            )
        for name, layer, d in _fisher_eigen_directions(
            model, inputs, layers, int(n_small), targets, loss_fn, batch_size
        ):
            norm = math.sqrt(sum(float(v.double().pow(2).sum()) for v in d.values()))
            if norm == 0.0:
                continue
            unit = {k: v / norm for k, v in d.items()}
            theta0 = {k: params[k].detach() for k in unit}
            coef = sum(float((theta0[k].double() * unit[k].double()).sum()) for k in unit)

            def path(tv: float, unit=unit, theta0=theta0, coef=coef) -> dict:
                return {k: theta0[k] - (1.0 - tv) * coef * unit[k] for k in unit}

            todo.append((name, "eigen-fisher", layer, unit, path, t))
    for name, d in (candidates or {}).items():
        todo.append((str(name), "user", None, d, None, t))
    results = []
    for name, source, layer, d, path, grid in progress_bar(
        todo, progress, f"deadspec.{fn}", total=len(todo)
    ):
        order = direction_order(model, inputs, d, path=path, t=grid, **common)
        unit = unit_direction(model, d, fn)  # a user's flat vector or dict, as direction_order
        nz = {k: v for k, v in unit.items() if bool(v.ne(0).any())}
        results.append(DirectionClass(name, source, layer, order, nz))
    return results
