"""Runnable reproductions of the papers' claims (see ``deadspec repro --help``).

- :mod:`deadspec.experiments.rank_deficit`: the active-volume log det⁺ slope counts dead
  directions (slope ratios r against r = 1), while λ_min is rank-blind.
- :mod:`deadspec.experiments.rrr`: reduced-rank regression — calibrated LLC against the
  closed-form λ (Aoyagi–Watanabe), DDS rank tracking, and the cost of each.
- :mod:`deadspec.experiments.modadd`: a one-layer modular-addition transformer over a d_model
  sweep: DDS volumes against a calibrated LLC at a fixed budget.
- :mod:`deadspec.experiments.overtraining`, :mod:`deadspec.experiments.detection`,
  :mod:`deadspec.experiments.grokking`: DDCAdam/DDCMuon against AdamW/Muon (how far the
  validation loss rises past its minimum, cells in which the dead-direction rate reads, seeds
  of a deep transformer that grok).
- :mod:`deadspec.experiments.gauge_start`: every optimizer trained from θ₀ and from a rescaled
  g·θ₀ (the same function): what exact equivariance buys.
- :mod:`deadspec.experiments.vit`: a small vision transformer on scikit-learn's digits, DDCAdam
  against AdamW over seeds.
"""

from __future__ import annotations

from importlib import import_module

_MODULES = (
    "rank_deficit",
    "rrr",
    "modadd",
    "overtraining",
    "detection",
    "grokking",
    "gauge_start",
    "vit",
)
__all__ = list(_MODULES)


def __getattr__(name: str):
    if name in _MODULES:
        module = import_module(f"deadspec.experiments.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'deadspec.experiments' has no attribute {name!r}")
