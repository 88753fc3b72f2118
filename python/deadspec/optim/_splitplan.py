"""DDCAdam's split form through the C++ core's ``DDCSplitPlan``: every block in two calls.

The per-block path (``_split.SplitStep``) builds each step's block dicts, DLPack capsules and
per-site vectors in Python, and combines the per-unit coefficients between the passes. On CPU,
with every parameter and gauge tensor a float block of one dtype, :class:`SplitCorePlan` binds
that structure once — the parameters, moments and step counts, the sites' producers, consumers,
units, order and radial Adam moments — and a step is two core calls: ``check(grads, groups)``
(every site's ρ of the decayed producers, the first pass's sums, which read each gradient once
and so check it) and ``step(site_steps)`` (the logit layer's sums after its shift-aware decay,
each split site's per-unit step, the moments pass, the update's coefficients, the apply pass,
the step counts). The arithmetic is that of the per-block path with the core's combination
(``SplitStep`` with ``decay``), so the trajectory is the same bit for bit
(``tests/python/test_optim_split_plan.py``).

The plan is re-validated each step at the cost of a few pointer and identity comparisons, as
``_coreplan.CorePlan``: storage that moved, a replaced state entry (``load_state_dict``), a
parameter that gets its first gradient, a site that gets its radial moments, or a changed param
group makes it build again; anything it cannot take leaves the step to the per-block path.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.dlpack import to_dlpack

from deadspec import _core
from deadspec.optim._coreplan import CorePlan, grad_capsules
from deadspec.optim._functional import fused_ok
from deadspec.optim._split import FUSED

__all__ = ["SplitCorePlan"]


class SplitCorePlan:
    """The bound structure of one ``DDCAdam(form="split")`` (see the module docstring);
    :meth:`build` returns None when the optimizer's current set-up is not one the plan takes."""

    def __init__(self, opt: Any, params: list[torch.Tensor], where: list[tuple[int, int]]) -> None:
        plan = opt._plan
        self.params = params  # the stepped parameters (with state), in param-group order
        self.where = where  # (group, index) of each
        ids = {id(p): k for k, p in enumerate(params)}
        blocks = []
        self.states: list[tuple[dict[str, Any], Any, Any, Any]] = []
        #: (block, group, the column-means buffer or None) of the logit-shift parameters
        self.deferred: list[tuple[int, int, torch.Tensor | None]] = []
        for k, (p, (gi, _)) in enumerate(zip(params, where)):
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
            }
            rot = plan.rot.get(id(p))
            if rot is not None:
                b["rot_axis"], b["rot_segments"] = rot.axis, list(rot.segments)
            if id(p) in plan.shift:
                mean = torch.zeros(p.shape[1], dtype=p.dtype) if p.ndim == 2 else None
                b["deferred"] = True
                if mean is not None:
                    b["col_mean"] = to_dlpack(mean)
                self.deferred.append((k, gi, mean))
            blocks.append(b)
        sites = []
        self.site_states: list[tuple[Any, Any]] = []
        self.unborn: list[list[torch.Tensor]] = []  # the tensors of sites without radial state
        for s in plan.sites:
            m, v = s.state.get("split_exp_avg"), s.state.get("split_exp_avg_sq")
            self.site_states.append((m, v))
            site: dict[str, Any] = {
                "weight_block": ids[id(s.weight)],
                "bias_block": -1 if s.bias is None else ids[id(s.bias)],
                "in_site": -1 if s.in_site is None or s.weight.ndim != 2 else s.in_site,
                "units": None if s.units is None else s.units.tolist(),
                "consumers": [ids[id(c)] for c in s.consumers],
                "group": where[ids[id(s.weight)]][0],
            }
            if m is not None:
                site["exp_avg"], site["exp_avg_sq"] = to_dlpack(m), to_dlpack(v)
            else:
                self.unborn.append([t for t in (s.weight, s.bias, *s.consumers) if t is not None])
            sites.append(site)
        self.core = _core.DDCSplitPlan(blocks, sites, list(plan.order))
        self.sites = plan.sites
        self.tensors = list(params)  # whose storage must not move
        self.ptrs = [t.data_ptr() for t in self.tensors]
        self.others = [p for g in opt.param_groups for p in g["params"] if id(p) not in ids]
        self.group_lists = [(g["params"], len(g["params"])) for g in opt.param_groups]
        self.state_obj = opt.state

    @classmethod
    def build(cls, opt: Any) -> SplitCorePlan | None:
        """The plan of ``opt`` as it stands, or None: not a set-up the plan takes."""
        if not FUSED or opt._shards is not None or not opt._plan.sites:
            return None
        params: list[torch.Tensor] = []
        where: list[tuple[int, int]] = []
        seen: set[int] = set()
        for gi, g in enumerate(opt.param_groups):
            for j, p in enumerate(g["params"]):
                if id(p) in seen:
                    return None
                seen.add(id(p))
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
        if len({p.dtype for p in params}) != 1:
            return None  # (one dtype for every block)
        ids = {id(p) for p in params}
        for s in opt._plan.sites:
            for t in (s.weight, s.bias, *s.consumers):
                if t is not None and id(t) not in ids:
                    return None  # (a gauge tensor without state or outside the groups)
            for t in (s.state.get("split_exp_avg"), s.state.get("split_exp_avg_sq")):
                if t is not None and not (
                    isinstance(t, torch.Tensor) and t.dtype == s.weight.dtype
                    and t.device.type == "cpu" and t.is_contiguous()
                ):
                    return None
        try:
            return cls(opt, params, where)
        except (ValueError, TypeError, BufferError, RuntimeError, KeyError):
            return None  # (a layout the core refuses: the per-block path takes it)

    def current(self, opt: Any) -> bool:
        """Whether the bound structure is still the optimizer's (pointers and identities)."""
        if not FUSED or opt.state is not self.state_obj:
            return False
        if len(opt.param_groups) != len(self.group_lists):
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
        for s, (m, v) in zip(self.sites, self.site_states):
            if s.state.get("split_exp_avg") is not m or s.state.get("split_exp_avg_sq") is not v:
                return False
        return True

    def ready(self) -> bool:
        """False when a site without its radial moments would be split this step (every tensor
        of it has a gradient): the per-block path makes them."""
        return not any(all(t.grad is not None for t in ts) for ts in self.unborn)

    @staticmethod
    def groups(opt: Any) -> list[tuple[float, float, float, float, float]] | None:
        """As :meth:`CorePlan.groups`, and None when a group's lr·weight_decay is outside
        [0, 1] (the decay is folded into the passes only there)."""
        out = CorePlan.groups(opt)
        if out is None or not all(0.0 <= lr * wd <= 1.0 for lr, _, _, _, wd in out):
            return None
        return out

    def check(self, groups: list[tuple[float, float, float, float, float]]) -> int | None:
        """Hand the core this step's gradients and groups; the first block with a non-finite
        gradient (-1: none), or None when a gradient is not one the core takes."""
        grads = grad_capsules(self.params)
        if grads is None:
            return None
        try:
            return self.core.check(grads, groups)
        except (ValueError, TypeError, BufferError):
            return None

    def step(self) -> tuple[list[int], list[int]]:
        """The rest of the step after :meth:`check` (and the caller's decay of the logit
        layer): refused coordinates per block, refused units per site."""
        split = [self.core.split(i) for i in range(len(self.sites))]
        refused, site_refused = self.core.step([s.state.get("split_step", 0) for s in self.sites])
        for s, yes in zip(self.sites, split):
            if yes:
                s.state["split_step"] = s.state.get("split_step", 0) + 1
        return refused, site_refused
