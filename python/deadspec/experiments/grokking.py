"""Grokking experiment: fraction of seeds that grok modular addition, DDCMuon against Muon.

Claim (Dead-Direction Conditioners, arXiv 2606.29176): on a Muon base at depth 24, 10 of 11
seeds grok with DDCMuon and none with plain Muon.

Setup (ours; the paper's network is not public)
-----------------------------------------------
- **Task**: ``(a + b) mod p`` over all ``p²`` pairs
  (:func:`deadspec.models_transformer.modadd_data`), a seeded random split with a fraction
  ``train_frac`` for training, the rest for test. Full-batch training.
- **Network** (``model``): ``"transformer"`` (default): :class:`deadspec.models.ModAddTransformer`
  with ``depth`` pre-LN blocks (LayerNorm, ``n_heads`` heads, ReLU MLP of width 4·``width``,
  ``width`` = d_model), where the rotation gauge of the attention heads exists (DDCMuon's
  rotated heads) besides the LayerNorm and logit-shift gauges. ``"mlp"``: :class:`DeepModAddMLP`
  (an embedding, then ``depth − 1`` ReLU layers of width ``width``, then the head; only
  rescaling gauges). The default depth is 8, the deepest run inside 30 minutes on 2 cores (23
  minutes with 2 workers; depth 4 took 10; docs/ddc.md gives both runs); ``--size full`` is the
  paper's depth.
- **Optimizers**: ``ddc-muon`` (:class:`deadspec.optim.DDCMuon`, gauges discovered) and
  ``muon`` (``torch.optim.Muon`` on the same hidden matrices, ``adjust_lr_fn="original"`` as
  DDCMuon, + ``torch.optim.AdamW`` on embeddings, head, gains and biases). Momentum 0.95,
  decoupled weight decay ``weight_decay`` (1.0) on both paths, AdamW-path rate ``adamw_lr``
  (3e-3), same initialisation per seed.
- **Learning rates, tuned alike**: each arm's Muon-path rate (for an Adam-type arm, ``adamw``
  or ``ddc-adam``, its one rate) is chosen from the same grid
  ``lrs`` with the same budget: every rate is run on ``tune_seeds`` tuning seeds (1000, 1001,
  …; their own splits and initialisations); the rate whose tuning seeds grok most often wins
  (ties: the higher mean best test accuracy, then the smaller rate). Then ``seeds`` fresh seeds
  (0, 1, …) per arm at its rate decide the verdict.
- **Grokking criterion**: accuracies are evaluated every ``eval_every`` steps; a seed *groks*
  when the test accuracy reaches ``threshold`` (0.95) within the budget at an evaluation at or
  after the first evaluation where the training accuracy is 100 % (``fit_step ≤ grok_step``;
  ``delay = grok_step − fit_step`` is reported, 0 meaning that test accuracy followed without
  a plateau).
- **Rule** (:data:`RULE`, printed before the runs and written to config.json): the claim's
  regime needs plain Muon to grok in at most a quarter of the seeds. There the claim is
  reproduced when DDCMuon groks in more seeds with one-sided Fisher-exact p < 0.05, refuted when
  it groks in no more seeds than Muon, inconclusive otherwise; outside the regime the verdict is
  inconclusive (regime not reached).

Outputs (``--out DIR``, default ``./deadspec-out/grokking``): ``grokking.csv`` (one row per
optimizer × seed at the chosen rates), ``grokking_tuning.csv`` (one row per optimizer × rate ×
tuning seed), ``grokking_curves.csv`` (one row per evaluation run × evaluation),
``grokking_summary.csv`` (per optimizer, with the test and the verdict), ``config.json`` and
``grokking.png`` (train/test accuracy curves; fraction of seeds that grok).

Run: ``python -m deadspec.experiments.grokking [--quick] [--size full] [--depth D]`` or
``deadspec repro grokking``.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deadspec.experiments import _harness
from deadspec.experiments._optimizers import OPTIMIZERS as ALL_OPTIMIZERS
from deadspec.experiments._optimizers import make_optimizer
from deadspec.experiments._stats import fisher_exact, paired_t

__all__ = [
    "CSV_COLUMNS",
    "DEFAULT_OUT",
    "MODELS",
    "RULE",
    "DeepModAddMLP",
    "GrokkingResult",
    "main",
    "run",
    "verdict",
]

DEFAULT_OUT = Path("deadspec-out") / "grokking"
OPTIMIZERS = ("ddc-muon", "muon")
MODELS = ("transformer", "mlp")
#: The paper's seeds that grok at depth 24: (grokked, seeds).
PAPER = {"ddc-muon": (10, 11), "muon": (0, 11)}
#: Muon groks in at most this fraction of the seeds in the claim's regime.
REGIME_MAX = 0.25
ALPHA = 0.05
RULE = (
    "rule: each arm's Muon-path learning rate is the grid value whose tuning seeds grok most "
    "often (ties: the higher mean best test accuracy, then the smaller rate), then fresh seeds "
    f"per arm at that rate. The claim's regime needs plain Muon to grok in at most "
    f"{REGIME_MAX:.0%} of the seeds; there the claim (DDCMuon groks where Muon does not) is "
    f"reproduced when DDCMuon groks in more seeds with one-sided Fisher-exact p < {ALPHA}, "
    "refuted when DDCMuon groks in no more seeds than Muon, inconclusive otherwise; outside the "
    "regime it is inconclusive (regime not reached)"
)

CSV_COLUMNS = (
    "optimizer",
    "seed",
    "lr",
    "model",
    "depth",
    "p",
    "train_frac",
    "steps",
    "fit_step",
    "grok_step",
    "delay",
    "grokked",
    "final_train_acc",
    "final_test_acc",
    "best_test_acc",
    "final_train_loss",
    "diverged",
    "seconds",
)
CURVE_COLUMNS = ("optimizer", "seed", "step", "train_loss", "train_acc", "test_acc")
SUMMARY_COLUMNS = (
    "optimizer",
    "lr",
    "grokked",
    "seeds",
    "fraction",
    "fitted",
    "median_delay",
    "paper",
    "p_greater",
    "p_two_sided",
    "best_test_diff",
    "best_test_diff_se",
    "best_test_p",
    "verdict",
)


@dataclasses.dataclass(frozen=True)
class GrokSizes:
    """Sizes of the grokking runs (``width`` is d_model for the transformer, ``depth`` its
    blocks; for the MLP, its hidden width and its Linear layers, head included)."""

    p: int
    train_frac: float
    model: str
    width: int
    depth: int
    steps: int
    eval_every: int
    seeds: int
    tune_seeds: int
    lrs: tuple[float, ...]
    n_heads: int = 4
    d_embed: int = 32


SIZES = {
    "quick": GrokSizes(p=7, train_frac=0.6, model="transformer", width=16, depth=2, steps=40,
                       eval_every=10, seeds=2, tune_seeds=1, lrs=(0.005, 0.02), n_heads=2),
    "default": GrokSizes(p=31, train_frac=0.25, model="transformer", width=32, depth=8,
                         steps=2000, eval_every=100, seeds=8, tune_seeds=2,
                         lrs=(0.003, 0.01, 0.03)),
    "full": GrokSizes(p=97, train_frac=0.5, model="transformer", width=128, depth=24,
                      steps=20000, eval_every=100, seeds=11, tune_seeds=3,
                      lrs=(0.001, 0.003, 0.01, 0.03)),
}  # fmt: skip


class DeepModAddMLP(nn.Module):
    """A deep plain ReLU MLP on embedded ``(a, b)`` pairs for ``(a + b) mod p``.

    Parameters
    ----------
    p : int
        Modulus (classes).
    d_embed, width : int
        Embedding and hidden widths.
    depth : int
        Number of ``nn.Linear`` layers, head included (≥ 2).

    Notes
    -----
    Input: tokens ``(N, 3)`` as :func:`deadspec.models_transformer.modadd_data` returns
    (``a b =``; the ``=`` column is ignored) or ``(N, 2)``. Output: logits ``(N, p)``.
    """

    def __init__(self, p: int, d_embed: int = 32, width: int = 64, depth: int = 8) -> None:
        super().__init__()
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 2:
            raise ValueError(f"deadspec.DeepModAddMLP: depth must be an integer ≥ 2, got {depth!r}")
        self.p = int(p)
        self.embed = nn.Embedding(self.p, d_embed)
        layers: list[nn.Module] = [nn.Linear(2 * d_embed, width), nn.ReLU()]
        for _ in range(depth - 2):
            layers += [nn.Linear(width, width), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, self.p)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        e = self.embed(tokens[:, :2]).flatten(1)
        return self.head(self.body(e))


@dataclasses.dataclass
class GrokkingResult:
    """What :func:`run` returns.

    Attributes
    ----------
    rows : list of dict
        One per optimizer × seed at the chosen rates (keys :data:`CSV_COLUMNS`).
    tuning : list of dict
        One per optimizer × rate × tuning seed (keys :data:`CSV_COLUMNS`).
    summary : list of dict
        Per optimizer (keys :data:`SUMMARY_COLUMNS`): the chosen ``lr``, ``grokked``, ``seeds``,
        ``fraction``, ``fitted``, ``median_delay``, ``paper``; on the ``ddc-muon`` row the
        Fisher-exact p-values against Muon, the paired difference of the best test accuracy
        (DDCMuon − Muon, by seed; not part of the rule) and the verdict.
    verdict : str
        By :data:`RULE` (``"n/a"`` unless both ``ddc-muon`` and ``muon`` ran).
    curves : list of dict
        One per evaluation run × evaluation (keys :data:`CURVE_COLUMNS`).
    sizes : GrokSizes
    csv_path, tuning_path, curves_path, summary_path, png_path : Path or None
    seconds : float
    """

    rows: list[dict[str, Any]]
    tuning: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    verdict: str
    curves: list[dict[str, Any]]
    sizes: GrokSizes
    csv_path: Path | None
    tuning_path: Path | None
    curves_path: Path | None
    summary_path: Path | None
    png_path: Path | None
    seconds: float


def _split(p: int, train_frac: float, seed: int):
    from deadspec.models_transformer import modadd_data

    x, y = modadd_data(p)
    perm = torch.randperm(p * p, generator=torch.Generator().manual_seed(int(seed)))
    n = max(1, min(p * p - 1, round(train_frac * p * p)))
    return x[perm[:n]], y[perm[:n]], x[perm[n:]], y[perm[n:]]


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(dim=1) == y).float().mean())


def build_model(sizes: GrokSizes) -> tuple[nn.Module, str]:
    """The network of ``sizes.model`` and the name of its output head."""
    if sizes.model == "mlp":
        return DeepModAddMLP(sizes.p, sizes.d_embed, sizes.width, sizes.depth), "head"
    from deadspec.models import ModAddTransformer

    model = ModAddTransformer(
        p=sizes.p,
        d_model=sizes.width,
        n_heads=sizes.n_heads,
        layernorm=True,
        n_layers=sizes.depth,
    )
    return model, "unembed"


def train_one(
    sizes: GrokSizes,
    optimizer: str,
    seed: int,
    *,
    lr: float,
    adamw_lr: float,
    weight_decay: float,
    threshold: float = 0.95,
) -> dict[str, Any]:
    """One run: returns the CSV row (minus ``optimizer``/``seed``) and the curves."""
    x_tr, y_tr, x_te, y_te = _split(sizes.p, sizes.train_frac, 10_000 + seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model, head = build_model(sizes)
    adam_only = optimizer not in ("muon", "ddc-muon")  # the grid rate is then the Adam rate
    opt = make_optimizer(
        optimizer,
        model,
        lr=lr if adam_only else adamw_lr,
        muon_lr=lr,
        weight_decay=weight_decay,
        head=head,
        muon_adjust="original",
        betas=(0.9, 0.98),
    )
    curve: list[tuple[int, float, float, float]] = []
    fit_step = grok_step = None
    diverged = False
    t0 = time.perf_counter()
    for step in range(sizes.steps + 1):
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x_tr), y_tr)
        lval = float(loss.detach())
        if not math.isfinite(lval):
            diverged = True
            curve.append((step, lval, float("nan"), float("nan")))
            break
        if step % sizes.eval_every == 0 or step == sizes.steps:
            tr, te = _accuracy(model, x_tr, y_tr), _accuracy(model, x_te, y_te)
            curve.append((step, lval, tr, te))
            if fit_step is None and tr >= 1.0:
                fit_step = step
            if grok_step is None and fit_step is not None and te >= threshold:
                grok_step = step
        if step == sizes.steps:
            break
        loss.backward()
        opt.step()
    seconds = time.perf_counter() - t0
    te_all = [c[3] for c in curve if math.isfinite(c[3])]
    last = curve[-1]
    return {
        "lr": lr,
        "model": sizes.model,
        "depth": sizes.depth,
        "p": sizes.p,
        "train_frac": sizes.train_frac,
        "steps": sizes.steps,
        "fit_step": fit_step,
        "grok_step": grok_step,
        "delay": None if grok_step is None else grok_step - fit_step,
        "grokked": grok_step is not None,
        "final_train_acc": last[2],
        "final_test_acc": last[3],
        "best_test_acc": max(te_all) if te_all else float("nan"),
        "final_train_loss": last[1],
        "diverged": diverged,
        "seconds": round(seconds, 3),
        "_curve": curve,
    }


def grok_sizes(quick: bool, size: str, **overrides: Any) -> GrokSizes:
    """The sizes for ``--quick`` / ``--size``, with non-None ``overrides`` applied (validated)."""
    fn = "grokking.run"
    if size not in ("default", "full"):
        raise ValueError(f"deadspec.{fn}: size must be 'default' or 'full', got {size!r}")
    changes = {k: v for k, v in overrides.items() if v is not None}
    if "lrs" in changes:
        changes["lrs"] = tuple(float(v) for v in changes["lrs"])
    sizes = dataclasses.replace(SIZES["quick" if quick else size], **changes)
    for k in ("seeds", "tune_seeds", "p", "steps", "width", "n_heads", "eval_every"):
        v = getattr(sizes, k)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"deadspec.{fn}: {k} must be a positive integer, got {v!r}")
    if sizes.p < 2:
        raise ValueError(f"deadspec.{fn}: p must be at least 2, got {sizes.p}")
    min_depth = 2 if sizes.model == "mlp" else 1
    if isinstance(sizes.depth, bool) or not isinstance(sizes.depth, int) or sizes.depth < min_depth:
        raise ValueError(
            f"deadspec.{fn}: depth must be an integer ≥ {min_depth}, got {sizes.depth!r}"
        )
    if not 0.0 < sizes.train_frac < 1.0:
        raise ValueError(f"deadspec.{fn}: train_frac must be in (0, 1), got {sizes.train_frac}")
    if sizes.model not in MODELS:
        raise ValueError(f"deadspec.{fn}: model must be one of {MODELS}, got {sizes.model!r}")
    if sizes.model == "transformer" and sizes.width % sizes.n_heads:
        raise ValueError(
            f"deadspec.{fn}: width (d_model) must be a multiple of n_heads={sizes.n_heads}, got "
            f"{sizes.width}"
        )
    if not sizes.lrs or not all(math.isfinite(v) and v > 0 for v in sizes.lrs):
        raise ValueError(f"deadspec.{fn}: lrs must be positive learning rates, got {sizes.lrs}")
    return sizes


def _tune_score(rows: Sequence[dict[str, Any]]) -> tuple[int, float]:
    """(seeds that grok, mean best test accuracy) of one rate's tuning runs."""
    best = [float(r["best_test_acc"]) for r in rows if math.isfinite(r["best_test_acc"])]
    return sum(bool(r["grokked"]) for r in rows), (float(np.mean(best)) if best else -1.0)


