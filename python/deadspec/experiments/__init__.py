"""Runnable reproductions of the papers' claims (see ``deadspec repro --help``).

- :mod:`deadspec.experiments.rank_deficit`: the active-volume log det⁺ slope counts dead
  directions (slope ratios r against r = 1), while λ_min is rank-blind.
"""

from __future__ import annotations

__all__ = ["rank_deficit"]


def __getattr__(name: str):
    if name == "rank_deficit":
        from importlib import import_module

        module = import_module("deadspec.experiments.rank_deficit")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'deadspec.experiments' has no attribute {name!r}")
