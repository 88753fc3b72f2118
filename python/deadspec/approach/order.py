"""The directional order of a candidate dead direction, from its directional-Fisher rate.

``F_u(t) = (1/N) Σ_i ⟨g_i(θ(t)), u⟩²`` along a path θ(t) (theory.md §1, §3), from one
Jacobian–vector product of the model per t (``torch.func.jvp`` of ``functional_call``), never a
per-sample gradient; slope s of ``log F_u`` against ``log t``, ``k̂ = 1 + s/2``,
``λ_dir = 1/(2k̂)``. The model's modes and buffers are restored.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from deadspec._dist import agreed, all_reduce_sum, check_group
from deadspec._engine.inputs import (
    ModelState,
    as_input_tuple,
    batch_slices,
    check_targets,
    make_generator,
)
from deadspec._engine.losses import infer_task, per_sample_loss, sample_targets
from deadspec._usercode import MODEL_FORWARD, user_code
from deadspec._util import check_seed
from deadspec._util import progress as progress_bar
from deadspec.approach._common import check_order_options, t_grid, unit_direction
from deadspec.ops import fit_slope

__all__ = ["DirectionOrder", "direction_order"]


@dataclasses.dataclass(frozen=True, repr=False)
class DirectionOrder:
    """Result of :func:`direction_order`.

    Attributes
    ----------
    k_hat : float
        Order estimate ``1 + slope/2`` (``inf`` for a flat gauge direction).
    lambda_dir : float
        Contribution ``1/(2·k_hat)`` to the learning coefficient (0 for a flat direction). NaN
        means undefined, not a dead direction: ``k_hat <= 0`` (F_u grows as t shrinks, slope
        <= -2) or ``1/(2·k_hat)`` is not finite.
    slope, r2 : float
        Fit of ``log F_u`` against ``log t`` over the t with ``F_u > 0`` (NaN if fewer than 2).
    kind : str
        ``"genuine"``, ``"flat-gauge"`` or ``"regular"``.
    t : np.ndarray
        The grid, ascending.
    fisher : np.ndarray
        ``F_u(t) = (1/N) Σ_i <g_i(θ(t)), u>²``.
    reference : np.ndarray
        The scale the flatness test compares with: the mean directional Fisher over random unit
        directions (a Hutchinson estimate of ``tr F / p``).
    stderr, intercept : float
        Of the fit.
    """

    k_hat: float
    lambda_dir: float
    slope: float
    r2: float
    kind: str
    t: np.ndarray
    fisher: np.ndarray
    reference: np.ndarray | None = None
    stderr: float = float("nan")
    intercept: float = float("nan")

    def __repr__(self) -> str:
        return (
            f"DirectionOrder(kind={self.kind!r}, k_hat={self.k_hat:.4g}, "
            f"lambda_dir={self.lambda_dir:.4g}, slope={self.slope:.4g}, r2={self.r2:.4f}, "
            f"t=[{self.t[0]:.3g}..{self.t[-1]:.3g}] ({len(self.t)} points))"
        )


def _path_params(
    model: nn.Module,
    theta0: dict[str, torch.Tensor],
    u: dict[str, torch.Tensor],
    path: Callable | None,
    tv: float,
    fn: str,
) -> dict[str, torch.Tensor]:
    if path is None:
        return {n: theta0[n] + tv * u[n] for n in theta0}
    with user_code(fn, f"path(t) at t={tv:g}"):
        d = path(tv)
    if not isinstance(d, Mapping):
        raise TypeError(
            f"deadspec.{fn}: path(t) must return a dict of parameters, got {type(d).__name__}"
        )
    unknown = [k for k in d if k not in theta0]
    if unknown:
        raise ValueError(
            f"deadspec.{fn}: path(t) returned names {unknown} that are not parameters; "
            f"parameters: {list(theta0)}"
        )
    merged = dict(theta0)
    for name, v in d.items():
        v = torch.as_tensor(v).detach().to(device=theta0[name].device, dtype=theta0[name].dtype)
        if v.shape != theta0[name].shape:
            raise ValueError(
                f"deadspec.{fn}: path(t)[{name!r}] must have shape {tuple(theta0[name].shape)}, "
                f"got {tuple(v.shape)}"
            )
        merged[name] = v
    return merged


class _Measure:
    """``Σ_i ⟨g_i(θ), u⟩²`` over this process's data (N·F_u), from JVPs of the model's output."""

    def __init__(
        self,
        model: nn.Module,
        tup: tuple[torch.Tensor, ...],
        slices: list[slice],
        n: int,
        *,
        targets: torch.Tensor | None,
        loss_fn: Callable | None,
        labels: str,
        task: str | None,
        gen: torch.Generator | None,
        fn: str,
    ) -> None:
        self.model, self.tup, self.slices, self.n = model, tup, slices, n
        self.targets, self.loss_fn, self.labels = targets, loss_fn, labels
        self.task, self.gen, self.fn = task, gen, fn

    def total(self, theta: dict[str, torch.Tensor], tangent: dict[str, torch.Tensor]) -> float:
        """``Σ_i ⟨g_i(θ), u⟩²`` over this process's samples (divided by N: ``F_u``)."""
        from torch.func import functional_call, jvp

        total = 0.0
        for k, sl in enumerate(self.slices):
            args = tuple(x[sl] for x in self.tup)
            what = f"{MODEL_FORWARD} on batch {k} of the inputs (rows {sl.start}:{sl.stop})"

            def forward(p: dict[str, torch.Tensor], args=args, what=what) -> Any:
                with user_code(self.fn, what):
                    return functional_call(self.model, p, args)

            out, v = jvp(forward, (theta,), (tangent,))
            if not isinstance(out, torch.Tensor):
                raise TypeError(
                    f"deadspec.{self.fn}: the model output must be a tensor, got "
                    f"{type(out).__name__}"
                )
            q = self._per_sample(out, v, sl)
            if not bool(torch.isfinite(q).all()):
                raise ValueError(
                    f"deadspec.{self.fn}: the directional derivatives must be finite, got NaN/Inf"
                )
            total += float(q.sum())
        return total

    def _per_sample(self, out: torch.Tensor, v: torch.Tensor, sl: slice) -> torch.Tensor:
        """⟨g_i, u⟩² per sample (its expectation over the predictive, for "expected")."""
        b = out.shape[0]
        if self.labels == "expected":
            vd = v.detach().double()
            if self.task == "regression":
                return vd.pow(2).reshape(b, -1).sum(1)
            # Var_p(v) per position = vᵀ(diag p − ppᵀ)v, written centred so that a constant
            # logit shift gives 0 up to round-off of v only.
            p = torch.softmax(out.detach().double(), dim=-1)
            vbar = (p * vd).sum(-1, keepdim=True)
            return (p * (vd - vbar).pow(2)).sum(-1).reshape(b, -1).sum(1)
        if self.labels == "observed":
            y = self.targets[sl]
        else:
            y = sample_targets(out, self.task, self.gen)
        out_d = out.detach()
        _, dl = _loss_jvp(out_d, y, v.detach(), self.loss_fn, self.fn)
        return dl.detach().double().pow(2)


