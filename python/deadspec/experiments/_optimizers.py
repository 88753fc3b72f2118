"""The optimizers the DDC experiments compare (:func:`make_optimizer`).

- ``"ddc-adam"``: :class:`deadspec.optim.DDCAdam` (gauges discovered; HeadRotations ignored).
- ``"ddc-adam-split"``: the same with ``form="split"`` (theory.md §6's split step).
- ``"adamw"``: ``torch.optim.AdamW``.
- ``"muon"``: ``torch.optim.Muon`` on the 2-D hidden weights (every ``nn.Linear`` weight except
  the output head; embeddings excluded) + ``torch.optim.AdamW`` on the rest (embeddings, head,
  norm gains, biases), stepped together (:class:`MuonAdamW`).
- ``"ddc-muon"``: :class:`deadspec.optim.DDCMuon` (same split, in gauge-fixed coordinates).

``muon_adjust`` picks torch's Muon learning-rate adjustment: ``"match_rms_adamw"`` (used by the
LM experiments, so that one learning-rate grid is shared by Adam- and Muon-type optimizers:
the Muon update is rescaled to AdamW's RMS, 0.2·√max(rows, cols)) or ``"original"`` (Keller
Jordan's ``√max(1, rows/cols)``, what :class:`~deadspec.optim.DDCMuon` applies; used by the
grokking experiment, where the two Muon variants must match).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from deadspec.optim._muon import hidden_matrices as muon_matrices

__all__ = ["OPTIMIZERS", "MuonAdamW", "hidden_matrices", "make_optimizer"]

OPTIMIZERS = ("ddc-adam", "adamw", "muon", "ddc-muon", "ddc-adam-split")


class MuonAdamW:
    """``torch.optim.Muon`` on the hidden matrices + ``torch.optim.AdamW`` on the rest.

    Exposes ``step()``, ``zero_grad()`` and ``param_groups`` (both optimizers' groups), enough
    for the training loops here.
    """

    def __init__(self, muon: torch.optim.Optimizer | None, adamw: torch.optim.Optimizer) -> None:
        self.optimizers = [o for o in (muon, adamw) if o is not None]

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [g for o in self.optimizers for g in o.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for o in self.optimizers:
            o.step()


def hidden_matrices(model: nn.Module, head: str | Iterable[str]) -> list[nn.Parameter]:
    """The weights that take the Muon path, by DDCMuon's own rule (every ``nn.Linear`` weight
    and ``nn.MultiheadAttention`` input projection except the ``head`` module(s) and weights
    tied to an embedding), in ``model.parameters()`` order: plain Muon and DDCMuon split a model
    the same way."""
    heads = {head} if isinstance(head, str) else set(head)
    ids = muon_matrices(model, heads)
    return [p for p in model.parameters() if id(p) in ids]


def make_optimizer(
    name: str,
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float,
    head: str = "unembed",
    muon_lr: float | None = None,
    muon_adjust: str = "match_rms_adamw",
    betas: tuple[float, float] = (0.9, 0.98),
    momentum: float = 0.95,
    gauges: list[Any] | None = None,
) -> Any:
    """Build one of :data:`OPTIMIZERS` for ``model``.

    Parameters
    ----------
    name : {"ddc-adam", "adamw", "muon", "ddc-muon", "ddc-adam-split"}
    lr : float
        The AdamW learning rate (and the Muon one unless ``muon_lr`` is given).
    weight_decay : float
        Decoupled weight decay, the same on every path.
    head : str
        Name of the output layer (AdamW path of the Muon variants).
    muon_lr : float, optional
        Learning rate of the Muon path (default ``lr``).
    muon_adjust : {"match_rms_adamw", "original"}
        torch Muon's learning-rate adjustment (see the module docstring). ``"ddc-muon"`` only
        implements ``"original"``; with ``"match_rms_adamw"`` its Muon learning rate is
        converted per parameter (``0.2·√max(A, B) / √max(1, A/B)``) through param groups.
    betas : tuple of float
        Adam betas of the Adam-type paths.
    momentum : float
        Muon momentum.
    gauges : list of deadspec.gauges.Gauge, optional
        Gauges of the DDC optimizers (None: discovered).
    """
    import deadspec.optim as dopt

    if name not in OPTIMIZERS:
        raise ValueError(f"deadspec.make_optimizer: name must be one of {OPTIMIZERS}, got {name!r}")
    if muon_adjust not in ("match_rms_adamw", "original"):
        raise ValueError(
            f"deadspec.make_optimizer: muon_adjust must be 'match_rms_adamw' or 'original', got "
            f"{muon_adjust!r}"
        )
    mlr = lr if muon_lr is None else muon_lr
    if name in ("ddc-adam", "ddc-adam-split"):
        form = "split" if name == "ddc-adam-split" else "coordinate"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "HeadRotation ignored" (an Adam base cannot use it)
            return dopt.DDCAdam(
                model, lr=lr, betas=betas, weight_decay=weight_decay, gauges=gauges, form=form
            )
    if name == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=lr, betas=betas, weight_decay=weight_decay)
    hidden = hidden_matrices(model, head)
    hidden_ids = {id(p) for p in hidden}
    rest = [p for p in model.parameters() if id(p) not in hidden_ids]
    if name == "muon":
        muon = torch.optim.Muon(
            hidden,
            lr=mlr,
            weight_decay=weight_decay,
            momentum=momentum,
            adjust_lr_fn=muon_adjust,
        )
        adamw = torch.optim.AdamW(rest, lr=lr, betas=betas, weight_decay=weight_decay)
        return MuonAdamW(muon, adamw)
    # ddc-muon
    if muon_adjust == "original":
        groups = None
    else:
        groups = [{"params": rest, "use_muon": False, "lr": lr}]
        for p in hidden:
            a, b = p.shape
            ratio = 0.2 * math.sqrt(max(a, b)) / math.sqrt(max(1.0, a / b))
            groups.append({"params": [p], "use_muon": True, "lr": mlr * ratio})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dopt.DDCMuon(
            model,
            lr=mlr,
            momentum=momentum,
            weight_decay=weight_decay,
            adamw_lr=lr,
            adamw_betas=betas,
            head=head,
            params=groups,
            gauges=gauges,
        )
