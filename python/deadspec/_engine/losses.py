"""Loss conventions: per-sample losses, the default loss, sampled labels, token cross-entropy.

Every reading works with one loss per sample, shape ``(N,)`` (theory.md §2: the Fisher-Gram is
built from each sample's own gradient). The default convention: integer targets mean
cross-entropy on the logits (summed over positions for sequence outputs), float targets the
Gaussian negative log-likelihood with σ = 1 up to a constant, ``0.5·Σ_j (y_j − f_j)²``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from deadspec._usercode import user_code
from deadspec._util import output_logits

__all__ = [
    "LABELS",
    "TASKS",
    "TokenCrossEntropy",
    "default_loss",
    "infer_task",
    "model_output",
    "per_sample_loss",
    "sample_targets",
    "sum_per_sample",
]

LABELS = ("observed", "sampled")
TASKS = ("classification", "regression")


def infer_task(
    targets: torch.Tensor | None, loss_fn: Callable | None, task: str | None, fn: str
) -> str:
    """``task`` if given, else from the targets' dtype, else from the loss_fn's type."""
    if task is not None:
        if task not in TASKS:
            raise ValueError(f"deadspec.{fn}: task must be one of {TASKS} or None, got {task!r}")
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


def default_loss(output: torch.Tensor, targets: torch.Tensor, fn: str) -> torch.Tensor:
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
        flat = targets.reshape(-1)
        bad = (flat != -100) & ((flat < 0) | (flat >= c))  # -100: cross_entropy's ignore_index
        if flat.numel() and bool(bad.any()):
            raise ValueError(
                f"deadspec.{fn}: integer targets must be class indices in [0, {c}) (the size of "
                f"the output's last axis), got values in [{int(flat.min())}, {int(flat.max())}]"
            )
        per = F.cross_entropy(output.reshape(-1, c), flat.long(), reduction="none")
        return per.reshape(n, -1).sum(1)
    if output.shape != targets.shape:
        raise ValueError(
            f"deadspec.{fn}: float targets mean the Gaussian loss 0.5·||y - f||² and must have "
            f"the output's shape {tuple(output.shape)}, got {tuple(targets.shape)}"
        )
    return 0.5 * (targets - output).pow(2).reshape(n, -1).sum(1)


def per_sample_loss(
    output: Any, targets: torch.Tensor, loss_fn: Callable | None, fn: str
) -> torch.Tensor:
    """Per-sample losses ``(N,)``: the default convention, or ``loss_fn(output, targets)``.

    A ``loss_fn`` may return ``(N,)`` or element-wise losses ``(N, ...)`` (every torch loss with
    ``reduction="none"``: ``nn.MSELoss``, ``nn.BCEWithLogitsLoss``, ...), which are summed over
    their trailing dimensions per sample; a scalar (a reduced batch loss) is refused. A Hugging
    Face ``ModelOutput`` is read as its ``logits``.
    """
    output = output_logits(output)
    if not isinstance(output, torch.Tensor):
        raise TypeError(
            f"deadspec.{fn}: the model output must be a tensor for the loss, got "
            f"{type(output).__name__} (wrap the model so that it returns the logits/predictions)"
        )
    n = output.shape[0]
    if loss_fn is None:
        return default_loss(output, targets, fn)
    with user_code(fn, "loss_fn(output, targets)"):
        loss = loss_fn(output, targets)
    if not isinstance(loss, torch.Tensor):
        raise TypeError(f"deadspec.{fn}: loss_fn must return a tensor, got {type(loss).__name__}")
    if loss.ndim == 0:
        raise ValueError(
            f"deadspec.{fn}: loss_fn must return per-sample losses of shape (N,) or (N, ...) "
            f'(construct it with reduction="none"), got a scalar'
        )
    return sum_per_sample(loss, n, fn)


def sum_per_sample(loss: torch.Tensor, n: int, fn: str) -> torch.Tensor:
    """``(N,)`` from per-sample ``(N,)`` or element-wise ``(N, ...)`` losses (trailing axes
    summed: each element is a term of the sample's negative log-likelihood)."""
    if loss.ndim == 0 or loss.shape[0] != n:
        raise ValueError(
            f"deadspec.{fn}: loss_fn must return per-sample losses of shape ({n},) or "
            f'element-wise losses ({n}, ...) (reduction="none"), got {tuple(loss.shape)}'
        )
    return loss if loss.ndim == 1 else loss.reshape(n, -1).sum(1)


def sample_targets(output: torch.Tensor, task: str, generator: torch.Generator) -> torch.Tensor:
    """Targets drawn from the model's predictive distribution (the true Fisher)."""
    out = output.detach()
    if task == "classification":
        c = out.shape[-1]
        probs = torch.softmax(out.double(), dim=-1).reshape(-1, c)
        y = torch.multinomial(probs, 1, replacement=True, generator=generator)
        return y.reshape(out.shape[:-1])
    noise = torch.randn(out.shape, generator=generator, dtype=out.dtype, device=out.device)
    return out + noise


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
        for name, t in (("logits", logits), ("targets", targets)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(
                    f"deadspec.TokenCrossEntropy: {name} must be a torch.Tensor, got "
                    f"{type(t).__name__}"
                )
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
        try:
            per = F.cross_entropy(
                logits.reshape(-1, v),
                targets.reshape(-1).long(),
                reduction="none",
                ignore_index=self.ignore_index,
            ).reshape(n, t)
        except IndexError as exc:  # torch: "Target 7 is out of bounds"
            raise ValueError(
                f"deadspec.TokenCrossEntropy: targets must be token ids in [0, {v}) (or "
                f"ignore_index {self.ignore_index}), got {exc}"
            ) from None
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


def model_output(output: Any, fn: str) -> torch.Tensor:
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


