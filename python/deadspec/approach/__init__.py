"""Rates of approach to a singular point: approach slopes, directional orders, classification.

Modules: :mod:`.slope` (:func:`approach_slope`), :mod:`.order` (:func:`direction_order`),
:mod:`.classify` (:func:`classify_directions`, :func:`gauge_directions`).

Contract
--------
- :func:`approach_slope` scales the dead components of one ``nn.Linear`` layer by t over a log
  grid, reads a Gram at each t (the activation Gram of the layer's output, or the layer's
  per-sample-gradient Fisher-Gram), keeps the active set fixed at its size at the largest t and
  fits ``log det⁺`` and ``log λ_min`` against ``log t`` (theory.md §3). It works on a
  ``copy.deepcopy`` of the model: the caller's model is never modified.
- :func:`direction_order` measures the directional Fisher ``F_u(t)`` along a path with
  Jacobian–vector products only (``torch.func.jvp`` of ``torch.func.functional_call``), fits its
  log–log slope and classifies the direction. The model's modes and buffers are restored.
- Models run in their current train/eval mode, as in :func:`deadspec.read`.
"""

from __future__ import annotations

from deadspec.approach.classify import DirectionClass, classify_directions, gauge_directions
from deadspec.approach.order import DirectionOrder, direction_order
from deadspec.approach.slope import ApproachSlope, approach_slope

__all__ = [
    "ApproachSlope",
    "DirectionClass",
    "DirectionOrder",
    "approach_slope",
    "classify_directions",
    "direction_order",
    "gauge_directions",
]
