"""DDCMuon's kernels: Muon's Newton–Schulz orthogonaliser and the Muon step in the invariant
coordinates (theory.md §6.8), and the rule of which weights take the Muon path."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import nn

from deadspec._attention import is_linear_like

__all__ = ["Scratch", "ddc_muon_update", "guarded_update", "hidden_matrices", "newton_schulz"]


class Scratch:
    """Work tensors kept from step to step, one per (role, shape, dtype, device): the Muon
    step's temporaries are written into them instead of into fresh allocations (on CPU a fresh
    multi-megabyte tensor costs its page faults on every step). Matrices are stepped one after
    another, so matrices of one shape share them; they are not optimizer state."""

    def __init__(self) -> None:
        self._pool: dict[tuple[str, tuple[int, ...], torch.dtype, torch.device], torch.Tensor] = {}

    def get(self, role: str, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The ``role`` tensor of ``like``'s shape and device (``dtype`` or ``like``'s),
        contiguous, its contents undefined."""
        dtype = like.dtype if dtype is None else dtype
        key = (role, tuple(like.shape), dtype, like.device)
        t = self._pool.get(key)
        if t is None:
            t = self._pool[key] = torch.empty(like.shape, dtype=dtype, device=like.device)
        return t


def newton_schulz(
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


def ddc_muon_update(
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
    tangent: torch.Tensor | None = None,
    shape: tuple[int, int] | None = None,
    whole: Callable[[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]], torch.Tensor]
    | None = None,
    scratch: Scratch | None = None,
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

    ``tangent`` (a boolean mask over the rows, with ``scale``): the rows that are a rescaling
    site's live producer rows. Their update ``u = s·O`` loses its radial part along ``x̃``,
    ``u_i ← u_i − (⟨u_i, x̃_i⟩/‖x̃_i‖²)·x̃_i``, so the step moves them along the unit sphere of
    the producer block and leaves their scale ρ to the caller's radial step (theory.md §6.8).

    A sharded parameter (FSDP2): ``param``, ``grad``, ``momentum_buffer``, ``scale`` and
    ``tangent`` are this rank's part, ``shape`` the whole matrix's, and ``whole(u, f)`` returns
    this rank's part of ``f`` applied to the whole matrix whose part is ``u`` (the
    orthogonalisation runs on whole matrices).
    """
    work = Scratch() if scratch is None else scratch
    if scale is None:
        momentum_buffer.lerp_(grad, 1 - momentum)
        upd = momentum_buffer
        if nesterov:
            upd = torch.lerp(grad, momentum_buffer, momentum, out=work.get("u", grad))
    else:
        g = torch.mul(grad, scale, out=work.get("u", grad))  # g̃; the Nesterov blend in place
        momentum_buffer.lerp_(g, 1 - momentum)
        upd = g.lerp_(momentum_buffer, momentum) if nesterov else momentum_buffer
    rows, cols = param.shape if shape is None else shape

    def orthogonalised(u: torch.Tensor) -> torch.Tensor:
        if blocks is None:
            return newton_schulz(u, ns_coefficients, ns_steps, ns_eps, ns_dtype)
        axis, ranges = blocks
        out = work.get("ns", u, ns_dtype)
        by_len: dict[int, list[int]] = {}
        for a, b in ranges:
            by_len.setdefault(b - a, []).append(a)
        for n, starts in by_len.items():
            r_b, c_b = (n, cols) if axis == 0 else (rows, n)
            if starts == list(range(0, u.shape[axis], n)):  # equal blocks tiling the axis
                blk = u.unflatten(axis, (-1, n)).movedim(axis, 0)
                o = newton_schulz(blk.contiguous(), ns_coefficients, ns_steps, ns_eps, ns_dtype)
                o.mul_(math.sqrt(max(r_b, c_b) / cols))
                out.unflatten(axis, (-1, n)).movedim(axis, 0).copy_(o)
                continue
            blk = torch.stack([u.narrow(axis, a, n) for a in starts])
            o = newton_schulz(blk, ns_coefficients, ns_steps, ns_eps, ns_dtype)
            o.mul_(math.sqrt(max(r_b, c_b) / cols))
            for a, ob in zip(starts, o):
                out.narrow(axis, a, n).copy_(ob)
        return out

    out = orthogonalised(upd) if whole is None else whole(upd, orthogonalised)
    adjusted = lr * math.sqrt(max(1, rows / cols)) if blocks is None else lr
    if scale is None:
        param.add_(out, alpha=-adjusted)
        return
    if out.dtype != param.dtype:
        out = work.get("out", param).copy_(out)
    if tangent is not None:
        # u_i ← u_i − (⟨u_i, x̃_i⟩/‖x̃_i‖²)·x̃_i on the tangent rows
        xt = torch.div(param, scale, out=work.get("xt", param))
        tiny = torch.finfo(xt.dtype).tiny
        sq = torch.mul(xt, xt, out=work.get("prod", param)).sum(1)
        coef = torch.mul(out, xt, out=work.get("prod", param)).sum(1).div_(sq.clamp_min(tiny))
        coef = torch.where(tangent.to(coef.device) & (sq > tiny), coef, torch.zeros_like(coef))
        out.addcmul_(coef.reshape(-1, 1), xt, value=-1)
    param.addcmul_(out, scale, value=-adjusted)


def hidden_matrices(model: nn.Module, heads: Iterable[str]) -> set[int]:
    """``id`` s of the weights that take the Muon path: every ``nn.Linear`` (and Conv1D) weight
    and the
    input projections of ``nn.MultiheadAttention``, except the ``heads`` modules' and weights
    shared with an embedding (tied)."""
    heads = set(heads)
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
        if is_linear_like(m):  # nn.Linear, Hugging Face Conv1D
            out.add(id(m.weight))
        elif isinstance(m, nn.MultiheadAttention):
            for w in (m.in_proj_weight, m.q_proj_weight, m.k_proj_weight, m.v_proj_weight):
                if w is not None:
                    out.add(id(w))
    return out - embedded


def guarded_update(
    param: torch.Tensor,
    momentum_buffer: torch.Tensor,
    update: Callable[[], None],
    scratch: Scratch | None = None,
) -> int | torch.Tensor:
    """Run ``update()``, which writes ``param`` and ``momentum_buffer`` in place, checked before
    commit: a coordinate where either comes out non-finite gets its pre-step values back (a copy
    of both is kept for the call). Returns how many coordinates were refused: an int on CPU,
    where one reduction over each tensor tells the common all-finite case apart (a sum is
    finite iff every element is, bar an overflow of the sum itself, which takes the exact
    check), else a 0-dim tensor (no host synchronisation)."""
    new = (param, momentum_buffer)
    work = Scratch() if scratch is None else scratch
    old = [work.get(f"old{k}", t).copy_(t) for k, t in enumerate(new)]
    update()
    if param.device.type == "cpu":
        acc = torch.promote_types(param.dtype, torch.float32)
        total = param.sum(dtype=acc) + momentum_buffer.sum(dtype=acc)
        if math.isfinite(float(total)):
            return 0
    ok = torch.isfinite(param) & torch.isfinite(momentum_buffer)
    for t, o in zip(new, old):
        t.copy_(torch.where(ok, t, o))
    return (~ok).sum()
