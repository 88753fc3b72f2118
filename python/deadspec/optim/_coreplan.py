"""DDCAdam's coordinate step through the C++ core's ``DDCAdamPlan``: every block in two calls.

The per-block path (``adam.py``: ``_site_scales``, ``_blocks``, ``_functional.ddc_adam``) builds
each step's σ factors, block dicts and DLPack capsules in Python. On CPU, with every stepped
block one the core's fused pass takes, :class:`CorePlan` binds that structure once — the
parameters, moments and step counts, the sites' producers, their units and order — and a step is
two core calls: ``check(grads)`` (the non-finite check and max |g| per block, one read of the
gradients) and ``step(groups, bounded)`` (every site's ρ of the decayed producers, the overflow
screen, the fused pass over all blocks, the step counts). The arithmetic is the per-block
path's, so the trajectory is the same bit for bit (``tests/python/test_optim_plan.py``).

The plan is re-validated each step at the cost of a few pointer and identity comparisons: a
parameter or producer whose storage moved (``p.data = ...``, ``model.to(...)``), a state entry
replaced (``load_state_dict``), a parameter that gets its first gradient, or a changed param
group makes it build again; anything it cannot take (a sharded parameter, a GPU or half block, a
tensor ``lr``) leaves the step to the per-block path.
"""

from __future__ import annotations

import numbers
from typing import Any

import torch
from torch.utils.dlpack import to_dlpack

from deadspec import _core
from deadspec.optim._functional import fused_ok

__all__ = ["CorePlan", "grad_capsules"]


def _plain(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, (bool, torch.Tensor))


def grad_capsules(params: list[torch.Tensor]) -> list[Any] | None:
    """The parameters' gradients as DLPack capsules (None where a parameter has none), or None
    when one is not a gradient the core takes (sparse, not on CPU, not the parameter's dtype).
    (Run every step: the cheap tensor properties, and no detach of a gradient that does not
    require one.)"""
    grads: list[Any] = []
    for p in params:
        g = p.grad
        if g is None:
            grads.append(None)
        elif g.is_sparse or not g.is_cpu or g.dtype != p.dtype:
            return None
        else:
            grads.append(to_dlpack(g.detach() if g.requires_grad else g))
    return grads


