"""What the modular-addition sweep (:mod:`deadspec.experiments.modadd`) shows and leaves behind.

- :func:`format_table`, :func:`format_widths`, :func:`format_summary`: the printed per-run table,
  per-width table (mean ± standard error over seeds) and sweep summary with the verdicts.
- :func:`plot_sweep`: the figure, six panels: against d_model, the three readings compared like
  with like (the one-layer activation volume, the sampled-label Fisher volume, the calibrated
  LLC; every seed and the width means ± SE), the paper's summed volumes (width means) and the
  cost per checkpoint; and the sampled-label Fisher volume against the train loss.
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
from deadspec.experiments._modadd_verdict import width_means
from deadspec.experiments._stats import finite_or_nan

__all__ = ["format_summary", "format_table", "format_widths", "plot_sweep", "write_factories"]

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
    _Col("seed", "seed", ">4"),
    _Col("steps", "steps", ">6"),
    _Col(
        "test",
        lambda r: _fmt(r["test_acc"], "6.3f") + (" " if r["generalised"] else "*"),
        ">7",
    ),
    _Col("train CE", "train_loss", "9.2e"),
    _Col("log10V_hid", "log10_act_hidden", "10.1f"),
    _Col("log10V_Fs", "log10_fisher_sampled", "9.1f"),
    _Col("ΣV_act", "log10_vol_activation", "8.1f"),
    _Col("ΣV_fis", "log10_vol_fisher", "8.1f"),
    _Col("slope_act", "mean_approach_slope_activation", "9.2f"),
    _Col("slope_fis", "mean_approach_slope_fisher", "9.2f"),
    _Col("LLC", "llc_mean", "8.2f"),
    _Col("±", "llc_std", "6.2f"),
    _Col("DDS pass", "dds_passes", "8.0f"),
    _Col("DDS s", "dds_seconds", "6.1f"),
    _Col("LLC pass", "llc_passes", "8.0f"),
    _Col("LLC s", "llc_seconds", "6.1f"),
    _Col("cal pass", "cal_passes", "8.0f"),
    _Col("cal s", "cal_seconds", "6.1f"),
)


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A plain-text table of the per-run rows (what :func:`run` prints)."""
    table = _harness.format_table(rows, _TABLE)
    return table + "\n(* = step cap reached before the target test accuracy)"


def format_widths(widths: Sequence[dict[str, Any]]) -> str:
    """The per-width table: mean ± standard error over seeds of the compared readings."""
    cols = (
        _Col("d_model", "d_model", ">7"),
        _Col("seeds", lambda w: f"{w['n_generalised']}/{w['n_seeds']}", ">5"),
        _harness.mean_se_col("log10V_hidden", "log10_act_hidden", ".1f", ">20"),
        _harness.mean_se_col("log10V_Fisher_sampled", "log10_fisher_sampled", ".1f", ">20"),
        _harness.mean_se_col("LLC", "llc_mean", ".2f", ">20"),
        _harness.mean_se_col("log10 train CE", "log10_train_loss", ".2f", ">20"),
    )
    return (
        "per width, mean ± standard error over seeds (seeds: generalised/run):\n"
        + _harness.format_table(widths, cols)
    )


def format_summary(s: dict[str, Any]) -> str:
    """The sweep summary and the verdicts as text."""
    lines = [
        f"summary over {s['n_points']} runs ({s['n_widths']} widths × up to {s['n_seeds']} "
        f"seeds; {s['n_generalised']} generalised):",
        "  compared like with like (ρ over all runs; S = the closest neighbouring widths' "
        "means, in standard errors of their difference):",
    ]
    for key, name in (
        ("log10_act_hidden", "activation volume, mlp.act"),
        ("log10_fisher_sampled", "Fisher volume, fc_out, sampled"),
        ("llc_mean", "calibrated LLC"),
    ):
        lines.append(
            f"    {name:<31}: ρ = {_fmt(s[f'{key}_rho'], '+.3f')}, "
            f"S = {_fmt(s[f'{key}_separation'], '.2f')}, width means span "
            f"{_fmt(s[f'{key}_span'], '.2f')}, monotone: {s[f'{key}_monotone']}, separates: "
            f"{'yes' if s[f'{key}_separates'] else 'no'}"
        )
    lines.append(
        f"    (the sampled-label Fisher volume against log10 train CE: ρ = "
        f"{_fmt(s['log10_fisher_sampled_rho_train_loss'], '+.3f')})"
    )
    lines.append(f"  verdict, claim (DDS separates, LLC rank-flat): {s['verdict_claim']}")
    lines.append(f"  verdict, magnitude (paper: 18 orders): {s['verdict_magnitude']}")
    lines.append("  the paper's summed volumes (width means; not like with like):")
    for col, name in (
        ("log10_vol_activation", "activation, Σ layers"),
        ("log10_vol_fisher", "Fisher (observed), Σ layers"),
        ("log10_vol_total", "both sides, Σ layers"),
    ):
        lines.append(
            f"    {name:<31}: spans {_fmt(s[f'{col}_orders'], '.1f')} orders; monotone: "
            f"{s[f'{col}_monotone']}; ρ = {_fmt(s[f'{col}_spearman'], '+.3f')}"
        )
    lines.append(
        f"  LLC width means: [{_fmt(s['llc_min'], '.3g')}, {_fmt(s['llc_max'], '.3g')}], "
        f"relative spread {_fmt(s['llc_rel_spread'], '.2f')}"
    )
    lines.append(
        f"  cost: median LLC/DDS passes = {_fmt(s['median_pass_ratio'], '.1f')}×, "
        f"median LLC/DDS wall time = {_fmt(s['median_time_ratio'], '.1f')}× (estimate only)"
    )
    return "\n".join(lines)