def choose_lr(tuning: Sequence[dict[str, Any]], optimizer: str, lrs: Sequence[float]) -> float:
    """The rate of ``lrs`` whose tuning runs of ``optimizer`` score best (:data:`RULE`)."""
    scored = [
        (_tune_score([r for r in tuning if r["optimizer"] == optimizer and r["lr"] == lr]), -lr)
        for lr in lrs
    ]
    return -float(max(scored)[1])


def run(
    out: str | Path | None = DEFAULT_OUT,
    *,
    quick: bool = False,
    size: str = "default",
    seeds: int | None = None,
    tune_seeds: int | None = None,
    model: str | None = None,
    depth: int | None = None,
    p: int | None = None,
    steps: int | None = None,
    width: int | None = None,
    train_frac: float | None = None,
    lrs: Sequence[float] | None = None,
    optimizers: Sequence[str] = OPTIMIZERS,
    adamw_lr: float = 3e-3,
    weight_decay: float = 1.0,
    threshold: float = 0.95,
    threads: int | None = 1,
    workers: int | None = None,
    plot: bool = True,
    progress: bool | None = None,
    echo: Callable[[str], None] | None = print,
) -> GrokkingResult:
    """Run the grokking experiment; write the CSVs, config.json and the plot into ``out``.

    Parameters
    ----------
    out : str or Path or None
        Output folder (created); None writes nothing.
    quick : bool
        Tiny sizes (p = 7, 2 blocks, 40 steps, 2 seeds; for tests).
    size : {"default", "full"}
        See :data:`SIZES` and the module docstring.
    seeds, tune_seeds, model, depth, p, steps, width, train_frac, lrs : optional
        Override the sizes (evaluation seeds are 0 .. seeds−1, tuning seeds 1000 ..; ``lrs`` is
        the Muon-path learning-rate grid every arm is tuned on; one value skips the tuning).
    optimizers : sequence of str
        Subset of ``("ddc-muon", "muon")`` (``"ddc-adam"`` and ``"adamw"`` also accepted).
    adamw_lr : float
        AdamW-path learning rate (embeddings, head, gains, biases; default 3e-3).
    weight_decay : float
        Decoupled weight decay on both paths (default 1.0, the grokking regime).
    threshold : float
        Test accuracy that counts as grokked (default 0.95).
    threads : int, optional
        torch intra-op threads (default 1) of the runs made in this process.
    workers : int, optional
        Worker processes of one torch thread each (default: the CPUs this process may use; 1
        runs everything in this process). The runs are seeded and single-threaded either way,
        so the results do not depend on it.
    plot, progress, echo
        As the other experiments.

    Returns
    -------
    GrokkingResult
    """
    sizes = grok_sizes(
        quick, size, seeds=seeds, tune_seeds=tune_seeds, model=model, depth=depth, p=p,
        steps=steps, width=width, train_frac=train_frac, lrs=lrs,
    )  # fmt: skip
    bad = [o for o in optimizers if o not in ALL_OPTIMIZERS]
    if bad or not optimizers:
        raise ValueError(
            f"deadspec.grokking.run: optimizers must be a non-empty subset of {ALL_OPTIMIZERS}, "
            f"got {list(optimizers)}"
        )
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"deadspec.grokking.run: threshold must be in (0, 1], got {threshold!r}")
    _harness.check_out(out, "grokking.run")  # before any work: a bad folder fails now
    if workers is None:
        workers = _harness.default_workers()
    if echo is not None:
        echo(f"grokking: {RULE}; stated before the runs")
    t0 = time.perf_counter()
    train = dict(adamw_lr=adamw_lr, weight_decay=weight_decay, threshold=threshold)
    with _harness.threads(threads):
        tuning, chosen = _tune(sizes, optimizers, train, workers, progress)
        rows, curves = _evaluate(sizes, optimizers, chosen, train, workers, progress)
    summary = summarize(rows, optimizers, chosen)
    word = summary_verdict(summary)
    config = {
        "sizes": dataclasses.asdict(sizes),
        "optimizers": list(optimizers),
        "chosen_lr": chosen,
        "tuning_seeds": [1000 + k for k in range(sizes.tune_seeds)],
        "seeds": list(range(sizes.seeds)),
        "rule": RULE,
        **train,
    }
    paths = _harness.write_outputs(
        out,
        {
            "grokking.csv": (rows, CSV_COLUMNS),
            "grokking_tuning.csv": (tuning, CSV_COLUMNS),
            "grokking_curves.csv": (curves, CURVE_COLUMNS),
            "grokking_summary.csv": (summary, SUMMARY_COLUMNS),
        },
        {"grokking.png": lambda path: plot_grokking(curves, summary, path, sizes)}
        if plot
        else None,
        config=config,
    )
    seconds = time.perf_counter() - t0
    texts = [format_table(tuning, "tuning"), format_table(rows, "evaluation"), ""]
    texts += [format_summary(summary, sizes), f"verdict: {word}"]
    ddc = next((s for s in summary if "best_test_diff" in s), None)
    if ddc is not None:
        texts.append(
            f"best test accuracy, DDCMuon − Muon paired by seed (not part of the rule): "
            f"{_harness.fmt(ddc['best_test_diff'], '+.3f')} ± "
            f"{_harness.fmt(ddc['best_test_diff_se'], '.3f')} (p = "
            f"{_harness.fmt(ddc['best_test_p'], '.2g')})"
        )
    _harness.report(echo, texts, paths.values(), seconds)
    return GrokkingResult(
        rows=rows,
        tuning=tuning,
        summary=summary,
        verdict=word,
        curves=curves,
        sizes=sizes,
        csv_path=paths.get("grokking.csv"),
        tuning_path=paths.get("grokking_tuning.csv"),
        curves_path=paths.get("grokking_curves.csv"),
        summary_path=paths.get("grokking_summary.csv"),
        png_path=paths.get("grokking.png"),
        seconds=seconds,
    )


