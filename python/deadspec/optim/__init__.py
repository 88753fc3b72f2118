"""Dead-Direction Conditioners: optimizers whose state lives on gauge-invariant coordinates.

:class:`DDCAdam` is AdamW whose moments are kept in gauge-fixed, invariant coordinates, so the
update is exactly equivariant under the network's gauges (:mod:`deadspec.gauges`):
``step(g·θ) = g·step(θ)``. The design and its conventions are written up in ``docs/ddc.md``;
in short, for per-unit rescaling sites (ReLU/SwiGLU :class:`~deadspec.gauges.Pair` s,
LayerNorm/RMSNorm :class:`~deadspec.gauges.NormScale`), computed progressively along the
network,

- ``ρ_s`` = row norms of the producer block ``Ŵ = [W · diag(ρ_in) | b]`` (``(γ_i, β_i)`` for a
  norm), ``ρ_in`` the scales of the site feeding the producer's columns (1 if none);
- the invariant coordinates of a parameter are ``x̃ = x ⊙ σ⁻¹`` with the per-element scale
  ``σ = ρ_row / ρ_col`` (``ρ_row`` of the site whose rows it holds, ``ρ_col`` of the site whose
  units index its columns, 1 where none); the invariant gradient is ``g̃ = g ⊙ σ``;
- bias-corrected Adam runs on ``g̃`` and the update is mapped back, ``Δx = −η·u ⊙ σ``.

A parameter in no gauge has ``σ = 1``: AdamW's formula (with no gauge at all in the model,
torch's AdamW operations themselves, bit for bit; otherwise the fused pass, equal to it up to
round-off). No step writes a NaN/Inf: every value is checked before it is written, and the
``nonfinite`` policy applies to the coordinates that overflowed (``docs/ddc.md``, step 4). The
logit shift of a cross-entropy head needs no coordinate change (its gradient is already
invariant); only its decoupled weight decay skips the gauge component (the row mean).
On attention, the blocks a :class:`~deadspec.gauges.HeadRotation` rotates share their second
moment within each head, which makes Adam rotation-equivariant there (``rotations=True``).

:class:`DDCMuon` runs Muon (momentum, Newton–Schulz orthogonalisation, Keller's shape scale) on
the invariant coordinates of the hidden matrices and the same DDC AdamW on the rest; Muon's
orthogonaliser commutes with orthogonal maps, so DDCMuon is also exactly equivariant under the
attention :class:`~deadspec.gauges.HeadRotation` s (``docs/ddc.md`` §5).

Contract
--------
- Constructed with the model (gauges discovered) or, as any torch optimizer, with plain
  parameters and ``gauges=`` holding modules (:func:`deadspec.gauges.bind`): the same
  trajectory, bit for bit. ``maximize`` and ``foreach`` are honoured; torch's ``fused``,
  ``capturable``, ``differentiable`` (and DDCAdam's ``amsgrad``) raise NotImplementedError when
  True. A ``torch.compile`` d model is taken through the module it compiles
  (``docs/ddc.md`` §6).
- Any device and floating dtype (the moments have the parameter's dtype, as in torch's AdamW).
  The scales are computed in each producer's dtype; ``step`` is ``torch.no_grad``.
- ``state_dict()`` holds the per-parameter moments (shapes of the parameters, as torch's
  AdamW) plus a ``"ddc"`` entry (site names, ``gauge_mode`` and the per-site scalar moments of
  ``gauge_mode="damped"``); ``load_state_dict`` refuses a state built for other sites.
- Each parameter's update is a pure function of (parameter, gradient, its moments, its scale
  ``σ``, group hyper-parameters) and each site's scale a pure function of its producer block and
  its input scale (``deadspec.optim._functional``: ``ddc_adam``, ``site_rho``). On CPU the C++
  core runs both (``ddc_adam_update_many``: every block of a step in one call;
  ``ddc_row_norms``); the torch code is the reference and the path for other devices and dtypes.

Modules: :mod:`.adam` (:class:`DDCAdam`), :mod:`.muon` (:class:`DDCMuon`); private: ``_base``
(construction, scales, policies, state), ``_plan`` (sites and roles), ``_functional`` (the
per-block kernels and their dispatcher), ``_split`` (the split form), ``_muon`` (Newton–Schulz).
"""

from __future__ import annotations

from deadspec.optim.adam import DDCAdam
from deadspec.optim.muon import DDCMuon

__all__ = ["DDCAdam", "DDCMuon"]

# Defined in the submodules, public here (and pickled under this name).
DDCAdam.__module__ = __name__
DDCMuon.__module__ = __name__
