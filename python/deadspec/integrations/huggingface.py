"""A Hugging Face ``transformers.Trainer`` callback that drives a DeadDirectionMonitor.

:class:`DeadDirectionCallback` creates a :class:`~deadspec.monitor.DeadDirectionMonitor` of the
model the Trainer trains (unwrapped from DataParallel/DDP/DeepSpeed/``torch.compile``) when
training begins, reads the probe batch every ``every`` optimizer steps (``state.global_step``)
and hands the reading's scalars to the Trainer's own logging, so they reach every reporter
configured with ``report_to`` (TensorBoard, W&B, MLflow, ...) and ``state.log_history``.

How the scalars reach the reporters
-----------------------------------
The Trainer calls its callbacks in list order, and the reporters of ``report_to`` come
before the callbacks a user passes, so adding values to ``logs`` in a user callback's
``on_log`` would be too late for them. Two things make it work:

- at a reading step the callback sets ``control.should_log``, so the Trainer logs at that
  step (on top of its ``logging_steps``: the training loss is then logged at the reading
  steps too);
- the callback moves itself to the front of the Trainer's callback list the first time the
  Trainer calls it (``on_init_end`` when passed to ``Trainer(callbacks=...)``, else
  ``on_train_begin``), so its ``on_log`` adds the scalars to ``logs`` before any reporter
  sees them. It finds the list on the caller's stack (the Trainer's ``CallbackHandler``) and
  replaces it with a reordered copy, so the event being dispatched is not disturbed. If it
  cannot find it (a Transformers version that dispatches events differently) it warns and
  the scalars reach only the callbacks after it.

The scalars are added to the first log of the reading's step only; they are also copied into
that step's entry of ``state.log_history`` (saved in ``trainer_state.json``). The console
progress bar prints them as it prints every logged value (choose fewer with ``scalars=``).

Scalars
-------
Per layer and side, ``deadspec/<layer>/<side>/<key>`` for each key in ``scalars`` (default
:data:`SCALARS`: ``logdet_plus``, ``active``, ``dead_count``, ``lambda_min``,
``effective_rank``), and ``deadspec/seconds``; the table is in :mod:`deadspec.integrations`.
Reporters that prefix training values (TensorBoard, W&B: ``train/``) show them under that
prefix.

Steps and readings
------------------
The monitor reads at ``state.global_step % every == 0``: once when training begins (step 0,
or the step a resumed run starts at; recorded in :attr:`DeadDirectionCallback.monitor` but
not logged, since the Trainer writes no log before the first step) and after every
``every``-th optimizer step. A step at or before the monitor's last recorded step is not
read again. A reading runs with the model in eval mode (``eval_mode=True``) and leaves it as
it found it (modes, gradients, buffers, and the random number generators, so training draws
the same dropout masks and data order as without the callback); it does not touch the
optimizer. Every process of a distributed run reads (the reporters log on the
main process only); the model must be whole on each process (DDP, not FSDP/ZeRO-3).
The monitor's record is not saved in the Trainer's checkpoints: a resumed run starts a new
record (see :meth:`deadspec.monitor.DeadDirectionMonitor.state_dict` to save it yourself).
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Sequence
from typing import Any

try:
    from transformers import TrainerCallback
    from transformers.trainer_callback import CallbackHandler
except ImportError as _exc:  # pragma: no cover - exercised only without transformers
    raise ImportError(
        "deadspec.integrations.huggingface: needs the Hugging Face transformers package "
        f"(pip install transformers), got {type(_exc).__name__}: {_exc}"
    ) from _exc

from deadspec.integrations._driver import DEFAULT_SCALARS, MonitorDriver, unwrap_model
from deadspec.monitor import DeadDirectionMonitor

__all__ = ["SCALARS", "DeadDirectionCallback"]

SCALARS = DEFAULT_SCALARS
"""Default scalars logged per layer and side."""

_FN = "DeadDirectionCallback"


def _find_handler(callback: Any) -> Any:
    """The Trainer's ``CallbackHandler`` dispatching to ``callback``, from the call stack."""
    frame = inspect.currentframe()
    try:
        while frame is not None:
            owner = frame.f_locals.get("self")
            if isinstance(owner, CallbackHandler) and any(cb is callback for cb in owner.callbacks):
                return owner
            frame = frame.f_back
    finally:
        del frame
    return None


