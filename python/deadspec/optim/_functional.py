"""The DDC optimizers' update kernels, as pure functions of one block, and their dispatcher.

In the shape of torch's ``adam()`` → ``_single_tensor_adam`` / ``_fused_adam``:
:func:`ddc_adam` takes a list of :class:`AdamBlock` s and sends the dense CPU float32/float64
blocks to the C++ core in one call (:func:`_fused_ddc_adam`, ``_core.ddc_adam_update_many``)
and every other block through the torch reference (:func:`_single_tensor_ddc_adam`), which
computes the same step. The gauge scales: :func:`site_rho` (one site's ρ) and
:func:`gauge_dots` (the log-norm gradients ĝ of a block), both in the core on CPU.

A block's step in the invariant coordinates ``x̃ = x/σ`` (theory.md §6.3):
``x ← decay·x``, ``g̃ = g·σ``, Adam moments on ``g̃``,
``x ← x − lr/bc1 · m/(√(v/bc2) + eps) · σ``; with σ = 1 this is ``torch.optim.AdamW``'s
single-tensor step, bitwise.

Check before commit: no path writes a non-finite number. Each coordinate's new parameter and
moments are computed, checked, and written only if all are finite; a coordinate whose new values
overflow (``|g̃|`` or the second moment beyond the dtype's range, a huge weight or lr) keeps its
pre-step parameter and moments. The second moment is accumulated in AdamW's order,
``((1 − β₂)·g̃)·g̃``, so it overflows where AdamW's does. Every step function returns how many
coordinates it refused (an int from the C++ core, a 0-dim tensor from torch, so that a GPU
step synchronises once); the optimizer applies its ``nonfinite`` policy to them.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any

import torch

from deadspec import _core

if TYPE_CHECKING:
    from deadspec.optim._plan import Rot

__all__ = [
    "AdamBlock",
    "adam_value",
    "block_sigma",
    "commit_finite",
    "cpu_float",
    "ddc_adam",
    "ddc_adam_block_update",
    "ddc_adam_update",
    "fused_ok",
    "gauge_dots",
    "init_adam_state",
    "restrict_units",
    "adam_ratio_bound",
    "mean_within_segments",
    "screen_safe",
    "site_rho",
]


def site_rho(
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
    outside ``units`` get scale 1: they are not scaled (the "dead unit" convention). So do rows
    whose norm overflows the dtype, or whose 1/ρ has no finite reciprocal (a unit too large for
    its scale to be represented gets the plain AdamW step instead of a NaN). The norms are
    accumulated in float64 on CPU, in float32 at least elsewhere (a half-precision row of norm
    > 256 would overflow float16's squares).
    """
    if weight.ndim == 1:
        col_scale = None  # a norm's γ: one entry per unit, no columns to scale
    if weight.ndim in (1, 2) and cpu_float(weight, col_scale, bias):
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
        acc = torch.promote_types(weight.dtype, torch.float32)  # (no float16 squares)
        wa = weight.to(acc)
        if weight.ndim == 2:
            w = wa if col_scale is None else wa * col_scale.to(acc).reshape(1, -1)
            sq = w.square().sum(1)
        else:
            sq = wa.square()
        if factors[0] != 1.0:
            sq = sq * factors[0] ** 2
        if bias is not None:
            sq = sq + bias.to(acc).square() * factors[1] ** 2
        rho = sq.sqrt().to(weight.dtype)
    tiny = torch.finfo(rho.dtype).tiny
    # (1/ρ is a consumer's column scale: its reciprocal must be finite too, which fails only
    # for ρ within a few ulps of the dtype's largest value)
    ok = (rho > tiny) & torch.isfinite(rho) & torch.isfinite(1.0 / (1.0 / rho))
    return restrict_units(torch.where(ok, rho, torch.ones_like(rho)), units)


def restrict_units(rho: torch.Tensor, units: torch.Tensor | None) -> torch.Tensor:
    """``rho`` on the gauge's ``units``, 1 elsewhere (None: every unit)."""
    if units is None:
        return rho
    full = torch.ones_like(rho)
    idx = units.to(rho.device)
    full[idx] = rho[idx]
    return full


def cpu_float(*ts: torch.Tensor | None) -> bool:
    """All given tensors (None skipped) are dense CPU float32/float64 tensors."""
    return all(
        t is None
        or (
            t.device.type == "cpu"
            and t.dtype in (torch.float32, torch.float64)
            and not t.is_sparse
        )
        for t in ts
    )


