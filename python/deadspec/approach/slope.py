"""The approach slope: log det⁺ of a layer's Gram as its dead components are scaled by t.

The DDS headline reading (theory.md §3): scale r dead components of a layer by t over a log
grid, read a Gram at each t with the active set held at its size at the largest t, and fit
``log det⁺`` and ``log λ_min`` against ``log t``. Prediction for r dead hidden units of a linear
or ReLU chain on the activation side: slope 2r, and a λ_min slope of 2 whatever r.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from deadspec._dist import agreed, check_group, on_root
from deadspec._engine import Collected, CollectOptions, activation_spectrum, collect
from deadspec._engine.gather import collect_over_group
from deadspec._util import check_choice, check_model, unwrap_compiled
from deadspec._util import progress as progress_bar
from deadspec.approach._common import (
    METHODS,
    SIDES,
    check_read,
    check_units,
    default_next_layer,
    linear_named,
    read_as,
    t_grid,
)
from deadspec.ops import fit_slope, logdet_top

__all__ = ["ApproachSlope", "approach_slope"]


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
    group: Any = None,
    read_at: str | None = None,
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
        ``"activation"``: the Gram of the layer's output (pre-activation of an ``nn.Linear``),
        or of ``read_at``'s output.
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
    group : torch.distributed process group, optional
        Read over the group's ranks (a collective: every rank calls it with its own shard of
        the batch as ``inputs``/``targets``, and the same other arguments): every reading along
        t is :func:`deadspec.read`'s ``group=`` reading of the concatenated batch (ranks in
        order), and the dead cluster (``units=None``) is found in the whole batch's activation
        Gram on rank 0 and broadcast, so every rank returns the single-process result on the
        concatenated batch. The ranks must hold the same model (as under
        ``DistributedDataParallel``). A different ``layer``, ``side``, ``units``, ``t`` or
        ``next_layer`` on some rank raises ValueError on every rank, as does an error on any
        rank (no rank is left waiting).

    read_at : str, optional
        Activation side only: the ``named_modules()`` name of the module whose output Gram is
        read instead of ``layer``'s, e.g. the nonlinearity after it (``"1"`` in
        ``Sequential(Linear, ReLU, Linear)``). A positively homogeneous nonlinearity (ReLU,
        LeakyReLU) keeps the prediction: a scaled unit's post-activation column is t times its
        own, so its slope is 2 per unit as before the nonlinearity. (A unit whose
        pre-activation is never positive on the inputs has no post-ReLU column to scale.)

    Returns
    -------
    ApproachSlope
        Prediction (theory.md §3): slope ``2r`` for r dead units on the activation side, and a
        λ_min slope of 2 whatever r.

    Raises
    ------
    ValueError
        When the readings would not be the scaled directions' (a silent slope ≈ 0):

        - the active set at the largest t (which fixes k) is smaller than the unscaled
          model's (read once more at t = 1 when every t < 1): the scaled directions are already
          below the active-set threshold ``rtol·μ₁`` there, and ``log det⁺`` over k would not
          see them (slope ≈ 0, r² ≈ 1). Use larger t.
        - at some t the k-th eigenvalue is at the round-off level of the reading,
          ``λ_k ≤ m·ε₆₄·μ₁`` (the float64 eigensolver's; ``max(m·ε₆₄, ε_w²)·μ₁`` when
          eigen-directions are scaled, ``units=None``: the stored weight then carries an error
          ~ε_w of its dtype in every row): it no longer follows t, and the fit would bend
          toward 0 at the small-t end. Use a grid above the t named, or float64.

        (An eigenvalue below the conservative active threshold but above that floor still
        follows t — e.g. a float32 model on the default grid — and is read.)

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
    group = check_group(fn, group)
    with agreed(fn, group) as same:  # (over a group: every rank passes its checks, or none)
        check_model(model, fn)
        model = unwrap_compiled(model)
        check_choice(fn, "side", side, SIDES)
        check_choice(fn, "method", method, METHODS)
        width = linear_named(model, layer, "layer", fn).out_features
        read_name = _read_at(model, layer, read_at, side, fn)
        check_read(  # what read() would refuse, refused now and named approach_slope
            fn, model, inputs, [read_name], targets=targets, loss_fn=loss_fn,
            fisher=side == "fisher", center=center, batch_size=batch_size, gap_ratio=gap_ratio,
            progress=progress,
        )
        next_name = _next_layer(model, layer, next_layer, width, fn)
        grid = t_grid(t, fn)
        unit_tuple = None if units is None else check_units(units, width, fn)
        same.update(layer=layer, side=side, units=unit_tuple, t=grid.tolist(),
                    next_layer=next_name, read_at=read_name)
    work = copy.deepcopy(model)
    if unit_tuple is None:
        u_mat = _dead_cluster(work, inputs, layer, (center, gap_ratio, batch_size), fn, group)
    else:
        u_mat = np.eye(width)[:, list(unit_tuple)]
    scaler = _Scaler(work, layer, next_name, unit_tuple, u_mat)

    def spectrum_at(tv: float) -> Any:
        scaler.set(tv)
        r = read_as(
            fn,
            work,
            inputs,
            [read_name],
            targets=targets,
            loss_fn=loss_fn,
            fisher=(side == "fisher"),
            center=center,
            batch_size=batch_size,
            gap_ratio=gap_ratio,
            group=group,
        )
        return r[read_name].activation if side == "activation" else r[layer].fisher

    # the unscaled model's active count (t = 1), which the fixed active set must keep
    base_active = int(spectrum_at(1.0).active) if grid[-1] < 1.0 else None
    eigs: list[np.ndarray] = []
    last_active = 0
    for tv in progress_bar(grid, progress, f"deadspec.{fn}", total=len(grid)):
        spec = spectrum_at(float(tv))
        eigs.append(np.asarray(spec.eigenvalues, dtype=np.float64))
        last_active = spec.active
    # the largest t is read last: its active count fixes the active set
    k = int(last_active)
    floor = np.finfo(np.float64).eps * len(eigs[-1])
    if unit_tuple is None:  # eigen-directions: every row of a stored weight carries its ε_w
        floor = max(floor, float(np.finfo(_dtype_of(work)).eps) ** 2)
    where = read_name if side == "activation" else layer  # the module read, for the messages
    _check_owned(eigs, grid, k, base_active, floor, (where, side, fn))
    logdet, lam = _fixed_active_series(eigs, grid, k, where, side, fn)
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
        active=int(last_active),
        units=unit_tuple,
        layer=layer,
        side=side,
        next_layer=next_name,
        directions=u_mat,
    )


def _read_at(model: nn.Module, layer: str, read_at: str | None, side: str, fn: str) -> str:
    """The module whose Gram is read: ``layer``, or ``read_at`` (activation side, checked)."""
    if read_at is None:
        return layer
    if not isinstance(read_at, str):
        raise TypeError(f"deadspec.{fn}: read_at must be a module name (str), got {read_at!r}")
    if side != "activation":
        raise ValueError(
            f"deadspec.{fn}: read_at is for the activation side only (the Fisher side reads "
            f"the layer's own parameters), got side={side!r} with read_at={read_at!r}"
        )
    names = dict(model.named_modules())
    if read_at not in names or read_at == "":
        raise ValueError(
            f"deadspec.{fn}: read_at {read_at!r} is not a submodule of the model "
            f"(modules: {', '.join(repr(n) for n in names if n)})"
        )
    return read_at


def _next_layer(
    model: nn.Module, layer: str, next_layer: str | None, width: int, fn: str
) -> str | None:
    """The layer whose input columns are scaled with the units (checked, or the default)."""
    if next_layer is None:
        return default_next_layer(model, layer, width)
    nxt = linear_named(model, next_layer, "next_layer", fn)
    if next_layer == layer:
        raise ValueError(f"deadspec.{fn}: next_layer must differ from layer, got {next_layer!r}")
    if nxt.in_features != width:
        raise ValueError(
            f"deadspec.{fn}: next_layer {next_layer!r} must have in_features == "
            f"{width} (layer {layer!r} out_features), got {nxt.in_features}"
        )
    return next_layer


def _dead_cluster(
    model: nn.Module,
    inputs: Any,
    layer: str,
    options: tuple[bool, float, int | None],
    fn: str,
    group: Any,
) -> np.ndarray:
    """``h×r`` eigenvectors of the dead cluster of the layer's (feature-side) activation Gram
    (``options``: center, gap_ratio, batch_size); over a process group the whole batch's,
    found on rank 0 and broadcast."""
    center, gap_ratio, batch_size = options
    opts = CollectOptions(fisher=False, batch_size=batch_size, route="feature", fn=fn)
    if group is None:
        return _cluster_vectors(collect(model, inputs, [layer], opts), layer, center, gap_ratio, fn)
    collected, _ = collect_over_group(model, inputs, [layer], opts, group)
    return on_root(fn, lambda: _cluster_vectors(collected, layer, center, gap_ratio, fn), group)


def _cluster_vectors(
    collected: Collected, layer: str, center: bool, gap_ratio: float, fn: str
) -> np.ndarray:
    """The dead cluster's eigenvectors in a collection's activation Gram (ValueError if none)."""
    spec0 = activation_spectrum(collected.states[0], center, None, gap_ratio, vectors=True)
    if spec0.dead_count == 0:
        raise ValueError(
            f"deadspec.{fn}: the activation spectrum of layer {layer!r} has no dead cluster "
            f"(dead_count=0 at gap_ratio={gap_ratio:g}); pass units= to choose the hidden "
            f"units to scale"
        )
    hi = spec0.active
    return np.asarray(spec0.eigenvectors, dtype=np.float64)[:, hi - spec0.dead_count : hi]


class _Scaler:
    """Sets the scaled components of a (copied) model to t times their value at t = 1."""

    def __init__(
        self,
        model: nn.Module,
        layer: str,
        next_name: str | None,
        units: tuple[int, ...] | None,
        u_mat: np.ndarray,
    ) -> None:
        self.lin: nn.Linear = model.get_submodule(layer)
        self.next: nn.Linear | None = None if next_name is None else model.get_submodule(next_name)
        self.units = units
        with torch.no_grad():
            self.w1 = self.lin.weight.detach().clone()
            self.b1 = None if self.lin.bias is None else self.lin.bias.detach().clone()
            self.w2 = None if self.next is None else self.next.weight.detach().clone()
        self.u = torch.as_tensor(u_mat, dtype=torch.float64, device=self.w1.device)

    @torch.no_grad()
    def set(self, tv: float) -> None:
        if self.units is not None:
            idx = torch.tensor(self.units, device=self.w1.device)
            self._scale(self.lin.weight, self.w1, idx, tv, rows=True)
            if self.b1 is not None:
                self._scale(self.lin.bias, self.b1, idx, tv, rows=True)
            if self.w2 is not None:
                self._scale(self.next.weight, self.w2, idx, tv, rows=False)
            return
        width = self.w1.shape[0]
        p = torch.eye(width, dtype=torch.float64, device=self.w1.device)
        p = p + (tv - 1.0) * (self.u @ self.u.T)
        self.lin.weight.copy_(p @ self.w1.double())
        if self.b1 is not None:
            self.lin.bias.copy_(p @ self.b1.double())
        if self.w2 is not None:
            self.next.weight.copy_(self.w2.double() @ p)

    @staticmethod
    def _scale(
        target: torch.Tensor, base: torch.Tensor, idx: torch.Tensor, tv: float, rows: bool
    ) -> None:
        w = base.clone()
        if rows:
            w[idx] = base[idx] * tv
        else:
            w[:, idx] = base[:, idx] * tv
        target.copy_(w)


def _dtype_of(model: nn.Module) -> Any:
    """numpy dtype of the model's first floating parameter (float64 if none)."""
    for p in model.parameters():
        if p.is_floating_point():
            return np.dtype(str(p.dtype).removeprefix("torch."))
    return np.dtype(np.float64)


