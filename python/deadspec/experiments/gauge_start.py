"""Gauge-imbalanced start: what exact equivariance buys (issue #15, part 2).

Claim (Dead-Direction Conditioners): DDCAdam and DDCMuon keep their state on quantities the
network's symmetries leave unchanged, so their step is exactly equivariant: trained from
``g·θ₀`` (θ₀ moved along a gauge orbit, the same function) they follow ``g·θ_t`` and end at the
same function as from θ₀. AdamW and Muon have per-coordinate (or per-matrix) state that a
rescaling changes, so an imbalanced start trains a different model.

Setup
-----
- **Model and data**: the over-training experiment's :class:`~deadspec.experiments._lm.TinyLM`
  on its generated grammar corpus (``_corpus``: nothing shipped or downloaded), full batch,
  constant learning rate. Each seed draws its own corpus streams and initialisation θ₀.
- **Gauge element** of strength ``s``: every per-unit rescaling of the model — each
  ``Pair`` (an MLP's hidden units) and ``NormScale`` (a LayerNorm channel and the layers that
  read it) that :func:`~deadspec.experiments._lm.lm_gauges` finds — gets a factor
  ``c_j = exp(s·u_j)``, ``u_j`` uniform on [−1, 1] (log-uniform in [e^−s, e^s]). The function is
  verified unchanged before training: a float64 copy of θ₀ and of ``g·θ₀`` must give the same
  log-probabilities to 1e-9 (relative), or the run stops with an error; the float32 difference
  is reported (``init_diff``). ``s = 1e-6`` is the control: an element of rounding size, so that
  the KL it causes is what rounding alone grows into over the run.
- **Arms**: ``adamw``, ``muon`` (torch's, with AdamW on embeddings, head, norms and biases),
  ``ddc-adam`` (both forms) and ``ddc-muon``; each compared with its base (``ddc-adam`` and
  ``ddc-adam-split`` with ``adamw``, ``ddc-muon`` with ``muon``). Each arm's learning rate is
  chosen from the same grid by a base run on a tuning seed (1000: its own corpus and θ₀, not
  a measured seed), lowest minimum validation loss.
- **Measured**, per arm × seed × strength: the KL divergence from the base run's validation
  predictions to those of the run from ``g·θ₀`` (nats per token, mean over the validation tokens)
  at every evaluation step — at the base run's validation minimum and at the last step in the
  tables, the whole curve in ``gauge_start_kl.csv`` — the difference of their final and minimum
  validation losses, and the **orbit drift** of a run: the RMS over gauge units of the change in
  ``log ‖producer rows_j‖ − log ‖consumer columns_j‖`` between the first and the last step (a
  gauge element moves a unit's coordinate by ``2·log c_j`` where no other rescaling touches its
  rows or columns, so a strength-``s`` element by RMS about ``2s/√3``). The base run's drift says
  how far the optimizer moves along the orbits on its own.

Verdict rules (stated before the runs, printed with the results)
----------------------------------------------------------------
1. **Equivariance**, per DDC arm, at the largest strength, on the KL at the evaluation step of
   the base run's minimum validation loss: *reproduced* if its mean KL is at most 10× its mean
   KL at the control strength plus 1e-5 nats, and its base's mean KL is at least 10× its own
   and above that limit; *refuted* if its mean KL is at least its base's, or if one of its runs
   from ``g·θ₀`` stopped (a non-finite loss) before the base's minimum; otherwise
   *inconclusive*. (The KL at the
   last step is reported too. It is not the rule's: in the first run of this experiment, past
   the validation minimum the float32 runs of every arm diverged from a rounding-size
   perturbation, KL ≈ 1 nat at the last step, so the last step measures that chaos, not the
   start. The rule was moved to the base's minimum after that run, so only runs on other
   seeds test it as stated; see docs/ddc.md §8.)
2. **What it buys**, per DDC arm, at the largest strength: an arm is *hurt* when its mean
   difference of minimum validation loss (start ``g·θ₀`` minus start θ₀) is positive with a
   paired t-test p < 0.05 over the seeds. *Reproduced* if the base is hurt and the DDC arm is
   not; *refuted* if the DDC arm is hurt and its mean difference is at least the base's;
   otherwise *inconclusive* (in particular when the base is not hurt: then the experiment
   cannot show a benefit; and with fewer than 5 pairs of finite losses).

Outputs (``--out DIR``, default ``./deadspec-out/gauge-start``): ``gauge_start.csv`` (one row
per run), ``gauge_start_summary.csv`` (per arm × strength: mean ± standard error over seeds),
``gauge_start_tuning.csv`` (the learning-rate choice), ``gauge_start_kl.csv`` (the KL at every
evaluation step, per run), ``gauge_start.png`` (KL, loss difference and drift against the
strength; the KL against the step at the largest strength), ``config.json`` (sizes, grid,
seeds, strengths, rules, versions).

Run: ``deadspec repro gauge-start [--quick] [--size full]``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deadspec.experiments import _harness, _lm
from deadspec.experiments._corpus import lm_batches
from deadspec.experiments._optimizers import make_optimizer
from deadspec.experiments._stats import mean_se, paired_t

__all__ = ["ARMS", "BASE_OF", "DEFAULT_OUT", "GaugeStartResult", "main", "run"]

DEFAULT_OUT = Path("deadspec-out") / "gauge-start"
ARMS = ("adamw", "muon", "ddc-adam", "ddc-adam-split", "ddc-muon")
#: The arm each DDC arm is judged against.
BASE_OF = {"ddc-adam": "adamw", "ddc-adam-split": "adamw", "ddc-muon": "muon"}
#: The control strength (an element of rounding size).
CONTROL = 1e-6
#: The seed of the learning-rate tuning runs (measured seeds must differ from it).
TUNE_SEED = 1000
#: Rule constants (module docstring): the KL ratios, the absolute KL allowance, the test level.
KL_RATIO, KL_FLOOR, ALPHA = 10.0, 1e-5, 0.05
#: Rule 2 (a paired test) needs at least this many seeds; fewer give "inconclusive".
MIN_SEEDS = 5
#: The KL panel's floor (a log axis; the DDC arms' KL is at rounding level).
KL_PLOT_FLOOR = 1e-16


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Sizes of the gauge-start runs: the LM (``lm``), the seeds and the strengths."""

    lm: _lm.LMSizes
    seeds: int
    strengths: tuple[float, ...]


