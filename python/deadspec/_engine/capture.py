"""Capture: the forward hooks and per-layer accumulators of a reading.

A :class:`Capture` is one capture point (a module's call, or a projection inside a patched
``nn.MultiheadAttention``); a :class:`LayerState` is one entry of the reading, accumulating the
activation rows (or their ``h×h`` Gram) across batches. Several states can share a capture
(attention heads share their projection's).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from deadspec._engine.inputs import check_finite
from deadspec._engine.results import GaugeZero
from deadspec._engine.sites import SiteSpec, View, weight_out_in
from deadspec.ops import GramAccumulator, gram

__all__ = [
    "FISHER_KINDS",
    "Capture",
    "LayerState",
    "activation_rows",
    "build_states",
    "check_called",
    "install_hooks",
    "layernorm_basis",
    "on_call",
    "view_rows",
]

#: Site kinds with a Fisher side (per-sample gradients of a weight the site applies).
FISHER_KINDS = ("linear", "conv1d", "embedding", "proj")


def activation_rows(
    out: torch.Tensor, module: nn.Module, pool: str, name: str, fn: str
) -> torch.Tensor:
    if not isinstance(out, torch.Tensor):
        raise TypeError(
            f"deadspec.{fn}: layer {name!r} ({type(module).__name__}) must output a tensor for "
            f"the activation side, got {type(out).__name__}"
        )
    if not out.is_floating_point():
        raise TypeError(
            f"deadspec.{fn}: layer {name!r} output must be floating point, got {out.dtype}"
        )
    x = out
    if isinstance(module, nn.modules.conv._ConvNd) and x.ndim >= 3:
        x = x.movedim(1, -1)  # channels last: one row per sample × position
    if x.ndim < 2:
        raise ValueError(
            f"deadspec.{fn}: layer {name!r} output must be batched (N×h or N×T×h), "
            f"got shape {tuple(out.shape)}"
        )
    if x.ndim == 2:
        return x
    b, h = x.shape[0], x.shape[-1]
    x = x.reshape(b, -1, h)
    if pool == "mean":
        return x.mean(dim=1)
    return x.reshape(-1, h)


class Capture:
    """One capture point (a module's call, or a projection inside an nn.MultiheadAttention)."""

    def __init__(self, key: str, spec: SiteSpec) -> None:
        self.key = key
        self.module = spec.module
        self.kind = spec.kind
        self.mha = spec.mha
        self.proj = spec.proj
        self.sites: list[LayerState] = []
        self.fisher = False
        self.needs_input = False
        self.calls = 0
        self.cur_input: torch.Tensor | None = None
        self.probe: torch.Tensor | None = None
        self.f_acts: list[torch.Tensor] = []
        self.f_grads: list[torch.Tensor] = []
        self.has_bias = False
        self._cat: tuple[torch.Tensor, torch.Tensor] | None = None
        self.shift: GaugeZero | None = None  # the shift gauge found on δ (fisher.py)
        self.shift_checked = False
        self.out_dim = 0  # last-axis size of the model output (names the logit layer)

    def concatenated(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._cat is None:
            self._cat = (torch.cat(self.f_acts, dim=0), torch.cat(self.f_grads, dim=0))
            self.f_acts, self.f_grads = [], []
        return self._cat

    def has_factors(self) -> bool:
        """Whether per-sample factors (inputs, output gradients) were captured."""
        return self._cat is not None or bool(self.f_acts)

    def set_concatenated(self, acts: torch.Tensor, grads: torch.Tensor) -> None:
        """Replace the concatenated (inputs, output gradients), e.g. with a gauge projected out."""
        self._cat = (acts, grads)

    def release(self) -> None:
        self._cat = None
        self.f_acts, self.f_grads = [], []


class LayerState:
    """Per-reading accumulation across batches (one entry of the Reading)."""

    def __init__(
        self,
        name: str,
        module: nn.Module,
        fisher: bool,
        route: str | None,
        *,
        view: View | None = None,
        kind: str = "other",
    ) -> None:
        self.name = name
        self.module = module
        self.fisher = fisher
        self.route = route  # "feature" (h×h accumulator) | "sample" (keep rows); None = decide
        self.view = view
        self.kind = kind
        self.capture: Capture | None = None
        self.gauge_basis: np.ndarray | None = None  # h×m orthonormal (LayerNorm kernel)
        self.acc: GramAccumulator | None = None
        self.rows: list[torch.Tensor] = []
        self.n_rows = 0
        self.width = 0
        self.act_dtype: torch.dtype | None = None

    # activation side -----------------------------------------------------------------------
    def add_rows(self, rows: torch.Tensor, batch: int, n_total: int, fn: str = "read") -> None:
        if self.act_dtype is None:  # first batch: fix the width and the route
            if rows.shape[1] == 0:
                raise ValueError(
                    f"deadspec.{fn}: layer {self.name!r} must output at least one feature, got "
                    f"rows of shape {tuple(rows.shape)}"
                )
            self.act_dtype = rows.dtype
            self.width = int(rows.shape[1])
            if self.route is None:
                total_rows = (rows.shape[0] // max(batch, 1)) * n_total
                self.route = "sample" if total_rows < self.width else "feature"
            if self.route == "feature":
                self.acc = GramAccumulator(self.width)
        if rows.shape[1] != self.width:
            raise ValueError(
                f"deadspec.{fn}: layer {self.name!r} changed width between batches "
                f"({self.width} then {rows.shape[1]})"
            )
        # The core reads CPU memory: device tensors are copied to the host here.
        if self.route == "feature":
            self.acc.add(rows.detach().cpu())
        else:
            self.rows.append(rows.detach().to("cpu", copy=True))
        self.n_rows += int(rows.shape[0])

    def feature_gram(self, center: bool, project: bool = True) -> np.ndarray:
        """The ``h×h`` Gram of the activation rows, whatever the route (float64).

        At a gauged LayerNorm output it is the centred Gram with the γ⁻¹ kernel projected out
        (``project=False``: not projected), as the reading reads it.
        """
        u = self.gauge_basis
        center = center or u is not None
        if self.route == "feature":
            g = self.acc.gram(center=center)
        else:
            g = gram(torch.cat(self.rows, dim=0), side="feature", center=center)
        g = np.asarray(g, dtype=np.float64)
        if u is not None and project:
            p = np.eye(g.shape[0]) - u @ u.T
            g = p @ g @ p
        return g

    def activation_gram(self, center: bool) -> Any:
        """The Gram the activation spectrum is read from: ``h×h`` (feature route) or ``R×R``."""
        u = self.gauge_basis
        if self.route == "feature":
            return self.acc.gram(center=center) if u is None else self.feature_gram(center)
        x = torch.cat(self.rows, dim=0)
        if u is None:
            return gram(x, side="sample", center=center)
        # LayerNorm output: the centred Gram, with the γ⁻¹ kernel projected out exactly.
        x = x.double()
        x = x - x.mean(0, keepdim=True)
        ut = torch.as_tensor(u, dtype=torch.float64)
        x = x - (x @ ut) @ ut.T
        return gram(x, side="sample", center=False)

    def gauge_residual(self) -> float:
        """``max uᵀ G_c u / μ₁(G_c)`` over the kernel basis, before projection."""
        u = self.gauge_basis
        g = self.feature_gram(True, project=False)
        top = float(np.linalg.eigvalsh(g)[-1]) if g.size else 0.0
        if top <= 0:
            return 0.0
        return float(np.max(np.einsum("hm,hk,km->m", u, g, u))) / top


def view_rows(
    st: LayerState, out: torch.Tensor, a: torch.Tensor | None, pool: str, fn: str
) -> torch.Tensor:
    v = st.view
    if v is None:
        return activation_rows(out, st.module, pool, st.name, fn)
    if v.axis == "out":
        return activation_rows(out[..., v.start : v.stop], st.module, pool, st.name, fn)
    # Input block of an output projection: the head's write into the output space.
    w = weight_out_in(st.module).detach()
    z = a.detach()[..., v.start : v.stop] @ w[:, v.start : v.stop].T.to(a.dtype)
    return activation_rows(z, st.module, pool, st.name, fn)


def on_call(
    cap: Capture,
    a: Any,
    out: Any,
    pool: str,
    n_total: int,
    batch: int,
    fn: str,
) -> torch.Tensor | None:
    """Record one call of a capture point; returns ``out + probe`` when the Fisher side needs δ."""
    cap.calls += 1
    if cap.calls > 1:
        raise ValueError(
            f"deadspec.{fn}: layer {cap.key!r} was called more than once in one forward "
            f"pass (shared module); reading a shared module is not supported"
        )
    if isinstance(out, torch.Tensor) and out.ndim >= 1 and out.shape[0] != batch:
        raise ValueError(
            f"deadspec.{fn}: layer {cap.key!r} output has {out.shape[0]} rows on axis 0, not the "
            f"batch size {batch} (outputs must be batch-first; inputs broadcast over the batch, "
            f"such as position ids of shape (1, T), are not supported)"
        )
    for st in cap.sites:
        rows = view_rows(st, out, a, pool, fn)
        check_finite(rows, "activations", st.name, fn)
        # Consumed now: a later in-place op on `out` must not change what we read.
        st.add_rows(rows, batch, n_total, fn)
    if cap.fisher:
        if not isinstance(a, torch.Tensor):
            raise TypeError(f"deadspec.{fn}: could not find the tensor input of layer {cap.key!r}")
        if a.is_floating_point():
            check_finite(a, "inputs", cap.key, fn)
        cap.cur_input = a.detach().to("cpu", copy=True)
        probe = torch.zeros_like(out, requires_grad=True)
        cap.probe = probe
        # d loss / d probe == d loss / d (layer output), and parameters' .grad are never
        # touched; in-place ops downstream act on the sum, not on `out`.
        return out + probe
    return None


def install_hooks(
    captures: Sequence[Capture], call: Callable[[Capture, Any, Any], Any]
) -> list[Any]:
    """Forward hooks calling ``call(capture, input, output)`` on every module capture point;
    returns the handles (MHA projections are captured by the patched forward instead)."""
    handles = []
    for cap in captures:
        if cap.mha is not None:  # computed inside the patched MultiheadAttention.forward
            continue

        def hook(
            module: nn.Module, args: tuple, kwargs: dict, out: Any, cap: Capture = cap
        ) -> Any:
            a = args[0] if args else kwargs.get("input")
            return call(cap, a, out)

        handles.append(cap.module.register_forward_hook(hook, with_kwargs=True))
    return handles


def layernorm_basis(module: nn.Module, width: int) -> np.ndarray | None:
    """Orthonormal basis of the kernel of a LayerNorm output's covariance (γ⁻¹), or None."""
    if not isinstance(module, nn.LayerNorm) or len(module.normalized_shape) != 1:
        return None
    h = int(module.normalized_shape[0])
    if h != width or h < 1:
        return None
    if module.weight is None:
        gamma = np.ones(h)
    else:
        gamma = module.weight.detach().double().cpu().numpy()
    cols = []
    zero = gamma == 0
    for k in np.flatnonzero(zero):  # a channel with γ_k = 0 is constant: its own kernel
        e = np.zeros(h)
        e[k] = 1.0
        cols.append(e)
    if (~zero).any():
        u = np.zeros(h)
        u[~zero] = 1.0 / gamma[~zero]
        cols.append(u / np.linalg.norm(u))
    return np.stack(cols, axis=1)


def build_states(
    resolved: Sequence[tuple[str, SiteSpec]], fisher: bool, route: str | None, gauges: bool
) -> tuple[list[LayerState], list[Capture]]:
    captures: dict[str, Capture] = {}
    states: list[LayerState] = []
    for name, spec in resolved:
        cap = captures.get(spec.capture)
        if cap is None:
            cap = captures[spec.capture] = Capture(spec.capture, spec)
        has_fisher = fisher and spec.kind in FISHER_KINDS
        st = LayerState(name, spec.module, has_fisher, route, view=spec.view, kind=spec.kind)
        st.capture = cap
        cap.sites.append(st)
        cap.fisher = cap.fisher or has_fisher
        states.append(st)
    for cap in captures.values():
        m = cap.module
        if cap.kind in ("linear", "conv1d"):
            cap.has_bias = getattr(m, "bias", None) is not None
        elif cap.kind == "proj":
            cap.has_bias = m.in_proj_bias is not None
        if cap.proj == "out_proj":
            cap.has_bias = m.bias is not None
    return states, list(captures.values())


def check_called(captures: Sequence[Any], fn: str) -> None:
    for cap in captures:
        if cap.calls == 0:
            name = getattr(cap, "key", None) or cap.name
            raise RuntimeError(
                f"deadspec.{fn}: layer {name!r} was not called during the forward pass"
            )
