"""Read the activation and Fisher-Gram spectra of a torch model's layers.

Contract
--------
- Layers are addressed by their ``model.named_modules()`` names. The **activation side** is
  defined for any module whose output is a tensor: the rows of the activation matrix are the
  module's outputs (the last axis is the feature axis; for ``nn.Conv*`` modules the channel axis
  1 is moved last). Sequence outputs ``B×T×h`` give one row per token (``pool="none"``) or one
  row per sample (``pool="mean"``).
- The **Fisher side** is defined for ``nn.Linear`` only; any other module gets
  ``LayerReading.fisher = None`` (no error). It is the per-sample-gradient Fisher-Gram
  ``K_ij = <g_i, g_j>/N`` of the layer's weight (and bias, if present), built by
  :func:`deadspec.ops.fisher_gram` from the layer's inputs and the gradients of each sample's
  own loss with respect to the layer's output.
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

import dataclasses
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from deadspec.ops import GramAccumulator, Spectrum, fisher_gram, gram, spectrum

__all__ = ["LayerReading", "Reading", "read"]

_LABELS = ("observed", "sampled")
_POOLS = ("none", "mean")
_TASKS = ("classification", "regression")
_RECORD_KEYS = (
    "logdet_plus",
    "active",
    "structural_zeros",
    "dead_count",
    "clipped",
    "lambda_min",
    "effective_rank",
    "participation_ratio",
    "condition_number",
)


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, repr=False)
class LayerReading:
    """Spectra read at one layer.

    Attributes
    ----------
    name : str
        The layer's ``named_modules()`` name.
    activation : Spectrum
        Spectrum of the activation Gram (``h×h``, or ``R×R`` when there are fewer rows R than
        features h; the non-zero spectrum is the same).
    fisher : Spectrum or None
        Spectrum of the ``N×N`` per-sample-gradient Fisher-Gram; None for modules other than
        ``nn.Linear`` or when ``fisher=False``.
    n_samples : int
        Number of samples N.
    n_rows : int
        Number of rows R of the activation matrix (``N·T`` for token rows, else N).
    """

    name: str
    activation: Spectrum
    fisher: Spectrum | None
    n_samples: int
    n_rows: int = 0

    def __repr__(self) -> str:
        def side(s: Spectrum | None) -> str:
            if s is None:
                return "None"
            return (
                f"<dim={len(s.eigenvalues)} active={s.active} dead={s.dead_count} "
                f"logdet+={s.logdet_plus:.4g}>"
            )

        return (
            f"LayerReading(name={self.name!r}, n_samples={self.n_samples}, "
            f"activation={side(self.activation)}, fisher={side(self.fisher)})"
        )


class Reading(Mapping):
    """The result of :func:`read`: a read-only mapping ``layer name -> LayerReading``.

    Iteration follows the order of the requested layers.

    Attributes
    ----------
    n_samples : int
        Number of samples read.
    labels : str
        ``"observed"`` or ``"sampled"`` (labels used on the Fisher side).
    pool : str
        Row convention of sequence outputs (``"none"`` or ``"mean"``).
    center : bool
        Whether the activation Grams were centred.
    """

    def __init__(
        self,
        layers: Mapping[str, LayerReading],
        *,
        n_samples: int,
        labels: str = "observed",
        pool: str = "none",
        center: bool = False,
    ) -> None:
        self._layers = dict(layers)
        self.n_samples = int(n_samples)
        self.labels = labels
        self.pool = pool
        self.center = bool(center)

    def __getitem__(self, name: str) -> LayerReading:
        try:
            return self._layers[name]
        except KeyError:
            raise KeyError(
                f"deadspec.Reading: no layer {name!r}; layers read: {list(self._layers)}"
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._layers)

    def __len__(self) -> int:
        return len(self._layers)

    def to_records(self) -> list[dict[str, Any]]:
        """One flat dict per layer × side (the side ``"fisher"`` only where it was read).

        Returns
        -------
        list of dict
            Keys: ``layer``, ``side`` (``"activation"`` | ``"fisher"``), ``n`` (rows of the
            activation matrix, or samples for the Fisher side), ``dim`` (size of the matrix
            whose spectrum was read), ``logdet_plus``, ``active``, ``structural_zeros``,
            ``dead_count``, ``clipped``, ``lambda_min``, ``effective_rank``,
            ``participation_ratio``, ``condition_number``. Plain Python scalars, ready for
            ``pandas.DataFrame`` or ``csv.DictWriter``.
        """
        records: list[dict[str, Any]] = []
        for name, lr in self._layers.items():
            sides = [("activation", lr.activation, lr.n_rows)]
            if lr.fisher is not None:
                sides.append(("fisher", lr.fisher, lr.n_samples))
            for side, s, n in sides:
                rec: dict[str, Any] = {
                    "layer": name,
                    "side": side,
                    "n": int(n),
                    "dim": len(s.eigenvalues),
                }
                for key in _RECORD_KEYS:
                    value = getattr(s, key)
                    rec[key] = int(value) if isinstance(value, (int, np.integer)) else float(value)
                records.append(rec)
        return records

    def __repr__(self) -> str:
        head = (
            f"Reading(n_samples={self.n_samples}, labels={self.labels!r}, pool={self.pool!r}, "
            f"center={self.center})"
        )
        cols = ["layer", "side", "n", "dim", "active", "dead", "logdet+", "lambda_min", "eff_rank"]
        rows = []
        for r in self.to_records():
            rows.append(
                [
                    r["layer"] or "<root>",
                    r["side"],
                    str(r["n"]),
                    str(r["dim"]),
                    str(r["active"]),
                    str(r["dead_count"]),
                    f"{r['logdet_plus']:.4g}",
                    f"{r['lambda_min']:.3e}",
                    f"{r['effective_rank']:.3g}",
                ]
            )
        if not rows:
            return head
        widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(cols)]
        left = {0, 1}

        def fmt(row: Sequence[str]) -> str:
            return "  ".join(
                cell.ljust(w) if i in left else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(row, widths))
            ).rstrip()

        lines = [head, fmt(cols)] + [fmt(row) for row in rows]
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Private helpers shared with deadspec.approach
# --------------------------------------------------------------------------------------------


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _as_input_tuple(inputs: Any, fn: str) -> tuple[tuple[torch.Tensor, ...], int]:
    """Normalise ``inputs`` (a tensor or a tuple/list of tensors) to a tuple and its N."""
    if isinstance(inputs, torch.Tensor):
        tup: tuple[torch.Tensor, ...] = (inputs,)
    elif (
        isinstance(inputs, (tuple, list))
        and inputs
        and all(isinstance(x, torch.Tensor) for x in inputs)
    ):
        tup = tuple(inputs)
    else:
        raise TypeError(
            f"deadspec.{fn}: inputs must be a torch.Tensor or a non-empty tuple of tensors "
            f"(passed as model(*inputs)), got {type(inputs).__name__}"
        )
    for x in tup:
        if x.ndim == 0:
            raise ValueError(f"deadspec.{fn}: inputs must have a batch axis, got a 0-d tensor")
    n = tup[0].shape[0]
    if any(x.shape[0] != n for x in tup):
        raise ValueError(
            f"deadspec.{fn}: all inputs must share the batch size, got "
            f"{[tuple(x.shape) for x in tup]}"
        )
    if n == 0:
        raise ValueError(f"deadspec.{fn}: inputs must hold at least one sample, got N=0")
    return tup, int(n)


def _batch_slices(n: int, batch_size: int | None, fn: str) -> list[slice]:
    if batch_size is None:
        return [slice(0, n)]
    if (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, (int, np.integer))
        or batch_size < 1
    ):
        raise ValueError(
            f"deadspec.{fn}: batch_size must be a positive int or None, got {batch_size!r}"
        )
    b = int(batch_size)
    return [slice(i, min(i + b, n)) for i in range(0, n, b)]


def _resolve_layers(
    model: nn.Module, layers: str | Sequence[str] | None, fn: str
) -> list[tuple[str, nn.Module]]:
    named = dict(model.named_modules())
    if layers is None:
        out = [(name, m) for name, m in named.items() if isinstance(m, nn.Linear)]
        if not out:
            raise ValueError(
                f"deadspec.{fn}: layers=None reads every nn.Linear, but the model has none; "
                f"pass layers= from the available names {_names_list(named)}"
            )
        return out
    if isinstance(layers, str):
        layers = [layers]
    layers = list(layers)
    if not layers:
        raise ValueError(f"deadspec.{fn}: layers must name at least one module, got []")
    out = []
    seen: set[str] = set()
    for name in layers:
        if not isinstance(name, str):
            raise TypeError(f"deadspec.{fn}: layer names must be str, got {type(name).__name__}")
        if name not in named:
            raise ValueError(
                f"deadspec.{fn}: layer {name!r} is not a module name of the model; "
                f"available names: {_names_list(named)}"
            )
        if name not in seen:
            seen.add(name)
            out.append((name, named[name]))
    return out


def _names_list(named: Mapping[str, nn.Module]) -> str:
    return ", ".join(f"{(n or '<root>')!s} ({type(m).__name__})" for n, m in named.items())


def _infer_task(
    targets: torch.Tensor | None, loss_fn: Callable | None, task: str | None, fn: str
) -> str:
    if task is not None:
        if task not in _TASKS:
            raise ValueError(f"deadspec.{fn}: task must be one of {_TASKS} or None, got {task!r}")
        return task
    if targets is not None:
        return "regression" if targets.is_floating_point() else "classification"
    if isinstance(loss_fn, (nn.CrossEntropyLoss, nn.NLLLoss)):
        return "classification"
    if isinstance(loss_fn, (nn.MSELoss, nn.GaussianNLLLoss)):
        return "regression"
    raise ValueError(
        f"deadspec.{fn}: cannot tell a classification from a regression model: pass "
        f"task='classification' or 'regression', or targets (their dtype decides), got "
        f"targets=None, loss_fn={loss_fn!r}"
    )


def _default_loss(output: torch.Tensor, targets: torch.Tensor, fn: str) -> torch.Tensor:
    """Per-sample loss of the documented default convention, shape (N,)."""
    n = output.shape[0]
    if targets.dtype == torch.bool or targets.is_complex():
        raise TypeError(f"deadspec.{fn}: targets must be integer or float, got {targets.dtype}")
    if not targets.is_floating_point():
        if output.ndim != targets.ndim + 1 or output.shape[:-1] != targets.shape:
            raise ValueError(
                f"deadspec.{fn}: integer targets mean cross-entropy on logits of shape "
                f"targets.shape + (classes,), got output {tuple(output.shape)} and targets "
                f"{tuple(targets.shape)}"
            )
        c = output.shape[-1]
        per = F.cross_entropy(output.reshape(-1, c), targets.reshape(-1).long(), reduction="none")
        return per.reshape(n, -1).sum(1)
    if output.shape != targets.shape:
        raise ValueError(
            f"deadspec.{fn}: float targets mean the Gaussian loss 0.5·||y - f||² and must have "
            f"the output's shape {tuple(output.shape)}, got {tuple(targets.shape)}"
        )
    return 0.5 * (targets - output).pow(2).reshape(n, -1).sum(1)


def _per_sample_loss(
    output: Any, targets: torch.Tensor, loss_fn: Callable | None, fn: str
) -> torch.Tensor:
    if not isinstance(output, torch.Tensor):
        raise TypeError(
            f"deadspec.{fn}: the model output must be a tensor for the loss, got "
            f"{type(output).__name__} (wrap the model so that it returns the logits/predictions)"
        )
    n = output.shape[0]
    if loss_fn is None:
        return _default_loss(output, targets, fn)
    loss = loss_fn(output, targets)
    if not isinstance(loss, torch.Tensor):
        raise TypeError(f"deadspec.{fn}: loss_fn must return a tensor, got {type(loss).__name__}")
    if loss.ndim == 0:
        raise ValueError(
            f"deadspec.{fn}: loss_fn must return per-sample losses of shape (N,) "
            f'(construct it with reduction="none"), got a scalar'
        )
    if tuple(loss.shape) != (n,):
        raise ValueError(
            f"deadspec.{fn}: loss_fn must return per-sample losses of shape ({n},) "
            f'(reduction="none"; sum over positions/outputs per sample), got {tuple(loss.shape)}'
        )
    return loss


def _sample_targets(output: torch.Tensor, task: str, generator: torch.Generator) -> torch.Tensor:
    """Targets drawn from the model's predictive distribution (the true Fisher)."""
    out = output.detach()
    if task == "classification":
        c = out.shape[-1]
        probs = torch.softmax(out.double(), dim=-1).reshape(-1, c)
        y = torch.multinomial(probs, 1, replacement=True, generator=generator)
        return y.reshape(out.shape[:-1])
    noise = torch.randn(out.shape, generator=generator, dtype=out.dtype, device=out.device)
    return out + noise


