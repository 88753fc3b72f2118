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
cluster's eigenvectors of the reference activation Gram (captured by a forward hook during the
reading) and P_dead = U_ref U_refᵀ. It is biased near the reference: the dead eigenvectors mix
in live output directions by O(t_ref) (Schur complement), so ‖P_dead W̃_t‖ is ∝ t only for
t ≫ t_ref and the slopes come out a few per cent low when dead and live outputs are correlated;
hence not the default.

Either way a new checkpoint moves the reference (r, U_ref) and may change every value of
a(t): they are recomputed on demand. Alternatives: ``approach=callable`` (``approach(model) ->
float``, evaluated under ``torch.no_grad`` at each reading, one value for all layers), or a dict
``layer -> "dead-norm" | "dead-projection" | callable | "<module name>"`` (missing layers use
``"dead-norm"``); a module name applies ``"dead-norm"`` to the weight of that linear-like module
(e.g. ``{"1": "0"}`` reads the ReLU output ``"1"`` of an ``nn.Sequential`` against the weight
of the linear layer ``"0"`` feeding it; r still comes from ``"1"``'s activation Gram).

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
                                                      log det is additive over them (§1)
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
min(h, p) numbers; ``"dead-projection"`` instead adds an ``h×h`` Gram update per activation row
(a forward hook during the same pass), a copy of ``[W b]`` (or of ``[W b][W b]ᵀ`` when
h ≤ p) per checkpoint and the last activation Gram (h×h). Stored per checkpoint and layer
besides: the eigenvalues of both sides (≤ h + N numbers). Amortised cost per training step = cost of a reading /
``every``; :attr:`DeadDirectionMonitor.seconds` sums the measured wall time of the readings.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from deadspec.ops import GramAccumulator, Spectrum, fit_slope, logdet_top, sym_eig
from deadspec.reading import (
    _RECORD_KEYS,
    Reading,
    _activation_rows,
    _module_kind,
    _resolve_sites,
    _weight_out_in,
    read,
)

__all__ = ["DEFAULT_PREDICTIONS", "OBSERVABLES", "DeadDirectionMonitor"]

_FN = "DeadDirectionMonitor"
DEAD_NORM = "dead-norm"
DEAD_PROJECTION = "dead-projection"
_BUILTIN = (DEAD_NORM, DEAD_PROJECTION)
SIDES = ("activation", "fisher")
OBSERVABLES = ("logdet_plus", "lambda_min", "effective_rank")
_WINDOWS = ("after-peak", "all")
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


def _two_r(r: int) -> float:
    return 2.0 * r


def _one_direction(r: int) -> float:
    return 2.0 if r >= 1 else 0.0


DEFAULT_PREDICTIONS: dict[str, float | Callable[[int], float] | None] = {
    "activation.logdet_plus": _two_r,
    "activation.lambda_min": _one_direction,
    "activation.effective_rank": None,
    "fisher.logdet_plus": _two_r,
    "fisher.lambda_min": _one_direction,
    "fisher.effective_rank": None,
}
"""Default prediction table (see the module docstring): 2r, 2, None on each side."""


@dataclasses.dataclass
class _Point:
    """What one checkpoint keeps for one layer."""

    activation: Spectrum
    fisher: Spectrum | None
    n_rows: int
    n_samples: int
    singular_values: np.ndarray | None = None  # σ([W b]) descending, "dead-norm"
    weight: np.ndarray | None = None  # [W b][W b]ᵀ (h×h) or [W b] (h×p), "dead-projection"
    weight_is_gram: bool = False
    approach: float | None = None  # callable approach, evaluated at the reading


@dataclasses.dataclass
class _Checkpoint:
    step: int
    seconds: float
    layers: dict[str, _Point]


class _GramHook:
    """Forward hook accumulating the feature-side Gram of a module's output rows."""

    def __init__(self, name: str, module: nn.Module, pool: str, center: bool) -> None:
        self.name = name
        self.module = module
        self.pool = pool
        self.center = center
        self.acc: GramAccumulator | None = None

    def __call__(self, module: nn.Module, args: Any, out: Any) -> None:
        rows = _activation_rows(out, module, self.pool, self.name, _FN).detach()
        rows = rows.to("cpu")
        if self.acc is None:
            self.acc = GramAccumulator(int(rows.shape[-1]))
        if rows.shape[0]:
            self.acc.add(rows)

    def gram(self) -> np.ndarray | None:
        if self.acc is None or self.acc.count == 0:
            return None
        return np.asarray(self.acc.gram(center=self.center), dtype=np.float64)


def _check_int(value: Any, arg: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"deadspec.{_FN}: {arg} must be an int, got {type(value).__name__}")
    if int(value) < minimum:
        raise ValueError(f"deadspec.{_FN}: {arg} must be >= {minimum}, got {value}")
    return int(value)


def _call_approach(fn: Callable[[nn.Module], Any], model: nn.Module, layer: str) -> float:
    with torch.no_grad():
        value = fn(model)
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(
                f"deadspec.{_FN}: approach callable for layer {layer!r} must return a scalar, "
                f"got a tensor of shape {tuple(value.shape)}"
            )
        value = value.item()
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(
            f"deadspec.{_FN}: approach callable for layer {layer!r} must return a float, "
            f"got {type(value).__name__}"
        ) from None


def _augmented_weight(module: nn.Module) -> torch.Tensor:
    """``[W b]`` (h × (d_in + 1), or h × d_in without a bias) as a float64 CPU tensor."""
    with torch.no_grad():
        w = _weight_out_in(module).detach().to("cpu", torch.float64)
        b = getattr(module, "bias", None)
        if isinstance(b, torch.Tensor):
            w = torch.cat([w, b.detach().to("cpu", torch.float64).reshape(-1, 1)], dim=1)
    return w


def _weight_summary(module: nn.Module) -> tuple[np.ndarray, bool]:
    """``[W b]`` as float64 numpy, or its h×h Gram ``[W b][W b]ᵀ`` when that is smaller."""
    m = _augmented_weight(module).numpy()
    if m.shape[0] <= m.shape[1]:
        return m @ m.T, True
    return m.copy(), False


def _singular_values(module: nn.Module) -> np.ndarray:
    """Singular values of ``[W b]``, descending (min(h, p) of them)."""
    return torch.linalg.svdvals(_augmented_weight(module)).numpy().copy()


def _fmt(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


class DeadDirectionMonitor:
    """Record DDS readings along training and fit the trajectory-rate readout.

    Call ``monitor.step(step)`` (or ``monitor(step)``) from the training loop; every ``every``
    steps it runs :func:`deadspec.read` on the probe batch. See the module docstring for the
    approach parameter, the window, the prediction table and the overhead.

    Parameters
    ----------
    model : torch.nn.Module
        The model being trained. Each reading leaves it as found (modes, ``.grad``,
        ``requires_grad``, buffers: :func:`deadspec.read`'s guarantee); the monitor's own
        forward hooks are removed after each reading.
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
        **read_options: Any,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"deadspec.{_FN}: model must be a torch.nn.Module, got {type(model).__name__}"
            )
        self.every = _check_int(every, "every", 1)
        unknown = sorted(set(read_options) - set(_READ_OPTIONS))
        if unknown:
            raise TypeError(
                f"deadspec.{_FN}: read options must be among {_READ_OPTIONS}, got {unknown}"
            )
        labels = read_options.get("labels", "observed")
        if fisher and targets is None and labels == "observed":
            raise ValueError(
                f"deadspec.{_FN}: targets must be given for the Fisher side with "
                f"labels='observed' (or pass fisher=False or labels='sampled'), got None"
            )
        sites = _resolve_sites(model, layers, False, _FN)
        self.model = model
        self.layers: list[str] = [name for name, _ in sites]
        self.inputs = inputs
        self.targets = targets
        self.loss_fn = loss_fn
        self.fisher = bool(fisher)
        self.read_options = dict(read_options)
        self._check_fit_options(tolerance, min_r2, window, frac, min_points, method)
        self.tolerance = float(tolerance)
        self.min_r2 = float(min_r2)
        self.window = window
        self.frac = float(frac)
        self.min_points = int(min_points)
        self.fixed_active = bool(fixed_active)
        self.method = method
        self.predictions = self._check_predictions(predictions)

        named = dict(model.named_modules())
        specs = dict(sites)
        # per layer: (DEAD_NORM | DEAD_PROJECTION, weight module name) or ("callable", fn)
        self._approach: dict[str, tuple[str, Any]] = {}
        choices = f"{DEAD_NORM!r}, {DEAD_PROJECTION!r}, a callable or a dict"
        if callable(approach) and not isinstance(approach, (str, Mapping)):
            per_layer: dict[str, Any] = {name: approach for name in self.layers}
        elif isinstance(approach, str):
            if approach not in _BUILTIN:
                raise ValueError(f"deadspec.{_FN}: approach must be {choices}, got {approach!r}")
            per_layer = {name: approach for name in self.layers}
        elif isinstance(approach, Mapping):
            extra = sorted(set(approach) - set(self.layers))
            if extra:
                raise ValueError(
                    f"deadspec.{_FN}: approach keys must be monitored layers {self.layers}, "
                    f"got {extra}"
                )
            per_layer = {name: approach.get(name, DEAD_NORM) for name in self.layers}
        else:
            raise TypeError(
                f"deadspec.{_FN}: approach must be {choices}, got {type(approach).__name__}"
            )
        for name, value in per_layer.items():
            if callable(value) and not isinstance(value, str):
                self._approach[name] = ("callable", value)
                continue
            if not isinstance(value, str):
                raise TypeError(
                    f"deadspec.{_FN}: approach for layer {name!r} must be {DEAD_NORM!r}, "
                    f"{DEAD_PROJECTION!r}, a module name or a callable, got "
                    f"{type(value).__name__}"
                )
            spec = specs[name]
            plain = spec.view is None and named.get(name) is spec.module
            if value in _BUILTIN:
                module = named.get(name) if plain else None
                if module is None or _module_kind(module) not in ("linear", "conv1d"):
                    what = type(spec.module).__name__ if plain else "an attention projection/head"
                    raise ValueError(
                        f"deadspec.{_FN}: approach={value!r} needs a linear-like layer "
                        f"(nn.Linear or Conv1D module) with a weight matrix; layer {name!r} is "
                        f"{what}: pass approach={{{name!r}: '<linear module feeding it>'}} or "
                        f"a callable approach(model) -> float"
                    )
                if value == DEAD_PROJECTION and spec.mha is not None:
                    raise ValueError(
                        f"deadspec.{_FN}: approach={value!r} captures the layer's output with a "
                        f"forward hook, which an nn.MultiheadAttention projection never calls; "
                        f"layer {name!r}: use {DEAD_NORM!r} or a callable"
                    )
                self._approach[name] = (value, name)
                continue
            module = named.get(value)
            if module is None or _module_kind(module) not in ("linear", "conv1d"):
                got = "no such module" if module is None else type(module).__name__
                raise ValueError(
                    f"deadspec.{_FN}: approach for layer {name!r} must name a linear-like "
                    f"module (nn.Linear or Conv1D) of the model, got {value!r} ({got})"
                )
            self._approach[name] = (DEAD_NORM, value)

        self._checkpoints: list[_Checkpoint] = []
        self._ref_gram: dict[str, np.ndarray] = {}
        self._calls = 0
        self._cache: tuple[int, dict[str, np.ndarray]] | None = None

    # ----------------------------------------------------------------------------------------
    # Validation helpers
    # ----------------------------------------------------------------------------------------

    @staticmethod
    def _check_fit_options(
        tolerance: Any, min_r2: Any, window: Any, frac: Any, min_points: Any, method: Any
    ) -> None:
        if not (isinstance(tolerance, (int, float)) and 0.0 <= float(tolerance)):
            raise ValueError(f"deadspec.{_FN}: tolerance must be a number >= 0, got {tolerance!r}")
        if not (isinstance(min_r2, (int, float)) and float(min_r2) <= 1.0):
            raise ValueError(f"deadspec.{_FN}: min_r2 must be a number <= 1, got {min_r2!r}")
        if isinstance(window, str):
            if window not in _WINDOWS:
                raise ValueError(
                    f"deadspec.{_FN}: window must be one of {_WINDOWS} or a (first_step, "
                    f"last_step) pair, got {window!r}"
                )
        elif not (
            isinstance(window, (tuple, list))
            and len(window) == 2
            and all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in window)
        ):
            raise ValueError(
                f"deadspec.{_FN}: window must be one of {_WINDOWS} or a (first_step, "
                f"last_step) pair of ints, got {window!r}"
            )
        if not (isinstance(frac, (int, float)) and 0.0 < float(frac) <= 1.0):
            raise ValueError(f"deadspec.{_FN}: frac must be in (0, 1], got {frac!r}")
        _check_int(min_points, "min_points", 2)
        if method not in ("ols", "theil-sen"):
            raise ValueError(
                f"deadspec.{_FN}: method must be one of ('ols', 'theil-sen'), got {method!r}"
            )

    @staticmethod
    def _check_predictions(predictions: Mapping[str, Any] | None) -> dict[str, Any]:
        table = dict(DEFAULT_PREDICTIONS)
        if predictions is None:
            return table
        if not isinstance(predictions, Mapping):
            raise TypeError(
                f"deadspec.{_FN}: predictions must be a mapping, got {type(predictions).__name__}"
            )
        for key, value in predictions.items():
            if key not in DEFAULT_PREDICTIONS:
                raise ValueError(
                    f"deadspec.{_FN}: prediction keys must be among "
                    f"{list(DEFAULT_PREDICTIONS)}, got {key!r}"
                )
            if not (
                value is None
                or callable(value)
                or (isinstance(value, (int, float)) and not isinstance(value, bool))
            ):
                raise TypeError(
                    f"deadspec.{_FN}: prediction {key!r} must be a number, None or a callable "
                    f"f(r), got {type(value).__name__}"
                )
            table[key] = value
        return table

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
            Read whatever the step (e.g. once more at the end of training).

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
        step = _check_int(step, "step", 0)
        self._calls = step + 1
        if not force and step % self.every:
            return None
        if self._checkpoints and step <= self._checkpoints[-1].step:
            raise ValueError(
                f"deadspec.{_FN}: step must be after the last recorded step "
                f"{self._checkpoints[-1].step}, got {step}"
            )
        return self._record(step)

    def _record(self, step: int) -> Reading:
        t0 = time.perf_counter()
        hooks: dict[str, _GramHook] = {}
        handles = []
        center = bool(self.read_options.get("center", False))
        pool = self.read_options.get("pool", "none")
        gauges = bool(self.read_options.get("gauges", True))
        named = dict(self.model.named_modules())
        try:
            for name in self.layers:
                if self._approach[name][0] != DEAD_PROJECTION:
                    continue
                module = named[name]
                c = center or (gauges and isinstance(module, nn.LayerNorm))
                hook = _GramHook(name, module, pool, c)
                hooks[name] = hook
                handles.append(module.register_forward_hook(hook))
            reading = read(
                self.model,
                self.inputs,
                targets=self.targets,
                loss_fn=self.loss_fn,
                layers=self.layers,
                fisher=self.fisher,
                progress=False,
                **self.read_options,
            )
        finally:
            for h in handles:
                h.remove()
        points: dict[str, _Point] = {}
        for name in self.layers:
            lr = reading[name]
            point = _Point(lr.activation, lr.fisher, int(lr.n_rows), int(lr.n_samples))
            kind, value = self._approach[name]
            if kind == DEAD_NORM:
                point.singular_values = _singular_values(named[value])
            elif kind == DEAD_PROJECTION:
                g = hooks[name].gram()
                if g is None:
                    raise RuntimeError(
                        f"deadspec.{_FN}: layer {name!r} was not called by the forward pass"
                    )
                summary, is_gram = _weight_summary(named[value])
                if g.shape[0] != summary.shape[0]:
                    raise ValueError(
                        f"deadspec.{_FN}: layer {name!r} output width {g.shape[0]} must match "
                        f"its weight's {summary.shape[0]} rows, got a mismatch"
                    )
                self._ref_gram[name] = g
                point.weight, point.weight_is_gram = summary, is_gram
            else:
                point.approach = _call_approach(value, self.model, name)
            points[name] = point
        self._checkpoints.append(_Checkpoint(step, time.perf_counter() - t0, points))
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
                f"deadspec.{_FN}: dead_directions needs approach={DEAD_PROJECTION!r} for layer "
                f"{layer!r}, got {self._approach[layer][0]!r}"
            )
        if not self._checkpoints:
            raise ValueError(f"deadspec.{_FN}: no checkpoint recorded yet, got 0")
        g = self._ref_gram[layer]
        lo, hi = self._reference_cluster(layer)
        if hi == lo:
            return np.zeros((g.shape[0], 0))
        _, vecs = sym_eig(g, vectors=True)
        return np.asarray(vecs, dtype=np.float64)[:, lo:hi]

    def _reference_cluster(self, layer: str) -> tuple[int, int]:
        """Index range ``[lo, hi)`` (descending order) of the reference dead cluster.

        The ``dead_count`` eigenvalues at the bottom of the last checkpoint's active set, plus
        the directions that sank below the active threshold since the largest active count
        recorded (a dead direction approached far enough becomes a round-off "structural
        zero"; it is still dead).
        """
        specs = [c.layers[layer].activation for c in self._checkpoints]
        last = specs[-1]
        lost = max(0, max(int(s.active) for s in specs) - int(last.active))
        lo = int(last.active) - int(last.dead_count)
        hi = min(int(last.active) + lost, last.dim)
        return lo, hi

    def approach_values(self, layer: str) -> np.ndarray:
        """The approach parameter a(t) of a layer at every recorded checkpoint (NaN: undefined)."""
        self._check_layer(layer)
        return self._approach_table()[layer].copy()

    def _approach_table(self) -> dict[str, np.ndarray]:
        n = len(self._checkpoints)
        if self._cache is not None and self._cache[0] == n:
            return self._cache[1]
        table: dict[str, np.ndarray] = {}
        for name in self.layers:
            kind = self._approach[name][0]
            if kind == "callable":
                table[name] = np.array(
                    [c.layers[name].approach for c in self._checkpoints], dtype=np.float64
                )
                continue
            values = np.full(n, np.nan)
            r = 0
            if n:
                lo, hi = self._reference_cluster(name)
                r = hi - lo
            if kind == DEAD_NORM and r > 0:
                for i, c in enumerate(self._checkpoints):
                    s = c.layers[name].singular_values
                    k = len(s)
                    values[i] = float(np.sqrt(np.sum(s[max(k - r, 0) :] ** 2)))
            elif kind == DEAD_PROJECTION and r > 0:
                u = self.dead_directions(name)
                for i, c in enumerate(self._checkpoints):
                    p = c.layers[name]
                    if p.weight_is_gram:
                        a2 = float(np.sum((p.weight @ u) * u))
                    else:
                        a2 = float(np.sum((u.T @ p.weight) ** 2))
                    values[i] = math.sqrt(max(a2, 0.0))
            table[name] = values
        self._cache = (n, table)
        return table

    def _check_layer(self, layer: str) -> None:
        if layer not in self.layers:
            raise ValueError(
                f"deadspec.{_FN}: layer must be one of the monitored layers {self.layers}, "
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
                    for key in _RECORD_KEYS:
                        v = getattr(spec, key)
                        rec[key] = int(v) if isinstance(v, (int, np.integer)) else float(v)
                    rec["seconds"] = float(c.seconds)
                    out.append(rec)
        return out

    def to_csv(self, path: Any, *, what: str = "records", **rate_options: Any) -> None:
        """Write :meth:`records` (``what="records"``) or :meth:`rates` (``what="rates"``) as CSV.

        ``rate_options`` are passed to :meth:`rates`. Non-finite numbers are written as
        ``nan``/``inf``; a None prediction as an empty field.
        """
        if what == "records":
            rows = self.records()
        elif what == "rates":
            rows = self.rates(**rate_options)
        else:
            raise ValueError(
                f"deadspec.{_FN}.to_csv: what must be 'records' or 'rates', got {what!r}"
            )
        if not rows:
            raise ValueError(f"deadspec.{_FN}.to_csv: nothing recorded yet, got 0 rows")
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            for row in rows:
                writer.writerow({k: ("" if v is None else _fmt(v)) for k, v in row.items()})

    def _window(self, a: np.ndarray, window: Any, frac: float) -> np.ndarray:
        """Indices of the checkpoints in the fitting window of one layer."""
        steps = np.array(self.steps)
        valid = np.isfinite(a) & (a > 0)
        if not valid.any():
            return np.zeros(0, dtype=int)
        if isinstance(window, str) and window == "after-peak":
            peak = int(np.nanargmax(np.where(valid, a, -np.inf)))
            keep = valid & (np.arange(len(a)) >= peak) & (a <= frac * a[peak])
        elif isinstance(window, str):
            top = np.max(a[valid])
            keep = valid & (a <= frac * top)
        else:
            lo, hi = int(window[0]), int(window[1])
            keep = valid & (steps >= lo) & (steps <= hi)
            if keep.any():
                top = np.max(a[keep])
                keep &= a <= frac * top
        return np.flatnonzero(keep)

    def _predict(self, key: str, r: int) -> float | None:
        entry = self.predictions[key]
        if entry is None:
            return None
        value = entry(r) if callable(entry) else entry
        return None if value is None else float(value)

    def _series(
        self, layer: str, side: str, window: Any, frac: float, fixed_active: bool
    ) -> dict[str, Any] | None:
        """Window points and the fixed-active-set observables of one layer × side."""
        a = self._approach_table()[layer]
        idx = self._window(a, window, frac)
        specs = [getattr(self._checkpoints[i].layers[layer], side) for i in idx]
        if any(s is None for s in specs):
            return None
        info: dict[str, Any] = {"idx": idx, "a": a[idx], "k": 0, "r": 0}
        if len(idx) == 0:
            info.update(logdet_plus=np.zeros(0), lambda_min=np.zeros(0), effective_rank=np.zeros(0))
            return info
        # the largest active set recorded (the analogue of approach_slope's size at the
        # largest t): directions that later sink below the threshold stay tracked
        k = max(
            int(s.active)
            for s in (getattr(c.layers[layer], side) for c in self._checkpoints)
            if s is not None
        )
        last = specs[-1]
        r = int(last.dead_count) + max(0, k - int(last.active))
        logdet, lam, eff = [], [], []
        for s in specs:
            ev = np.asarray(s.eigenvalues, dtype=np.float64)
            if fixed_active:
                ok = k > 0 and ev.shape[0] >= k and ev[k - 1] > 0 and np.isfinite(ev[k - 1])
                logdet.append(logdet_top(ev, k) if ok else np.nan)
                lam.append(math.log(ev[k - 1]) if ok else np.nan)
            else:
                ok = s.active > 0
                logdet.append(float(s.logdet_plus) if ok else np.nan)
                lam.append(math.log(s.lambda_min) if ok and s.lambda_min > 0 else np.nan)
            er = float(s.effective_rank)
            eff.append(math.log(er) if er > 0 else np.nan)
        info.update(
            k=k,
            r=r,
            logdet_plus=np.array(logdet),
            lambda_min=np.array(lam),
            effective_rank=np.array(eff),
        )
        return info

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
    ) -> list[dict[str, Any]]:
        """The trajectory-rate readout: one row per layer × side × observable.

        Each argument left None takes the constructor's value.

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
        window = self.window if window is None else window
        frac = self.frac if frac is None else frac
        min_points = self.min_points if min_points is None else min_points
        tolerance = self.tolerance if tolerance is None else tolerance
        min_r2 = self.min_r2 if min_r2 is None else min_r2
        fixed_active = self.fixed_active if fixed_active is None else bool(fixed_active)
        method = self.method if method is None else method
        self._check_fit_options(tolerance, min_r2, window, frac, min_points, method)
        rows: list[dict[str, Any]] = []
        steps = self.steps
        for layer in self.layers:
            for side in SIDES:
                if not self._checkpoints or all(
                    getattr(c.layers[layer], side) is None for c in self._checkpoints
                ):
                    continue
                info = self._series(layer, side, window, frac, fixed_active)
                for obs in OBSERVABLES:
                    row: dict[str, Any] = {
                        "layer": layer,
                        "side": side,
                        "observable": obs,
                        "slope": math.nan,
                        "intercept": math.nan,
                        "r2": math.nan,
                        "stderr": math.nan,
                        "n_points": 0,
                        "predicted": None,
                        "reads": False,
                        "dead_count": 0,
                        "active": 0,
                        "first_step": None,
                        "last_step": None,
                        "log_range": math.nan,
                    }
                    if info is not None:
                        y = info[obs]
                        ok = np.isfinite(y)
                        x = np.log(info["a"][ok])
                        y = y[ok]
                        steps_ok = [steps[i] for i, good in zip(info["idx"], ok) if good]
                        pred = self._predict(f"{side}.{obs}", info["r"])
                        row.update(
                            n_points=len(y),
                            predicted=pred,
                            dead_count=int(info["r"]),
                            active=int(info["k"]),
                        )
                        if len(y):
                            row.update(
                                first_step=int(steps_ok[0]),
                                last_step=int(steps_ok[-1]),
                                log_range=float(x.max() - x.min()),
                            )
                        if len(y) >= min_points and np.ptp(x) > 0:
                            fit = fit_slope(x, y, method=method)
                            row.update(
                                slope=float(fit.slope),
                                intercept=float(fit.intercept),
                                r2=float(fit.r2),
                                stderr=float(fit.stderr),
                            )
                            row["reads"] = bool(
                                pred is not None
                                and pred != 0.0
                                and math.isfinite(fit.slope)
                                and abs(fit.slope - pred) <= tolerance * abs(pred)
                                and fit.r2 >= min_r2
                            )
                    rows.append(row)
        return rows

    def cells_reading(self, **rate_options: Any) -> tuple[int, int]:
        """``(cells that read the predicted rate, cells with a prediction)``.

        ``rate_options`` are passed to :meth:`rates`. Cells whose prediction is None (by
        default the effective rank) are not counted in the total.
        """
        rows = self.rates(**rate_options)
        counted = [r for r in rows if r["predicted"] is not None]
        return sum(bool(r["reads"]) for r in counted), len(counted)

    # ----------------------------------------------------------------------------------------
    # Plot
    # ----------------------------------------------------------------------------------------

    def plot(self, path: Any, *, dpi: int = 100, **rate_options: Any) -> None:
        """Write a PNG: the observables against step and against log a, with the fits.

        One row per layer × side. Left: log det⁺, log λ_min and log effective rank of every
        reading against the step, each shifted to 0 at the first checkpoint. Right: the
        fixed-active-set values of the fitting window against ``log a`` (shifted to 0 at the
        window's first point), the fitted lines (solid) and the predicted slopes (dashed).
        Drawn with matplotlib's Agg canvas (no global backend change).
        """
        if not self._checkpoints:
            raise ValueError(f"deadspec.{_FN}.plot: nothing recorded yet, got 0 checkpoints")
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        window = rate_options.get("window", self.window)
        frac = rate_options.get("frac", self.frac)
        fixed = rate_options.get("fixed_active", self.fixed_active)
        rates = {(r["layer"], r["side"], r["observable"]): r for r in self.rates(**rate_options)}
        panels = [
            (layer, side)
            for layer in self.layers
            for side in SIDES
            if any(getattr(c.layers[layer], side) is not None for c in self._checkpoints)
        ]
        fig = Figure(figsize=(11, 3.0 * len(panels) + 0.5))
        FigureCanvasAgg(fig)
        steps = np.array(self.steps)
        colors = {"logdet_plus": "C0", "lambda_min": "C1", "effective_rank": "C2"}
        labels = {
            "logdet_plus": "log det⁺",
            "lambda_min": "log λ_min",
            "effective_rank": "log eff. rank",
        }
        for row, (layer, side) in enumerate(panels):
            ax_t = fig.add_subplot(len(panels), 2, 2 * row + 1)
            ax_a = fig.add_subplot(len(panels), 2, 2 * row + 2)
            specs = [getattr(c.layers[layer], side) for c in self._checkpoints]
            have = np.array([s is not None for s in specs])
            for obs in OBSERVABLES:
                vals = []
                for s in specs:
                    if s is None:
                        vals.append(np.nan)
                        continue
                    v = float(s.logdet_plus) if obs == "logdet_plus" else float(getattr(s, obs))
                    if obs != "logdet_plus":
                        v = math.log(v) if v > 0 else np.nan
                    vals.append(v)
                y = np.array(vals)
                first = y[np.isfinite(y)][0] if np.isfinite(y).any() else 0.0
                ax_t.plot(
                    steps[have], (y - first)[have], "o-", ms=3, color=colors[obs], label=labels[obs]
                )
            ax_t.set_xlabel("step")
            ax_t.set_ylabel("Δ log observable")
            ax_t.set_title(f"{layer or '<root>'} · {side}", fontsize=9)
            ax_t.legend(fontsize=7)
            info = self._series(layer, side, window, frac, fixed)
            if info is not None and len(info["idx"]):
                x = np.log(info["a"])
                for obs in OBSERVABLES:
                    y = info[obs]
                    ok = np.isfinite(y)
                    if not ok.any():
                        continue
                    y0 = y[ok][0]
                    ax_a.plot(x[ok], y[ok] - y0, "o", ms=3, color=colors[obs])
                    r = rates.get((layer, side, obs))
                    if r is None or not math.isfinite(r["slope"]):
                        continue
                    xs = np.array([x[ok].min(), x[ok].max()])
                    ax_a.plot(
                        xs,
                        r["intercept"] + r["slope"] * xs - y0,
                        "-",
                        color=colors[obs],
                        label=f"{labels[obs]}: {r['slope']:.3g}"
                        + (f" (pred {r['predicted']:.3g})" if r["predicted"] is not None else "")
                        + (" ✓" if r["reads"] else ""),
                    )
                    if r["predicted"] is not None:
                        x0 = x[ok][0]
                        ax_a.plot(xs, r["predicted"] * (xs - x0), "--", color=colors[obs], lw=0.8)
                ax_a.legend(fontsize=7)
            else:
                ax_a.text(
                    0.5,
                    0.5,
                    "no approach window\n(a(t) undefined: no dead cluster)",
                    ha="center",
                    va="center",
                    transform=ax_a.transAxes,
                )
            ax_a.set_xlabel("log a (approach parameter)")
            ax_a.set_ylabel("Δ log observable")
        fig.tight_layout()
        fig.savefig(path, dpi=dpi, format="png")

    def __repr__(self) -> str:
        return (
            f"DeadDirectionMonitor(layers={self.layers}, every={self.every}, "
            f"checkpoints={len(self._checkpoints)}, fisher={self.fisher})"
        )