def _check_owned(
    eigs: list[np.ndarray],
    grid: np.ndarray,
    k: int,
    base_active: int | None,
    floor: float,
    where: tuple[str, str, str],
) -> None:
    """Refuse readings that are not the scaled directions' (see approach_slope, Raises)."""
    layer, side, fn = where
    gram = f"the {side} Gram of layer {layer!r}"
    if base_active is not None and 0 < k < base_active:
        raise ValueError(
            f"deadspec.{fn}: the scaled directions must be in the active part of {gram} at the "
            f"largest t, got {k} active eigenvalues at t={grid[-1]:g} against {base_active} "
            f"for the unscaled model (t=1): they are already below the active-set threshold, "
            f"so log det⁺ over the fixed active set would not see them (slope ≈ 0, r² ≈ 1); "
            f"use larger t (a grid reaching toward 1), or a float64 model"
        )
    low = [i for i, ev in enumerate(eigs) if 0 < k <= len(ev) and ev[k - 1] <= floor * ev[0]]
    if not low:
        return
    i = max(low)
    fix = f"use a grid with t >= {grid[i + 1]:g}" if i + 1 < len(grid) else "use larger t"
    raise ValueError(
        f"deadspec.{fn}: the scaled directions' eigenvalues must stay above the round-off level "
        f"of {gram}, got λ_{k} = {eigs[i][k - 1]:.3g} <= {floor:.2g}·μ₁ at t={grid[i]:g} "
        f"(there it no longer follows t and the slope would bend toward 0); {fix}, or a "
        f"float64 model"
    )


def _fixed_active_series(
    eigs: list[np.ndarray], grid: np.ndarray, k: int, layer: str, side: str, fn: str
) -> tuple[np.ndarray, np.ndarray]:
    """``log det⁺`` over the top k eigenvalues and ``λ_k`` at each t."""
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
    return logdet, lam
