"""The LLC baseline the DDS experiments compare against: calibrate (ε, γ), then estimate.

:func:`calibrated_llc` runs :func:`deadspec.llc.calibrate` (its stability/plateau rule over an
(ε, γ) grid) and, when a setting is stable, :func:`deadspec.llc.estimate` at that setting with a
fresh seed at the protocol budget. Used by :mod:`~deadspec.experiments.rrr` and
:mod:`~deadspec.experiments.modadd`, which differ in loss, grid, budgets and seeds, and in the
columns they report.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["Chains", "calibrated_llc"]


@dataclasses.dataclass(frozen=True)
class Chains:
    """An SGLD budget: ``chains`` chains of ``draws`` draws after ``burnin`` steps."""

    chains: int
    draws: int
    burnin: int


def calibrated_llc(
    model: Any,
    data: Any,
    *,
    loss_fn: Callable,
    epsilons: Sequence[float] | None,
    gammas: Sequence[float] | None,
    calibration: Chains,
    estimate: Chains,
    seed: int,
    estimate_seed: int,
    nbeta: float | None = None,
    vectorize: bool | str = "auto",
    progress: bool = False,
) -> tuple[Any, Any]:
    """Calibrate at the ``calibration`` budget (seed ``seed``), then estimate at the chosen
    (ε, γ) at the ``estimate`` budget (seed ``estimate_seed``).

    Returns
    -------
    (calibration, estimate)
        The :class:`deadspec.llc.Calibration` and the :class:`deadspec.llc.LLCResult`, or None
        when no setting of the grid is stable.
    """
    from deadspec import llc

    cal = llc.calibrate(
        model,
        data,
        loss_fn=loss_fn,
        epsilons=epsilons,
        gammas=gammas,
        nbeta=nbeta,
        chains=calibration.chains,
        draws=calibration.draws,
        burnin=calibration.burnin,
        seed=seed,
        vectorize=vectorize,
        progress=progress,
    )
    if cal.epsilon is None:
        return cal, None
    res = llc.estimate(
        model,
        data,
        loss_fn=loss_fn,
        nbeta=nbeta,
        epsilon=cal.epsilon,
        gamma=cal.gamma,
        chains=estimate.chains,
        draws=estimate.draws,
        burnin=estimate.burnin,
        seed=estimate_seed,
        vectorize=vectorize,
        warn=False,
        progress=progress,
    )
    return cal, res
