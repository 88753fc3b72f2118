"""Read the activation and Fisher-Gram spectra of a torch model's layers.

Contract
--------
- Layers are addressed by their ``model.named_modules()`` names. The **activation side** is
  defined for any module whose output is a tensor: the rows of the activation matrix are the
  module's outputs (the last axis is the feature axis; for ``nn.Conv*`` modules the channel axis
  1 is moved last). Sequence outputs ``B×T×h`` give one row per token (``pool="none"``) or one
  row per sample (``pool="mean"``).
- The **Fisher side** is defined for linear-like layers (``nn.Linear``; Hugging Face
  ``Conv1D``, whose weight is stored ``in × out``: the Gram of the transposed per-sample
  gradients is the same; the q/k/v/out projections of ``nn.MultiheadAttention``, whose
  ``forward`` is replaced during the read by an equal one written with ``F.linear`` per
  projection) and for ``nn.Embedding`` (per-sample gradients are sparse rows of the table,
  summed per token). Any other module gets ``LayerReading.fisher = None`` (no error). It is the
  per-sample-gradient Fisher-Gram ``K_ij = <g_i, g_j>/N`` of the layer's weight (and bias, if
  present), built by :func:`deadspec.ops.fisher_gram` from the layer's inputs and the gradients
  of each sample's own loss with respect to the layer's output; for sequences
  ``g_i = Σ_t δ_it a_itᵀ`` and the route (block sums vs materialised per-sample gradients) is
  chosen by operation count (theory.md §2).
- **Heads** (``heads=True``): every attention head of a q/k/v projection (a block of output
  rows) or of an output projection (a block of input columns) is read as its own entry
  ``"<projection>[h=i]"``; the head entries share the capture of their projection.
- **Gauges** (``gauges=True``): exact symmetry zeros are excluded and reported, never counted
  as dead directions: the LayerNorm kernel γ⁻¹ (the centred Gram is read at a LayerNorm
  output) and the shift ``W ↦ W + 1vᵀ`` of a layer whose output gradients sum to zero (the
  cross-entropy logit shift).
- The model runs **in whatever train/eval mode it is in** (call ``model.eval()`` first for
  deterministic readings with dropout/batch-norm). The module modes, every parameter's
  ``.grad`` and ``requires_grad`` and every buffer's value (batch-norm running statistics
  updated by a train-mode forward) are restored on exit, and every hook is removed, also when
  an exception is raised. Parameter ``.grad`` fields are never written: the output gradients
  come from ``torch.autograd.grad`` on zero "probe" tensors added to the layer outputs.
- The model and data may live on any device. The core ops read CPU memory, so the captured
  activation rows (or the ``h×h`` running Gram), layer inputs and output gradients are copied
  to the host batch by batch; the forward/backward passes stay on the model's device.

Memory
------
Activation side, per layer: ``min(R, h)·h`` numbers, R the total number of activation rows
(the ``h×h`` :class:`~deadspec.ops.GramAccumulator` when ``R ≥ h``, else the ``R×h`` rows
themselves, from which the ``R×R`` Gram is formed). Either way the answer does not depend on
``batch_size``. Fisher side, per ``nn.Linear`` layer: ``K`` couples samples from different
batches, so the layer's (detached) inputs and output gradients are kept for the whole data
set, ``O(N·T·(d_in + d_out))`` numbers, and :func:`~deadspec.ops.fisher_gram` is called once on
their concatenation.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from deadspec.ops import GramAccumulator, Spectrum, fisher_gram, fisher_route, gram, spectrum

__all__ = ["GaugeZero", "LayerReading", "Reading", "TokenCrossEntropy", "read"]

_LABELS = ("observed", "sampled")
_POOLS = ("none", "mean")
_TASKS = ("classification", "regression")
_RECORD_KEYS = (
    "logdet_plus",
    "active",
    "structural_zeros",
    "dead_count",
    "clipped",
    "lambda_min",
    "effective_rank",
    "participation_ratio",
    "condition_number",
)


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GaugeZero:
    """An exact gauge (symmetry) zero found at a layer, reported and excluded from a spectrum.

    Attributes
    ----------
    kind : str
        ``"layernorm-kernel"``: the output of a LayerNorm satisfies ``(y − ȳ)·γ⁻¹ = 0`` for every
        input, so the centred activation Gram has γ⁻¹ in its kernel (theory.md §1).
        ``"logit-shift"``: the per-sample output gradients δ of the logit layer sum to 0 over
        the classes (cross-entropy), so the weight directions ``W ↦ W + 1vᵀ`` (and ``b ↦ b +
        c1``) are exact zeros of the Fisher. ``"mean-shift"``: the same identity found at a
        layer that is not the logit layer (its output feeds a normalisation).
    side : str
        ``"activation"`` or ``"fisher"``.
    dim : int
        Number of zero directions: output-space directions on the activation side, parameter
        directions (``d_in`` + 1 with a bias) on the Fisher side.
    residual : float
        Size of the gauge component before it was projected out, relative to the matrix
        scale (``uᵀGu/μ₁`` on the activation side, ``max|Σ_k δ_k| / max|δ|`` on the Fisher side):
        round-off for an exact gauge.
    vectors : np.ndarray or None
        Activation side: ``h×dim`` orthonormal columns spanning the kernel (γ⁻¹/‖γ⁻¹‖).
        Fisher side: the output-space direction ``1/√d_out`` (``d_out×1``).
    """

    kind: str
    side: str
    dim: int
    residual: float
    vectors: np.ndarray | None = None

    def to_dict(self) -> dict[str, Any]:
        """Scalars only: ``kind``, ``side``, ``dim``, ``residual``."""
        return {
            "kind": self.kind,
            "side": self.side,
            "dim": int(self.dim),
            "residual": float(self.residual),
        }


@dataclasses.dataclass(frozen=True, repr=False)
class LayerReading:
    """Spectra read at one layer.

    Attributes
    ----------
    name : str
        The layer's ``named_modules()`` name.
    activation : Spectrum
        Spectrum of the activation Gram (``h×h``, or ``R×R`` when there are fewer rows R than
        features h; the non-zero spectrum is the same).
    fisher : Spectrum or None
        Spectrum of the ``N×N`` per-sample-gradient Fisher-Gram; None for modules other than
        ``nn.Linear`` or when ``fisher=False``.
    n_samples : int
        Number of samples N.
    n_rows : int
        Number of rows R of the activation matrix (``N·T`` for token rows, else N).
    route : str or None
        How the Fisher-Gram was formed: ``"block-sum"`` (Hadamard products of the input and
        output-gradient Grams, block-summed over positions; the only route for T = 1),
        ``"materialize"`` (per-sample gradients formed in column chunks), ``"embedding"``
        (sparse per-sample gradient rows of an ``nn.Embedding``); None without a Fisher side.
    gauges : tuple of GaugeZero
        Exact gauge zeros found at this layer and excluded from the spectra (see
        :class:`GaugeZero`): the LayerNorm kernel γ⁻¹ on the activation side, the cross-entropy
        logit shift (or the mean shift of a layer feeding a normalisation) on the Fisher side.
        They are structural zeros, not dead directions.
    """

    name: str
    activation: Spectrum
    fisher: Spectrum | None
    n_samples: int
    n_rows: int = 0
    route: str | None = None
    gauges: tuple[GaugeZero, ...] = ()

    def __repr__(self) -> str:
        def side(s: Spectrum | None) -> str:
            if s is None:
                return "None"
            return (
                f"<dim={len(s.eigenvalues)} active={s.active} dead={s.dead_count} "
                f"logdet+={s.logdet_plus:.4g}>"
            )

        return (
            f"LayerReading(name={self.name!r}, n_samples={self.n_samples}, "
            f"activation={side(self.activation)}, fisher={side(self.fisher)})"
        )


class Reading(Mapping):
    """The result of :func:`read`: a read-only mapping ``layer name -> LayerReading``.

    Iteration follows the order of the requested layers.

    Attributes
    ----------
    n_samples : int
        Number of samples read.
    labels : str
        ``"observed"`` or ``"sampled"`` (labels used on the Fisher side).
    pool : str
        Row convention of sequence outputs (``"none"`` or ``"mean"``).
    center : bool
        Whether the activation Grams were centred.
    joint_fisher : Spectrum or None
        The joint Fisher-Gram reading of ``read(..., joint=True)`` (None otherwise).
    joint_layers : tuple of str
        The layers summed into it.
    """

    def __init__(
        self,
        layers: Mapping[str, LayerReading],
        *,
        n_samples: int,
        labels: str = "observed",
        pool: str = "none",
        center: bool = False,
        joint_fisher: Any = None,
        joint_layers: tuple[str, ...] = (),
    ) -> None:
        self.joint_fisher = joint_fisher
        self.joint_layers = tuple(joint_layers)
        self._layers = dict(layers)
        self.n_samples = int(n_samples)
        self.labels = labels
        self.pool = pool
        self.center = bool(center)

    def __getitem__(self, name: str) -> LayerReading:
        try:
            return self._layers[name]
        except KeyError:
            raise KeyError(
                f"deadspec.Reading: no layer {name!r}; layers read: {list(self._layers)}"
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._layers)

    def __len__(self) -> int:
        return len(self._layers)

    def to_records(self) -> list[dict[str, Any]]:
        """One flat dict per layer × side (the side ``"fisher"`` only where it was read).

        Returns
        -------
        list of dict
            Keys: ``layer``, ``side`` (``"activation"`` | ``"fisher"``), ``n`` (rows of the
            activation matrix, or samples for the Fisher side), ``dim`` (size of the matrix
            whose spectrum was read), ``logdet_plus``, ``active``, ``structural_zeros``,
            ``dead_count``, ``clipped``, ``lambda_min``, ``effective_rank``,
            ``participation_ratio``, ``condition_number``. Plain Python scalars, ready for
            ``pandas.DataFrame`` or ``csv.DictWriter``. A joint Fisher reading comes last, as
            layer ``"joint"``.
        """
        records: list[dict[str, Any]] = []
        entries: list[tuple[str, list[tuple[str, Any, int]]]] = []
        for name, lr in self._layers.items():
            sides = [("activation", lr.activation, lr.n_rows)]
            if lr.fisher is not None:
                sides.append(("fisher", lr.fisher, lr.n_samples))
            entries.append((name, sides))
        if self.joint_fisher is not None:
            entries.append(("joint", [("fisher", self.joint_fisher, self.n_samples)]))
        for name, sides in entries:
            for side, s, n in sides:
                rec: dict[str, Any] = {
                    "layer": name,
                    "side": side,
                    "n": int(n),
                    "dim": len(s.eigenvalues),
                }
                for key in _RECORD_KEYS:
                    value = getattr(s, key)
                    rec[key] = int(value) if isinstance(value, (int, np.integer)) else float(value)
                records.append(rec)
        return records

    def gauge_records(self) -> list[dict[str, Any]]:
        """One dict per gauge found: ``layer`` plus the keys of :meth:`GaugeZero.to_dict`."""
        return [
            {"layer": name, **g.to_dict()} for name, lr in self._layers.items() for g in lr.gauges
        ]

    def __repr__(self) -> str:
        head = (
            f"Reading(n_samples={self.n_samples}, labels={self.labels!r}, pool={self.pool!r}, "
            f"center={self.center})"
        )
        cols = ["layer", "side", "n", "dim", "active", "dead", "logdet+", "lambda_min", "eff_rank"]
        rows = []
        for r in self.to_records():
            rows.append(
                [
                    r["layer"] or "<root>",
                    r["side"],
                    str(r["n"]),
                    str(r["dim"]),
                    str(r["active"]),
                    str(r["dead_count"]),
                    f"{r['logdet_plus']:.4g}",
                    f"{r['lambda_min']:.3e}",
                    f"{r['effective_rank']:.3g}",
                ]
            )
        if not rows:
            return head
        widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(cols)]
        left = {0, 1}

        def fmt(row: Sequence[str]) -> str:
            return "  ".join(
                cell.ljust(w) if i in left else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(row, widths))
            ).rstrip()

        lines = [head, fmt(cols)] + [fmt(row) for row in rows]
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Private helpers shared with deadspec.approach
# --------------------------------------------------------------------------------------------


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _as_input_tuple(inputs: Any, fn: str) -> tuple[tuple[torch.Tensor, ...], int]:
    """Normalise ``inputs`` (a tensor or a tuple/list of tensors) to a tuple and its N."""
    if isinstance(inputs, torch.Tensor):
        tup: tuple[torch.Tensor, ...] = (inputs,)
    elif (
        isinstance(inputs, (tuple, list))
        and inputs
        and all(isinstance(x, torch.Tensor) for x in inputs)
    ):
        tup = tuple(inputs)
    else:
        raise TypeError(
            f"deadspec.{fn}: inputs must be a torch.Tensor or a non-empty tuple of tensors "
            f"(passed as model(*inputs)), got {type(inputs).__name__}"
        )
    for x in tup:
        if x.ndim == 0:
            raise ValueError(f"deadspec.{fn}: inputs must have a batch axis, got a 0-d tensor")
    n = tup[0].shape[0]
    if any(x.shape[0] != n for x in tup):
        raise ValueError(
            f"deadspec.{fn}: all inputs must share the batch size, got "
            f"{[tuple(x.shape) for x in tup]}"
        )
    if n == 0:
        raise ValueError(f"deadspec.{fn}: inputs must hold at least one sample, got N=0")
    return tup, int(n)


def _batch_slices(n: int, batch_size: int | None, fn: str) -> list[slice]:
    if batch_size is None:
        return [slice(0, n)]
    if (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, (int, np.integer))
        or batch_size < 1
    ):
        raise ValueError(
            f"deadspec.{fn}: batch_size must be a positive int or None, got {batch_size!r}"
        )
    b = int(batch_size)
    return [slice(i, min(i + b, n)) for i in range(0, n, b)]


def _names_list(named: Mapping[str, nn.Module]) -> str:
    return ", ".join(f"{(n or '<root>')!s} ({type(m).__name__})" for n, m in named.items())


def _infer_task(
    targets: torch.Tensor | None, loss_fn: Callable | None, task: str | None, fn: str
) -> str:
    if task is not None:
        if task not in _TASKS:
            raise ValueError(f"deadspec.{fn}: task must be one of {_TASKS} or None, got {task!r}")
        return task
    if targets is not None:
        return "regression" if targets.is_floating_point() else "classification"
    if isinstance(loss_fn, (nn.CrossEntropyLoss, nn.NLLLoss)):
        return "classification"
    if isinstance(loss_fn, (nn.MSELoss, nn.GaussianNLLLoss)):
        return "regression"
    raise ValueError(
        f"deadspec.{fn}: cannot tell a classification from a regression model: pass "
        f"task='classification' or 'regression', or targets (their dtype decides), got "
        f"targets=None, loss_fn={loss_fn!r}"
    )


def _default_loss(output: torch.Tensor, targets: torch.Tensor, fn: str) -> torch.Tensor:
    """Per-sample loss of the documented default convention, shape (N,)."""
    n = output.shape[0]
    if targets.dtype == torch.bool or targets.is_complex():
        raise TypeError(f"deadspec.{fn}: targets must be integer or float, got {targets.dtype}")
    if not targets.is_floating_point():
        if output.ndim != targets.ndim + 1 or output.shape[:-1] != targets.shape:
            raise ValueError(
                f"deadspec.{fn}: integer targets mean cross-entropy on logits of shape "
                f"targets.shape + (classes,), got output {tuple(output.shape)} and targets "
                f"{tuple(targets.shape)}"
            )
        c = output.shape[-1]
        per = F.cross_entropy(output.reshape(-1, c), targets.reshape(-1).long(), reduction="none")
        return per.reshape(n, -1).sum(1)
    if output.shape != targets.shape:
        raise ValueError(
            f"deadspec.{fn}: float targets mean the Gaussian loss 0.5·||y - f||² and must have "
            f"the output's shape {tuple(output.shape)}, got {tuple(targets.shape)}"
        )
    return 0.5 * (targets - output).pow(2).reshape(n, -1).sum(1)


def _per_sample_loss(
    output: Any, targets: torch.Tensor, loss_fn: Callable | None, fn: str
) -> torch.Tensor:
    if not isinstance(output, torch.Tensor):
        raise TypeError(
            f"deadspec.{fn}: the model output must be a tensor for the loss, got "
            f"{type(output).__name__} (wrap the model so that it returns the logits/predictions)"
        )
    n = output.shape[0]
    if loss_fn is None:
        return _default_loss(output, targets, fn)
    loss = loss_fn(output, targets)
    if not isinstance(loss, torch.Tensor):
        raise TypeError(f"deadspec.{fn}: loss_fn must return a tensor, got {type(loss).__name__}")
    if loss.ndim == 0:
        raise ValueError(
            f"deadspec.{fn}: loss_fn must return per-sample losses of shape (N,) "
            f'(construct it with reduction="none"), got a scalar'
        )
    if tuple(loss.shape) != (n,):
        raise ValueError(
            f"deadspec.{fn}: loss_fn must return per-sample losses of shape ({n},) "
            f'(reduction="none"; sum over positions/outputs per sample), got {tuple(loss.shape)}'
        )
    return loss


def _sample_targets(output: torch.Tensor, task: str, generator: torch.Generator) -> torch.Tensor:
    """Targets drawn from the model's predictive distribution (the true Fisher)."""
    out = output.detach()
    if task == "classification":
        c = out.shape[-1]
        probs = torch.softmax(out.double(), dim=-1).reshape(-1, c)
        y = torch.multinomial(probs, 1, replacement=True, generator=generator)
        return y.reshape(out.shape[:-1])
    noise = torch.randn(out.shape, generator=generator, dtype=out.dtype, device=out.device)
    return out + noise