def gauge_dots(x: torch.Tensor, g: torch.Tensor, axis: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ x·g, Σ |x·g|) of a 2-D block along ``axis``, in x's dtype (one pass in the core)."""
    if cpu_float(x, g):
        s, a = _core.ddc_gauge_dots(x.detach().__dlpack__(), g.detach().__dlpack__(), axis)
        return torch.from_numpy(s).to(x.dtype), torch.from_numpy(a).to(x.dtype)
    t = g * x
    return t.sum(axis), t.abs().sum(axis)


def fused_ok(param: torch.Tensor, *others: torch.Tensor) -> bool:
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


def block_sigma(
    param: torch.Tensor, scale: torch.Tensor | None, col_scale: torch.Tensor | None
) -> torch.Tensor | None:
    """The torch paths' σ = scale·col_scale in the parameter's dtype (broadcastable to it), or
    None for σ = 1."""
    if scale is not None:
        scale = scale.to(param.dtype)
    if col_scale is not None:
        col = col_scale.to(param.dtype).reshape(1, -1)
        scale = col if scale is None else scale * col
    return scale


def init_adam_state(state: dict[str, Any], p: torch.Tensor) -> None:
    """A fresh Adam state for ``p``, as torch's AdamW makes it (float32 step count, zero
    moments of p's shape and dtype)."""
    state["step"] = torch.tensor(0.0, dtype=torch.float32)
    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)


def adam_value(
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
    decay: float = 1.0,
) -> torch.Tensor:
    """The torch paths' bias-corrected apply, out of place: ``decay·param − lr/bc1 ·
    m/(√(v/bc2) + eps) · σ`` (torch AdamW's single-tensor operations, in its order, when σ is
    None: the same bits as its in-place step)."""
    step = step_t.item()
    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    step_size = lr / bias_correction1
    denom = (exp_avg_sq.sqrt() / bias_correction2**0.5).add_(eps)
    x = param.mul(decay) if decay != 1.0 else param
    if scale is None:
        return x.addcdiv(exp_avg, denom, value=-step_size)
    return x.add(exp_avg.div(denom).mul_(scale), alpha=-step_size)


def commit_finite(targets: list[torch.Tensor], values: list[torch.Tensor]) -> torch.Tensor:
    """Check before commit: write each ``values[k]`` into ``targets[k]`` (same shapes) at the
    coordinates where every value is finite; elsewhere the targets keep what they hold (the
    pre-step parameter and moments). Returns how many coordinates were refused, a 0-dim int64
    tensor on the targets' device (no host synchronisation)."""
    ok = torch.isfinite(values[0])
    for v in values[1:]:
        ok &= torch.isfinite(v)
    for t, v in zip(targets, values):
        if v is not t:
            t.copy_(torch.where(ok, v, t))
    return (~ok).sum()


