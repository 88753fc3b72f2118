"""Rates of approach to a singular point: approach slopes and directional orders.

Contract
--------
- :func:`approach_slope` scales the dead components of one ``nn.Linear`` layer by t over a log
  grid, reads a Gram at each t (the activation Gram of the layer's output, or the layer's
  per-sample-gradient Fisher-Gram), keeps the active set fixed at its size at the largest t and
  fits ``log det⁺`` and ``log λ_min`` against ``log t`` (theory.md §3). It works on a
  ``copy.deepcopy`` of the model: the caller's model is never modified.
- :func:`direction_order` measures the directional Fisher ``F_u(t)`` along a path with
  Jacobian–vector products only (``torch.func.jvp`` of ``torch.func.functional_call``), fits its
  log–log slope and classifies the direction. The model's modes and buffers are restored.
- Models run in their current train/eval mode, as in :func:`deadspec.read`.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from deadspec.ops import fit_slope, logdet_top
from deadspec.reading import (
    _activation_spectrum,
    _as_input_tuple,
    _batch_slices,
    _collect,
    _infer_task,
    _make_generator,
    _ModelState,
    _names_list,
    _per_sample_loss,
    _progress,
    _sample_targets,
    read,
)

__all__ = [
    "ApproachSlope",
    "DirectionClass",
    "DirectionOrder",
    "approach_slope",
    "classify_directions",
    "direction_order",
    "gauge_directions",
]

_SIDES = ("activation", "fisher")
_METHODS = ("ols", "theil-sen")
_DIR_LABELS = ("expected", "observed", "sampled")


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, repr=False)
class ApproachSlope:
    """Result of :func:`approach_slope`.

    Attributes
    ----------
    slope, intercept, r2, stderr : float
        Least-squares fit of ``log det⁺(G(t))`` (fixed active set) against ``log t``.
    lambda_min_slope, lambda_min_r2 : float
        Fit of ``log λ_min(t)`` (the ``active``-th largest eigenvalue) against ``log t``.
    t : np.ndarray
        The grid, ascending.
    logdet_plus, lambda_min : np.ndarray
        The readings at each t.
    active : int
        Size of the fixed active set (taken at the largest t).
    units : tuple of int or None
        The scaled hidden units, or None when eigen-directions of the dead cluster were scaled.
    layer : str
        The scaled layer (the one whose Gram is read).
    side : str
        ``"activation"`` or ``"fisher"``.
    next_layer : str or None
        The layer whose input columns were scaled too (None if there was none).
    directions : np.ndarray
        ``h×r`` orthonormal columns spanning the scaled directions of the layer's output.
    """

    slope: float
    intercept: float
    r2: float
    stderr: float
    lambda_min_slope: float
    lambda_min_r2: float
    t: np.ndarray
    logdet_plus: np.ndarray
    lambda_min: np.ndarray
    active: int
    units: tuple[int, ...] | None
    layer: str
    side: str
    next_layer: str | None = None
    directions: np.ndarray | None = None

    @property
    def n_directions(self) -> int:
        """Number r of scaled directions."""
        return 0 if self.directions is None else int(self.directions.shape[1])

    def __repr__(self) -> str:
        return (
            f"ApproachSlope(layer={self.layer!r}, side={self.side!r}, r={self.n_directions}, "
            f"slope={self.slope:.4g} (r2={self.r2:.4f}, stderr={self.stderr:.2g}), "
            f"lambda_min_slope={self.lambda_min_slope:.4g} (r2={self.lambda_min_r2:.4f}), "
            f"active={self.active}, t=[{self.t[0]:.3g}..{self.t[-1]:.3g}] ({len(self.t)} points))"
        )


@dataclasses.dataclass(frozen=True, repr=False)
class DirectionOrder:
    """Result of :func:`direction_order`.

    Attributes
    ----------
    k_hat : float
        Order estimate ``1 + slope/2`` (``inf`` for a flat gauge direction).
    lambda_dir : float
        Contribution ``1/(2·k_hat)`` to the learning coefficient (0 for a flat direction).
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


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _t_grid(t: Any, fn: str) -> np.ndarray:
    if t is None:
        return np.logspace(-3, -1, 7)
    arr = np.asarray(t, dtype=np.float64)
    if arr.ndim != 1 or arr.size < 2:
        raise ValueError(
            f"deadspec.{fn}: t must be a 1-D grid of at least 2 values, got shape {arr.shape}"
        )
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(f"deadspec.{fn}: t must hold finite positive values, got {arr.tolist()}")
    arr = np.sort(arr)
    if np.any(np.diff(arr) == 0):
        raise ValueError(f"deadspec.{fn}: t must hold distinct values, got {arr.tolist()}")
    return arr


def _linear_named(model: nn.Module, name: Any, what: str, fn: str) -> nn.Linear:
    named = dict(model.named_modules())
    if not isinstance(name, str):
        raise TypeError(
            f"deadspec.{fn}: {what} must be a module name (str), got {type(name).__name__}"
        )
    if name not in named:
        raise ValueError(
            f"deadspec.{fn}: {what} {name!r} is not a module name of the model; "
            f"available names: {_names_list(named)}"
        )
    mod = named[name]
    if not isinstance(mod, nn.Linear):
        raise TypeError(
            f"deadspec.{fn}: {what} {name!r} must be an nn.Linear, got {type(mod).__name__}"
        )
    return mod


