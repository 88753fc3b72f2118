"""Read the activation and Fisher-Gram spectra of a torch model's layers.

Contract
--------
- Layers are addressed by their ``model.named_modules()`` names. The **activation side** is
  defined for any module whose output is a tensor: the rows of the activation matrix are the
  module's outputs (the last axis is the feature axis; for ``nn.Conv*`` modules the channel axis
  1 is moved last). Sequence outputs ``B×T×h`` give one row per token (``pool="none"``) or one
  row per sample (``pool="mean"``).
- The **Fisher side** is defined for linear-like layers (``nn.Linear``; Hugging Face
  ``Conv1D``, whose weight is stored ``in × out``: the Gram of the transposed per-sample
  gradients is the same; the q/k/v/out projections of ``nn.MultiheadAttention``, whose
  ``forward`` is replaced during the read by an equal one written with ``F.linear`` per
  projection) and for ``nn.Embedding`` (per-sample gradients are sparse rows of the table,
  summed per token). Any other module gets ``LayerReading.fisher = None`` (no error). It is the
  per-sample-gradient Fisher-Gram ``K_ij = <g_i, g_j>/N`` of the layer's weight (and bias, if
  present), built by :func:`deadspec.ops.fisher_gram` from the layer's inputs and the gradients
  of each sample's own loss with respect to the layer's output; for sequences
  ``g_i = Σ_t δ_it a_itᵀ`` and the route (block sums vs materialised per-sample gradients) is
  chosen by operation count (theory.md §2).
- **Heads** (``heads=True``): every attention head of a q/k/v projection (a block of output
  rows) or of an output projection (a block of input columns) is read as its own entry
  ``"<projection>[h=i]"``; the head entries share the capture of their projection.
- **Gauges** (``gauges=True``): exact symmetry zeros are excluded and reported, never counted
  as dead directions: the LayerNorm kernel γ⁻¹ (the centred Gram is read at a LayerNorm
  output) and the shift ``W ↦ W + 1vᵀ`` of a layer whose output gradients sum to zero (the
  cross-entropy logit shift).
- The model runs **in whatever train/eval mode it is in** (call ``model.eval()`` first for
  deterministic readings with dropout/batch-norm). The module modes, every parameter's
  ``.grad`` and ``requires_grad`` and every buffer's value (batch-norm running statistics
  updated by a train-mode forward) are restored on exit, and every hook is removed, also when
  an exception is raised. Parameter ``.grad`` fields are never written: the output gradients
  come from ``torch.autograd.grad`` on zero "probe" tensors added to the layer outputs.
- The model and data may live on any device. The core ops read CPU memory, so the captured
  activation rows (or the ``h×h`` running Gram), layer inputs and output gradients are copied
  to the host batch by batch; the forward/backward passes stay on the model's device.

Memory
------
Activation side, per layer: ``min(R, h)·h`` numbers, R the total number of activation rows
(the ``h×h`` :class:`~deadspec.ops.GramAccumulator` when ``R ≥ h``, else the ``R×h`` rows
themselves, from which the ``R×R`` Gram is formed). Either way the answer does not depend on
``batch_size``. Fisher side, per ``nn.Linear`` layer: ``K`` couples samples from different
batches, so the layer's (detached) inputs and output gradients are kept for the whole data
set, ``O(N·T·(d_in + d_out))`` numbers, and :func:`~deadspec.ops.fisher_gram` is called once on
their concatenation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from deadspec._dist import check_group, on_root
from deadspec._engine import collect, read_states, reading_options
from deadspec._engine.gather import collect_over_group
from deadspec._engine.losses import TokenCrossEntropy
from deadspec._engine.results import GaugeZero, LayerReading, Reading

__all__ = ["GaugeZero", "LayerReading", "Reading", "TokenCrossEntropy", "read"]

# The result types and the loss are defined in the private engine; they are public here.
for _cls in (GaugeZero, LayerReading, Reading, TokenCrossEntropy):
    _cls.__module__ = __name__
del _cls

def read(
    model: nn.Module,
    inputs: torch.Tensor | Sequence[torch.Tensor],
    *,
    targets: torch.Tensor | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    layers: str | Sequence[str] | None = None,
    fisher: bool = True,
    labels: str = "observed",
    batch_size: int | None = None,
    center: bool = False,
    pool: str = "none",
    rtol: float | None = None,
    gap_ratio: float = 1e3,
    seed: int | None = None,
    progress: bool | None = False,
    task: str | None = None,
    heads: bool = False,
    gauges: bool = True,
    route: str = "auto",
    joint: bool = False,
    group: Any = None,
) -> Reading:
    """Read the activation-Gram and Fisher-Gram spectra of a model's layers.

    Parameters
    ----------
    model : torch.nn.Module
        Run as ``model(*inputs)`` in its current train/eval mode (call ``model.eval()`` first
        for deterministic readings). Left exactly as found (modes, ``.grad``,
        ``requires_grad``, buffers, hooks, ``forward`` of attention modules).
    inputs : Tensor or tuple of Tensor
        Batch-first inputs, N samples (integer token ids are fine).
    targets : Tensor, optional
        N targets (batch-first). Needed for the Fisher side with ``labels="observed"``.
    loss_fn : callable, optional
        ``loss_fn(output, targets) -> Tensor (N,)`` of per-sample losses, e.g.
        ``nn.CrossEntropyLoss(reduction="none")`` or :class:`TokenCrossEntropy` for
        ``(N, T, V)`` logits, or element-wise losses ``(N, ...)`` (any torch loss with
        ``reduction="none"``: ``nn.MSELoss``, ``nn.BCEWithLogitsLoss``, ...), summed over their
        trailing dimensions per sample; a scalar loss raises ``ValueError``. Default convention:
        integer targets -> cross-entropy on the logits, **summed over positions** for sequence
        outputs
        (``(N, T, V)`` logits with ``(N, T)`` targets: sample i's loss is the sum of its token
        losses); float targets -> Gaussian NLL with σ = 1 up to a constant,
        ``0.5·Σ_j (y_j − f_j)²`` per sample. A model output that is not a tensor but has a
        tensor ``.logits`` (Hugging Face) is read through ``.logits``.
    layers : str or sequence of str, optional
        Names to read; None reads every linear-like layer: ``nn.Linear``, Hugging Face
        ``Conv1D`` (GPT-2; weight stored ``in × out``) and the projections of every
        ``nn.MultiheadAttention`` (virtual names ``"<mha>.q"``, ``"<mha>.k"``, ``"<mha>.v"``
        for the packed ``in_proj_weight``, and ``"<mha>.out_proj"``). Any module with a tensor
        output has an activation side. The Fisher side exists for linear-like layers and
        ``nn.Embedding`` (per-sample gradients are sparse rows of the table); other modules
        get ``fisher=None``. Per-head names (below) may be given directly.
    fisher : bool
        Read the Fisher side (one forward + one backward of Σ_i loss_i per batch, under
        ``torch.enable_grad``). With False the forward runs under ``torch.no_grad``.
    labels : {"observed", "sampled"}
        Targets for the Fisher side: the given ones (empirical Fisher) or drawn from the
        model's predictive distribution (true Fisher): a softmax sample for classification,
        ``f(x) + N(0, I)`` for regression, with a ``torch.Generator`` seeded by ``seed``.
    batch_size : int, optional
        Stream the data in batches of this size; the result does not depend on it.
    center : bool
        Centre the activation Gram (subtract the feature means).
    pool : {"none", "mean"}
        Sequence outputs ``N×T×h``: one activation row per token, or the per-sample mean.
        (The Fisher side always sums over positions: ``g_i = Σ_t δ_it a_itᵀ``.)
    rtol, gap_ratio : float
        Passed to :func:`deadspec.spectrum`. The default rtol is ``max(R, h)·ε`` of the
        activations' dtype (R rows, h features); on the Fisher side ``max(N, d_in + d_out)·ε``.
    seed : int, optional
        Seed of the label sampler (``labels="sampled"``); None draws a fresh seed. The draw is
        reproducible for a given (seed, batch_size); the generator is consumed batch by batch.
    progress : bool or None
        tqdm bar over batches; None shows it when stderr is a terminal.
    task : {"classification", "regression"}, optional
        Kind of predictive distribution for ``labels="sampled"``; by default from the targets'
        dtype (integer = classification), else from ``loss_fn``'s type.
    heads : bool
        Also read every attention head of each projection read, as its own entry
        ``"<projection>[h=i]"``: head i of a q/k/v projection is the block of output rows
        ``i·d_head:(i+1)·d_head`` (activation side: those output columns; Fisher side: the
        per-sample gradient of that block of the weight and bias), head i of an output
        projection the same block of input columns (activation side: the head's write
        ``a_h W_hᵀ`` into the output space; Fisher side: that block of the weight, no bias).
        Known layouts: modules with a ``deadspec_heads()`` method (:mod:`deadspec.models`'s
        ``SelfAttention``: ``"blocks.0.attn.q[h=2]"``), ``nn.MultiheadAttention``
        (``"mha.q[h=2]"``, ``"mha.out_proj[h=2]"``) and Hugging Face ``GPT2Attention``
        (``"…attn.q[h=2]"`` from ``c_attn``, ``"…attn.c_proj[h=2]"``).
    gauges : bool
        Find and exclude exact gauge zeros (reported in ``LayerReading.gauges``): at a
        ``nn.LayerNorm`` output the **centred** Gram is read (whatever ``center`` says) with
        the γ⁻¹ kernel projected out; on the Fisher side of a layer whose output gradients sum
        to 0 over its outputs (the cross-entropy logit shift, or a layer feeding a
        normalisation) the shift is projected out of δ. Both then count as structural zeros,
        never as dead directions.
    route : {"auto", "block-sum", "materialize"}
        Sequence Fisher-Gram algorithm (:func:`deadspec.fisher_gram`): ``"auto"`` takes the one
        with fewer operations for the layer's (N, T, d_in, d_out); the route taken is in
        ``LayerReading.route``.
    joint : bool
        Also read the **joint Fisher-Gram** of all the Fisher layers read (per-head entries
        excluded: they are blocks of their projection): the Fisher-Gram of the concatenated
        parameters, ``K = Σ_ℓ K_ℓ`` (per-sample gradients of disjoint parameter blocks add in
        the inner product), whose non-zero spectrum is that of the empirical Fisher of all those
        parameters together. Layers sharing a weight (tied weights) raise ValueError: their sum
        would miss the cross terms. It is a reading of the model rather than of a layer — the one to
        set beside a learning coefficient λ, which belongs to the whole model. In
        ``Reading.joint_fisher`` (a Spectrum; rtol size ``max(N, Σ(d_in + d_out))``), with the
        layers summed in ``Reading.joint_layers``; ``to_records`` adds it as layer
        ``"joint"``.
    group : torch.distributed process group, optional
        Read over the group's ranks (a collective: every rank calls it with its own shard of
        the batch as ``inputs``/``targets``): the reading of the concatenated batch, ranks in
        order, on every rank. The ranks exchange the collected states (rows or h×h Gram
        summaries, and the per-sample factors a and δ of the Fisher side, never per-sample
        gradients); rank 0 reads and broadcasts. ``Reading.bytes_sent`` gives the volume.
        ``labels="sampled"`` draws each rank's labels from its own generator. An error on any
        rank (its inputs, its forward pass, rank 0's reading) raises on every rank.

    Returns
    -------
    Reading
        Mapping ``layer name -> LayerReading``.

    Raises
    ------
    ValueError
        Unknown layer (the message lists the available names), a loss_fn that does not return
        shape (N,), missing targets, NaN/Inf in activations, inputs or gradients (naming the
        layer), outputs that are not batch-first, bad options.
    RuntimeError
        A Fisher layer whose output does not reach the loss, or a layer not called by the
        forward pass.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> import deadspec
    >>> _ = torch.manual_seed(0)
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    >>> x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
    >>> r = deadspec.read(model, x, targets=y, layers=["0", "1", "2"])
    >>> r["0"].activation.active  # rank of [W b] on [x; 1]: a width limit, 5 of 8
    5
    >>> r["1"].fisher is None  # ReLU output: activation side only
    True
    >>> r["2"].fisher.active <= (3 - 1) * (8 + 1)  # cross-entropy logit shift removes a class
    True
    >>> r["2"].gauges[0].kind, r["2"].gauges[0].dim  # ... and is reported as a gauge
    ('logit-shift', 9)
    >>> records = r.to_records()  # one dict per layer × side, e.g. for pandas
    """
    collect_opts, read_opts = reading_options(
        targets=targets,
        loss_fn=loss_fn,
        fisher=fisher,
        labels=labels,
        batch_size=batch_size,
        center=center,
        pool=pool,
        rtol=rtol,
        gap_ratio=gap_ratio,
        seed=seed,
        progress=progress,
        task=task,
        heads=heads,
        gauges=gauges,
        route=route,
        joint=joint,
    )
    group = check_group("read", group)
    if group is None:
        return read_states(collect(model, inputs, layers, collect_opts), read_opts)
    # over a process group: each rank collects its shard, rank 0 reads the concatenation
    collected, sent = collect_over_group(model, inputs, layers, collect_opts, group)
    reading = on_root("read", lambda: read_states(collected, read_opts), group)
    reading.bytes_sent = sent
    return reading