SIZES = {
    "quick": Sizes(
        _lm.LMSizes(8, 16, 8, 16, 2, 1, 30, 5, (3e-3,), (0.1,), 8, 8), 2, (CONTROL, 1.0, 2.0)
    ),
    "default": Sizes(
        _lm.LMSizes(128, 256, 32, 32, 2, 2, 400, 20, (1e-3, 3e-3, 1e-2), (0.1,), 32, 8),
        5,
        (CONTROL, 1.0, 2.0),
    ),
    "full": Sizes(
        _lm.LMSizes(256, 512, 64, 64, 4, 4, 1500, 50, (3e-4, 1e-3, 3e-3), (0.1,), 64, 8),
        8,
        (CONTROL, 0.5, 1.0, 2.0),
    ),
}

RUN_COLUMNS = (
    "optimizer",
    "lr",
    "weight_decay",
    "seed",
    "strength",
    "init_diff",
    "final_val",
    "min_val",
    "base_final_val",
    "base_min_val",
    "d_final_val",
    "d_min_val",
    "kl",
    "kl_at_min",
    "base_min_val_step",
    "drift",
    "diverged",
    "seconds",
)
SUMMARY_COLUMNS = (
    "optimizer",
    "strength",
    "seeds",
    "kl_mean",
    "kl_se",
    "kl_at_min_mean",
    "kl_at_min_se",
    "kl_at_min_bad",
    "diverged",
    "pairs",
    "d_min_val_mean",
    "d_min_val_se",
    "d_min_val_p",
    "d_final_val_mean",
    "d_final_val_se",
    "drift_mean",
    "drift_se",
)
TUNING_COLUMNS = ("optimizer", "lr", "weight_decay", "min_val", "final_val", "chosen")
KL_COLUMNS = ("optimizer", "seed", "strength", "step", "kl")


@dataclasses.dataclass
class GaugeStartResult:
    """What :func:`run` returns: the per-run rows, the summary, the tuning rows, the verdicts
    (one dict per DDC arm and rule), the sizes, the files written and the wall time."""

    rows: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    tuning: list[dict[str, Any]]
    verdicts: list[dict[str, Any]]
    sizes: Sizes
    paths: dict[str, Path]
    seconds: float


# ---------------------------------------------------------------------------------------------
# Gauge elements and the orbit coordinate
# ---------------------------------------------------------------------------------------------
def scaling_gauges(model: _lm.TinyLM) -> list[Any]:
    """The per-unit rescalings of ``model`` (Pairs and NormScales; no LogitShift, no
    rotations), bound to it."""
    import deadspec.gauges as G

    found = _lm.lm_gauges(model, rotations=False)
    return [g.bind(model) for g in found if isinstance(g, (G.Pair, G.NormScale))]