def _default_next_layer(model: nn.Module, layer: str, width: int) -> str | None:
    after = False
    for name, mod in model.named_modules():
        if name == layer:
            after = True
            continue
        if after and isinstance(mod, nn.Linear) and mod.in_features == width:
            return name
    return None


def _check_units(units: Any, width: int, fn: str) -> tuple[int, ...]:
    if isinstance(units, (int, np.integer)) and not isinstance(units, bool):
        units = [units]
    try:
        vals = [int(u) for u in units]
    except TypeError:
        raise TypeError(
            f"deadspec.{fn}: units must be a sequence of int, got {type(units).__name__}"
        ) from None
    if not vals:
        raise ValueError(f"deadspec.{fn}: units must name at least one hidden unit, got []")
    if len(set(vals)) != len(vals):
        raise ValueError(f"deadspec.{fn}: units must be distinct, got {vals}")
    bad = [u for u in vals if not 0 <= u < width]
    if bad:
        raise ValueError(f"deadspec.{fn}: units must lie in [0, {width}), got {bad}")
    return tuple(vals)


# --------------------------------------------------------------------------------------------
# approach_slope
# --------------------------------------------------------------------------------------------


def approach_slope(
    model: nn.Module,
    inputs: torch.Tensor | Sequence[torch.Tensor],
    *,
    layer: str,
    units: Sequence[int] | None = None,
    t: Sequence[float] | np.ndarray | None = None,
    side: str = "activation",
    targets: torch.Tensor | None = None,
    loss_fn: Callable | None = None,
    next_layer: str | None = None,
    method: str = "ols",
    center: bool = False,
    gap_ratio: float = 1e3,
    batch_size: int | None = None,
    progress: bool | None = False,
) -> ApproachSlope:
    """Approach slope of log det⁺ of a layer's Gram as its dead components are scaled by t.

    Parameters
    ----------
    model : torch.nn.Module
        The checkpoint; not modified (the sweep runs on a ``copy.deepcopy``).
    inputs : Tensor or tuple of Tensor
        Batch-first inputs.
    layer : str
        ``named_modules()`` name of an ``nn.Linear`` whose hidden units (rows of its weight and
        bias entries) are scaled.
    units : sequence of int, optional
        Hidden units to scale. None: take the dead cluster of the layer's activation Gram
        (feature side, ``h×h``): the ``dead_count`` eigenvectors U at the bottom of the active
        set, and scale along them: ``W1 <- (I + (t-1)UUᵀ)W1``, ``b1`` likewise,
        ``W2 <- W2(I + (t-1)UUᵀ)``. Raises ``ValueError`` if ``dead_count == 0``.
    t : array-like, optional
        Positive grid; default ``np.logspace(-3, -1, 7)``.
    side : {"activation", "fisher"}
        ``"activation"``: the Gram of the layer's output (pre-activation of an ``nn.Linear``).
        ``"fisher"``: the ``N×N`` per-sample-gradient Fisher-Gram of the layer's own weight
        (and bias), which needs ``targets`` (observed labels) and optionally ``loss_fn``, as in
        :func:`deadspec.read`. The dead cluster (``units=None``) is always found on the
        activation side.
    targets, loss_fn
        As in :func:`deadspec.read` (Fisher side only).
    next_layer : str, optional
        Layer whose input columns are scaled with the units; default the next ``nn.Linear``
        after ``layer`` in registration order with ``in_features == layer.out_features``
        (None if there is none).
    method : {"ols", "theil-sen"}
        Passed to :func:`deadspec.fit_slope`.
    center : bool
        Centre the activation Gram.
    gap_ratio : float
        Gap ratio used to find the dead cluster when ``units=None``.
    batch_size : int, optional
        Stream each reading in batches.
    progress : bool or None
        tqdm bar over the t grid.

    Returns
    -------
    ApproachSlope
        Prediction (theory.md §3): slope ``2r`` for r dead units on the activation side, and a
        λ_min slope of 2 whatever r.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> import deadspec
    >>> _ = torch.manual_seed(0)
    >>> net = nn.Sequential(nn.Linear(8, 6, bias=False), nn.Linear(6, 5, bias=False)).double()
    >>> x = torch.randn(200, 8, dtype=torch.float64)
    >>> res = deadspec.approach_slope(net, x, layer="0", units=[0, 1])
    >>> round(res.slope, 2), round(res.lambda_min_slope, 1)
    (4.0, 2.0)
    """
    fn = "approach_slope"
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"deadspec.{fn}: model must be a torch.nn.Module, got {type(model).__name__}"
        )
    if side not in _SIDES:
        raise ValueError(f"deadspec.{fn}: side must be one of {_SIDES}, got {side!r}")
    if method not in _METHODS:
        raise ValueError(f"deadspec.{fn}: method must be one of {_METHODS}, got {method!r}")
    lin = _linear_named(model, layer, "layer", fn)
    width = lin.out_features
    if next_layer is None:
        next_name = _default_next_layer(model, layer, width)
    else:
        nxt = _linear_named(model, next_layer, "next_layer", fn)
        if next_layer == layer:
            raise ValueError(
                f"deadspec.{fn}: next_layer must differ from layer, got {next_layer!r}"
            )
        if nxt.in_features != width:
            raise ValueError(
                f"deadspec.{fn}: next_layer {next_layer!r} must have in_features == "
                f"{width} (layer {layer!r} out_features), got {nxt.in_features}"
            )
        next_name = next_layer
    grid = _t_grid(t, fn)
    unit_tuple = None if units is None else _check_units(units, width, fn)

    work = copy.deepcopy(model)
    w_lin: nn.Linear = work.get_submodule(layer)
    w_next: nn.Linear | None = None if next_name is None else work.get_submodule(next_name)

    if unit_tuple is None:
        states, _ = _collect(
            work,
            inputs,
            [layer],
            targets=None,
            loss_fn=None,
            fisher=False,
            labels="observed",
            task=None,
            batch_size=batch_size,
            pool="none",
            seed=None,
            progress=False,
            route="feature",
            fn=fn,
        )
        spec0 = _activation_spectrum(states[0], center, None, gap_ratio, vectors=True)
        if spec0.dead_count == 0:
            raise ValueError(
                f"deadspec.{fn}: the activation spectrum of layer {layer!r} has no dead cluster "
                f"(dead_count=0 at gap_ratio={gap_ratio:g}); pass units= to choose the hidden "
                f"units to scale"
            )
        hi = spec0.active
        u_mat = np.asarray(spec0.eigenvectors, dtype=np.float64)[:, hi - spec0.dead_count : hi]
    else:
        u_mat = np.eye(width)[:, list(unit_tuple)]

    with torch.no_grad():
        w1_0 = w_lin.weight.detach().clone()
        b1_0 = None if w_lin.bias is None else w_lin.bias.detach().clone()
        w2_0 = None if w_next is None else w_next.weight.detach().clone()
    u_t = torch.as_tensor(u_mat, dtype=torch.float64, device=w1_0.device)

    def set_scale(tv: float) -> None:
        with torch.no_grad():
            if unit_tuple is not None:
                idx = torch.tensor(unit_tuple, device=w1_0.device)
                w1 = w1_0.clone()
                w1[idx] = w1_0[idx] * tv
                w_lin.weight.copy_(w1)
                if b1_0 is not None:
                    b1 = b1_0.clone()
                    b1[idx] = b1_0[idx] * tv
                    w_lin.bias.copy_(b1)
                if w2_0 is not None:
                    w2 = w2_0.clone()
                    w2[:, idx] = w2_0[:, idx] * tv
                    w_next.weight.copy_(w2)
                return
            p = torch.eye(width, dtype=torch.float64, device=w1_0.device) + (tv - 1.0) * (
                u_t @ u_t.T
            )
            w_lin.weight.copy_(p @ w1_0.double())
            if b1_0 is not None:
                w_lin.bias.copy_(p @ b1_0.double())
            if w2_0 is not None:
                w_next.weight.copy_(w2_0.double() @ p)

    eigs: list[np.ndarray] = []
    for tv in _progress(grid, progress, f"deadspec.{fn}", total=len(grid)):
        set_scale(float(tv))
        r = read(
            work,
            inputs,
            targets=targets,
            loss_fn=loss_fn,
            layers=[layer],
            fisher=(side == "fisher"),
            center=center,
            batch_size=batch_size,
            gap_ratio=gap_ratio,
        )
        spec = r[layer].activation if side == "activation" else r[layer].fisher
        eigs.append(np.asarray(spec.eigenvalues, dtype=np.float64))
        last_active = spec.active
    k = int(last_active)  # the largest t is read last
    if k == 0:
        raise ValueError(
            f"deadspec.{fn}: the {side} Gram of layer {layer!r} is zero at t={grid[-1]:g}"
        )
    logdet = np.empty(len(grid))
    lam = np.empty(len(grid))
    for i, ev in enumerate(eigs):
        if ev[k - 1] <= 0:
            raise ValueError(
                f"deadspec.{fn}: the {k}-th eigenvalue of the {side} Gram is 0 at t={grid[i]:g}; "
                f"use a larger t or float64"
            )
        logdet[i] = logdet_top(ev, k)
        lam[i] = ev[k - 1]
    x = np.log(grid)
    fit = fit_slope(x, logdet, method=method)
    fit_min = fit_slope(x, np.log(lam), method=method)
    return ApproachSlope(
        slope=float(fit.slope),
        intercept=float(fit.intercept),
        r2=float(fit.r2),
        stderr=float(fit.stderr),
        lambda_min_slope=float(fit_min.slope),
        lambda_min_r2=float(fit_min.r2),
        t=grid,
        logdet_plus=logdet,
        lambda_min=lam,
        active=k,
        units=unit_tuple,
        layer=layer,
        side=side,
        next_layer=next_name,
        directions=u_mat,
    )


