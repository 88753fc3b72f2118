"""What the modular-addition sweep (:mod:`deadspec.experiments.modadd`) shows and leaves behind.

- :func:`format_table`, :func:`format_summary`: the printed per-width table and sweep summary.
- :func:`plot_sweep`: the figure, four panels against d_model: the DDS volumes summed over the
  chosen layers, the volume of each layer and side, the calibrated LLC, and the cost per
  checkpoint (forward-backward passes of the DDS reading, the LLC estimate and its
  calibration).
- :func:`write_factories`: the ``models.py`` of zero-argument model factories beside the
  checkpoints.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from deadspec import _files
from deadspec.experiments import _harness
from deadspec.experiments._stats import finite_or_nan

__all__ = ["format_summary", "format_table", "plot_sweep", "write_factories"]

Rows = Sequence[dict[str, Any]]


def write_factories(path: Path, p: int, dms: Sequence[int], n_heads: int) -> None:
    """Write ``models.py``: a factory ``d<d_model>()`` per width of the sweep."""
    lines = [
        '"""Factories for the modadd checkpoints (written by deadspec.experiments.modadd)."""',
        "",
        "from deadspec.models import ModAddTransformer",
        "",
    ]
    for d in dms:
        lines += [
            "",
            f"def d{d}():",
            f"    return ModAddTransformer(p={p}, d_model={d}, n_heads={n_heads})",
            "",
        ]
    _files.write_text(path, "\n".join(lines))


_Col = _harness.Col
_fmt = _harness.fmt
_TABLE = (
    _Col("d_model", "d_model", ">7"),
    _Col("steps", "steps", ">6"),
    _Col(
        "test",
        lambda r: _fmt(r["test_acc"], "6.3f") + (" " if r["generalised"] else "*"),
        ">7",
    ),
    _Col("log10V_act", "log10_vol_activation", "11.1f"),
    _Col("log10V_fis", "log10_vol_fisher", "11.1f"),
    _Col("slope_act", "mean_approach_slope_activation", "9.2f"),
    _Col("slope_fis", "mean_approach_slope_fisher", "9.2f"),
    _Col("LLC", "llc_mean", "9.2f"),
    _Col("±", "llc_std", "7.2f"),
    _Col("DDS pass", "dds_passes", "8.0f"),
    _Col("DDS s", "dds_seconds", "6.1f"),
    _Col("LLC pass", "llc_passes", "8.0f"),
    _Col("LLC s", "llc_seconds", "7.1f"),
    _Col("cal pass", "cal_passes", "8.0f"),
    _Col("cal s", "cal_seconds", "7.1f"),
)


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A plain-text table of the per-d_model rows (what :func:`run` prints)."""
    table = _harness.format_table(rows, _TABLE)
    return table + "\n(* = step cap reached before the target test accuracy)"


def format_summary(s: dict[str, Any]) -> str:
    """The sweep summary as text."""
    lines = [f"summary over {s['n_points']} widths ({s['n_generalised']} generalised):"]
    for col, name in (
        ("log10_vol_activation", "DDS activation volume"),
        ("log10_vol_fisher", "DDS Fisher volume"),
        ("log10_vol_total", "DDS total volume"),
    ):
        lines.append(
            f"  {name:<22}: spans {_fmt(s[f'{col}_orders'], '.1f')} orders of magnitude "
            f"(paper: {s['paper_orders']:.0f}); monotone: {s[f'{col}_monotone']}; "
            f"Spearman ρ vs d_model = {_fmt(s[f'{col}_spearman'], '+.3f')}"
        )
    lines.append(
        f"  {'LLC':<22}: range [{_fmt(s['llc_min'], '.3g')}, {_fmt(s['llc_max'], '.3g')}], "
        f"spread {_fmt(s['llc_spread'], '.3g')} (relative {_fmt(s['llc_rel_spread'], '.2f')}, "
        f"{_fmt(s['llc_orders'], '.2f')} orders); monotone: {s['llc_monotone']}; "
        f"Spearman ρ vs d_model = {_fmt(s['llc_spearman'], '+.3f')} (paper: rank-flat)"
    )
    lines.append(
        f"  cost: median LLC/DDS passes = {_fmt(s['median_pass_ratio'], '.1f')}×, "
        f"median LLC/DDS wall time = {_fmt(s['median_time_ratio'], '.1f')}× (estimate only)"
    )
    return "\n".join(lines)