def _make_generator(seed: int | None, device: torch.device) -> torch.Generator:
    g = torch.Generator(device=device)
    if seed is None:
        g.seed()
    else:
        g.manual_seed(int(seed))
    return g


class _ModelState:
    """Snapshot of modes, grads, requires_grad and buffers; ``restore()`` puts them back."""

    def __init__(self, model: nn.Module) -> None:
        self.modes = [(m, m.training) for m in model.modules()]
        self.params = [(p, p.requires_grad, p.grad) for p in model.parameters()]
        self.buffers: list[tuple[nn.Module, str, torch.Tensor, torch.Tensor]] = []
        # A train-mode forward may update buffers (batch-norm running statistics).
        if any(training for _, training in self.modes):
            for m in model.modules():
                for key, buf in m._buffers.items():
                    if buf is not None:
                        self.buffers.append((m, key, buf, buf.detach().clone()))

    def restore(self) -> None:
        for m, training in self.modes:
            m.training = training
        for p, requires_grad, grad in self.params:
            if p.requires_grad != requires_grad:
                p.requires_grad_(requires_grad)
            if p.grad is not grad:
                p.grad = grad
        with torch.no_grad():
            for m, key, buf, saved in self.buffers:
                m._buffers[key] = buf
                buf.copy_(saved)