# --------------------------------------------------------------------------------------------
# direction_order
# --------------------------------------------------------------------------------------------


def _unit_direction(model: nn.Module, direction: Any, fn: str) -> dict[str, torch.Tensor]:
    params = dict(model.named_parameters())
    if not params:
        raise ValueError(f"deadspec.{fn}: the model has no parameters")
    out: dict[str, torch.Tensor] = {}
    if isinstance(direction, Mapping):
        unknown = [k for k in direction if k not in params]
        if unknown:
            raise ValueError(
                f"deadspec.{fn}: direction names {unknown} are not parameters of the model; "
                f"parameters: {list(params)}"
            )
        for name, p in params.items():
            if name in direction:
                v = torch.as_tensor(direction[name])
                if tuple(v.shape) != tuple(p.shape):
                    raise ValueError(
                        f"deadspec.{fn}: direction[{name!r}] must have shape {tuple(p.shape)}, "
                        f"got {tuple(v.shape)}"
                    )
                out[name] = v.detach().to(device=p.device, dtype=torch.float64)
            else:
                out[name] = torch.zeros(p.shape, dtype=torch.float64, device=p.device)
    else:
        v = torch.as_tensor(direction).detach()
        total = sum(p.numel() for p in params.values())
        if v.ndim != 1 or v.numel() != total:
            raise ValueError(
                f"deadspec.{fn}: a flat direction must be a 1-D vector of length {total} "
                f"(sum of parameter sizes, named_parameters() order), got shape {tuple(v.shape)}"
            )
        off = 0
        for name, p in params.items():
            out[name] = (
                v[off : off + p.numel()].reshape(p.shape).to(device=p.device, dtype=torch.float64)
            )
            off += p.numel()
    for name, v in out.items():
        if v.is_complex() or not bool(torch.isfinite(v).all()):
            raise ValueError(f"deadspec.{fn}: direction[{name!r}] must be real and finite")
    norm = math.sqrt(sum(float(v.pow(2).sum()) for v in out.values()))
    if norm == 0.0:
        raise ValueError(f"deadspec.{fn}: direction must be non-zero, got norm 0")
    return {name: (v / norm).to(params[name].dtype) for name, v in out.items()}


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