def _job(
    sizes: GrokSizes, optimizer: str, seed: int, lr: float, train: dict[str, Any]
) -> dict[str, Any]:
    """One run as a job of :func:`deadspec.experiments._harness.map_jobs` (a worker process)."""
    return {"optimizer": optimizer, "seed": seed, **train_one(sizes, optimizer, seed, lr=lr,
                                                              **train)}  # fmt: skip


def _tune(sizes, optimizers, train: dict[str, Any], workers: int, progress):
    """Every arm × rate × tuning seed; (tuning rows, optimizer -> chosen rate)."""
    if len(sizes.lrs) == 1:
        return [], {o: float(sizes.lrs[0]) for o in optimizers}
    jobs = [(sizes, o, 1000 + k, lr, train) for k in range(sizes.tune_seeds) for o in optimizers
            for lr in sizes.lrs]  # fmt: skip
    tuning = _harness.map_jobs(_job, jobs, workers, progress, "grokking tuning")
    for r in tuning:
        r.pop("_curve")
    return tuning, {o: choose_lr(tuning, o, sizes.lrs) for o in optimizers}


def _evaluate(sizes, optimizers, chosen: dict[str, float], train, workers: int, progress):
    """Every arm × evaluation seed at its chosen rate; (rows, curves)."""
    jobs = [(sizes, o, s, chosen[o], train) for s in range(sizes.seeds) for o in optimizers]
    rows = _harness.map_jobs(_job, jobs, workers, progress, "grokking")
    curves = [
        {"optimizer": r["optimizer"], "seed": r["seed"], "step": step, "train_loss": loss,
         "train_acc": tr, "test_acc": te}
        for r in rows
        for step, loss, tr, te in r.pop("_curve")
    ]  # fmt: skip
    return rows, curves