def _progress(iterable: Any, enabled: bool | None, desc: str, total: int | None = None) -> Any:
    from tqdm.auto import tqdm

    disable = (not sys.stderr.isatty()) if enabled is None else (not enabled)
    return tqdm(iterable, desc=desc, total=total, disable=disable, leave=False)


def _activation_rows(
    out: torch.Tensor, module: nn.Module, pool: str, name: str, fn: str
) -> torch.Tensor:
    if not isinstance(out, torch.Tensor):
        raise TypeError(
            f"deadspec.{fn}: layer {name!r} ({type(module).__name__}) must output a tensor for "
            f"the activation side, got {type(out).__name__}"
        )
    if not out.is_floating_point():
        raise TypeError(
            f"deadspec.{fn}: layer {name!r} output must be floating point, got {out.dtype}"
        )
    x = out
    if isinstance(module, nn.modules.conv._ConvNd) and x.ndim >= 3:
        x = x.movedim(1, -1)  # channels last: one row per sample × position
    if x.ndim < 2:
        raise ValueError(
            f"deadspec.{fn}: layer {name!r} output must be batched (N×h or N×T×h), "
            f"got shape {tuple(out.shape)}"
        )
    if x.ndim == 2:
        return x
    b, h = x.shape[0], x.shape[-1]
    x = x.reshape(b, -1, h)
    if pool == "mean":
        return x.mean(dim=1)
    return x.reshape(-1, h)


def _check_finite(x: torch.Tensor, what: str, name: str, fn: str) -> None:
    # A finite sum means every entry is finite (NaN/Inf propagate); only an overflowing sum
    # needs the elementwise test. One reduction instead of a full-size boolean temporary.
    if x.numel() and bool(torch.isfinite(x.sum())):
        return
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"deadspec.{fn}: {what} of layer {name!r} must be finite, got NaN/Inf")


# --------------------------------------------------------------------------------------------
# Linear-like layers, attention heads, sequence losses
# --------------------------------------------------------------------------------------------


def _is_conv1d(m: nn.Module) -> bool:
    """Hugging Face ``Conv1D``: ``y = x @ W + b`` with W stored ``in × out`` (GPT-2)."""
    w = getattr(m, "weight", None)
    return (
        type(m).__name__ == "Conv1D"
        and isinstance(w, torch.Tensor)
        and w.ndim == 2
        and hasattr(m, "nf")
    )


def _module_kind(m: nn.Module) -> str:
    if isinstance(m, nn.Linear):
        return "linear"
    if _is_conv1d(m):
        return "conv1d"
    if isinstance(m, nn.Embedding):
        return "embedding"
    if isinstance(m, nn.MultiheadAttention):
        return "mha"
    return "other"


def _weight_out_in(m: nn.Module) -> torch.Tensor:
    """The weight of a linear-like module as a ``d_out × d_in`` matrix (a view)."""
    return m.weight.T if _is_conv1d(m) else m.weight


class TokenCrossEntropy:
    """Per-sample cross-entropy of a sequence model: ``(N, T, V)`` logits, ``(N, T)`` targets.

    ``loss_i = Σ_t CE(logits_it, y_it)`` (``reduction="sum"``, the default: each token's loss is
    a term of the sample's log-likelihood, the convention of :func:`read`'s default loss) or the
    mean over the sample's counted tokens (``reduction="mean"``: scales sample i's gradient by
    1/T_i). Tokens whose target equals ``ignore_index`` do not count.

    Parameters
    ----------
    reduction : {"sum", "mean"}
        Over the positions of one sample.
    shift : bool
        Next-token language modelling with ``targets = input_ids`` (Hugging Face ``labels``
        convention): the logits at position t are scored against the target at t + 1, i.e.
        ``logits[:, :-1]`` against ``targets[:, 1:]``. With ``labels="sampled"``, :func:`read`
        draws the token at t + 1 from the logits at t.
    ignore_index : int
        Target value that is skipped (default -100, as in torch and Hugging Face).

    Examples
    --------
    >>> import torch
    >>> loss_fn = TokenCrossEntropy(shift=True)
    >>> logits, ids = torch.zeros(2, 4, 5), torch.zeros(2, 4, dtype=torch.long)
    >>> loss_fn(logits, ids).shape
    torch.Size([2])
    """

    def __init__(
        self, reduction: str = "sum", *, shift: bool = False, ignore_index: int = -100
    ) -> None:
        if reduction not in ("sum", "mean"):
            raise ValueError(
                f"deadspec.TokenCrossEntropy: reduction must be 'sum' or 'mean', got {reduction!r}"
            )
        self.reduction = reduction
        self.shift = bool(shift)
        self.ignore_index = int(ignore_index)

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if logits.ndim != 3 or targets.shape != logits.shape[:2]:
            raise ValueError(
                f"deadspec.TokenCrossEntropy: logits must be (N, T, V) and targets (N, T), got "
                f"{tuple(logits.shape)} and {tuple(targets.shape)}"
            )
        if targets.is_floating_point():
            raise TypeError(
                f"deadspec.TokenCrossEntropy: targets must be integer class ids, got "
                f"{targets.dtype}"
            )
        if self.shift:
            logits, targets = logits[:, :-1], targets[:, 1:]
        n, t, v = logits.shape
        per = F.cross_entropy(
            logits.reshape(-1, v),
            targets.reshape(-1).long(),
            reduction="none",
            ignore_index=self.ignore_index,
        ).reshape(n, t)
        total = per.sum(1)
        if self.reduction == "sum":
            return total
        count = (targets != self.ignore_index).sum(1).clamp_min(1)
        return total / count.to(total.dtype)

    def __repr__(self) -> str:
        return (
            f"TokenCrossEntropy(reduction={self.reduction!r}, shift={self.shift}, "
            f"ignore_index={self.ignore_index})"
        )


def _model_output(output: Any, fn: str) -> torch.Tensor:
    """The tensor the loss reads: the output itself, or ``output.logits`` (Hugging Face)."""
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    raise TypeError(
        f"deadspec.{fn}: the model output must be a tensor (or have a tensor .logits, as Hugging "
        f"Face outputs do) for the loss, got {type(output).__name__} (wrap the model so that it "
        f"returns the logits/predictions)"
    )