class CorePlan:
    """The bound structure of one DDCAdam (see the module docstring); :meth:`build` returns
    None when the optimizer's current set-up is not one the plan takes."""

    def __init__(self, opt: Any, params: list[torch.Tensor], where: list[tuple[int, int]]) -> None:
        plan = opt._plan
        self.params = params  # the stepped parameters (with state), in param-group order
        self.where = where  # (group, index) of each
        ids = {id(p): k for k, p in enumerate(params)}
        blocks = []
        self.states: list[tuple[dict[str, Any], Any, Any, Any]] = []
        self.shift: list[tuple[int, int]] = []  # (block, group) of logit-layer parameters
        for p, (gi, _) in zip(params, where):
            st = opt.state[p]
            self.states.append((st, st["exp_avg"], st["exp_avg_sq"], st["step"]))
            b: dict[str, Any] = {
                "param": to_dlpack(p.detach()),
                "exp_avg": to_dlpack(st["exp_avg"]),
                "exp_avg_sq": to_dlpack(st["exp_avg_sq"]),
                "step": to_dlpack(st["step"]),
                "group": gi,
                "row_site": plan.row.get(id(p), -1),
                "col_site": plan.col.get(id(p), -1),
                "col_axis": plan.col_axis.get(id(p), 1),
                "fold_decay": id(p) not in plan.shift,
            }
            rot = plan.rot.get(id(p))
            if rot is not None:
                b["rot_axis"], b["rot_segments"] = rot.axis, list(rot.segments)
            if id(p) in plan.shift:
                self.shift.append((len(blocks), gi))
            blocks.append(b)
        sites = []
        site_tensors = []
        for s in plan.sites:
            site_tensors += [t for t in (s.weight, s.bias) if t is not None]
            sites.append(
                {
                    "weight": to_dlpack(s.weight.detach()),
                    "bias": None if s.bias is None else to_dlpack(s.bias.detach()),
                    "in_site": -1 if s.in_site is None or s.weight.ndim != 2 else s.in_site,
                    "units": None if s.units is None else s.units.tolist(),
                    "weight_block": ids.get(id(s.weight), -1),
                    "bias_block": -1 if s.bias is None else ids.get(id(s.bias), -1),
                }
            )
        self.core = _core.DDCAdamPlan(blocks, sites, list(plan.order))
        self.tensors = params + site_tensors  # whose storage must not move
        self.ptrs = [t.data_ptr() for t in self.tensors]
        self.others = [
            p for g in opt.param_groups for p in g["params"] if id(p) not in ids
        ]  # parameters without state: a first gradient rebuilds the plan
        self.group_lists = [(g["params"], len(g["params"])) for g in opt.param_groups]
        self.state_obj = opt.state

    @classmethod
    def build(cls, opt: Any) -> CorePlan | None:
        """The plan of ``opt`` as it stands, or None: not a set-up the plan takes."""
        if opt._shards is not None or opt.foreach is False:
            return None
        if not (opt._plan.sites or opt._plan.rot):
            return None
        params: list[torch.Tensor] = []
        where: list[tuple[int, int]] = []
        for gi, g in enumerate(opt.param_groups):
            for j, p in enumerate(g["params"]):
                st = opt.state.get(p)
                if not st:
                    if p.grad is not None:
                        return None  # (the per-block path initialises its state)
                    continue
                m, v, step = st.get("exp_avg"), st.get("exp_avg_sq"), st.get("step")
                if not (
                    isinstance(m, torch.Tensor)
                    and isinstance(v, torch.Tensor)
                    and fused_ok(p, p, m, v)
                    and isinstance(step, torch.Tensor)
                    and step.dtype == torch.float32
                    and step.device.type == "cpu"
                    and step.numel() == 1
                ):
                    return None
                params.append(p)
                where.append((gi, j))
        for s in opt._plan.sites:
            for t in (s.weight, s.bias):
                if t is not None and (
                    t.device.type != "cpu" or t.dtype not in (torch.float32, torch.float64)
                ):
                    return None
        try:
            return cls(opt, params, where)
        except (ValueError, TypeError, BufferError, RuntimeError):
            return None  # (a layout the core refuses: the per-block path takes it)

    def current(self, opt: Any) -> bool:
        """Whether the bound structure is still the optimizer's (pointers and identities)."""
        if opt.state is not self.state_obj or len(opt.param_groups) != len(self.group_lists):
            return False
        for g, (lst, n) in zip(opt.param_groups, self.group_lists):
            if g["params"] is not lst or len(lst) != n:
                return False
        if [t.data_ptr() for t in self.tensors] != self.ptrs:
            return False
        if any(q.grad is not None for q in self.others):
            return False
        state = opt.state
        for p, (st, m, v, step) in zip(self.params, self.states):
            if (
                state.get(p) is not st
                or st.get("exp_avg") is not m
                or st.get("exp_avg_sq") is not v
                or st.get("step") is not step
            ):
                return False
        return True

    @staticmethod
    def groups(opt: Any) -> list[tuple[float, float, float, float, float]] | None:
        """Each param group's (lr, beta1, beta2, eps, weight_decay), or None when one is not a
        plain number (a tensor lr: the per-block path computes with it as given)."""
        out = []
        for g in opt.param_groups:
            vals = (g["lr"], g["betas"][0], g["betas"][1], g["eps"], g["weight_decay"])
            if not all(_plain(v) for v in vals):
                return None
            out.append(tuple(float(v) for v in vals))
        return out

    def check(self) -> int | None:
        """Hand the core this step's gradients; the first block with a non-finite one (-1: none),
        or None when a gradient is not one the core takes (sparse, another dtype: the per-block
        path decides what to do with it)."""
        grads = grad_capsules(self.params)
        if grads is None:
            return None
        try:
            return self.core.check(grads)
        except (ValueError, TypeError, BufferError):
            return None