def summarize(
    rows: Sequence[dict[str, Any]],
    optimizers: Sequence[str],
    chosen: dict[str, float] | None = None,
) -> list[dict[str, Any]]:
    """Per optimizer: its rate, seeds that grok, that fit, median delay; on the ``ddc-muon`` row
    the Fisher-exact p-values against ``muon`` and the verdict (:func:`verdict`)."""
    out = []
    for o, mine in _harness.groups(rows, "optimizer", optimizers):
        g = sum(bool(r["grokked"]) for r in mine)
        delays = [float(r["delay"]) for r in mine if r["delay"] is not None]
        out.append(
            {
                "optimizer": o,
                "lr": None if chosen is None else chosen.get(o),
                "grokked": g,
                "seeds": len(mine),
                "fraction": g / len(mine),
                "fitted": sum(r["fit_step"] is not None for r in mine),
                "median_delay": float(np.median(delays)) if delays else float("nan"),
                "paper": PAPER.get(o),
            }
        )
    by = {s["optimizer"]: s for s in out}
    if "ddc-muon" in by and "muon" in by:
        d, m = by["ddc-muon"], by["muon"]
        test = fisher_exact(d["grokked"], d["seeds"], m["grokked"], m["seeds"])
        d.update(test)
        best = {(r["optimizer"], r["seed"]): float(r["best_test_acc"]) for r in rows}
        seeds = sorted(s for o, s in best if o == "ddc-muon" and ("muon", s) in best)
        acc = paired_t([best[("ddc-muon", s)] for s in seeds], [best[("muon", s)] for s in seeds])
        d["best_test_diff"], d["best_test_diff_se"], d["best_test_p"] = (
            acc["mean"], acc["se"], acc["p"])  # fmt: skip
        d["verdict"] = verdict(d["grokked"], d["seeds"], m["grokked"], m["seeds"])
    return out


