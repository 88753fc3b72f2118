"""The monitor's figure: observables against step and against log a, with the fits."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from deadspec._files import save_figure
from deadspec._util import agg_figure
from deadspec.monitor._approach import Checkpoint
from deadspec.monitor._rates import OBSERVABLES, SIDES, series, window_indices

__all__ = ["plot_monitor"]

_COLORS = {"logdet_plus": "C0", "lambda_min": "C1", "effective_rank": "C2"}
_LABELS = {"logdet_plus": "log det⁺", "lambda_min": "log λ_min", "effective_rank": "log eff. rank"}


def _against_step(ax: Any, checkpoints: Sequence[Checkpoint], layer: str, side: str) -> None:
    steps = np.array([c.step for c in checkpoints])
    specs = [getattr(c.layers[layer], side) for c in checkpoints]
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
        ax.plot(steps[have], (y - first)[have], "o-", ms=3, color=_COLORS[obs], label=_LABELS[obs])
    ax.set_xlabel("step")
    ax.set_ylabel("Δ log observable")
    ax.set_title(f"{layer or '<root>'} · {side}", fontsize=9)
    ax.legend(fontsize=7)


def _against_approach(
    ax: Any, info: dict[str, Any] | None, rates: Mapping[str, dict[str, Any]]
) -> None:
    if info is None or not len(info["idx"]):
        ax.text(
            0.5,
            0.5,
            "no approach window\n(a(t) undefined: no dead cluster)",
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
    else:
        x = np.log(info["a"])
        for obs in OBSERVABLES:
            y = info[obs]
            ok = np.isfinite(y)
            if not ok.any():
                continue
            y0 = y[ok][0]
            ax.plot(x[ok], y[ok] - y0, "o", ms=3, color=_COLORS[obs])
            r = rates.get(obs)
            if r is None or not math.isfinite(r["slope"]):
                continue
            xs = np.array([x[ok].min(), x[ok].max()])
            pred = f" (pred {r['predicted']:.3g})" if r["predicted"] is not None else ""
            ax.plot(
                xs,
                r["intercept"] + r["slope"] * xs - y0,
                "-",
                color=_COLORS[obs],
                label=f"{_LABELS[obs]}: {r['slope']:.3g}{pred}" + (" ✓" if r["reads"] else ""),
            )
            if r["predicted"] is not None:
                ax.plot(xs, r["predicted"] * (xs - x[ok][0]), "--", color=_COLORS[obs], lw=0.8)
        ax.legend(fontsize=7)
    ax.set_xlabel("log a (approach parameter)")
    ax.set_ylabel("Δ log observable")


def plot_monitor(
    path: Any,
    checkpoints: Sequence[Checkpoint],
    layers: Sequence[str],
    table: Mapping[str, np.ndarray],
    rate_rows: Sequence[dict[str, Any]],
    *,
    window: Any,
    frac: float,
    fixed_active: bool,
    dpi: int = 100,
) -> None:
    """Write the figure of :meth:`DeadDirectionMonitor.plot` (matplotlib's Agg canvas on a
    ``Figure``: no pyplot, no global backend change; in the format the suffix of ``path``
    names, through a temporary file renamed into place)."""
    rates: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for r in rate_rows:
        rates.setdefault((r["layer"], r["side"]), {})[r["observable"]] = r
    panels = [
        (layer, side)
        for layer in layers
        for side in SIDES
        if any(getattr(c.layers[layer], side) is not None for c in checkpoints)
    ]
    fig = agg_figure((11, 3.0 * len(panels) + 0.5))
    steps = np.array([c.step for c in checkpoints])
    for row, (layer, side) in enumerate(panels):
        ax_t = fig.add_subplot(len(panels), 2, 2 * row + 1)
        ax_a = fig.add_subplot(len(panels), 2, 2 * row + 2)
        _against_step(ax_t, checkpoints, layer, side)
        a = table[layer]
        idx = window_indices(a, steps, window, frac)
        info = series(checkpoints, layer, side, a, idx, fixed_active)
        _against_approach(ax_a, info, rates.get((layer, side), {}))
    fig.tight_layout()
    save_figure(fig, path, dpi=dpi)