def _directional_fisher(
    model: nn.Module,
    theta: dict[str, torch.Tensor],
    tangent: dict[str, torch.Tensor],
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
) -> float:
    from torch.func import functional_call, jvp

    total = 0.0
    for sl in slices:
        args = tuple(x[sl] for x in tup)
        out, v = jvp(lambda p, args=args: functional_call(model, p, args), (theta,), (tangent,))
        if not isinstance(out, torch.Tensor):
            raise TypeError(
                f"deadspec.{fn}: the model output must be a tensor, got {type(out).__name__}"
            )
        b = out.shape[0]
        if labels == "expected":
            vd = v.detach().double()
            if task == "regression":
                q = vd.pow(2).reshape(b, -1).sum(1)
            else:
                # Var_p(v) per position = vᵀ(diag p − ppᵀ)v, written centred so that a constant
                # logit shift gives 0 up to round-off of v only.
                p = torch.softmax(out.detach().double(), dim=-1)
                vbar = (p * vd).sum(-1, keepdim=True)
                q = (p * (vd - vbar).pow(2)).sum(-1).reshape(b, -1).sum(1)
        else:
            y = targets[sl] if labels == "observed" else _sample_targets(out, task, gen)
            out_d = out.detach()
            _, dl = jvp(lambda o, y=y: _per_sample_loss(o, y, loss_fn, fn), (out_d,), (v.detach(),))
            q = dl.detach().double().pow(2)
        if not bool(torch.isfinite(q).all()):
            raise ValueError(
                f"deadspec.{fn}: the directional derivatives must be finite, got NaN/Inf"
            )
        total += float(q.sum())
    return total / n


