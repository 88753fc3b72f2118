"""DDCAdam's split form (theory.md §6.5; docs/ddc.md, "The split form").

Per unit, the radial part of each block's invariant gradient is taken out and driven by a
scalar Adam, the tangential part gets per-coordinate Adam, re-projected, and the two are
applied as ``w ← e^{Δ}·w − η·‖w‖·u``. Three passes over each block: the C++ core's
``ddc_split_sums``, ``ddc_split_moments``, ``ddc_split_apply`` on CPU float blocks, the torch
reference below (:func:`split_sums` & co.) for the rest; :class:`SplitStep` combines the
per-unit coefficients between the passes.

Check before commit, as the coordinate form (``_functional``): a coordinate whose new moments
(pass 1) or new value (pass 2) would not be finite keeps its pre-step ones, and a unit whose
radial Adam state would not be finite keeps it (its radial step is that state's); the passes and
:class:`SplitStep` count them (``refused``) for the optimizer's ``nonfinite`` policy. The second
moments are accumulated in AdamW's order, ``((1 − β₂)·t)·t``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.dlpack import to_dlpack

from deadspec import _core
from deadspec.optim._functional import (
    commit_finite,
    cpu_float,
    fused_ok,
    init_adam_state,
    mean_within_segments,
)
from deadspec.optim._plan import Plan, Site

__all__ = [
    "FUSED",
    "SplitStep",
    "core_step_ok",
    "split_apply",
    "split_moments",
    "split_sums",
]

#: Run the split form's passes in the C++ core on CPU (the tests switch it off to compare).
FUSED = True



def core_step_ok(plan: Plan, state: Any, param_groups: list[dict[str, Any]]) -> bool:
    """Whether a split step combines the per-unit coefficients in the core (``SplitStep`` with
    ``decay``; the bound plan's arithmetic) and folds the decoupled decay into the passes:
    :data:`FUSED`, every parameter with a gradient a block the core's passes take, every site's
    blocks CPU float, and every such group's lr·weight_decay in [0, 1]."""
    if not FUSED:
        return False
    for group in param_groups:
        stepped = [p for p in group["params"] if p.grad is not None]
        if stepped and not 0.0 <= float(group["lr"] * group["weight_decay"]) <= 1.0:
            return False
        for p in stepped:
            st = state.get(p) or {}
            if not fused_ok(p, p.grad, st.get("exp_avg", p), st.get("exp_avg_sq", p)):
                return False
    return all(cpu_float(s.weight, s.bias, *s.consumers) for s in plan.sites)


# The split form (DDCAdam form="split"): the torch reference of the C++ core's three passes
# (ddc_split_sums, ddc_split_moments, ddc_split_apply); see those for the contract. ``row`` and
# ``col`` are σ's row and column factors (None = 1), ``mean`` the column means of x̃ a
# logit-shift consumer is centred by.


def split_sigma(
    p: torch.Tensor, row: torch.Tensor | None, col: torch.Tensor | None
) -> torch.Tensor | None:
    s = None if row is None else row.to(p.dtype).reshape((-1,) + (1,) * (p.ndim - 1))
    if col is not None:
        c = col.to(p.dtype).reshape(1, -1)
        s = c if s is None else s * c
    return s


def split_centred(xt: torch.Tensor, mean: torch.Tensor | None) -> torch.Tensor:
    return xt if mean is None else xt - mean.to(xt.dtype).reshape(1, -1)


def split_sums(
    p: torch.Tensor,
    row: torch.Tensor | None,
    col: torch.Tensor | None,
    mean: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Pass 0: (Σ g̃x̃, Σ x̃²) per row and (Σ g̃·Px̃, Σ (Px̃)²) per column (None for 1-D)."""
    s = split_sigma(p, row, col)
    xt = p if s is None else p / s
    gt = p.grad if s is None else p.grad * s
    if p.ndim == 1:
        return gt * xt, xt * xt, None, None
    pc = split_centred(xt, mean)
    return (gt * xt).sum(1), (xt * xt).sum(1), (gt * pc).sum(0), (pc * pc).sum(0)


def split_project(
    v: torch.Tensor,
    xt: torch.Tensor,
    mean: torch.Tensor | None,
    row_coef: torch.Tensor | None,
    col_coef: torch.Tensor | None,
    col_norm: torch.Tensor | None,
) -> torch.Tensor:
    """``v`` minus its radial part: ``a_i·x̃`` along rows, or ``(v − b_j·Px̃)·n_j`` along
    columns."""
    if row_coef is not None:
        return v - row_coef.to(v.dtype).reshape((-1,) + (1,) * (v.ndim - 1)) * xt
    if col_coef is not None:
        assert col_norm is not None
        pc = split_centred(xt, mean)
        return (v - col_coef.to(v.dtype).reshape(1, -1) * pc) * col_norm.to(v.dtype).reshape(1, -1)
    return v


def split_update(state: dict[str, Any], group: dict[str, Any]) -> torch.Tensor:
    """``lr/(1−β₁ᵗ) · m/(√v/√(1−β₂ᵗ) + ε)`` as the core computes it (0 where the denominator
    is 0: ε = 0 on a coordinate whose moments are both 0, as a block with no tangent space)."""
    beta1, beta2 = group["betas"]
    step = state["step"].item()
    inv_bc2_sqrt = 1.0 / math.sqrt(1 - beta2**step)
    step_size = group["lr"] / (1 - beta1**step)
    m, v = state["exp_avg"], state["exp_avg_sq"]
    denom = v.sqrt() * inv_bc2_sqrt + group["eps"]
    # (a coordinate with m = v = 0 and eps = 0, e.g. in a block with no tangent, stays put)
    return torch.where(denom > 0, m / denom, torch.zeros_like(m)) * step_size


def split_moments(
    p: torch.Tensor,
    state: dict[str, Any],
    group: dict[str, Any],
    blk: dict[str, Any],
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Pass 1: moments on the tangential input (checked before commit); returns (Σ u·x̃ per
    row, Σ u·Px̃ per column, coordinates refused)."""
    s = split_sigma(p, blk.get("row_scale"), blk.get("col_scale"))
    xt = p if s is None else p / s
    gt = p.grad if s is None else p.grad * s
    mean = blk.get("col_mean")
    t = split_project(gt, xt, mean, blk.get("row_coef"), blk.get("col_coef"), blk.get("col_norm"))
    beta1, beta2 = group["betas"]
    m = state["exp_avg"].lerp(t, 1 - beta1)
    t2 = (t * (1 - beta2)) * t  # AdamW's order: overflows where it does
    if blk.get("rot_axis") is not None:
        t2 = mean_within_segments(t2, blk["rot_axis"], blk["rot_segments"])
    v = state["exp_avg_sq"].mul(beta2).add_(t2)
    refused = commit_finite([state["exp_avg"], state["exp_avg_sq"]], [m, v])
    u = split_update(state, group)
    if p.ndim == 1:
        return u * xt, None, refused
    return (u * xt).sum(1), (u * split_centred(xt, mean)).sum(0), refused


def split_apply(
    p: torch.Tensor, state: dict[str, Any], group: dict[str, Any], blk: dict[str, Any]
) -> torch.Tensor:
    """Pass 2: ``x ← x·r_i·c_j − σ·(re-projected u)`` (a centred block: only ``Px`` scaled),
    checked before commit; returns the number of coordinates refused."""
    s = split_sigma(p, blk.get("row_scale"), blk.get("col_scale"))
    xt = p if s is None else p / s
    mean = blk.get("col_mean")
    coefs = (blk.get("row_coef"), blk.get("col_coef"), blk.get("col_norm"))
    u = split_project(split_update(state, group), xt, mean, *coefs)
    row_mult, col_mult = blk.get("row_mult"), blk.get("col_mult")
    x = p
    if row_mult is not None:
        x = x * row_mult.to(p.dtype).reshape((-1,) + (1,) * (p.ndim - 1))
    if col_mult is not None:
        c = col_mult.to(p.dtype).reshape(1, -1)
        if mean is None:
            x = x * c
        else:
            pc = split_centred(xt, mean)
            x = x + (c - 1) * (pc if s is None else s * pc)
    return commit_finite([p], [x - (u if s is None else u * s)])


class SplitStep:
    """One step of DDCAdam's split form (``form="split"``, theory.md §6.5) over a plan's sites,
    after the decoupled decay: the three passes over every block and the per-unit coefficients
    combined between them. ``rho``: the site scales of the decayed parameters; ``hparams(site)``:
    the (lr, betas, eps) of the site's scalar radial Adam."""

    def __init__(
        self,
        plan: Plan,
        state: Any,
        param_groups: list[dict[str, Any]],
        rho: list[torch.Tensor | None],
        hparams: Callable[[Site], tuple[float, tuple[float, float], float]],
        decay: dict[int, float] | None = None,
    ) -> None:
        self.plan = plan
        self.state = state
        self.param_groups = param_groups
        self.rho = rho
        self.hparams = hparams
        #: ``None``: the torch arithmetic between the passes (the reference). A dict: the core's
        #: (:func:`core_step_ok`; ``_core.ddc_split_units``, the bound plan's), the decoupled
        #: decay still to apply folded into the passes (factor per parameter id; 1 elsewhere)
        self.decay = decay
        #: coordinates refused by the check before commit, per stepped parameter (by id) and
        #: units per site (by name): ints from the core, 0-dim tensors from torch
        self.refused: dict[int, list[Any]] = {}
        self.site_refused: dict[str, Any] = {}

    def run(self) -> None:
        """Steps (1)-(5) of ``form="split"`` after the prologue's decay (``docs/ddc.md``, "The
        split form").

        In the invariant coordinates ``x̃ = x/σ`` of the coordinate form a live producer row
        ``[x̃_w | x̃_b]`` has unit norm, and a column of a consumer that produces for no site is
        theory's block ``w₂`` times the invariant ``ρ₁``. Per unit: tangential Adam on
        ``‖x̃_blk‖·(g̃ − ⟨g̃, x̃_blk⟩x̃_blk/‖x̃_blk‖²)``, the update re-projected, a scalar Adam on
        ``g_U = (ĝ₁ + ĝ₂)/√2``, and ``x̃_blk ← e^{Δ_U/√2}·x̃_blk − η·‖x̃_blk‖·u``. Every quantity
        is a function of invariants, so the step is exactly equivariant. Three passes over each
        block (C++ core on CPU, :func:`split_sums` & co. otherwise); the per-unit coefficients
        are combined here in between.
        """
        plan = self.plan
        rho = self.rho
        stepped: list[tuple[torch.Tensor, dict[str, Any]]] = [
            (p, g) for g in self.param_groups for p in g["params"] if p.grad is not None
        ]
        # every block the sites read (a producer outside the param groups still defines its
        # units' rows) and the stepped ones, with σ's factors and a logit-shift centring
        tensors = {id(p): p for p, _ in stepped}
        for st in plan.sites:
            for t in (st.weight, st.bias, *st.consumers):
                if t is not None and t.grad is not None:
                    tensors.setdefault(id(t), t)
        blk = {i: self._block(t, rho) for i, t in tensors.items()}
        for p, _ in stepped:
            state = self.state[p]
            if len(state) == 0:
                init_adam_state(state, p)
            state["step"] += 1
        sums = self._pass("sums", blk, stepped, tensors)
        # (1)-(3) per unit: live units, radial coefficients of g̃, the radial Adam
        lrs: dict[int, set[float]] = {}  # (the core's radial factors: per site, its sides' lrs)
        for p, group in stepped:
            for site in (plan.row.get(id(p)), plan.col.get(id(p))):
                if site is not None:
                    lrs.setdefault(site, set()).add(float(group["lr"]))
        sites = [self._site(s, sums, lrs.get(i, set())) for i, s in enumerate(plan.sites)]
        self._coefficients(sites, "grad", blk)
        # (4) moments on the tangential inputs, the update's radial parts, re-projection
        dots = self._pass("moments", blk, stepped)
        for s, ss in zip(plan.sites, sites):
            if ss is not None:
                ss["update_row"] = torch.where(
                    ss["live"], self._unit_rows(s, dots, 0) / ss["q"], ss["zero"]
                )
                ss["update_col"] = torch.where(
                    ss["n2"] > 0,
                    self._unit_cols(s, dots, 1, only=True) / ss["n2_safe"],
                    ss["zero"],
                )
        self._coefficients(sites, "update", blk)
        # (5) apply: radial multiplicatively, tangential additively
        # (each side's Δlog ρ = lr·(the site's radial Adam direction), with its own group's lr:
        # a group with lr = 0 does not move)
        for p, group in stepped:
            b = blk[id(p)]
            r, c = plan.row.get(id(p)), plan.col.get(id(p))
            for key, site in (("row_mult", r), ("col_mult", c)):
                ss = None if site is None else sites[site]
                if ss is None:
                    continue
                if "mults" in ss:  # (the core's)
                    b[key] = ss["mults"][float(group["lr"])].to(p.dtype)
                else:
                    b[key] = torch.exp(group["lr"] * ss["radial"]).to(p.dtype)
        self._pass("apply", blk, stepped)

    def _block(self, p: torch.Tensor, rho: list[torch.Tensor | None]) -> dict[str, Any]:
        """σ's factors of a block (ρ of the site whose rows it holds; 1/ρ of the site whose
        units index its columns), the column means of x̃ on a logit-shift consumer, rotations."""
        plan = self.plan
        r, c = plan.row.get(id(p)), plan.col.get(id(p))
        b: dict[str, Any] = {
            "row_scale": None if r is None else rho[r].to(p.dtype),
            "col_scale": None if c is None else (1.0 / rho[c]).to(p.dtype),
        }
        if id(p) in plan.shift and p.ndim == 2:
            mean = p.mean(0)
            b["col_mean"] = mean if b["col_scale"] is None else mean / b["col_scale"]
        rot = plan.rot.get(id(p))
        if rot is not None:
            b["rot_axis"], b["rot_segments"] = rot.axis, list(rot.segments)
        return b

    def _pass(
        self,
        which: str,
        blk: dict[int, dict[str, Any]],
        stepped: list[tuple[torch.Tensor, dict[str, Any]]],
        tensors: dict[int, torch.Tensor] | None = None,
    ) -> dict[int, tuple[torch.Tensor | None, ...]]:
        """One pass over ``tensors`` (``"sums"``: every block the sites read) or the stepped
        parameters (``"moments"``, ``"apply"``). CPU float blocks go to the core in one call, the
        rest through torch."""
        groups = {id(p): g for p, g in stepped}
        params = {id(p): p for p, _ in stepped} if tensors is None else tensors
        ids = list(params)
        out: dict[int, tuple[torch.Tensor | None, ...]] = {}
        fused: list[int] = []
        calls: list[dict[str, Any]] = []
        for i in ids:
            p = params[i]
            b = blk[i]
            state = self.state[p] if i in groups else None
            if (
                state
                and FUSED
                and fused_ok(p, p.grad, state["exp_avg"], state["exp_avg_sq"])
            ):
                group = groups[i]
                call = {
                    "param": p.detach().__dlpack__(),
                    "grad": p.grad.detach().__dlpack__(),
                    "exp_avg": state["exp_avg"].__dlpack__(),
                    "exp_avg_sq": state["exp_avg_sq"].__dlpack__(),
                    "lr": float(group["lr"]),
                    "beta1": float(group["betas"][0]),
                    "beta2": float(group["betas"][1]),
                    "eps": float(group["eps"]),
                    "step": int(state["step"].item()),
                }
                if self.decay is not None and i in self.decay:
                    call["decay"] = float(self.decay[i])
                for k, v in b.items():
                    if v is None:
                        continue
                    call[k] = v.__dlpack__() if isinstance(v, torch.Tensor) else v
                fused.append(i)
                calls.append(call)
                continue
            if which == "sums":
                out[i] = split_sums(p, b.get("row_scale"), b.get("col_scale"), b.get("col_mean"))
            elif which == "moments":
                *out[i], n = split_moments(p, self.state[p], groups[i], b)
                self.refused.setdefault(i, []).append(n)
            else:
                self.refused.setdefault(i, []).append(split_apply(p, self.state[p], groups[i], b))
        if calls:
            fn = {
                "sums": _core.ddc_split_sums,
                "moments": _core.ddc_split_moments,
                "apply": _core.ddc_split_apply,
            }[which]
            res = fn(calls)
            for i, r in zip(fused, res):
                if which == "apply":  # (the refused count)
                    self.refused.setdefault(i, []).append(r)
                    continue
                if which == "moments":
                    *r, n = r
                    self.refused.setdefault(i, []).append(n)
                dt = params[i].dtype
                out[i] = tuple(
                    None if a.size == 0 and params[i].ndim == 1 else torch.from_numpy(a).to(dt)
                    for a in r
                )
        return out

    def _unit_rows(
        self, s: Site, vals: dict[int, tuple[torch.Tensor | None, ...]], k: int
    ) -> torch.Tensor:
        """Per unit, entry ``k`` of the row sums over a site's producer blocks (weight and bias,
        or γ and β); blocks without an entry (not stepped) contribute 0."""
        out = torch.zeros(s.weight.shape[0], dtype=s.weight.dtype, device=s.weight.device)
        for t in (s.weight, s.bias):
            if t is not None and id(t) in vals:
                out = out + vals[id(t)][k].to(out.dtype)
        return out

    def _unit_cols(
        self,
        s: Site,
        vals: dict[int, tuple[torch.Tensor | None, ...]],
        k: int,
        only: bool,
    ) -> torch.Tensor:
        """Per unit, entry ``k`` of the column sums over a site's consumers (``only``: those
        that produce for no site, the column-split blocks)."""
        out = torch.zeros(s.weight.shape[0], dtype=s.weight.dtype, device=s.weight.device)
        for c in s.consumers:
            if id(c) in vals and not (only and id(c) in self.plan.row):
                out = out + vals[id(c)][k].to(out.dtype)
        return out

    def _site(
        self, s: Site, sums: dict[int, tuple[torch.Tensor | None, ...]], lrs: set[float]
    ) -> dict[str, Any] | None:
        """A site's per-unit quantities for this step, and (2)-(3) its radial Adam. None (not
        split: Adam on g̃ for its blocks) when a block of the site has no gradient. ``lrs``: the
        lrs its radial factors are wanted for (the core's arithmetic only)."""
        if any(t is not None and t.grad is None for t in (s.weight, s.bias, *s.consumers)):
            return None
        if self.decay is not None:
            return self._site_core(s, sums, sorted(lrs))
        q = self._unit_rows(s, sums, 1)
        live = q > 0.5  # a unit-norm x̃ row; a dead row (ρ = 0 → ρ := 1) has q ≈ 0
        if s.units is not None:
            inside = torch.zeros_like(live)
            inside[s.units.to(live.device)] = True
            live &= inside
        zero = torch.zeros_like(q)
        one = torch.ones_like(q)
        n2 = self._unit_cols(s, sums, 3, only=True)
        n2 = torch.where(live & (n2 > torch.finfo(q.dtype).tiny), n2, zero)
        n2_safe = torch.where(n2 > 0, n2, one)
        q = torch.where(live, q, one)
        g_in = self._unit_rows(s, sums, 0)  # ĝ₁ = ⟨g̃, x̃⟩ = ⟨g, w⟩ over the producer block
        g_out = self._unit_cols(s, sums, 2, only=False)  # ĝ₂ over every consumer (centred)
        g_u = torch.where(live, (g_in + g_out) / math.sqrt(2.0), zero)
        _, (beta1, beta2), eps = self.hparams(s)
        st = s.state
        if "split_step" not in st:
            st["split_step"] = 0
            st["split_exp_avg"] = torch.zeros_like(g_u)
            st["split_exp_avg_sq"] = torch.zeros_like(g_u)
        st["split_step"] += 1
        # checked before commit: a unit whose radial moments would not be finite keeps them
        # (and its direction is that of the moments as stored)
        self.site_refused[s.name] = commit_finite(
            [st["split_exp_avg"], st["split_exp_avg_sq"]],
            [
                st["split_exp_avg"].lerp(g_u, 1 - beta1),
                st["split_exp_avg_sq"].mul(beta2).addcmul_(g_u, g_u, value=1 - beta2),
            ],
        )
        bc1, bc2 = 1 - beta1 ** st["split_step"], 1 - beta2 ** st["split_step"]
        denom = (st["split_exp_avg_sq"] / bc2).sqrt().add_(eps)
        # the radial Adam's direction −m̂/(√v̂ + ε) (0 where m = v = 0 and ε = 0); each side
        # scales it by its own group's lr when it is applied
        direction = torch.where(denom > 0, -(st["split_exp_avg"] / bc1) / denom, zero)
        return {
            "live": live,
            "q": q,
            "n2": n2,
            "n2_safe": n2_safe,
            "zero": zero,
            "radial": torch.where(live, direction / math.sqrt(2.0), zero),
            "grad_row": torch.where(live, g_in / q, zero),
            "grad_col": torch.where(n2 > 0, self._unit_cols(s, sums, 2, only=True) / n2_safe, zero),
            "col_norm": torch.where(n2 > 0, n2.sqrt(), one),
        }

    def _site_core(
        self, s: Site, sums: dict[int, tuple[torch.Tensor | None, ...]], lrs: list[float]
    ) -> dict[str, Any]:
        """:meth:`_site` through the core's ``ddc_split_units`` (the bound plan's arithmetic),
        with the radial factors ``exp(lr·direction)`` for each of ``lrs``."""
        q = self._unit_rows(s, sums, 1)
        st = s.state
        if "split_step" not in st:
            st["split_step"] = 0
            st["split_exp_avg"] = torch.zeros_like(q)
            st["split_exp_avg_sq"] = torch.zeros_like(q)
        st["split_step"] += 1
        _, (beta1, beta2), eps = self.hparams(s)
        out = torch.empty(8 + len(lrs), q.shape[0], dtype=q.dtype)
        vals = {
            "q": q,
            "g_in": self._unit_rows(s, sums, 0),
            "n2": self._unit_cols(s, sums, 3, only=True),
            "g_out": self._unit_cols(s, sums, 2, only=False),
            "g_only": self._unit_cols(s, sums, 2, only=True),
            "exp_avg": st["split_exp_avg"],
            "exp_avg_sq": st["split_exp_avg_sq"],
            "out": out,
        }
        args: dict[str, Any] = {k: to_dlpack(v) for k, v in vals.items()}
        args.update(
            step=st["split_step"], beta1=float(beta1), beta2=float(beta2), eps=float(eps),
            lrs=lrs, units=None if s.units is None else s.units.tolist(),
        )
        self.site_refused[s.name] = _core.ddc_split_units(args)
        n2 = out[2]
        return {
            "live": out[0] > 0,
            "q": out[1],
            "n2": n2,
            "n2_safe": out[3],
            "zero": torch.zeros_like(q),
            "radial": out[4],
            "grad_row": out[5],
            "grad_col": out[6],
            "col_norm": out[7],
            "mults": {lr: out[8 + k] for k, lr in enumerate(lrs)},
        }

    def _coefficients(
        self,
        sites: list[dict[str, torch.Tensor] | None],
        which: str,
        blk: dict[int, dict[str, Any]],
    ) -> None:
        """Hand each block the radial coefficients (``which``: of the gradient or the update)
        of the split site it is a block of: its rows' site (a producer, stacked or not), else
        its columns' site if it produces for none."""
        plan = self.plan
        for i, b in blk.items():
            r, c = plan.row.get(i), plan.col.get(i)
            b["row_coef"] = b["col_coef"] = b["col_norm"] = None
            if r is not None:
                if sites[r] is not None:
                    b["row_coef"] = sites[r][which + "_row"]
            elif c is not None and sites[c] is not None:
                b["col_coef"] = sites[c][which + "_col"]
                b["col_norm"] = sites[c]["col_norm"]
            dt = self._dtype(b)
            for k in ("row_coef", "col_coef", "col_norm"):
                if b[k] is not None and dt is not None:
                    b[k] = b[k].to(dt)

    @staticmethod
    def _dtype(b: dict[str, Any]) -> torch.dtype | None:
        for k in ("row_scale", "col_scale"):
            if b.get(k) is not None:
                return b[k].dtype
        return None
