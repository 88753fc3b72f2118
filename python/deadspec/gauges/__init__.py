"""Gauges: the exact continuous symmetries of a network's loss that the DDC optimizers respect.

A *gauge* is a group acting on the parameters that leaves the loss unchanged (theory.md §1:
the gauge directions are exact structural zeros of the Fisher metric, never dead directions).
deadspec knows five kinds, as small dataclasses that users can also declare by hand:

============== ================================================================================
``Pair``       per-hidden-unit positive rescaling between a producer ``nn.Linear`` (row j of the
               weight and ``bias[j]`` scale by ``c_j > 0``) and its consumer(s) (column j of the
               weight scales by ``1/c_j``); valid when everything in between is positively
               homogeneous of degree 1, elementwise (ReLU, LeakyReLU, PReLU, Identity, Dropout,
               multiplication by a tensor that does not depend on the producer — the *linear*
               branch ``W_u`` of SwiGLU ``silu(W_g x) ⊙ (W_u x)``).
``Chain``      whole-layer rescaling ``a_ℓ`` of a chain of such layers with ``∏ a_ℓ = 1`` (the
               bias of layer ℓ scales by ``a_1⋯a_ℓ``). It is the subgroup of the per-unit
               ``Pair`` s of the chain with constant ``c``; reported by :func:`discover` for
               information (``covered=True`` when its Pairs were discovered too).
``NormScale``  LayerNorm/RMSNorm per-channel scale: ``(γ_i, β_i) ↦ c_i (γ_i, β_i)`` and column i
               of the consumer(s) ``↦ / c_i``. (The LayerNorm *output kernel* γ⁻¹ of theory.md §1
               is a reading concern, not a parameter gauge.)
``LogitShift`` the softmax cross-entropy logit shift on the output layer,
               ``W ↦ W + 1vᵀ``, ``b ↦ b + c·1`` (only with ``loss="cross_entropy"``).
``HeadRotation`` per-head attention rotations: ``q_h, k_h ↦ R q_h, R k_h`` (R orthogonal; with
               RoPE, R restricted to the 2×2 rotations that commute with RoPE's frequency
               blocks) and ``v_h ↦ Q v_h``, ``o[:, h] ↦ o[:, h] Qᵀ``. Declared and discovered
               here; DDCMuon and DDCAdam (``rotations=True``: the second moment shared per
               head) are exactly equivariant under them.
============== ================================================================================

Contract
--------
- Modules are addressed by their ``model.named_modules()`` names (or passed as the modules
  themselves; :meth:`Gauge.bind` turns them into names). Gauges returned by :func:`discover`
  hold names, so they are printable, picklable and apply to a copy of the model;
  :func:`bind` ``(gauges, model)`` turns names into the modules, for an optimizer that is
  given plain parameters (``DDCAdam(model.parameters(), gauges=bind(gauges, model))``).
- A ``torch.compile`` d model (``OptimizedModule``) is taken through the module it compiles
  (``_orig_mod``), so names are those of the uncompiled model.
- Every gauge offers ``validate(model)`` (structural checks: types, shapes, unshared
  parameters, and — when the model can be traced with ``torch.fx`` — that everything between
  producer and consumer is positively homogeneous), ``random_element(model, generator)``,
  ``apply(model, element)`` (acts in place, under ``torch.no_grad()``) and
  ``check(model, inputs, targets, loss_fn)`` (numerical invariance, float64, on a copy).
- Elements are float64 tensors: positive vectors ``c`` (Pair, NormScale), a positive vector
  ``a`` with product 1 (Chain), a pair ``(v, c)`` (LogitShift) and a dict of per-head orthogonal
  matrices (HeadRotation). ``apply`` casts them to each parameter's dtype and device.
- Discovery traces the model with ``torch.fx``; a model (or a submodule) that cannot be traced
  is handled bottom-up (untraceable submodules become opaque leaves) and, given ``inputs``, on
  its ``torch.export`` graph (``source="export"``); the structural
  recognisers (``_recognise``) read the standard blocks of GPT-2, Llama/Mistral/Qwen2, BERT,
  ViT and ``nn.TransformerEncoderLayer`` and every attention module with a known head layout
  (``source="recogniser:<family>"``; the table in docs/gauges.md); then ``nn.Sequential``
  order and the common MLP names (``fc1/act/fc2``, ``fc_in/act/fc_out``, SwiGLU
  ``w1/w2/w3`` and ``gate_proj/up_proj/down_proj``); gauges found by name only carry
  ``source="naming"`` and a warning recommends ``check=True``. Parameters shared between modules
  (tied weights) are never part of a discovered gauge, and a declared gauge on one is rejected.

Modules: :mod:`.kinds` (the gauge dataclasses), :mod:`.discovery` (:func:`discover`,
:func:`bind`, group elements over several gauges); private: ``_tracing`` (torch.fx),
``_export`` (the torch.export graph, for discovery with inputs), ``_homogeneity`` (which
operations a rescaling passes through), ``_recognise`` (the block recognisers), ``_modules``
(module and tensor helpers), ``_binding`` (module references, the stand-in model of
plain-parameter optimizers).
"""

from __future__ import annotations

from deadspec.gauges._modules import Ref as Ref  # the type of module references
from deadspec.gauges.discovery import (
    GaugeSet,
    apply_elements,
    bind,
    discover,
    random_elements,
    summary,
)
from deadspec.gauges.kinds import Chain, Gauge, HeadRotation, LogitShift, NormScale, Pair

__all__ = [
    "Chain",
    "Gauge",
    "GaugeSet",
    "HeadRotation",
    "LogitShift",
    "NormScale",
    "Pair",
    "apply_elements",
    "bind",
    "discover",
    "random_elements",
    "summary",
]

# Defined in the submodules, public here (and pickled under this name).
for _cls in (Chain, Gauge, GaugeSet, HeadRotation, LogitShift, NormScale, Pair):
    _cls.__module__ = __name__
del _cls