def _loss_jvp(
    out: torch.Tensor, y: torch.Tensor, v: torch.Tensor, loss_fn: Callable | None, fn: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-sample losses, their directional derivatives along v in the output)."""
    from torch.func import jvp

    return jvp(lambda o: per_sample_loss(o, y, loss_fn, fn), (out,), (v,))


def direction_order(
    model: nn.Module,
    inputs: torch.Tensor | Sequence[torch.Tensor],
    direction: Mapping[str, torch.Tensor] | torch.Tensor | np.ndarray,
    *,
    targets: torch.Tensor | None = None,
    loss_fn: Callable | None = None,
    t: Sequence[float] | np.ndarray | None = None,
    path: Callable[[float], Mapping[str, torch.Tensor]] | None = None,
    labels: str = "expected",
    task: str | None = None,
    method: str = "ols",
    slope_tol: float = 0.5,
    gauge_rtol: float = 1e-8,
    gauge_atol: float = 0.0,
    n_probes: int = 2,
    seed: int | None = 0,
    batch_size: int | None = None,
    progress: bool | None = False,
    group: Any = None,
) -> DirectionOrder:
    """KL order of a candidate dead direction from its directional-Fisher rate.

    ``F_u(t) = (1/N) Σ_i <g_i(θ(t)), u>²`` with ``g_i`` the gradient of sample i's loss, from
    one Jacobian–vector product of the model per t (``torch.func.jvp`` of
    ``functional_call``), never a per-sample gradient. Slope s of ``log F_u`` vs ``log t``,
    ``k̂ = 1 + s/2``, ``λ_dir = 1/(2k̂)`` (theory.md §1, §3; NaN, undefined, where ``k̂ <= 0``
    or ``1/(2k̂)`` is not finite).

    Parameters
    ----------
    model : torch.nn.Module
        Sits at (or near) the singular point θ; left unchanged.
    inputs : Tensor or tuple of Tensor
        Batch-first inputs, N samples.
    direction : dict or 1-D tensor/array
        ``{name: tensor}`` over ``named_parameters()`` (missing names are zero), or a flat
        vector of length Σ numel in ``named_parameters()`` order. Normalised to unit norm.
    targets, loss_fn
        Per-sample losses as in :func:`deadspec.read` (used by ``labels="observed"`` and
        ``"sampled"``; for ``"expected"`` only to infer the task).
    t : array-like, optional
        Positive grid, default ``np.logspace(-3, -1, 7)``.
    path : callable, optional
        ``path(t) -> {name: tensor}`` giving θ(t) (missing names keep the model's values);
        default ``θ(t) = θ + t·u``.
    labels : {"expected", "observed", "sampled"}
        ``"expected"`` (default): the Fisher metric itself, i.e. the expectation over the
        model's predictive distribution in closed form: ``F_u = mean_i ||J_i u||²`` for
        regression (Gaussian, σ = 1) and ``mean_i Σ_positions Var_{p_i}(J_i u)`` for
        classification (softmax logits or log-probabilities). ``"observed"``: the empirical
        Fisher with the given targets (near a fit it can vanish faster, e.g. slope 6 instead of
        2 for ``y = w²x``). ``"sampled"``: labels drawn from the model at each t.
    task : {"classification", "regression"}, optional
        Inferred from the targets' dtype or the loss_fn type when None.
    method : {"ols", "theil-sen"}
        Passed to :func:`deadspec.fit_slope`.
    slope_tol : float
        ``"genuine"`` when the slope exceeds it (k̂ > 1 + slope_tol/2), else ``"regular"``.
    gauge_rtol, gauge_atol : float
        ``"flat-gauge"`` when ``F_u(t) <= gauge_rtol·reference(t) + gauge_atol`` at every t;
        ``reference(t)`` is the mean directional Fisher over ``n_probes`` random unit
        directions (seeded by ``seed``), a Hutchinson estimate of ``tr F(θ(t)) / p``.
        A flat direction gets ``k_hat = inf`` and ``lambda_dir = 0``.
    n_probes : int
        Number of random reference directions (≥ 1).
    seed : int or None
        Seed of the probes and of sampled labels.
    batch_size : int, optional
        Evaluate in batches of this size.
    progress : bool or None
        tqdm bar over the t grid.
    group : torch.distributed process group, optional
        Measure over the group's ranks (a collective: every rank calls it with its own shard
        of the batch as ``inputs``/``targets``, and the same model, direction and other
        arguments): each rank sums ``⟨g_i, u⟩²`` (and the probes' terms) over its shard, and
        one ``all_reduce`` SUM of those sums and of the sample counts gives every rank
        ``F_u(t)`` and ``reference(t)`` of the concatenated batch, so the result is the
        single-process one on the whole batch. The probes come from ``seed`` and are the same
        on every rank; ``labels="sampled"`` draws each rank's labels from its own generator
        (seeded by ``seed``), as :func:`deadspec.read` does. A different ``t``, ``labels``,
        ``task``, ``n_probes`` or ``seed`` on some rank raises ValueError on every rank, as
        does an error on any rank (no rank is left waiting). The all_reduce tensor lives on
        the inputs' device (CUDA inputs for NCCL).

    Returns
    -------
    DirectionOrder

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> import deadspec
    >>> class Square(nn.Module):  # y = w² x, at the singular point w = 0
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.w = nn.Parameter(torch.zeros((), dtype=torch.float64))
    ...     def forward(self, x):
    ...         return self.w**2 * x
    >>> x = torch.randn(64, 1, dtype=torch.float64)
    >>> res = deadspec.direction_order(Square(), x, {"w": torch.tensor(1.0)}, task="regression")
    >>> res.kind, round(res.k_hat, 6), round(res.lambda_dir, 6)
    ('genuine', 2.0, 0.25)
    """
    fn = "direction_order"
    group = check_group(fn, group)
    with agreed(fn, group) as same:  # (over a group: every rank passes its checks, or none)
        check_order_options(
            fn, model, labels, method, n_probes, slope_tol, gauge_rtol, gauge_atol, path
        )
        seed = check_seed(fn, seed)
        tup, n = as_input_tuple(inputs, fn)
        slices = batch_slices(n, batch_size, fn)
        grid = t_grid(t, fn)
        if targets is not None:
            check_targets(targets, n, fn)
        if labels == "observed":
            if targets is None:
                raise ValueError(
                    f"deadspec.{fn}: labels='observed' needs targets, got targets=None"
                )
        else:
            task = infer_task(targets, loss_fn, task, fn)
        u = unit_direction(model, direction, fn)
        # the probes come from `seed`: equal on every rank, so are the reference directions
        same.update(t=grid.tolist(), labels=labels, task=task, n_probes=int(n_probes), seed=seed)

    theta0 = {name: p.detach() for name, p in model.named_parameters()}
    pgen = torch.Generator().manual_seed(0 if seed is None else int(seed))
    probes = []
    for _ in range(int(n_probes)):
        raw = {
            name: torch.randn(p.shape, generator=pgen, dtype=torch.float64)
            for name, p in theta0.items()
        }
        probes.append(unit_direction(model, raw, fn))
    measure = _Measure(
        model,
        tup,
        slices,
        n,
        targets=targets,
        loss_fn=loss_fn,
        labels=labels,
        task=task,
        gen=make_generator(seed, tup[0].device) if labels == "sampled" else None,
        fn=fn,
    )
    with agreed(fn, group):  # (a failure on one rank's shard raises on every rank)
        sums = _sweep(measure, model, (theta0, u, probes), path, grid, progress, fn)
    count = float(n)
    if group is not None:  # Σ over the ranks of the shards' sums and counts: the whole batch's
        total = all_reduce_sum(np.append(sums.ravel(), count), group, tup[0].device)
        sums, count = total[:-1].reshape(sums.shape), float(total[-1])
    fisher = sums[:, 0] / count
    reference = np.array([np.mean(row / count) for row in sums[:, 1:]])
    return _classify(grid, fisher, reference, method, slope_tol, gauge_rtol, gauge_atol, fn)


def _sweep(
    measure: _Measure,
    model: nn.Module,
    directions: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], list[dict]],
    path: Callable | None,
    grid: np.ndarray,
    progress: bool | None,
    fn: str,
) -> np.ndarray:
    """Per t (rows): ``Σ_i ⟨g_i, u⟩²`` over this process's samples, then the same along each
    probe (columns ``1 + n_probes``); ``directions`` = (θ₀, u, probes). The model's modes and
    buffers are restored."""
    theta0, u, probes = directions
    sums = np.empty((len(grid), 1 + len(probes)))
    snapshot = ModelState(model)
    try:
        with warnings.catch_warnings():
            # torch's first forward-AD call loads jvp decompositions through torch.jit.script,
            # which warns about its own deprecation (torch >= 2.9); not the user's concern.
            for category in (DeprecationWarning, FutureWarning):  # torch 2.9+ / 2.14+
                warnings.filterwarnings(
                    "ignore", message=r".*torch\.jit\.script.* is deprecated", category=category
                )
            for i, tv in enumerate(progress_bar(grid, progress, f"deadspec.{fn}", len(grid))):
                theta = _path_params(model, theta0, u, path, float(tv), fn)
                sums[i] = [measure.total(theta, d) for d in (u, *probes)]
    finally:
        snapshot.restore()
    return sums


def _classify(
    grid: np.ndarray,
    fisher: np.ndarray,
    reference: np.ndarray,
    method: str,
    slope_tol: float,
    gauge_rtol: float,
    gauge_atol: float,
    fn: str,
) -> DirectionOrder:
    """Fit ``log F_u`` against ``log t`` and classify: flat gauge, genuine or regular."""
    flat = bool(np.all(fisher <= gauge_rtol * reference + gauge_atol))
    pos = fisher > 0
    slope = r2 = stderr = intercept = float("nan")
    if pos.sum() >= 2:
        fit = fit_slope(np.log(grid[pos]), np.log(fisher[pos]), method=method)
        slope, r2 = float(fit.slope), float(fit.r2)
        stderr, intercept = float(fit.stderr), float(fit.intercept)
    if flat:
        kind, k_hat, lam = "flat-gauge", float("inf"), 0.0
    else:
        if pos.sum() < 2:
            raise ValueError(
                f"deadspec.{fn}: F_u(t) > 0 at fewer than 2 grid points ({fisher.tolist()}); "
                f"cannot fit a slope"
            )
        kind = "genuine" if slope > slope_tol else "regular"
        k_hat = 1.0 + slope / 2.0
        lam = 1.0 / (2.0 * k_hat) if k_hat > 0 else float("nan")
        if not math.isfinite(lam):  # undefined: not a dead direction (the documented NaN)
            lam = float("nan")
    return DirectionOrder(
        k_hat=k_hat,
        lambda_dir=lam,
        slope=slope,
        r2=r2,
        kind=kind,
        t=grid,
        fisher=fisher,
        reference=reference,
        stderr=stderr,
        intercept=intercept,
    )
