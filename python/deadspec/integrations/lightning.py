"""A Lightning callback that drives a DeadDirectionMonitor and checkpoints its record.

:class:`DeadDirectionCallback` creates a :class:`~deadspec.monitor.DeadDirectionMonitor` of the
LightningModule (or of one of its submodules, ``module=``) when training starts and reads the
probe batch every ``every`` optimizer steps (``trainer.global_step``, in
``on_train_batch_end``). The scalars and their names are described in
:mod:`deadspec.integrations`. Each reading goes

- to every logger of the trainer (``trainer.loggers``: CSV, TensorBoard, W&B, ...), written
  once at step ``trainer.global_step`` with ``logger.log_metrics`` (then ``logger.save()``, as
  Lightning does);
- to ``trainer.callback_metrics`` through ``pl_module.log_dict(..., logger=False)``, so a
  ``ModelCheckpoint`` or ``EarlyStopping`` can monitor a deadspec scalar.

Why not ``pl_module.log`` alone: Lightning writes logged values to its loggers only at steps
where it writes logs (every ``log_every_n_steps`` batches), and writes the last value logged
with ``on_step=True`` again at each later logging step of the epoch, so readings would be
dropped or repeated at steps where none was taken. Note that Lightning logs what a batch
logs at that batch's index, one less than the global step after its optimizer step: the
loss of the batch whose update gave the reading at step S is at step S − 1.

Checkpoints: the callback's ``state_dict`` is the monitor's
(:meth:`~deadspec.monitor.DeadDirectionMonitor.state_dict`: plain scalars and CPU tensors, so
``weights_only`` loading works), saved by Lightning in every checkpoint under the callback's
``state_key``; resuming with ``trainer.fit(..., ckpt_path=...)`` restores it, and the monitor
continues its record from the checkpoint's step.

Steps read: ``trainer.global_step % every == 0``, once when training starts (step 0, or the
step a resumed run starts at; recorded but not logged, as Lightning allows no logging in
``on_train_start``) and after every ``every``-th optimizer step; a step at or before the last
recorded one is not read again (with gradient accumulation the step is read after the
optimizer step, once). A reading runs with the module in eval mode (``eval_mode=True``) and
leaves it as it found it (modes, gradients, buffers, and the random number generators, so
training draws the same numbers as without the callback).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

try:
    from lightning.pytorch import Callback
except ImportError as _exc:  # pragma: no cover - exercised only without lightning
    raise ImportError(
        "deadspec.integrations.lightning: needs the Lightning package (pip install lightning), "
        f"got {type(_exc).__name__}: {_exc}"
    ) from _exc

from deadspec.integrations._driver import DEFAULT_SCALARS, MonitorDriver
from deadspec.monitor import DeadDirectionMonitor

__all__ = ["SCALARS", "DeadDirectionCallback"]

SCALARS = DEFAULT_SCALARS
"""Default scalars logged per layer and side."""

_FN = "DeadDirectionCallback"


class DeadDirectionCallback(Callback):
    """Record Dead-Direction Signatures along a Lightning run, log them, checkpoint them.

    Parameters
    ----------
    layers : str or sequence of str, optional
        Layers to read, named as in ``pl_module.named_modules()`` (or in the submodule's, with
        ``module=``); None reads every linear-like layer.
    every : int
        Read every ``every`` optimizer steps (≥ 1).
    inputs : Tensor or tuple of Tensor
        The fixed probe batch, passed to the read module's ``forward`` (moved to its device
        when training starts).
    targets : Tensor, optional
        Probe targets for the Fisher side (``loss_fn`` as in :func:`deadspec.read`).
    module : str, optional
        Read this submodule of the LightningModule (``pl_module.get_submodule(module)``, e.g.
        ``"model"``) instead of the LightningModule itself.
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
        The monitor, created when training starts (None before).

    Examples
    --------
    >>> cb = DeadDirectionCallback(["model.0", "model.2"], every=50,   # doctest: +SKIP
    ...                            inputs=x_probe, targets=y_probe)
    >>> trainer = lightning.pytorch.Trainer(callbacks=[cb])
    >>> trainer.fit(module, loader)                                     # doctest: +SKIP
    >>> cb.monitor.rates()                                              # doctest: +SKIP
    """

    def __init__(
        self,
        layers: str | Sequence[str] | None = None,
        *,
        every: int,
        inputs: Any,
        targets: Any = None,
        module: str | None = None,
        scalars: Sequence[str] = SCALARS,
        eval_mode: bool = True,
        **monitor_options: Any,
    ) -> None:
        if module is not None and not isinstance(module, str):
            raise TypeError(
                f"deadspec.{_FN}: module must be a submodule name or None, got "
                f"{type(module).__name__}"
            )
        self._driver = MonitorDriver(
            _FN, layers, every, inputs, targets, scalars, eval_mode, monitor_options
        )
        self.module = module
        self._layers_key = layers if isinstance(layers, str) or layers is None else list(layers)

    @property
    def monitor(self) -> DeadDirectionMonitor | None:
        """The :class:`~deadspec.monitor.DeadDirectionMonitor` (None before training)."""
        return self._driver.monitor

    @property
    def every(self) -> int:
        """Read every ``every`` optimizer steps."""
        return self._driver.every

    @property
    def state_key(self) -> str:
        """Unique per layers, step interval and submodule (several callbacks can coexist)."""
        return self._generate_state_key(
            layers=self._layers_key, every=self.every, module=self.module
        )

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        model = pl_module
        if self.module is not None:
            try:
                model = pl_module.get_submodule(self.module)
            except AttributeError:
                raise ValueError(
                    f"deadspec.{_FN}: module must name a submodule of the LightningModule "
                    f"{type(pl_module).__name__}, got {self.module!r}"
                ) from None
        self._driver.attach(model)
        self._driver.read(int(trainer.global_step))  # the starting point: recorded, not logged

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = int(trainer.global_step)
        values = self._driver.read(step)
        if values is None:
            return
        for logger in trainer.loggers:
            logger.log_metrics(values, step=step)
            logger.save()
        pl_module.log_dict(values, on_step=True, on_epoch=False, logger=False, batch_size=1)

    def state_dict(self) -> dict[str, Any]:
        state = self._driver.state_dict()
        return {} if state is None else {"monitor": state}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        self._driver.load_state_dict(state_dict.get("monitor"))
