"""The LLC baseline: local learning coefficient by localised SGLD (theory.md §5).

This is the estimator the Dead-Direction Signatures are compared against: the *local learning
coefficient* (Lau et al., "Quantifying degeneracy in singular models via the learning
coefficient"; the devinterp library)

    λ̂(w*) = nβ · (E_w[L_n(w)] − L_n(w*)),

with L_n the average **negative log-likelihood** over the n training samples and the expectation
over the localised tempered posterior ∝ exp(−nβ·L_n(w) − (γ/2)‖w − w*‖²), sampled by SGLD
started at w*:

    w ← w − (ε/2)·(nβ·∇L_batch(w) + γ·(w − w*)) + N(0, ε·I).

Conventions (read these before comparing numbers with other tools)
-------------------------------------------------------------------
- **nβ = n / log n with n the dataset size** (``n`` defaults to the number of samples in
  ``data``). devinterp's helper ``default_nbeta(loader)`` uses the *batch size* b instead
  (b / log b); canonical-interp uses the dataset size like we do. With full-batch SGLD the two
  agree; with minibatches they do not, and the devinterp convention gives a higher temperature
  (a smaller nβ) that is not the β = 1/log n of the WBIC/LLC theory. Pass ``nbeta=`` explicitly
  to reproduce another tool's numbers.
- **The loss must be a negative log-likelihood per sample, averaged over the batch.** For
  Gaussian regression with known noise σ this is ‖y − f(x)‖²/(2σ²) per sample (the constant
  ½·dim·log(2πσ²) cancels in the difference), *not* plain MSE: use :func:`gaussian_nll`.
  A loss that is the NLL multiplied by c behaves as the right loss at inverse temperature
  c·nβ, which changes λ̂ (the localisation γ and the finite-n noise structure are not rescaled)
  and makes every (ε, γ) calibrated for the right scale wrong. :func:`estimate` checks this for
  float targets (``check_nll``): at a minimum of a Gaussian NLL with the right σ, the curvature
  of the per-sample loss in the output, 1/σ², times the mean squared residual per output
  coordinate, σ̂², is ≈ 1 (``LLCResult.nll_scale``); a value outside [2/3, 3/2] is reported as
  a warning (plain ``F.mse_loss`` gives 2σ̂²/dim there).
- ``loss_fn(output, targets)`` returns per-sample losses (shape ``(B,)``; element-wise losses
  ``(B, ...)`` are summed over their trailing dimensions per sample) or their batch mean
  (a scalar); the estimator uses the batch mean.
- The loss trace records, at every draw, the batch loss at the current point before the
  update (as devinterp does); ``L_n(w*)`` is the full-data loss at w*.
- ``batch_size=None`` runs full-batch SGLD (every step sees all n samples). A minibatch is
  drawn without replacement per step and per chain from that chain's generator.
- ``passes`` counts forward-backward passes over a batch: chains × (burn-in + draws), plus the
  forward passes that compute L_n(w*) (counted as whole passes). ``samples_processed`` is the
  same in samples.
- ``std`` is the standard deviation of the per-chain estimates (``ddof=1``, as devinterp).
- Divergence: a chain whose loss becomes NaN/Inf, or whose per-draw λ estimate nβ(L − L*)
  exceeds ``diverge_threshold`` (default ``10·d + 100``, d the number of sampled parameters;
  λ ≤ d/2 always), is stopped; its estimate is NaN, ``diverged`` flags it, and
  ``mean``/``std`` are NaN. Nothing is dropped silently.
- Chains are independent: chain c draws its noise and minibatches from its own
  ``torch.Generator`` seeded from ``numpy.random.SeedSequence(seed).spawn(chains)[c]``, so the
  vectorised and sequential modes give the same numbers up to round-off.

Vectorised chains: ``vectorize=True`` stacks a parameter copy per chain and runs all chains in
one ``torch.func.vmap`` of ``torch.func.grad_and_value`` over ``torch.func.functional_call``;
``"auto"`` (default) falls back to the sequential loop when the model cannot be vmapped.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from deadspec._dist import check_group
from deadspec._files import check_output, save_figure
from deadspec._limits import (
    MAX_CHAINS,
    MAX_GRID,
    MAX_ITERS,
    MAX_STEPS,
    MAX_TRACE,
    bounded_list,
    check_at_most,
)
from deadspec._sgld import (
    Chains,
    Functional,
    Settings,
    check_positive,
    full_loss,
    gaussian_scale,
    run_spread,
    summary,
    to_model,
    unpack_data,
)
from deadspec._util import agg_figure, check_integer, check_model, check_real, check_seed
from deadspec._util import progress as progress_bar

__all__ = [
    "Calibration",
    "LLCResult",
    "LLCWarning",
    "calibrate",
    "cross_entropy_nll",
    "curvature_scale",
    "default_nbeta",
    "estimate",
    "gaussian_nll",
]


class LLCWarning(RuntimeWarning):
    """Warning for a suspicious LLC setting (divergence, NaN, mis-scaled NLL, not a minimum)."""


# ---------------------------------------------------------------------------------------------
# losses and conventions
# ---------------------------------------------------------------------------------------------


def gaussian_nll(sigma: float = 1.0) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Per-sample Gaussian negative log-likelihood with known noise σ (up to a constant).

    Returns ``loss_fn(output, targets) = Σ_j (y_j − f_j)² / (2σ²)`` per sample, shape ``(B,)``
    (all non-batch axes summed). This is the loss the LLC needs for regression; plain MSE is
    this times 2σ²/dim and gives a mis-scaled estimate (see the module docstring).

    Parameters
    ----------
    sigma : float
        Known noise standard deviation (> 0).
    """
    sigma = check_real("llc.gaussian_nll", "sigma", sigma)
    if not (sigma > 0 and math.isfinite(sigma)):
        raise ValueError(
            f"deadspec.llc.gaussian_nll: sigma must be positive and finite, got {sigma}"
        )
    scale = 1.0 / (2.0 * sigma * sigma)

    def loss_fn(output: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        fn = "deadspec.llc.gaussian_nll"
        _check_tensors(fn, output, targets)
        if output.ndim == 0 or targets.shape[:1] != output.shape[:1] or (
            targets.numel() != output.numel()
        ):
            raise ValueError(
                f"{fn}: targets must hold one value per output entry, with the output's batch "
                f"size, got output {tuple(output.shape)} and targets {tuple(targets.shape)}"
            )
        b = output.shape[0]
        diff = targets.reshape(b, -1) - output.reshape(b, -1)
        return scale * diff.pow(2).sum(1)

    loss_fn.sigma = sigma  # type: ignore[attr-defined]
    loss_fn.__name__ = f"gaussian_nll(sigma={sigma:g})"
    return loss_fn


def cross_entropy_nll(output: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy (the categorical NLL), logits ``B×C`` (or ``B×T×C``, summed)."""
    fn = "deadspec.llc.cross_entropy_nll"
    _check_tensors(fn, output, targets)
    c = output.shape[-1] if output.ndim >= 2 else 0
    if c == 0 or targets.numel() * c != output.numel() or targets.shape[:1] != output.shape[:1]:
        raise ValueError(
            f"{fn}: output must be logits B×C (or B×T×C) and targets one class index per row "
            f"(B or B×T), got output {tuple(output.shape)} and targets {tuple(targets.shape)}"
        )
    try:
        per = nn.functional.cross_entropy(
            output.reshape(-1, c), targets.reshape(-1).long(), reduction="none"
        )
    except IndexError as exc:  # a class index outside [0, C) (torch: "Target 7 is out of bounds")
        raise ValueError(f"{fn}: targets must be class indices in [0, {c}), got {exc}") from None
    return per.reshape(output.shape[0], -1).sum(1)


def _check_tensors(fn: str, output: Any, targets: Any) -> None:
    for name, t in (("output", output), ("targets", targets)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(t).__name__}")


def default_nbeta(n: int) -> float:
    """nβ = n / log n, with n the **dataset** size (devinterp uses the batch size; see module)."""
    if isinstance(n, (bool, str, bytes)) or not hasattr(n, "__int__") or int(n) != n or n < 2:
        raise ValueError(f"deadspec.llc.default_nbeta: n must be an integer >= 2, got {n!r}")
    return float(n) / math.log(float(n))


# ---------------------------------------------------------------------------------------------
# result types
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LLCResult:
    """Result of :func:`estimate`.

    Attributes
    ----------
    mean, std : float
        Mean and standard deviation (ddof=1) of the per-chain estimates; NaN when a chain
        diverged (see ``diverged``).
    per_chain : np.ndarray
        λ̂ per chain (NaN for a diverged chain).
    loss_trace : np.ndarray
        ``chains × draws`` batch losses (NaN after a chain diverged).
    init_loss : float
        L_n(w*) on the full data.
    passes : int
        Forward-backward passes spent (see module docstring).
    samples_processed : int
        The same in samples.
    seconds : float
        Wall time of the call.
    nbeta, epsilon, gamma : float
        The settings used.
    n, chains, draws, burnin : int
    batch_size : int
        Samples per SGLD step (n for full batch).
    n_params : int
        Number of sampled parameters d.
    diverged : np.ndarray
        Bool per chain.
    diverged_at : np.ndarray
        Step at which each chain diverged (-1 if it did not).
    drift : float
        Chain-averaged difference of the per-draw λ estimate between the second and first half
        of the draws, nβ·(mean₂ − mean₁): a stationarity diagnostic (≈ 0 when stable).
    nll_scale : float or None
        The Gaussian-NLL scaling check (≈ 1 for the right σ; None if not checked).
    vectorized : bool
        Whether the chains ran vectorised.
    warnings : tuple of str
        Everything suspicious about this run.
    """

    mean: float
    std: float
    per_chain: np.ndarray
    loss_trace: np.ndarray
    init_loss: float
    passes: int
    samples_processed: int
    seconds: float
    nbeta: float
    epsilon: float
    gamma: float
    n: int
    chains: int
    draws: int
    burnin: int
    batch_size: int
    n_params: int
    diverged: np.ndarray
    diverged_at: np.ndarray
    drift: float
    nll_scale: float | None
    vectorized: bool
    warnings: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """True when no chain diverged and the estimate is finite."""
        return bool(not self.diverged.any() and math.isfinite(self.mean))

    @property
    def llc_trace(self) -> np.ndarray:
        """Per-draw λ estimates nβ·(L_t − L_n(w*)), ``chains × draws``."""
        return self.nbeta * (self.loss_trace - self.init_loss)

    def to_dict(self) -> dict[str, Any]:
        """Scalars only (for CSV rows)."""
        return {
            "llc_mean": self.mean,
            "llc_std": self.std,
            "init_loss": self.init_loss,
            "passes": self.passes,
            "samples_processed": self.samples_processed,
            "seconds": self.seconds,
            "nbeta": self.nbeta,
            "epsilon": self.epsilon,
            "gamma": self.gamma,
            "n": self.n,
            "chains": self.chains,
            "draws": self.draws,
            "burnin": self.burnin,
            "batch_size": self.batch_size,
            "n_params": self.n_params,
            "n_diverged": int(self.diverged.sum()),
            "drift": self.drift,
            "nll_scale": self.nll_scale,
            "vectorized": self.vectorized,
            "warnings": "; ".join(self.warnings),
        }


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def _settings(
    x: torch.Tensor,
    *,
    n: int | None,
    nbeta: float | None,
    epsilon: float,
    gamma: float,
    chains: int,
    draws: int,
    burnin: int,
    batch_size: int | None,
    vectorize: Any,
    loss_fn: Any,
    diverge_threshold: float | None,
    d: int,
) -> Settings:
    fn = "estimate"
    epsilon = check_positive(fn, "epsilon", epsilon)
    gamma = check_real("llc.estimate", "gamma", gamma)
    if not (gamma >= 0 and math.isfinite(gamma)):
        raise ValueError(f"deadspec.llc.estimate: gamma must be >= 0 and finite, got {gamma!r}")
    chains, draws, burnin = _run_sizes(fn, chains, draws, burnin)
    if vectorize not in (True, False, "auto"):
        raise ValueError(
            f'deadspec.llc.estimate: vectorize must be True, False or "auto", got {vectorize!r}'
        )
    if not callable(loss_fn):
        raise TypeError(
            f"deadspec.llc.estimate: loss_fn must be callable, got {type(loss_fn).__name__}"
        )
    n_data = int(x.shape[0])
    n = check_positive(fn, "n", n_data if n is None else n, integer=True)
    if nbeta is None:
        nbeta = default_nbeta(n) if n >= 2 else 1.0
    nbeta = check_positive(fn, "nbeta", nbeta)
    b = n_data
    if batch_size is not None:
        b = check_positive(fn, "batch_size", batch_size, integer=True)
        if b > n_data:
            raise ValueError(
                f"deadspec.llc.estimate: batch_size must be <= the number of samples {n_data}, "
                f"got {b}"
            )
    threshold = 10.0 * d + 100.0 if diverge_threshold is None else diverge_threshold
    return Settings(epsilon, gamma, nbeta, n, chains, draws, int(burnin), b, threshold)


def _run_sizes(fn: str, chains: Any, draws: Any, burnin: Any) -> tuple[int, int, int]:
    """chains, draws, burnin checked as sizes (positive, ≥ 0 for burnin) and against the
    bounds of ``deadspec._limits`` (before anything is allocated)."""
    chains = check_positive(fn, "chains", chains, integer=True)
    draws = check_positive(fn, "draws", draws, integer=True)
    if isinstance(burnin, bool) or int(burnin) != burnin or burnin < 0:
        raise ValueError(f"deadspec.llc.{fn}: burnin must be an integer >= 0, got {burnin!r}")
    burnin = int(burnin)
    where = f"llc.{fn}"
    check_at_most(where, "chains", chains, MAX_CHAINS, "a few chains (4–16) are the usual run")
    check_at_most(
        where, "the SGLD steps chains × (burnin + draws)", chains * (burnin + draws), MAX_STEPS,
        "fewer chains, draws or burn-in steps",
    )  # fmt: skip
    check_at_most(
        where, "the recorded draws chains × draws", chains * draws, MAX_TRACE,
        "fewer chains or draws (the loss trace keeps every draw)",
    )  # fmt: skip
    return chains, draws, burnin


def estimate(
    model: nn.Module,
    data: Any,
    *,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    n: int | None = None,
    nbeta: float | None = None,
    epsilon: float,
    gamma: float,
    chains: int = 4,
    draws: int = 200,
    burnin: int = 100,
    batch_size: int | None = None,
    seed: int | None = None,
    vectorize: bool | str = "auto",
    check_nll: bool = True,
    diverge_threshold: float | None = None,
    warn: bool = True,
    progress: bool | None = None,
    group: Any = None,
) -> LLCResult:
    """Estimate the local learning coefficient at the model's current parameters w*.

    Parameters
    ----------
    model : torch.nn.Module
        The checkpoint; its parameters (those with ``requires_grad``) are w*. Not modified.
        Run in its current train/eval mode (call ``model.eval()`` for dropout/batch-norm).
    data : (inputs, targets) tuple of tensors or TensorDataset
        The n training samples (batch-first), moved to the model's device and, when floating,
        cast to its dtype.
    loss_fn : callable
        ``loss_fn(output, targets)`` → per-sample **negative log-likelihood** ``(B,)`` or its
        batch mean. Regression: :func:`gaussian_nll` with the known σ (not MSE). Classification:
        :func:`cross_entropy_nll`.
    n : int, optional
        Dataset size in nβ = n / log n; default the number of samples in ``data``.
    nbeta : float, optional
        Override nβ (e.g. devinterp's b / log b).
    epsilon : float
        SGLD step size ε (> 0).
    gamma : float
        Localisation strength γ (≥ 0).
    chains, draws, burnin : int
        Independent chains, recorded draws per chain, and burn-in steps before them. Bounded
        before anything is allocated (ValueError above): chains ≤ 10,000, chains × (burnin +
        draws) ≤ 10⁹ SGLD steps, chains × draws ≤ 2²⁷ recorded draws (``deadspec._limits``).
    batch_size : int, optional
        Samples per step; None for full batch.
    seed : int, optional
        Seed of the per-chain generators (reproducible runs); None draws fresh entropy.
    vectorize : bool or "auto"
        Run all chains in one ``torch.func.vmap``; "auto" falls back to a loop over chains if
        the model cannot be vmapped.
    check_nll : bool
        For float targets, compute the Gaussian scaling check ``nll_scale`` and warn when it is
        outside [2/3, 3/2].
    diverge_threshold : float, optional
        Per-draw nβ(L − L*) above which a chain counts as diverged; default ``10·d + 100``.
    warn : bool
        Also emit the result's warnings as :class:`LLCWarning`.
    progress : bool or None
        tqdm bars over steps (and chains when sequential); None: on when stderr is a tty.
    group : torch.distributed process group, optional
        Spread the chains over the group's ranks (chain c on rank c mod size), every rank
        passing the same model and data; each rank returns the whole result. Chain c keeps its
        generator, so the estimate is that of one process with the same ``seed`` (a None seed is
        rank 0's). Every rank must call it (a collective).

    Returns
    -------
    LLCResult

    Examples
    --------
    >>> import torch, deadspec.llc as llc
    >>> _ = torch.manual_seed(0)
    >>> x = torch.randn(2000, 4, dtype=torch.float64)
    >>> noise = torch.randn(2000, 1, dtype=torch.float64)
    >>> y = x @ torch.ones(4, 1, dtype=torch.float64) + 0.5 * noise
    >>> net = torch.nn.Linear(4, 1, bias=False).double()
    >>> with torch.no_grad():
    ...     _ = net.weight.copy_(torch.linalg.lstsq(x, y).solution.T)
    >>> res = llc.estimate(net, (x, y), loss_fn=llc.gaussian_nll(0.5), epsilon=1e-4,
    ...                    gamma=1.0, chains=4, draws=300, burnin=100, seed=0)
    >>> 1.5 < res.mean < 2.5   # d/2 = 2
    True
    """
    t0 = time.perf_counter()
    check_model(model, "llc.estimate")
    seed = check_seed("llc.estimate", seed)
    group = check_group("llc.estimate", group)
    x, y = unpack_data(data, "estimate")
    params0 = list(model.parameters())
    if not params0:
        raise ValueError("deadspec.llc.estimate: model has no parameters")
    device, dtype = params0[0].device, params0[0].dtype
    x, y = to_model(x, y, device, dtype)
    func = Functional(model, loss_fn) if callable(loss_fn) else None
    cfg = _settings(
        x,
        n=n,
        nbeta=nbeta,
        epsilon=epsilon,
        gamma=gamma,
        chains=chains,
        draws=draws,
        burnin=burnin,
        batch_size=batch_size,
        vectorize=vectorize,
        loss_fn=loss_fn,
        diverge_threshold=diverge_threshold,
        d=0 if func is None else func.d,
    )
    msgs: list[str] = []
    n_data = int(x.shape[0])
    init_loss, init_forwards = full_loss(model, loss_fn, x, y, cfg.batch_size)
    if not math.isfinite(init_loss):
        raise ValueError(f"deadspec.llc.estimate: the loss at w* is not finite, got {init_loss}")
    nll_scale = gaussian_scale(model, loss_fn, x, y, min(n_data, 4096)) if check_nll else None
    if nll_scale is not None and not (2 / 3 <= nll_scale <= 1.5):
        msgs.append(
            f"Gaussian NLL scale check: curvature·residual variance = {nll_scale:.3g}, expected "
            "≈ 1 (is loss_fn ||y - f||²/(2σ²) per sample with the true σ, not MSE? is w* a "
            "minimum?)"
        )
    named = dict(model.named_parameters())
    w_star = torch.cat([named[k].detach().reshape(-1) for k in func.names]).to(dtype)
    if group is None:
        run: Any = Chains(func, x, y, w_star, init_loss, cfg, seed)
        vectorized = run.run(vectorize, progress, msgs)
    else:
        run = run_spread(
            func, x, y, w_star, init_loss, cfg, seed, group,
            vectorize=vectorize, progress=progress, msgs=msgs,
        )
        vectorized = run.vectorized
    per_chain, mean, std, drift = summary(run, msgs)
    if warn:
        for m in msgs:
            warnings.warn(f"deadspec.llc.estimate: {m}", LLCWarning, stacklevel=2)
    return LLCResult(
        mean=mean,
        std=std,
        per_chain=per_chain,
        loss_trace=run.trace,
        init_loss=float(init_loss),
        passes=int(cfg.chains * run.steps + init_forwards),
        samples_processed=int(cfg.chains * run.steps * cfg.batch_size + n_data),
        seconds=time.perf_counter() - t0,
        nbeta=float(cfg.nbeta),
        epsilon=float(cfg.epsilon),
        gamma=float(cfg.gamma),
        n=int(cfg.n),
        chains=cfg.chains,
        draws=cfg.draws,
        burnin=cfg.burnin,
        batch_size=int(cfg.batch_size),
        n_params=func.d,
        diverged=run.diverged,
        diverged_at=run.diverged_at,
        drift=drift,
        nll_scale=nll_scale,
        vectorized=vectorized,
        warnings=tuple(msgs),
    )


def curvature_scale(
    model: nn.Module,
    data: Any,
    *,
    loss_fn: Callable,
    iters: int = 30,
    seed: int | None = 0,
) -> float:
    """Largest Hessian eigenvalue of L_n at w* (power iteration on Hessian-vector products).

    Used to scale the default calibration grid: SGLD on nβ·L_n is stable only for
    ε·nβ·h_max < 4 (the update multiplies a direction of curvature h by 1 − ε·nβ·h/2); its
    discretisation inflates that direction's posterior variance by 1/(1 − ε·nβ·h/4).
    ``iters`` (Hessian–vector products) is at most 10⁶.
    """
    fn = "llc.curvature_scale"
    check_model(model, fn)
    _check_loss_fn(fn, loss_fn)
    iters = check_integer(fn, "iters", iters, 1)
    seed = check_seed(fn, seed)
    check_at_most("llc.curvature_scale", "iters", iters, MAX_ITERS, "30 iterations are the default")
    x, y = unpack_data(data, "curvature_scale")
    p0 = next(iter(model.parameters()))
    x = x.to(p0.device)
    y = y.to(p0.device)
    if x.is_floating_point():
        x = x.to(p0.dtype)
    if y.is_floating_point():
        y = y.to(p0.dtype)
    func = Functional(model, loss_fn, fn)
    named = dict(model.named_parameters())
    w = torch.cat([named[k].detach().reshape(-1) for k in func.names])

    def f(flat: torch.Tensor) -> torch.Tensor:
        return func.loss(dict(zip(func.names, func.split(flat))), x, y)

    g = torch.Generator(device=w.device).manual_seed(0 if seed is None else int(seed))
    v = torch.randn(w.shape, generator=g, dtype=w.dtype, device=w.device)
    v = v / v.norm()
    wr = w.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(f(wr), wr, create_graph=True)
    lam = 0.0
    for _ in range(iters):
        # Hessian-vector product by double backward (no forward-mode AD needed)
        (hv,) = torch.autograd.grad(grad, wr, grad_outputs=v, retain_graph=True)
        hv = hv.detach()
        lam = float(torch.dot(hv, v))
        nrm = hv.norm()
        if not torch.isfinite(nrm) or float(nrm) == 0.0:
            break
        v = hv / nrm
    return abs(lam)


@dataclasses.dataclass(frozen=True)
class Calibration:
    """Result of :func:`calibrate`.

    Attributes
    ----------
    epsilon, gamma : float or None
        The chosen setting (None when no setting was stable).
    best : LLCResult or None
        The sweep's run at the chosen setting.
    sweep : list of dict
        One row per (ε, γ): epsilon, gamma, llc_mean, llc_std, n_diverged, drift, rel_drift,
        stable, plateau, chosen, reason, seconds, passes.
    results : dict
        (epsilon, gamma) → LLCResult.
    rule : str
        How the choice was made (or why nothing was chosen).
    passes, seconds : int, float
        Total cost of the sweep.
    h_max : float or None
        Curvature scale used for the default grid.
    """

    epsilon: float | None
    gamma: float | None
    best: LLCResult | None
    sweep: list[dict[str, Any]]
    results: Mapping[tuple[float, float], LLCResult]
    rule: str
    passes: int
    seconds: float
    h_max: float | None = None

    def plot(self, path: str | None = None, ax: Any = None) -> Any:
        """λ̂ against ε, one line per γ (error bars = chain std); chosen setting circled.

        ``path`` (optional) ends in ``.png`` or another format matplotlib writes; the file is
        written to a temporary name and renamed into place. Returns the figure.
        """
        if path is not None:
            check_output("llc.Calibration.plot", "path", path, figure=True)
        if ax is None:
            fig = agg_figure((5, 3.5))  # no pyplot, no global backend change
            ax = fig.add_subplot(1, 1, 1)
        else:
            fig = ax.figure
        gammas = sorted({r["gamma"] for r in self.sweep})
        for gm in gammas:
            rows = sorted((r for r in self.sweep if r["gamma"] == gm), key=lambda r: r["epsilon"])
            e = [r["epsilon"] for r in rows]
            m = [r["llc_mean"] for r in rows]
            s = [r["llc_std"] for r in rows]
            ax.errorbar(e, m, yerr=s, marker="o", capsize=2, label=f"γ={gm:.3g}")
            for r in rows:
                if not r["stable"]:
                    y = r["llc_mean"] if math.isfinite(r["llc_mean"]) else 0.0
                    ax.plot(r["epsilon"], y, "x", color="red")
        if self.epsilon is not None and self.best is not None:
            ax.plot(self.epsilon, self.best.mean, "o", ms=14, mfc="none", mec="k")
        ax.set_xscale("log")
        ax.set_xlabel("ε")
        ax.set_ylabel("λ̂")
        ax.legend(fontsize=7)
        if path is not None:
            fig.tight_layout()
            save_figure(fig, path, dpi=120)
        return fig


def _check_loss_fn(fn: str, loss_fn: Any) -> None:
    """TypeError unless ``loss_fn`` is callable."""
    if not callable(loss_fn):
        raise TypeError(f"deadspec.{fn}: loss_fn must be callable, got {type(loss_fn).__name__}")


def _check_calibrate(
    model: Any, loss_fn: Any, plateau_rtol: Any, drift_tol: Any, seed: Any
) -> None:
    """The argument types of :func:`calibrate` (before any SGLD run)."""
    fn = "llc.calibrate"
    check_model(model, fn)
    _check_loss_fn(fn, loss_fn)
    for name, value in (("plateau_rtol", plateau_rtol), ("drift_tol", drift_tol)):
        if not check_real(fn, name, value) >= 0:
            raise ValueError(f"deadspec.{fn}: {name} must be >= 0, got {value!r}")
    check_seed(fn, seed)


def _grid(name: str, values: Any) -> list[float]:
    """``epsilons``/``gammas`` of :func:`calibrate` as a sorted list of floats."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise TypeError(
            f"deadspec.llc.calibrate: {name} must be a sequence of numbers, got "
            f"{type(values).__name__}"
        )
    return sorted(check_real("llc.calibrate", f"{name} entries", v) for v in values)


def _default_grids(h_max: float, nbeta: float) -> tuple[list[float], list[float]]:
    p = max(nbeta * h_max, 1e-300)
    epsilons = [c / p for c in (0.05, 0.1, 0.2, 0.4, 0.8)]
    gammas = [p * c for c in (1e-5, 1e-4, 1e-3)]
    return epsilons, gammas


def calibrate(
    model: nn.Module,
    data: Any,
    *,
    loss_fn: Callable,
    epsilons: Sequence[float] | None = None,
    gammas: Sequence[float] | None = None,
    n: int | None = None,
    nbeta: float | None = None,
    chains: int = 4,
    draws: int = 200,
    burnin: int = 100,
    batch_size: int | None = None,
    seed: int | None = None,
    plateau_rtol: float = 0.1,
    drift_tol: float = 0.25,
    vectorize: bool | str = "auto",
    progress: bool | None = None,
    extend: int = 3,
) -> Calibration:
    """Sweep ε and γ and pick a setting by the stability rule below.

    Default grids (when ``epsilons``/``gammas`` are None) are scaled by the curvature
    P = nβ·h_max (h_max from :func:`curvature_scale`): ε ∈ {0.05, 0.1, 0.2, 0.4, 0.8}/P (the
    Euler–Maruyama step is stable for εP < 4 in the stiffest direction, where it inflates the
    posterior variance by 1/(1 − εP/4)) and γ ∈ {1e-5, 1e-4, 1e-3}·P (γ ≪ nβ·h for every
    regular direction that matters). That grid keeps εP ≤ 0.8, well inside the stability limit,
    so a divergence anywhere in it means h_max was under-estimated: h_max is the curvature *at*
    w*, and where the loss is nearly zero (a grokked or interpolating checkpoint) it can be far
    smaller than the curvature a chain meets a step away. Then (default ε grid only) the ε grid
    is moved down tenfold and swept again, until a sweep has no divergence or ``extend``
    moves are spent; every setting tried stays in ``sweep`` and the rule below runs over all
    of them (``rule`` says how far the grid was moved).

    Stability rule
    --------------
    1. *Stable*: no chain diverged (no NaN/Inf, no blow-up), λ̂ > 0, and the loss trace is
       stationary: |drift| ≤ ``drift_tol``·λ̂, drift = nβ·(mean of the second half of the draws
       − mean of the first half), averaged over chains.
    2. *Plateau*: at fixed γ, sort ε; a maximal run of consecutive stable ε whose neighbouring
       λ̂ agree within ``plateau_rtol`` (relative to their mean) is a plateau if it holds ≥ 2
       settings.
    3. *Pick*: the smallest γ that has a plateau (least localisation bias); at that γ the
       longest plateau (ties: larger ε), and in it the **middle ε** (the lower middle for an
       even count): the setting furthest from both failure modes, under-mixing at the small-ε
       end (a chain that has not left w* under-estimates) and the Euler–Maruyama bias at the
       large-ε end (over-estimates: the variance of a direction of curvature h is inflated by
       1/(1 − ε·nβ·h/4), its contribution ½ to λ̂ by ≈ ε·nβ·h/8).
       Fallback without any plateau: the stable setting of smallest γ, then smallest |drift|
       (reported in ``rule``). Nothing stable: ``epsilon = gamma = best = None``.

    Other parameters are as in :func:`estimate`; every setting runs with the same ``seed``.
    Sizes are checked first (ValueError, before the curvature scale is computed): at most
    10,000 settings ``len(epsilons) × len(gammas) × (1 + extend)`` (``extend`` counts only with
    the default ε grid) and 10⁹ SGLD steps over the whole sweep, besides :func:`estimate`'s
    bounds on each run.
    Returns a :class:`Calibration` (``.sweep`` for plotting, ``.plot()``).
    """
    t0 = time.perf_counter()
    _check_calibrate(model, loss_fn, plateau_rtol, drift_tol, seed)
    x, y = unpack_data(data, "calibrate")
    if isinstance(extend, bool) or not (isinstance(extend, int) and extend >= 0):
        raise ValueError(f"deadspec.llc.calibrate: extend must be an int >= 0, got {extend!r}")
    # sizes first: nothing (not even the curvature scale) runs for a sweep that cannot
    chains, draws, burnin = _run_sizes("calibrate", chains, draws, burnin)
    if epsilons is not None:
        epsilons = bounded_list("llc.calibrate", "epsilons", epsilons, MAX_GRID)
    if gammas is not None:
        gammas = bounded_list("llc.calibrate", "gammas", gammas, MAX_GRID)
    n_eps = 5 if epsilons is None else len(epsilons)
    n_gam = 3 if gammas is None else len(gammas)
    # the most settings the sweep may run: the grid, and the grid again for each move of ε
    settings = n_eps * n_gam * (1 + (extend if epsilons is None else 0))
    check_at_most(
        "llc.calibrate", "the settings len(epsilons) × len(gammas) × (1 + extend)", settings,
        MAX_GRID, "a smaller grid or extend",
    )  # fmt: skip
    check_at_most(
        "llc.calibrate", "the SGLD steps of the sweep (settings × chains × (burnin + draws))",
        settings * chains * (burnin + draws), MAX_STEPS, "a smaller grid or shorter runs",
    )  # fmt: skip
    nb = default_nbeta(int(n if n is not None else x.shape[0])) if nbeta is None else nbeta
    may_extend = epsilons is None and extend > 0  # only the curvature-scaled default ε grid
    h_max = None
    if epsilons is None or gammas is None:
        h_max = curvature_scale(model, (x, y), loss_fn=loss_fn)
        de, dg = _default_grids(h_max, nb)
        epsilons = de if epsilons is None else epsilons
        gammas = dg if gammas is None else gammas
    epsilons = _grid("epsilons", epsilons)
    gammas = _grid("gammas", gammas)
    if not epsilons or not gammas:
        raise ValueError("deadspec.llc.calibrate: epsilons and gammas must be non-empty")

    def run(e: float, g: float) -> LLCResult:
        return estimate(
            model, (x, y), loss_fn=loss_fn, n=n, nbeta=nb, epsilon=e, gamma=g, chains=chains,
            draws=draws, burnin=burnin, batch_size=batch_size, seed=seed, vectorize=vectorize,
            check_nll=False, warn=False, progress=False,
        )

    sweep = _Sweep(run, drift_tol, progress)
    base = list(epsilons)
    sweep.over([(e, g) for g in gammas for e in base])
    extended = 0
    while may_extend and sweep.diverged_last and extended < extend:
        # the default grid keeps εP ≤ 0.8: a divergence means h_max was under-estimated
        extended += 1
        lower = [e / 10.0**extended for e in base]
        epsilons = sorted(set(epsilons) | set(lower))
        sweep.over([(e, g) for g in gammas for e in lower])
    choice, rule = _choose(sweep.by, epsilons, gammas, plateau_rtol)
    if extended:
        rule += (
            f" [the default ε grid diverged (h_max under-estimated); moved down by a factor "
            f"10 {extended}×]"
        )
    if choice is not None:
        sweep.by[choice]["chosen"] = True
    return Calibration(
        epsilon=None if choice is None else choice[0],
        gamma=None if choice is None else choice[1],
        best=None if choice is None else sweep.results[choice],
        sweep=sweep.rows,
        results=sweep.results,
        rule=rule,
        passes=int(sum(r.passes for r in sweep.results.values())),
        seconds=time.perf_counter() - t0,
        h_max=h_max,
    )


class _Sweep:
    """The settings run so far: their results and one row each (stability verdict)."""

    def __init__(
        self, run: Callable[[float, float], LLCResult], drift_tol: float, progress: bool | None
    ) -> None:
        self.run, self.drift_tol, self.progress = run, drift_tol, progress
        self.results: dict[tuple[float, float], LLCResult] = {}
        self.rows: list[dict[str, Any]] = []
        self.by: dict[tuple[float, float], dict[str, Any]] = {}
        self.diverged_last = False

    def over(self, grid: list[tuple[float, float]]) -> None:
        """Run every (ε, γ) of ``grid``; ``diverged_last`` says whether any diverged."""
        start = len(self.rows)
        for e, g in progress_bar(grid, self.progress, "llc calibrate", len(grid)):
            res = self.run(e, g)
            self.results[(e, g)] = res
            row = self._row(e, g, res)
            self.rows.append(row)
            self.by[(e, g)] = row
        self.diverged_last = any(r["reason"] in ("diverged", "nan") for r in self.rows[start:])

    def _row(self, e: float, g: float, res: LLCResult) -> dict[str, Any]:
        lam = res.mean
        rel = abs(res.drift) / lam if (math.isfinite(lam) and lam > 0) else float("nan")
        reason = ""
        if res.diverged.any():
            reason = "diverged"
        elif not math.isfinite(lam):
            reason = "nan"
        elif lam <= 0:
            reason = "non-positive"
        elif not (rel <= self.drift_tol):
            reason = "drift"
        return {
            "epsilon": e, "gamma": g, "llc_mean": lam, "llc_std": res.std,
            "n_diverged": int(res.diverged.sum()), "drift": res.drift, "rel_drift": rel,
            "stable": reason == "", "plateau": False, "chosen": False,
            "reason": reason or "stable", "seconds": res.seconds, "passes": res.passes,
        }


def _plateaus(
    by: dict[tuple[float, float], dict[str, Any]], epsilons: list[float], g: float, rtol: float
) -> list[list[float]]:
    """Maximal runs (≥ 2) of consecutive stable ε at γ = g whose neighbouring λ̂ agree."""
    runs: list[list[float]] = []
    cur: list[float] = []
    for e in epsilons:
        r = by[(e, g)]
        if r["stable"] and cur:
            prev = by[(cur[-1], g)]["llc_mean"]
            if abs(r["llc_mean"] - prev) <= rtol * 0.5 * (r["llc_mean"] + prev):
                cur.append(e)
                continue
        if len(cur) >= 2:
            runs.append(cur)
        cur = [e] if r["stable"] else []
    if len(cur) >= 2:
        runs.append(cur)
    return runs


def _choose(
    by: dict[tuple[float, float], dict[str, Any]],
    epsilons: list[float],
    gammas: list[float],
    plateau_rtol: float,
) -> tuple[tuple[float, float] | None, str]:
    """The stability rule's pick (see :func:`calibrate`) and how it was made."""
    choice: tuple[float, float] | None = None
    rule = ""
    for g in gammas:
        runs = _plateaus(by, epsilons, g, plateau_rtol)
        for run_ in runs:
            for e in run_:
                by[(e, g)]["plateau"] = True
        if runs and choice is None:
            best_run = max(runs, key=lambda rr: (len(rr), rr[-1]))
            e_pick = best_run[(len(best_run) - 1) // 2]
            choice = (e_pick, g)
            rule = (
                f"smallest γ with a plateau (γ={g:.3g}; plateau ε ∈ [{best_run[0]:.3g}, "
                f"{best_run[-1]:.3g}], within {plateau_rtol:.0%}); middle ε={e_pick:.3g}"
            )
    if choice is not None:
        return choice, rule
    stable = [r for r in by.values() if r["stable"]]
    if not stable:
        return None, "no stable setting (every setting diverged, was non-positive or drifted)"
    r = min(stable, key=lambda r: (r["gamma"], abs(r["rel_drift"])))
    return (r["epsilon"], r["gamma"]), (
        "no plateau: fallback to the stable setting of smallest γ and smallest drift"
    )