def _orders_loop(
    model: nn.Module,
    grid: np.ndarray,
    theta0: dict,
    u: dict,
    probes: list,
    path: Callable | None,
    tup: tuple,
    slices: list,
    n: int,
    fisher: np.ndarray,
    reference: np.ndarray,
    progress: bool | None,
    kw: dict,
) -> None:
    fn = kw["fn"]
    for i, tv in enumerate(_progress(grid, progress, f"deadspec.{fn}", total=len(grid))):
        theta = _path_params(model, theta0, u, path, float(tv), fn)
        fisher[i] = _directional_fisher(model, theta, u, tup, slices, n, **kw)
        reference[i] = np.mean(
            [_directional_fisher(model, theta, r, tup, slices, n, **kw) for r in probes]
        )


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
) -> DirectionOrder:
    """KL order of a candidate dead direction from its directional-Fisher rate.

    ``F_u(t) = (1/N) Σ_i <g_i(θ(t)), u>²`` with ``g_i`` the gradient of sample i's loss, from
    one Jacobian–vector product of the model per t (``torch.func.jvp`` of
    ``functional_call``), never a per-sample gradient. Slope s of ``log F_u`` vs ``log t``,
    ``k̂ = 1 + s/2``, ``λ_dir = 1/(2k̂)`` (theory.md §1, §3).

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
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"deadspec.{fn}: model must be a torch.nn.Module, got {type(model).__name__}"
        )
    if labels not in _DIR_LABELS:
        raise ValueError(f"deadspec.{fn}: labels must be one of {_DIR_LABELS}, got {labels!r}")
    if method not in _METHODS:
        raise ValueError(f"deadspec.{fn}: method must be one of {_METHODS}, got {method!r}")
    if isinstance(n_probes, bool) or not isinstance(n_probes, (int, np.integer)) or n_probes < 1:
        raise ValueError(f"deadspec.{fn}: n_probes must be a positive int, got {n_probes!r}")
    for nm, val in (
        ("slope_tol", slope_tol),
        ("gauge_rtol", gauge_rtol),
        ("gauge_atol", gauge_atol),
    ):
        if not (isinstance(val, (int, float)) and math.isfinite(val) and val >= 0):
            raise ValueError(
                f"deadspec.{fn}: {nm} must be a finite non-negative number, got {val!r}"
            )
    if path is not None and not callable(path):
        raise TypeError(f"deadspec.{fn}: path must be callable or None, got {type(path).__name__}")
    tup, n = _as_input_tuple(inputs, fn)
    slices = _batch_slices(n, batch_size, fn)
    grid = _t_grid(t, fn)
    if labels == "observed":
        if targets is None:
            raise ValueError(f"deadspec.{fn}: labels='observed' needs targets, got targets=None")
    else:
        task = _infer_task(targets, loss_fn, task, fn)
    if targets is not None and (
        not isinstance(targets, torch.Tensor) or targets.ndim == 0 or targets.shape[0] != n
    ):
        raise ValueError(f"deadspec.{fn}: targets must be a tensor with {n} rows on axis 0")

    u = _unit_direction(model, direction, fn)
    theta0 = {name: p.detach() for name, p in model.named_parameters()}
    pgen = torch.Generator().manual_seed(0 if seed is None else int(seed))
    probes = []
    for _ in range(int(n_probes)):
        raw = {
            name: torch.randn(p.shape, generator=pgen, dtype=torch.float64)
            for name, p in theta0.items()
        }
        probes.append(_unit_direction(model, raw, fn))
    gen = _make_generator(seed, tup[0].device) if labels == "sampled" else None

    fisher = np.empty(len(grid))
    reference = np.empty(len(grid))
    snapshot = _ModelState(model)
    try:
        with warnings.catch_warnings():
            # torch's first forward-AD call loads jvp decompositions through torch.jit.script,
            # which warns about its own deprecation (torch >= 2.9); not the user's concern.
            warnings.filterwarnings(
                "ignore",
                message=r".*torch\.jit\.script.* is deprecated",
                category=DeprecationWarning,
            )
            _orders_loop(
                model,
                grid,
                theta0,
                u,
                probes,
                path,
                tup,
                slices,
                n,
                fisher,
                reference,
                progress,
                {
                    "targets": targets,
                    "loss_fn": loss_fn,
                    "labels": labels,
                    "task": task,
                    "gen": gen,
                    "fn": fn,
                },
            )
    finally:
        snapshot.restore()

    flat = bool(np.all(fisher <= gauge_rtol * reference + gauge_atol))
    pos = fisher > 0
    slope = r2 = stderr = intercept = float("nan")
    if pos.sum() >= 2:
        fit = fit_slope(np.log(grid[pos]), np.log(fisher[pos]), method=method)
        slope, r2, stderr, intercept = (
            float(fit.slope),
            float(fit.r2),
            float(fit.stderr),
            float(fit.intercept),
        )
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


# --------------------------------------------------------------------------------------------
# Candidate directions and their classification (transformer readings)
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, repr=False)
class DirectionClass:
    """One classified candidate direction (:func:`classify_directions`).

    Attributes
    ----------
    name : str
        ``"<source>:<where>"``, e.g. ``"qk-scale:blocks.0.attn[h=1]"``,
        ``"eigen-fisher:blocks.0.mlp.fc_in[0]"``.
    source : str
        ``"gauge"`` (a symmetry detector), ``"eigen-fisher"`` (a small eigen-direction of a
        layer's Fisher-Gram) or ``"user"``.
    layer : str or None
        The layer (or module) the direction lives in.
    order : DirectionOrder
        The measurement: ``kind`` ∈ {"genuine", "flat-gauge", "regular"}, ``k_hat``,
        ``lambda_dir``.
    direction : dict
        The unit direction ``{parameter name: tensor}`` (non-zero entries only).
    """

    name: str
    source: str
    layer: str | None
    order: DirectionOrder
    direction: dict = dataclasses.field(default_factory=dict)

    @property
    def kind(self) -> str:
        return self.order.kind

    @property
    def k_hat(self) -> float:
        return self.order.k_hat

    @property
    def lambda_dir(self) -> float:
        return self.order.lambda_dir

    def to_dict(self) -> dict[str, Any]:
        """Scalars: name, source, layer, kind, k_hat, lambda_dir, slope, r2, F_u at the largest t."""
        o = self.order
        return {
            "name": self.name,
            "source": self.source,
            "layer": self.layer,
            "kind": o.kind,
            "k_hat": float(o.k_hat),
            "lambda_dir": float(o.lambda_dir),
            "slope": float(o.slope),
            "r2": float(o.r2),
            "fisher": float(o.fisher[-1]),
            "reference": float(o.reference[-1]) if o.reference is not None else float("nan"),
        }

    def __repr__(self) -> str:
        return (
            f"DirectionClass(name={self.name!r}, kind={self.kind!r}, k_hat={self.k_hat:.4g}, "
            f"lambda_dir={self.lambda_dir:.4g})"
        )


def _rows(w: torch.Tensor, idx: slice | int, axis: str) -> torch.Tensor:
    z = torch.zeros_like(w)
    if axis == "row":
        z[idx] = w[idx]
    else:
        z[:, idx] = w[:, idx]
    return z


def _lin_param_names(prefix: str, mod: nn.Module) -> tuple[str, str | None]:
    return f"{prefix}weight", (f"{prefix}bias" if getattr(mod, "bias", None) is not None else None)


def gauge_directions(
    model: nn.Module, *, output_layer: str | None = None, logit_shift: bool = True
) -> dict[str, dict[str, torch.Tensor]]:
    """Parameter-space tangents of the exact gauges deadspec knows in a model.

    Detectors (all tangents at the model's current parameters, not normalised):

    - ``logit-shift:<layer>``: ``W ↦ W + 1vᵀ``, ``b ↦ b + c1`` of the logit layer
      (``output_layer``; default the last ``nn.Linear`` in ``named_modules()`` order), with
      ``v = 1``: exact for cross-entropy (softmax is shift-invariant).
    - ``qk-scale:<attn>[h=i]`` and ``vo-scale:<attn>[h=i]`` for attention modules with a
      ``deadspec_heads()`` layout (:class:`deadspec.models_transformer.SelfAttention`):
      ``(W_q,h, W_k,h) ↦ (cW_q,h, W_k,h/c)`` (commutes with RoPE) and
      ``(W_v,h, W_o[:,h]) ↦ (cW_v,h, W_o[:,h]/c)``.
    - ``relu-scale:<mlp>[j=u]``: the ReLU rescaling of hidden unit u (the one with the largest
      ``‖w_in‖·‖w_out‖``) in every ``Linear → ReLU → Linear`` found as consecutive children
      (``nn.Sequential`` or modules with children ``fc_in, act, fc_out``).
    - ``ln-scale:<ln>[i=k]``: LayerNorm channel k (largest |γ_k|) scaled against the input
      column k of the layers it feeds, in :class:`TransformerBlock` (``ln1 → q, k, v``;
      ``ln2 → mlp.fc_in``) and :class:`ModAddTransformer` (``ln_f → unembed``).

    Returns
    -------
    dict
        ``name -> {parameter name: tangent tensor}``.
    """
    from deadspec.models_transformer import ModAddTransformer, SelfAttention, TransformerBlock

    named = dict(model.named_modules())
    params = dict(model.named_parameters())
    out: dict[str, dict[str, torch.Tensor]] = {}

    def pre(name: str) -> str:
        return f"{name}." if name else ""

    with torch.no_grad():
        if logit_shift:
            lname = output_layer
            if lname is None:
                lins = [n for n, m in named.items() if isinstance(m, nn.Linear)]
                lname = lins[-1] if lins else None
            if lname is not None:
                lin = _linear_named(model, lname, "output_layer", "gauge_directions")
                wn, bn = _lin_param_names(pre(lname), lin)
                d = {wn: torch.ones_like(lin.weight)}
                if bn is not None:
                    d[bn] = torch.ones_like(lin.bias)
                out[f"logit-shift:{lname}"] = d
        for name, m in named.items():
            p = pre(name)
            if isinstance(m, SelfAttention):
                for h in range(m.n_heads):
                    sl = slice(h * m.d_head, (h + 1) * m.d_head)
                    for label, a, b in (("qk-scale", "q", "k"), ("vo-scale", "v", "o")):
                        d: dict[str, torch.Tensor] = {}
                        la = getattr(m, a)
                        d[f"{p}{a}.weight"] = _rows(la.weight, sl, "row")
                        if la.bias is not None:
                            d[f"{p}{a}.bias"] = _rows(la.bias, sl, "row")
                        lb = getattr(m, b)
                        if b == "k":
                            d[f"{p}k.weight"] = -_rows(lb.weight, sl, "row")
                            if lb.bias is not None:
                                d[f"{p}k.bias"] = -_rows(lb.bias, sl, "row")
                        else:
                            d[f"{p}o.weight"] = -_rows(lb.weight, sl, "col")
                        out[f"{label}:{name}[h={h}]"] = d
            triples = []
            kids = list(m.named_children())
            if all(hasattr(m, c) for c in ("fc_in", "act", "fc_out")):
                triples.append(("fc_in", "act", "fc_out"))
            elif isinstance(m, nn.Sequential):
                for i in range(len(kids) - 2):
                    triples.append((kids[i][0], kids[i + 1][0], kids[i + 2][0]))
            for a, act, b in triples:
                la, mact, lb = getattr(m, a), getattr(m, act), getattr(m, b)
                if not (
                    isinstance(la, nn.Linear)
                    and isinstance(mact, nn.ReLU)
                    and isinstance(lb, nn.Linear)
                    and la.out_features == lb.in_features
                ):
                    continue
                score = la.weight.norm(dim=1) * lb.weight.norm(dim=0)
                j = int(score.argmax())
                d = {f"{p}{a}.weight": _rows(la.weight, j, "row")}
                if la.bias is not None:
                    d[f"{p}{a}.bias"] = _rows(la.bias, j, "row")
                d[f"{p}{b}.weight"] = -_rows(lb.weight, j, "col")
                out[f"relu-scale:{p}{a}[j={j}]"] = d
            pairs: list[tuple[str, list[str]]] = []
            if isinstance(m, TransformerBlock) and m.layernorm:
                pairs = [("ln1", ["attn.q", "attn.k", "attn.v"]), ("ln2", ["mlp.fc_in"])]
            elif isinstance(m, ModAddTransformer) and m.layernorm:
                pairs = [("ln_f", ["unembed"])]
            for ln_name, consumers in pairs:
                ln = m.get_submodule(ln_name)
                if ln.weight is None:
                    continue
                k = int(ln.weight.abs().argmax())
                d = {f"{p}{ln_name}.weight": _rows(ln.weight, k, "row")}
                if ln.bias is not None:
                    d[f"{p}{ln_name}.bias"] = _rows(ln.bias, k, "row")
                for c in consumers:
                    d[f"{p}{c}.weight"] = -_rows(m.get_submodule(c).weight, k, "col")
                out[f"ln-scale:{p}{ln_name}[i={k}]"] = d
    for name, d in out.items():
        unknown = [k for k in d if k not in params]
        if unknown:  # pragma: no cover - detectors only name existing parameters
            raise RuntimeError(f"deadspec.gauge_directions: {name} names unknown {unknown}")
    return out


def _fisher_eigen_directions(
    model: nn.Module,
    inputs: Any,
    layers: Sequence[str],
    n_small: int,
    targets: torch.Tensor | None,
    loss_fn: Callable | None,
    batch_size: int | None,
) -> list[tuple[str, str, dict[str, torch.Tensor]]]:
    """Parameter directions Γᵀv of the smallest active eigenvectors v of each layer's K."""
    from deadspec.ops import fisher_gram, spectrum

    states, _n = _collect(
        model,
        inputs,
        list(layers),
        targets=targets,
        loss_fn=loss_fn,
        fisher=True,
        labels="observed",
        task=None,
        batch_size=batch_size,
        pool="none",
        seed=None,
        progress=False,
        fn="classify_directions",
        gauges=True,
    )
    out = []
    params = dict(model.named_parameters())
    for st in states:
        cap = st.capture
        if cap is None or cap.kind not in ("linear", "conv1d") or st.view is not None:
            continue
        acts, grads = cap.concatenated()
        acts, grads = acts.double(), grads.double()
        if grads.shape[-1] >= 2:  # exclude an exact shift gauge, as read() does
            s = grads.sum(-1).abs().max() / grads.abs().max().clamp_min(1e-300)
            if float(s) < 1e-6:
                grads = grads - grads.mean(-1, keepdim=True)
        has_bias = getattr(cap.module, "bias", None) is not None
        k = fisher_gram(acts, grads, bias=has_bias)
        spec = spectrum(k, vectors=True)
        if spec.active == 0:
            continue
        vec = torch.as_tensor(spec.eigenvectors)
        lo = max(spec.active - n_small, 0)
        a3 = acts if acts.ndim == 3 else acts[:, None, :]
        g3 = grads if grads.ndim == 3 else grads[:, None, :]
        for j in range(spec.active - 1, lo - 1, -1):
            v = vec[:, j]
            w = torch.einsum("n,nte,ntd->ed", v, g3, a3)  # d_out × d_in
            prefix = f"{st.name}." if st.name else ""
            wname = f"{prefix}weight"
            d: dict[str, torch.Tensor] = {}
            pw = params[wname]
            d[wname] = (w.T if cap.kind == "conv1d" else w).to(pw.dtype)
            if has_bias:
                d[f"{prefix}bias"] = torch.einsum("n,nte->e", v, g3).to(pw.dtype)
            out.append((f"eigen-fisher:{st.name}[{spec.active - 1 - j}]", st.name, d))
        cap.release()
    return out


def classify_directions(
    model: nn.Module,
    inputs: torch.Tensor | Sequence[torch.Tensor],
    *,
    targets: torch.Tensor | None = None,
    loss_fn: Callable | None = None,
    layers: Sequence[str] | None = None,
    n_small: int = 1,
    gauges: bool = True,
    candidates: Mapping[str, Any] | None = None,
    output_layer: str | None = None,
    t: Sequence[float] | np.ndarray | None = None,
    labels: str = "expected",
    task: str | None = None,
    slope_tol: float = 0.5,
    gauge_rtol: float = 1e-8,
    n_probes: int = 2,
    seed: int | None = 0,
    batch_size: int | None = None,
    progress: bool | None = False,
) -> list[DirectionClass]:
    """Classify candidate directions: genuine singularity (k̂, λ_dir), flat gauge or regular.

    Candidates come from three places:

    1. **Gauge detectors** (``gauges=True``): :func:`gauge_directions`. A gauge is tested at the
       checkpoint itself (the path is constant): ``"flat-gauge"`` when ``F_u`` is below
       ``gauge_rtol`` times the random-direction reference, else ``"regular"`` (a detector
       that does not apply, e.g. the logit shift under a squared loss).
    2. **Small eigen-directions** of each layer's Fisher-Gram (``n_small`` per layer, for the
       ``nn.Linear``/``Conv1D`` layers in ``layers``, default all ``nn.Linear``; needs
       ``targets``): ``u = Γᵀv/‖Γᵀv‖`` for the smallest active eigenvectors v of K. Path:
       the component of the layer's parameters along u is scaled by t (``θ(t) = θ −
       (1 − t)⟨θ, u⟩u``), the approach of theory.md §3; the slope of ``log F_u`` gives k̂.
    3. ``candidates``: ``{name: direction}`` in :func:`direction_order`'s format, measured
       along its default path ``θ + t·u``.

    Parameters
    ----------
    model, inputs, targets, loss_fn, t, labels, task, slope_tol, gauge_rtol, n_probes, seed,
    batch_size, progress
        As in :func:`direction_order` (``t`` for the eigen and user candidates).
    layers : sequence of str, optional
        Layers whose Fisher eigen-directions are candidates; default every ``nn.Linear``.
    n_small : int
        Eigen-directions per layer (0 disables them).
    gauges : bool
        Include the gauge detectors' candidates.
    candidates : dict, optional
        Extra user directions.
    output_layer : str, optional
        The logit layer for the logit-shift detector (default the last ``nn.Linear``); the
        detector is used only for classification (integer targets or ``task``).

    Returns
    -------
    list of DirectionClass
    """
    fn = "classify_directions"
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"deadspec.{fn}: model must be a torch.nn.Module, got {type(model).__name__}"
        )
    if isinstance(n_small, bool) or not isinstance(n_small, (int, np.integer)) or n_small < 0:
        raise ValueError(f"deadspec.{fn}: n_small must be a non-negative int, got {n_small!r}")
    if candidates is not None and not isinstance(candidates, Mapping):
        raise TypeError(
            f"deadspec.{fn}: candidates must be a dict name -> direction, got "
            f"{type(candidates).__name__}"
        )
    task = _infer_task(targets, loss_fn, task, fn)
    common = {
        "targets": targets,
        "loss_fn": loss_fn,
        "labels": labels,
        "task": task,
        "slope_tol": slope_tol,
        "gauge_rtol": gauge_rtol,
        "n_probes": n_probes,
        "seed": seed,
        "batch_size": batch_size,
    }
    params = dict(model.named_parameters())
    todo: list[tuple[str, str, str | None, dict, Callable | None, Any]] = []
    if gauges:
        found = gauge_directions(
            model, output_layer=output_layer, logit_shift=(task == "classification")
        )
        for name, d in found.items():
            where = name.split(":", 1)[1]
            todo.append((name, "gauge", where, d, lambda tv: {}, np.array([1e-2, 1e-1])))
    if n_small:
        if layers is None:
            layers = [nm for nm, m in model.named_modules() if isinstance(m, nn.Linear)]
        if targets is None:
            raise ValueError(
                f"deadspec.{fn}: Fisher eigen-directions need targets (or pass n_small=0)"
            )
        for name, layer, d in _fisher_eigen_directions(
            model, inputs, layers, int(n_small), targets, loss_fn, batch_size
        ):
            norm = math.sqrt(sum(float(v.double().pow(2).sum()) for v in d.values()))
            if norm == 0.0:
                continue
            unit = {k: v / norm for k, v in d.items()}
            theta0 = {k: params[k].detach() for k in unit}
            coef = sum(float((theta0[k].double() * unit[k].double()).sum()) for k in unit)

            def path(tv: float, unit=unit, theta0=theta0, coef=coef) -> dict:
                return {k: theta0[k] - (1.0 - tv) * coef * unit[k] for k in unit}

            todo.append((name, "eigen-fisher", layer, unit, path, t))
    for name, d in (candidates or {}).items():
        todo.append((str(name), "user", None, d, None, t))
    results = []
    for name, source, layer, d, path, grid in _progress(
        todo, progress, f"deadspec.{fn}", total=len(todo)
    ):
        order = direction_order(model, inputs, d, path=path, t=grid, **common)
        nz = {k: v for k, v in d.items() if isinstance(v, torch.Tensor) and bool(v.ne(0).any())}
        results.append(DirectionClass(name, source, layer, order, nz))
    return results
