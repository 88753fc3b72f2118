"""Dead-Direction Conditioners: optimizers whose state lives on gauge-invariant coordinates.

:class:`DDCAdam` is AdamW whose moments are kept in gauge-fixed, invariant coordinates, so the
update is exactly equivariant under the network's gauges (:mod:`deadspec.gauges`):
``step(g·θ) = g·step(θ)``. The design and its conventions are written up in ``docs/ddc.md``;
in short, for per-unit rescaling sites (ReLU/SwiGLU :class:`~deadspec.gauges.Pair` s,
LayerNorm/RMSNorm :class:`~deadspec.gauges.NormScale`), computed progressively along the
network,

- ``ρ_s`` = row norms of the producer block ``Ŵ = [W · diag(ρ_in) | b]`` (``(γ_i, β_i)`` for a
  norm), ``ρ_in`` the scales of the site feeding the producer's columns (1 if none);
- the invariant coordinates of a parameter are ``x̃ = x ⊙ σ⁻¹`` with the per-element scale
  ``σ = ρ_row / ρ_col`` (``ρ_row`` of the site whose rows it holds, ``ρ_col`` of the site whose
  units index its columns, 1 where none); the invariant gradient is ``g̃ = g ⊙ σ``;
- bias-corrected Adam runs on ``g̃`` and the update is mapped back, ``Δx = −η·u ⊙ σ``.

A parameter in no gauge has ``σ = 1``: AdamW's formula (with no gauge at all in the model, torch's
multi-tensor AdamW step itself, bit for bit; otherwise the fused pass, equal to it up to
round-off). The logit shift of a cross-entropy head needs no coordinate change (its gradient is
already invariant); only its decoupled weight decay skips the gauge component (the row mean).
On attention, the blocks a :class:`~deadspec.gauges.HeadRotation` rotates share their second
moment within each head, which makes Adam rotation-equivariant there (``rotations=True``).

:class:`DDCMuon` runs Muon (momentum, Newton–Schulz orthogonalisation, Keller's shape scale) on
the invariant coordinates of the hidden matrices and the same DDC AdamW on the rest; Muon's
orthogonaliser commutes with orthogonal maps, so DDCMuon is also exactly equivariant under the
attention :class:`~deadspec.gauges.HeadRotation` s (``docs/ddc.md`` §5).

Contract
--------
- Any device and floating dtype (the moments have the parameter's dtype, as in torch's AdamW).
  The scales are computed in each producer's dtype; ``step`` is ``torch.no_grad``.
- ``state_dict()`` holds the per-parameter moments (shapes of the parameters, as torch's
  AdamW) plus a ``"ddc"`` entry (site names, ``gauge_mode`` and the per-site scalar moments of
  ``gauge_mode="damped"``); ``load_state_dict`` refuses a state built for other sites.
- Each parameter's update is a pure function of (parameter, gradient, its moments, its scale
  ``σ``, group hyper-parameters) — :func:`_ddc_adam_update` — and each site's scale a pure
  function of its producer block and its input scale — :func:`_site_rho`. On CPU the C++ core
  runs both (``ddc_adam_update_many``: every block of a step in one call; ``ddc_row_norms``);
  the torch code here is the reference and the path for other devices and dtypes.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.optim.adamw import adamw as _torch_adamw

from deadspec import _core
from deadspec import gauges as _g
from deadspec.gauges._modules import as_tuple, norm_params, scale_cols_, scale_rows_
from deadspec.gauges._tracing import fallback_logit, trace_info

__all__ = ["DDCAdam", "DDCMuon"]

_GAUGE_MODES = ("zero", "damped", "balance")
_NONFINITE = ("raise", "skip")
_FORMS = ("coordinate", "split")
_SPLIT_FUSED = True  # the split form's passes in the C++ core on CPU (tests switch it off)


# --------------------------------------------------------------------------------------------
# Kernels (pure functions of one block; the C++ port replaces these)
# --------------------------------------------------------------------------------------------


def _site_rho(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    col_scale: torch.Tensor | None,
    units: torch.Tensor | None,
    factors: tuple[float, float] = (1.0, 1.0),
) -> torch.Tensor:
    """Effective gauge scale of a site: row norms of ``[f_w·W·diag(col_scale) | f_b·b]``.

    ``weight`` is the producer's ``h×d`` weight (``(h,)`` γ for a norm, with ``bias`` = β);
    ``factors`` = (f_w, f_b) are the weight-decay factors about to be applied to them (the
    scales of the decayed block, read before it is written).
    Exactly-zero rows (and rows whose norm is below the dtype's ``tiny``) get scale 1, units
    outside ``units`` get scale 1: they are not scaled (the "dead unit" convention).
    """
    if weight.ndim == 1:
        col_scale = None  # a norm's γ: one entry per unit, no columns to scale
    if weight.ndim in (1, 2) and _cpu_float(weight, col_scale, bias):
        # One pass in the C++ core (float64 accumulation), no temporaries; γ as an h×1 block.
        rho = torch.from_numpy(
            _core.ddc_row_norms(
                weight.detach().reshape(weight.shape[0], -1).__dlpack__(),
                None if col_scale is None else col_scale.detach().__dlpack__(),
                None if bias is None else bias.detach().__dlpack__(),
                weight_factor=float(factors[0]),
                bias_factor=float(factors[1]),
            )
        ).to(weight.dtype)
    else:
        if weight.ndim == 2:
            w = weight if col_scale is None else weight * col_scale.to(weight.dtype).reshape(1, -1)
            sq = w.square().sum(1)
        else:
            sq = weight.square()
        if factors[0] != 1.0:
            sq = sq * factors[0] ** 2
        if bias is not None:
            sq = sq + bias.square() * factors[1] ** 2
        rho = sq.sqrt()
    tiny = torch.finfo(rho.dtype).tiny
    rho = torch.where(rho > tiny, rho, torch.ones_like(rho))
    if units is not None:
        full = torch.ones_like(rho)
        idx = units.to(rho.device)
        full[idx] = rho[idx]
        rho = full
    return rho


def _cpu_float(*ts: torch.Tensor | None) -> bool:
    """All given tensors (None skipped) are dense CPU float32/float64 tensors."""
    return all(
        t is None
        or (t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64) and not t.is_sparse)
        for t in ts
    )


def _gauge_dots(x: torch.Tensor, g: torch.Tensor, axis: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ x·g, Σ |x·g|) of a 2-D block along ``axis``, in x's dtype (one pass in the core)."""
    if _cpu_float(x, g):
        s, a = _core.ddc_gauge_dots(x.detach().__dlpack__(), g.detach().__dlpack__(), axis)
        return torch.from_numpy(s).to(x.dtype), torch.from_numpy(a).to(x.dtype)
    t = g * x
    return t.sum(axis), t.abs().sum(axis)


def _fused_ok(param: torch.Tensor, *others: torch.Tensor) -> bool:
    """Whether the C++ fused step can take this block (CPU, float32/64, 1-D/2-D, dense)."""
    return (
        param.device.type == "cpu"
        and param.numel() > 0
        and param.dtype in (torch.float32, torch.float64)
        and param.ndim in (1, 2)
        and param.is_contiguous()
        and all(
            t.device.type == "cpu" and t.dtype == param.dtype and t.shape == param.shape
            and not t.is_sparse
            for t in others
        )
        and others[1].is_contiguous()
        and others[2].is_contiguous()
    )


def _decay_and_sigma(
    param: torch.Tensor,
    scale: torch.Tensor | None,
    col_scale: torch.Tensor | None,
    decay: float,
) -> torch.Tensor | None:
    """The torch paths' prologue: ``param ← decay·param``; returns σ = scale·col_scale in the
    parameter's dtype (broadcastable to it), or None for σ = 1."""
    if decay != 1.0:
        param.mul_(decay)
    if scale is not None:
        scale = scale.to(param.dtype)
    if col_scale is not None:
        col = col_scale.to(param.dtype).reshape(1, -1)
        scale = col if scale is None else scale * col
    return scale


def _init_adam_state(state: dict[str, Any], p: torch.Tensor) -> None:
    """A fresh Adam state for ``p``, as torch's AdamW makes it (float32 step count, zero
    moments of p's shape and dtype)."""
    state["step"] = torch.tensor(0.0, dtype=torch.float32)
    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)


def _adam_apply(
    param: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    step_t: torch.Tensor,
    scale: torch.Tensor | None,
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
) -> None:
    """The torch paths' bias-corrected apply: ``param −= lr/bc1 · m/(√(v/bc2) + eps) · σ``
    (torch AdamW's single-tensor operations when σ is None)."""
    step = step_t.item()
    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    step_size = lr / bias_correction1
    denom = (exp_avg_sq.sqrt() / bias_correction2**0.5).add_(eps)
    if scale is None:
        param.addcdiv_(exp_avg, denom, value=-step_size)
    else:
        param.add_(exp_avg.div(denom).mul_(scale), alpha=-step_size)