def _make_generator(seed: int | None, device: torch.device) -> torch.Generator:
    g = torch.Generator(device=device)
    if seed is None:
        g.seed()
    else:
        g.manual_seed(int(seed))
    return g


class _ModelState:
    """Snapshot of modes, grads, requires_grad and buffers; ``restore()`` puts them back."""

    def __init__(self, model: nn.Module) -> None:
        self.modes = [(m, m.training) for m in model.modules()]
        self.params = [(p, p.requires_grad, p.grad) for p in model.parameters()]
        self.buffers: list[tuple[nn.Module, str, torch.Tensor, torch.Tensor]] = []
        # A train-mode forward may update buffers (batch-norm running statistics).
        if any(training for _, training in self.modes):
            for m in model.modules():
                for key, buf in m._buffers.items():
                    if buf is not None:
                        self.buffers.append((m, key, buf, buf.detach().clone()))

    def restore(self) -> None:
        for m, training in self.modes:
            m.training = training
        for p, requires_grad, grad in self.params:
            if p.requires_grad != requires_grad:
                p.requires_grad_(requires_grad)
            if p.grad is not grad:
                p.grad = grad
        with torch.no_grad():
            for m, key, buf, saved in self.buffers:
                m._buffers[key] = buf
                buf.copy_(saved)


