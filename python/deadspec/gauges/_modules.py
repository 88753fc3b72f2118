"""Module and tensor helpers of the gauges: name resolution, norms, shared parameters, group
elements and their action on weights (rows scaled up, columns scaled down)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from deadspec._attention import reads_columns
from deadspec._usercode import user_code
from deadspec._util import output_logits, unwrap_parallel

__all__ = [
    "Ref",
    "as_inputs",
    "as_tuple",
    "check_data",
    "check_refs",
    "check_gauges",
    "check_generator",
    "check_inputs",
    "check_module",
    "heads_map",
    "is_norm",
    "join",
    "norm_params",
    "observe",
    "positive_element",
    "positive_vector",
    "random_orthogonal",
    "require_linear",
    "require_linear_like",
    "require_unshared",
    "resolve",
    "scale_cols_",
    "scale_rows_",
    "shared_param_ids",
    "units_index",
]


Ref = str | nn.Module




def is_norm(m: nn.Module) -> bool:
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


def norm_params(m: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    return m.weight, getattr(m, "bias", None)


def heads_map(m: nn.Module) -> dict[str, Any] | None:
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


def join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def check_gauges(fn: str, gauges: Any) -> list[Any]:
    """``gauges`` as a list, each a :class:`~deadspec.gauges.Gauge` (TypeError otherwise)."""
    from deadspec.gauges.kinds import Gauge

    if isinstance(gauges, (str, bytes, Gauge)) or not hasattr(gauges, "__iter__"):
        raise TypeError(
            f"deadspec.{fn}: gauges must be a sequence of deadspec.gauges.Gauge objects, got "
            f"{type(gauges).__name__}"
        )
    out = list(gauges)
    for g in out:
        if not isinstance(g, Gauge):
            raise TypeError(
                f"deadspec.{fn}: gauges must hold deadspec.gauges.Gauge objects, got "
                f"{type(g).__name__}"
            )
    return out


def check_module(fn: str, model: Any) -> nn.Module:
    """``model`` (a ``torch.compile`` d one through the module it compiles), else TypeError."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"deadspec.{fn}: model must be an nn.Module, got {type(model).__name__}")
    return unwrap_parallel(model)


