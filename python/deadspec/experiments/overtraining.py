"""Over-training experiment: how far validation loss rises when a LM trains long past its minimum.

Claim (Dead-Direction Conditioners, arXiv 2606.29176): a language model trained past the point
of fit ends with a validation − train loss gap of 0.67 with DDCAdam against 5.88 with AdamW
(resistance to *over-training collapse*).

Setup (ours; the paper's model, data and schedule are not public)
-----------------------------------------------------------------
- **Corpus** (``corpus``): ``"stdlib"`` (default): real text, byte-level, from the Python standard
  library's own source files and docstrings (:func:`deadspec.experiments._corpus.stdlib_batches`:
  windows of ``ctx + 1`` bytes drawn by a seeded permutation from the whole library; 128-byte
  vocabulary; nothing downloaded). ``"grammar"``: the generated English-like text of
  :mod:`deadspec.experiments._corpus` (the second setting). Each seed draws its own training and
  validation sequences (``n_train``, ``n_val``).
- **Model**: :class:`deadspec.experiments._lm.TinyLM` (pre-LN causal transformer blocks, ReLU
  MLP, final LayerNorm, unembedding without bias).
- **A generalisation phase, then over-training**: full batch, constant learning rate, ``steps``
  steps. At the default size (256 sequences of 32 bytes, 2 blocks of d_model 32: 4 parameters
  per training token) the validation loss falls from ln 128 ≈ 4.85 to its minimum (2.54–2.61
  nats per byte) at steps 50–100 and then rises while the training loss goes to ~0.1 (the run
  of record, 2026-12-07, every arm): the run goes on 5–11 times as long as it took to reach
  the minimum.
- **Arms**: ``adamw``, ``muon`` (``torch.optim.Muon`` on the hidden matrices, ``adjust_lr_fn=
  "match_rms_adamw"`` so one learning-rate grid serves every arm, + AdamW on the rest),
  ``ddc-adam`` (coordinate form), ``ddc-adam-split`` (split form) and ``ddc-muon``; gauges
  discovered plus the head's. Adam betas (0.9, 0.98), Muon momentum 0.95.
- **Tuned alike**: for each weight decay in ``weight_decays`` (0.01, 0.1) and each arm, every
  learning rate of the grid ``lrs`` runs on the tuning seed (100); the rate with the lowest
  minimum validation loss wins (ties: the smaller rate). Then ``seeds`` fresh seeds (0, 1, …)
  per arm and weight decay at that rate.
- **Metrics per run**: the minimum validation loss and its step (the control against winning by
  under-fitting), the **validation rise** (final − minimum), the final gap (validation − train,
  the paper's quantity), the RMS of the centred validation logits at the end (logit blow-up)
  and the per-unit norm imbalance over training (:func:`unit_imbalance`).
- **Rule** (:data:`RULE`, printed before the runs and written to config.json), per DDC arm and
  weight decay, paired by seed against its base (DDCAdam, both forms: AdamW; DDCMuon: Muon):
  reproduced when its validation rise is lower with paired-t p < 0.05 and its minimum
  validation loss is not higher with p < 0.05; refuted when its rise is higher with p < 0.05;
  inconclusive otherwise; inconclusive too when a paired run diverged (its rise is not finite;
  ``diverged`` counts them per arm). An arm is reproduced when it is at every weight decay,
  refuted when it is at some and reproduced at none.

Outputs (``--out DIR``, default ``./deadspec-out/over-training``): ``overtraining.csv`` (one row
per evaluation run), ``overtraining_tuning.csv`` (one per tuning run), ``overtraining_curves.csv``
(one per evaluation run × evaluation), ``overtraining_summary.csv`` (per arm and weight decay:
mean ± SE, the paired tests, the verdicts), ``config.json`` and ``overtraining.png``.

Run: ``python -m deadspec.experiments.overtraining [--quick] [--size full] [--corpus grammar]``
or ``deadspec repro over-training``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from deadspec.experiments import _harness, _lm
from deadspec.experiments._stats import finite_or_nan, mean_se, paired_t

__all__ = [
    "CSV_COLUMNS",
    "DEFAULT_OUT",
    "OPTIMIZERS",
    "RULE",
    "OverTrainingResult",
    "arm_verdicts",
    "check_sizes",
    "choose_lr",
    "corpus_data",
    "format_table",
    "main",
    "one_run",
    "parser",
    "run",
    "run_config",
    "summarize_arms",
    "summary_columns",
    "tune",
    "unit_imbalance",
]

DEFAULT_OUT = Path("deadspec-out") / "over-training"
OPTIMIZERS = ("adamw", "muon", "ddc-adam", "ddc-adam-split", "ddc-muon")
#: Each DDC arm's base: the optimizer it is compared with, seed by seed.
BASE = {"ddc-adam": "adamw", "ddc-adam-split": "adamw", "ddc-muon": "muon"}
#: The paper's validation − train gaps.
PAPER_GAP = {"ddc-adam": 0.67, "adamw": 5.88}
CORPORA = ("stdlib", "grammar")
TUNE_SEED = 100
ALPHA = 0.05
RULE = (
    "rule, per DDC arm and weight decay, paired by seed against its base (DDCAdam, both forms: "
    "AdamW; DDCMuon: Muon), each arm at the learning rate of the grid with the lowest minimum "
    "validation loss on the tuning seed: reproduced when the validation rise (final − minimum "
    f"validation loss) is lower with paired-t p < {ALPHA} and the minimum validation loss is not "
    f"higher with p < {ALPHA} (no winning by under-fitting); refuted when the rise is higher with "
    f"p < {ALPHA}; inconclusive otherwise, or when a paired run diverged. An arm is reproduced "
    "when it is at every weight decay, "
    "refuted when it is at some and reproduced at none"
)

SIZES = {
    "quick": _lm.LMSizes(8, 16, 8, 16, 2, 1, 30, 5, (1e-3, 3e-3), (0.01, 0.1), 8, 8),
    "default": _lm.LMSizes(256, 256, 32, 32, 2, 2, 600, 25, (1e-3, 3e-3, 1e-2), (0.01, 0.1),
                           32, 30),
    "full": _lm.LMSizes(1024, 512, 64, 64, 4, 4, 3000, 50, (3e-4, 1e-3, 3e-3, 1e-2), (0.01, 0.1),
                        64, 40),
}  # fmt: skip
SEEDS = {"quick": 2, "default": 5, "full": 8}

METRICS = ("min_val", "final_val", "val_rise", "gap", "logit_rms", "imbalance_final")
CSV_COLUMNS = (
    "corpus",
    "optimizer",
    "weight_decay",
    "lr",
    "seed",
    "steps",
    "min_val",
    "min_val_step",
    "final_val",
    "final_train",
    "val_rise",
    "gap",
    "tail_gap",
    "logit_rms",
    "imbalance_final",
    "imbalance_max",
    "diverged",
    "seconds",
)
CURVE_COLUMNS = (
    "optimizer",
    "weight_decay",
    "seed",
    "step",
    "train_loss",
    "val_loss",
    "logit_rms",
    "imbalance",
)
SUMMARY_COLUMNS = (
    "optimizer",
    "weight_decay",
    "lr",
    "seeds",
    "diverged",
    *(f"{m}_{k}" for m in METRICS for k in ("mean", "se")),
    "paper_gap",
    "base",
    "rise_diff",
    "rise_diff_se",
    "rise_p",
    "min_val_diff",
    "min_val_p",
    "verdict",
)


@dataclasses.dataclass
class OverTrainingResult:
    """What :func:`run` returns.

    Attributes
    ----------
    rows, tuning : list of dict
        One per evaluation / tuning run (keys :data:`CSV_COLUMNS`).
    summary : list of dict
        One per arm × weight decay (keys :data:`SUMMARY_COLUMNS`).
    verdicts : dict
        DDC arm -> verdict over the weight decays (:data:`RULE`).
    curves : list of dict
        One per evaluation run × evaluation (keys :data:`CURVE_COLUMNS`).
    sizes : deadspec.experiments._lm.LMSizes
    csv_path, tuning_path, curves_path, summary_path, png_path : Path or None
    seconds : float
    """

    rows: list[dict[str, Any]]
    tuning: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    verdicts: dict[str, str]
    curves: list[dict[str, Any]]
    sizes: _lm.LMSizes
    csv_path: Path | None
    tuning_path: Path | None
    curves_path: Path | None
    summary_path: Path | None
    png_path: Path | None
    seconds: float


# ---------------------------------------------------------------------------------------------
# One run
# ---------------------------------------------------------------------------------------------
def corpus_data(corpus: str, sizes: _lm.LMSizes, seed: int):
    """The training and validation sequences of ``seed`` (``lm_batches``' return value)."""
    from deadspec.experiments import _corpus

    make = _corpus.stdlib_batches if corpus == "stdlib" else _corpus.lm_batches
    return make(sizes.n_train, sizes.n_val, sizes.ctx, seed=seed)


def unit_imbalance(model: Any) -> float:
    """Per-unit norm imbalance of a :class:`~deadspec.experiments._lm.TinyLM`'s MLPs.

    Hidden unit j of a block's MLP has an incoming norm a_j = ‖(fc_in.weight[j], fc_in.bias[j])‖
    and an outgoing norm c_j = ‖fc_out.weight[:, j]‖. The ReLU rescaling gauge (a_j → s·a_j,
    c_j → c_j/s) leaves the function unchanged and moves log(a_j/c_j) by 2 log s, so the spread of
    log(a_j/c_j) over the units measures how far training has drifted along the gauge orbits.
    Returns the standard deviation over units, averaged over blocks (dead units, with a zero
    norm, are left out).
    """
    import torch

    spreads = []
    for block in model.blocks:
        fc_in, fc_out = block.mlp.fc_in, block.mlp.fc_out
        with torch.no_grad():
            w_in = torch.cat([fc_in.weight, fc_in.bias[:, None]], dim=1)
            a = torch.linalg.vector_norm(w_in, dim=1).double()
            c = torch.linalg.vector_norm(fc_out.weight, dim=0).double()
        ok = (a > 0) & (c > 0)
        if int(ok.sum()) >= 2:
            spreads.append(float(torch.log(a[ok] / c[ok]).std()))
    return float(np.mean(spreads)) if spreads else float("nan")


def one_run(
    corpus: str, sizes: _lm.LMSizes, optimizer: str, lr: float, weight_decay: float, seed: int
) -> dict[str, Any]:
    """One run (a worker of :func:`deadspec.experiments._harness.map_jobs`): the CSV row and,
    under ``"_curve"``, its evaluations."""
    data = corpus_data(corpus, sizes, seed)
    extra: list[tuple[float, float]] = []

    def on_eval(_step: int, model: Any) -> None:
        logits = model(data[2])
        centred = logits - logits.mean(dim=-1, keepdim=True)
        extra.append((float(centred.pow(2).mean().sqrt()), unit_imbalance(model)))

    res = _lm.train_lm(sizes, optimizer, lr, weight_decay, seed=seed, data=data, on_eval=on_eval)
    imb = [e[1] for e in extra if math.isfinite(e[1])]
    row = {
        "corpus": corpus,
        "optimizer": optimizer,
        "weight_decay": weight_decay,
        "lr": lr,
        "seed": seed,
        "steps": sizes.steps,
        **{k: res[k] for k in ("min_val", "min_val_step", "final_val", "final_train", "gap")},
        "tail_gap": res["tail_gap"],
        "val_rise": res["final_val"] - res["min_val"],
        "logit_rms": extra[-1][0] if extra else float("nan"),
        "imbalance_final": extra[-1][1] if extra else float("nan"),
        "imbalance_max": max(imb) if imb else float("nan"),
        "diverged": bool(res["diverged"]),
        "seconds": round(float(res["seconds"]), 3),
    }
    row["_curve"] = [
        {"step": s, "train_loss": tr, "val_loss": va, "logit_rms": e[0], "imbalance": e[1]}
        for s, tr, va, e in zip(res["steps"], res["train_loss"], res["val_loss"], extra)
    ]
    return row


# ---------------------------------------------------------------------------------------------
# Tuning, statistics, verdicts
# ---------------------------------------------------------------------------------------------
def choose_lr(tuning: Sequence[dict[str, Any]], optimizer: str, weight_decay: float) -> float:
    """The rate of ``optimizer``'s tuning runs at ``weight_decay`` with the lowest minimum
    validation loss (a diverged or non-finite run never wins; ties: the smaller rate)."""
    mine = [r for r in tuning if r["optimizer"] == optimizer and r["weight_decay"] == weight_decay]

    def key(r: dict[str, Any]) -> tuple[float, float]:
        v = finite_or_nan(r["min_val"])
        return (v if math.isfinite(v) and not r["diverged"] else math.inf, r["lr"])

    return float(min(mine, key=key)["lr"])


def summarize_arms(rows, optimizers, weight_decays, chosen, metrics, extra) -> list[dict[str, Any]]:
    """Per arm × weight decay (in that order, arms that ran): the arm, its rate ``chosen[(arm,
    wd)]``, the number of seeds, mean ± SE of each of ``metrics`` and the keys of
    ``extra(rows, mine, arm, wd)`` (``mine``: the arm's runs at wd, by seed). Shared with the
    detection experiment."""
    out = []
    for wd in weight_decays:
        for o in optimizers:
            mine = sorted((r for r in rows if r["optimizer"] == o and r["weight_decay"] == wd),
                          key=lambda r: r["seed"])  # fmt: skip
            if not mine:
                continue
            s: dict[str, Any] = {"optimizer": o, "weight_decay": wd, "lr": chosen[(o, wd)],
                                 "seeds": len(mine)}  # fmt: skip
            for m in metrics:
                s[f"{m}_mean"], s[f"{m}_se"] = mean_se([finite_or_nan(r[m]) for r in mine])
            s.update(extra(rows, mine, o, wd))
            out.append(s)
    return out


def summarize(
    rows: Sequence[dict[str, Any]],
    optimizers: Sequence[str],
    weight_decays: Sequence[float],
    chosen: dict[tuple[str, float], float],
) -> list[dict[str, Any]]:
    """Per arm × weight decay: mean ± SE of :data:`METRICS`; for a DDC arm whose base ran, the
    paired tests against it and the verdict (:func:`verdict`)."""

    def extra(rows, mine, o, wd):
        return {"paper_gap": PAPER_GAP.get(o), "diverged": sum(_broken(r) for r in mine),
                **_against_base(rows, mine, o, wd)}  # fmt: skip

    return summarize_arms(rows, optimizers, weight_decays, chosen, METRICS, extra)


def _against_base(rows, mine, optimizer: str, wd: float) -> dict[str, Any]:
    """The paired tests of a DDC arm's runs ``mine`` against its base's, and the verdict (empty
    when the arm has no base or the base did not run)."""
    base = BASE.get(optimizer)
    theirs = {r["seed"]: r for r in rows if r["optimizer"] == base and r["weight_decay"] == wd}
    if base is None or not theirs:
        return {}
    pairs = [(r, theirs[r["seed"]]) for r in mine if r["seed"] in theirs]
    broken = sum(_broken(a) or _broken(b) for a, b in pairs)

    def test(key: str) -> dict[str, float]:
        return paired_t([a[key] for a, _ in pairs], [b[key] for _, b in pairs])

    rise, mv = test("val_rise"), test("min_val")
    word = verdict(rise, mv)
    if broken:
        word = f"inconclusive ({broken} paired runs diverged; the test leaves them out)"
    return {
        "base": base,
        "rise_diff": rise["mean"],
        "rise_diff_se": rise["se"],
        "rise_p": rise["p"],
        "min_val_diff": mv["mean"],
        "min_val_p": mv["p"],
        "verdict": word,
    }


def _broken(row: dict[str, Any]) -> bool:
    """A run that diverged or whose rise or minimum is not finite."""
    vals = (finite_or_nan(row["val_rise"]), finite_or_nan(row["min_val"]))
    return bool(row["diverged"]) or not all(math.isfinite(v) for v in vals)


def verdict(rise: dict[str, float], min_val: dict[str, float]) -> str:
    """:data:`RULE` for one DDC arm and weight decay from the paired tests (DDC − base) of the
    validation rise and of the minimum validation loss."""
    p, d = rise["p"], rise["mean"]
    if not (math.isfinite(p) and math.isfinite(d)):
        return "inconclusive (too few paired seeds)"
    if p < ALPHA and d > 0:
        return f"refuted (rise higher by {d:.3g}, p = {p:.2g})"
    if p < ALPHA and d < 0:
        if min_val["mean"] > 0 and min_val["p"] < ALPHA:
            return (
                f"inconclusive (rise lower by {-d:.3g}, p = {p:.2g}, but the minimum validation "
                f"loss is higher by {min_val['mean']:.3g}, p = {min_val['p']:.2g})"
            )
        return f"reproduced (rise lower by {-d:.3g}, p = {p:.2g})"
    return f"inconclusive (rise {d:+.3g}, p = {p:.2g})"


def arm_verdicts(summary: Sequence[dict[str, Any]]) -> dict[str, str]:
    """DDC arm -> verdict over the weight decays (:data:`RULE`)."""
    out = {}
    for o in BASE:
        words = [s["verdict"].split()[0] for s in summary if s["optimizer"] == o and "verdict" in s]
        if not words:
            continue
        if all(w == "reproduced" for w in words):
            out[o] = "reproduced"
        elif "refuted" in words and "reproduced" not in words:
            out[o] = "refuted"
        else:
            out[o] = "inconclusive"
    return out


# ---------------------------------------------------------------------------------------------
# Run
# ---------------------------------------------------------------------------------------------
def run(
    out: str | Path | None = DEFAULT_OUT,
    *,
    quick: bool = False,
    size: str = "default",
    corpus: str = "stdlib",
    seeds: int | None = None,
    optimizers: Sequence[str] = OPTIMIZERS,
    lrs: Sequence[float] | None = None,
    weight_decays: Sequence[float] | None = None,
    steps: int | None = None,
    n_train: int | None = None,
    workers: int | None = None,
    plot: bool = True,
    progress: bool | None = None,
    echo: Callable[[str], None] | None = print,
) -> OverTrainingResult:
    """Run the over-training experiment; write the CSVs, config.json and the plot into ``out``.

    Parameters
    ----------
    out : str or Path or None
        Output folder (created); None writes nothing.
    quick : bool
        Tiny sizes (seconds; for tests).
    size : {"default", "full"}
        ``"default"``: 256 sequences of 32 bytes, 2 blocks of d_model 32, 600 full-batch steps,
        lr ∈ {1e-3, 3e-3, 1e-2} × weight decay ∈ {0.01, 0.1}, 5 seeds (80 runs: 21 min with 2
        workers on the 2-core development machine, 2026-12-07). ``"full"``: 1024
        sequences of 64, 4 blocks of 64, 3000 steps, 4 rates, 8 seeds.
    corpus : {"stdlib", "grammar"}
        The text (module docstring).
    seeds : int, optional
        Evaluation seeds per arm and weight decay (0 .. seeds − 1).
    optimizers : sequence of str
        Subset of :data:`OPTIMIZERS` (a DDC arm is judged only when its base runs too).
    lrs, weight_decays : sequence of float, optional
        Override the grid.
    steps, n_train : int, optional
        Override the training length and the number of training sequences.
    workers : int, optional
        Worker processes, one torch thread each (default: the CPUs this process may use; 1 runs
        everything in this process).
    plot, progress, echo
        As the other experiments.

    Returns
    -------
    OverTrainingResult
    """
    sizes, n_seeds = check_sizes(
        "deadspec.overtraining.run",
        quick,
        size,
        corpus,
        seeds,
        optimizers,
        SIZES,
        lrs=lrs,
        weight_decays=weight_decays,
        steps=steps,
        n_train=n_train,
    )
    _harness.check_out(out, "overtraining.run")  # before any work: a bad folder fails now
    if workers is None:
        workers = _harness.default_workers()
    if echo is not None:
        echo(f"over-training: {RULE}; stated before the runs")
    t0 = time.perf_counter()
    wds = sizes.weight_decays
    tuning, chosen = tune(corpus, sizes, optimizers, workers, progress, "over-training tuning")
    jobs = [(corpus, sizes, o, chosen[(o, wd)], wd, s) for wd in wds for o in optimizers
            for s in range(n_seeds)]  # fmt: skip
    rows = _harness.map_jobs(one_run, jobs, workers, progress, "over-training")
    curves = [
        {"optimizer": r["optimizer"], "weight_decay": r["weight_decay"], "seed": r["seed"], **c}
        for r in rows
        for c in r.pop("_curve")
    ]
    summary = summarize(rows, optimizers, wds, chosen)
    verdicts = arm_verdicts(summary)
    config = run_config(corpus, sizes, n_seeds, optimizers, chosen, workers, RULE)
    paths = _harness.write_outputs(
        out,
        {
            "overtraining.csv": (rows, CSV_COLUMNS),
            "overtraining_tuning.csv": (tuning, CSV_COLUMNS),
            "overtraining_curves.csv": (curves, CURVE_COLUMNS),
            "overtraining_summary.csv": (summary, SUMMARY_COLUMNS),
        },
        {"overtraining.png": lambda path: plot_overtraining(curves, summary, path, sizes, corpus)}
        if plot
        else None,
        config={**config, "verdicts": verdicts},
    )
    seconds = time.perf_counter() - t0
    texts = [format_table(summary), "", *(f"verdict, {o}: {v}" for o, v in verdicts.items())]
    _harness.report(echo, texts, paths.values(), seconds)
    return OverTrainingResult(
        rows=rows,
        tuning=tuning,
        summary=summary,
        verdicts=verdicts,
        curves=curves,
        sizes=sizes,
        csv_path=paths.get("overtraining.csv"),
        tuning_path=paths.get("overtraining_tuning.csv"),
        curves_path=paths.get("overtraining_curves.csv"),
        summary_path=paths.get("overtraining_summary.csv"),
        png_path=paths.get("overtraining.png"),
        seconds=seconds,
    )


def tune(corpus, sizes, optimizers, workers: int, progress, desc: str):
    """Every arm × weight decay × rate of the grid on :data:`TUNE_SEED`: (the tuning rows,
    (arm, wd) -> the rate :func:`choose_lr` picks). Shared with the detection experiment."""
    wds = sizes.weight_decays
    jobs = [(corpus, sizes, o, lr, wd, TUNE_SEED) for wd in wds for o in optimizers
            for lr in sizes.lrs]  # fmt: skip
    tuning = _harness.map_jobs(one_run, jobs, workers, progress, desc)
    for r in tuning:
        r.pop("_curve")
    return tuning, {(o, wd): choose_lr(tuning, o, wd) for wd in wds for o in optimizers}


def check_sizes(fn, quick, size, corpus, seeds, optimizers, presets, **overrides):
    """The sizes (``presets`` with the non-None ``overrides``) and the number of seeds;
    ValueError naming ``fn`` for a bad argument, ``optimizers`` among :data:`OPTIMIZERS`
    included (shared with the detection experiment)."""
    bad = [o for o in optimizers if o not in OPTIMIZERS]
    if bad or not optimizers:
        raise ValueError(f"{fn}: optimizers must be a non-empty subset of {OPTIMIZERS}, got "
                         f"{list(optimizers)}")  # fmt: skip
    if size not in ("default", "full"):
        raise ValueError(f"{fn}: size must be 'default' or 'full', got {size!r}")
    if corpus not in CORPORA:
        raise ValueError(f"{fn}: corpus must be one of {CORPORA}, got {corpus!r}")
    sizes = _lm.lm_sizes(quick, size, presets=presets, **overrides)
    n_seeds = SEEDS["quick" if quick else size] if seeds is None else seeds
    if isinstance(n_seeds, bool) or not isinstance(n_seeds, int) or n_seeds < 1:
        raise ValueError(f"{fn}: seeds must be a positive integer, got {n_seeds!r}")
    return sizes, n_seeds


def run_config(corpus, sizes, n_seeds, optimizers, chosen, workers, rule) -> dict[str, Any]:
    """config.json: the sizes, seeds, grid choice, ``rule`` and a digest of seed 0's data."""
    data = corpus_data(corpus, sizes, 0)
    digest = hashlib.sha256(b"".join(t.numpy().tobytes() for t in data[:4])).hexdigest()[:16]
    return {
        "corpus": corpus,
        "sizes": dataclasses.asdict(sizes),
        "seeds": list(range(n_seeds)),
        "tuning_seed": TUNE_SEED,
        "optimizers": list(optimizers),
        "chosen_lr": [
            {"optimizer": o, "weight_decay": wd, "lr": lr} for (o, wd), lr in chosen.items()
        ],  # fmt: skip
        "rule": rule,
        "seed0_data_sha256": digest,
        "workers": workers,
    }


# ---------------------------------------------------------------------------------------------
# Tables, figure, command line
# ---------------------------------------------------------------------------------------------
def summary_columns(middle, width: int, diff_title: str, diff_key: str, p_key: str,
                    diff_spec: str):  # fmt: skip
    """The columns of a per-arm summary table: arm, weight decay and rate, then a mean ± SE
    column ``width`` wide per ``(title, metric, spec)`` of ``middle``, then the paired difference
    against the base with its p-value, then the verdict's first word (shared with the
    detection experiment)."""
    col = _harness.Col

    def diff(s: dict[str, Any]) -> str:
        return "-" if "verdict" not in s else f"{s[diff_key]:{diff_spec}} ({s[p_key]:.2g})"

    return (
        col("optimizer", "optimizer", "<14"),
        col("wd", "weight_decay", ">5g"),
        col("lr", "lr", ">7.0e"),
        *(_harness.mean_se_col(title, key, spec, f">{width}") for title, key, spec in middle),
        col(diff_title, diff, ">16"),
        col("verdict", lambda s: s.get("verdict", "-").split(" (")[0], ">13"),
    )


_SUMMARY = summary_columns(
    (("min val", "min_val", ".3f"), ("val rise", "val_rise", ".3f"), ("final gap", "gap", ".3f"),
     ("logit RMS", "logit_rms", ".2f"), ("imbalance", "imbalance_final", ".2f")),
    15, "Δrise (p)", "rise_diff", "rise_p", "+.3f",
)  # fmt: skip


def format_table(summary: Sequence[dict[str, Any]]) -> str:
    """A plain-text table of the per-arm summary (mean ± SE over seeds)."""
    return _harness.format_table(summary, _SUMMARY)


def plot_overtraining(curves, summary, path: Path, sizes: _lm.LMSizes, corpus: str) -> None:
    """Mean validation (solid) and train (dashed) curves per arm at each weight decay; the
    validation rise, minimum validation loss and imbalance per arm (mean ± SE)."""
    wds = list(sizes.weight_decays)
    with _harness.figure(path, figsize=(4.2 * (len(wds) + 3), 3.6)) as fig:
        axes = fig.subplots(1, len(wds) + 3, squeeze=False)[0]
        for ax, wd in zip(axes, wds):
            _curves_panel(ax, [c for c in curves if c["weight_decay"] == wd], summary, wd)
        for ax, (key, label) in zip(
            axes[len(wds) :],
            (("val_rise", "validation rise"), ("min_val", "minimum validation loss"),
             ("imbalance_final", "per-unit norm imbalance (end)")),
        ):  # fmt: skip
            _bars(ax, summary, wds, key, label)
        fig.suptitle(
            f"over-training ({corpus}): {sizes.n_train}×{sizes.ctx} tokens, {sizes.n_layers} "
            f"blocks × d_model {sizes.d_model}, {sizes.steps} full-batch steps, mean ± SE over "
            f"seeds",
            fontsize=10,
        )


def _curves_panel(ax, curves, summary, wd: float) -> None:
    for o in dict.fromkeys(c["optimizer"] for c in curves):
        pts = [c for c in curves if c["optimizer"] == o]
        steps = sorted({c["step"] for c in pts})
        for key, ls in (("val_loss", "-"), ("train_loss", "--")):
            mean = [np.mean([c[key] for c in pts if c["step"] == s]) for s in steps]
            ax.plot(steps, mean, ls=ls, color=_lm.COLORS.get(o, "k"),
                    label=o if key == "val_loss" else None, lw=1.2)  # fmt: skip
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token; dashed = train)")
    ax.set_title(f"wd = {wd:g}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def _bars(ax, summary, wds, key: str, label: str) -> None:
    opts = list(dict.fromkeys(s["optimizer"] for s in summary))
    width = 0.8 / max(1, len(wds))
    for j, wd in enumerate(wds):
        ss = {s["optimizer"]: s for s in summary if s["weight_decay"] == wd}
        x = np.arange(len(opts)) + (j - (len(wds) - 1) / 2) * width
        m = [finite_or_nan(ss[o][f"{key}_mean"]) if o in ss else np.nan for o in opts]
        e = [finite_or_nan(ss[o][f"{key}_se"]) if o in ss else np.nan for o in opts]
        ax.bar(x, m, width, yerr=np.nan_to_num(e), capsize=2, label=f"wd {wd:g}")
    ax.set_xticks(range(len(opts)), opts, fontsize=7, rotation=20)
    ax.set_title(label, fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7)


def parser(prog: str, description: str, default_out: Path, optimizers: Sequence[str]):
    """The command line of the over-training runs (shared with the detection experiment)."""
    p = _harness.parser(prog, description, default_out, sizes=("default", "full"), seed=False)
    p.add_argument("--corpus", choices=CORPORA, default="stdlib")
    p.add_argument("--seeds", type=int, default=None)
    p.add_argument("--optimizers", nargs="+", choices=OPTIMIZERS, default=list(optimizers))
    p.add_argument("--lrs", nargs="+", type=float, default=None)
    p.add_argument("--weight-decays", nargs="+", type=float, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--n-train", type=int, default=None)
    p.add_argument("--workers", type=int, default=None, help="worker processes (default: CPUs)")
    return p


def _parser():
    return parser(
        "python -m deadspec.experiments.overtraining",
        "Over-training: how far the validation loss of a small LM rises past its minimum, "
        "DDC arms against their bases, each arm's learning rate tuned on the same grid.",
        DEFAULT_OUT,
        OPTIMIZERS,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns 0 (2 on a usage error)."""
    return _harness.cli_main("over-training", _parser(), run, argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