def _progress(iterable: Any, enabled: bool | None, desc: str, total: int | None = None) -> Any:
    from tqdm.auto import tqdm

    disable = (not sys.stderr.isatty()) if enabled is None else (not enabled)
    return tqdm(iterable, desc=desc, total=total, disable=disable, leave=False)


def _activation_rows(
    out: torch.Tensor, module: nn.Module, pool: str, name: str, fn: str
) -> torch.Tensor:
    if not isinstance(out, torch.Tensor):
        raise TypeError(
            f"deadspec.{fn}: layer {name!r} ({type(module).__name__}) must output a tensor for "
            f"the activation side, got {type(out).__name__}"
        )
    if not out.is_floating_point():
        raise TypeError(
            f"deadspec.{fn}: layer {name!r} output must be floating point, got {out.dtype}"
        )
    x = out
    if isinstance(module, nn.modules.conv._ConvNd) and x.ndim >= 3:
        x = x.movedim(1, -1)  # channels last: one row per sample × position
    if x.ndim < 2:
        raise ValueError(
            f"deadspec.{fn}: layer {name!r} output must be batched (N×h or N×T×h), "
            f"got shape {tuple(out.shape)}"
        )
    if x.ndim == 2:
        return x
    b, h = x.shape[0], x.shape[-1]
    x = x.reshape(b, -1, h)
    if pool == "mean":
        return x.mean(dim=1)
    return x.reshape(-1, h)


