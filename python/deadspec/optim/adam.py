"""DDCAdam: AdamW with its state on gauge-invariant coordinates (theory.md §6.3, §6.5)."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from deadspec import gauges as G
from deadspec.optim._base import FORMS, DDCBase, TorchOptions, check_betas, check_nonnegative
from deadspec.optim._coreplan import CorePlan
from deadspec.optim._functional import AdamBlock, ddc_adam, init_adam_state, screen_safe
from deadspec.optim._plan import Site
from deadspec.optim._split import SplitStep, core_step_ok
from deadspec.optim._splitplan import SplitCorePlan

__all__ = ["DDCAdam"]


class DDCAdam(DDCBase):
    """AdamW with its state on gauge-invariant coordinates (exactly gauge-equivariant).

    Parameters
    ----------
    model_or_params : nn.Module or iterable of parameters / param-group dicts
        The model (its gauges are discovered), or plain parameters as any torch optimizer takes
        them (tensors, ``(name, tensor)`` pairs, param-group dicts). Plain parameters with
        ``gauges=`` holding modules condition on those gauges exactly as the model form does
        (same trajectory, bit for bit); without ``gauges`` there are none (plain AdamW, with a
        warning). A ``torch.compile`` d model is taken through the module it compiles.
    lr, betas, eps, weight_decay
        As ``torch.optim.AdamW`` (decoupled weight decay, default 0).
    gauges : list of deadspec.gauges.Gauge, optional
        None: :func:`deadspec.gauges.discover` ``(model, loss=loss)``. An explicit list is
        bound to the model and its hand-declared entries (``source="declared"``) validated.
        ``[]``: no gauges (AdamW). With plain parameters the gauges must reference modules,
        not names: ``deadspec.gauges.bind(gauges, model)``, or declared with the modules
        (``Pair(model.fc1, model.fc2, activation="relu")``); a name raises ValueError. The
        modules are then named after the parameters' names when they come named
        (``model.named_parameters()``), else ``<class name><k>`` (in :attr:`sites`,
        :meth:`gauge_residuals`, the state). Declared gauges are checked structurally only
        (without the model the path between producer and consumer cannot be traced: give
        ``activation=``, or a warning says so), and a parameter tied to a module outside the
        gauges is not seen as shared.
    gauge_mode : {"zero", "damped", "balance"}
        Policy on the pure-gauge scales ρ. ``"zero"``: ρ is kept (exactly equivariant).
        ``"damped"``: ``log ρ`` moves by a scalar Adam step on the gauge-mode gradient
        ``g_V = ĝ_in − ĝ_out`` normalised by the radial scale, ``Δlog ρ = −η·m̂_V/(√v̂_V + √v̂_U +
        eps)`` (equivariant; it acts only where the declared gauge is broken, e.g. by an L2 term
        inside the loss). ``"balance"``: ``log ρ`` moves toward equal producer-row and
        consumer-column norms, closing ``balance_rate`` of the log gap per step (NOT
        equivariant).
    balance_rate : float
        Fraction of the log-norm imbalance closed per step with ``gauge_mode="balance"``.
    loss : {"cross_entropy", None}
        For discovery: whether the output layer's logit shift is a gauge.
    nonfinite : {"raise", "skip"}
        A NaN/Inf gradient: raise RuntimeError naming the parameter, or skip the whole step
        with a warning (parameters and state untouched). What the step produces is checked
        too, coordinate by coordinate, before it is written (in the fused pass itself: no
        extra pass): a coordinate whose new value or moments would be NaN/Inf (an overflow:
        ``|g·σ|`` or the second moment beyond the dtype's range — ``((1 − β₂)·g̃)·g̃``, AdamW's
        order, so at the gradients where AdamW's overflows — huge weights, a huge lr) keeps
        its pre-step value and moments, and so does a unit whose site state would. Then
        ``"raise"`` raises RuntimeError naming the parameters (the rest of the step has been
        applied) and ``"skip"`` warns (RuntimeWarning): those coordinates skipped the step.
        No step writes a NaN/Inf. Where AdamW would silently keep an infinite second moment
        (``|g| > ~5.8e20`` in float32 with β₂ = 0.999) this raises.
    params : iterable, optional
        With a model: the parameters or param-group dicts to optimise (default
        ``model.parameters()``), e.g. groups with different ``lr``/``weight_decay``.
    track_residuals : bool
        Compute the gauge-mode gradients ``g_V`` each step for :meth:`gauge_residuals` (a
        diagnostic: one more pass over every gauged block; always on with ``"damped"``).
    rotations : bool
        Condition on :class:`~deadspec.gauges.HeadRotation` gauges (per-head rotations of
        q/k/v rows and output-projection columns). Adam is coordinatewise, so it is not
        rotation-equivariant as it stands; on the rotated blocks the second moment is shared
        within each head: ``g̃²`` is replaced by its mean over the head's rows (q/k/v weights and
        biases, per column) or columns (the output projection, per row) before it enters
        ``v``. ``v`` is then invariant under the rotation and ``m/(√v + ε)`` rotates with the
        gradient, so the step is exactly equivariant. False: discovered rotations are left out
        (those blocks get per-coordinate Adam) and a declared one raises ValueError.
    form : {"coordinate", "split"}
        ``"coordinate"``: per-coordinate Adam on the invariant coordinates, radial part
        included (fused in the C++ core on CPU). ``"split"``: theory.md §6's split form — per
        unit, the radial part of each block's invariant gradient is taken out and driven by a
        scalar Adam (``g_U = (ĝ₁ + ĝ₂)/√2``, applied multiplicatively to the producer row and
        the consumer columns), the tangential part gets per-coordinate Adam, re-projected, and
        applied additively as ``w ← e^{Δ}·w − η·‖w‖·u`` (``docs/ddc.md``, "The split form",
        for the stacked generalisation). Both forms are exactly equivariant. On CPU the split
        form runs as three passes of the C++ core over each block (``ddc_split_sums``,
        ``ddc_split_moments``, ``ddc_split_apply``).
    maximize : bool
        Maximise the objective: each step sees ``−g`` (the gradients are negated in place for
        the step, an exact operation, and restored after it), in every path; the same
        trajectory, bit for bit, as minimising the negated loss.
    foreach : bool, optional
        None or True: the batched path (one call of the C++ core for every CPU float block
        with gauges). False: one block at a time through the torch reference (the core's
        one-block kernel still takes a gauged CPU block); equal up to round-off. Without any
        gauge the step is AdamW's, tensor by tensor through the torch reference (torch's
        single-tensor operations: the same bits as ``torch.optim.AdamW`` on CPU, foreach or
        not), checked as above. No effect on ``form="split"`` (per-block passes).
    fused, capturable, differentiable, amsgrad
        torch's options, accepted at their off values (None/False, False, False, False); True
        raises NotImplementedError: torch's fused kernels take no gauge scales, the step reads
        its step count on the host (no CUDA-graph capture), runs under ``torch.no_grad`` and
        through the C++ core (not differentiable), and keeps no AMSGrad maximum.

    Notes
    -----
    - Parameters without a gradient are skipped (no decay, no moment update), as in AdamW. In a
      gauge block with a missing gradient the other parameters are still updated with their
      scales (ρ is computed from the parameters alone); the site's ``g_V`` is not computed
      (absent from :meth:`gauge_residuals`) and ``"damped"`` leaves its ρ unchanged.
    - A unit whose producer row is exactly zero (ρ = 0) is not scaled (σ uses ρ := 1): its
      coordinates are the raw ones and it gets plain Adam; never NaN. Exact equivariance holds
      where every ρ > 0 (the group acts freely there).
    """

    _fn = "DDCAdam"
    _plain = "plain AdamW"

    def __init__(
        self,
        model_or_params: nn.Module | Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        gauges: list[G.Gauge] | None = None,
        gauge_mode: str = "zero",
        balance_rate: float = 0.1,
        loss: str | None = "cross_entropy",
        nonfinite: str = "raise",
        params: Iterable[Any] | None = None,
        track_residuals: bool = False,
        rotations: bool = True,
        form: str = "coordinate",
        maximize: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        amsgrad: bool = False,
    ) -> None:
        fn = self._fn
        torch_options = TorchOptions(
            fn,
            maximize=maximize,
            foreach=foreach,
            fused=fused,
            capturable=capturable,
            differentiable=differentiable,
            amsgrad=amsgrad,
        )
        self.rotations = bool(rotations)
        if form not in FORMS:
            raise ValueError(f"deadspec.{fn}: form must be one of {FORMS}, got {form!r}")
        check_nonnegative(fn, "lr", lr)
        betas = check_betas(fn, "betas", betas)
        check_nonnegative(fn, "eps", eps)
        check_nonnegative(fn, "weight_decay", weight_decay)
        self._core_plan: CorePlan | None = None
        self._split_plan: SplitCorePlan | None = None
        super().__init__(
            model_or_params,
            {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay},
            gauges=gauges,
            gauge_mode=gauge_mode,
            balance_rate=balance_rate,
            loss=loss,
            nonfinite=nonfinite,
            params=params,
            track_residuals=track_residuals,
            rotations=self.rotations,
            form=form,
            torch_options=torch_options,
        )

    # -- step (DDCBase.step: the closure, then this with the gradients' sign applied) ---------
    def _step(self) -> None:
        if self.form == "split" and self._plan.sites:
            # (without a rescaling site nothing is split: the coordinate path below is the step)
            if self._split_core_step():
                return
            # the core's arithmetic folds the decay into the passes (the logit layer's
            # shift-aware decay is applied here); the torch reference decays first
            core = self._shards is None and core_step_ok(self._plan, self.state, self.param_groups)
            ok, modes = self._prologue(decay=not core)
            if ok:
                decay = self._split_decay() if core else None
                rho = self._site_scales(pending_decay=core)  # of the decayed parameters
                split = SplitStep(
                    self._plan, self.state, self.param_groups, rho, self._damped_hparams, decay
                )
                split.run()
                params = {id(p): p for g in self.param_groups for p in g["params"]}
                for i, counts in split.refused.items():
                    for n in counts:
                        self._note_refused(params[i], n)
                for name, n in split.site_refused.items():
                    self._note_refused(name, n)
                self._policy(modes)
            return
        # Decoupled weight decay is folded into the update (one pass per block) unless a
        # producer of a site is on the logit layer, whose shift-aware decay is not a factor.
        fold = not any(
            id(t) in self._plan.shift
            for st in self._plan.sites
            for t in (st.weight, st.bias)
            if t is not None
        )
        if fold and self._core_step():
            return
        ok, modes = self._prologue(decay=not fold)
        if not ok:
            return
        blocks, owners = self._blocks(fold)
        if self._plan.sites or self._plan.rot:
            refused = ddc_adam(blocks, fused=False if self.foreach is False else None)
        else:
            # without a rescaling site or rotation: AdamW, tensor by tensor through the torch
            # path (σ = 1: torch AdamW's single-tensor operations, the same bits as its step,
            # foreach or not, on CPU), checked before commit
            refused = ddc_adam(blocks, fused=False)
        for b, n, p in zip(blocks, refused, owners):
            self._note_refused(p, n, kept=b.keep)
        self._policy(modes)

    def _core_step(self) -> bool:
        """The step through the core's bound plan (``_coreplan``: two core calls for all
        blocks, the same arithmetic as the per-block path below). False: the plan does not take
        the optimizer's set-up or this step's gradients, and nothing was done."""
        cp = self._core_plan
        if cp is None or not cp.current(self):
            cp = self._core_plan = CorePlan.build(self)
        if cp is None:
            return False
        groups = cp.groups(self)
        bad = None if groups is None else cp.check()
        if bad is None:
            return False
        if bad >= 0:  # (as _prologue: nothing written)
            gi, j = cp.where[bad]
            msg = (
                f"deadspec.{self._fn}.step: gradients must be finite, got NaN/Inf in "
                f"{self._name(cp.params[bad], gi, j)!r}"
            )
            if self.nonfinite == "raise":
                raise RuntimeError(msg)
            warnings.warn(msg + "; step skipped", RuntimeWarning, stacklevel=6)
            return True
        modes = self._gauge_modes() if self._wants_modes() else []
        for k, gi in cp.shift:  # the logit layer's shift-aware decay, as _stepped
            group = self.param_groups[gi]
            if cp.params[k].grad is not None and group["weight_decay"] != 0:
                self._decay(cp.params[k], group["lr"] * group["weight_decay"], shift=True)
        refused, kept = cp.core.step(groups, self._moments_bounded)
        for p, n, k in zip(cp.params, refused, kept):
            self._note_refused(p, n, kept=k)
        self._policy(modes)
        return True

    def _split_decay(self) -> dict[int, float]:
        """The split form's decoupled decay with the core's arithmetic: the logit layer's
        shift-aware decay applied now, every other factor 1 − lr·wd returned (by parameter id)
        to be folded into the passes."""
        out: dict[int, float] = {}
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            if wd == 0:
                continue
            for p in group["params"]:
                if p.grad is None:
                    continue
                if id(p) in self._plan.shift:
                    self._decay(p, lr * wd, shift=True)
                else:
                    out[id(p)] = 1.0 - lr * wd
        return out

    def _split_core_step(self) -> bool:
        """The split step through the core's bound plan (``_splitplan``: two core calls for all
        blocks, the arithmetic of the per-block path with the core's, bit for bit). False: the
        plan does not take the optimizer's set-up or this step, and nothing was done."""
        sp = self._split_plan
        if sp is None or not sp.current(self):
            sp = self._split_plan = SplitCorePlan.build(self)
        if sp is None:
            return False
        groups = sp.groups(self)
        bad = None if groups is None or not sp.ready() else sp.check(groups)
        if bad is None:
            return False
        if bad >= 0:  # (as _prologue: nothing written)
            gi, j = sp.where[bad]
            msg = (
                f"deadspec.{self._fn}.step: gradients must be finite, got NaN/Inf in "
                f"{self._name(sp.params[bad], gi, j)!r}"
            )
            if self.nonfinite == "raise":
                raise RuntimeError(msg)
            warnings.warn(msg + "; step skipped", RuntimeWarning, stacklevel=6)
            return True
        modes = self._gauge_modes() if self._wants_modes() else []
        for k, gi, mean in sp.deferred:  # the logit layer: its shift-aware decay, its means
            p, group = sp.params[k], self.param_groups[gi]
            if p.grad is None:
                continue
            if group["weight_decay"] != 0:
                self._decay(p, group["lr"] * group["weight_decay"], shift=True)
            if mean is not None:
                mean.copy_(p.mean(0))
        refused, site_refused = sp.step()
        for p, n in zip(sp.params, refused):
            self._note_refused(p, n)
        for s, n in zip(self._plan.sites, site_refused):
            self._note_refused(s.name, n)
        self._policy(modes)
        return True

    def _stepped(self, fold: bool) -> Iterator[tuple[dict[str, Any], torch.Tensor, float]]:
        """(group, parameter, decay factor still to apply) of every parameter with a gradient,
        its state initialised; the logit layer's shift-aware decay is applied here."""
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if len(state) == 0:
                    init_adam_state(state, p)
                decay = 1.0
                if fold and wd != 0:
                    if id(p) in self._plan.shift:
                        self._decay(p, lr * wd, shift=True)
                    else:
                        decay = 1.0 - lr * wd
                yield group, p, decay

    def _blocks(self, fold: bool) -> tuple[list[AdamBlock], list[torch.Tensor]]:
        """(1) the gauge scales of the decayed parameters, as each block's σ factors, and each
        block's parameter; each block screened for overflow (``_functional.screen_safe``: a
        cleared block skips the core's per-element keep)."""
        rho = self._site_scales(pending_decay=fold)
        inv: dict[int, torch.Tensor] = {}  # 1/ρ per consumed site, shared by its consumers
        extremes: dict[int, tuple[float, float]] = {}  # (max ρ, min ρ) per site, as needed
        blocks = []
        owners: list[torch.Tensor] = []  # each block's parameter (a sharded one's: its rows)
        sh = self._shards
        for group, p, decay in self._stepped(fold):
            r, c = self._plan.row.get(id(p)), self._plan.col.get(id(p))
            # (a sharded parameter's block is its local rows: the row scales its slice)
            row = None if r is None else rho[r] if sh is None else sh.mine(rho[r], p)
            row = None if row is None else row.reshape((-1,) + (1,) * (p.ndim - 1))
            if c is not None and c not in inv:
                inv[c] = 1.0 / rho[c]
            col = None if c is None else inv[c]
            if col is not None and self._plan.col_axis.get(id(p), 1) == 0:
                # a Conv1D consumer (stored in × out): its units index the rows (never a
                # producer: producers are nn.Linear)
                col = col if sh is None else sh.mine(col, p)
                row, col = col.reshape((-1,) + (1,) * (p.ndim - 1)), None
            owners.append(p)
            blocks.append(self._adam_block(group, p, row, col, decay))
            b = blocks[-1]
            if self._moments_bounded and id(p) in self._grad_norms:  # (only the core reads it)
                sigma = 1.0
                for site, up in ((r, True), (c, False)):
                    if site is not None:
                        if site not in extremes:
                            lo, hi = torch.aminmax(rho[site])
                            extremes[site] = (float(hi), float(lo))
                        hi, lo = extremes[site]
                        sigma *= hi if up else 1.0 / lo
                b.keep = not screen_safe(b, self._grad_norms[id(p)], sigma)
        return blocks, owners

    def _damped_hparams(self, s: Site) -> tuple[float, tuple[float, float], float]:
        group = self._group_of(s.weight)
        return group["lr"], group["betas"], group["eps"]