def draw_element(model: _lm.TinyLM, strength: float, seed: int) -> list[torch.Tensor]:
    """One factor vector per :func:`scaling_gauges` entry, ``exp(strength·U[−1, 1])``
    (:func:`deadspec.gauges.random_elements`, seeded by ``seed`` and ``strength``)."""
    import deadspec.gauges as G

    gen = torch.Generator().manual_seed(7919 * (seed + 1) + int(round(1e6 * strength)))
    return G.random_elements(model, scaling_gauges(model), gen, spread=strength)


def apply_element(model: _lm.TinyLM, element: Sequence[torch.Tensor]) -> None:
    """Apply the factors of :func:`draw_element` to ``model`` in place
    (:func:`deadspec.gauges.apply_elements`: one factor vector per gauge, or ValueError)."""
    import deadspec.gauges as G

    G.apply_elements(model, scaling_gauges(model), element)


def _log_probs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        out = torch.log_softmax(model(x).to(torch.float64), dim=-1)
    model.train()
    return out


def verify_element(model: _lm.TinyLM, element: Sequence[torch.Tensor], x: torch.Tensor) -> float:
    """The float64 relative change of the log-probabilities on ``x`` under ``element``; raises
    ValueError above 1e-9 (the element is not a symmetry of the model)."""
    m64 = copy.deepcopy(model).to(torch.float64)
    before = _log_probs(m64, x)
    apply_element(m64, element)
    after = _log_probs(m64, x)
    rel = float((after - before).abs().max() / before.abs().max().clamp_min(1e-300))
    if not rel <= 1e-9:
        raise ValueError(
            f"deadspec.gauge_start: the gauge element changes the model's function in float64 "
            f"(relative {rel:.3g} > 1e-9): not a symmetry"
        )
    return rel


def orbit_coordinates(model: _lm.TinyLM) -> torch.Tensor:
    """Per gauge unit, ``log ‖producer rows_j‖ − log ‖consumer columns_j‖`` (float64; a gauge
    element with factors c moves it by 2·log c_j where no other of the element's rescalings
    touches unit j's rows or columns)."""
    from deadspec._attention import consumer_matrix
    from deadspec.gauges._modules import as_tuple

    out = []
    with torch.no_grad():
        for g in scaling_gauges(model):
            w, b, idx = g._rows(model)
            rows = w.detach().to(torch.float64).reshape(w.shape[0], -1)
            prod = (rows * rows).sum(dim=1)
            if b is not None:
                prod = prod + b.detach().to(torch.float64) ** 2
            cons = torch.zeros_like(prod)
            for cn in as_tuple(g.consumer):
                cm = consumer_matrix(model.get_submodule(cn)).detach().to(torch.float64)
                cons = cons + (cm * cm).sum(dim=0)
            if idx is not None:
                prod, cons = prod[idx], cons[idx]
            out.append(0.5 * (torch.log(prod) - torch.log(cons)))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def _drift(before: torch.Tensor, after: torch.Tensor) -> float:
    d = after - before
    d = d[torch.isfinite(d)]
    return float(torch.sqrt((d * d).mean())) if d.numel() else float("nan")


def _kl(logp: torch.Tensor, logq: torch.Tensor) -> float:
    """Mean over positions of KL(p ‖ q), nats."""
    return float((logp.exp() * (logp - logq)).sum(dim=-1).mean())


# ---------------------------------------------------------------------------------------------
# One run
# ---------------------------------------------------------------------------------------------
def _model(sizes: _lm.LMSizes, seed: int, vocab: int) -> _lm.TinyLM:
    with torch.random.fork_rng():
        torch.manual_seed(1000 + seed)
        return _lm.TinyLM(vocab, sizes.ctx, sizes.d_model, sizes.n_heads, sizes.n_layers)


def _fit(
    model: _lm.TinyLM,
    opt: Any,
    sizes: _lm.LMSizes,
    data: tuple[Any, ...],
    keep: bool,
    ref: dict[int, torch.Tensor] | None,
) -> tuple[list[int], list[float], list[float], dict[int, torch.Tensor], dict[int, float], bool]:
    """Full-batch training as the over-training runs (``_lm._fit``), evaluated every
    ``eval_every`` steps and at the last (and where the loss stops being finite). ``keep``: the
    validation log-probabilities by step; ``ref``: the KL from ``ref[step]`` to this run's at
    each evaluation step that ``ref`` has (computed as it trains, nothing kept)."""
    x_tr, y_tr, x_va, y_va = data[:4]
    steps: list[int] = []
    train: list[float] = []
    val: list[float] = []
    logps: dict[int, torch.Tensor] = {}
    kls: dict[int, float] = {}
    model.train()
    for step in range(sizes.steps + 1):
        opt.zero_grad(set_to_none=True)
        loss = _lm.lm_loss(model, x_tr, y_tr)
        lval = float(loss.detach())
        if step % sizes.eval_every == 0 or step == sizes.steps or not math.isfinite(lval):
            lp = _log_probs(model, x_va)
            steps.append(step)
            train.append(lval)
            val.append(float(-lp.gather(-1, y_va.unsqueeze(-1)).mean()))
            if keep:  # (float64: the DDC arms' KL is at rounding level)
                logps[step] = lp
            if ref is not None and step in ref:
                kls[step] = _kl(ref[step], lp)
        if not math.isfinite(lval):
            return steps, train, val, logps, kls, True
        if step == sizes.steps:
            break
        loss.backward()
        opt.step()
    return steps, train, val, logps, kls, False