def plot_sweep(rows: Rows, widths: Rows, summary: dict[str, Any], path: Path, p: int) -> None:
    """Write the sweep's figure to ``path`` (PNG)."""
    with _harness.figure(path, figsize=(15, 8), dpi=110) as fig:
        axes = fig.subplots(2, 3)
        for ax, (key, title) in zip(
            axes[0],
            (
                ("log10_act_hidden", "activation volume, mlp.act (one layer)"),
                ("log10_fisher_sampled", "Fisher volume, fc_out, sampled labels"),
                ("llc_mean", "calibrated LLC"),
            ),
        ):
            _compared(ax, rows, widths, summary, key, title)
        _volumes(axes[1, 0], rows, summary)
        _cost(axes[1, 1], rows)
        _fisher_vs_loss(axes[1, 2], rows, summary)
        fig.suptitle(
            f"modular addition, p = {p}: one-layer DDS readings and the calibrated LLC across "
            f"d_model ({summary['n_seeds']} seeds)",
            fontsize=11,
        )


def _d_model_axis(ax, ylabel: str, title: str, widths: Sequence[int] = ()) -> None:
    """d_model on a log2 axis (ticks at ``widths``), the y label, the title and a grid."""
    ax.set_xscale("log", base=2)
    if len(widths):
        ax.set_xticks(list(widths), [str(int(w)) for w in widths])
        ax.minorticks_off()
    ax.set_xlabel("d_model")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)


def _compared(ax, rows: Rows, widths: Rows, summary: dict[str, Any], key: str, title: str):
    """Every run (dots) and the width means ± SE (line) of one compared reading."""
    ax.plot(
        [r["d_model"] for r in rows],
        [finite_or_nan(r.get(key)) for r in rows],
        "o",
        color="0.6",
        ms=3,
        label="runs",
    )
    se = np.array([finite_or_nan(w[f"{key}_se"]) for w in widths])
    ax.errorbar(
        [w["d_model"] for w in widths],
        [w[f"{key}_mean"] for w in widths],
        yerr=np.where(np.isfinite(se), se, 0.0),
        marker="s",
        capsize=3,
        label="mean ± SE",
    )
    rho = _harness.fmt(summary[f"{key}_rho"], "+.2f")
    sep = _harness.fmt(summary[f"{key}_separation"], ".1f")
    _d_model_axis(ax, key, f"{title}\nρ = {rho}, S = {sep}", [w["d_model"] for w in widths])
    ax.legend(fontsize=7)


def _volumes(ax, rows: Rows, summary: dict[str, Any]) -> None:
    d = sorted({int(r["d_model"]) for r in rows})
    for col, style in (
        ("log10_vol_activation", "o-"),
        ("log10_vol_fisher", "s-"),
        ("log10_vol_total", "k^--"),
    ):
        ax.plot(
            d,
            width_means(rows, d, col),
            style,
            label=f"{col[10:]} ({_harness.fmt(summary[f'{col}_orders'], '.1f')} orders)",
        )
    _d_model_axis(ax, "log10 volume (Σ chosen layers)", "the paper's summed volumes", d)
    ax.legend(fontsize=7)


def _fisher_vs_loss(ax, rows: Rows, summary: dict[str, Any]) -> None:
    """The sampled-label Fisher volume against the train loss, coloured by width."""
    for d in sorted({int(r["d_model"]) for r in rows}):
        rs = [r for r in rows if int(r["d_model"]) == d]
        ax.plot(
            [finite_or_nan(r.get("train_loss")) for r in rs],
            [finite_or_nan(r.get("log10_fisher_sampled")) for r in rs],
            "o",
            label=f"d={d}",
        )
    ax.set_xscale("log")
    ax.set_xlabel("train cross-entropy")
    ax.set_ylabel("log10_fisher_sampled")
    rho = _harness.fmt(summary["log10_fisher_sampled_rho_train_loss"], "+.2f")
    ax.set_title(f"Fisher volume against train loss (ρ = {rho})", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def _cost(ax, rows: Rows) -> None:
    d = sorted({int(r["d_model"]) for r in rows})
    w = 0.25
    x = np.arange(len(d))
    for shift, key, label in (
        (-w, "dds_passes", "DDS"),
        (0.0, "llc_passes", "LLC estimate"),
        (w, "cal_passes", "LLC calibration"),
    ):
        ax.bar(x + shift, width_means(rows, d, key), w, label=label)
    ax.set_yscale("log")
    ax.set_xticks(x, [str(v) for v in d])
    ax.set_xlabel("d_model")
    ax.set_ylabel("forward-backward passes")
    ax.set_title("cost per checkpoint (mean over seeds)", fontsize=10)
    ax.legend(fontsize=7)
