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
plus Gaussian label noise, by full-batch ``torch.optim.Adam`` with (L2) weight decay and a
cosine learning-rate schedule, so the r spare directions die. The dead directions are found
automatically (``units=None``: the dead cluster of layer 0's activation spectrum, below a gap
of ``gap_ratio``, default 1e2) and scaled along the eigenvectors. Because trained dead
directions are already tiny, the grid is the default one divided by their relative amplitude
ρ = √(μ_dead,max/μ_1) (CSV column ``t_scale`` = 1/ρ), see :func:`_trained_grid`. Reported: the
number found and the slope ratios next to the paper's 2.0, 3.1, 4.0. (No acceptance threshold;
the PASS column applies the same 10% check for information.)

Outputs (``--out DIR``, default ``./deadspec-out/rank-deficit``): ``rank_deficit.csv`` (one row
per network × setting × side × r) and ``rank_deficit.png`` (log det⁺ vs log t per r, shifted
to 0 at the largest t, and slope vs r against the line slope = 2r).

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

from deadspec.experiments import _harness

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
    "t_scale",
    "pass",
    "train_loss",
    "seed",
    "error",
)

#: The approach grid (approach_slope's default): 7 points over t in [1e-3, 1e-1].
DEFAULT_T = np.logspace(-3, -1, 7)


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
        Acceptance of the constructed setting (all its rows pass). True if it was not run.
    passed_trained : bool or None
        Whether all trained rows pass the same 10% check (None if not run).
    csv_path, png_path : Path or None
    seconds : float
        Wall time.
    """

    rows: list[dict[str, Any]]
    curves: dict[tuple[str, str, str, int], tuple[np.ndarray, np.ndarray]]
    passed: bool
    passed_trained: bool | None
    csv_path: Path | None
    png_path: Path | None
    seconds: float


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


def _train(
    model,
    x,
    y,
    *,
    steps: int,
    lr: float,
    weight_decay: float,
    lr_min: float,
    optimizer: str = "adam",
) -> float:
    """Full-batch Adam/AdamW/SGD with weight decay and a cosine schedule; returns the final loss."""
    import torch

    if optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    elif optimizer == "adamw":
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    elif optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=lr, weight_decay=weight_decay, momentum=0.9)
    else:
        raise ValueError(
            f"deadspec.rank_deficit: optimizer must be 'adam', 'adamw' or 'sgd', got {optimizer!r}"
        )
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=lr_min)
    model.train()
    with _harness.threads(1):  # tiny full-batch steps: thread start-up costs more than it saves
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            loss = 0.5 * ((model(x) - y) ** 2).sum(dim=1).mean()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        final = 0.5 * ((model(x) - y) ** 2).sum(dim=1).mean()
    return float(final)


# ---------------------------------------------------------------------------------------------
# The experiment
# ---------------------------------------------------------------------------------------------
def _reading_row(
    network, setting, side, r, ap, seed, train_loss=None, error=None, t_scale=1.0
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
        t_scale=t_scale,
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


def _trained_grid(model, x, gap_ratio: float) -> tuple[np.ndarray | None, float, str | None]:
    """The approach grid of a trained checkpoint, anchored at its dead cluster.

    A trained network's dead directions are already small (amplitude ρ relative to the top
    direction, ρ² = μ_dead,max / μ_1, often 1e-4..1e-7), so scaling them by the default
    t ∈ [1e-3, 1e-1] would push them under the round-off floor of the Gram. The grid is
    therefore ``DEFAULT_T / ρ``: the largest dead direction's relative amplitude runs over
    [1e-3, 1e-1], as in the constructed setting. Returns ``(grid, 1/ρ, None)`` or
    ``(None, nan, reason)`` when there is no dead cluster.
    """
    import deadspec

    spec = deadspec.read(model, x, layers=["0"], fisher=False, gap_ratio=gap_ratio)["0"].activation
    if spec.dead_count == 0:
        ev = np.array2string(np.asarray(spec.eigenvalues), precision=2)
        return None, float("nan"), f"no dead cluster at gap_ratio={gap_ratio:g} (eigenvalues {ev})"
    ev = np.asarray(spec.eigenvalues, dtype=np.float64)
    mu_dead = ev[spec.active - spec.dead_count]
    scale = math.sqrt(ev[0] / mu_dead)
    return DEFAULT_T * scale, scale, None


def _fill_ratios(rows: list[dict[str, Any]], tol: float) -> None:
    ref: dict[tuple[str, str, str], dict[str, Any]] = {}
    for row in rows:
        if row["r"] == 1:
            ref[(row["network"], row["setting"], row["side"])] = row
    for row in rows:
        base = ref.get((row["network"], row["setting"], row["side"]))
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


@dataclasses.dataclass
class _Checkpoint:
    """A network ready to be read: its data, the dead units (or None: found) and the grid."""

    model: Any
    x: Any
    y: Any
    units: list[int] | None
    grid: np.ndarray | None = None
    t_scale: float = 1.0
    reason: str | None = None
    train_loss: float | None = None


def _checkpoint(
    setting: str, network: str, r: int, sizes: _Sizes, seed: int, training: _Training
) -> _Checkpoint:
    """Constructed: a random network whose units 0..r-1 are scaled. Trained: a student fitted
    to a teacher of rank hidden − r, read along its dead cluster on a grid scaled to it."""
    if setting == "constructed":
        model = _student(network, sizes, seed)
        x, y = _constructed_data(sizes, seed)
        return _Checkpoint(model, x, y, list(range(r)))
    model = _student(network, sizes, 1000 + 31 * seed + r)
    x, y = _teacher_data(network, sizes, sizes.hidden - r, seed, training.noise)
    train_loss = _train(
        model,
        x,
        y,
        steps=sizes.steps,
        lr=training.lr,
        weight_decay=training.weight_decay,
        lr_min=training.lr_min,
        optimizer=training.optimizer,
    )
    grid, t_scale, reason = _trained_grid(model, x, training.gap_ratio)
    return _Checkpoint(model, x, y, None, grid, t_scale, reason, train_loss)


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
        if ck.reason is None:
            try:
                ap = deadspec.approach_slope(
                    ck.model,
                    ck.x,
                    layer="0",
                    units=ck.units,
                    side=side,
                    targets=ck.y,
                    t=ck.grid,
                    gap_ratio=gap_ratio,
                )
            except ValueError as exc:  # a reading failed in the trained setting
                if setting == "constructed":
                    raise
                err = str(exc)
        rows.append(
            _reading_row(network, setting, side, r, ap, seed, ck.train_loss, err, ck.t_scale)
        )
        if ap is not None:
            curves[(network, setting, side, r)] = (np.asarray(ap.t), np.asarray(ap.logdet_plus))
    return rows


def _readings(sizes, training, seed, networks, settings, sides, ranks, progress):
    """Every (setting, network, r) checkpoint, read on each side: (rows, curves)."""
    import torch

    jobs = [  # (setting, network, r); the sides share a model
        (setting, network, r)
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
        for setting, network, r in bar:
            bar.set_postfix_str(f"{setting} {network} r={r}")
            ck = _checkpoint(setting, network, r, sizes, seed, training)
            rows += _read_sides(ck, (setting, network, r), sides, seed, training.gap_ratio, curves)
    return rows, curves


def run(
    out: str | Path | None = DEFAULT_OUT,
    *,
    quick: bool = False,
    seed: int = 0,
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
    seed : int
        Base seed of the random networks, data and teachers.
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
        ``"adam"`` (default): ``torch.optim.Adam`` with coupled (L2) weight decay, which drives
        the spare directions of the student to ~0; ``"adamw"`` (decoupled decay) leaves them
        fitting the label noise at these sizes.
    noise : float
        Standard deviation of the label noise of the teacher (trained setting).
    gap_ratio : float
        Spectral gap that delimits the dead cluster (trained setting, ``units=None``). The
        default 1e2 (the library's is 1e3) because Adam leaves the dead units of a trained ReLU
        network spread over a few decades just below the alive ones.
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
    training = _Training(lr, lr_min, weight_decay, optimizer, noise, gap_ratio)
    _harness.check_out(out, "rank_deficit.run")  # before any work: a bad folder fails now
    t_start = time.perf_counter()
    rows, curves = _readings(sizes, training, seed, networks, settings, sides, ranks, progress)
    _fill_ratios(rows, tol)
    cons = [row for row in rows if row["setting"] == "constructed"]
    trained = [row for row in rows if row["setting"] == "trained"]
    passed = all(row["pass"] for row in cons)
    passed_trained = all(row["pass"] for row in trained) if trained else None
    paths = _harness.write_outputs(
        out,
        {"rank_deficit.csv": (rows, CSV_COLUMNS)},
        {"rank_deficit.png": lambda path: _plot(rows, curves, path, sizes)} if plot else None,
    )
    seconds = time.perf_counter() - t_start
    texts = [format_table(rows)]
    if cons:
        texts.append(
            f"constructed setting (acceptance: ratio within {tol:.0%} of r, λ_min ratio within "
            f"{tol:.0%} of 1): {'PASS' if passed else 'FAIL'}"
        )
    if trained:
        texts.append(
            f"trained setting (same check, informational; paper: 2.0, 3.1, 4.0): "
            f"{'PASS' if passed_trained else 'FAIL'}"
        )
    _harness.report(echo, texts, paths.values(), seconds)
    return RankDeficitResult(
        rows=rows,
        curves=curves,
        passed=passed,
        passed_trained=passed_trained,
        csv_path=paths.get("rank_deficit.csv"),
        png_path=paths.get("rank_deficit.png"),
        seconds=seconds,
    )


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------
_Col = _harness.Col
_TABLE = (
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
    ax.set_title(f"{setting}: {network}, {side}", fontsize=9)
    ax.set_xlabel("log t" if setting == "constructed" else "log t (grid × t_scale)")
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
        xs = np.array([p[0] for p in pts], dtype=float)
        ys = np.array([p[1] for p in pts], dtype=float)
        label = f"{network} {side}"
        if side == "fisher":
            ys = ys / (sizes.d_in + 1)  # Fisher side: per-unit slope 2(d_in+1)
            label += f" (÷{sizes.d_in + 1})"
        ax.plot(xs, ys, marker="o", ls=":", label=label)
    if setting == "trained":
        pr = [r for r in ranks if r in PAPER_RATIOS]
        ax.plot(pr, [2 * PAPER_RATIOS[r] for r in pr], "r*", ms=9, label="paper (2·ratio)")
    ax.set_title(f"{setting}: slope vs r", fontsize=9)
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
    p.add_argument("--tol", type=float, default=0.10)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns 0 when the constructed-setting acceptance passes."""
    return _harness.cli_main(
        "rank-deficit", _parser(), run, argv, status=lambda res: 0 if res.passed else 1
    )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