def plot_sweep(rows: Rows, layer_rows: Rows, summary: dict[str, Any], path: Path, p: int) -> None:
    """Write the sweep's figure to ``path`` (PNG)."""
    d = np.array([r["d_model"] for r in rows], dtype=float)
    with _harness.figure(path, figsize=(17, 3.8), dpi=110) as fig:
        axes = fig.subplots(1, 4)
        _volumes(axes[0], d, rows, summary)
        _layer_volumes(axes[1], layer_rows)
        _llc(axes[2], d, rows, summary)
        _cost(axes[3], d, rows)
        fig.suptitle(
            f"modular addition, p = {p}: DDS volume vs calibrated LLC across d_model", fontsize=11
        )


def _d_model_axis(ax, ylabel: str, title: str) -> None:
    """d_model on a log2 axis, the y label, the title and a grid."""
    ax.set_xscale("log", base=2)
    ax.set_xlabel("d_model")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)


def _volumes(ax, d: np.ndarray, rows: Rows, summary: dict[str, Any]) -> None:
    for col, style in (
        ("log10_vol_activation", "o-"),
        ("log10_vol_fisher", "s-"),
        ("log10_vol_total", "k^--"),
    ):
        ax.plot(
            d,
            [finite_or_nan(r.get(col)) for r in rows],
            style,
            label=f"{col[10:]} ({_harness.fmt(summary[f'{col}_orders'], '.1f')} orders)",
        )
    _d_model_axis(ax, "log10 volume (Σ chosen layers)", "DDS volume")
    ax.legend(fontsize=7)


def _layer_volumes(ax, layer_rows: Rows) -> None:
    for name in sorted({r["layer"] for r in layer_rows}):
        for side, mk in (("activation", "o-"), ("fisher", "s:")):
            pts = [
                (r["d_model"], finite_or_nan(r.get("log10_volume")))
                for r in layer_rows
                if r["layer"] == name and r["side"] == side
            ]
            if pts:
                ax.plot(
                    [q[0] for q in pts],
                    [q[1] for q in pts],
                    mk,
                    ms=3,
                    label=f"{name.split('.')[-1]} {side[:3]}",
                )
    _d_model_axis(ax, "log10 volume per layer", "per layer")
    ax.legend(fontsize=6)


def _llc(ax, d: np.ndarray, rows: Rows, summary: dict[str, Any]) -> None:
    lam = np.array([finite_or_nan(r.get("llc_mean")) for r in rows])
    sd = np.array([finite_or_nan(r.get("llc_std")) for r in rows])
    ax.errorbar(d, lam, yerr=np.where(np.isfinite(sd), sd, 0.0), marker="o", capsize=3)
    rho = _harness.fmt(summary["llc_spearman"], "+.2f")
    _d_model_axis(ax, "calibrated LLC λ̂", f"LLC (ρ = {rho})")


def _cost(ax, d: np.ndarray, rows: Rows) -> None:
    w = 0.25
    x = np.arange(len(rows))
    for shift, key, label in (
        (-w, "dds_passes", "DDS"),
        (0.0, "llc_passes", "LLC estimate"),
        (w, "cal_passes", "LLC calibration"),
    ):
        ax.bar(x + shift, [finite_or_nan(r.get(key)) for r in rows], w, label=label)
    ax.set_yscale("log")
    ax.set_xticks(x, [str(int(v)) for v in d])
    ax.set_xlabel("d_model")
    ax.set_ylabel("forward-backward passes")
    ax.set_title("cost per checkpoint", fontsize=10)
    ax.legend(fontsize=7)