def _check_finite(x: torch.Tensor, what: str, name: str, fn: str) -> None:
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"deadspec.{fn}: {what} of layer {name!r} must be finite, got NaN/Inf")


class _LayerState:
    """Per-layer accumulation across batches."""

    def __init__(self, name: str, module: nn.Module, fisher: bool, route: str | None) -> None:
        self.name = name
        self.module = module
        self.fisher = fisher
        self.route = route  # "feature" (h×h accumulator) | "sample" (keep rows); None = decide
        self.acc: GramAccumulator | None = None
        self.rows: list[torch.Tensor] = []
        self.n_rows = 0
        self.width = 0
        self.act_dtype: torch.dtype | None = None
        self.f_acts: list[torch.Tensor] = []
        self.f_grads: list[torch.Tensor] = []
        self.d_in = 0
        self.d_out = 0
        self.calls = 0
        self.cur_input: torch.Tensor | None = None
        self.probe: torch.Tensor | None = None

    # activation side -----------------------------------------------------------------------
    def add_rows(self, rows: torch.Tensor, batch: int, n_total: int) -> None:
        if self.act_dtype is None:  # first batch: fix the width and the route
            self.act_dtype = rows.dtype
            self.width = int(rows.shape[1])
            if self.route is None:
                total_rows = (rows.shape[0] // max(batch, 1)) * n_total
                self.route = "sample" if total_rows < self.width else "feature"
            if self.route == "feature":
                self.acc = GramAccumulator(self.width)
        if rows.shape[1] != self.width:
            raise ValueError(
                f"deadspec.read: layer {self.name!r} changed width between batches "
                f"({self.width} then {rows.shape[1]})"
            )
        # The core reads CPU memory: device tensors are copied to the host here.
        if self.route == "feature":
            self.acc.add(rows.detach().cpu())
        else:
            self.rows.append(rows.detach().to("cpu", copy=True))
        self.n_rows += int(rows.shape[0])

    def activation_gram(self, center: bool) -> Any:
        if self.route == "feature":
            return self.acc.gram(center=center)
        return gram(torch.cat(self.rows, dim=0), side="sample", center=center)


def _install_hooks(
    states: Sequence[_LayerState],
    pool: str,
    n_total: int,
    want_fisher: bool,
    fn: str,
    batch_ref: list[int],
) -> list[Any]:
    handles = []
    for st in states:

        def hook(
            module: nn.Module, args: tuple, kwargs: dict, out: Any, st: _LayerState = st
        ) -> Any:
            st.calls += 1
            if st.calls > 1:
                raise ValueError(
                    f"deadspec.{fn}: layer {st.name!r} was called more than once in one forward "
                    f"pass (shared module); reading a shared module is not supported"
                )
            rows = _activation_rows(out, module, pool, st.name, fn)
            _check_finite(rows, "activations", st.name, fn)
            # Consumed now: a later in-place op on `out` must not change what we read.
            st.add_rows(rows, batch_ref[0], n_total)
            if want_fisher and st.fisher:
                a = args[0] if args else kwargs.get("input")
                if not isinstance(a, torch.Tensor):
                    raise TypeError(
                        f"deadspec.{fn}: could not find the tensor input of layer {st.name!r}"
                    )
                _check_finite(a, "inputs", st.name, fn)
                st.cur_input = a.detach().to("cpu", copy=True)
                probe = torch.zeros_like(out, requires_grad=True)
                st.probe = probe
                # d loss / d probe == d loss / d (layer output), and parameters' .grad are
                # never touched; in-place ops downstream act on the sum, not on `out`.
                return out + probe
            return None

        handles.append(st.module.register_forward_hook(hook, with_kwargs=True))
    return handles


def _collect(
    model: nn.Module,
    inputs: Any,
    layers: str | Sequence[str] | None,
    *,
    targets: torch.Tensor | None,
    loss_fn: Callable | None,
    fisher: bool,
    labels: str,
    task: str | None,
    batch_size: int | None,
    pool: str,
    seed: int | None,
    progress: bool | None,
    route: str | None = None,
    fn: str = "read",
) -> tuple[list[_LayerState], int]:
    """Run the model over the data with hooks and accumulate per-layer statistics."""
    if labels not in _LABELS:
        raise ValueError(f"deadspec.{fn}: labels must be one of {_LABELS}, got {labels!r}")
    if pool not in _POOLS:
        raise ValueError(f"deadspec.{fn}: pool must be one of {_POOLS}, got {pool!r}")
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"deadspec.{fn}: model must be a torch.nn.Module, got {type(model).__name__}"
        )
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError(
            f"deadspec.{fn}: loss_fn must be callable or None, got {type(loss_fn).__name__}"
        )
    tup, n = _as_input_tuple(inputs, fn)
    slices = _batch_slices(n, batch_size, fn)
    resolved = _resolve_layers(model, layers, fn)
    states = [
        _LayerState(name, m, fisher and isinstance(m, nn.Linear), route) for name, m in resolved
    ]
    want_fisher = any(st.fisher for st in states)

    gen: torch.Generator | None = None
    if want_fisher:
        if labels == "observed":
            if targets is None:
                raise ValueError(
                    f"deadspec.{fn}: the Fisher side needs targets with labels='observed' "
                    f"(or use labels='sampled', or fisher=False), got targets=None"
                )
        else:
            task = _infer_task(targets, loss_fn, task, fn)
            gen = _make_generator(seed, tup[0].device)
        if targets is not None:
            if not isinstance(targets, torch.Tensor):
                raise TypeError(
                    f"deadspec.{fn}: targets must be a torch.Tensor, got {type(targets).__name__}"
                )
            if targets.ndim == 0 or targets.shape[0] != n:
                raise ValueError(
                    f"deadspec.{fn}: targets must have the inputs' batch size {n} on axis 0, got "
                    f"shape {tuple(targets.shape)}"
                )

    snapshot = _ModelState(model)
    batch_ref = [0]
    handles = _install_hooks(states, pool, n, want_fisher, fn, batch_ref)
    try:
        for sl in _progress(slices, progress, f"deadspec.{fn}", total=len(slices)):
            batch = tuple(x[sl] for x in tup)
            b = batch[0].shape[0]
            batch_ref[0] = b
            for st in states:
                st.calls = 0
                st.cur_input = None
                st.probe = None
            if want_fisher:
                with torch.enable_grad():
                    output = model(*batch)
                    _check_called(states, fn)
                    if labels == "observed":
                        y = targets[sl]
                    else:
                        if not isinstance(output, torch.Tensor):
                            raise TypeError(
                                f"deadspec.{fn}: the model output must be a tensor to sample "
                                f"labels, got {type(output).__name__}"
                            )
                        y = _sample_targets(output, task, gen)
                    losses = _per_sample_loss(output, y, loss_fn, fn)
                    if not bool(torch.isfinite(losses.detach()).all()):
                        raise ValueError(
                            f"deadspec.{fn}: per-sample losses must be finite, got NaN/Inf"
                        )
                    fisher_states = [st for st in states if st.fisher]
                    if not losses.requires_grad:
                        raise RuntimeError(
                            f"deadspec.{fn}: no gradient reached layers "
                            f"{[st.name for st in fisher_states]}: the loss does not depend on "
                            f"their outputs"
                        )
                    grads = torch.autograd.grad(
                        losses.sum(), [st.probe for st in fisher_states], allow_unused=True
                    )
                for st, g in zip(fisher_states, grads):
                    if g is None:
                        raise RuntimeError(
                            f"deadspec.{fn}: layer {st.name!r} received no gradient: its output "
                            f"does not reach the loss"
                        )
                    _check_finite(g, "output gradients", st.name, fn)
                    a = st.cur_input
                    if a.ndim < 2 or g.ndim < 2:
                        raise ValueError(
                            f"deadspec.{fn}: layer {st.name!r} must see batched inputs, got "
                            f"input shape {tuple(a.shape)}"
                        )
                    g = g.detach().cpu()
                    if a.ndim > 2:
                        a = a.reshape(b, -1, a.shape[-1])
                        g = g.reshape(b, -1, g.shape[-1])
                    st.d_in, st.d_out = int(a.shape[-1]), int(g.shape[-1])
                    st.f_acts.append(a)
                    st.f_grads.append(g)
                    st.cur_input = None
                    st.probe = None
            else:
                with torch.no_grad():
                    model(*batch)
                _check_called(states, fn)
    finally:
        for h in handles:
            h.remove()
        snapshot.restore()
    return states, n


