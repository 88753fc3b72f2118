"""``collect``: run a model over the data with capture hooks and accumulate per-layer statistics.

One forward pass per batch (and, for the Fisher side, one backward pass of ``Σ_i loss_i``
through zero "probe" tensors added to the layer outputs, so parameter ``.grad`` fields are
never written). The model's modes, grads, ``requires_grad`` and buffers are restored and every
hook removed on exit, also when an exception is raised.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from deadspec._engine.capture import (
    FISHER_KINDS,
    Capture,
    LayerState,
    build_states,
    check_called,
    install_hooks,
    layernorm_basis,
    on_call,
)
from deadspec._engine.inputs import (
    ModelState,
    as_input_tuple,
    batch_slices,
    check_finite,
    check_targets,
    make_generator,
)
from deadspec._engine.losses import (
    LABELS,
    TokenCrossEntropy,
    infer_task,
    model_output,
    per_sample_loss,
    sample_targets,
)
from deadspec._engine.mha import PatchedMHA
from deadspec._engine.sites import resolve_sites
from deadspec._usercode import MODEL_FORWARD, user_code
from deadspec._util import check_choice, check_model, unwrap_parallel
from deadspec._util import progress as progress_bar

__all__ = ["POOLS", "CollectOptions", "Collected", "collect", "validate"]

POOLS = ("none", "mean")


@dataclasses.dataclass(frozen=True)
class CollectOptions:
    """What :func:`collect` reads and how (the options of :func:`deadspec.read` it needs).

    ``route`` is the activation side's: ``"feature"`` (an ``h×h`` running Gram), ``"sample"``
    (the rows themselves) or None (the smaller of the two, decided per layer). ``fn`` names the
    public caller in messages.
    """

    targets: torch.Tensor | None = None
    loss_fn: Callable | None = None
    fisher: bool = True
    labels: str = "observed"
    task: str | None = None
    batch_size: int | None = None
    pool: str = "none"
    seed: int | None = None
    progress: bool | None = False
    route: str | None = None
    heads: bool = False
    gauges: bool = False
    fn: str = "read"
    n_total: int | None = None  #: the samples of all ranks (a read over a process group)


@dataclasses.dataclass
class Collected:
    """The per-layer states of a collection, in the order of the requested layers."""

    states: list[LayerState]
    n: int  #: number of samples


_NO_TARGETS = (
    "deadspec.{fn}: the Fisher side needs targets with labels='observed' "
    "(or use labels='sampled', or fisher=False), got targets=None"
)


def _check_options(model: nn.Module, opts: CollectOptions) -> None:
    fn = opts.fn
    check_choice(fn, "labels", opts.labels, LABELS)
    check_choice(fn, "pool", opts.pool, POOLS)
    check_model(model, fn)
    if opts.loss_fn is not None and not callable(opts.loss_fn):
        raise TypeError(
            f"deadspec.{fn}: loss_fn must be callable or None, got {type(opts.loss_fn).__name__}"
        )


def validate(model: nn.Module, inputs: Any, layers: Any, opts: CollectOptions) -> None:
    """The checks :func:`collect` makes before any forward pass (options, inputs, batch size,
    layers, targets), without running the model: a recorder (the monitor) fails at
    construction rather than at its first reading."""
    _check_options(model, opts)
    _, n = as_input_tuple(inputs, opts.fn)
    batch_slices(n, opts.batch_size, opts.fn)
    sites = resolve_sites(unwrap_parallel(model), layers, opts.heads, opts.fn)
    fisher = opts.fisher and any(spec.kind in FISHER_KINDS for _, spec in sites)
    if fisher and opts.labels == "observed" and opts.targets is None:
        raise ValueError(_NO_TARGETS.format(fn=opts.fn))
    if opts.targets is not None:
        check_targets(opts.targets, n, opts.fn)


class _Run:
    """One collection: the captures, the label sampler and the per-batch passes."""

    def __init__(
        self, model: nn.Module, captures: list[Capture], opts: CollectOptions, n: int
    ) -> None:
        self.model = model
        self.captures = captures
        self.fisher_caps = [c for c in captures if c.fisher]
        self.opts = opts
        self.n = n
        self.batch = 0
        self.where = "the inputs"  # the batch being read, for the note on the user's error
        self.out_dim = 0  # last-axis size of the model output (names the logit layer)
        self.task = opts.task
        self.gen: torch.Generator | None = None

    def prepare_labels(self, device: torch.device) -> None:
        """Check the targets (observed labels) or set up the sampler (sampled labels)."""
        opts, fn = self.opts, self.opts.fn
        if opts.targets is not None:
            check_targets(opts.targets, self.n, fn)
        if opts.labels == "observed":
            if opts.targets is None:
                raise ValueError(_NO_TARGETS.format(fn=fn))
        else:
            self.task = infer_task(opts.targets, opts.loss_fn, opts.task, fn)
            self.gen = make_generator(opts.seed, device)

    def call(self, cap: Capture, a: Any, out: Any) -> Any:
        """The capture callback (hooks and the patched attention call it)."""
        n_route = self.n if self.opts.n_total is None else self.opts.n_total
        return on_call(cap, a, out, self.opts.pool, n_route, self.batch, self.opts.fn)

    def start_batch(self, k: int, sl: slice, b: int) -> None:
        self.batch = b
        self.where = f"batch {k} of the inputs (rows {sl.start}:{sl.stop})"
        for cap in self.captures:
            cap.calls = 0
            cap.cur_input = None
            cap.probe = None

    def forward(self, batch: tuple[torch.Tensor, ...], patched: bool) -> None:
        """Activation side only: one forward pass."""
        # A fused fast path (nn.TransformerEncoderLayer in eval mode under no_grad) would skip
        # the patched attention: keep autograd on when attention is read.
        with torch.enable_grad() if patched else torch.no_grad():
            with user_code(self.opts.fn, f"{MODEL_FORWARD} on {self.where}"):
                self.model(*batch)
        check_called(self.captures, self.opts.fn)

    def _losses(self, batch: tuple[torch.Tensor, ...], sl: slice) -> torch.Tensor:
        opts, fn = self.opts, self.opts.fn
        with user_code(fn, f"{MODEL_FORWARD} on {self.where}"):
            output = self.model(*batch)
        check_called(self.captures, fn)
        output = model_output(output, fn)
        self.out_dim = int(output.shape[-1]) if output.ndim else 0
        if opts.labels == "observed":
            y = opts.targets[sl]
        else:
            y = sample_targets(output, self.task, self.gen)
            if isinstance(opts.loss_fn, TokenCrossEntropy) and opts.loss_fn.shift:
                # the token at t + 1 is drawn from the logits at t
                y = torch.cat([y[:, :1], y[:, :-1]], dim=1)
        losses = per_sample_loss(output, y, opts.loss_fn, fn)
        if not bool(torch.isfinite(losses.detach()).all()):
            raise ValueError(f"deadspec.{fn}: per-sample losses must be finite, got NaN/Inf")
        if not losses.requires_grad:
            raise RuntimeError(
                f"deadspec.{fn}: no gradient reached layers "
                f"{[c.key for c in self.fisher_caps]}: the loss does not depend on their outputs"
            )
        return losses

    def forward_backward(self, batch: tuple[torch.Tensor, ...], sl: slice) -> None:
        """Fisher side: forward, per-sample losses, one backward to the probes; keep (a, δ)."""
        with torch.enable_grad():
            losses = self._losses(batch, sl)
            grads = torch.autograd.grad(
                losses.sum(), [c.probe for c in self.fisher_caps], allow_unused=True
            )
        for cap, g in zip(self.fisher_caps, grads):
            self._keep(cap, g)

    def _keep(self, cap: Capture, g: torch.Tensor | None) -> None:
        fn, b = self.opts.fn, self.batch
        if g is None:
            raise RuntimeError(
                f"deadspec.{fn}: layer {cap.key!r} received no gradient: its output does not "
                f"reach the loss"
            )
        check_finite(g, "output gradients", cap.key, fn)
        a = cap.cur_input
        g = g.detach().cpu()
        if cap.kind == "embedding":
            a = a.reshape(b, -1)
            g = g.reshape(b, a.shape[1], g.shape[-1])
        else:
            if a.ndim < 2 or g.ndim < 2:
                raise ValueError(
                    f"deadspec.{fn}: layer {cap.key!r} must see batched inputs, got input shape "
                    f"{tuple(a.shape)}"
                )
            if a.ndim > 2:
                a = a.reshape(b, -1, a.shape[-1])
                g = g.reshape(b, -1, g.shape[-1])
        cap.f_acts.append(a)
        cap.f_grads.append(g)
        cap.cur_input = None
        cap.probe = None


def collect(
    model: nn.Module,
    inputs: Any,
    layers: str | Sequence[str] | None,
    options: CollectOptions,
) -> Collected:
    """Run ``model`` over ``inputs`` with capture hooks on ``layers``; return the states.

    Each :class:`~deadspec._engine.capture.LayerState` holds its activation rows (or their
    running Gram) and, through its capture, the layer inputs and output gradients of the
    Fisher side; at a LayerNorm output (``options.gauges``) its γ⁻¹ kernel basis.
    """
    opts, fn = options, options.fn
    _check_options(model, opts)
    # torch.compile: hooks fire in the eager forward of the original module. DDP: the module it
    # wraps, so that a reading's forward/backward neither syncs nor leaves DDP's reducer
    # expecting gradients (a read over ranks is `group=`'s business)
    model = unwrap_parallel(model)
    tup, n = as_input_tuple(inputs, fn)
    slices = batch_slices(n, opts.batch_size, fn)
    resolved = resolve_sites(model, layers, opts.heads, fn)
    states, captures = build_states(resolved, opts.fisher, opts.route, opts.gauges)
    for cap in captures:
        if cap.kind == "embedding" and cap.fisher and cap.module.scale_grad_by_freq:
            raise ValueError(
                f"deadspec.{fn}: nn.Embedding {cap.key!r} has scale_grad_by_freq=True: its "
                f"gradient depends on the whole batch, so per-sample gradients are not defined"
            )
    run = _Run(model, captures, opts, n)
    want_fisher = bool(run.fisher_caps)
    if want_fisher:
        run.prepare_labels(tup[0].device)
    snapshot = ModelState(model)
    patch = PatchedMHA(dict(model.named_modules()), captures, run.call, fn)
    handles: list[Any] = []
    try:
        handles = install_hooks(captures, run.call)
        bar = progress_bar(slices, opts.progress, f"deadspec.{fn}", total=len(slices))
        for k, sl in enumerate(bar):
            batch = tuple(x[sl] for x in tup)
            run.start_batch(k, sl, int(batch[0].shape[0]))
            if want_fisher:
                run.forward_backward(batch, sl)
            else:
                run.forward(batch, bool(patch.patched))
    finally:
        for h in handles:
            h.remove()
        patch.restore()
        snapshot.restore()
    for st in states:
        if opts.gauges and st.view is None:
            st.gauge_basis = layernorm_basis(st.module, st.width)
    for cap in captures:
        cap.out_dim = run.out_dim
    return Collected(states, n)
