"""The :class:`DeadDirectionMonitor`: recording readings along training."""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from deadspec._dist import check_group, on_root, rank_and_size
from deadspec._engine import collect, read_states, reading_options, validate
from deadspec._engine.gather import collect_over_group
from deadspec._engine.results import RECORD_KEYS, Reading
from deadspec._engine.sites import resolve_sites
from deadspec._files import check_output
from deadspec._util import check_bool, check_model, unwrap_parallel, write_csv
from deadspec.monitor._approach import (
    DEAD_NORM,
    DEAD_PROJECTION,
    FN,
    Checkpoint,
    Point,
    approach_table,
    call_approach,
    dead_directions,
    reference_cluster,
    resolve_approach,
    singular_values,
    weight_summary,
)
from deadspec.monitor._rates import (
    FitOptions,
    check_fit_options,
    check_int,
    check_predictions,
    rate_rows,
)
from deadspec.monitor._state import (
    STATE_FORMAT,
    approach_key,
    checkpoints_from_state,
    checkpoints_to_state,
)
from deadspec.reading import read

__all__ = ["DeadDirectionMonitor"]


def _cuda_devices(model: nn.Module) -> list[torch.device]:
    """The CUDA devices holding the model's parameters (their generators are forked too)."""
    return sorted({p.device for p in model.parameters() if p.device.type == "cuda"}, key=str)


def _read_defaults() -> dict[str, Any]:
    """The keyword defaults of :func:`deadspec.read` (the one place they are written)."""
    params = inspect.signature(read).parameters.values()
    keyword = inspect.Parameter.KEYWORD_ONLY
    # (`group` is how read runs, over a process group, not a reading option)
    return {
        p.name: p.default
        for p in params
        if p.kind is keyword and p.name not in ("layers", "group")
    }

_READ_OPTIONS = (
    "labels",
    "batch_size",
    "center",
    "pool",
    "rtol",
    "gap_ratio",
    "seed",
    "task",
    "gauges",
    "route",
)