def verdict(ddc: int, n_ddc: int, muon: int, n_muon: int) -> str:
    """The verdict of :data:`RULE` from the seeds that grok with DDCMuon and with Muon."""
    if muon > REGIME_MAX * n_muon:
        return f"inconclusive (regime not reached: Muon groks in {muon}/{n_muon} seeds)"
    if ddc / n_ddc <= muon / n_muon:
        return f"refuted (DDCMuon {ddc}/{n_ddc} against Muon {muon}/{n_muon})"
    p = fisher_exact(ddc, n_ddc, muon, n_muon)["p_greater"]
    if p < ALPHA:
        return f"reproduced (DDCMuon {ddc}/{n_ddc} against Muon {muon}/{n_muon}, p = {p:.2g})"
    return f"inconclusive (DDCMuon {ddc}/{n_ddc} against Muon {muon}/{n_muon}, p = {p:.2g})"


def summary_verdict(summary: Sequence[dict[str, Any]]) -> str:
    """The verdict on the ``ddc-muon`` row of :func:`summarize` (``"n/a"`` without both arms)."""
    return next((s["verdict"] for s in summary if "verdict" in s), "n/a")


_Col = _harness.Col
_TABLE = (
    _Col("optimizer", "optimizer", "<9"),
    _Col("seed", "seed", ">4"),
    _Col("lr", "lr", "7.4f"),
    _Col("fit@", "fit_step", "6.0f"),
    _Col("grok@", "grok_step", "6.0f"),
    _Col("train acc", "final_train_acc", "9.3f"),
    _Col("test acc", "final_test_acc", "8.3f"),
    _Col("best test", "best_test_acc", "9.3f"),
    _Col("loss", "final_train_loss", "8.4f"),
    _Col("s", "seconds", "6.1f"),
)
_SUMMARY = (
    _Col("optimizer", "optimizer", "<9"),
    _Col("lr", "lr", "7.4f"),
    _Col("grokked", lambda s: f"{s['grokked']}/{s['seeds']}", ">8"),
    _Col("fitted", "fitted", ">6"),
    _Col("median delay", "median_delay", "12.0f"),
    _Col("p (>, Fisher)", lambda s: _harness.fmt(s.get("p_greater"), ".3g"), ">13"),
    _Col(
        "paper (depth 24)",
        lambda s: "-" if s["paper"] is None else "/".join(map(str, s["paper"])),
        ">16",
    ),
)