@dataclasses.dataclass(frozen=True)
class _View:
    """A block of a linear-like layer: output rows ("out") or input columns ("in") start:stop."""

    axis: str
    start: int
    stop: int


@dataclasses.dataclass(frozen=True)
class _SiteSpec:
    """Where a reading comes from: a capture point and an optional head view."""

    capture: str  # key of the capture point (a module name, or a virtual MHA name)
    module: nn.Module  # module whose weight the capture point applies
    kind: str  # "linear" | "conv1d" | "embedding" | "mha" | "other" | "proj" (MHA q/k/v)
    view: _View | None = None
    mha: str | None = None  # name of the MultiheadAttention that computes this capture point
    proj: str | None = None  # "q" | "k" | "v" | "out_proj" inside that MHA


def _mha_names(mha: nn.MultiheadAttention) -> dict[str, int]:
    """Output width of each projection of an nn.MultiheadAttention."""
    return {"q": mha.embed_dim, "k": mha.embed_dim, "v": mha.embed_dim}


def _catalog(model: nn.Module) -> tuple[dict[str, _SiteSpec], dict[str, list[str]], list[str]]:
    """Every readable name: modules, MHA projections, attention heads.

    Returns (specs, head_names: projection name -> its head names, default layer order).
    """
    named = dict(model.named_modules())
    specs: dict[str, _SiteSpec] = {}
    heads: dict[str, list[str]] = {}
    default: list[str] = []
    mha_out: dict[str, str] = {}
    for name, m in named.items():
        kind = _module_kind(m)
        if kind == "mha":
            for p in ("q", "k", "v"):
                vname = f"{name}.{p}" if name else p
                specs[vname] = _SiteSpec(vname, m, "proj", None, name, p)
                default.append(vname)
            oname = f"{name}.out_proj" if name else "out_proj"
            mha_out[oname] = name
        if name in mha_out:
            specs[name] = _SiteSpec(name, m, "linear", None, mha_out[name], "out_proj")
            default.append(name)
            continue
        if name in specs:  # a module literally named like a virtual MHA projection
            continue
        specs[name] = _SiteSpec(name, m, kind)
        if kind in ("linear", "conv1d"):
            default.append(name)

    def add_heads(proj: str, key: str, axis: str, h: int, width: int, offset: int, base: str):
        if h < 1 or width % h:
            return
        dh = width // h
        for i in range(h):
            hname = f"{base}[h={i}]"
            src = specs[key]
            specs[hname] = dataclasses.replace(
                src, view=_View(axis, offset + i * dh, offset + (i + 1) * dh)
            )
            heads.setdefault(proj, []).append(hname)

    for name, m in named.items():
        prefix = f"{name}." if name else ""
        if callable(getattr(m, "deadspec_heads", None)):
            for child, (axis, h) in m.deadspec_heads().items():
                cname = prefix + child
                sub = named.get(cname)
                if sub is None or _module_kind(sub) not in ("linear", "conv1d"):
                    continue
                w = _weight_out_in(sub)
                width = w.shape[0] if axis == "out" else w.shape[1]
                add_heads(cname, cname, axis, int(h), int(width), 0, cname)
        elif isinstance(m, nn.MultiheadAttention):
            h = int(m.num_heads)
            for p, width in _mha_names(m).items():
                add_heads(prefix + p, prefix + p, "out", h, width, 0, prefix + p)
            add_heads(
                prefix + "out_proj",
                prefix + "out_proj",
                "in",
                h,
                m.embed_dim,
                0,
                prefix + "out_proj",
            )
        elif type(m).__name__ == "GPT2Attention" and _is_conv1d(
            getattr(m, "c_attn", nn.Identity())
        ):
            if getattr(m, "is_cross_attention", False):
                continue
            h = int(getattr(m, "num_heads", 0))
            e = int(getattr(m, "embed_dim", 0))
            c_attn, c_proj = prefix + "c_attn", prefix + "c_proj"
            if c_attn not in specs or c_proj not in specs or h < 1:
                continue
            for j, p in enumerate(("q", "k", "v")):
                add_heads(c_attn, c_attn, "out", h, e, j * e, prefix + p)
            add_heads(c_proj, c_proj, "in", h, e, 0, c_proj)
    return specs, heads, default


def _resolve_sites(
    model: nn.Module, layers: str | Sequence[str] | None, heads: bool, fn: str
) -> list[tuple[str, _SiteSpec]]:
    specs, head_names, default = _catalog(model)
    if layers is None:
        names = list(default)
        if not names:
            named = dict(model.named_modules())
            raise ValueError(
                f"deadspec.{fn}: layers=None reads every nn.Linear, but the model has none; "
                f"pass layers= from the available names {_names_list(named)}"
            )
    else:
        if isinstance(layers, str):
            layers = [layers]
        names = list(layers)
        if not names:
            raise ValueError(f"deadspec.{fn}: layers must name at least one module, got []")
        for name in names:
            if not isinstance(name, str):
                raise TypeError(
                    f"deadspec.{fn}: layer names must be str, got {type(name).__name__}"
                )
            if name not in specs:
                named = dict(model.named_modules())
                extra = [n for n in specs if n not in named and "[h=" not in n]
                hint = f"; attention projections: {', '.join(extra)}" if extra else ""
                hint += "; per-head names look like '<projection>[h=0]'" if head_names else ""
                raise ValueError(
                    f"deadspec.{fn}: layer {name!r} is not a module name of the model; "
                    f"available names: {_names_list(named)}{hint}"
                )
    out: list[tuple[str, _SiteSpec]] = []
    seen: set[str] = set()

    def push(name: str) -> None:
        if name not in seen:
            seen.add(name)
            out.append((name, specs[name]))

    for name in names:
        push(name)
        if heads:
            for hname in head_names.get(name, []):
                push(hname)
            # A packed MHA projection's heads hang off its virtual q/k/v names.
    return out


# --------------------------------------------------------------------------------------------
# Capture
# --------------------------------------------------------------------------------------------


