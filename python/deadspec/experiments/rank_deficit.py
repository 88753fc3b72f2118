"""Rank-deficit experiment: the log det⁺ approach slope counts dead directions.

Claim (Dead-Direction Signatures, arXiv 2606.21158; theory.md §1 and §3): with r dead
directions approached at a common rate t, the slope of log det⁺ of a layer's Gram against
log t is r times the single-direction slope (slope ratio against r = 1 equal to r; the paper
reports 2.0, 3.1, 4.0 for r = 2, 3, 4), while the smallest active eigenvalue is *rank-blind*
(its slope does not depend on r).

Setup
-----
Two-layer networks ``x -> Linear(d_in, H) -> [ReLU] -> Linear(H, d_out)`` (module names
``"0"`` and ``"1"``/``"2"``, see :func:`deadspec.models.mlp`), linear and ReLU, float64,
r ∈ {1, 2, 3, 4}. Every reading is :func:`deadspec.approach_slope` at ``layer="0"``: the path
θ(t) multiplies the dead components of layer 0 (its weight rows and bias entries) *and* the
matching input columns of the next Linear by t, over the default grid t ∈ [1e-3, 1e-1]
(7 points). Sides:

- ``activation``: the Gram of layer 0's output (h×h). Prediction: slope 2 per dead unit,
  λ_min slope 2.
- ``fisher``: the N×N per-sample-gradient Fisher-Gram of layer 0's weight and bias, with the
  observed targets (Gaussian NLL, σ = 1). A dead unit's output-gradient δ_j scales with its
  outgoing weights (∝ t), so every one of its ``d_in + 1`` weight/bias coordinates is a dead
  Fisher direction: prediction slope ``2(d_in + 1)`` per dead unit, ratio r, λ_min slope 2.

(a) **constructed**: a random network (seeded, default PyTorch init) whose hidden units
``0 .. r-1`` are the dead ones: ``approach_slope(..., units=[0..r-1])`` scales them by t, so
θ(0) has exactly r dead units. Targets are standard normal (so the residuals span the output
space). *Acceptance*: every slope ratio within ``tol`` (10%) of r and every λ_min slope ratio
within ``tol`` of 1, on both sides and both networks.

(b) **trained**: an over-parameterised student of hidden width H fitted to a teacher of rank
H − r (linear: a product U·V of rank H − r; ReLU: a ReLU network with H − r hidden units),
plus Gaussian label noise, so that r spare directions die:

- *linear*: full-batch ``torch.optim.Adam`` with (L2) weight decay and a cosine schedule. The
  dead directions are the dead cluster of layer 0's activation spectrum (below a gap of
  ``gap_ratio``, default 1e2, with anything under the active set); the hidden layer is rotated
  so that they are units 0 … k−1 (a rotation of the hidden layer is an exact symmetry of a
  linear network).
- *ReLU*: a group penalty λ Σ_j ‖θ_j‖ on each unit's weights in, bias and weights out
  (``group_lasso``, default 2e-2): Adam on the penalised loss, then as many proximal-gradient
  steps, which leave the removed units at exactly 0. Deadness is checked unit by unit: a unit is
  dead when its group norm is 0 or it never fires on the data.

The dead units' residue (at most ~1e-3 of the largest alive unit for linear, 0 for ReLU) is then
replaced by a random direction at the alive units' median norms (``_students.revive``), and
the path scales those units by t over the default grid: θ(0) is the trained checkpoint, and the dead
directions are approached at one common rate, as the claim states. (Scaling the trained residues
themselves approaches directions that sit decades apart, and a Fisher eigenvalue then reaches the
round-off floor: seed 3, r = 4 of the linear student did, before this path.) ReLU networks are
read after the nonlinearity on the activation side (``read_at="1"``). Reported over the seeds
(``seed … seed + seeds − 1``, default 5): the dead units found, the slope ratios (mean ± standard
error) next to the paper's 2.0, 3.1, 4.0.

**Rule** (stated before the run): a seed passes when, for every r, the dead units found equal r,
the slope ratio is within ``tol`` (10%) of r and the λ_min slope ratio within ``tol`` of 1, on
every side read; the trained table is *reproduced* for a network when every seed passes.

Outputs (``--out DIR``, default ``./deadspec-out/rank-deficit``): ``rank_deficit.csv`` (one row
per seed × network × setting × side × r), ``rank_deficit_summary.csv`` (over the seeds),
``config.json`` (the configuration, seeds, rule and verdicts) and ``rank_deficit.png`` (log det⁺
vs log t per r for the first seed, shifted to 0 at the largest t, and slope vs r over the seeds
against the line slope = 2r).

Run: ``python -m deadspec.experiments.rank_deficit [--quick]`` or
``deadspec repro rank-deficit [--quick]``.
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

from deadspec.experiments import _harness, _students

__all__ = ["DEFAULT_OUT", "PAPER_RATIOS", "RankDeficitResult", "main", "run"]

#: Slope ratios against r = 1 reported by the paper (r -> ratio).
PAPER_RATIOS: dict[int, float] = {1: 1.0, 2: 2.0, 3: 3.1, 4: 4.0}
DEFAULT_OUT = Path("deadspec-out") / "rank-deficit"
NETWORKS = ("linear", "relu")
SETTINGS = ("constructed", "trained")
SIDES = ("activation", "fisher")

CSV_COLUMNS = (
    "network",
    "setting",
    "side",
    "r",
    "detected",
    "slope",
    "ratio",
    "expected_ratio",
    "paper_ratio",
    "slope_per_unit",
    "lambda_min_slope",
    "lambda_min_ratio",
    "r2",
    "lambda_min_r2",
    "stderr",
    "active",
    "dead_residue",
    "pass",
    "train_loss",
    "alive_margin",
    "read_at",
    "seed",
    "error",
)

SUMMARY_COLUMNS = (
    "network",
    "setting",
    "side",
    "r",
    "seeds",
    "detected_r",
    "passed",
    "ratio_mean",
    "ratio_se",
    "lambda_min_ratio_mean",
    "lambda_min_ratio_se",
    "paper_ratio",
)


@dataclasses.dataclass
class RankDeficitResult:
    """What :func:`run` returns.

    Attributes
    ----------
    rows : list of dict
        One per network × setting × side × r (the CSV rows, keys :data:`CSV_COLUMNS`).
    curves : dict
        ``(network, setting, side, r) -> (t, logdet_plus)`` arrays.
    passed : bool
        Acceptance of the constructed setting (all its rows pass, every seed). True if it was
        not run.
    passed_trained : bool or None
        Whether the trained setting is reproduced for every network run (None if not run).
    csv_path, png_path, summary_path : Path or None
    seconds : float
        Wall time.
    summary : list of dict
        Per (network, setting, side, r) over the seeds (:func:`summarize`).
    verdicts : dict
        ``"<setting> <network>" -> verdict`` by the rule stated before the runs.
    """

    rows: list[dict[str, Any]]
    curves: dict[tuple[str, str, str, int], tuple[np.ndarray, np.ndarray]]
    passed: bool
    passed_trained: bool | None
    csv_path: Path | None
    png_path: Path | None
    seconds: float
    summary: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    verdicts: dict[str, str] = dataclasses.field(default_factory=dict)
    summary_path: Path | None = None


@dataclasses.dataclass(frozen=True)
class _Sizes:
    n_samples: int
    d_in: int
    hidden: int
    d_out: int
    steps: int


def _sizes(quick: bool, n_samples, d_in, hidden, d_out, steps) -> _Sizes:
    base = (
        _Sizes(n_samples=256, d_in=6, hidden=6, d_out=6, steps=800)
        if quick
        else _Sizes(n_samples=512, d_in=6, hidden=6, d_out=6, steps=2000)
    )
    return _Sizes(
        n_samples=base.n_samples if n_samples is None else int(n_samples),
        d_in=base.d_in if d_in is None else int(d_in),
        hidden=base.hidden if hidden is None else int(hidden),
        d_out=base.d_out if d_out is None else int(d_out),
        steps=base.steps if steps is None else int(steps),
    )


def _validate(fn: str, sizes: _Sizes, ranks: Sequence[int], networks, settings, sides, tol) -> None:
    for name in ("n_samples", "d_in", "hidden", "d_out", "steps"):
        v = getattr(sizes, name)
        if v < 1:
            raise ValueError(f"deadspec.{fn}: {name} must be a positive integer, got {v}")
    if not ranks or any((not isinstance(r, (int, np.integer))) or r < 1 for r in ranks):
        raise ValueError(f"deadspec.{fn}: ranks must be positive integers, got {list(ranks)}")
    if 1 not in ranks:
        raise ValueError(
            f"deadspec.{fn}: ranks must include 1 (the reference of the ratios), got {list(ranks)}"
        )
    if max(ranks) > sizes.hidden:
        raise ValueError(
            f"deadspec.{fn}: ranks must be <= hidden = {sizes.hidden}, got {list(ranks)}"
        )
    if "trained" in settings and max(ranks) >= sizes.hidden:
        raise ValueError(
            f"deadspec.{fn}: the trained setting needs a teacher of rank hidden - r >= 1, "
            f"so ranks must be < hidden = {sizes.hidden}, got {list(ranks)}"
        )
    for what, vals, allowed in (
        ("networks", networks, NETWORKS),
        ("settings", settings, SETTINGS),
        ("sides", sides, SIDES),
    ):
        bad = [v for v in vals if v not in allowed]
        if bad or not vals:
            raise ValueError(
                f"deadspec.{fn}: {what} must be a non-empty subset of {allowed}, got {list(vals)}"
            )
    if not (isinstance(tol, (int, float)) and 0 < tol < 1):
        raise ValueError(f"deadspec.{fn}: tol must be in (0, 1), got {tol!r}")


# ---------------------------------------------------------------------------------------------
# Models and data
# ---------------------------------------------------------------------------------------------
def _student(network: str, sizes: _Sizes, seed: int):
    import torch

    from deadspec.models import mlp

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = mlp([sizes.d_in, sizes.hidden, sizes.d_out], activation=network, bias=True)
    return model.double().eval()


def _constructed_data(sizes: _Sizes, seed: int):
    import torch

    g = torch.Generator().manual_seed(10_000 + seed)
    x = torch.randn(sizes.n_samples, sizes.d_in, generator=g, dtype=torch.float64)
    y = torch.randn(sizes.n_samples, sizes.d_out, generator=g, dtype=torch.float64)
    return x, y


def _teacher_data(network: str, sizes: _Sizes, rank: int, seed: int, noise: float):
    """Inputs and noisy targets of a teacher of rank ``rank`` (= hidden - r)."""
    import torch

    g = torch.Generator().manual_seed(20_000 + 97 * seed + rank)
    n, d_in, d_out = sizes.n_samples, sizes.d_in, sizes.d_out
    x = torch.randn(n, d_in, generator=g, dtype=torch.float64)
    if network == "linear":
        # Product of rank `rank` with singular values in [1, 2] (well separated from 0).
        qu, _ = torch.linalg.qr(torch.randn(d_out, rank, generator=g, dtype=torch.float64))
        qv, _ = torch.linalg.qr(torch.randn(d_in, rank, generator=g, dtype=torch.float64))
        s = torch.linspace(2.0, 1.0, rank, dtype=torch.float64)
        y = x @ (qu @ torch.diag(s) @ qv.T).T
    else:
        # ReLU teacher with `rank` hidden units: unit-norm incoming weights, small biases,
        # outgoing weights of norm in [1, 2].
        v = torch.randn(rank, d_in, generator=g, dtype=torch.float64)
        v = v / v.norm(dim=1, keepdim=True)
        c = 0.1 * torch.randn(rank, generator=g, dtype=torch.float64)
        u = torch.randn(d_out, rank, generator=g, dtype=torch.float64)
        u = u / u.norm(dim=0, keepdim=True) * torch.linspace(2.0, 1.0, rank, dtype=torch.float64)
        y = torch.relu(x @ v.T + c) @ u.T
    y = y + noise * torch.randn(n, d_out, generator=g, dtype=torch.float64)
    return x, y


# ---------------------------------------------------------------------------------------------
# The experiment
# ---------------------------------------------------------------------------------------------
def _reading_row(
    network, setting, side, r, ap, seed, train_loss=None, error=None, read_at=None
) -> dict[str, Any]:
    row: dict[str, Any] = {c: None for c in CSV_COLUMNS}
    row.update(
        network=network,
        setting=setting,
        side=side,
        r=int(r),
        seed=seed,
        expected_ratio=float(r),
        paper_ratio=PAPER_RATIOS.get(int(r)),
        train_loss=train_loss,
        error=error,
        read_at=read_at,
    )
    if ap is not None:
        row.update(
            detected=ap.n_directions,
            slope=ap.slope,
            slope_per_unit=ap.slope / r,
            lambda_min_slope=ap.lambda_min_slope,
            r2=ap.r2,
            lambda_min_r2=ap.lambda_min_r2,
            stderr=ap.stderr,
            active=ap.active,
        )
    else:
        row.update(
            detected=0,
            slope=float("nan"),
            lambda_min_slope=float("nan"),
            r2=float("nan"),
            lambda_min_r2=float("nan"),
            stderr=float("nan"),
            slope_per_unit=float("nan"),
        )
    return row


_MIN_REF_SLOPE = 0.5


def _fill_ratios(rows: list[dict[str, Any]], tol: float) -> None:
    ref: dict[tuple[str, str, str, int], dict[str, Any]] = {}
    for row in rows:
        if row["r"] == 1:
            ref[(row["network"], row["setting"], row["side"], row["seed"])] = row
    for row in rows:
        base = ref.get((row["network"], row["setting"], row["side"], row["seed"]))
        ok = False
        # A reference slope near 0 (no dead direction actually scaled) gives no ratio.
        if (
            base is not None
            and all(
                isinstance(v, float) and math.isfinite(v) and abs(v) >= _MIN_REF_SLOPE
                for v in (base["slope"], base["lambda_min_slope"])
            )
            and math.isfinite(row["slope"])
            and math.isfinite(row["lambda_min_slope"])
        ):
            row["ratio"] = row["slope"] / base["slope"]
            row["lambda_min_ratio"] = row["lambda_min_slope"] / base["lambda_min_slope"]
            ok = (
                abs(row["ratio"] - row["r"]) <= tol * row["r"]
                and abs(row["lambda_min_ratio"] - 1.0) <= tol
                and row["detected"] == row["r"]
            )
        else:
            row["ratio"] = float("nan")
            row["lambda_min_ratio"] = float("nan")
        row["pass"] = bool(ok)


@dataclasses.dataclass(frozen=True)
class _Training:
    """How the trained setting trains its students and delimits their dead cluster."""

    lr: float
    lr_min: float
    weight_decay: float
    optimizer: str
    noise: float
    gap_ratio: float
    group_lasso: float = 2e-2
    prox_lr: float = 5e-2


@dataclasses.dataclass
class _Checkpoint:
    """A network ready to be read: its data, the dead units (or None: found) and the grid."""

    model: Any
    x: Any
    y: Any
    units: list[int] | None
    reason: str | None = None
    train_loss: float | None = None
    margin: float | None = None
    residue: float | None = None


def _checkpoint(
    setting: str, network: str, r: int, sizes: _Sizes, seed: int, training: _Training
) -> _Checkpoint:
    """Constructed: a random network whose units 0..r-1 are scaled. Trained: a student fitted
    to a teacher of rank hidden − r, its dead units found and revived (module docstring)."""
    if setting == "constructed":
        model = _student(network, sizes, seed)
        x, y = _constructed_data(sizes, seed)
        return _Checkpoint(model, x, y, list(range(r)))
    model = _student(network, sizes, 1000 + 31 * seed + r)
    x, y = _teacher_data(network, sizes, sizes.hidden - r, seed, training.noise)
    if network == "relu":  # spare units removed by the group penalty, checked unit by unit
        train_loss = _students.train_group_lasso(model, x, y, steps=sizes.steps, training=training)
        dead, residue, margin = _students.dead_units(model, x)
        reason = None if dead else f"no dead unit after training (alive margin {margin:.2g})"
    else:  # linear: the dead cluster, rotated onto units 0 … k−1 (an exact symmetry)
        train_loss = _students.train_l2(
            model, x, y, steps=sizes.steps, lr=training.lr, weight_decay=training.weight_decay,
            lr_min=training.lr_min, optimizer=training.optimizer,
        )
        dead, residue, margin, reason = _students.align_dead_linear(model, x, training.gap_ratio)
    if reason is None:
        _students.revive(model, dead, 97 * seed + r)
    return _Checkpoint(model, x, y, dead or None, reason, train_loss, margin, residue)


def _read_sides(
    ck: _Checkpoint,
    key: tuple[str, str, int],
    sides: Sequence[str],
    seed: int,
    gap_ratio: float,
    curves: dict[tuple[str, str, str, int], tuple[np.ndarray, np.ndarray]],
) -> list[dict[str, Any]]:
    """The approach slope of layer "0" on each side (rows; curves filled in place)."""
    import deadspec

    setting, network, r = key
    rows = []
    for side in (s for s in SIDES if s in sides):
        ap, err = None, ck.reason
        # ReLU networks are read after the nonlinearity on the activation side (module "1")
        read_at = "1" if network == "relu" and side == "activation" else None
        if ck.reason is None:
            try:
                ap = deadspec.approach_slope(
                    ck.model,
                    ck.x,
                    layer="0",
                    units=ck.units,
                    side=side,
                    targets=ck.y,
                    gap_ratio=gap_ratio,
                    read_at=read_at,
                )
            except ValueError as exc:  # a reading failed in the trained setting
                if setting == "constructed":
                    raise
                err = str(exc)
        row = _reading_row(
            network, setting, side, r, ap, seed, ck.train_loss, err, read_at or "0"
        )
        row["alive_margin"], row["dead_residue"] = ck.margin, ck.residue
        rows.append(row)
        if ap is not None and (network, setting, side, r) not in curves:  # the first seed's
            curves[(network, setting, side, r)] = (np.asarray(ap.t), np.asarray(ap.logdet_plus))
    return rows


def _readings(sizes, training, seeds, networks, settings, sides, ranks, progress):
    """Every (seed, setting, network, r) checkpoint, read on each side: (rows, curves)."""
    import torch

    jobs = [  # (seed, setting, network, r); the sides share a model
        (seed, setting, network, r)
        for seed in seeds
        for setting in SETTINGS
        if setting in settings
        for network in NETWORKS
        if network in networks
        for r in ranks
    ]
    rows: list[dict[str, Any]] = []
    curves: dict[tuple[str, str, str, int], tuple[np.ndarray, np.ndarray]] = {}
    with torch.random.fork_rng():
        bar = _harness.progress_bar(jobs, "rank-deficit", progress)
        for seed, setting, network, r in bar:
            bar.set_postfix_str(f"seed {seed} {setting} {network} r={r}")
            ck = _checkpoint(setting, network, r, sizes, seed, training)
            rows += _read_sides(ck, (setting, network, r), sides, seed, training.gap_ratio, curves)
    return rows, curves


def run(
    out: str | Path | None = DEFAULT_OUT,
    *,
    quick: bool = False,
    seed: int = 0,
    seeds: int | None = None,
    networks: Sequence[str] = NETWORKS,
    settings: Sequence[str] = SETTINGS,
    sides: Sequence[str] = SIDES,
    ranks: Sequence[int] = (1, 2, 3, 4),
    n_samples: int | None = None,
    d_in: int | None = None,
    hidden: int | None = None,
    d_out: int | None = None,
    steps: int | None = None,
    lr: float = 1e-2,
    lr_min: float = 1e-3,
    weight_decay: float = 3e-2,
    optimizer: str = "adam",
    noise: float = 0.1,
    gap_ratio: float = 1e2,
    group_lasso: float = 2e-2,
    prox_lr: float = 5e-2,
    tol: float = 0.10,
    plot: bool = True,
    progress: bool | None = None,
    echo: Callable[[str], None] | None = print,
) -> RankDeficitResult:
    """Run the rank-deficit experiment; write the CSV and the plot into ``out``.

    Parameters
    ----------
    out : str or Path or None
        Output folder (created); None writes nothing.
    quick : bool
        Tiny sizes (N = 256, 800 training steps) for tests; the constructed setting is the
        same computation at smaller N.
    seed, seeds : int
        The seeds run are ``seed … seed + seeds − 1`` (networks, data, teachers; default
        ``seeds`` 5, quick 2). Every ratio is taken against r = 1 of the same seed.
    networks, settings, sides : sequences of str
        Subsets of ``("linear", "relu")``, ``("constructed", "trained")``,
        ``("activation", "fisher")``.
    ranks : sequence of int
        Numbers r of dead units; must include 1 (the reference).
    n_samples, d_in, hidden, d_out, steps : int, optional
        Sizes (defaults: 512, 6, 6, 6, 2000; quick: 256, 6, 6, 6, 800). Keep
        ``n_samples >= hidden·(d_in + 1)`` for a full-rank Fisher side.
    lr, lr_min, weight_decay : float
        Learning rate (cosine-annealed to ``lr_min``) and weight decay (trained setting).
    optimizer : {"adam", "adamw", "sgd"}
        Trained linear students: ``"adam"`` (default): ``torch.optim.Adam`` with coupled (L2)
        weight decay, which drives the spare directions of the student to ~0; ``"adamw"``
        (decoupled decay) leaves them fitting the label noise at these sizes.
    group_lasso, prox_lr : float
        Trained ReLU students: the group penalty λ Σ_j ‖θ_j‖ on each hidden unit's weights in,
        bias and weights out (``steps`` Adam steps on the penalised loss at ``lr``, then
        ``steps`` proximal-gradient steps of size ``prox_lr``, which set the removed units to
        exactly 0). Each unit is then checked: dead when its group norm is 0 or it never fires
        on the inputs. The dead units are given a random direction (the alive units' median
        norms) and approached along it, so θ(0) is the trained checkpoint.
    noise : float
        Standard deviation of the label noise of the teacher (trained setting).
    gap_ratio : float
        Spectral gap that delimits the dead cluster of a trained linear student. The default
        1e2 (the library's is 1e3) because Adam leaves its dead directions spread over a few
        decades (1e-7 … 1e-3 of the alive ones' amplitude).
    tol : float
        Relative tolerance of the acceptance checks (0.10).
    plot : bool
        Write the PNG.
    progress : bool or None
        tqdm bar over the runs (None: only when stderr is a terminal).
    echo : callable or None
        Where the table is printed (None: silent).

    Returns
    -------
    RankDeficitResult
    """
    fn = "rank_deficit.run"
    sizes = _sizes(quick, n_samples, d_in, hidden, d_out, steps)
    ranks = [int(r) for r in ranks]
    _validate(fn, sizes, ranks, networks, settings, sides, tol)
    n_seeds = (2 if quick else 5) if seeds is None else seeds
    if isinstance(n_seeds, bool) or not isinstance(n_seeds, int) or n_seeds < 1:
        raise ValueError(f"deadspec.{fn}: seeds must be a positive integer, got {seeds!r}")
    if not (group_lasso > 0 and prox_lr > 0):
        raise ValueError(
            f"deadspec.{fn}: group_lasso and prox_lr must be > 0, got {group_lasso!r}, {prox_lr!r}"
        )
    seed_list = list(range(int(seed), int(seed) + n_seeds))
    training = _Training(
        lr, lr_min, weight_decay, optimizer, noise, gap_ratio, group_lasso, prox_lr
    )
    _harness.check_out(out, "rank_deficit.run")  # before any work: a bad folder fails now
    if echo is not None:
        echo(f"rank-deficit: {_rule(tol)}; stated before the runs; seeds {seed_list}")
    t_start = time.perf_counter()
    rows, curves = _readings(sizes, training, seed_list, networks, settings, sides, ranks, progress)
    _fill_ratios(rows, tol)
    summary = summarize(rows)
    verdicts = _verdicts(rows, seed_list)
    config = {
        "rule": _rule(tol), "seeds": seed_list, "sizes": dataclasses.asdict(sizes),
        "training": dataclasses.asdict(training), "networks": list(networks),
        "settings": list(settings), "sides": list(sides), "ranks": ranks, "tol": tol,
        "verdicts": verdicts,
    }
    paths = _harness.write_outputs(
        out,
        {"rank_deficit.csv": (rows, CSV_COLUMNS),
         "rank_deficit_summary.csv": (summary, SUMMARY_COLUMNS)},
        {"rank_deficit.png": lambda path: _plot(rows, curves, path, sizes)} if plot else None,
        config=config,
    )
    seconds = time.perf_counter() - t_start
    texts = [format_table(rows), format_summary(summary)]
    texts += [f"{key}: {text}" for key, text in verdicts.items()]
    _harness.report(echo, texts, paths.values(), seconds)
    trained = [row for row in rows if row["setting"] == "trained"]
    # every seed of every network passes exactly when every trained row does
    passed_trained = all(row["pass"] for row in trained) if trained else None
    return RankDeficitResult(
        rows=rows,
        curves=curves,
        passed=all(row["pass"] for row in rows if row["setting"] == "constructed"),
        passed_trained=passed_trained,
        csv_path=paths.get("rank_deficit.csv"),
        png_path=paths.get("rank_deficit.png"),
        seconds=seconds,
        summary=summary,
        verdicts=verdicts,
        summary_path=paths.get("rank_deficit_summary.csv"),
    )


def _rule(tol: float) -> str:
    return (
        f"rule (per network and setting): a seed passes when, for every r, the dead units found "
        f"equal r, the log det⁺ slope ratio against r = 1 is within {tol:.0%} of r and the λ_min "
        f"slope ratio within {tol:.0%} of 1, on every side read; reproduced when every seed "
        f"passes (the constructed setting is the acceptance check: it must pass)"
    )


def summarize(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (network, setting, side, r): the ratios' mean ± standard error over the seeds, and
    in how many seeds the dead units found equal r and the row passes."""
    from deadspec.experiments._stats import mean_se

    def key_of(row):
        return row["network"], row["setting"], row["side"], row["r"]

    out = []
    for network, setting, side, r in dict.fromkeys(key_of(row) for row in rows):
        mine = [row for row in rows if key_of(row) == (network, setting, side, r)]
        ratio, ratio_se = mean_se([float(row["ratio"]) for row in mine])
        lam, lam_se = mean_se([float(row["lambda_min_ratio"]) for row in mine])
        out.append(
            dict(
                network=network, setting=setting, side=side, r=r, seeds=len(mine),
                detected_r=sum(row["detected"] == r for row in mine),
                passed=sum(bool(row["pass"]) for row in mine),
                ratio_mean=ratio, ratio_se=ratio_se, lambda_min_ratio_mean=lam,
                lambda_min_ratio_se=lam_se,
                paper_ratio=PAPER_RATIOS.get(int(r)) if setting == "trained" else None,
            )
        )
    return out


def _verdicts(rows: Sequence[dict[str, Any]], seeds: Sequence[int]) -> dict[str, str]:
    """``"<setting> <network>" -> verdict`` by the rule (:func:`_rule`)."""
    out: dict[str, str] = {}
    for setting in SETTINGS:
        for network in NETWORKS:
            mine = [r for r in rows if r["setting"] == setting and r["network"] == network]
            if not mine:
                continue
            good = [s for s in seeds if all(r["pass"] for r in mine if r["seed"] == s)]
            ok = len(good) == len(seeds)
            if setting == "constructed":
                word = "PASS" if ok else "FAIL"
            else:
                word = "reproduced" if ok else "not reproduced"
            out[f"{setting} {network}"] = f"{word} ({len(good)} of {len(seeds)} seeds pass)"
    return out


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------
_Col = _harness.Col
_TABLE = (
    _Col("seed", "seed", ">4"),
    _Col("network", "network", "<7"),
    _Col("setting", "setting", "<11"),
    _Col("side", "side", "<10"),
    _Col("r", "r", ">1"),
    _Col("found", "detected", ">5"),
    _Col("slope", "slope", "8.3f"),
    _Col("ratio", "ratio", "6.3f"),
    _Col("paper", lambda row: row["paper_ratio"] if row["setting"] == "trained" else None, "5.1f"),
    _Col("λmin slope", "lambda_min_slope", "10.3f"),
    _Col("λmin ratio", "lambda_min_ratio", "10.3f"),
    _Col("R²", "r2", "8.5f"),
    _Col("result", lambda row: "PASS" if row["pass"] else "FAIL", "<6"),
)


_SUMMARY = (
    _Col("network", "network", "<7"),
    _Col("setting", "setting", "<11"),
    _Col("side", "side", "<10"),
    _Col("r", "r", ">1"),
    _Col("found=r", lambda row: f"{row['detected_r']}/{row['seeds']}", ">7"),
    _Col("pass", lambda row: f"{row['passed']}/{row['seeds']}", ">5"),
    _Col("ratio", lambda row: _pm(row["ratio_mean"], row["ratio_se"]), ">15"),
    _Col("λmin ratio", lambda row: _pm(row["lambda_min_ratio_mean"], row["lambda_min_ratio_se"]),
         ">15"),
    _Col("paper", "paper_ratio", "5.1f"),
)


def _pm(mean: float, se: float) -> str:
    if not math.isfinite(mean):
        return "-"
    return f"{mean:.3f} ± {se:.3f}" if math.isfinite(se) else f"{mean:.3f}"


def format_summary(summary: Sequence[dict[str, Any]]) -> str:
    """The per-(network, setting, side, r) summary over seeds as a plain-text table."""
    return _harness.format_table(summary, _SUMMARY)


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A plain-text table of the rows (what :func:`run` prints)."""
    return _harness.format_table(
        rows, _TABLE, suffix=lambda row: f" ({row['error'][:60]})" if row.get("error") else ""
    )


def _plot(rows, curves, path: Path, sizes: _Sizes) -> None:
    settings = [s for s in SETTINGS if any(row["setting"] == s for row in rows)]
    panels = [
        (n, side)
        for n in NETWORKS
        for side in SIDES
        if any(row["network"] == n and row["side"] == side for row in rows)
    ]
    ncols = len(panels) + 1
    ranks = sorted({row["r"] for row in rows})
    with _harness.figure(path, figsize=(3.6 * ncols, 3.3 * len(settings)), dpi=110) as fig:
        axes = fig.subplots(len(settings), ncols, squeeze=False)
        for i, setting in enumerate(settings):
            for j, (network, side) in enumerate(panels):
                _plot_curves(axes[i, j], curves, setting, network, side, ranks)
            _plot_slopes(axes[i, -1], rows, setting, panels, ranks, sizes)
        fig.suptitle(
            f"rank deficit: N={sizes.n_samples}, d_in={sizes.d_in}, H={sizes.hidden}, "
            f"d_out={sizes.d_out}",
            fontsize=10,
        )


def _plot_curves(ax, curves, setting: str, network: str, side: str, ranks: list[int]) -> None:
    """log det⁺ against log t for each r (shifted to 0 at the largest t)."""
    import matplotlib

    cmap = matplotlib.colormaps["viridis"]
    for k, r in enumerate(ranks):
        c = curves.get((network, setting, side, r))
        if c is None:
            continue
        t, ld = c
        ax.plot(
            np.log(t),
            ld - ld[-1],
            marker="o",
            ms=3,
            color=cmap(k / max(1, len(ranks) - 1)),
            label=f"r={r}",
        )
    after = " (after the ReLU)" if network == "relu" and side == "activation" else ""
    ax.set_title(f"{setting}: {network}, {side}{after}; first seed", fontsize=9)
    ax.set_xlabel("log t")
    ax.set_ylabel("log det⁺ − log det⁺(t_max)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def _plot_slopes(ax, rows, setting: str, panels, ranks: list[int], sizes: _Sizes) -> None:
    """The slope against r per network and side, with the line slope = 2r."""
    rr = np.array(ranks, dtype=float)
    ax.plot(rr, 2 * rr, "k--", lw=1, label="slope = 2r")
    for network, side in panels:
        pts = [
            (row["r"], row["slope"])
            for row in rows
            if row["setting"] == setting
            and row["network"] == network
            and row["side"] == side
            and row["slope"] is not None
            and math.isfinite(row["slope"])
        ]
        if not pts:
            continue
        from deadspec.experiments._stats import mean_se

        xs = sorted({p[0] for p in pts})
        stats = [mean_se([p[1] for p in pts if p[0] == r]) for r in xs]
        ys = np.array([m for m, _ in stats], dtype=float)
        err = np.nan_to_num(np.array([e for _, e in stats], dtype=float))
        label = f"{network} {side}"
        if side == "fisher":  # Fisher side: per-unit slope 2(d_in+1)
            ys, err = ys / (sizes.d_in + 1), err / (sizes.d_in + 1)
            label += f" (÷{sizes.d_in + 1})"
        ax.errorbar(xs, ys, yerr=err, marker="o", ls=":", capsize=3, label=label)
    if setting == "trained":
        pr = [r for r in ranks if r in PAPER_RATIOS]
        ax.plot(pr, [2 * PAPER_RATIOS[r] for r in pr], "r*", ms=9, label="paper (2·ratio)")
    ax.set_title(f"{setting}: slope vs r (mean ± se over seeds)", fontsize=9)
    ax.set_xlabel("r (dead units)")
    ax.set_ylabel("slope of log det⁺")
    ax.set_xticks(ranks)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------
def _parser():
    p = _harness.parser(
        "python -m deadspec.experiments.rank_deficit",
        "Rank-deficit experiment: log det⁺ approach-slope ratios vs the number r of "
        "dead units (constructed and trained two-layer linear/ReLU networks).",
        DEFAULT_OUT,
    )
    p.add_argument("--networks", nargs="+", choices=NETWORKS, default=list(NETWORKS))
    p.add_argument("--settings", nargs="+", choices=SETTINGS, default=list(SETTINGS))
    p.add_argument("--sides", nargs="+", choices=SIDES, default=list(SIDES))
    p.add_argument("--ranks", nargs="+", type=int, default=[1, 2, 3, 4])
    p.add_argument("--n-samples", type=int, default=None)
    p.add_argument("--d-in", type=int, default=None)
    p.add_argument("--hidden", type=int, default=None)
    p.add_argument("--d-out", type=int, default=None)
    p.add_argument("--steps", type=int, default=None, help="training steps (trained setting)")
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--lr-min", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=3e-2)
    p.add_argument("--optimizer", choices=["adam", "adamw", "sgd"], default="adam")
    p.add_argument("--noise", type=float, default=0.1)
    p.add_argument(
        "--gap-ratio",
        type=float,
        default=1e2,
        help="gap that delimits the dead cluster in the trained setting (default 1e2)",
    )
    p.add_argument("--seeds", type=int, default=None, help="seeds run: --seed ... (default 5)")
    p.add_argument(
        "--group-lasso", type=float, default=2e-2, help="unit-norm penalty (trained ReLU)"
    )
    p.add_argument("--prox-lr", type=float, default=5e-2, help="proximal step (trained ReLU)")
    p.add_argument("--tol", type=float, default=0.10)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns 0 when the constructed-setting acceptance passes."""
    return _harness.cli_main(
        "rank-deficit", _parser(), run, argv, status=lambda res: 0 if res.passed else 1
    )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
