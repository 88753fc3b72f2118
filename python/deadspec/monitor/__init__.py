"""Record Dead-Direction Signatures along training and read the trajectory rate.

:class:`DeadDirectionMonitor` is a training-loop callback. Every ``every`` steps it calls
:func:`deadspec.read` on a fixed probe batch and keeps, per layer, the activation-side and
Fisher-side spectra (log det⁺, λ_min, dead_count, effective rank, ...). Afterwards it fits the
**trajectory-rate readout** (theory.md §3, "Trajectory mode"): the log–log slope of each
observable against a measured *approach parameter* a(t), compared with a predicted rate.

Approach parameter (default ``"dead-norm"``)
--------------------------------------------
Per layer ℓ (a linear-like module: output width h, weight ``W`` (h × d_in), bias ``b``; write
``W̃ = [W b]``, h × p with p = d_in + 1, or d_in without a bias) and r = the ``dead_count`` of
the layer's activation Gram **at the reference checkpoint, the last one recorded** (active
eigenvalues below the largest gap in log μ, counted when the gap ratio is ≥ ``gap_ratio``):

    a_ℓ(t) = ( Σ_{i = q−r+1..q} σ_i(W̃_t)² )^{1/2},   q = min(h, p),

the norm of the dead components of W̃_t: by Eckart–Young, the Frobenius distance from W̃_t to
the nearest matrix of rank q − r, i.e. to the singular set where r output directions are dead.
It needs no reference basis (only the count r), so for r units whose weights shrink as t it is
∝ t up to O(t²) relative corrections. If the reference has no dead cluster (r = 0) a(t) is NaN
for that layer and its cells have no slope (they are still counted in the total: no rate can be
read there). Assumes the probe inputs span the layer's input space (N ≥ p): a dead direction
made by the data rather than the weights is not seen by a(t).

``"dead-projection"``: a_ℓ(t) = ‖U_refᵀ W̃_t‖_F = ‖P_dead W̃_t‖_F with U_ref (h × r) the dead
cluster's eigenvectors of the reference activation Gram (the ``h×h`` Gram the reading itself
collected, centred with the γ⁻¹ kernel projected out at a gauged LayerNorm output) and
P_dead = U_ref U_refᵀ. It is biased near the reference: the dead eigenvectors mix in live output
directions by O(t_ref) (Schur complement), so ‖P_dead W̃_t‖ is ∝ t only for
t ≫ t_ref and the slopes come out a few per cent low when dead and live outputs are correlated;
hence not the default.

Either way a new checkpoint moves the reference (r, U_ref) and may change every value of
a(t): they are recomputed on demand. Alternatives: ``approach=callable`` (``approach(model) ->
float``, evaluated under ``torch.no_grad`` at each reading, one value for all layers), or a dict
``layer -> "dead-norm" | "dead-projection" | callable | "<module name>"`` (missing layers use
``"dead-norm"``); a module name applies ``"dead-norm"`` to the weight of that linear-like module
(e.g. ``{"1": "0"}`` reads the ReLU output ``"1"`` of an ``nn.Sequential`` against the weight
of the linear layer ``"0"`` feeding it; r still comes from ``"1"``'s activation Gram).
``"dead-norm"`` sees dead rows of a weight only when it has no more rows than columns (h ≤ p).
Finally :meth:`DeadDirectionMonitor.rates` takes ``approach_values={layer: a}``, one value per
recorded checkpoint, for a parameter whose reference is known only after the run.

Observables, fixed active set, window
-------------------------------------
Per layer and side (``"activation"``, ``"fisher"``) three observables are fitted against
``log a``: ``logdet_plus`` (already a log), ``lambda_min`` (its log) and ``effective_rank``
(its log). As in :func:`deadspec.approach_slope` the **active set is kept fixed** over the
fitted points (``fixed_active=True``): its size k is the largest ``active`` count recorded for
that layer and side (the analogue of the size at the largest t; dead directions that sink below
the round-off threshold stay tracked), log det⁺ is ``logdet_top(μ, k)`` and λ_min is μ_k.
Points where μ_k = 0 (clipped) are dropped. The **window** (``window="after-peak"``): the
points recorded at or after the largest a (the approach phase), restricted to
``a ≤ frac·a_peak`` (``frac=1`` keeps them all; a small frac keeps the asymptotic end); points
with a non-finite or non-positive a are dropped. ``window="all"`` fits every point with
``a ≤ frac·max a``; ``window=(first_step, last_step)`` fits the recorded steps in that range.
Fewer than ``min_points`` points (default 4) leave the slope NaN.

Predictions (``predictions=``; theory.md §1–3)
-----------------------------------------------
r is the ``dead_count`` of that side's spectrum at the last window point, plus the eigenvalues
of the fixed active set that are below the active threshold there (k − active): dead
directions approached so far that they read as structural zeros.

===============================  ==================  =========================================
cell                              default prediction  why
===============================  ==================  =========================================
``activation.logdet_plus``        2·r                 each dead direction's eigenvalue ∝ a²;
                                                      log det is additive (theory.md §1.4)
``activation.lambda_min``         2 (0 if r = 0)      rank-blind: one direction's rate
``activation.effective_rank``     None (not counted)  the dead eigenvalues' share of Σμ → 0,
                                                      so log eff. rank → const. (slope → 0,
                                                      no rate to read)
``fisher.logdet_plus``            2·r_F               K-FAC: F ≈ E[aaᵀ]⊗E[δδᵀ], a Fisher
                                                      eigenvalue is α_i·β_j and the rates of
                                                      the two factors add; a dead Fisher
                                                      direction with one dead factor (rate 2)
                                                      and one live factor (rate 0) has rate 2
``fisher.lambda_min``             2 (0 if r_F = 0)    one such direction
``fisher.effective_rank``         None (not counted)  as on the activation side
===============================  ==================  =========================================

The Fisher prediction assumes each dead Fisher direction has exactly one dead Kronecker factor
approached at the rate of a: the gradient side δ of a layer's dead outputs shrinks with a only
if their *outgoing* weights shrink too (balanced, as weight decay leaves a ReLU unit), and the
input side of the next layer shrinks with the dead units' activations. Where both factors are
dead (a layer between two dead layers) the rates add to 4 per direction: pass a different
table. Each table entry is a number, ``None`` (the cell is reported but not counted), or a
callable ``f(r) -> float``.

A cell **reads the rate** when its prediction p is not None and not 0 and the fitted slope s
satisfies ``|s − p| ≤ tolerance·|p|`` and ``R² ≥ min_r2`` (defaults 0.25 and 0.9). A cell
predicted 0 (no dead direction on that side) never reads: there is no rate to read.
:meth:`DeadDirectionMonitor.cells_reading` returns ``(reading, total)`` over the cells whose
prediction is not None — the paper's "readable in 32 of 65 layer × observable cells".

Overhead
--------
One reading is one :func:`deadspec.read` of the probe batch: a forward pass (and, with
``fisher=True``, a backward pass) over N probe samples, plus per layer an eigendecomposition of
the ``min(R, h)``-sized activation Gram and of the N×N Fisher-Gram (O(N³)). The default approach
parameter adds one singular-value decomposition of ``[W b]`` (O(h·p·min(h, p))) and stores
min(h, p) numbers; ``"dead-projection"`` instead keeps the reading's activation Gram on the
feature side (``h×h``; formed from the kept rows when the reading took the sample side), a copy
of ``[W b]`` (or of ``[W b][W b]ᵀ`` when h ≤ p) per checkpoint and the last activation Gram.
Stored per checkpoint and layer besides: the eigenvalues of both sides (≤ h + N numbers).
Amortised cost per training step = cost of a reading / ``every``;
:attr:`DeadDirectionMonitor.seconds` sums the measured wall time of the readings.
"""

from __future__ import annotations

from deadspec.monitor._monitor import DeadDirectionMonitor
from deadspec.monitor._rates import DEFAULT_PREDICTIONS, OBSERVABLES

__all__ = ["DEFAULT_PREDICTIONS", "OBSERVABLES", "DeadDirectionMonitor"]

DeadDirectionMonitor.__module__ = __name__