def ddc_adam_update(
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
) -> int | torch.Tensor:
    """One bias-corrected Adam step in the invariant coordinates ``x̃ = x/σ``.

    ``σ = scale · col_scale`` (``scale`` broadcastable to the block, e.g. a ``(h, 1)`` row
    vector; ``col_scale`` one entry per column; None = 1). ``param ← decay·param`` first
    (decoupled weight decay, ``decay = 1 − lr·wd``), then ``g̃ = grad·σ``, moments on ``g̃``,
    ``param ← param − lr/bc1 · m/(√(v/bc2) + eps) · σ``. With σ = 1 this is
    ``torch.optim.AdamW``'s single-tensor step, bitwise. Gauged CPU blocks (1-D/2-D,
    float32/float64) run as one fused pass in the C++ core (arithmetic in the parameter's
    dtype, as here); anything else takes the torch path below, which computes the same step.
    Checked before commit (module docstring): returns the number of coordinates whose new
    parameter or moments were not finite and so kept their pre-step values.
    """
    step_t += 1
    gauged = scale is not None or col_scale is not None
    if gauged and fused_ok(param, grad, exp_avg, exp_avg_sq) and (
        col_scale is None or param.ndim == 2
    ):
        return _core.ddc_adam_update(
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
    scale = block_sigma(param, scale, col_scale)
    g = grad if scale is None else grad * scale
    m = exp_avg.lerp(g, 1 - beta1)
    v = exp_avg_sq.mul(beta2).addcmul_(g, g, value=1 - beta2)
    x = adam_value(
        param, m, v, step_t, scale, lr=lr, beta1=beta1, beta2=beta2, eps=eps, decay=decay
    )
    return commit_finite([param, exp_avg, exp_avg_sq], [x, m, v])


def adam_ratio_bound(beta1: float, beta2: float) -> float:
    """A bound on ``|m̂|/√v̂`` for moments Adam made from zero (any gradients, any step):
    ``(1 − β₁)/(√(1 − β₂)·(1 − β₁/√β₂)·(1 − β₁))`` (``m_t`` is a β₁-average of the ``g_k`` and
    ``v_t ≥ (1 − β₂)β₂^(t−k)·g_k²``; the bias corrections add at most ``1/(1 − β₁)``); inf
    unless ``β₁ < √β₂``."""
    if not (0.0 <= beta1 < math.sqrt(beta2)) or beta2 >= 1.0:
        return math.inf
    return (1 - beta1) / (math.sqrt(1 - beta2) * (1 - beta1 / math.sqrt(beta2)) * (1 - beta1))


def screen_safe(b: AdamBlock, grad_norm: float, sigma_max: float) -> bool:
    """Whether the fused step of ``b`` can write only finite values, so that the core may skip
    its per-element keep (``b.keep = False``, a quarter of the kernel's time) and only count.

    With finite x, m, v and ``max|g̃| ≤ ‖g‖₂·max σ = G``: m and v stay finite when
    ``G ≤ √max/16`` (``(1 − β₂)·G²`` and ``(1 − β₁)·G`` far inside the dtype's range); the
    update ``lr·m̂/(√v̂ + eps)·σ`` stays below ``max/16`` when ``lr·R·max σ`` does, R the
    :func:`adam_ratio_bound` of moments the optimizer made (``DDCBase`` verifies a loaded state
    against it); ``eps > 0`` (no 0/0) and ``|decay| ≤ 1``. Then the new x is finite unless a
    parameter already sits within a factor 2 of the dtype's largest value — the one case left,
    which the core's count still reports (non-finite values written: the optimizer raises).
    """
    fi = torch.finfo(b.param.dtype)
    if not (b.eps > 0.0 and abs(b.decay) <= 1.0 and math.isfinite(grad_norm * sigma_max)):
        return False
    if not grad_norm * sigma_max <= math.sqrt(fi.max) / 16:
        return False
    return b.lr * adam_ratio_bound(b.beta1, b.beta2) * sigma_max <= fi.max / 16


def mean_within_segments(
    sq: torch.Tensor, axis: int, segments: list[tuple[int, int]]
) -> torch.Tensor:
    """``sq`` (a fresh tensor, written in place) with each ``[start, stop)`` segment along
    ``axis`` replaced by its mean there: a rotated head's shared second-moment input."""
    for a, b in segments:
        blk = sq.narrow(axis, a, b - a)
        blk.copy_(blk.mean(axis, keepdim=True).expand_as(blk))
    return sq


def ddc_adam_block_update(
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
) -> torch.Tensor:
    """:func:`ddc_adam_update` with the second moment shared along a rotated axis.

    Within each ``[start, stop)`` of ``segments`` along ``axis`` (a head block that a
    HeadRotation rotates), the second-moment input ``(1 − β₂)·g̃²`` (AdamW's order,
    ``((1 − β₂)·g̃)·g̃``) is replaced by its mean along ``axis`` before it enters
    ``exp_avg_sq``: the denominator is then invariant under the rotation and the update
    ``m/(√v + eps)`` rotates with the gradient. Elsewhere it is Adam, coordinate by coordinate.
    (The torch path of rotated blocks: DDCAdam's off-CPU/other-dtype blocks, DDCMuon's biases
    of rotated heads; the C++ core's ``ddc_adam_update_many`` does the same on CPU.) Checked
    before commit; returns the number of coordinates refused.
    """
    step_t += 1
    scale = block_sigma(param, scale, col_scale)
    g = grad if scale is None else grad * scale
    m = exp_avg.lerp(g, 1 - beta1)
    g2 = mean_within_segments((g * (1 - beta2)) * g, axis, segments)
    v = exp_avg_sq.mul(beta2).add_(g2)
    x = adam_value(
        param, m, v, step_t, scale, lr=lr, beta1=beta1, beta2=beta2, eps=eps, decay=decay
    )
    return commit_finite([param, exp_avg, exp_avg_sq], [x, m, v])


@dataclasses.dataclass
class AdamBlock:
    """One parameter block of a DDC Adam step: its tensors, σ's factors and hyper-parameters.

    ``row`` is σ's row factor broadcastable to the block (e.g. ``(h, 1)``; or the whole σ),
    ``col`` one factor per column of a 2-D block; None = 1. ``rot``: the head blocks whose second
    moment is shared (a HeadRotation), or None. ``decay`` multiplies the parameter first
    (``1 − lr·wd``). ``keep``: the C++ core's check before commit (per element); False for a
    block :func:`screen_safe` has cleared, which the core writes unconditionally, only counting
    non-finite results (the torch paths always keep).
    """

    param: torch.Tensor
    grad: torch.Tensor
    exp_avg: torch.Tensor
    exp_avg_sq: torch.Tensor
    step: torch.Tensor
    row: torch.Tensor | None
    col: torch.Tensor | None
    rot: Rot | None
    lr: float
    beta1: float
    beta2: float
    eps: float
    decay: float = 1.0
    keep: bool = True

    def fusable(self) -> bool:
        """Whether the C++ core's fused pass can take the block."""
        p = self.param
        return fused_ok(p, self.grad, self.exp_avg, self.exp_avg_sq) and (
            self.col is None or p.ndim == 2
        )


def ddc_adam(
    blocks: list[AdamBlock], *, fused: bool | None = None
) -> list[int | torch.Tensor]:
    """One DDC Adam step over ``blocks`` (in place; each block's ``step`` is incremented).

    ``fused=None`` sends the blocks the core can take to it, in one call, and the rest through
    torch; ``fused=False`` takes the torch path for every block (which still runs a single
    gauged CPU block through the core's one-block kernel, as :func:`ddc_adam_update` does).
    Returns per block (in the order given) the number of coordinates refused by the check
    before commit (module docstring).
    """
    if fused is False:
        return _single_tensor_ddc_adam(blocks)
    core = [i for i, b in enumerate(blocks) if b.fusable()]
    rest = [i for i, b in enumerate(blocks) if not b.fusable()]
    out: list[int | torch.Tensor] = [0] * len(blocks)
    for i, n in zip(core, _fused_ddc_adam([blocks[i] for i in core])):
        out[i] = n
    for i, n in zip(rest, _single_tensor_ddc_adam([blocks[i] for i in rest])):
        out[i] = n
    return out


def _single_tensor_ddc_adam(blocks: list[AdamBlock]) -> list[int | torch.Tensor]:
    out: list[int | torch.Tensor] = []
    for b in blocks:
        kw = {"lr": b.lr, "beta1": b.beta1, "beta2": b.beta2, "eps": b.eps}
        kw.update(col_scale=b.col, decay=b.decay)
        args = (b.param, b.grad, b.exp_avg, b.exp_avg_sq, b.step, b.row)
        if b.rot is None:
            out.append(ddc_adam_update(*args, **kw))
        else:
            out.append(ddc_adam_block_update(*args, b.rot.axis, b.rot.segments, **kw))
    return out


def _core_block(b: AdamBlock) -> dict[str, Any]:
    """A block as the named structure ``_core.ddc_adam_update_many`` takes."""
    p = b.param
    block: dict[str, Any] = {
        "param": p.detach().__dlpack__(),
        "grad": b.grad.detach().__dlpack__(),
        "exp_avg": b.exp_avg.__dlpack__(),
        "exp_avg_sq": b.exp_avg_sq.__dlpack__(),
        "lr": float(b.lr),
        "beta1": float(b.beta1),
        "beta2": float(b.beta2),
        "eps": float(b.eps),
        "step": int(b.step.item()) + 1,
        "decay": float(b.decay),
    }
    if b.row is not None:
        block["scale"] = b.row.expand_as(p).__dlpack__()
    if b.col is not None:
        block["col_scale"] = b.col.__dlpack__()
    if b.rot is not None:
        block["rot_axis"] = b.rot.axis
        block["rot_segments"] = list(b.rot.segments)
    if not b.keep:
        block["keep"] = False
    return block


def _fused_ddc_adam(blocks: list[AdamBlock]) -> list[int]:
    """Every block in one call of the C++ core (off-gauge blocks with σ = 1: AdamW's formula in
    the same pass; rotated head blocks with their second moment shared per head). Returns the
    core's refused count per block."""
    if not blocks:
        return []
    refused = _core.ddc_adam_update_many([_core_block(b) for b in blocks])
    torch._foreach_add_([b.step for b in blocks], 1.0)
    return list(refused)
