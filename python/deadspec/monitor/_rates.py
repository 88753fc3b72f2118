"""The trajectory-rate readout as pure functions of the recorded checkpoints.

Window → fixed-active-set series → log–log fit against the approach parameter → comparison
with the prediction table (see :mod:`deadspec.monitor` for the conventions).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from deadspec.monitor._approach import FN, Checkpoint
from deadspec.ops import fit_slope, logdet_top

__all__ = [
    "DEFAULT_PREDICTIONS",
    "OBSERVABLES",
    "SIDES",
    "FitOptions",
    "check_fit_options",
    "check_int",
    "check_predictions",
    "rate_rows",
    "series",
    "window_indices",
]

SIDES = ("activation", "fisher")
OBSERVABLES = ("logdet_plus", "lambda_min", "effective_rank")
WINDOWS = ("after-peak", "all")


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


def check_int(value: Any, arg: str, minimum: int) -> int:
    """An int ≥ ``minimum`` (bools refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"deadspec.{FN}: {arg} must be an int, got {type(value).__name__}")
    if int(value) < minimum:
        raise ValueError(f"deadspec.{FN}: {arg} must be >= {minimum}, got {value}")
    return int(value)


def check_fit_options(
    tolerance: Any, min_r2: Any, window: Any, frac: Any, min_points: Any, method: Any
) -> None:
    """Raise on a bad fitting option (the constructor's and :meth:`rates`'s)."""
    if not (isinstance(tolerance, (int, float)) and 0.0 <= float(tolerance)):
        raise ValueError(f"deadspec.{FN}: tolerance must be a number >= 0, got {tolerance!r}")
    if not (isinstance(min_r2, (int, float)) and float(min_r2) <= 1.0):
        raise ValueError(f"deadspec.{FN}: min_r2 must be a number <= 1, got {min_r2!r}")
    if isinstance(window, str):
        if window not in WINDOWS:
            raise ValueError(
                f"deadspec.{FN}: window must be one of {WINDOWS} or a (first_step, "
                f"last_step) pair, got {window!r}"
            )
    elif not (
        isinstance(window, (tuple, list))
        and len(window) == 2
        and all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in window)
    ):
        raise ValueError(
            f"deadspec.{FN}: window must be one of {WINDOWS} or a (first_step, last_step) pair "
            f"of ints, got {window!r}"
        )
    if not (isinstance(frac, (int, float)) and 0.0 < float(frac) <= 1.0):
        raise ValueError(f"deadspec.{FN}: frac must be in (0, 1], got {frac!r}")
    check_int(min_points, "min_points", 2)
    if method not in ("ols", "theil-sen"):
        raise ValueError(
            f"deadspec.{FN}: method must be one of ('ols', 'theil-sen'), got {method!r}"
        )


def check_predictions(predictions: Mapping[str, Any] | None) -> dict[str, Any]:
    """:data:`DEFAULT_PREDICTIONS` with the given overrides (checked)."""
    table = dict(DEFAULT_PREDICTIONS)
    if predictions is None:
        return table
    if not isinstance(predictions, Mapping):
        raise TypeError(
            f"deadspec.{FN}: predictions must be a mapping, got {type(predictions).__name__}"
        )
    for key, value in predictions.items():
        if key not in DEFAULT_PREDICTIONS:
            raise ValueError(
                f"deadspec.{FN}: prediction keys must be among {list(DEFAULT_PREDICTIONS)}, "
                f"got {key!r}"
            )
        if not (
            value is None
            or callable(value)
            or (isinstance(value, (int, float)) and not isinstance(value, bool))
        ):
            raise TypeError(
                f"deadspec.{FN}: prediction {key!r} must be a number, None or a callable f(r), "
                f"got {type(value).__name__}"
            )
        table[key] = value
    return table


def window_indices(a: np.ndarray, steps: np.ndarray, window: Any, frac: float) -> np.ndarray:
    """Indices of the checkpoints in the fitting window of one layer."""
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


def series(
    checkpoints: Sequence[Checkpoint],
    layer: str,
    side: str,
    a: np.ndarray,
    idx: np.ndarray,
    fixed_active: bool,
) -> dict[str, Any] | None:
    """Window points and the (fixed-active-set) observables of one layer × side."""
    specs = [getattr(checkpoints[i].layers[layer], side) for i in idx]
    if any(s is None for s in specs):
        return None
    info: dict[str, Any] = {"idx": idx, "a": a[idx], "k": 0, "r": 0}
    if len(idx) == 0:
        info.update(logdet_plus=np.zeros(0), lambda_min=np.zeros(0), effective_rank=np.zeros(0))
        return info
    # the largest active set recorded (the analogue of approach_slope's size at the largest
    # t): directions that later sink below the threshold stay tracked
    k = max(
        int(s.active)
        for s in (getattr(c.layers[layer], side) for c in checkpoints)
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


def _predict(table: Mapping[str, Any], key: str, r: int) -> float | None:
    entry = table[key]
    if entry is None:
        return None
    value = entry(r) if callable(entry) else entry
    return None if value is None else float(value)


def _empty_row(layer: str, side: str, obs: str) -> dict[str, Any]:
    return {
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


class FitOptions:
    """The options of one readout (each resolved against the monitor's defaults)."""

    def __init__(
        self,
        window: Any,
        frac: float,
        min_points: int,
        tolerance: float,
        min_r2: float,
        fixed_active: bool,
        method: str,
    ) -> None:
        check_fit_options(tolerance, min_r2, window, frac, min_points, method)
        self.window, self.frac, self.min_points = window, frac, min_points
        self.tolerance, self.min_r2 = tolerance, min_r2
        self.fixed_active, self.method = bool(fixed_active), method


def _fit_cell(
    row: dict[str, Any], info: dict[str, Any], obs: str, steps: Sequence[int], pred: float | None,
    fo: FitOptions,
) -> None:
    y = info[obs]
    ok = np.isfinite(y)
    x = np.log(info["a"][ok])
    y = y[ok]
    steps_ok = [steps[i] for i, good in zip(info["idx"], ok) if good]
    row.update(n_points=len(y), predicted=pred, dead_count=int(info["r"]), active=int(info["k"]))
    if len(y):
        row.update(
            first_step=int(steps_ok[0]),
            last_step=int(steps_ok[-1]),
            log_range=float(x.max() - x.min()),
        )
    if len(y) < fo.min_points or not np.ptp(x) > 0:
        return
    fit = fit_slope(x, y, method=fo.method)
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
        and abs(fit.slope - pred) <= fo.tolerance * abs(pred)
        and fit.r2 >= fo.min_r2
    )


def rate_rows(
    checkpoints: Sequence[Checkpoint],
    layers: Sequence[str],
    table: Mapping[str, np.ndarray],
    predictions: Mapping[str, Any],
    fo: FitOptions,
) -> list[dict[str, Any]]:
    """One row per layer × side × observable (see :meth:`DeadDirectionMonitor.rates`)."""
    rows: list[dict[str, Any]] = []
    steps = [c.step for c in checkpoints]
    for layer in layers:
        a = table[layer]
        idx = window_indices(a, np.array(steps), fo.window, fo.frac)
        for side in SIDES:
            if not checkpoints or all(getattr(c.layers[layer], side) is None for c in checkpoints):
                continue
            info = series(checkpoints, layer, side, a, idx, fo.fixed_active)
            for obs in OBSERVABLES:
                row = _empty_row(layer, side, obs)
                if info is not None:
                    pred = _predict(predictions, f"{side}.{obs}", info["r"])
                    _fit_cell(row, info, obs, steps, pred, fo)
                rows.append(row)
    return rows