def train_from(
    sizes: _lm.LMSizes,
    optimizer: str,
    lr: float,
    weight_decay: float,
    data: tuple[Any, ...],
    seed: int,
    element: Sequence[torch.Tensor] | None,
    *,
    keep: bool = False,
    ref: dict[int, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Train from θ₀ (``element`` None) or from ``element``·θ₀; the curve summary plus, with
    ``keep``, the validation log-probabilities by evaluation step (``logps``, float64), with
    ``ref`` the KL from ``ref`` at each of its steps (``kls``), the float32 change of the initial
    function (``init_diff``), the orbit drift and the wall time."""
    model = _model(sizes, seed, data[4])
    x_va = data[2]
    init_diff = 0.0
    if element is not None:
        before = _log_probs(model, x_va)
        apply_element(model, element)
        after = _log_probs(model, x_va)
        init_diff = float((after - before).abs().max() / before.abs().max())
    start = orbit_coordinates(model)
    gauges = (
        _lm.lm_gauges(model, rotations=optimizer == "ddc-muon")
        if optimizer.startswith("ddc")
        else None
    )
    opt = make_optimizer(optimizer, model, lr=lr, weight_decay=weight_decay, gauges=gauges)
    t0 = time.perf_counter()
    steps, train, val, logps, kls, diverged = _fit(model, opt, sizes, data, keep, ref)
    seconds = time.perf_counter() - t0
    return {
        **_lm.curve_summary(steps, train, val),
        "logps": logps,
        "kls": kls,
        "init_diff": init_diff,
        "drift": _drift(start, orbit_coordinates(model)),
        "diverged": diverged,
        "seconds": seconds,
    }


# ---------------------------------------------------------------------------------------------
# The experiment
# ---------------------------------------------------------------------------------------------
def _tune(
    sizes: Sizes, arms: Sequence[str], wd: float, bar: Any
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Each arm's learning rate: the lowest minimum validation loss over the grid of a base run
    on the tuning seed (TUNE_SEED: its own corpus and θ₀, never a measured seed). Returns the
    choice and the tuning rows."""
    data0 = lm_batches(sizes.lm.n_train, sizes.lm.n_val, sizes.lm.ctx, seed=TUNE_SEED)
    chosen: dict[str, float] = {}
    rows: list[dict[str, Any]] = []
    for arm in arms:
        best = None
        for lr in sizes.lm.lrs:
            bar.set_postfix_str(f"tuning {arm} lr={lr:g}")
            r = train_from(sizes.lm, arm, lr, wd, data0, TUNE_SEED, None)
            bar.update(1)
            score = r["min_val"] if math.isfinite(r["min_val"]) and not r["diverged"] else math.inf
            rows.append(
                {
                    "optimizer": arm,
                    "lr": lr,
                    "weight_decay": wd,
                    "min_val": r["min_val"],
                    "final_val": r["final_val"],
                    "chosen": False,
                }
            )
            if best is None or score < best[0]:
                best = (score, lr)
        assert best is not None
        chosen[arm] = best[1]
        for row in rows:
            if row["optimizer"] == arm:
                row["chosen"] = row["lr"] == best[1]
    return chosen, rows


def summarize(
    rows: Sequence[dict[str, Any]], arms: Sequence[str], strengths: Sequence[float]
) -> list[dict[str, Any]]:
    """Per arm × strength: mean ± standard error over seeds (of the finite values; ``*_bad``
    counts the others: runs that stopped early), the paired p-value of the minimum-validation-
    loss difference and its number of finite pairs (``pairs``)."""
    out = []
    for arm in arms:
        for s in strengths:
            mine = [r for r in rows if r["optimizer"] == arm and r["strength"] == s]
            if not mine:
                continue
            row: dict[str, Any] = {"optimizer": arm, "strength": s, "seeds": len(mine)}
            for key in ("kl", "kl_at_min", "d_final_val", "drift"):
                row[f"{key}_mean"], row[f"{key}_se"] = mean_se([r[key] for r in mine])
            row["kl_at_min_bad"] = sum(not math.isfinite(r["kl_at_min"]) for r in mine)
            row["diverged"] = sum(bool(r["diverged"]) for r in mine)
            t = paired_t([r["min_val"] for r in mine], [r["base_min_val"] for r in mine])
            row["pairs"] = t["n"]
            row["d_min_val_mean"], row["d_min_val_se"], row["d_min_val_p"] = (
                t["mean"],
                t["se"],
                t["p"],
            )
            out.append(row)
    return out


def verdicts(
    summary: Sequence[dict[str, Any]], arms: Sequence[str], strengths: Sequence[float]
) -> list[dict[str, Any]]:
    """The two rules of the module docstring for every DDC arm whose base also ran."""
    top = max(strengths)
    at = {(r["optimizer"], r["strength"]): r for r in summary}
    out = []
    for arm in arms:
        base = BASE_OF.get(arm)
        if base is None or base not in arms or (arm, top) not in at or (base, top) not in at:
            continue
        me, bs = at[(arm, top)], at[(base, top)]
        ctrl = at.get((arm, CONTROL))
        k = "kl_at_min_mean"
        ctrl_kl = ctrl[k] if ctrl is not None else 0.0
        limit = KL_RATIO * ctrl_kl + KL_FLOOR
        if me["kl_at_min_bad"] > 0:  # a run from g·θ₀ stopped before the base's minimum
            v1 = "refuted"
        elif me[k] <= limit and bs[k] >= KL_RATIO * me[k] and bs[k] > limit:
            v1 = "reproduced"
        elif me[k] >= bs[k]:
            v1 = "refuted"
        else:
            v1 = "inconclusive"
        out.append(
            {
                "rule": "equivariance",
                "optimizer": arm,
                "base": base,
                "strength": top,
                "verdict": v1,
                "detail": (
                    f"KL at the base's validation minimum {me[k]:.3g} ± {me['kl_at_min_se']:.2g} "
                    f"(limit {limit:.3g}: 10 × control {ctrl_kl:.3g} + {KL_FLOOR:g}); {base} "
                    f"{bs[k]:.3g} ± {bs['kl_at_min_se']:.2g}; at the last step "
                    f"{me['kl_mean']:.3g} against {base} {bs['kl_mean']:.3g}"
                ),
            }
        )

        def hurt(r: dict[str, Any]) -> bool:
            return r["d_min_val_mean"] > 0 and r["d_min_val_p"] < ALPHA

        if me["pairs"] < MIN_SEEDS or bs["pairs"] < MIN_SEEDS:
            v2 = "inconclusive"
        elif hurt(bs) and not hurt(me):
            v2 = "reproduced"
        elif hurt(me) and me["d_min_val_mean"] >= bs["d_min_val_mean"]:
            v2 = "refuted"
        else:
            v2 = "inconclusive"
        out.append(
            {
                "rule": "what it buys",
                "optimizer": arm,
                "base": base,
                "strength": top,
                "verdict": v2,
                "detail": (
                    f"Δ min val {me['d_min_val_mean']:+.4f} ± {me['d_min_val_se']:.2g} "
                    f"(p {me['d_min_val_p']:.3g}); {base} {bs['d_min_val_mean']:+.4f} ± "
                    f"{bs['d_min_val_se']:.2g} (p {bs['d_min_val_p']:.3g})"
                ),
            }
        )
    return out


RULES = (
    f"rule 1 (equivariance, per DDC arm, largest strength, on the KL at the evaluation step of "
    f"the base run's minimum validation loss): reproduced if its mean KL <= {KL_RATIO:g} x its "
    f"mean KL at the control strength {CONTROL:g} + {KL_FLOOR:g} nats and its base's mean KL "
    f">= {KL_RATIO:g} x its own and above that limit; refuted if its mean KL >= its base's or a "
    f"run from g·θ₀ stopped (non-finite loss) before the base's minimum; else inconclusive",
    f"rule 2 (what it buys, per DDC arm, largest strength): an arm is hurt when its mean Δ min "
    f"val loss (start g·θ₀ − start θ₀) > 0 with paired t-test p < {ALPHA:g}; reproduced if the "
    f"base is hurt and the DDC arm is not; refuted if the DDC arm is hurt at least as much as "
    f"the base; else inconclusive, and inconclusive with fewer than {MIN_SEEDS} finite pairs",
)


def _resolve(
    fn: str,
    quick: bool,
    size: str,
    optimizers: Sequence[str],
    seeds: int | None,
    strengths: Sequence[float] | None,
    steps: int | None,
    weight_decay: float,
) -> Sizes:
    """The sizes of a run with its overrides, each checked (ValueError naming ``fn``)."""
    if size not in ("default", "full"):
        raise ValueError(f"{fn}: size must be 'default' or 'full', got {size!r}")
    sz = SIZES["quick" if quick else size]
    bad = [o for o in optimizers if o not in ARMS]
    if bad or not optimizers:
        raise ValueError(
            f"{fn}: optimizers must be a non-empty subset of {ARMS}, got {list(optimizers)}"
        )
    if seeds is not None:
        if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 2:
            raise ValueError(f"{fn}: seeds must be an integer >= 2 (a paired test), got {seeds!r}")
        sz = dataclasses.replace(sz, seeds=seeds)
    if strengths is not None:
        st = [float(s) for s in strengths]
        if not st or any(not (math.isfinite(s) and s > 0) for s in st):
            raise ValueError(
                f"{fn}: strengths must be positive finite numbers, got {list(strengths)}"
            )
        sz = dataclasses.replace(sz, strengths=tuple(sorted(set(st) | {CONTROL})))
    if steps is not None:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"{fn}: steps must be a positive integer, got {steps!r}")
        sz = dataclasses.replace(sz, lm=dataclasses.replace(sz.lm, steps=steps))
    if not (math.isfinite(weight_decay) and weight_decay >= 0):
        raise ValueError(f"{fn}: weight_decay must be a finite number >= 0, got {weight_decay!r}")
    return sz


def run(
    out: str | Path | None = DEFAULT_OUT,
    *,
    quick: bool = False,
    size: str = "default",
    seed: int = 0,
    optimizers: Sequence[str] = ARMS,
    seeds: int | None = None,
    strengths: Sequence[float] | None = None,
    steps: int | None = None,
    weight_decay: float = 0.1,
    threads: int | None = 1,
    plot: bool = True,
    progress: bool | None = None,
    echo: Callable[[str], None] | None = print,
) -> GaugeStartResult:
    """Run the gauge-imbalanced-start experiment; write the CSVs, the PNG and the config.

    Parameters
    ----------
    out : str or Path or None
        Output folder (created); None writes nothing.
    quick : bool
        Tiny sizes (seconds; for tests).
    size : {"default", "full"}
        ``"default"``: 128 training sequences of 32 tokens, a 2-block d_model = 32 LM, 400
        full-batch steps, lr ∈ {1e-3, 3e-3, 1e-2}, 5 seeds, strengths {1e-6, 1, 2} (about 18
        minutes on 2 cores with every arm). ``"full"``: 256 × 64 tokens, 4 blocks of d_model = 64,
        1500 steps, 3 learning rates, 8 seeds, strengths {1e-6, 0.5, 1, 2}.
    seed : int
        The first seed (seeds ``seed … seed + seeds − 1``; each its own corpus and θ₀).
    optimizers : sequence of str
        Arms, a subset of :data:`ARMS`.
    seeds, steps : int, optional
        Override the number of seeds and the training length.
    strengths : sequence of float, optional
        Override the strengths (each > 0; the control 1e-6 is added when missing).
    weight_decay : float
        Decoupled weight decay of every arm.
    threads : int, optional
        torch intra-op threads (default 1; None leaves the setting).
    plot, progress, echo
        As the other experiments.
    """
    fn = "deadspec.gauge_start.run"
    sz = _resolve(fn, quick, size, optimizers, seeds, strengths, steps, weight_decay)
    arms = [a for a in ARMS if a in optimizers]
    out_dir = _harness.check_out(out, fn)
    t0 = time.perf_counter()
    seed_list = [seed + k for k in range(sz.seeds)]
    if TUNE_SEED in seed_list:
        raise ValueError(f"{fn}: the measured seeds must not include the tuning seed {TUNE_SEED}")
    n_runs = len(arms) * (len(sz.lm.lrs) + sz.seeds * (1 + len(sz.strengths)))
    if echo is not None:
        echo("gauge-start: verdict rules, stated before the runs:")
        for r in RULES:
            echo(f"  {r}")
    rows: list[dict[str, Any]] = []
    kl_rows: list[dict[str, Any]] = []
    with _harness.threads(threads):
        bar = _harness.progress_bar(range(n_runs), "gauge-start", progress)
        with bar:
            data = {s: lm_batches(sz.lm.n_train, sz.lm.n_val, sz.lm.ctx, seed=s) for s in seed_list}
            chosen, tuning = _tune(sz, arms, weight_decay, bar)
            for s in seed_list:
                model0 = _model(sz.lm, s, data[s][4])
                elements = {}
                for st in sz.strengths:
                    el = draw_element(model0, st, s)
                    verify_element(model0, el, data[s][2])
                    elements[st] = el
                for arm in arms:
                    lr = chosen[arm]
                    bar.set_postfix_str(f"{arm} seed {s} base")
                    base = train_from(sz.lm, arm, lr, weight_decay, data[s], s, None, keep=True)
                    bar.update(1)
                    base["kls"] = {k: 0.0 for k in base["logps"]}
                    rows.append(_row(arm, lr, weight_decay, s, 0.0, base, base))
                    for st in sz.strengths:
                        bar.set_postfix_str(f"{arm} seed {s} s={st:g}")
                        el, ref = elements[st], base["logps"]
                        r = train_from(sz.lm, arm, lr, weight_decay, data[s], s, el, ref=ref)
                        bar.update(1)
                        rows.append(_row(arm, lr, weight_decay, s, st, r, base))
                        kl_rows += [  # (a step the run did not reach: infinite)
                            {"optimizer": arm, "seed": s, "strength": st, "step": k, "kl": kl}
                            for k, kl in ((k, r["kls"].get(k, math.inf)) for k in base["steps"])
                        ]
    strengths_all = (0.0, *sz.strengths)
    summary = summarize(rows, arms, strengths_all)
    verdict_rows = verdicts(summary, arms, sz.strengths)
    config = {
        "experiment": "gauge-start",
        "size": "quick" if quick else size,
        "lm": dataclasses.asdict(sz.lm),
        "seeds": seed_list,
        "strengths": list(sz.strengths),
        "control_strength": CONTROL,
        "optimizers": arms,
        "weight_decay": weight_decay,
        "chosen_lr": chosen,
        "rules": list(RULES),
        "threads": threads,
    }
    figures = (
        {"gauge_start.png": lambda p: plot_gauge_start(p, summary, kl_rows, arms, sz)}
        if plot
        else None
    )
    paths = _harness.write_outputs(
        out_dir,
        {
            "gauge_start.csv": (rows, RUN_COLUMNS),
            "gauge_start_summary.csv": (summary, SUMMARY_COLUMNS),
            "gauge_start_tuning.csv": (tuning, TUNING_COLUMNS),
            "gauge_start_kl.csv": (kl_rows, KL_COLUMNS),
        },
        figures,
        config,
    )
    seconds = time.perf_counter() - t0
    _harness.report(
        echo,
        [format_summary(summary), "", *format_verdicts(verdict_rows)],
        paths.values(),
        seconds,
    )
    return GaugeStartResult(rows, summary, tuning, verdict_rows, sz, dict(paths), seconds)


def _row(
    arm: str,
    lr: float,
    wd: float,
    seed: int,
    strength: float,
    r: dict[str, Any],
    base: dict[str, Any],
) -> dict[str, Any]:
    # the KL at the base's last step and at its validation minimum, matched by step number; a
    # run that did not reach the step (it stopped: its loss was not finite) counts as infinite
    last, at_min = base["steps"][-1], base["min_val_step"]
    return {
        "optimizer": arm,
        "lr": lr,
        "weight_decay": wd,
        "seed": seed,
        "strength": strength,
        "init_diff": r["init_diff"],
        "final_val": r["final_val"],
        "min_val": r["min_val"],
        "base_final_val": base["final_val"],
        "base_min_val": base["min_val"],
        "d_final_val": r["final_val"] - base["final_val"],
        "d_min_val": r["min_val"] - base["min_val"],
        "kl": r["kls"].get(last, math.inf),
        "kl_at_min": r["kls"].get(at_min, math.inf),
        "base_min_val_step": at_min,
        "drift": r["drift"],
        "diverged": r["diverged"] or base["diverged"],
        "seconds": r["seconds"],
    }


_Col = _harness.Col
_SUMMARY = (
    _Col("optimizer", "optimizer", "<14"),
    _Col("s", "strength", ">6g"),
    _Col("seeds", "seeds", ">5"),
    _Col("KL at base min", lambda r: f"{r['kl_at_min_mean']:.3g} ± {r['kl_at_min_se']:.2g}", ">20"),
    _Col("KL last step", lambda r: f"{r['kl_mean']:.3g} ± {r['kl_se']:.2g}", ">20"),
    _Col("Δ min val", lambda r: f"{r['d_min_val_mean']:+.4f} ± {r['d_min_val_se']:.2g}", ">20"),
    _Col("p", "d_min_val_p", "6.3f"),
    _Col(
        "Δ final val",
        lambda r: f"{r['d_final_val_mean']:+.4f} ± {r['d_final_val_se']:.2g}",
        ">20",
    ),
    _Col("drift", lambda r: f"{r['drift_mean']:.3f} ± {r['drift_se']:.2g}", ">16"),
)


def format_summary(summary: Sequence[dict[str, Any]]) -> str:
    """A plain-text table of the per-arm × strength summary."""
    return _harness.format_table(summary, _SUMMARY)


def format_verdicts(rows: Sequence[dict[str, Any]]) -> list[str]:
    """One line per DDC arm and rule."""
    return [
        f"verdict: {r['rule']}: {r['optimizer']} vs {r['base']} at s={r['strength']:g}: "
        f"{r['verdict'].upper()} ({r['detail']})"
        for r in rows
    ]


def plot_gauge_start(
    path: Path,
    summary: Sequence[dict[str, Any]],
    kl_rows: Sequence[dict[str, Any]],
    arms: Sequence[str],
    sz: Sizes,
) -> None:
    """KL at the base's validation minimum, Δ minimum validation loss and orbit drift against
    the strength, per arm; the KL against the step at the largest strength and the control."""
    with _harness.figure(path, figsize=(17.0, 3.8)) as fig:
        axes = fig.subplots(1, 4)
        top = max(sz.strengths)
        for arm in arms:
            c = _lm.COLORS.get(arm, "k")
            mine = [r for r in summary if r["optimizer"] == arm and r["strength"] > 0]
            if not mine:
                continue
            x = np.array([r["strength"] for r in mine])
            for ax, key in zip(axes[:3], ("kl_at_min", "d_min_val", "drift")):
                y = np.array([r[f"{key}_mean"] for r in mine])
                e = np.nan_to_num(np.array([r[f"{key}_se"] for r in mine]))
                if key == "kl_at_min":  # (log scale: clipped at KL_PLOT_FLOOR, error bars off)
                    ax.plot(x, np.maximum(y, KL_PLOT_FLOOR), color=c, marker="o", ms=4, label=arm)
                else:
                    ax.errorbar(x, y, yerr=e, color=c, marker="o", ms=4, capsize=3, label=arm)
            base = [r for r in summary if r["optimizer"] == arm and r["strength"] == 0]
            if base:
                axes[2].axhline(base[0]["drift_mean"], color=c, ls=":", lw=1)
            for st, ls in ((top, "-"), (CONTROL, "--")):
                pts = [r for r in kl_rows if r["optimizer"] == arm and r["strength"] == st]
                steps = sorted({r["step"] for r in pts})
                mean = [np.mean([r["kl"] for r in pts if r["step"] == k]) for k in steps]
                axes[3].plot(
                    steps,
                    np.maximum(mean, KL_PLOT_FLOOR),
                    color=c,
                    ls=ls,
                    lw=1.2,
                    label=f"{arm} s={st:g}",
                )
        titles = (
            f"KL at the base's val. minimum, nats/token (≥ {KL_PLOT_FLOOR:g})",
            "Δ min val loss (g·θ₀ − θ₀)",
            "orbit drift (RMS Δ log-norm ratio; dotted: from θ₀)",
            f"KL against the step (mean over seeds): s={top:g} solid, control dashed",
        )
        for ax, t in zip(axes, titles):
            ax.set_title(t, fontsize=8)
            ax.grid(alpha=0.3)
        for ax in axes[:3]:
            ax.set_xscale("log")
            ax.set_xlabel("gauge strength s (log c_j uniform in [−s, s])")
        axes[0].set_yscale("log")
        axes[3].set_yscale("log")
        axes[3].set_xlabel("step")
        axes[0].legend(fontsize=7)
        axes[3].legend(fontsize=6, ncol=2)
        lm = sz.lm
        fig.suptitle(
            f"gauge-imbalanced start: {lm.n_train}×{lm.ctx} tokens, {lm.n_layers} blocks × d_model "
            f"{lm.d_model}, {lm.steps} steps, {sz.seeds} seeds (mean ± s.e.)",
            fontsize=10,
        )


def _parser():
    p = _harness.parser(
        "deadspec repro gauge-start",
        "Gauge-imbalanced start: train every arm from θ₀ and from a rescaled g·θ₀ (the same "
        "function) and compare the two runs' predictions and losses.",
        DEFAULT_OUT,
        sizes=("default", "full"),
        threads=True,
    )
    p.add_argument("--optimizers", nargs="+", choices=ARMS, default=list(ARMS))
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (>= 2)")
    p.add_argument("--strengths", nargs="+", type=float, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--weight-decay", type=float, default=0.1)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns 0 (2 on a usage error)."""
    return _harness.cli_main("gauge-start", _parser(), run, argv)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