def check_generator(fn: str, generator: Any) -> None:
    """TypeError unless ``generator`` is None or a ``torch.Generator``."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"deadspec.{fn}: generator must be a torch.Generator or None, got "
            f"{type(generator).__name__}"
        )


def check_inputs(fn: str, inputs: Any) -> None:
    """TypeError unless ``inputs`` is a tensor or a non-empty tuple/list of tensors."""
    ok = isinstance(inputs, torch.Tensor) or (
        isinstance(inputs, (tuple, list)) and inputs and all(
            isinstance(a, torch.Tensor) for a in inputs
        )
    )
    if not ok:
        raise TypeError(
            f"deadspec.{fn}: inputs must be a torch.Tensor or a non-empty tuple of tensors "
            f"(passed as model(*inputs)), got {type(inputs).__name__}"
        )


def check_data(fn: str, inputs: Any, targets: Any, loss_fn: Any, generator: Any) -> None:
    """The types of a numerical check's ``inputs`` (None passes), ``targets``, ``loss_fn`` and
    ``generator`` (:meth:`Gauge.check`, :func:`discover`), before the model runs."""
    if inputs is not None:
        check_inputs(fn, inputs)
    if targets is not None and not isinstance(targets, torch.Tensor):
        raise TypeError(
            f"deadspec.{fn}: targets must be a torch.Tensor or None, got {type(targets).__name__}"
        )
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError(
            f"deadspec.{fn}: loss_fn must be callable or None, got {type(loss_fn).__name__}"
        )
    check_generator(fn, generator)


def resolve(model: nn.Module, ref: Ref, fn: str, arg: str) -> tuple[str, nn.Module]:
    model = check_module(fn, model)  # names as in the uncompiled model
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


def check_refs(kind: str, arg: str, ref: Any, many: bool = True) -> Any:
    """``ref`` (a module name or a module; with ``many`` also a sequence of them, a list made
    a tuple); TypeError naming ``deadspec.<kind>`` and ``arg`` for anything else."""
    if isinstance(ref, (str, nn.Module)):
        return ref
    if many and isinstance(ref, (list, tuple)) and all(
        isinstance(r, (str, nn.Module)) for r in ref
    ):
        return tuple(ref)
    what = "a module name (str), an nn.Module" + (" or a sequence of them" if many else "")
    raise TypeError(f"deadspec.{kind}: {arg} must be {what}, got {type(ref).__name__}")


def as_tuple(ref: Ref | Sequence[Ref]) -> tuple[Ref, ...]:
    if isinstance(ref, (str, nn.Module)):
        return (ref,)
    return tuple(ref)


def shared_param_ids(model: nn.Module) -> set[int]:
    seen: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        seen[id(p)] = seen.get(id(p), 0) + 1
    return {k for k, v in seen.items() if v > 1}


def require_linear(fn: str, arg: str, name: str, mod: nn.Module) -> nn.Linear:
    if not isinstance(mod, nn.Linear):
        # the declared gauge does not hold on this model: ValueError, as documented
        raise ValueError(  # noqa: TRY004
            f"deadspec.{fn}: {arg} must be an nn.Linear, got {type(mod).__name__} {name!r}"
        )
    return mod


def require_linear_like(fn: str, arg: str, name: str, mod: nn.Module) -> nn.Module:
    """A consumer: an ``nn.Linear``, a Hugging Face ``Conv1D`` or an ``nn.MultiheadAttention``
    with a packed ``in_proj_weight`` (:func:`deadspec._attention.reads_columns`)."""
    if not reads_columns(mod):
        raise ValueError(  # noqa: TRY004
            f"deadspec.{fn}: {arg} must be an nn.Linear (or a Hugging Face Conv1D, or an "
            f"nn.MultiheadAttention with a packed in_proj_weight), got {type(mod).__name__} "
            f"{name!r}"
        )
    return mod


def require_unshared(
    fn: str, name: str, params: Iterable[torch.Tensor | None], shared: set[int]
) -> None:
    for p in params:
        if p is not None and id(p) in shared:
            raise ValueError(
                f"deadspec.{fn}: the parameters of {name!r} must not be shared with another "
                f"module (tied weights break the gauge), got a shared parameter"
            )


def units_index(fn: str, units: Any, h: int) -> torch.Tensor | None:
    if units is None:
        return None
    try:
        idx = torch.as_tensor(units)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(
            f"deadspec.{fn}: units must be integer indices or a bool mask, got "
            f"{type(units).__name__} {units!r}"
        ) from None
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


def positive_vector(kind: str, element: Any, dim: int) -> torch.Tensor:
    """A group element of a rescaling gauge as float64, checked: shape (dim,), all entries > 0."""
    try:
        c = torch.as_tensor(element, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(
            f"deadspec.{kind}.apply: element must be a positive vector of shape ({dim},) (a "
            f"tensor, array or sequence of numbers), got {type(element).__name__}"
        ) from None
    if c.shape != (dim,) or not bool((c > 0).all()):
        least = f", smallest entry {float(c.min()):g}" if c.numel() else ""
        raise ValueError(
            f"deadspec.{kind}.apply: element must be a positive vector of shape ({dim},), "
            f"got shape {tuple(c.shape)}{least}"
        )
    return c


def positive_element(n: int, generator: torch.Generator | None, spread: float) -> torch.Tensor:
    u = torch.rand(n, generator=generator, dtype=torch.float64) * 2.0 - 1.0
    return torch.exp(spread * u)


def as_inputs(inputs: Any) -> tuple[Any, ...]:
    args = inputs if isinstance(inputs, (tuple, list)) else (inputs,)
    return tuple(
        a.to(torch.float64) if isinstance(a, torch.Tensor) and a.is_floating_point() else a
        for a in args
    )


def observe(out: Any, targets: Any, loss_fn: Any, logit: bool, fn: str) -> torch.Tensor:
    """What a numerical check compares: ``loss_fn(out, targets)`` (a scalar), else the default
    loss of the targets (MSE for floating, mean cross-entropy for integer ones), else the
    outputs (their ``log_softmax`` for a logit shift). ``out`` is the model's output (the first
    item of a tuple); ``targets`` were checked by :func:`check_data`."""
    out = output_logits(out)
    if isinstance(out, (tuple, list)) and out:
        out = out[0]
    if not isinstance(out, torch.Tensor) or not out.is_floating_point():
        got = f"a tensor of dtype {out.dtype}" if isinstance(out, torch.Tensor) else type(out)
        raise TypeError(
            f"deadspec.{fn}: the model output must be a floating tensor (or a tuple whose first "
            f"item is one), got {getattr(got, '__name__', got)}"
        )
    if loss_fn is not None:
        t = targets.to(torch.float64) if targets is not None and targets.is_floating_point() else (
            targets
        )
        with user_code(fn, "loss_fn(outputs, targets)"):
            loss = loss_fn(out, t)
        try:
            value = torch.as_tensor(loss, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError):
            value = None
        if value is None or value.numel() != 1:
            got = type(loss).__name__ if value is None else f"shape {tuple(value.shape)}"
            raise TypeError(
                f"deadspec.{fn}: loss_fn must return a scalar (a number or a one-element tensor: "
                f"reduce the batch), got {got}"
            )
        return value.reshape(1)
    if targets is not None:
        return _default_loss(out, targets, fn)
    if logit:
        return torch.log_softmax(out, dim=-1)
    return out


def _default_loss(out: torch.Tensor, targets: torch.Tensor, fn: str) -> torch.Tensor:
    """MSE to floating targets (as many entries as the output), mean cross-entropy of integer
    class indices (one per row of the output's last axis; -100 is ignored, as in torch)."""
    if targets.dtype == torch.bool or targets.is_complex():
        raise TypeError(f"deadspec.{fn}: targets must be integer or float, got {targets.dtype}")
    if targets.is_floating_point():
        if targets.numel() != out.numel():
            raise ValueError(
                f"deadspec.{fn}: floating targets (the MSE) must have as many entries as the "
                f"output {tuple(out.shape)}, got shape {tuple(targets.shape)}"
            )
        return F.mse_loss(out, targets.reshape(out.shape).to(out.dtype)).reshape(1)
    c = int(out.shape[-1]) if out.ndim else 0
    if c == 0 or targets.numel() * c != out.numel():
        raise ValueError(
            f"deadspec.{fn}: integer targets (the cross-entropy) must hold one class index per "
            f"row of the output's last axis, got output {tuple(out.shape)} and targets "
            f"{tuple(targets.shape)}"
        )
    flat = targets.reshape(-1).long()
    bad = (flat != -100) & ((flat < 0) | (flat >= c))
    if bool(bad.any()):
        raise ValueError(
            f"deadspec.{fn}: integer targets must be class indices in [0, {c}), got values in "
            f"[{int(flat.min())}, {int(flat.max())}]"
        )
    return F.cross_entropy(out.reshape(-1, c), flat).reshape(1)


def scale_rows_(w: torch.Tensor, idx: torch.Tensor | None, c: torch.Tensor) -> None:
    c = c.to(dtype=w.dtype, device=w.device)
    shape = (-1,) + (1,) * (w.ndim - 1)
    if idx is None:
        w.mul_(c.reshape(shape))
    else:
        idx = idx.to(w.device)
        w[idx] = w[idx] * c.reshape(shape)


def scale_cols_(w: torch.Tensor, idx: torch.Tensor | None, c: torch.Tensor) -> None:
    c = c.to(dtype=w.dtype, device=w.device)
    if idx is None:
        w.div_(c.reshape(1, -1))
    else:
        idx = idx.to(w.device)
        w[:, idx] = w[:, idx] / c.reshape(1, -1)


def random_orthogonal(h: int, d: int, generator: torch.Generator | None) -> torch.Tensor:
    """h random d×d orthogonal matrices (Haar: QR of a Gaussian with the signs fixed)."""
    a = torch.randn(h, d, d, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(a)
    return q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)
