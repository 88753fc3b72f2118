"""Upper bounds on the sizes a call may ask for, checked before anything is allocated.

A size that makes memory or time (chains, draws, burn-in, the points of a t grid, the settings
of a calibration sweep, probes, power iterations, layers, parameters) is refused above these
bounds with a ValueError that names the size, the bound and what to do — so that a typo such as
``chains=10**12`` fails at once instead of hanging in allocation (one generator per chain) or
running for years. The bounds are far above any useful run; they are documented here, in one
place, and quoted by the functions that apply them.
"""

from __future__ import annotations

import itertools
from typing import Any

__all__ = [
    "MAX_CHAINS",
    "MAX_GRID",
    "MAX_ITERS",
    "MAX_LAYERS",
    "MAX_NS_STEPS",
    "MAX_PARAMETERS",
    "MAX_PROBES",
    "MAX_SAMPLES",
    "MAX_STEPS",
    "MAX_TRACE",
    "check_at_most",
    "bounded_list",
]

#: Chains of one :func:`deadspec.llc.estimate` (each has its own generator and, vectorised, its
#: own copy of the parameters).
MAX_CHAINS = 10_000
#: SGLD steps (forward–backward passes) of one estimate, ``chains × (burnin + draws)``, and of
#: one calibration sweep, summed over its settings: 10⁹ (at 1 ms a step, 11 days).
MAX_STEPS = 10**9
#: Recorded draws of one estimate, ``chains × draws`` (its float64 loss trace: 1 GiB).
MAX_TRACE = 2**27
#: Points of a t grid (one reading each), settings of a calibration sweep, ε moves of ``extend``.
MAX_GRID = 10_000
#: Random probe directions of :func:`deadspec.direction_order` (one JVP pass each).
MAX_PROBES = 10_000
#: Power iterations of :func:`deadspec.llc.curvature_scale` (one Hessian–vector product each).
MAX_ITERS = 10**6
#: Newton–Schulz steps of one :class:`deadspec.optim.DDCMuon` step (three matrix products each).
MAX_NS_STEPS = 1_000
#: Linear layers of a model built from a config (:func:`deadspec.models.mlp`).
MAX_LAYERS = 10_000
#: Parameters of a model built from a config (2³⁴: 64 GiB in float32).
MAX_PARAMETERS = 2**34
#: Samples of a data set built from a config (:func:`deadspec.models.modadd_data`: p² pairs).
MAX_SAMPLES = 2**31


def check_at_most(fn: str, what: str, value: int, limit: int, remedy: str) -> None:
    """Raise ValueError ``deadspec.<fn>: <what> must be at most <limit>, got <value>; <remedy>``
    when ``value > limit`` (``value`` an int already validated as a size)."""
    if value > limit:
        raise ValueError(
            f"deadspec.{fn}: {what} must be at most {limit:,}, got {value:,}; {remedy}"
        )


def bounded_list(fn: str, what: str, values: Any, limit: int) -> list[Any]:
    """``list(values)`` for an iterable that must hold at most ``limit`` items: a sized one is
    checked by its length, any other (a generator) is read up to ``limit + 1`` items only, so a
    huge or endless one is refused without being materialised."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise TypeError(
            f"deadspec.{fn}: {what} must be a sequence of numbers, got {type(values).__name__}"
        )
    try:
        n = len(values)
    except TypeError:
        items = list(itertools.islice(iter(values), limit + 1))
        if len(items) > limit:
            raise ValueError(
                f"deadspec.{fn}: {what} must hold at most {limit:,} values, got more"
            ) from None
        return items
    check_at_most(fn, f"the number of {what}", int(n), limit, f"pass at most {limit:,}")
    return list(values)