class _Capture:
    """One capture point (a module's call, or a projection inside an nn.MultiheadAttention)."""

    def __init__(self, key: str, spec: _SiteSpec) -> None:
        self.key = key
        self.module = spec.module
        self.kind = spec.kind
        self.mha = spec.mha
        self.proj = spec.proj
        self.sites: list[_LayerState] = []
        self.fisher = False
        self.needs_input = False
        self.calls = 0
        self.cur_input: torch.Tensor | None = None
        self.probe: torch.Tensor | None = None
        self.f_acts: list[torch.Tensor] = []
        self.f_grads: list[torch.Tensor] = []
        self.has_bias = False
        self._cat: tuple[torch.Tensor, torch.Tensor] | None = None
        self.shift_gauge: GaugeZero | None = None
        self.shift_checked = False
        self.out_dim = 0  # last-axis size of the model output (names the logit layer)

    def concatenated(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._cat is None:
            self._cat = (torch.cat(self.f_acts, dim=0), torch.cat(self.f_grads, dim=0))
            self.f_acts, self.f_grads = [], []
        return self._cat

    def release(self) -> None:
        self._cat = None
        self.f_acts, self.f_grads = [], []


class _LayerState:
    """Per-reading accumulation across batches (one entry of the Reading)."""

    def __init__(
        self,
        name: str,
        module: nn.Module,
        fisher: bool,
        route: str | None,
        *,
        view: _View | None = None,
        kind: str = "other",
    ) -> None:
        self.name = name
        self.module = module
        self.fisher = fisher
        self.route = route  # "feature" (h×h accumulator) | "sample" (keep rows); None = decide
        self.view = view
        self.kind = kind
        self.capture: _Capture | None = None
        self.gauge_basis: np.ndarray | None = None  # h×m orthonormal (LayerNorm kernel)
        self.acc: GramAccumulator | None = None
        self.rows: list[torch.Tensor] = []
        self.n_rows = 0
        self.width = 0
        self.act_dtype: torch.dtype | None = None
        self.d_in = 0
        self.d_out = 0
        self.calls = 0

    # activation side -----------------------------------------------------------------------
    def add_rows(self, rows: torch.Tensor, batch: int, n_total: int) -> None:
        if self.act_dtype is None:  # first batch: fix the width and the route
            self.act_dtype = rows.dtype
            self.width = int(rows.shape[1])
            if self.route is None:
                total_rows = (rows.shape[0] // max(batch, 1)) * n_total
                self.route = "sample" if total_rows < self.width else "feature"
            if self.route == "feature":
                self.acc = GramAccumulator(self.width)
        if rows.shape[1] != self.width:
            raise ValueError(
                f"deadspec.read: layer {self.name!r} changed width between batches "
                f"({self.width} then {rows.shape[1]})"
            )
        # The core reads CPU memory: device tensors are copied to the host here.
        if self.route == "feature":
            self.acc.add(rows.detach().cpu())
        else:
            self.rows.append(rows.detach().to("cpu", copy=True))
        self.n_rows += int(rows.shape[0])

    def activation_gram(self, center: bool) -> Any:
        u = self.gauge_basis
        if u is None:
            if self.route == "feature":
                return self.acc.gram(center=center)
            return gram(torch.cat(self.rows, dim=0), side="sample", center=center)
        # LayerNorm output: the centred Gram, with the γ⁻¹ kernel projected out exactly.
        if self.route == "feature":
            g = np.asarray(self.acc.gram(center=True), dtype=np.float64)
            p = np.eye(g.shape[0]) - u @ u.T
            return p @ g @ p
        x = torch.cat(self.rows, dim=0).double()
        x = x - x.mean(0, keepdim=True)
        ut = torch.as_tensor(u, dtype=torch.float64)
        x = x - (x @ ut) @ ut.T
        return gram(x, side="sample", center=False)

    def gauge_residual(self) -> float:
        """``max uᵀ G_c u / μ₁(G_c)`` over the kernel basis, before projection."""
        u = self.gauge_basis
        if self.route == "feature":
            g = np.asarray(self.acc.gram(center=True), dtype=np.float64)
        else:
            x = torch.cat(self.rows, dim=0).double()
            x = (x - x.mean(0, keepdim=True)).numpy()
            g = x.T @ x / x.shape[0]
        top = float(np.linalg.eigvalsh(g)[-1]) if g.size else 0.0
        if top <= 0:
            return 0.0
        return float(np.max(np.einsum("hm,hk,km->m", u, g, u))) / top


def _view_rows(
    st: _LayerState, out: torch.Tensor, a: torch.Tensor | None, pool: str, fn: str
) -> torch.Tensor:
    v = st.view
    if v is None:
        return _activation_rows(out, st.module, pool, st.name, fn)
    if v.axis == "out":
        return _activation_rows(out[..., v.start : v.stop], st.module, pool, st.name, fn)
    # Input block of an output projection: the head's write into the output space.
    w = _weight_out_in(st.module).detach()
    z = a.detach()[..., v.start : v.stop] @ w[:, v.start : v.stop].T.to(a.dtype)
    return _activation_rows(z, st.module, pool, st.name, fn)


def _on_call(
    cap: _Capture,
    a: Any,
    out: Any,
    pool: str,
    n_total: int,
    batch: int,
    fn: str,
) -> torch.Tensor | None:
    """Record one call of a capture point; returns ``out + probe`` when the Fisher side needs δ."""
    cap.calls += 1
    if cap.calls > 1:
        raise ValueError(
            f"deadspec.{fn}: layer {cap.key!r} was called more than once in one forward "
            f"pass (shared module); reading a shared module is not supported"
        )
    if isinstance(out, torch.Tensor) and out.ndim >= 1 and out.shape[0] != batch:
        raise ValueError(
            f"deadspec.{fn}: layer {cap.key!r} output has {out.shape[0]} rows on axis 0, not the "
            f"batch size {batch} (outputs must be batch-first; inputs broadcast over the batch, "
            f"such as position ids of shape (1, T), are not supported)"
        )
    for st in cap.sites:
        rows = _view_rows(st, out, a, pool, fn)
        _check_finite(rows, "activations", st.name, fn)
        # Consumed now: a later in-place op on `out` must not change what we read.
        st.add_rows(rows, batch, n_total)
    if cap.fisher:
        if not isinstance(a, torch.Tensor):
            raise TypeError(f"deadspec.{fn}: could not find the tensor input of layer {cap.key!r}")
        if a.is_floating_point():
            _check_finite(a, "inputs", cap.key, fn)
        cap.cur_input = a.detach().to("cpu", copy=True)
        probe = torch.zeros_like(out, requires_grad=True)
        cap.probe = probe
        # d loss / d probe == d loss / d (layer output), and parameters' .grad are never
        # touched; in-place ops downstream act on the sum, not on `out`.
        return out + probe
    return None


def _install_hooks(
    captures: Sequence[_Capture], pool: str, n_total: int, fn: str, batch_ref: list[int]
) -> list[Any]:
    handles = []
    for cap in captures:
        if cap.mha is not None:  # computed inside the patched MultiheadAttention.forward
            continue

        def hook(
            module: nn.Module, args: tuple, kwargs: dict, out: Any, cap: _Capture = cap
        ) -> Any:
            a = args[0] if args else kwargs.get("input")
            return _on_call(cap, a, out, pool, n_total, batch_ref[0], fn)

        handles.append(cap.module.register_forward_hook(hook, with_kwargs=True))
    return handles


def _mha_forward(
    mha: nn.MultiheadAttention,
    caps: Mapping[str, _Capture],
    call: Callable,
    fn: str,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    key_padding_mask: torch.Tensor | None = None,
    need_weights: bool = True,
    attn_mask: torch.Tensor | None = None,
    average_attn_weights: bool = True,
    is_causal: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """nn.MultiheadAttention.forward written with F.linear per projection (capture points)."""
    if mha.bias_k is not None or mha.add_zero_attn:
        raise ValueError(
            f"deadspec.{fn}: nn.MultiheadAttention with add_bias_kv or add_zero_attn is not "
            f"supported"
        )
    if query.ndim != 3:
        raise ValueError(
            f"deadspec.{fn}: nn.MultiheadAttention inputs must be batched (3-D), got "
            f"{tuple(query.shape)}"
        )
    if not mha.batch_first:
        query, key, value = (x.transpose(0, 1) for x in (query, key, value))
    n, lq, e = query.shape
    s = key.shape[1]
    h, dh = mha.num_heads, mha.head_dim
    if mha._qkv_same_embed_dim:
        wq, wk, wv = mha.in_proj_weight.chunk(3)
    else:
        wq, wk, wv = mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight
    bq = bk = bv = None
    if mha.in_proj_bias is not None:
        bq, bk, bv = mha.in_proj_bias.chunk(3)

    def proj(p: str, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        z = F.linear(x, w, b)
        cap = caps.get(p)
        if cap is not None:
            z2 = call(cap, x, z)
            if z2 is not None:
                z = z2
        return z

    q = proj("q", query, wq, bq).reshape(n, lq, h, dh).transpose(1, 2)
    k = proj("k", key, wk, bk).reshape(n, s, h, dh).transpose(1, 2)
    v = proj("v", value, wv, bv).reshape(n, s, h, dh).transpose(1, 2)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(dh)
    if attn_mask is None and is_causal:
        attn_mask = torch.ones(lq, s, dtype=torch.bool, device=q.device).triu(1)
    if attn_mask is not None:
        m = attn_mask if attn_mask.ndim == 2 else attn_mask.reshape(n, h, lq, s)
        if m.dtype == torch.bool:
            scores = scores.masked_fill(m, float("-inf"))
        else:
            scores = scores + m.to(scores.dtype)
    if key_padding_mask is not None:
        kp = key_padding_mask[:, None, None, :]
        if kp.dtype == torch.bool:
            scores = scores.masked_fill(kp, float("-inf"))
        else:
            scores = scores + kp.to(scores.dtype)
    attn = torch.softmax(scores, dim=-1)
    if mha.training and mha.dropout > 0:
        attn = F.dropout(attn, p=mha.dropout)
    z = (attn @ v).transpose(1, 2).reshape(n, lq, e)
    out = proj("out_proj", z, mha.out_proj.weight, mha.out_proj.bias)
    if not mha.batch_first:
        out = out.transpose(0, 1)
    weights = None
    if need_weights:
        weights = attn.mean(1) if average_attn_weights else attn
    return out, weights


class _PatchedMHA:
    """Replace ``forward`` of the MultiheadAttention modules read, for the duration of a read."""

    def __init__(self, named: Mapping[str, nn.Module], captures: Sequence[_Capture], call, fn):
        self.patched: list[tuple[nn.Module, Any]] = []
        by_mha: dict[str, dict[str, _Capture]] = {}
        for cap in captures:
            if cap.mha is not None:
                by_mha.setdefault(cap.mha, {})[cap.proj] = cap
        for name, caps in by_mha.items():
            mha = named[name]
            prev = mha.__dict__.get("forward", None)
            mha.forward = functools.partial(_mha_forward, mha, caps, call, fn)
            self.patched.append((mha, prev))

    def restore(self) -> None:
        for mha, prev in self.patched:
            if prev is None:
                mha.__dict__.pop("forward", None)
            else:
                mha.forward = prev


def _layernorm_basis(module: nn.Module, width: int) -> np.ndarray | None:
    """Orthonormal basis of the kernel of a LayerNorm output's covariance (γ⁻¹), or None."""
    if not isinstance(module, nn.LayerNorm) or len(module.normalized_shape) != 1:
        return None
    h = int(module.normalized_shape[0])
    if h != width or h < 1:
        return None
    if module.weight is None:
        gamma = np.ones(h)
    else:
        gamma = module.weight.detach().double().cpu().numpy()
    cols = []
    zero = gamma == 0
    for k in np.flatnonzero(zero):  # a channel with γ_k = 0 is constant: its own kernel
        e = np.zeros(h)
        e[k] = 1.0
        cols.append(e)
    if (~zero).any():
        u = np.zeros(h)
        u[~zero] = 1.0 / gamma[~zero]
        cols.append(u / np.linalg.norm(u))
    return np.stack(cols, axis=1)


def _build_states(
    resolved: Sequence[tuple[str, _SiteSpec]], fisher: bool, route: str | None, gauges: bool
) -> tuple[list[_LayerState], list[_Capture]]:
    captures: dict[str, _Capture] = {}
    states: list[_LayerState] = []
    for name, spec in resolved:
        cap = captures.get(spec.capture)
        if cap is None:
            cap = captures[spec.capture] = _Capture(spec.capture, spec)
        has_fisher = fisher and spec.kind in ("linear", "conv1d", "embedding", "proj")
        st = _LayerState(name, spec.module, has_fisher, route, view=spec.view, kind=spec.kind)
        st.capture = cap
        cap.sites.append(st)
        cap.fisher = cap.fisher or has_fisher
        states.append(st)
    for cap in captures.values():
        m = cap.module
        if cap.kind in ("linear", "conv1d"):
            cap.has_bias = getattr(m, "bias", None) is not None
        elif cap.kind == "proj":
            cap.has_bias = m.in_proj_bias is not None
        if cap.proj == "out_proj":
            cap.has_bias = m.bias is not None
    return states, list(captures.values())


def _collect(
    model: nn.Module,
    inputs: Any,
    layers: str | Sequence[str] | None,
    *,
    targets: torch.Tensor | None,
    loss_fn: Callable | None,
    fisher: bool,
    labels: str,
    task: str | None,
    batch_size: int | None,
    pool: str,
    seed: int | None,
    progress: bool | None,
    route: str | None = None,
    fn: str = "read",
    heads: bool = False,
    gauges: bool = False,
) -> tuple[list[_LayerState], int]:
    """Run the model over the data with hooks and accumulate per-layer statistics."""
    if labels not in _LABELS:
        raise ValueError(f"deadspec.{fn}: labels must be one of {_LABELS}, got {labels!r}")
    if pool not in _POOLS:
        raise ValueError(f"deadspec.{fn}: pool must be one of {_POOLS}, got {pool!r}")
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"deadspec.{fn}: model must be a torch.nn.Module, got {type(model).__name__}"
        )
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError(
            f"deadspec.{fn}: loss_fn must be callable or None, got {type(loss_fn).__name__}"
        )
    tup, n = _as_input_tuple(inputs, fn)
    slices = _batch_slices(n, batch_size, fn)
    resolved = _resolve_sites(model, layers, heads, fn)
    states, captures = _build_states(resolved, fisher, route, gauges)
    for cap in captures:
        if cap.kind == "embedding" and cap.fisher and cap.module.scale_grad_by_freq:
            raise ValueError(
                f"deadspec.{fn}: nn.Embedding {cap.key!r} has scale_grad_by_freq=True: its "
                f"gradient depends on the whole batch, so per-sample gradients are not defined"
            )
    want_fisher = any(st.fisher for st in states)
    fisher_caps = [c for c in captures if c.fisher]

    gen: torch.Generator | None = None
    if want_fisher:
        if labels == "observed":
            if targets is None:
                raise ValueError(
                    f"deadspec.{fn}: the Fisher side needs targets with labels='observed' "
                    f"(or use labels='sampled', or fisher=False), got targets=None"
                )
        else:
            task = _infer_task(targets, loss_fn, task, fn)
            gen = _make_generator(seed, tup[0].device)
        if targets is not None:
            if not isinstance(targets, torch.Tensor):
                raise TypeError(
                    f"deadspec.{fn}: targets must be a torch.Tensor, got {type(targets).__name__}"
                )
            if targets.ndim == 0 or targets.shape[0] != n:
                raise ValueError(
                    f"deadspec.{fn}: targets must have the inputs' batch size {n} on axis 0, got "
                    f"shape {tuple(targets.shape)}"
                )

    snapshot = _ModelState(model)
    batch_ref = [0]
    named = dict(model.named_modules())

    def call(cap: _Capture, a: Any, out: Any) -> Any:
        return _on_call(cap, a, out, pool, n, batch_ref[0], fn)

    patch = _PatchedMHA(named, captures, call, fn)
    handles: list[Any] = []
    out_dim = [0]
    try:
        handles = _install_hooks(captures, pool, n, fn, batch_ref)
        for sl in _progress(slices, progress, f"deadspec.{fn}", total=len(slices)):
            batch = tuple(x[sl] for x in tup)
            b = batch[0].shape[0]
            batch_ref[0] = b
            for cap in captures:
                cap.calls = 0
                cap.cur_input = None
                cap.probe = None
            if want_fisher:
                with torch.enable_grad():
                    output = model(*batch)
                    _check_called(captures, fn)
                    output = _model_output(output, fn)
                    out_dim[0] = int(output.shape[-1]) if output.ndim else 0
                    if labels == "observed":
                        y = targets[sl]
                    else:
                        y = _sample_targets(output, task, gen)
                        if isinstance(loss_fn, TokenCrossEntropy) and loss_fn.shift:
                            # the token at t + 1 is drawn from the logits at t
                            y = torch.cat([y[:, :1], y[:, :-1]], dim=1)
                    losses = _per_sample_loss(output, y, loss_fn, fn)
                    if not bool(torch.isfinite(losses.detach()).all()):
                        raise ValueError(
                            f"deadspec.{fn}: per-sample losses must be finite, got NaN/Inf"
                        )
                    if not losses.requires_grad:
                        raise RuntimeError(
                            f"deadspec.{fn}: no gradient reached layers "
                            f"{[c.key for c in fisher_caps]}: the loss does not depend on "
                            f"their outputs"
                        )
                    grads = torch.autograd.grad(
                        losses.sum(), [c.probe for c in fisher_caps], allow_unused=True
                    )
                for cap, g in zip(fisher_caps, grads):
                    if g is None:
                        raise RuntimeError(
                            f"deadspec.{fn}: layer {cap.key!r} received no gradient: its output "
                            f"does not reach the loss"
                        )
                    _check_finite(g, "output gradients", cap.key, fn)
                    a = cap.cur_input
                    g = g.detach().cpu()
                    if cap.kind == "embedding":
                        a = a.reshape(b, -1)
                        g = g.reshape(b, a.shape[1], g.shape[-1])
                    else:
                        if a.ndim < 2 or g.ndim < 2:
                            raise ValueError(
                                f"deadspec.{fn}: layer {cap.key!r} must see batched inputs, got "
                                f"input shape {tuple(a.shape)}"
                            )
                        if a.ndim > 2:
                            a = a.reshape(b, -1, a.shape[-1])
                            g = g.reshape(b, -1, g.shape[-1])
                    cap.f_acts.append(a)
                    cap.f_grads.append(g)
                    cap.cur_input = None
                    cap.probe = None
            else:
                # A fused fast path (nn.TransformerEncoderLayer in eval mode under no_grad)
                # would skip the patched attention: keep autograd on when attention is read.
                ctx = torch.enable_grad() if patch.patched else torch.no_grad()
                with ctx:
                    model(*batch)
                _check_called(captures, fn)
    finally:
        for h in handles:
            h.remove()
        patch.restore()
        snapshot.restore()
    for st in states:
        if gauges and st.view is None:
            st.gauge_basis = _layernorm_basis(st.module, st.width)
    for cap in captures:
        cap.out_dim = out_dim[0]
    return states, n


def _check_called(captures: Sequence[Any], fn: str) -> None:
    for cap in captures:
        if cap.calls == 0:
            name = getattr(cap, "key", None) or cap.name
            raise RuntimeError(
                f"deadspec.{fn}: layer {name!r} was not called during the forward pass"
            )


def _activation_spectrum(
    st: _LayerState, center: bool, rtol: float | None, gap_ratio: float, vectors: bool = False
) -> Spectrum:
    g = st.activation_gram(center)
    return spectrum(
        g,
        rtol=rtol,
        gap_ratio=gap_ratio,
        vectors=vectors,
        input_dtype=_dtype_name(st.act_dtype),
        rtol_size=max(st.n_rows, st.width),
    )


def _shift_gauge(cap: _Capture, grads: torch.Tensor, d_in: int) -> GaugeZero | None:
    """Detect Σ_k δ_k = 0 (cross-entropy logit shift) on a layer's output gradients."""
    d_out = grads.shape[-1]
    if d_out < 2 or not grads.is_floating_point():
        return None
    scale = float(grads.abs().max())
    if scale == 0.0:
        return None
    eps = float(torch.finfo(grads.dtype).eps)
    resid = float(grads.sum(-1).abs().max()) / scale
    if resid > 100.0 * eps * math.sqrt(d_out):
        return None
    kind = "logit-shift" if d_out == cap.out_dim else "mean-shift"
    vec = np.full((d_out, 1), 1.0 / math.sqrt(d_out))
    return GaugeZero(kind, "fisher", d_in + (1 if cap.has_bias else 0), resid, vec)


def _embedding_fisher_gram(
    tokens: torch.Tensor, grads: torch.Tensor, padding_idx: int | None, chunk: int = 1024
) -> torch.Tensor:
    """Fisher-Gram of an nn.Embedding: g_i = Σ_t e_{x_it} δ_itᵀ, rows summed per token.

    K_ij = Σ_u G_i[u]·G_j[u] / N with G_i[u] = Σ_{t: x_it = u} δ_it. Rows (sample, token) are
    sorted by token; each chunk of rows is compared only with the rows of the same tokens, so
    the cost is about Σ_u |samples holding u|² · d, never N·V·d.
    """
    n = tokens.shape[0]
    tok = tokens.reshape(n, -1).long()
    t = tok.shape[1]
    g = grads.reshape(n, t, -1).double()
    d = g.shape[-1]
    samp = torch.arange(n).repeat_interleave(t)
    tok_f, g_f = tok.reshape(-1), g.reshape(-1, d)
    if padding_idx is not None:
        keep = tok_f != padding_idx
        tok_f, g_f, samp = tok_f[keep], g_f[keep], samp[keep]
    k = torch.zeros(n, n, dtype=torch.float64)
    if tok_f.numel() == 0:
        return k
    key = tok_f * n + samp
    uniq, inv = torch.unique(key, sorted=True, return_inverse=True)
    rows = torch.zeros(uniq.numel(), d, dtype=torch.float64).index_add_(0, inv, g_f)
    r_tok, r_samp = uniq // n, uniq % n
    _, counts = torch.unique_consecutive(r_tok, return_counts=True)
    ends = counts.cumsum(0)
    starts = ends - counts
    gid = torch.repeat_interleave(torch.arange(counts.numel()), counts)
    r = uniq.numel()
    for r0 in range(0, r, chunk):
        r1 = min(r0 + chunk, r)
        lo, hi = int(starts[gid[r0]]), int(ends[gid[r1 - 1]])
        s = rows[r0:r1] @ rows[lo:hi].T
        s = s * (r_tok[r0:r1, None] == r_tok[None, lo:hi])
        part = torch.zeros(r1 - r0, n, dtype=torch.float64).index_add_(1, r_samp[lo:hi], s)
        k.index_add_(0, r_samp[r0:r1], part)
    k /= n
    return 0.5 * (k + k.T)


def _fisher_matrix(
    st: _LayerState, n: int, route: str, gauges: bool
) -> tuple[Any, str, int, int, torch.dtype, tuple[GaugeZero, ...]]:
    """(K, route taken, d_in, d_out, input dtype, gauges) of one reading."""
    cap = st.capture
    acts, grads = cap.concatenated()
    found: tuple[GaugeZero, ...] = ()
    if cap.kind == "embedding":
        k = _embedding_fisher_gram(acts, grads, cap.module.padding_idx)
        return k, "embedding", int(cap.module.num_embeddings), int(grads.shape[-1]), grads.dtype, ()
    bias = cap.has_bias
    v = st.view
    if v is None:
        if gauges:
            if not cap.shift_checked:
                cap.shift_gauge = _shift_gauge(cap, grads, int(acts.shape[-1]))
                cap.shift_checked = True
                if cap.shift_gauge is not None:
                    # Exclude the shift exactly: δ ← δ − mean_k δ_k (a round-off change).
                    grads = grads - grads.mean(-1, keepdim=True)
                    cap._cat = (acts, grads)
            if cap.shift_gauge is not None:
                found = (cap.shift_gauge,)
    elif v.axis == "out":
        grads = grads[..., v.start : v.stop]
    else:
        acts = acts[..., v.start : v.stop]
        bias = False
    d_in, d_out = int(acts.shape[-1]), int(grads.shape[-1])
    k = fisher_gram(acts, grads, bias=bias, route=route)
    if acts.ndim == 3 and acts.shape[1] > 1:
        taken = (
            fisher_route(int(acts.shape[0]), int(acts.shape[1]), d_in, d_out)
            if route == "auto"
            else route
        )
    else:
        taken = "block-sum"
    return k, taken, d_in, d_out, acts.dtype, found


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


_ROUTES = ("auto", "block-sum", "materialize")


def read(
    model: nn.Module,
    inputs: torch.Tensor | Sequence[torch.Tensor],
    *,
    targets: torch.Tensor | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    layers: str | Sequence[str] | None = None,
    fisher: bool = True,
    labels: str = "observed",
    batch_size: int | None = None,
    center: bool = False,
    pool: str = "none",
    rtol: float | None = None,
    gap_ratio: float = 1e3,
    seed: int | None = None,
    progress: bool | None = False,
    task: str | None = None,
    heads: bool = False,
    gauges: bool = True,
    route: str = "auto",
    joint: bool = False,
) -> Reading:
    """Read the activation-Gram and Fisher-Gram spectra of a model's layers.

    Parameters
    ----------
    model : torch.nn.Module
        Run as ``model(*inputs)`` in its current train/eval mode (call ``model.eval()`` first
        for deterministic readings). Left exactly as found (modes, ``.grad``,
        ``requires_grad``, buffers, hooks, ``forward`` of attention modules).
    inputs : Tensor or tuple of Tensor
        Batch-first inputs, N samples (integer token ids are fine).
    targets : Tensor, optional
        N targets (batch-first). Needed for the Fisher side with ``labels="observed"``.
    loss_fn : callable, optional
        ``loss_fn(output, targets) -> Tensor (N,)`` of per-sample losses, e.g.
        ``nn.CrossEntropyLoss(reduction="none")`` or :class:`TokenCrossEntropy` for
        ``(N, T, V)`` logits; a scalar loss raises ``ValueError``. Default convention: integer
        targets -> cross-entropy on the logits, **summed over positions** for sequence outputs
        (``(N, T, V)`` logits with ``(N, T)`` targets: sample i's loss is the sum of its token
        losses); float targets -> Gaussian NLL with σ = 1 up to a constant,
        ``0.5·Σ_j (y_j − f_j)²`` per sample. A model output that is not a tensor but has a
        tensor ``.logits`` (Hugging Face) is read through ``.logits``.
    layers : str or sequence of str, optional
        Names to read; None reads every linear-like layer: ``nn.Linear``, Hugging Face
        ``Conv1D`` (GPT-2; weight stored ``in × out``) and the projections of every
        ``nn.MultiheadAttention`` (virtual names ``"<mha>.q"``, ``"<mha>.k"``, ``"<mha>.v"``
        for the packed ``in_proj_weight``, and ``"<mha>.out_proj"``). Any module with a tensor
        output has an activation side. The Fisher side exists for linear-like layers and
        ``nn.Embedding`` (per-sample gradients are sparse rows of the table); other modules
        get ``fisher=None``. Per-head names (below) may be given directly.
    fisher : bool
        Read the Fisher side (one forward + one backward of Σ_i loss_i per batch, under
        ``torch.enable_grad``). With False the forward runs under ``torch.no_grad``.
    labels : {"observed", "sampled"}
        Targets for the Fisher side: the given ones (empirical Fisher) or drawn from the
        model's predictive distribution (true Fisher): a softmax sample for classification,
        ``f(x) + N(0, I)`` for regression, with a ``torch.Generator`` seeded by ``seed``.
    batch_size : int, optional
        Stream the data in batches of this size; the result does not depend on it.
    center : bool
        Centre the activation Gram (subtract the feature means).
    pool : {"none", "mean"}
        Sequence outputs ``N×T×h``: one activation row per token, or the per-sample mean.
        (The Fisher side always sums over positions: ``g_i = Σ_t δ_it a_itᵀ``.)
    rtol, gap_ratio : float
        Passed to :func:`deadspec.spectrum`. The default rtol is ``max(R, h)·ε`` of the
        activations' dtype (R rows, h features); on the Fisher side ``max(N, d_in + d_out)·ε``.
    seed : int, optional
        Seed of the label sampler (``labels="sampled"``); None draws a fresh seed. The draw is
        reproducible for a given (seed, batch_size); the generator is consumed batch by batch.
    progress : bool or None
        tqdm bar over batches; None shows it when stderr is a terminal.
    task : {"classification", "regression"}, optional
        Kind of predictive distribution for ``labels="sampled"``; by default from the targets'
        dtype (integer = classification), else from ``loss_fn``'s type.
    heads : bool
        Also read every attention head of each projection read, as its own entry
        ``"<projection>[h=i]"``: head i of a q/k/v projection is the block of output rows
        ``i·d_head:(i+1)·d_head`` (activation side: those output columns; Fisher side: the
        per-sample gradient of that block of the weight and bias), head i of an output
        projection the same block of input columns (activation side: the head's write
        ``a_h W_hᵀ`` into the output space; Fisher side: that block of the weight, no bias).
        Known layouts: modules with a ``deadspec_heads()`` method (:mod:`deadspec.models`'s
        ``SelfAttention``: ``"blocks.0.attn.q[h=2]"``), ``nn.MultiheadAttention``
        (``"mha.q[h=2]"``, ``"mha.out_proj[h=2]"``) and Hugging Face ``GPT2Attention``
        (``"…attn.q[h=2]"`` from ``c_attn``, ``"…attn.c_proj[h=2]"``).
    gauges : bool
        Find and exclude exact gauge zeros (reported in ``LayerReading.gauges``): at a
        ``nn.LayerNorm`` output the **centred** Gram is read (whatever ``center`` says) with
        the γ⁻¹ kernel projected out; on the Fisher side of a layer whose output gradients sum
        to 0 over its outputs (the cross-entropy logit shift, or a layer feeding a
        normalisation) the shift is projected out of δ. Both then count as structural zeros,
        never as dead directions.
    route : {"auto", "block-sum", "materialize"}
        Sequence Fisher-Gram algorithm (:func:`deadspec.fisher_gram`): ``"auto"`` takes the one
        with fewer operations for the layer's (N, T, d_in, d_out); the route taken is in
        ``LayerReading.route``.
    joint : bool
        Also read the **joint Fisher-Gram** of all the Fisher layers read (per-head entries
        excluded: they are blocks of their projection): the Fisher-Gram of the concatenated
        parameters, ``K = Σ_ℓ K_ℓ`` (per-sample gradients of disjoint parameter blocks add in
        the inner product), whose non-zero spectrum is that of the empirical Fisher of all those
        parameters together. Layers sharing a weight (tied weights) raise ValueError: their sum
        would miss the cross terms. It is a reading of the model rather than of a layer — the one to
        set beside a learning coefficient λ, which belongs to the whole model. In
        ``Reading.joint_fisher`` (a Spectrum; rtol size ``max(N, Σ(d_in + d_out))``), with the
        layers summed in ``Reading.joint_layers``; ``to_records`` adds it as layer
        ``"joint"``.

    Returns
    -------
    Reading
        Mapping ``layer name -> LayerReading``.

    Raises
    ------
    ValueError
        Unknown layer (the message lists the available names), a loss_fn that does not return
        shape (N,), missing targets, NaN/Inf in activations, inputs or gradients (naming the
        layer), outputs that are not batch-first, bad options.
    RuntimeError
        A Fisher layer whose output does not reach the loss, or a layer not called by the
        forward pass.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> import deadspec
    >>> _ = torch.manual_seed(0)
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    >>> x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
    >>> r = deadspec.read(model, x, targets=y, layers=["0", "1", "2"])
    >>> r["0"].activation.active  # rank of [W b] on [x; 1]: a width limit, 5 of 8
    5
    >>> r["1"].fisher is None  # ReLU output: activation side only
    True
    >>> r["2"].fisher.active <= (3 - 1) * (8 + 1)  # cross-entropy logit shift removes a class
    True
    >>> r["2"].gauges[0].kind, r["2"].gauges[0].dim  # ... and is reported as a gauge
    ('logit-shift', 9)
    >>> records = r.to_records()  # one dict per layer × side, e.g. for pandas
    """
    if route not in _ROUTES:
        raise ValueError(f"deadspec.read: route must be one of {_ROUTES}, got {route!r}")
    states, n = _collect(
        model,
        inputs,
        layers,
        targets=targets,
        loss_fn=loss_fn,
        fisher=fisher,
        labels=labels,
        task=task,
        batch_size=batch_size,
        pool=pool,
        seed=seed,
        progress=progress,
        fn="read",
        heads=bool(heads),
        gauges=bool(gauges),
    )
    out: dict[str, LayerReading] = {}
    done: dict[int, int] = {}
    remaining: dict[int, int] = {}
    joint_k: Any = None
    joint_layers: list[str] = []
    joint_size, joint_dtype = 0, None
    joint_owner: dict[tuple[int, Any], str] = {}
    for st in states:
        if st.fisher:
            remaining[id(st.capture)] = remaining.get(id(st.capture), 0) + 1
    for st in states:
        found: list[GaugeZero] = []
        if st.gauge_basis is not None:
            found.append(
                GaugeZero(
                    "layernorm-kernel",
                    "activation",
                    int(st.gauge_basis.shape[1]),
                    st.gauge_residual(),
                    st.gauge_basis,
                )
            )
        act = _activation_spectrum(st, center, rtol, gap_ratio)
        fis, taken = None, None
        if st.fisher:
            k, taken, d_in, d_out, dtype, fg = _fisher_matrix(st, n, route, bool(gauges))
            found.extend(fg)
            fis = spectrum(
                k,
                rtol=rtol,
                gap_ratio=gap_ratio,
                input_dtype=_dtype_name(dtype),
                # K is never formed from the N×p stack of per-sample gradients; its entries
                # are products of inner products over d_in and d_out coordinates.
                rtol_size=max(n, d_in + d_out),
            )
            if joint and "[h=" not in st.name:
                # Σ K_ℓ is the Fisher-Gram of the concatenated parameters only when the blocks
                # are disjoint: tied weights would need the cross terms.
                cap = st.capture
                w = getattr(cap.module, "weight", None)
                owner = (id(w) if isinstance(w, torch.Tensor) else id(cap.module), cap.proj)
                if owner in joint_owner:
                    raise ValueError(
                        f"deadspec.read: joint=True needs layers with disjoint parameters, got "
                        f"{joint_owner[owner]!r} and {st.name!r} sharing a weight (tied "
                        f"weights); read them without joint=True or leave one out"
                    )
                joint_owner[owner] = st.name
                kd = torch.as_tensor(k).to(torch.float64)
                joint_k = kd.clone() if joint_k is None else joint_k + kd
                joint_layers.append(st.name)
                joint_size += d_in + d_out
                joint_dtype = dtype if joint_dtype is None else joint_dtype
            key = id(st.capture)
            done[key] = done.get(key, 0) + 1
            if done[key] == remaining[key]:
                st.capture.release()
        out[st.name] = LayerReading(st.name, act, fis, n, st.n_rows, taken, tuple(found))
    joint_spec = None
    if joint_k is not None:
        joint_spec = spectrum(
            joint_k,
            rtol=rtol,
            gap_ratio=gap_ratio,
            input_dtype=_dtype_name(joint_dtype),
            rtol_size=max(n, joint_size),
        )
    return Reading(
        out,
        n_samples=n,
        labels=labels,
        pool=pool,
        center=center,
        joint_fisher=joint_spec,
        joint_layers=tuple(joint_layers),
    )
