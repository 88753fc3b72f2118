"""Trainer integrations of :class:`~deadspec.monitor.DeadDirectionMonitor`.

- :mod:`deadspec.integrations.huggingface`: ``DeadDirectionCallback``, a
  ``transformers.TrainerCallback`` (needs ``pip install transformers``);
- :mod:`deadspec.integrations.lightning`: ``DeadDirectionCallback``, a
  ``lightning.pytorch.Callback`` whose state (the monitor's record) is saved in Lightning
  checkpoints (needs ``pip install lightning``).

This package imports neither framework (nor does ``import deadspec``); each submodule imports
its own at import and raises an ``ImportError`` naming the pip package when it is missing.

Both callbacks create the monitor when the trainer hands over the model (the probe batch moved
to its device), read every ``every`` optimizer steps (the trainer's global step) and log, per
monitored layer and side (``activation``; ``fisher`` unless ``fisher=False``), the reading's
values named ``deadspec/<layer>/<side>/<key>`` (the whole model, layer ``""``, is ``model``)
for each ``key`` in ``scalars``:

==================  =========================================================================
key (default set)   value
==================  =========================================================================
``logdet_plus``     log det⁺: Σ log μ over the active eigenvalues μ of the Gram
``active``          size of the active set (eigenvalues above ``rtol·μ_1``)
``dead_count``      active eigenvalues below the largest gap in log μ (the dead cluster)
``lambda_min``      smallest active eigenvalue
``effective_rank``  exp(entropy of μ/Σμ) over the active set
==================  =========================================================================

plus ``deadspec/seconds``, the wall time of that reading. ``scalars`` may list any spectral key
of :meth:`DeadDirectionMonitor.records` (also ``structural_zeros``, ``clipped``,
``participation_ratio``, ``condition_number``). The monitor itself is the callback's
``monitor`` attribute: its ``records()``, ``rates()``, ``plot()`` after (or during) training.
"""

from __future__ import annotations

__all__ = ["huggingface", "lightning"]