def format_table(rows: Sequence[dict[str, Any]], title: str = "") -> str:
    """A plain-text table of the per-run rows."""
    table = _harness.format_table(
        rows, _TABLE, suffix=lambda r: "  DIVERGED" if r["diverged"] else ""
    )
    return f"{title}:\n{table}" if title else table


def format_summary(summary: Sequence[dict[str, Any]], sizes: GrokSizes) -> str:
    """A plain-text table of the per-optimizer fractions."""
    table = _harness.format_table(summary, _SUMMARY)
    return (
        f"[{sizes.model}, depth {sizes.depth}, width {sizes.width}, p = {sizes.p}, train "
        f"{sizes.train_frac:.0%}, {sizes.steps} steps]\n{table}"
    )


def plot_grokking(curves, summary, path: Path, sizes: GrokSizes) -> None:
    """Train (dashed) / test (solid) accuracy per optimizer and seed; fraction that grok."""
    import matplotlib

    opts = [s["optimizer"] for s in summary]
    ncols = len(opts) + 1
    cmap = matplotlib.colormaps["viridis"]
    with _harness.figure(path, figsize=(3.6 * ncols, 3.2)) as fig:
        axes = fig.subplots(1, ncols, squeeze=False)
        for j, s_ in enumerate(summary):
            o = s_["optimizer"]
            ax = axes[0, j]
            for s in range(sizes.seeds):
                pts = [c for c in curves if c["optimizer"] == o and c["seed"] == s]
                if not pts:
                    continue
                col = cmap(s / max(1, sizes.seeds - 1))
                steps = [c["step"] for c in pts]
                ax.plot(steps, [c["test_acc"] for c in pts], color=col, lw=1.2)
                ax.plot(steps, [c["train_acc"] for c in pts], color=col, lw=0.8, ls="--")
            ax.axhline(0.95, color="k", lw=0.8, ls=":")
            ax.set_ylim(-0.02, 1.02)
            ax.set_title(f"{o} (lr {_harness.fmt(s_['lr'], 'g')}): test —, train --", fontsize=9)
            ax.set_xlabel("step")
            ax.set_ylabel("accuracy")
            ax.grid(alpha=0.3)
        ax = axes[0, -1]
        ax.bar(
            range(len(opts)),
            [s["fraction"] for s in summary],
            color=["C0", "C2", "C1", "C3"][: len(opts)],
        )
        for k, s in enumerate(summary):
            if s["paper"] is not None:
                ax.scatter([k], [s["paper"][0] / s["paper"][1]], marker="*", color="k", s=60)
        ax.set_xticks(range(len(opts)))
        ax.set_xticklabels(opts, fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("fraction of seeds that grok")
        word = summary_verdict(summary).split(" (")[0]
        ax.set_title(f"grokked (★ paper, depth 24)\nverdict: {word}", fontsize=9)
        fig.suptitle(
            f"grokking: (a+b) mod {sizes.p}, train {sizes.train_frac:.0%}, {sizes.model} depth "
            f"{sizes.depth} × width {sizes.width}, {sizes.steps} steps, {sizes.seeds} seeds",
            fontsize=10,
        )


def _parser():
    p = _harness.parser(
        "python -m deadspec.experiments.grokking",
        "Grokking: fraction of seeds that grok modular addition, DDCMuon vs Muon, each arm's "
        "learning rate tuned on the same grid.",
        DEFAULT_OUT,
        sizes=("default", "full"),
        seed=False,
        threads=True,
    )
    p.add_argument("--seeds", type=int, default=None)
    p.add_argument("--tune-seeds", type=int, default=None)
    p.add_argument("--model", choices=MODELS, default=None)
    p.add_argument("--depth", type=int, default=None)
    p.add_argument("--p", type=int, default=None, help="modulus")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--train-frac", type=float, default=None)
    p.add_argument("--lrs", type=float, nargs="+", default=None, help="Muon-path rate grid")
    p.add_argument("--optimizers", nargs="+", choices=ALL_OPTIMIZERS, default=list(OPTIMIZERS))
    p.add_argument("--adamw-lr", type=float, default=3e-3)
    p.add_argument("--weight-decay", type=float, default=1.0)
    p.add_argument("--threshold", type=float, default=0.95)
    p.add_argument("--workers", type=int, default=None, help="worker processes (default: CPUs)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns 0 (2 on a usage error)."""
    return _harness.cli_main("grokking", _parser(), run, argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