class DeadDirectionMonitor:
    """Record DDS readings along training and fit the trajectory-rate readout.

    Call ``monitor.step(step)`` (or ``monitor(step)``) from the training loop; every ``every``
    steps it runs :func:`deadspec.read` on the probe batch. See the module docstring for the
    approach parameter, the window, the prediction table and the overhead.

    Parameters
    ----------
    model : torch.nn.Module
        The model being trained. Each reading leaves it as found (modes, ``.grad``,
        ``requires_grad``, buffers: :func:`deadspec.read`'s guarantee) and restores the random
        number generators (CPU and the model's CUDA devices) it drew from, so monitoring never
        changes a training run.
    layers : str or sequence of str, optional
        Layers to read (``named_modules()`` names, or the virtual names
        :func:`deadspec.read` accepts); None reads every linear-like layer.
    every : int
        Read when ``step % every == 0`` (≥ 1).
    inputs : Tensor or tuple of Tensor
        The fixed probe batch (N samples), read at every checkpoint.
    targets : Tensor, optional
        Probe targets for the Fisher side (``labels="observed"``).
    loss_fn : callable, optional
        Per-sample loss, as in :func:`deadspec.read`.
    fisher : bool
        Read the Fisher side too.
    approach : "dead-norm", "dead-projection", callable or dict
        The approach parameter: ``"dead-norm"`` (default, per layer the norm of the r smallest
        singular values of ``[W b]``, r the dead count of the last checkpoint's activation
        Gram), ``"dead-projection"`` (‖P_dead [W b]‖_F against that Gram's dead
        eigenvectors), ``approach(model) -> float`` (one value for all layers), or a dict
        ``layer -> "dead-norm" | "dead-projection" | callable | "<linear module name>"``
        (layers missing from the dict use ``"dead-norm"``).
    predictions : mapping, optional
        Overrides of :data:`DEFAULT_PREDICTIONS`, keyed ``"<side>.<observable>"``; values a
        number, None, or ``f(r) -> float``.
    tolerance : float
        Relative tolerance of a reading cell (default 0.25: within ±25% of the prediction).
    min_r2 : float
        Minimum R² of a reading cell (default 0.9).
    window : {"after-peak", "all"} or (first_step, last_step)
        Default window of :meth:`rates`.
    frac : float
        Keep window points with ``a ≤ frac·a_peak`` (0 < frac ≤ 1; default 1).
    min_points : int
        Fewest points for a fit (default 4).
    fixed_active : bool
        Fit ``logdet_top(μ, k)`` and ``μ_k`` with the active size k fixed over the window
        (default), or each reading's own ``logdet_plus`` and ``lambda_min``.
    method : {"ols", "theil-sen"}
        Passed to :func:`deadspec.fit_slope`.
    group : torch.distributed process group, optional
        Read over the group's ranks: every rank builds its monitor with the same options, its
        own shard of the probe batch as ``inputs``/``targets`` and the same model (as under
        ``DistributedDataParallel``), and each reading is :func:`deadspec.read`'s ``group=``
        reading of the concatenated probe batch (ranks in order; the ``"dead-projection"``
        reference Gram too), so every rank records the same readings, those of one process
        reading the whole batch. Each reading is a collective: **every rank must call**
        :meth:`step` **with the same steps** (a rank that skips a reading leaves the others
        waiting); an error during a reading on any rank raises on every rank.
        :meth:`to_csv` and :meth:`plot` write on rank 0 of the group only (the other ranks
        return without writing: their records are the same).
    **read_options
        Passed to :func:`deadspec.read`: ``labels``, ``batch_size``, ``center``, ``pool``,
        ``rtol``, ``gap_ratio``, ``seed``, ``task``, ``gauges``, ``route``.

    Raises
    ------
    ValueError
        Unknown layer (listing the available names), ``every < 1``, a layer whose default
        approach parameter is undefined (not linear-like: pass ``approach=``), missing targets
        for the observed Fisher side, bad options.
    TypeError
        Wrong argument types.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from deadspec.monitor import DeadDirectionMonitor
    >>> _ = torch.manual_seed(0)
    >>> model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1))
    >>> x, y = torch.randn(32, 4), torch.randn(32, 1)
    >>> monitor = DeadDirectionMonitor(model, ["0", "2"], every=10, inputs=x, targets=y)
    >>> opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    >>> for step in range(30):
    ...     opt.zero_grad()
    ...     loss = ((model(x) - y) ** 2).mean()
    ...     loss.backward()
    ...     opt.step()
    ...     _ = monitor(step)
    >>> len(monitor.records())  # 3 checkpoints × 2 layers × 2 sides
    12
    >>> count, total = monitor.cells_reading()
    """

    def __init__(
        self,
        model: nn.Module,
        layers: str | Sequence[str] | None = None,
        *,
        every: int = 1,
        inputs: torch.Tensor | Sequence[torch.Tensor],
        targets: torch.Tensor | None = None,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        fisher: bool = True,
        approach: str | Callable[[nn.Module], float] | Mapping[str, Any] = DEAD_NORM,
        predictions: Mapping[str, Any] | None = None,
        tolerance: float = 0.25,
        min_r2: float = 0.9,
        window: str | tuple[int, int] = "after-peak",
        frac: float = 1.0,
        min_points: int = 4,
        fixed_active: bool = True,
        method: str = "ols",
        group: Any = None,
        **read_options: Any,
    ) -> None:
        self.group = check_group(FN, group)
        check_model(model, FN)
        model = unwrap_parallel(model)  # torch.compile: the original module (eager); DDP: its own
        self.every = check_int(every, "every", 1)
        unknown = sorted(set(read_options) - set(_READ_OPTIONS))
        if unknown:
            raise TypeError(
                f"deadspec.{FN}: read options must be among {_READ_OPTIONS}, got {unknown}"
            )
        labels = read_options.get("labels", "observed")
        if fisher and targets is None and labels == "observed":
            raise ValueError(
                f"deadspec.{FN}: targets must be given for the Fisher side with "
                f"labels='observed' (or pass fisher=False or labels='sampled'), got None"
            )
        sites = resolve_sites(model, layers, False, FN)
        self.fisher = check_bool(FN, "fisher", fisher)
        # every read option, the inputs and targets checked now, not at the first reading
        kw = {**_read_defaults(), **read_options, "fn": FN}
        kw.update(targets=targets, loss_fn=loss_fn, fisher=self.fisher, progress=False)
        validate(model, inputs, [name for name, _ in sites], reading_options(**kw)[0])
        self.model = model
        self.layers: list[str] = [name for name, _ in sites]
        self.inputs = inputs
        self.targets = targets
        self.loss_fn = loss_fn
        self.read_options = dict(read_options)
        check_fit_options(tolerance, min_r2, window, frac, min_points, method)
        self.tolerance = float(tolerance)
        self.min_r2 = float(min_r2)
        self.window = window
        self.frac = float(frac)
        self.min_points = int(min_points)
        self.fixed_active = check_bool(FN, "fixed_active", fixed_active)
        self.method = method
        self.predictions = check_predictions(predictions)
        # per layer: (DEAD_NORM | DEAD_PROJECTION, weight module name) or ("callable", fn)
        self._approach = resolve_approach(model, sites, approach)
        self._checkpoints: list[Checkpoint] = []
        self._ref_gram: dict[str, np.ndarray] = {}
        self._calls = 0
        self._cache: tuple[int, dict[str, np.ndarray]] | None = None

    # ----------------------------------------------------------------------------------------
    # Recording
    # ----------------------------------------------------------------------------------------

    def __call__(self, step: int | None = None, *, force: bool = False) -> Reading | None:
        """Same as :meth:`step`."""
        return self.step(step, force=force)

    def step(self, step: int | None = None, *, force: bool = False) -> Reading | None:
        """Read the model if ``step % every == 0`` (or ``force``); else do nothing.

        Parameters
        ----------
        step : int, optional
            The training step. None counts the calls (0, 1, 2, ...).
        force : bool
            Read whatever the step (e.g. once more at the end of training). With a process
            group every rank must call with the same ``step`` and ``force``: a reading is a
            collective.

        Returns
        -------
        Reading or None
            The :class:`deadspec.Reading` taken, or None when this step is not read.

        Raises
        ------
        ValueError
            A negative step, or a step not after the last one recorded.
        """
        if step is None:
            step = self._calls
        step = check_int(step, "step", 0)
        self._calls = step + 1
        if not force and step % self.every:
            return None
        if self._checkpoints and step <= self._checkpoints[-1].step:
            raise ValueError(
                f"deadspec.{FN}: step must be after the last recorded step "
                f"{self._checkpoints[-1].step}, got {step}"
            )
        return self._record(step)

    def _record(self, step: int) -> Reading:
        t0 = time.perf_counter()
        kw = {**_read_defaults(), **self.read_options, "fn": FN}
        kw.update(targets=self.targets, loss_fn=self.loss_fn, fisher=self.fisher, progress=False)
        collect_opts, read_opts = reading_options(**kw)
        # A train-mode forward draws dropout masks (and sampled labels draw too): the random
        # number generators are restored afterwards, so a reading never changes the run.
        with torch.random.fork_rng(devices=_cuda_devices(self.model)):
            if self.group is None:
                collected = collect(self.model, self.inputs, self.layers, collect_opts)
            else:  # the concatenated probe batch on rank 0 (None on the others)
                collected, _ = collect_over_group(
                    self.model, self.inputs, self.layers, collect_opts, self.group
                )
        center = bool(self.read_options.get("center", False))

        def read_collected() -> tuple[Reading, dict[str, np.ndarray]]:
            states = {st.name: st for st in collected.states}
            # the Gram the reading read, on the feature side (h×h) whatever its route
            grams = {name: states[name].feature_gram(center) for name in self.layers
                     if self._approach[name][0] == DEAD_PROJECTION}
            return read_states(collected, read_opts), grams

        if self.group is None:
            reading, grams = read_collected()
        else:  # read on rank 0, the reading and reference Grams broadcast
            reading, grams = on_root(FN, read_collected, self.group)
        self._ref_gram.update(grams)
        named = dict(self.model.named_modules())
        points: dict[str, Point] = {}
        for name in self.layers:
            lr = reading[name]
            point = Point(lr.activation, lr.fisher, int(lr.n_rows), int(lr.n_samples))
            kind, value = self._approach[name]
            if kind == DEAD_NORM:
                point.singular_values = singular_values(named[value])
            elif kind == DEAD_PROJECTION:
                summary, is_gram = weight_summary(named[value])
                if self._ref_gram[name].shape[0] != summary.shape[0]:
                    raise ValueError(
                        f"deadspec.{FN}: layer {name!r} output width "
                        f"{self._ref_gram[name].shape[0]} must match its weight's "
                        f"{summary.shape[0]} rows, got a mismatch"
                    )
                point.weight, point.weight_is_gram = summary, is_gram
            else:
                point.approach = call_approach(value, self.model, name)
            points[name] = point
        self._checkpoints.append(Checkpoint(step, time.perf_counter() - t0, points))
        self._cache = None
        return reading

    # ----------------------------------------------------------------------------------------
    # Approach parameter
    # ----------------------------------------------------------------------------------------

    @property
    def steps(self) -> list[int]:
        """Steps recorded so far."""
        return [c.step for c in self._checkpoints]

    @property
    def seconds(self) -> float:
        """Total wall time spent in readings (the monitor's overhead)."""
        return float(sum(c.seconds for c in self._checkpoints))

    def dead_directions(self, layer: str) -> np.ndarray:
        """The reference dead cluster ``U`` (h × r) of a layer's activation Gram.

        Eigenvectors (columns) of the last recorded activation Gram below its largest log-gap
        (``dead_count`` of them; r = 0 gives an ``h × 0`` array). Only for layers monitored
        with ``approach="dead-projection"`` (the only ones whose Gram is kept).
        """
        self._check_layer(layer)
        if self._approach[layer][0] != DEAD_PROJECTION:
            raise ValueError(
                f"deadspec.{FN}: dead_directions needs approach={DEAD_PROJECTION!r} for layer "
                f"{layer!r}, got {self._approach[layer][0]!r}"
            )
        if not self._checkpoints:
            raise ValueError(f"deadspec.{FN}: no checkpoint recorded yet, got 0")
        lo, hi = reference_cluster(self._checkpoints, layer)
        return dead_directions(self._ref_gram[layer], lo, hi)

    def approach_values(self, layer: str) -> np.ndarray:
        """The approach parameter a(t) of a layer at every recorded checkpoint (NaN: undefined)."""
        self._check_layer(layer)
        return self._approach_table()[layer].copy()

    def _approach_table(self) -> dict[str, np.ndarray]:
        n = len(self._checkpoints)
        if self._cache is None or self._cache[0] != n:
            table = approach_table(self._checkpoints, self.layers, self._approach, self._ref_gram)
            self._cache = (n, table)
        return self._cache[1]

    def _check_layer(self, layer: str) -> None:
        if layer not in self.layers:
            raise ValueError(
                f"deadspec.{FN}: layer must be one of the monitored layers {self.layers}, "
                f"got {layer!r}"
            )

    # ----------------------------------------------------------------------------------------
    # Results
    # ----------------------------------------------------------------------------------------

    def records(self) -> list[dict[str, Any]]:
        """One flat dict per checkpoint × layer × side.

        Returns
        -------
        list of dict
            Keys: ``step``, ``layer``, ``side``, ``approach`` (a(t); with the default approach
            measured against the latest reference, see the module docstring), ``n``, ``dim``
            and the spectral readings of :meth:`deadspec.Reading.to_records` (``logdet_plus``,
            ``active``, ``structural_zeros``, ``dead_count``, ``clipped``, ``lambda_min``,
            ``effective_rank``, ``participation_ratio``, ``condition_number``), and
            ``seconds`` (wall time of that checkpoint's reading).
        """
        table = self._approach_table()
        out: list[dict[str, Any]] = []
        for i, c in enumerate(self._checkpoints):
            for name in self.layers:
                p = c.layers[name]
                for side, spec, n in (
                    ("activation", p.activation, p.n_rows),
                    ("fisher", p.fisher, p.n_samples),
                ):
                    if spec is None:
                        continue
                    rec: dict[str, Any] = {
                        "step": c.step,
                        "layer": name,
                        "side": side,
                        "approach": float(table[name][i]),
                        "n": int(n),
                        "dim": int(spec.dim),
                    }
                    for key in RECORD_KEYS:
                        v = getattr(spec, key)
                        rec[key] = int(v) if isinstance(v, (int, np.integer)) else float(v)
                    rec["seconds"] = float(c.seconds)
                    out.append(rec)
        return out

    def to_csv(self, path: Any, *, what: str = "records", **rate_options: Any) -> None:
        """Write :meth:`records` (``what="records"``) or :meth:`rates` (``what="rates"``) as CSV.

        ``rate_options`` are passed to :meth:`rates`. Non-finite numbers are written as
        ``nan``/``inf``; a None prediction as an empty field. The file is written to a
        temporary name and renamed into place (a failed write leaves an earlier file as it was).
        A monitor with a process group writes on rank 0 of the group only; on the other ranks
        it returns without writing (and without checking ``path``).

        Raises
        ------
        ValueError
            ``path`` is a folder or in a folder that cannot be written (checked before the rows
            are computed), an unknown ``what``, nothing recorded yet.
        """
        if not self._writes_files():
            return
        check_output(f"{FN}.to_csv", "path", path)
        if what == "records":
            rows = self.records()
        elif what == "rates":
            rows = self.rates(**rate_options)
        else:
            raise ValueError(
                f"deadspec.{FN}.to_csv: what must be 'records' or 'rates', got {what!r}"
            )
        if not rows:
            raise ValueError(f"deadspec.{FN}.to_csv: nothing recorded yet, got 0 rows")
        write_csv(path, rows)

    def _writes_files(self) -> bool:
        """Files are written by a monitor without a group, or on rank 0 of its group."""
        return self.group is None or rank_and_size(self.group)[0] == 0

    def _fit_options(self, **rate_options: Any) -> FitOptions:
        def pick(key: str) -> Any:
            value = rate_options.get(key)
            return getattr(self, key) if value is None else value

        return FitOptions(
            pick("window"),
            pick("frac"),
            pick("min_points"),
            pick("tolerance"),
            pick("min_r2"),
            bool(pick("fixed_active")),
            pick("method"),
        )

    def rates(
        self,
        *,
        window: str | tuple[int, int] | None = None,
        frac: float | None = None,
        min_points: int | None = None,
        tolerance: float | None = None,
        min_r2: float | None = None,
        fixed_active: bool | None = None,
        method: str | None = None,
        approach_values: Mapping[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        """The trajectory-rate readout: one row per layer × side × observable.

        Each argument left None takes the constructor's value. ``approach_values`` (a dict
        ``layer -> a(t)``, one finite-or-NaN number per recorded checkpoint, in the order of
        :attr:`steps`) replaces the monitor's approach parameter for those layers in this
        readout: for a parameter that needs the whole run to define, such as one measured
        against a reference picked at the last checkpoint by the caller.

        Returns
        -------
        list of dict
            Keys: ``layer``, ``side``, ``observable`` (``logdet_plus`` | ``lambda_min`` |
            ``effective_rank``; the fitted y is log det⁺, log λ_min, log effective rank),
            ``slope``, ``intercept``, ``r2``, ``stderr`` (NaN without a fit), ``n_points``,
            ``predicted`` (float, or None when the table leaves the cell out), ``reads``
            (bool), ``dead_count`` (r used by the prediction), ``active`` (fixed k),
            ``first_step``, ``last_step`` (window), ``log_range`` (``log(a_max/a_min)`` over
            the fitted points).
        """
        fo = self._fit_options(
            window=window,
            frac=frac,
            min_points=min_points,
            tolerance=tolerance,
            min_r2=min_r2,
            fixed_active=fixed_active,
            method=method,
        )
        table = dict(self._approach_table())
        table.update(self._external_approach(approach_values))
        return rate_rows(self._checkpoints, self.layers, table, self.predictions, fo)

    def _external_approach(self, values: Mapping[str, Any] | None) -> dict[str, np.ndarray]:
        """``approach_values`` checked: monitored layers, one real number per checkpoint."""
        if values is None:
            return {}
        if not isinstance(values, Mapping):
            raise TypeError(
                f"deadspec.{FN}.rates: approach_values must be a dict layer -> values, got "
                f"{type(values).__name__}"
            )
        out = {}
        n = len(self._checkpoints)
        for layer, v in values.items():
            self._check_layer(layer)
            try:
                arr = np.asarray(v, dtype=np.float64)
            except (TypeError, ValueError):
                arr = None
            if arr is None or arr.shape != (n,):
                raise ValueError(
                    f"deadspec.{FN}.rates: approach_values[{layer!r}] must hold one number per "
                    f"recorded checkpoint ({n}), got {np.shape(v) if arr is not None else v!r}"
                )
            out[layer] = arr
        return out

    def cells_reading(self, **rate_options: Any) -> tuple[int, int]:
        """``(cells that read the predicted rate, cells with a prediction)``.

        ``rate_options`` (including ``approach_values``) are passed to :meth:`rates`. Cells
        whose prediction is None (by default the effective rank) are not counted in the total.
        """
        rows = self.rates(**rate_options)
        counted = [r for r in rows if r["predicted"] is not None]
        return sum(bool(r["reads"]) for r in counted), len(counted)

    # ----------------------------------------------------------------------------------------
    # State (checkpointing)
    # ----------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The recorded checkpoints, for saving with a training checkpoint.

        Holds only Python scalars, strings, lists, dicts and CPU float64 tensors, so it
        round-trips through ``torch.save`` / ``torch.load(weights_only=True)`` (and through a
        Lightning checkpoint). The model, the probe batch and the options are not in it: they
        belong to the monitor that loads it.

        Returns
        -------
        dict
            ``format``, ``layers``, ``fisher``, ``approach`` (per layer ``[kind, weight
            module]`` or ``["callable"]``), ``calls`` (the next implicit step),
            ``checkpoints`` (per checkpoint: step, seconds, per layer the spectra and what the
            approach parameter needs) and ``reference_grams`` (``"dead-projection"`` layers).
        """
        return {
            "format": STATE_FORMAT,
            "layers": list(self.layers),
            "fisher": self.fisher,
            "approach": {name: approach_key(self._approach[name]) for name in self.layers},
            "calls": int(self._calls),
            "checkpoints": checkpoints_to_state(self._checkpoints),
            "reference_grams": {
                name: torch.from_numpy(np.array(g, dtype=np.float64, copy=True))
                for name, g in self._ref_gram.items()
            },
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Replace the record with one saved by :meth:`state_dict` (e.g. to resume a run).

        After loading, :meth:`records`, :meth:`rates` and :meth:`cells_reading` give what they
        gave on the monitor that saved it, and :meth:`step` continues after its last step.

        Raises
        ------
        ValueError
            A state of another format, or saved by a monitor of other layers, another
            ``fisher`` setting or another approach parameter (kind or weight module).
        TypeError
            ``state_dict`` is not a mapping.
        """
        fn = f"{FN}.load_state_dict"
        if not isinstance(state_dict, Mapping):
            raise TypeError(
                f"deadspec.{fn}: state_dict must be a mapping, got {type(state_dict).__name__}"
            )
        if state_dict.get("format") != STATE_FORMAT:
            raise ValueError(
                f"deadspec.{fn}: state_dict must have format {STATE_FORMAT} (from "
                f"DeadDirectionMonitor.state_dict), got {state_dict.get('format')!r}"
            )
        mine = {
            "layers": list(self.layers),
            "fisher": self.fisher,
            "approach": {name: approach_key(self._approach[name]) for name in self.layers},
        }
        for key, value in mine.items():
            got = state_dict.get(key)
            got = dict(got) if isinstance(value, dict) and isinstance(got, Mapping) else got
            got = list(got) if isinstance(value, list) and isinstance(got, (list, tuple)) else got
            if got != value:
                raise ValueError(
                    f"deadspec.{fn}: the state must be for a monitor with {key}={value!r}, "
                    f"got {key}={got!r}"
                )
        checkpoints = checkpoints_from_state(state_dict["checkpoints"], self.layers)
        grams = {}
        for name, g in dict(state_dict.get("reference_grams", {})).items():
            grams[name] = g.detach().to("cpu", torch.float64).numpy().copy()
        needed = [n for n in self.layers if self._approach[n][0] == DEAD_PROJECTION]
        if checkpoints and set(needed) - set(grams):
            raise ValueError(
                f"deadspec.{fn}: the state must hold the reference Grams of the "
                f"'dead-projection' layers {needed}, got {sorted(grams)}"
            )
        self._checkpoints = checkpoints
        self._ref_gram = grams
        self._calls = check_int(state_dict.get("calls", 0), "calls", 0)
        self._cache = None

    # ----------------------------------------------------------------------------------------
    # Plot
    # ----------------------------------------------------------------------------------------

    def plot(self, path: Any, *, dpi: int = 100, **rate_options: Any) -> None:
        """Write a PNG: the observables against step and against log a, with the fits.

        One row per layer × side. Left: log det⁺, log λ_min and log effective rank of every
        reading against the step, each shifted to 0 at the first checkpoint. Right: the
        fixed-active-set values of the fitting window against ``log a`` (shifted to 0 at the
        window's first point), the fitted lines (solid) and the predicted slopes (dashed).
        Drawn with matplotlib's Agg canvas (no global backend change) and written to a
        temporary file renamed into place. ``path`` ends in ``.png`` (or another format
        matplotlib writes: ``.pdf``, ``.svg``, ...; the figure is written in that format).
        A monitor with a process group draws and writes on rank 0 of the group only; on the
        other ranks it returns without writing.

        Raises
        ------
        ValueError
            ``path`` is a folder, in a folder that cannot be written or has a suffix matplotlib
            cannot write (checked before the fits are computed); nothing recorded yet.
        """
        if not self._writes_files():
            return
        check_output(f"{FN}.plot", "path", path, figure=True)
        if not self._checkpoints:
            raise ValueError(f"deadspec.{FN}.plot: nothing recorded yet, got 0 checkpoints")
        from deadspec.monitor._plot import plot_monitor

        fo = self._fit_options(**rate_options)
        plot_monitor(
            path,
            self._checkpoints,
            self.layers,
            self._approach_table(),
            self.rates(**rate_options),
            window=fo.window,
            frac=fo.frac,
            fixed_active=fo.fixed_active,
            dpi=dpi,
        )

    def __repr__(self) -> str:
        return (
            f"DeadDirectionMonitor(layers={self.layers}, every={self.every}, "
            f"checkpoints={len(self._checkpoints)}, fisher={self.fisher})"
        )