def _check_called(states: Sequence[_LayerState], fn: str) -> None:
    for st in states:
        if st.calls == 0:
            raise RuntimeError(
                f"deadspec.{fn}: layer {st.name!r} was not called during the forward pass"
            )


def _activation_spectrum(
    st: _LayerState, center: bool, rtol: float | None, gap_ratio: float, vectors: bool = False
) -> Spectrum:
    g = st.activation_gram(center)
    return spectrum(
        g,
        rtol=rtol,
        gap_ratio=gap_ratio,
        vectors=vectors,
        input_dtype=_dtype_name(st.act_dtype),
        rtol_size=max(st.n_rows, st.width),
    )


def _fisher_spectrum(st: _LayerState, n: int, rtol: float | None, gap_ratio: float) -> Spectrum:
    acts = torch.cat(st.f_acts, dim=0)
    grads = torch.cat(st.f_grads, dim=0)
    k = fisher_gram(acts, grads, bias=st.module.bias is not None)
    return spectrum(
        k,
        rtol=rtol,
        gap_ratio=gap_ratio,
        input_dtype=_dtype_name(acts.dtype),
        # K is never formed from the N×p stack of per-sample gradients; its entries are
        # products of inner products over d_in and d_out coordinates.
        rtol_size=max(n, st.d_in + st.d_out),
    )


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


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
) -> Reading:
    """Read the activation-Gram and Fisher-Gram spectra of a model's layers.

    Parameters
    ----------
    model : torch.nn.Module
        Run as ``model(*inputs)`` in its current train/eval mode (call ``model.eval()`` first
        for deterministic readings). Left exactly as found (modes, ``.grad``,
        ``requires_grad``, buffers, hooks).
    inputs : Tensor or tuple of Tensor
        Batch-first inputs, N samples.
    targets : Tensor, optional
        N targets (batch-first). Needed for the Fisher side with ``labels="observed"``.
    loss_fn : callable, optional
        ``loss_fn(output, targets) -> Tensor (N,)`` of per-sample losses, e.g.
        ``nn.CrossEntropyLoss(reduction="none")``; a scalar loss raises ``ValueError``. Default
        convention: integer targets -> cross-entropy on the logits (summed over positions for
        sequence outputs); float targets -> Gaussian NLL with σ = 1 up to a constant,
        ``0.5·Σ_j (y_j − f_j)²`` per sample.
    layers : str or sequence of str, optional
        ``named_modules()`` names; None reads every ``nn.Linear``. Any module with a tensor
        output has an activation side; only ``nn.Linear`` has a Fisher side (others get
        ``fisher=None``).
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

    Returns
    -------
    Reading
        Mapping ``layer name -> LayerReading``.

    Raises
    ------
    ValueError
        Unknown layer (the message lists the available names), a loss_fn that does not return
        shape (N,), missing targets, NaN/Inf in activations, inputs or gradients (naming the
        layer), bad options.
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
    >>> records = r.to_records()  # one dict per layer × side, e.g. for pandas
    """
    states, n = _collect(
        model,
        inputs,
        layers,
        targets=targets,
        loss_fn=loss_fn,
        fisher=fisher,
        labels=labels,
        task=task,
        batch_size=batch_size,
        pool=pool,
        seed=seed,
        progress=progress,
        fn="read",
    )
    out: dict[str, LayerReading] = {}
    for st in states:
        act = _activation_spectrum(st, center, rtol, gap_ratio)
        fis = _fisher_spectrum(st, n, rtol, gap_ratio) if st.fisher else None
        out[st.name] = LayerReading(st.name, act, fis, n, st.n_rows)
    return Reading(out, n_samples=n, labels=labels, pool=pool, center=center)