def _ddc_adam_update(
    param: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    step_t: torch.Tensor,
    scale: torch.Tensor | None,
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    col_scale: torch.Tensor | None = None,
    decay: float = 1.0,
) -> None:
    """One bias-corrected Adam step in the invariant coordinates ``x̃ = x/σ``.

    ``σ = scale · col_scale`` (``scale`` broadcastable to the block, e.g. a ``(h, 1)`` row
    vector; ``col_scale`` one entry per column; None = 1). ``param ← decay·param`` first
    (decoupled weight decay, ``decay = 1 − lr·wd``), then ``g̃ = grad·σ``, moments on ``g̃``,
    ``param ← param − lr/bc1 · m/(√(v/bc2) + eps) · σ``. With σ = 1 this is
    ``torch.optim.AdamW``'s single-tensor step, bitwise. Gauged CPU blocks (1-D/2-D,
    float32/float64) run as one fused pass in the C++ core (arithmetic in the parameter's
    dtype, as here); anything else takes the torch path below, which computes the same step.
    """
    step_t += 1
    gauged = scale is not None or col_scale is not None
    if gauged and _fused_ok(param, grad, exp_avg, exp_avg_sq) and (
        col_scale is None or param.ndim == 2
    ):
        _core.ddc_adam_update(
            param.detach().__dlpack__(),
            grad.detach().__dlpack__(),
            exp_avg.__dlpack__(),
            exp_avg_sq.__dlpack__(),
            None if scale is None else scale.to(param.dtype).expand_as(param).__dlpack__(),
            lr=float(lr),
            beta1=float(beta1),
            beta2=float(beta2),
            eps=float(eps),
            step=int(step_t.item()),
            col_scale=None if col_scale is None else col_scale.to(param.dtype).__dlpack__(),
            decay=float(decay),
        )
        return
    scale = _decay_and_sigma(param, scale, col_scale, decay)
    g = grad if scale is None else grad * scale
    exp_avg.lerp_(g, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    _adam_apply(param, exp_avg, exp_avg_sq, step_t, scale, lr=lr, beta1=beta1, beta2=beta2, eps=eps)


def _mean_within_segments(
    sq: torch.Tensor, axis: int, segments: list[tuple[int, int]]
) -> torch.Tensor:
    """``sq`` (a fresh tensor, written in place) with each ``[start, stop)`` segment along
    ``axis`` replaced by its mean there: a rotated head's shared second-moment input."""
    for a, b in segments:
        blk = sq.narrow(axis, a, b - a)
        blk.copy_(blk.mean(axis, keepdim=True).expand_as(blk))
    return sq


def _ddc_adam_block_update(
    param: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    step_t: torch.Tensor,
    scale: torch.Tensor | None,
    axis: int,
    segments: list[tuple[int, int]],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    col_scale: torch.Tensor | None = None,
    decay: float = 1.0,
) -> None:
    """:func:`_ddc_adam_update` with the second moment shared along a rotated axis.

    Within each ``[start, stop)`` of ``segments`` along ``axis`` (a head block that a
    HeadRotation rotates), ``g̃²`` is replaced by its mean along ``axis`` before it enters
    ``exp_avg_sq``: the denominator is then invariant under the rotation and the update
    ``m/(√v + eps)`` rotates with the gradient. Elsewhere it is Adam, coordinate by coordinate.
    (The torch path of rotated blocks: DDCAdam's off-CPU/other-dtype blocks, DDCMuon's biases
    of rotated heads; the C++ core's ``ddc_adam_update_many`` does the same on CPU.)
    """
    step_t += 1
    scale = _decay_and_sigma(param, scale, col_scale, decay)
    g = grad if scale is None else grad * scale
    exp_avg.lerp_(g, 1 - beta1)
    g2 = _mean_within_segments(g * g, axis, segments)
    exp_avg_sq.mul_(beta2).add_(g2, alpha=1 - beta2)
    _adam_apply(param, exp_avg, exp_avg_sq, step_t, scale, lr=lr, beta1=beta1, beta2=beta2, eps=eps)


# The split form (DDCAdam form="split"): the torch reference of the C++ core's three passes
# (ddc_split_sums, ddc_split_moments, ddc_split_apply); see those for the contract. ``row`` and
# ``col`` are σ's row and column factors (None = 1), ``mean`` the column means of x̃ a
# logit-shift consumer is centred by.


def _split_sigma(
    p: torch.Tensor, row: torch.Tensor | None, col: torch.Tensor | None
) -> torch.Tensor | None:
    s = None if row is None else row.to(p.dtype).reshape((-1,) + (1,) * (p.ndim - 1))
    if col is not None:
        c = col.to(p.dtype).reshape(1, -1)
        s = c if s is None else s * c
    return s


def _split_centred(xt: torch.Tensor, mean: torch.Tensor | None) -> torch.Tensor:
    return xt if mean is None else xt - mean.to(xt.dtype).reshape(1, -1)


def _split_sums(
    p: torch.Tensor,
    row: torch.Tensor | None,
    col: torch.Tensor | None,
    mean: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Pass 0: (Σ g̃x̃, Σ x̃²) per row and (Σ g̃·Px̃, Σ (Px̃)²) per column (None for 1-D)."""
    s = _split_sigma(p, row, col)
    xt = p if s is None else p / s
    gt = p.grad if s is None else p.grad * s
    if p.ndim == 1:
        return gt * xt, xt * xt, None, None
    pc = _split_centred(xt, mean)
    return (gt * xt).sum(1), (xt * xt).sum(1), (gt * pc).sum(0), (pc * pc).sum(0)


def _split_project(
    v: torch.Tensor,
    xt: torch.Tensor,
    mean: torch.Tensor | None,
    row_coef: torch.Tensor | None,
    col_coef: torch.Tensor | None,
    col_norm: torch.Tensor | None,
) -> torch.Tensor:
    """``v`` minus its radial part: ``a_i·x̃`` along rows, or ``(v − b_j·Px̃)·n_j`` along
    columns."""
    if row_coef is not None:
        return v - row_coef.to(v.dtype).reshape((-1,) + (1,) * (v.ndim - 1)) * xt
    if col_coef is not None:
        assert col_norm is not None
        pc = _split_centred(xt, mean)
        return (v - col_coef.to(v.dtype).reshape(1, -1) * pc) * col_norm.to(v.dtype).reshape(1, -1)
    return v


def _split_update(state: dict[str, Any], group: dict[str, Any]) -> torch.Tensor:
    """``lr/(1−β₁ᵗ) · m/(√v/√(1−β₂ᵗ) + ε)`` as the core computes it (0 where the denominator
    is 0: ε = 0 on a coordinate whose moments are both 0, as a block with no tangent space)."""
    beta1, beta2 = group["betas"]
    step = state["step"].item()
    inv_bc2_sqrt = 1.0 / math.sqrt(1 - beta2**step)
    step_size = group["lr"] / (1 - beta1**step)
    m, v = state["exp_avg"], state["exp_avg_sq"]
    denom = v.sqrt() * inv_bc2_sqrt + group["eps"]
    # (a coordinate with m = v = 0 and eps = 0, e.g. in a block with no tangent, stays put)
    return torch.where(denom > 0, m / denom, torch.zeros_like(m)) * step_size


def _split_moments(
    p: torch.Tensor,
    state: dict[str, Any],
    group: dict[str, Any],
    blk: dict[str, Any],
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Pass 1: moments on the tangential input; returns (Σ u·x̃ per row, Σ u·Px̃ per column)."""
    s = _split_sigma(p, blk.get("row_scale"), blk.get("col_scale"))
    xt = p if s is None else p / s
    gt = p.grad if s is None else p.grad * s
    mean = blk.get("col_mean")
    t = _split_project(gt, xt, mean, blk.get("row_coef"), blk.get("col_coef"), blk.get("col_norm"))
    beta1, beta2 = group["betas"]
    state["exp_avg"].lerp_(t, 1 - beta1)
    t2 = t * t
    if blk.get("rot_axis") is not None:
        t2 = _mean_within_segments(t2, blk["rot_axis"], blk["rot_segments"])
    state["exp_avg_sq"].mul_(beta2).add_(t2, alpha=1 - beta2)
    u = _split_update(state, group)
    if p.ndim == 1:
        return u * xt, None
    return (u * xt).sum(1), (u * _split_centred(xt, mean)).sum(0)


def _split_apply(
    p: torch.Tensor, state: dict[str, Any], group: dict[str, Any], blk: dict[str, Any]
) -> None:
    """Pass 2: ``x ← x·r_i·c_j − σ·(re-projected u)`` (a centred block: only ``Px`` scaled)."""
    s = _split_sigma(p, blk.get("row_scale"), blk.get("col_scale"))
    xt = p if s is None else p / s
    mean = blk.get("col_mean")
    coefs = (blk.get("row_coef"), blk.get("col_coef"), blk.get("col_norm"))
    u = _split_project(_split_update(state, group), xt, mean, *coefs)
    row_mult, col_mult = blk.get("row_mult"), blk.get("col_mult")
    if row_mult is not None:
        p.mul_(row_mult.to(p.dtype).reshape((-1,) + (1,) * (p.ndim - 1)))
    if col_mult is not None:
        c = col_mult.to(p.dtype).reshape(1, -1)
        if mean is None:
            p.mul_(c)
        else:
            pc = _split_centred(xt, mean)
            p.add_((c - 1) * (pc if s is None else s * pc))
    p.sub_(u if s is None else u * s)


def _newton_schulz(
    x: torch.Tensor,
    coefficients: tuple[float, float, float],
    steps: int,
    eps: float,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Muon's quintic Newton–Schulz iteration ``X ← aX + b(XXᵀ)X + c(XXᵀ)²X`` in ``dtype``.

    ``x`` is one matrix ``(m, n)`` or a batch ``(B, m, n)``. A tall matrix is transposed first;
    ``X`` starts at ``x/max(‖x‖_F, eps)`` (per matrix). The result has ``x``'s shape and
    ``dtype``. For one matrix the operations are those of ``torch.optim.Muon`` (bitwise with
    ``dtype=torch.bfloat16``). Every step is ``p(XXᵀ)X``, so ``NS(R x Q) = R·NS(x)·Q`` for
    orthogonal ``R, Q`` after any number of steps (not only at convergence); a diagonal
    rescaling does not commute with it.
    """
    a, b, c = coefficients
    y = x.to(dtype=dtype, copy=True)
    tall = y.size(-2) > y.size(-1)
    if y.ndim == 2:
        if tall:
            y = y.T
        y.div_(y.norm().clamp(min=eps))
        for _ in range(steps):
            gram = y @ y.T
            upd = torch.addmm(gram, gram, gram, beta=b, alpha=c)
            y = torch.addmm(y, upd, y, beta=a)
        return y.T if tall else y
    if tall:
        y = y.mT
    y = y / y.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)
    for _ in range(steps):
        gram = y @ y.mT
        upd = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)
        y = torch.baddbmm(y, upd, y, beta=a)
    return y.mT if tall else y


def _ddc_muon_update(
    param: torch.Tensor,
    grad: torch.Tensor,
    momentum_buffer: torch.Tensor,
    scale: torch.Tensor | None,
    blocks: tuple[int, list[tuple[int, int]]] | None,
    *,
    lr: float,
    momentum: float,
    nesterov: bool,
    ns_coefficients: tuple[float, float, float],
    ns_steps: int,
    ns_eps: float,
    ns_dtype: torch.dtype,
) -> None:
    """One Muon step in the invariant coordinates ``x̃ = x/σ`` of a 2-D parameter.

    ``g̃ = grad·σ``; ``B ← lerp(B, g̃, 1 − μ)``; ``U = lerp(g̃, B, μ)`` (Nesterov) or ``B``;
    ``O = NS(U)`` per block; ``param ← param − lr·s·O·σ``. ``blocks`` None: the whole matrix
    is one block with Keller's shape scale ``s = max(1, rows/cols)^½``; otherwise
    ``(axis, ranges)``, a partition of ``axis`` into row (axis 0) or column (axis 1) blocks,
    each orthogonalised on its own with ``s = (max(r_b, c_b)/cols)^½`` — the scale that gives
    each block the RMS ``1/√cols`` Keller's scale gives the whole matrix. ``scale`` None (σ = 1)
    reproduces ``torch.optim.Muon``'s single-tensor step bitwise when ``ns_dtype`` is bfloat16
    (decoupled decay is applied beforehand, as there).
    """
    g = grad if scale is None else grad * scale
    momentum_buffer.lerp_(g, 1 - momentum)
    upd = g.lerp(momentum_buffer, momentum) if nesterov else momentum_buffer
    rows, cols = param.shape
    if blocks is None:
        out = _newton_schulz(upd, ns_coefficients, ns_steps, ns_eps, ns_dtype)
        adjusted = lr * math.sqrt(max(1, rows / cols))
    else:
        axis, ranges = blocks
        out = torch.empty(param.shape, dtype=ns_dtype, device=param.device)
        by_len: dict[int, list[int]] = {}
        for a, b in ranges:
            by_len.setdefault(b - a, []).append(a)
        for n, starts in by_len.items():
            blk = torch.stack([upd.narrow(axis, a, n) for a in starts])
            o = _newton_schulz(blk, ns_coefficients, ns_steps, ns_eps, ns_dtype)
            r_b, c_b = (n, cols) if axis == 0 else (rows, n)
            o.mul_(math.sqrt(max(r_b, c_b) / cols))
            for a, ob in zip(starts, o):
                out.narrow(axis, a, n).copy_(ob)
        adjusted = lr
    if scale is None:
        param.add_(out, alpha=-adjusted)
    else:
        param.add_(out.to(param.dtype).mul_(scale), alpha=-adjusted)


# --------------------------------------------------------------------------------------------
# Plan: the sites and the role of each parameter
# --------------------------------------------------------------------------------------------


@dataclass
class _Site:
    name: str
    kind: str  # "pair" | "norm"
    weight: torch.Tensor  # producer rows: Linear weight (h×d) or norm γ (h,)
    bias: torch.Tensor | None  # Linear bias or norm β
    consumers: list[torch.Tensor]  # weights whose columns index the units
    units: torch.Tensor | None
    size: int  # number of units in the gauge
    in_site: int | None = None
    state: dict[str, Any] = field(default_factory=dict)


class _Plan:
    def __init__(self) -> None:
        self.sites: list[_Site] = []
        self.row: dict[int, int] = {}
        self.col: dict[int, int] = {}
        self.shift: set[int] = set()
        self.order: list[int] = []
        self.gauges: list[_g.Gauge] = []
        self.rot: dict[int, _Rot] = {}  # id(param) -> rotated head blocks (DDCMuon)
        self.chain_layers: dict[str, nn.Module] = {}  # the Chains' layers, by name

    def add_site(self, site: _Site, fn: str) -> None:
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
        for c in site.consumers:
            self.col[id(c)] = idx

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


def _build_plan(
    model: nn.Module, gauges: list[_g.Gauge], explicit: bool, fn: str, heads: bool = False
) -> _Plan:
    """Sites, roles and (``heads=True``) the rotated head blocks of the gauges (``heads=False``:
    discovered HeadRotations are left out, declared ones refused)."""
    plan = _Plan()
    rotations: list[_g.HeadRotation] = []
    pairs: list[_g.Pair] = []
    norms: list[_g.NormScale] = []
    shifts: list[_g.LogitShift] = []
    chains: list[_g.Chain] = []
    for g in gauges:
        if not isinstance(g, _g.Gauge):
            raise TypeError(
                f"deadspec.{fn}: gauges must hold deadspec.gauges.Gauge objects, got "
                f"{type(g).__name__}"
            )
        if isinstance(g, _g.HeadRotation) and heads:
            b = g.bind(model)
            rotations.append(b)
            plan.gauges.append(b)
            continue
        if isinstance(g, _g.HeadRotation):
            if explicit:
                raise ValueError(
                    f"deadspec.{fn}: given {g.describe()} with rotations=False; drop it from "
                    f"gauges= or construct with rotations=True"
                )
            continue
        if explicit and g.source == "declared":
            g.validate(model)  # discovered gauges were checked by discovery
        b = g.bind(model)
        if isinstance(b, _g.Pair):
            pairs.append(b)
        elif isinstance(b, _g.NormScale):
            norms.append(b)
        elif isinstance(b, _g.LogitShift):
            shifts.append(b)
        elif isinstance(b, _g.Chain):
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
        cons = [model.get_submodule(c).weight for c in as_tuple(p.consumer)]
        units = None if p.units is None else torch.as_tensor(p.units, dtype=torch.int64)
        plan.add_site(
            _Site(
                f"pair:{p.producer}",
                "pair",
                prod.weight,
                prod.bias,
                cons,
                units,
                prod.out_features if units is None else int(units.numel()),
            ),
            fn,
        )
    for n in norms:
        w, bb = norm_params(model.get_submodule(n.norm))
        cons = [model.get_submodule(c).weight for c in as_tuple(n.consumer)]
        plan.add_site(_Site(f"norm:{n.norm}", "norm", w, bb, cons, None, int(w.shape[0])), fn)
    plan.finish(fn)
    names = {id(p): n for n, p in model.named_parameters()}
    for r in rotations:
        _add_rotation(plan, model, r, names, fn)
    return plan


@dataclass
class _Rot:
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


def _add_rotation(
    plan: _Plan, model: nn.Module, r: _g.HeadRotation, names: dict[int, str], fn: str
) -> None:
    mod = model.get_submodule(r.attention)
    h, dh = int(r.num_heads), int(r.dim)
    heads = [(i * dh, (i + 1) * dh) for i in range(h)]
    parts = ("q", "k", "v") if r.part == "both" else (("q", "k") if r.part == "qk" else ("v",))
    entries: list[tuple[torch.Tensor, int, list[tuple[int, int]]]] = []
    if isinstance(mod, nn.MultiheadAttention):
        e = mod.embed_dim
        for key in parts:
            off = "qkv".index(key) * e
            segs = [(a + off, b + off) for a, b in heads]
            entries.append((mod.in_proj_weight, 0, segs))
            if mod.in_proj_bias is not None:
                entries.append((mod.in_proj_bias, 0, segs))
        if "v" in parts:
            entries.append((mod.out_proj.weight, 1, heads))
    else:
        for key in parts:
            lin = getattr(mod, key)
            entries.append((lin.weight, 0, heads))
            if lin.bias is not None:
                entries.append((lin.bias, 0, heads))
        if "v" in parts:
            entries.append((mod.o.weight, 1, heads))
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
        if axis == 1 and id(p) in plan.col:
            raise ValueError(
                f"deadspec.{fn}: the columns that {r.describe()} rotates must not also be "
                f"rescaled by a Pair or NormScale, got {name!r} as a consumer of "
                f"{plan.sites[plan.col[id(p)]].name!r}"
            )
        rot = plan.rot.get(id(p))
        if rot is None:
            rot = plan.rot[id(p)] = _Rot(name, axis, int(p.shape[axis]), [])
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


# --------------------------------------------------------------------------------------------
# The optimizer
# --------------------------------------------------------------------------------------------


class _DDCBase(torch.optim.Optimizer):
    """Shared machinery of the DDC optimizers: sites, scales, residuals, policies, state.

    Subclasses set ``_fn`` (the name in messages), ``_plan``, ``_names``, ``_residuals``,
    ``gauge_mode``, ``balance_rate`` and ``nonfinite`` before ``torch.optim.Optimizer.__init__``,
    and implement ``step`` and :meth:`_damped_hparams`.
    """

    _fn = "DDC"
    _plan: _Plan
    _names: dict[int, str]
    _residuals: dict[str, tuple[torch.Tensor, torch.Tensor]]
    gauge_mode: str
    balance_rate: float
    nonfinite: str

    # -- introspection -----------------------------------------------------------------------
    @property
    def gauges(self) -> list[_g.Gauge]:
        """The (bound) gauges the optimizer conditions on."""
        return list(self._plan.gauges)

    @property
    def sites(self) -> list[str]:
        """Names of the rescaling sites (``pair:<producer>``, ``norm:<norm>``), in step order."""
        return [self._plan.sites[i].name for i in self._plan.order]

    def gauge_residuals(self, relative: bool = False) -> dict[str, torch.Tensor]:
        """Last gauge-mode gradients ``g_V = ĝ_in − ĝ_out`` per site (one value per unit).

        ``ĝ_in = ⟨g_row, w_row⟩`` over the producer block, ``ĝ_out = ⟨g_col, w_col⟩`` over the
        consumers. Zero up to round-off for an exact gauge. ``relative=True`` divides by the
        sum of the absolute terms (0 where that is 0). They cost a pass over every gauged
        block, so they are computed only with ``track_residuals=True`` (or
        ``gauge_mode="damped"``, which needs them); otherwise this raises RuntimeError.
        """
        if not self._wants_modes():
            raise RuntimeError(
                f"deadspec.{self._fn}.gauge_residuals: the gauge-mode gradients are not "
                f"computed; construct the optimizer with track_residuals=True"
            )
        out = {}
        for name, (gv, scale) in self._residuals.items():
            if relative:
                out[name] = torch.where(
                    scale > 0,
                    gv.abs() / scale.clamp_min(torch.finfo(scale.dtype).tiny),
                    torch.zeros_like(gv),
                )
            else:
                out[name] = gv.clone()
        return out

    def chain_modes(self) -> dict[str, torch.Tensor]:
        """The DCT gauge-mode basis of each :class:`~deadspec.gauges.Chain` (theory.md §6).

        For a chain of ``L`` layers (``W_ℓ ↦ a_ℓW_ℓ``, ``b_ℓ ↦ (a_1⋯a_ℓ)b_ℓ``) the invariants
        are the log-scale gradients ``ĝ_ℓ = ∂L/∂log a_ℓ = ⟨g_{W_ℓ}, W_ℓ⟩ + Σ_{m≥ℓ} ⟨g_{b_m},
        b_m⟩``. Returned per chain (key ``"chain:<first>-><last>"``): their orthonormal DCT-II
        coefficients ``c_k = s_k Σ_ℓ ĝ_ℓ cos(πk(ℓ + ½)/L)``, ``s_0 = √(1/L)``,
        ``s_k = √(2/L)``. ``c_0 = Σĝ/√L`` is the radial coordinate (it changes the function);
        ``c_1 … c_{L−1}`` are the chain's ``L − 1`` gauge modes, zero up to round-off for an
        exact chain. Read from the current parameters and gradients (a chain with a missing
        gradient is left out). A readout: the optimizer conditions on the chain through its
        finer per-unit Pairs (the chain's modes are combinations of their ``g_V``).
        """
        out: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for g in self._plan.gauges:
                if not isinstance(g, _g.Chain):
                    continue
                mods = [self._plan.chain_layers[n] for n in g.layers]
                ts = [t for m in mods for t in (m.weight, m.bias) if t is not None]
                if any(t.grad is None for t in ts):
                    continue
                w_dot = torch.stack([(m.weight.grad * m.weight).sum().double() for m in mods])
                b_dot = torch.stack(
                    [
                        (m.bias.grad * m.bias).sum().double()
                        if m.bias is not None
                        else torch.zeros((), dtype=torch.float64)
                        for m in mods
                    ]
                )
                # Σ_{m ≥ ℓ}: a bias of layer m is scaled by a_1⋯a_m
                ghat = w_dot + b_dot.flip(0).cumsum(0).flip(0)
                n = ghat.numel()
                k = torch.arange(n, dtype=torch.float64).reshape(-1, 1)
                ell = torch.arange(n, dtype=torch.float64).reshape(1, -1)
                basis = torch.cos(math.pi * k * (ell + 0.5) / n) * math.sqrt(2.0 / n)
                basis[0] = math.sqrt(1.0 / n)
                out[f"chain:{g.layers[0]}->{g.layers[-1]}"] = basis @ ghat
        return out

    def gauge_scales(self) -> dict[str, torch.Tensor]:
        """The current effective scales ρ per site (1 for dead or out-of-gauge units)."""
        with torch.no_grad():
            rho = self._site_scales()
        return {self._plan.sites[i].name: rho[i].clone() for i in self._plan.order}

    # -- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        sd["ddc"] = {
            "gauge_mode": self.gauge_mode,
            "form": getattr(self, "form", "coordinate"),
            "sites": [s.name for s in self._plan.sites],
            "site_state": {
                s.name: {
                    k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in s.state.items()
                }
                for s in self._plan.sites
                if s.state
            },
        }
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        ddc = state_dict.pop("ddc", None)
        if ddc is not None:
            mine = [s.name for s in self._plan.sites]
            if list(ddc.get("sites", [])) != mine:
                raise ValueError(
                    f"deadspec.{self._fn}.load_state_dict: the state must be for the same gauge "
                    f"sites, got {list(ddc.get('sites', []))} but this optimizer has {mine}"
                )
            form = getattr(self, "form", "coordinate")
            if ddc.get("form", "coordinate") != form:
                raise ValueError(
                    f"deadspec.{self._fn}.load_state_dict: the state must be for the same "
                    f"form, got {ddc.get('form', 'coordinate')!r} but this optimizer has "
                    f"form={form!r} (its moments are of other inputs)"
                )
        super().load_state_dict(state_dict)
        for s in self._plan.sites:
            s.state = {}
            if ddc is not None and s.name in ddc.get("site_state", {}):
                for k, v in ddc["site_state"][s.name].items():
                    s.state[k] = (
                        v.to(dtype=s.weight.dtype, device=s.weight.device).clone()
                        if isinstance(v, torch.Tensor)
                        else v
                    )

    # -- helpers -----------------------------------------------------------------------------
    def _check_gauge_options(
        self, gauge_mode: str, nonfinite: str, balance_rate: float, loss: str | None
    ) -> None:
        """Validate the constructor options every DDC optimizer shares."""
        fn = self._fn
        if gauge_mode not in _GAUGE_MODES:
            raise ValueError(
                f"deadspec.{fn}: gauge_mode must be one of {_GAUGE_MODES}, got {gauge_mode!r}"
            )
        if nonfinite not in _NONFINITE:
            raise ValueError(
                f"deadspec.{fn}: nonfinite must be 'raise' or 'skip', got {nonfinite!r}"
            )
        if not (0.0 <= balance_rate <= 1.0):
            raise ValueError(
                f"deadspec.{fn}: balance_rate must lie in [0, 1], got {balance_rate!r}"
            )
        if loss not in ("cross_entropy", None):
            raise ValueError(f"deadspec.{fn}: loss must be 'cross_entropy' or None, got {loss!r}")

    def _wants_modes(self) -> bool:
        return self.track_residuals or self.gauge_mode == "damped"

    def _prologue(
        self, closure: Callable[[], Any] | None, decay: bool = True
    ) -> tuple[Any, bool, list[Any]]:
        """The steps every DDC optimizer starts with: the closure, the non-finite policy, the
        gauge-mode gradients (when wanted), then (0) decoupled weight decay in the original
        coordinates (shift-aware on the logit layer) unless ``decay=False`` (the caller folds
        it into its update). Returns (loss, proceed, modes)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        bad = self._first_nonfinite()
        if bad is not None:
            msg = f"deadspec.{self._fn}.step: gradients must be finite, got NaN/Inf in {bad!r}"
            if self.nonfinite == "raise":
                raise RuntimeError(msg)
            warnings.warn(msg + "; step skipped", RuntimeWarning, stacklevel=3)
            return loss, False, []
        modes = self._gauge_modes() if self._wants_modes() else []
        if not decay:
            return loss, True, modes
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            if wd == 0:
                continue
            for p in group["params"]:
                if p.grad is None:
                    continue
                if id(p) in self._plan.shift:
                    p.sub_(p - p.mean(0, keepdim=True), alpha=lr * wd)
                else:
                    p.mul_(1 - lr * wd)
        return loss, True, modes

    def _first_nonfinite(self) -> str | None:
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        dense = [t for t in grads if not t.is_sparse]
        if len(dense) == len(grads) and dense:
            # One pass over all gradients: a norm is finite iff every element is (a finite norm
            # cannot hide a NaN/Inf; an overflowing one falls through to the exact check).
            norms = torch._foreach_norm(dense)
            if bool(torch.isfinite(torch.stack([n.float() for n in norms])).all()):
                return None
        for i, group in enumerate(self.param_groups):
            for j, p in enumerate(group["params"]):
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError(
                        f"deadspec.{self._fn}.step: gradients must be dense, got a "
                        f"sparse gradient for {self._name(p, i, j)!r}"
                    )
                if not bool(torch.isfinite(p.grad).all()):
                    return self._name(p, i, j)
        return None

    def _name(self, p: torch.Tensor, i: int, j: int) -> str:
        return self._names.get(id(p), f"param_groups[{i}]['params'][{j}]")

    def _damped_hparams(self, s: _Site) -> tuple[float, tuple[float, float], float]:
        """(lr, betas, eps) of the scalar Adam on a site's gauge mode (``gauge_mode="damped"``)."""
        raise NotImplementedError  # pragma: no cover - overridden

    def _group_of(self, p: torch.Tensor) -> dict[str, Any]:
        for group in self.param_groups:
            if any(q is p for q in group["params"]):
                return group
        return self.defaults

    def _site_scales(self, pending_decay: bool = False) -> list[torch.Tensor | None]:
        """ρ per site. ``pending_decay``: the parameters are not decayed yet; return the scales
        of the decayed ones (:meth:`_decay_factor` applied inside the norms)."""
        rho: list[torch.Tensor | None] = [None] * len(self._plan.sites)
        for i in self._plan.order:
            s = self._plan.sites[i]
            col = None if s.in_site is None else rho[s.in_site]
            factors = (1.0, 1.0)
            if pending_decay:
                factors = (
                    self._decay_factor(s.weight),
                    1.0 if s.bias is None else self._decay_factor(s.bias),
                )
            rho[i] = _site_rho(s.weight, s.bias, col, s.units, factors)
        return rho

    def _decay_factor(self, p: torch.Tensor) -> float:
        """The factor ``1 − lr·wd`` decoupled weight decay multiplies ``p`` by this step (1 for a
        parameter without a gradient, or in no param group: it is not stepped)."""
        if p.grad is None:
            return 1.0
        for group in self.param_groups:
            if any(q is p for q in group["params"]):
                return 1.0 - group["lr"] * group["weight_decay"]
        return 1.0

    def _param_scale(self, p: torch.Tensor, rho: list[torch.Tensor | None]) -> torch.Tensor | None:
        r = self._plan.row.get(id(p))
        c = self._plan.col.get(id(p))
        if r is None and c is None:
            return None
        scale: torch.Tensor | None = None
        if r is not None:
            row = rho[r].to(p.dtype)
            scale = row.reshape((-1,) + (1,) * (p.ndim - 1))
        if c is not None:
            inv = rho[c].to(p.dtype).reshape(1, -1)
            scale = 1.0 / inv if scale is None else scale / inv
        return scale

    def _gauge_modes(self) -> list[tuple[torch.Tensor, torch.Tensor] | None]:
        """Per site: (g_V, g_U) on the gauge's units, from the current gradients."""
        out: list[tuple[torch.Tensor, torch.Tensor] | None] = []
        self._residuals = {}
        for s in self._plan.sites:
            ts = [s.weight, s.bias, *s.consumers]
            if any(t is not None and t.grad is None for t in ts):
                out.append(None)
                continue
            if s.weight.ndim == 2:
                gin, ain = _gauge_dots(s.weight, s.weight.grad, 1)
            else:
                t_in = s.weight.grad * s.weight
                gin, ain = t_in, t_in.abs()
            if s.bias is not None:
                tb = s.bias.grad * s.bias
                gin, ain = gin + tb, ain + tb.abs()
            gout = torch.zeros_like(gin)
            aout = torch.zeros_like(gin)
            for c in s.consumers:
                gc, ac = _gauge_dots(c, c.grad, 0)
                gout = gout + gc.to(gin.dtype)
                aout = aout + ac.to(gin.dtype)
            if s.units is not None:
                idx = s.units.to(gin.device)
                gin, gout, ain, aout = gin[idx], gout[idx], ain[idx], aout[idx]
            gv, gu = gin - gout, gin + gout
            self._residuals[s.name] = (gv.detach().clone(), (ain + aout).detach().clone())
            out.append((gv, gu))
        return out

    def _scale_site_(self, s: _Site, c: torch.Tensor) -> None:
        idx = s.units
        scale_rows_(s.weight, idx, c)
        if s.bias is not None:
            scale_rows_(s.bias, idx, c)
        for w in s.consumers:
            scale_cols_(w, idx, c)

    def _policy(self, modes: list[tuple[torch.Tensor, torch.Tensor] | None]) -> None:
        """(5) The policy on the pure-gauge scales."""
        if self.gauge_mode == "damped":
            self._damped(modes)
        elif self.gauge_mode == "balance":
            self._balance()

    def _damped(self, modes: list[tuple[torch.Tensor, torch.Tensor] | None]) -> None:
        for s, mode in zip(self._plan.sites, modes):
            if mode is None:
                continue
            gv, gu = mode
            lr, (beta1, beta2), eps = self._damped_hparams(s)
            st = s.state
            if "exp_avg" not in st:
                st["step"] = 0
                st["exp_avg"] = torch.zeros_like(gv)
                st["exp_avg_sq"] = torch.zeros_like(gv)
                st["radial_exp_avg_sq"] = torch.zeros_like(gv)
            st["step"] += 1
            st["exp_avg"].lerp_(gv, 1 - beta1)
            st["exp_avg_sq"].mul_(beta2).addcmul_(gv, gv, value=1 - beta2)
            st["radial_exp_avg_sq"].mul_(beta2).addcmul_(gu, gu, value=1 - beta2)
            bc1 = 1 - beta1 ** st["step"]
            bc2 = 1 - beta2 ** st["step"]
            denom = (st["exp_avg_sq"] / bc2).sqrt() + (st["radial_exp_avg_sq"] / bc2).sqrt()
            delta = -(lr / bc1) * st["exp_avg"] / denom.add_(eps)
            self._scale_site_(s, torch.exp(delta))

    def _balance(self) -> None:
        deltas = []
        for s in self._plan.sites:
            if s.weight.ndim == 2:
                p2 = s.weight.square().sum(1)
            else:
                p2 = s.weight.square()
            if s.bias is not None:
                p2 = p2 + s.bias.square()
            q2 = torch.zeros_like(p2)
            for c in s.consumers:
                q2 = q2 + c.square().sum(0).to(p2.dtype)
            if s.units is not None:
                idx = s.units.to(p2.device)
                p2, q2 = p2[idx], q2[idx]
            ok = (p2 > 0) & (q2 > 0) & torch.isfinite(p2) & torch.isfinite(q2)
            safe_p = torch.where(ok, p2, torch.ones_like(p2))
            safe_q = torch.where(ok, q2, torch.ones_like(q2))
            # log c = rate·½(log q − log p) with q, p the norms (here squared norms: ¼)
            delta = torch.where(
                ok, 0.25 * self.balance_rate * (safe_q.log() - safe_p.log()), torch.zeros_like(p2)
            )
            deltas.append(delta)
        for s, d in zip(self._plan.sites, deltas):
            self._scale_site_(s, torch.exp(d))


class DDCAdam(_DDCBase):
    """AdamW with its state on gauge-invariant coordinates (exactly gauge-equivariant).

    Parameters
    ----------
    model_or_params : nn.Module or iterable of parameters / param-group dicts
        The model (needed for the gauges), or plain parameters (then no gauges: plain AdamW,
        with a warning).
    lr, betas, eps, weight_decay
        As ``torch.optim.AdamW`` (decoupled weight decay, default 0).
    gauges : list of deadspec.gauges.Gauge, optional
        None: :func:`deadspec.gauges.discover` ``(model, loss=loss)``. An explicit list is
        bound to the model and its hand-declared entries (``source="declared"``) validated.
        ``[]``: no gauges (AdamW).
    gauge_mode : {"zero", "damped", "balance"}
        Policy on the pure-gauge scales ρ. ``"zero"``: ρ is kept (exactly equivariant).
        ``"damped"``: ``log ρ`` moves by a scalar Adam step on the gauge-mode gradient
        ``g_V = ĝ_in − ĝ_out`` normalised by the radial scale, ``Δlog ρ = −η·m̂_V/(√v̂_V + √v̂_U +
        eps)`` (equivariant; it acts only where the declared gauge is broken, e.g. by an L2 term
        inside the loss). ``"balance"``: ``log ρ`` moves toward equal producer-row and
        consumer-column norms, closing ``balance_rate`` of the log gap per step (NOT
        equivariant).
    balance_rate : float
        Fraction of the log-norm imbalance closed per step with ``gauge_mode="balance"``.
    loss : {"cross_entropy", None}
        For discovery: whether the output layer's logit shift is a gauge.
    nonfinite : {"raise", "skip"}
        A NaN/Inf gradient: raise RuntimeError naming the parameter, or skip the whole step
        with a warning (parameters and state untouched).
    params : iterable, optional
        With a model: the parameters or param-group dicts to optimise (default
        ``model.parameters()``), e.g. groups with different ``lr``/``weight_decay``.
    track_residuals : bool
        Compute the gauge-mode gradients ``g_V`` each step for :meth:`gauge_residuals` (a
        diagnostic: one more pass over every gauged block; always on with ``"damped"``).
    rotations : bool
        Condition on :class:`~deadspec.gauges.HeadRotation` gauges (per-head rotations of
        q/k/v rows and output-projection columns). Adam is coordinatewise, so it is not
        rotation-equivariant as it stands; on the rotated blocks the second moment is shared
        within each head: ``g̃²`` is replaced by its mean over the head's rows (q/k/v weights and
        biases, per column) or columns (the output projection, per row) before it enters
        ``v``. ``v`` is then invariant under the rotation and ``m/(√v + ε)`` rotates with the
        gradient, so the step is exactly equivariant. False: discovered rotations are left out
        (those blocks get per-coordinate Adam) and a declared one raises ValueError.
    form : {"coordinate", "split"}
        ``"coordinate"``: per-coordinate Adam on the invariant coordinates, radial part
        included (fused in the C++ core on CPU). ``"split"``: theory.md §6's split form — per
        unit, the radial part of each block's invariant gradient is taken out and driven by a
        scalar Adam (``g_U = (ĝ₁ + ĝ₂)/√2``, applied multiplicatively to the producer row and
        the consumer columns), the tangential part gets per-coordinate Adam, re-projected, and
        applied additively as ``w ← e^{Δ}·w − η·‖w‖·u`` (``docs/ddc.md``, "The split form",
        for the stacked generalisation). Both forms are exactly equivariant. On CPU the split
        form runs as three passes of the C++ core over each block (``ddc_split_sums``,
        ``ddc_split_moments``, ``ddc_split_apply``).

    Notes
    -----
    - Parameters without a gradient are skipped (no decay, no moment update), as in AdamW. In a
      gauge block with a missing gradient the other parameters are still updated with their
      scales (ρ is computed from the parameters alone); the site's ``g_V`` is not computed
      (absent from :meth:`gauge_residuals`) and ``"damped"`` leaves its ρ unchanged.
    - A unit whose producer row is exactly zero (ρ = 0) is not scaled (σ uses ρ := 1): its
      coordinates are the raw ones and it gets plain Adam; never NaN. Exact equivariance holds
      where every ρ > 0 (the group acts freely there).
    """

    _fn = "DDCAdam"

    def __init__(
        self,
        model_or_params: nn.Module | Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        gauges: list[_g.Gauge] | None = None,
        gauge_mode: str = "zero",
        balance_rate: float = 0.1,
        loss: str | None = "cross_entropy",
        nonfinite: str = "raise",
        params: Iterable[Any] | None = None,
        track_residuals: bool = False,
        rotations: bool = True,
        form: str = "coordinate",
    ) -> None:
        fn = self._fn
        self.track_residuals = bool(track_residuals)
        self.rotations = bool(rotations)
        if form not in _FORMS:
            raise ValueError(f"deadspec.{fn}: form must be one of {_FORMS}, got {form!r}")
        self.form = form
        if not (isinstance(lr, (int, float)) and lr >= 0.0):
            raise ValueError(f"deadspec.{fn}: lr must be a non-negative float, got {lr!r}")
        if len(betas) != 2 or not all(0.0 <= float(b) < 1.0 for b in betas):
            raise ValueError(f"deadspec.{fn}: betas must be two floats in [0, 1), got {betas!r}")
        if not eps >= 0.0:
            raise ValueError(f"deadspec.{fn}: eps must be non-negative, got {eps!r}")
        if not weight_decay >= 0.0:
            raise ValueError(
                f"deadspec.{fn}: weight_decay must be non-negative, got {weight_decay!r}"
            )
        self._check_gauge_options(gauge_mode, nonfinite, balance_rate, loss)
        self.gauge_mode = gauge_mode
        self.balance_rate = float(balance_rate)
        self.nonfinite = nonfinite
        self._names: dict[int, str] = {}
        if isinstance(model_or_params, nn.Module):
            model = model_or_params
            self._names = {id(p): n for n, p in model.named_parameters()}
            if gauges is None:
                found = _g.discover(model, loss=loss, chains=False)
                plan = _build_plan(model, list(found), explicit=False, fn=fn, heads=rotations)
            else:
                plan = _build_plan(model, list(gauges), explicit=True, fn=fn, heads=rotations)
            source = model.parameters() if params is None else params
        else:
            if params is not None:
                raise ValueError(
                    f"deadspec.{fn}: params must only be given with a model, got "
                    f"both parameters and params="
                )
            if gauges:
                raise ValueError(
                    f"deadspec.{fn}: gauges need the model (modules), got plain "
                    f"parameters; pass the nn.Module"
                )
            warnings.warn(
                f"deadspec.{fn}: given plain parameters, not a model: no gauges, DDCAdam is "
                f"plain AdamW",
                UserWarning,
                stacklevel=2,
            )
            plan = _Plan()
            source = model_or_params
        self._plan = plan
        self._residuals: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay}
        super().__init__(source, defaults)

    # -- step --------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One DDCAdam step (see the class and ``docs/ddc.md``). Returns the closure's loss."""
        # Decoupled weight decay is folded into the fused update (one pass per block) unless a
        # producer of a site is on the logit layer, whose shift-aware decay is not a factor.
        if self.form == "split" and self._plan.sites:
            # (without a rescaling site nothing is split: the coordinate path below is the step)
            loss, ok, modes = self._prologue(closure, decay=True)
            if ok:
                self._split_step()
                self._policy(modes)
            return loss
        fold = not any(
            id(t) in self._plan.shift
            for st in self._plan.sites
            for t in (st.weight, st.bias)
            if t is not None
        )
        loss, ok, modes = self._prologue(closure, decay=not fold)
        if not ok:
            return loss
        # (1) gauge scales (of the decayed parameters), (3)-(4) Adam in invariant coordinates,
        # mapped back
        rho = self._site_scales(pending_decay=fold)
        inv: dict[int, torch.Tensor] = {}  # 1/ρ per consumed site, shared by its consumers
        gauged = bool(self._plan.sites) or bool(self._plan.rot)
        fused: list[tuple[Any, ...]] = []
        steps: list[torch.Tensor] = []
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
            # Without any gauge: torch's AdamW multi-tensor step (bitwise AdamW(foreach=True)),
            # decay left to it except on the logit layer (shift-aware, done here).
            plain: dict[bool, list[list[torch.Tensor]]] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if len(state) == 0:
                    _init_adam_state(state, p)
                decay = 1.0
                shift = id(p) in self._plan.shift
                if fold and wd != 0:
                    if shift:
                        p.sub_(p - p.mean(0, keepdim=True), alpha=lr * wd)
                    else:
                        decay = 1.0 - lr * wd
                m, v, step_t = state["exp_avg"], state["exp_avg_sq"], state["step"]
                r = self._plan.row.get(id(p))
                c = self._plan.col.get(id(p))
                if not gauged:
                    lists = plain.setdefault(shift or not fold, [[], [], [], [], []])
                    for lst, t in zip(lists, (p, p.grad, m, v, step_t)):
                        lst.append(t)
                    continue
                row = None if r is None else rho[r].reshape((-1,) + (1,) * (p.ndim - 1))
                col = None
                if c is not None:
                    if c not in inv:
                        inv[c] = 1.0 / rho[c]
                    col = inv[c]
                rot = self._plan.rot.get(id(p))
                if _fused_ok(p, p.grad, m, v) and (col is None or p.ndim == 2):
                    # (3)-(4): every block of the step in one call of the C++ core, below
                    # (off-gauge blocks with σ = 1: AdamW's formula in the same pass; rotated
                    # head blocks with their second moment shared per head).
                    steps.append(step_t)
                    block: tuple[Any, ...] = (
                        p.detach().__dlpack__(),
                        p.grad.detach().__dlpack__(),
                        m.__dlpack__(),
                        v.__dlpack__(),
                        None if row is None else row.expand_as(p).__dlpack__(),
                        None if col is None else col.__dlpack__(),
                        float(lr), float(beta1), float(beta2), float(eps),
                        int(step_t.item()) + 1, float(decay),
                    )
                    if rot is not None:
                        block += (rot.axis, list(rot.segments))
                    fused.append(block)
                elif rot is not None:
                    _ddc_adam_block_update(
                        p, p.grad, m, v, step_t, row, rot.axis, rot.segments, lr=lr,
                        beta1=beta1, beta2=beta2, eps=eps, col_scale=col, decay=decay,
                    )
                else:
                    _ddc_adam_update(
                        p, p.grad, m, v, step_t, row, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
                        col_scale=col, decay=decay,
                    )
            for decayed, (ps, gs, ms, vs, ss) in plain.items():
                _torch_adamw(
                    ps, gs, ms, vs, [], ss, foreach=True, amsgrad=False, beta1=beta1,
                    beta2=beta2, lr=lr, weight_decay=0.0 if decayed else wd, eps=eps,
                    maximize=False,
                )
        if fused:
            _core.ddc_adam_update_many(fused)
            torch._foreach_add_(steps, 1.0)
        self._policy(modes)
        return loss

    # -- theory §6's split form ----------------------------------------------------------------
    def _split_step(self) -> None:
        """Steps (1)-(5) of ``form="split"`` after the prologue's decay (``docs/ddc.md``, "The
        split form").

        In the invariant coordinates ``x̃ = x/σ`` of the coordinate form a live producer row
        ``[x̃_w | x̃_b]`` has unit norm, and a column of a consumer that produces for no site is
        theory's block ``w₂`` times the invariant ``ρ₁``. Per unit: tangential Adam on
        ``‖x̃_blk‖·(g̃ − ⟨g̃, x̃_blk⟩x̃_blk/‖x̃_blk‖²)``, the update re-projected, a scalar Adam on
        ``g_U = (ĝ₁ + ĝ₂)/√2``, and ``x̃_blk ← e^{Δ_U/√2}·x̃_blk − η·‖x̃_blk‖·u``. Every quantity
        is a function of invariants, so the step is exactly equivariant. Three passes over each
        block (C++ core on CPU, :func:`_split_sums` & co. otherwise); the per-unit coefficients
        are combined here in between.
        """
        plan = self._plan
        rho = self._site_scales()  # of the decayed parameters
        stepped: list[tuple[torch.Tensor, dict[str, Any]]] = [
            (p, g) for g in self.param_groups for p in g["params"] if p.grad is not None
        ]
        # every block the sites read (a producer outside the param groups still defines its
        # units' rows) and the stepped ones, with σ's factors and a logit-shift centring
        tensors = {id(p): p for p, _ in stepped}
        for st in plan.sites:
            for t in (st.weight, st.bias, *st.consumers):
                if t is not None and t.grad is not None:
                    tensors.setdefault(id(t), t)
        blk = {i: self._split_block(t, rho) for i, t in tensors.items()}
        for p, _ in stepped:
            state = self.state[p]
            if len(state) == 0:
                _init_adam_state(state, p)
            state["step"] += 1
        sums = self._split_pass("sums", blk, stepped, tensors)
        # (1)-(3) per unit: live units, radial coefficients of g̃, the radial Adam
        sites = [self._split_site(s, sums) for s in plan.sites]
        self._split_coefficients(sites, "grad", blk)
        # (4) moments on the tangential inputs, the update's radial parts, re-projection
        dots = self._split_pass("moments", blk, stepped)
        for s, ss in zip(plan.sites, sites):
            if ss is not None:
                ss["update_row"] = torch.where(
                    ss["live"], self._unit_rows(s, dots, 0) / ss["q"], ss["zero"]
                )
                ss["update_col"] = torch.where(
                    ss["n2"] > 0,
                    self._unit_cols(s, dots, 1, only=True) / ss["n2_safe"],
                    ss["zero"],
                )
        self._split_coefficients(sites, "update", blk)
        # (5) apply: radial multiplicatively, tangential additively
        # (each side's Δlog ρ = lr·(the site's radial Adam direction), with its own group's lr:
        # a group with lr = 0 does not move)
        for p, group in stepped:
            b = blk[id(p)]
            r, c = plan.row.get(id(p)), plan.col.get(id(p))
            if r is not None and sites[r] is not None:
                b["row_mult"] = torch.exp(group["lr"] * sites[r]["radial"]).to(p.dtype)
            if c is not None and sites[c] is not None:
                b["col_mult"] = torch.exp(group["lr"] * sites[c]["radial"]).to(p.dtype)
        self._split_pass("apply", blk, stepped)

    def _split_block(self, p: torch.Tensor, rho: list[torch.Tensor | None]) -> dict[str, Any]:
        """σ's factors of a block (ρ of the site whose rows it holds; 1/ρ of the site whose
        units index its columns), the column means of x̃ on a logit-shift consumer, rotations."""
        plan = self._plan
        r, c = plan.row.get(id(p)), plan.col.get(id(p))
        b: dict[str, Any] = {
            "row_scale": None if r is None else rho[r].to(p.dtype),
            "col_scale": None if c is None else (1.0 / rho[c]).to(p.dtype),
        }
        if id(p) in plan.shift and p.ndim == 2:
            mean = p.mean(0)
            b["col_mean"] = mean if b["col_scale"] is None else mean / b["col_scale"]
        rot = plan.rot.get(id(p))
        if rot is not None:
            b["rot_axis"], b["rot_segments"] = rot.axis, list(rot.segments)
        return b

    def _split_pass(
        self,
        which: str,
        blk: dict[int, dict[str, Any]],
        stepped: list[tuple[torch.Tensor, dict[str, Any]]],
        tensors: dict[int, torch.Tensor] | None = None,
    ) -> dict[int, tuple[torch.Tensor | None, ...]]:
        """One pass over ``tensors`` (``"sums"``: every block the sites read) or the stepped
        parameters (``"moments"``, ``"apply"``). CPU float blocks go to the core in one call, the
        rest through torch."""
        groups = {id(p): g for p, g in stepped}
        params = {id(p): p for p, _ in stepped} if tensors is None else tensors
        ids = list(params)
        out: dict[int, tuple[torch.Tensor | None, ...]] = {}
        fused: list[int] = []
        calls: list[dict[str, Any]] = []
        for i in ids:
            p = params[i]
            b = blk[i]
            state = self.state[p] if i in groups else None
            if (
                state
                and _SPLIT_FUSED
                and _fused_ok(p, p.grad, state["exp_avg"], state["exp_avg_sq"])
            ):
                group = groups[i]
                call = {
                    "param": p.detach().__dlpack__(),
                    "grad": p.grad.detach().__dlpack__(),
                    "exp_avg": state["exp_avg"].__dlpack__(),
                    "exp_avg_sq": state["exp_avg_sq"].__dlpack__(),
                    "lr": float(group["lr"]),
                    "beta1": float(group["betas"][0]),
                    "beta2": float(group["betas"][1]),
                    "eps": float(group["eps"]),
                    "step": int(state["step"].item()),
                }
                for k, v in b.items():
                    if v is None:
                        continue
                    call[k] = v.__dlpack__() if isinstance(v, torch.Tensor) else v
                fused.append(i)
                calls.append(call)
                continue
            if which == "sums":
                out[i] = _split_sums(p, b.get("row_scale"), b.get("col_scale"), b.get("col_mean"))
            elif which == "moments":
                out[i] = _split_moments(p, self.state[p], groups[i], b)
            else:
                _split_apply(p, self.state[p], groups[i], b)
        if calls:
            fn = {
                "sums": _core.ddc_split_sums,
                "moments": _core.ddc_split_moments,
                "apply": _core.ddc_split_apply,
            }[which]
            res = fn(calls)
            if res is not None:
                for i, r in zip(fused, res):
                    dt = params[i].dtype
                    out[i] = tuple(
                        None if a.size == 0 and params[i].ndim == 1 else torch.from_numpy(a).to(dt)
                        for a in r
                    )
        return out

    def _unit_rows(
        self, s: _Site, vals: dict[int, tuple[torch.Tensor | None, ...]], k: int
    ) -> torch.Tensor:
        """Per unit, entry ``k`` of the row sums over a site's producer blocks (weight and bias,
        or γ and β); blocks without an entry (not stepped) contribute 0."""
        out = torch.zeros(s.weight.shape[0], dtype=s.weight.dtype, device=s.weight.device)
        for t in (s.weight, s.bias):
            if t is not None and id(t) in vals:
                out = out + vals[id(t)][k].to(out.dtype)
        return out

    def _unit_cols(
        self,
        s: _Site,
        vals: dict[int, tuple[torch.Tensor | None, ...]],
        k: int,
        only: bool,
    ) -> torch.Tensor:
        """Per unit, entry ``k`` of the column sums over a site's consumers (``only``: those
        that produce for no site, the column-split blocks)."""
        out = torch.zeros(s.weight.shape[0], dtype=s.weight.dtype, device=s.weight.device)
        for c in s.consumers:
            if id(c) in vals and not (only and id(c) in self._plan.row):
                out = out + vals[id(c)][k].to(out.dtype)
        return out

    def _split_site(
        self, s: _Site, sums: dict[int, tuple[torch.Tensor | None, ...]]
    ) -> dict[str, torch.Tensor] | None:
        """A site's per-unit quantities for this step, and (2)-(3) its radial Adam. None (not
        split: Adam on g̃ for its blocks) when a block of the site has no gradient."""
        if any(t is not None and t.grad is None for t in (s.weight, s.bias, *s.consumers)):
            return None
        q = self._unit_rows(s, sums, 1)
        live = q > 0.5  # a unit-norm x̃ row; a dead row (ρ = 0 → ρ := 1) has q ≈ 0
        if s.units is not None:
            inside = torch.zeros_like(live)
            inside[s.units.to(live.device)] = True
            live &= inside
        zero = torch.zeros_like(q)
        one = torch.ones_like(q)
        n2 = self._unit_cols(s, sums, 3, only=True)
        n2 = torch.where(live & (n2 > torch.finfo(q.dtype).tiny), n2, zero)
        n2_safe = torch.where(n2 > 0, n2, one)
        q = torch.where(live, q, one)
        g_in = self._unit_rows(s, sums, 0)  # ĝ₁ = ⟨g̃, x̃⟩ = ⟨g, w⟩ over the producer block
        g_out = self._unit_cols(s, sums, 2, only=False)  # ĝ₂ over every consumer (centred)
        g_u = torch.where(live, (g_in + g_out) / math.sqrt(2.0), zero)
        _, (beta1, beta2), eps = self._damped_hparams(s)
        st = s.state
        if "split_step" not in st:
            st["split_step"] = 0
            st["split_exp_avg"] = torch.zeros_like(g_u)
            st["split_exp_avg_sq"] = torch.zeros_like(g_u)
        st["split_step"] += 1
        st["split_exp_avg"].lerp_(g_u, 1 - beta1)
        st["split_exp_avg_sq"].mul_(beta2).addcmul_(g_u, g_u, value=1 - beta2)
        bc1, bc2 = 1 - beta1 ** st["split_step"], 1 - beta2 ** st["split_step"]
        denom = (st["split_exp_avg_sq"] / bc2).sqrt().add_(eps)
        # the radial Adam's direction −m̂/(√v̂ + ε) (0 where m = v = 0 and ε = 0); each side
        # scales it by its own group's lr when it is applied
        direction = torch.where(denom > 0, -(st["split_exp_avg"] / bc1) / denom, zero)
        return {
            "live": live,
            "q": q,
            "n2": n2,
            "n2_safe": n2_safe,
            "zero": zero,
            "radial": torch.where(live, direction / math.sqrt(2.0), zero),
            "grad_row": torch.where(live, g_in / q, zero),
            "grad_col": torch.where(n2 > 0, self._unit_cols(s, sums, 2, only=True) / n2_safe, zero),
            "col_norm": torch.where(n2 > 0, n2.sqrt(), one),
        }

    def _split_coefficients(
        self,
        sites: list[dict[str, torch.Tensor] | None],
        which: str,
        blk: dict[int, dict[str, Any]],
    ) -> None:
        """Hand each block the radial coefficients (``which``: of the gradient or the update)
        of the split site it is a block of: its rows' site (a producer, stacked or not), else
        its columns' site if it produces for none."""
        plan = self._plan
        for i, b in blk.items():
            r, c = plan.row.get(i), plan.col.get(i)
            b["row_coef"] = b["col_coef"] = b["col_norm"] = None
            if r is not None:
                if sites[r] is not None:
                    b["row_coef"] = sites[r][which + "_row"]
            elif c is not None and sites[c] is not None:
                b["col_coef"] = sites[c][which + "_col"]
                b["col_norm"] = sites[c]["col_norm"]
            dt = self._split_dtype(b)
            for k in ("row_coef", "col_coef", "col_norm"):
                if b[k] is not None and dt is not None:
                    b[k] = b[k].to(dt)

    @staticmethod
    def _split_dtype(b: dict[str, Any]) -> torch.dtype | None:
        for k in ("row_scale", "col_scale"):
            if b.get(k) is not None:
                return b[k].dtype
        return None

    def _damped_hparams(self, s: _Site) -> tuple[float, tuple[float, float], float]:
        group = self._group_of(s.weight)
        return group["lr"], group["betas"], group["eps"]


# --------------------------------------------------------------------------------------------
# DDCMuon
# --------------------------------------------------------------------------------------------

_MUON_KEYS = ("lr", "momentum", "nesterov", "weight_decay", "ns_steps", "ns_coefficients")
_ADAMW_KEYS = ("lr", "betas", "eps", "weight_decay")
_NS_DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)


class DDCMuon(_DDCBase):
    """Muon for hidden matrices + AdamW for the rest, both in gauge-fixed coordinates.

    Exactly equivariant under the network's gauges, ``step(g·θ) = g·step(θ)``, rescalings
    (Pair, Chain, NormScale), the logit shift and the per-head attention rotations
    (:class:`~deadspec.gauges.HeadRotation`) included. The design, and what is exactly
    equivariant, is written up in ``docs/ddc.md`` (section "DDCMuon").

    Parameters
    ----------
    model_or_params : nn.Module or iterable of parameters / param-group dicts
        The model (needed for the gauges and to tell hidden matrices from the output head and
        embeddings), or plain parameters (no gauges, a warning: 2-D tensors get Muon, the
        rest AdamW).
    lr, momentum, nesterov, weight_decay, ns_steps, ns_coefficients
        The Muon path: ``B ← lerp(B, g̃, 1 − momentum)``, Nesterov ``U = lerp(g̃, B, momentum)``,
        ``ns_steps`` quintic Newton–Schulz steps with ``ns_coefficients``, Keller's shape scale
        ``max(1, rows/cols)^½``, decoupled weight decay ``x ← (1 − lr·weight_decay)x`` (as
        ``torch.optim.Muon``).
    adamw_lr, adamw_betas, adamw_eps
        The AdamW path (embeddings, the output head, norm gains, biases, any non-2-D tensor).
    gauges : list of deadspec.gauges.Gauge, optional
        None: :func:`deadspec.gauges.discover` ``(model, loss=loss)``, HeadRotations included.
        An explicit list is bound to the model and its hand-declared entries validated.
        ``[]``: no gauges (plain Muon + AdamW).
    gauge_mode : {"zero", "damped", "balance"}
        Policy on the pure-gauge scales ρ, as :class:`DDCAdam` (the damped scalar Adam uses the
        AdamW hyper-parameters of the site's gain/bias, else ``adamw_*``).
    nonfinite : {"raise", "skip"}
        A NaN/Inf gradient: raise RuntimeError naming the parameter, or skip the whole step
        with a warning (parameters and state untouched).
    adamw_weight_decay : float, optional
        Decoupled weight decay of the AdamW path (default: ``weight_decay``).
    ns_dtype : torch.dtype, optional
        Dtype of the Newton–Schulz iteration (float64, float32, bfloat16, float16). Default:
        each parameter's dtype. ``torch.bfloat16`` reproduces ``torch.optim.Muon`` (and
        KellerJordan/Muon); exact equivariance is measured in float64.
    ns_eps : float
        ``X₀ = U/max(‖U‖_F, ns_eps)`` (``torch.optim.Muon``'s ``eps``).
    per_head : bool
        Orthogonalise each rotated head block on its own (default; ``W_q,h``, ``W_k,h``,
        ``W_v,h`` as ``d_head×d_model`` matrices, ``W_o[:, h]`` as ``d_model×d_head``). False:
        whole matrices (also exactly equivariant: the block-diagonal rotation is orthogonal).
    head : "auto", str, sequence of str or None
        Modules whose weights are the output head (AdamW path). "auto": the LogitShift layers
        among the gauges, plus the layer the traced model returns (a warning when the model
        cannot be traced and no LogitShift names it). None: no head.
    balance_rate, loss
        As :class:`DDCAdam`.
    params : iterable, optional
        With a model: the parameters or param-group dicts (default ``model.parameters()``).
        A group with ``use_muon=True`` is a Muon group (keys ``lr``, ``momentum``,
        ``nesterov``, ``weight_decay``, ``ns_steps``, ``ns_coefficients``; 2-D tensors only);
        ``use_muon=False`` an AdamW group (keys ``lr``, ``betas``, ``eps``, ``weight_decay``,
        defaults ``adamw_*``); without ``use_muon`` the group is split into both, the AdamW
        half taking ``adamw_lr``, ``adamw_betas``, ``adamw_eps``, ``adamw_weight_decay`` from
        the group or the defaults. Every entry of ``param_groups`` is therefore one path, with
        ``"use_muon"`` True or False, and its ``"lr"`` is that path's (LR schedulers scale
        both paths).
    track_residuals : bool
        As :class:`DDCAdam`: compute ``g_V`` each step for :meth:`gauge_residuals`.

    Notes
    -----
    - Muon path (default): the ``weight`` of every ``nn.Linear`` and the ``in_proj_weight`` of
      ``nn.MultiheadAttention``, except the output head and weights shared with an embedding.
    - Parameters without a gradient are skipped, dead units (ρ = 0) are not scaled, as in
      :class:`DDCAdam`.
    - A HeadRotation whose rotated rows are also a Pair/NormScale producer's (or whose rotated
      columns a consumer's) raises ValueError: σ must be constant along the rotated axis.
    """

    _fn = "DDCMuon"

    def __init__(
        self,
        model_or_params: nn.Module | Iterable[Any],
        lr: float = 0.02,
        momentum: float = 0.95,
        nesterov: bool = True,
        weight_decay: float = 0.0,
        ns_steps: int = 5,
        ns_coefficients: tuple[float, float, float] = (3.4445, -4.7750, 2.0315),
        adamw_lr: float = 3e-4,
        adamw_betas: tuple[float, float] = (0.9, 0.95),
        adamw_eps: float = 1e-8,
        *,
        gauges: list[_g.Gauge] | None = None,
        gauge_mode: str = "zero",
        nonfinite: str = "raise",
        adamw_weight_decay: float | None = None,
        ns_dtype: torch.dtype | None = None,
        ns_eps: float = 1e-7,
        per_head: bool = True,
        head: str | Iterable[str] | None = "auto",
        balance_rate: float = 0.1,
        loss: str | None = "cross_entropy",
        params: Iterable[Any] | None = None,
        track_residuals: bool = False,
    ) -> None:
        fn = self._fn
        self.track_residuals = bool(track_residuals)
        self._check_gauge_options(gauge_mode, nonfinite, balance_rate, loss)
        if ns_dtype is not None and ns_dtype not in _NS_DTYPES:
            raise ValueError(
                f"deadspec.{fn}: ns_dtype must be None or one of {_NS_DTYPES}, got {ns_dtype!r}"
            )
        if not (isinstance(ns_eps, (int, float)) and ns_eps > 0):
            raise ValueError(f"deadspec.{fn}: ns_eps must be a positive float, got {ns_eps!r}")
        self.gauge_mode = gauge_mode
        self.balance_rate = float(balance_rate)
        self.nonfinite = nonfinite
        self.ns_dtype = ns_dtype
        self.ns_eps = float(ns_eps)
        self.per_head = bool(per_head)
        self._muon_defaults = {
            "lr": lr,
            "momentum": momentum,
            "nesterov": bool(nesterov),
            "weight_decay": weight_decay,
            "ns_steps": ns_steps,
            "ns_coefficients": tuple(ns_coefficients),
        }
        self._adamw_defaults = {
            "lr": adamw_lr,
            "betas": tuple(adamw_betas),
            "eps": adamw_eps,
            "weight_decay": weight_decay if adamw_weight_decay is None else adamw_weight_decay,
        }
        self._adamw_wd_follows = adamw_weight_decay is None
        self._check_muon(self._muon_defaults)
        self._check_adamw(self._adamw_defaults, "adamw_")
        self._names = {}
        self._muon_ids: set[int] | None = None  # None: plain parameters, 2-D -> Muon
        if isinstance(model_or_params, nn.Module):
            model = model_or_params
            self._names = {id(p): n for n, p in model.named_parameters()}
            if gauges is None:
                found = _g.discover(model, loss=loss, chains=False)
                plan = _build_plan(model, list(found), explicit=False, fn=fn, heads=True)
            else:
                plan = _build_plan(model, list(gauges), explicit=True, fn=fn, heads=True)
            self._muon_ids = self._hidden_matrices(model, plan, head)
            source = model.parameters() if params is None else params
        else:
            if params is not None:
                raise ValueError(
                    f"deadspec.{fn}: params must only be given with a model, got "
                    f"both parameters and params="
                )
            if gauges:
                raise ValueError(
                    f"deadspec.{fn}: gauges need the model (modules), got plain "
                    f"parameters; pass the nn.Module"
                )
            warnings.warn(
                f"deadspec.{fn}: given plain parameters, not a model: no gauges, DDCMuon is "
                f"plain Muon (2-D tensors) + AdamW",
                UserWarning,
                stacklevel=2,
            )
            plan = _Plan()
            source = model_or_params
        self._plan = plan
        self._residuals = {}
        super().__init__(source, {"lr": lr, "weight_decay": weight_decay})

    # -- construction helpers ----------------------------------------------------------------
    def _check_muon(self, g: dict[str, Any]) -> None:
        fn = self._fn
        if not (isinstance(g["lr"], (int, float)) and g["lr"] >= 0.0):
            raise ValueError(f"deadspec.{fn}: lr must be a non-negative float, got {g['lr']!r}")
        if not (isinstance(g["momentum"], (int, float)) and 0.0 <= g["momentum"] < 1.0):
            raise ValueError(
                f"deadspec.{fn}: momentum must be a float in [0, 1), got {g['momentum']!r}"
            )
        if not g["weight_decay"] >= 0.0:
            raise ValueError(
                f"deadspec.{fn}: weight_decay must be non-negative, got {g['weight_decay']!r}"
            )
        ns = g["ns_steps"]
        if isinstance(ns, bool) or not isinstance(ns, int) or ns < 1:
            raise ValueError(f"deadspec.{fn}: ns_steps must be a positive integer, got {ns!r}")
        if len(tuple(g["ns_coefficients"])) != 3:
            raise ValueError(
                f"deadspec.{fn}: ns_coefficients must hold 3 floats (a, b, c), got "
                f"{g['ns_coefficients']!r}"
            )

    def _check_adamw(self, g: dict[str, Any], prefix: str = "") -> None:
        fn = self._fn
        if not (isinstance(g["lr"], (int, float)) and g["lr"] >= 0.0):
            raise ValueError(
                f"deadspec.{fn}: {prefix}lr must be a non-negative float, got {g['lr']!r}"
            )
        betas = tuple(g["betas"])
        if len(betas) != 2 or not all(0.0 <= float(b) < 1.0 for b in betas):
            raise ValueError(
                f"deadspec.{fn}: {prefix}betas must be two floats in [0, 1), got {betas!r}"
            )
        if not g["eps"] >= 0.0:
            raise ValueError(f"deadspec.{fn}: {prefix}eps must be non-negative, got {g['eps']!r}")
        if not g["weight_decay"] >= 0.0:
            raise ValueError(
                f"deadspec.{fn}: {prefix}weight_decay must be non-negative, got "
                f"{g['weight_decay']!r}"
            )

    def _hidden_matrices(self, model: nn.Module, plan: _Plan, head: Any) -> set[int]:
        fn = self._fn
        if head == "auto":
            heads = {g.layer for g in plan.gauges if isinstance(g, _g.LogitShift)}
            info = trace_info(model)
            heads |= set(info.logit_layers) | fallback_logit(model, None)
            if not heads and not info.root_traced:
                warnings.warn(
                    f"deadspec.{fn}: could not identify the output head (the model cannot be "
                    f"traced and no LogitShift names it): every nn.Linear weight gets Muon; "
                    f"pass head=<module name> (or head=None to silence this)",
                    UserWarning,
                    stacklevel=3,
                )
        elif head is None:
            heads = set()
        else:
            heads = {head} if isinstance(head, str) else {str(h) for h in head}
            mods = dict(model.named_modules())
            for h in heads:
                if h not in mods:
                    raise ValueError(
                        f"deadspec.{fn}: head must name modules of the model, got {h!r}"
                    )
        embedded = {
            id(p)
            for m in model.modules()
            if isinstance(m, (nn.Embedding, nn.EmbeddingBag))
            for p in m.parameters(recurse=False)
        }
        out: set[int] = set()
        for name, m in model.named_modules():
            if name in heads:
                continue
            if isinstance(m, nn.Linear):
                out.add(id(m.weight))
            elif isinstance(m, nn.MultiheadAttention):
                for w in (m.in_proj_weight, m.q_proj_weight, m.k_proj_weight, m.v_proj_weight):
                    if w is not None:
                        out.add(id(w))
        return out - embedded

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group; without ``use_muon`` it is split into a Muon and an AdamW group."""
        if not isinstance(param_group, dict):
            raise TypeError(
                f"deadspec.{self._fn}.add_param_group: param_group must be a dict, got "
                f"{type(param_group).__name__}"
            )
        group = dict(param_group)
        params = group["params"]
        if isinstance(params, torch.Tensor):
            params = [params]
        elif isinstance(params, set):
            raise TypeError(f"deadspec.{self._fn}: params must be an ordered collection, got a set")
        params = list(params)
        use = group.pop("use_muon", None)
        extra_keys = set(_MUON_KEYS) | {"adamw_lr", "adamw_betas", "adamw_eps"}
        extra_keys |= {"adamw_weight_decay", "betas", "eps", "params", "param_names"}
        extra = {k: v for k, v in group.items() if k not in extra_keys}
        if use is None:
            tensor = [e[1] if isinstance(e, tuple) else e for e in params]
            muon = [e for e, t in zip(params, tensor) if self._auto_muon(t)]
            rest = [e for e, t in zip(params, tensor) if not self._auto_muon(t)]
            adam = {
                "lr": group.get("adamw_lr", self._adamw_defaults["lr"]),
                "betas": group.get("adamw_betas", self._adamw_defaults["betas"]),
                "eps": group.get("adamw_eps", self._adamw_defaults["eps"]),
                "weight_decay": group.get(
                    "adamw_weight_decay", self._adamw_defaults["weight_decay"]
                ),
            }
            if (
                "adamw_weight_decay" not in group
                and self._adamw_wd_follows
                and "weight_decay" in group
            ):
                adam["weight_decay"] = group["weight_decay"]  # adamw_weight_decay=None follows it
            if muon or not rest:
                mu = {k: group.get(k, self._muon_defaults[k]) for k in _MUON_KEYS}
                self._add_path_group({**extra, **mu, "params": muon}, True)
            if rest:
                self._add_path_group({**extra, **adam, "params": rest}, False)
            return
        if use:
            mu = {k: group.get(k, self._muon_defaults[k]) for k in _MUON_KEYS}
            self._add_path_group({**extra, **mu, "params": params}, True)
        else:
            ad = {k: group.get(k, self._adamw_defaults[k]) for k in _ADAMW_KEYS}
            self._add_path_group({**extra, **ad, "params": params}, False)

    def _auto_muon(self, p: torch.Tensor) -> bool:
        if self._muon_ids is None:
            return p.ndim == 2
        return id(p) in self._muon_ids

    def _add_path_group(self, group: dict[str, Any], muon: bool) -> None:
        if muon:
            group["ns_coefficients"] = tuple(group["ns_coefficients"])
            group["nesterov"] = bool(group["nesterov"])
            self._check_muon(group)
            for e in group["params"]:
                t = e[1] if isinstance(e, tuple) else e
                if isinstance(t, torch.Tensor) and t.ndim != 2:
                    raise ValueError(
                        f"deadspec.{self._fn}: params on the Muon path (use_muon=True) must be "
                        f"2-D matrices, got {self._names.get(id(t), 'a tensor')!r} of shape "
                        f"{tuple(t.shape)}"
                    )
        else:
            group["betas"] = tuple(group["betas"])
            self._check_adamw(group)
        group["use_muon"] = bool(muon)
        super().add_param_group(group)

    # -- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        sd["ddc"]["rotated"] = sorted(r.name for r in self._plan.rot.values())
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        fn = self._fn
        ddc = state_dict.get("ddc")
        if ddc is not None:
            mine = sorted(r.name for r in self._plan.rot.values())
            if list(ddc.get("rotated", [])) != mine:
                raise ValueError(
                    f"deadspec.{fn}.load_state_dict: the state must be for the same head "
                    f"rotations, got {list(ddc.get('rotated', []))} but this optimizer has {mine}"
                )
        saved = [bool(g.get("use_muon")) for g in state_dict.get("param_groups", [])]
        paths = [g["use_muon"] for g in self.param_groups]
        if saved != paths:
            raise ValueError(
                f"deadspec.{fn}.load_state_dict: the state must have the same Muon/AdamW "
                f"groups (use_muon), got {saved} but this optimizer has {paths}"
            )
        super().load_state_dict(state_dict)

    # -- step --------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One DDCMuon step (see the class and ``docs/ddc.md``). Returns the closure's loss."""
        loss, ok, modes = self._prologue(closure)
        if not ok:
            return loss
        # (1) gauge scales; (2) Muon / AdamW in invariant coordinates, mapped back
        rho = self._site_scales()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                scale = self._param_scale(p, rho)
                rot = self._plan.rot.get(id(p))
                if group["use_muon"]:
                    if len(state) == 0:
                        state["momentum_buffer"] = torch.zeros_like(
                            p, memory_format=torch.preserve_format
                        )
                    blocks = None
                    if rot is not None and self.per_head:
                        blocks = (rot.axis, rot.cover())
                    _ddc_muon_update(
                        p,
                        p.grad,
                        state["momentum_buffer"],
                        scale,
                        blocks,
                        lr=group["lr"],
                        momentum=group["momentum"],
                        nesterov=group["nesterov"],
                        ns_coefficients=group["ns_coefficients"],
                        ns_steps=group["ns_steps"],
                        ns_eps=self.ns_eps,
                        ns_dtype=p.dtype if self.ns_dtype is None else self.ns_dtype,
                    )
                    continue
                if len(state) == 0:
                    _init_adam_state(state, p)
                beta1, beta2 = group["betas"]
                kw = {"lr": group["lr"], "beta1": beta1, "beta2": beta2, "eps": group["eps"]}
                if rot is None:
                    _ddc_adam_update(
                        p, p.grad, state["exp_avg"], state["exp_avg_sq"], state["step"], scale, **kw
                    )
                else:
                    _ddc_adam_block_update(
                        p,
                        p.grad,
                        state["exp_avg"],
                        state["exp_avg_sq"],
                        state["step"],
                        scale,
                        rot.axis,
                        rot.segments,
                        **kw,
                    )
        # (3) policy on the pure-gauge scales
        self._policy(modes)
        return loss

    def _damped_hparams(self, s: _Site) -> tuple[float, tuple[float, float], float]:
        for t in (s.bias, s.weight):
            if t is None:
                continue
            group = self._group_of(t)
            if group.get("use_muon") is False:
                return group["lr"], group["betas"], group["eps"]
        d = self._adamw_defaults
        return d["lr"], d["betas"], d["eps"]