class DeadDirectionCallback(TrainerCallback):
    """Record Dead-Direction Signatures along a ``transformers.Trainer`` run and log them.

    See the module docstring for how the scalars reach the reporters, their names and the
    steps read.

    Parameters
    ----------
    layers : str or sequence of str, optional
        Layers of the trained model to read (its ``named_modules()`` names); None reads every
        linear-like layer.
    every : int
        Read every ``every`` optimizer steps (≥ 1).
    inputs : Tensor or tuple of Tensor
        The fixed probe batch (moved to the model's device when training begins). For a
        causal language model: ``input_ids`` (N × T).
    targets : Tensor, optional
        Probe targets for the Fisher side; for a causal language model the ``input_ids``
        themselves with ``loss_fn=deadspec.TokenCrossEntropy(shift=True)``.
    scalars : sequence of str
        Record keys logged per layer and side (default :data:`SCALARS`).
    eval_mode : bool
        Read with the model in eval mode (dropout off, batch-norm running statistics; the
        modes are restored after), as a diagnostic of the trained model should; False reads
        in the mode training left it in (train: dropout on). Either way the random number
        generators are restored after the reading, so training draws the same numbers.
    **monitor_options
        Passed to :class:`~deadspec.monitor.DeadDirectionMonitor` (``loss_fn``, ``fisher``,
        ``approach``, ``predictions``, read options such as ``batch_size``, ...).

    Attributes
    ----------
    monitor : DeadDirectionMonitor or None
        The monitor, created when training begins (None before): its :meth:`records`,
        :meth:`rates`, :meth:`plot` and :meth:`state_dict` after or during training.

    Raises
    ------
    TypeError, ValueError
        Bad ``every`` or ``scalars`` here; the monitor's own errors (unknown layer, missing
        targets, bad options) when training begins.

    Examples
    --------
    >>> cb = DeadDirectionCallback(                                # doctest: +SKIP
    ...     layers=["transformer.h.0.mlp.c_fc", "transformer.h.1.mlp.c_fc"], every=50,
    ...     inputs=probe_ids, targets=probe_ids, loss_fn=deadspec.TokenCrossEntropy(shift=True))
    >>> trainer = Trainer(model=model, args=args, train_dataset=ds, callbacks=[cb])
    >>> trainer.train()                                             # doctest: +SKIP
    >>> cb.monitor.records()                                        # doctest: +SKIP
    """

    def __init__(
        self,
        layers: str | Sequence[str] | None = None,
        *,
        every: int,
        inputs: Any,
        targets: Any = None,
        scalars: Sequence[str] = SCALARS,
        eval_mode: bool = True,
        **monitor_options: Any,
    ) -> None:
        self._driver = MonitorDriver(
            _FN, layers, every, inputs, targets, scalars, eval_mode, monitor_options
        )
        self._pending: tuple[int, dict[str, float]] | None = None
        self._warned = False

    @property
    def monitor(self) -> DeadDirectionMonitor | None:
        """The :class:`~deadspec.monitor.DeadDirectionMonitor` (None before training)."""
        return self._driver.monitor

    @property
    def every(self) -> int:
        """Read every ``every`` optimizer steps."""
        return self._driver.every

    def _go_first(self) -> None:
        """Run first in the Trainer's callback list (before the reporters); see the module
        docstring. Called on each Trainer's first event: a callback can serve several."""
        handler = _find_handler(self)
        if handler is None:
            if not self._warned:
                warnings.warn(
                    f"deadspec.{_FN}: could not find the Trainer's callback list on the call "
                    f"stack to run before the reporting callbacks, got none; the deadspec "
                    f"scalars reach only the callbacks listed after this one",
                    RuntimeWarning,
                    stacklevel=3,
                )
                self._warned = True
        elif handler.callbacks[0] is not self:
            # a new list: the loop dispatching the current event keeps iterating the old one
            handler.callbacks = [self] + [cb for cb in handler.callbacks if cb is not self]

    def on_init_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._go_first()

    def on_train_begin(
        self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any
    ) -> None:
        self._go_first()
        if model is None:
            raise ValueError(
                f"deadspec.{_FN}: the Trainer must hand the model to on_train_begin, got None"
            )
        self._driver.attach(unwrap_model(model))
        self._pending = None
        self._driver.read(int(state.global_step))  # the starting point: recorded, not logged

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        values = self._driver.read(int(state.global_step))
        if values is not None:
            self._pending = (int(state.global_step), values)
            control.should_log = True
        return control

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        if self._pending is None or logs is None:
            return
        step, values = self._pending
        if step != state.global_step:
            return
        logs.update(values)
        history = state.log_history
        if history and history[-1].get("step") == step:
            history[-1].update(values)
        self._pending = None
