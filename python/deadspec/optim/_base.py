"""The machinery every DDC optimizer shares: construction (gauges → plan), sites and their
scales, gauge-mode gradients and policies, the non-finite policy, state.

The non-finite policy (``nonfinite="raise" | "skip"``) covers what goes into a step and what
comes out of it. In: a NaN/Inf gradient raises RuntimeError naming the parameter, or skips the
whole step with nothing written (one ``torch._foreach_norm`` pass over the gradients). Out:
every path checks each coordinate's new parameter and moments before it writes them (in the C++
kernels' own pass, in the torch paths out of place; ``_functional``), so no step ever writes a
NaN/Inf; a coordinate whose new values would not be finite (an overflow) keeps its pre-step
parameter and moments, and so does a unit whose site state would not be. After the step
:meth:`DDCBase._output_policy` raises RuntimeError naming the parameters and sites where that
happened (``"raise"``; every other coordinate has taken the step) or warns (``"skip"``: those
coordinates skipped the step)."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import numbers
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn

from deadspec import gauges as G
from deadspec._util import unwrap_parallel
from deadspec.gauges._binding import module_root, parameter_names
from deadspec.gauges._modules import scale_cols_, scale_rows_
from deadspec.optim._functional import (
    AdamBlock,
    adam_ratio_bound,
    commit_finite,
    gauge_dots,
    restrict_units,
    site_rho,
)
from deadspec.optim._plan import Plan, Site, build_plan, warn_unread
from deadspec.optim._sharded import Shards, check_sharded, local, plain_mirror, sharded_params

__all__ = [
    "FORMS",
    "GAUGE_MODES",
    "NONFINITE",
    "DDCBase",
    "TorchOptions",
    "check_betas",
    "check_nonnegative",
    "check_params_source",
]

GAUGE_MODES = ("zero", "damped", "balance")
SITE_KEY = "site."  # a site's state entries in its producer weight's parameter state
NONFINITE = ("raise", "skip")
FORMS = ("coordinate", "split")


def check_nonnegative(fn: str, name: str, value: Any) -> None:
    """ValueError unless ``value`` is a real number >= 0 (a hyper-parameter)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value >= 0.0:
        raise ValueError(f"deadspec.{fn}: {name} must be a non-negative float, got {value!r}")


def check_betas(fn: str, name: str, betas: Any) -> tuple[float, ...]:
    """``betas`` as two floats in [0, 1), else ValueError."""
    try:
        vals = tuple(float(b) for b in betas)
    except (TypeError, ValueError):
        vals = ()
    if isinstance(betas, (str, bytes)) or len(vals) != 2 or not all(0.0 <= b < 1.0 for b in vals):
        raise ValueError(f"deadspec.{fn}: {name} must be two floats in [0, 1), got {betas!r}")
    return vals


def check_params_source(fn: str, source: Any, arg: str = "model_or_params") -> list[Any]:
    """The plain-parameters form of ``model_or_params`` (or ``params=``): an iterable of
    tensors, ``(name, tensor)`` pairs or param-group dicts with ``"params"``; as a list."""
    what = (
        f"{arg} must be {'an nn.Module, or ' if arg == 'model_or_params' else ''}an iterable "
        f"of parameters (tensors, (name, tensor) pairs) or of param-group dicts with 'params'"
    )
    if isinstance(source, torch.Tensor):
        raise TypeError(f"deadspec.{fn}: {what}, got a bare Tensor (pass [tensor])")
    if isinstance(source, (str, bytes, dict)) or not hasattr(source, "__iter__"):
        raise TypeError(f"deadspec.{fn}: {what}, got {type(source).__name__}")
    entries = list(source)
    if not entries:
        raise ValueError(f"deadspec.{fn}: {what}, got an empty iterable")
    for e in entries:
        pair = isinstance(e, tuple) and len(e) == 2 and isinstance(e[1], torch.Tensor)
        if not (isinstance(e, torch.Tensor) or pair or (isinstance(e, dict) and "params" in e)):
            raise TypeError(f"deadspec.{fn}: {what}, got an entry of type {type(e).__name__}")
    return entries


class TorchOptions:
    """The ``torch.optim`` options a DDC optimizer takes (keyword-only, torch's defaults).

    ``maximize`` is honoured everywhere (the gradients are negated for the step, an exact
    operation, and restored after it). ``foreach`` picks the path (None: the optimizer's
    default; True needs ``multi_tensor``). ``fused``, ``capturable``, ``differentiable`` and
    ``amsgrad`` are accepted at their off values only; anything else raises
    NotImplementedError naming the option (``why`` says why). A value of another type raises
    ValueError.
    """

    why = {
        "fused": "torch's fused Adam kernels take no gauge scales (on CPU the DDC step "
        "already runs as one fused pass of the C++ core)",
        "capturable": "the step reads its step count on the host and calls the C++ core, so it "
        "cannot be captured in a CUDA graph",
        "differentiable": "the step runs under torch.no_grad and through the C++ core",
        "amsgrad": "no running maximum of the second moment is kept in the invariant "
        "coordinates",
    }

    def __init__(
        self,
        fn: str,
        *,
        maximize: bool,
        foreach: bool | None,
        fused: bool | None,
        capturable: bool,
        differentiable: bool,
        amsgrad: bool = False,
        multi_tensor: bool = True,
    ) -> None:
        for name, value, allowed in (
            ("maximize", maximize, (False, True)),
            ("foreach", foreach, (None, True, False)),
            ("fused", fused, (None, False, True)),
            ("capturable", capturable, (False, True)),
            ("differentiable", differentiable, (False, True)),
            ("amsgrad", amsgrad, (False, True)),
        ):
            if not any(value is a for a in allowed):
                raise ValueError(
                    f"deadspec.{fn}: {name} must be one of {allowed}, got {value!r}"
                )
        if foreach and not multi_tensor:
            raise NotImplementedError(
                f"deadspec.{fn}: foreach=True is not supported (the optimizer steps one "
                f"tensor at a time; it has no multi-tensor path), got foreach=True"
            )
        for name, value in (
            ("fused", fused),
            ("capturable", capturable),
            ("differentiable", differentiable),
            ("amsgrad", amsgrad),
        ):
            if value:
                raise NotImplementedError(
                    f"deadspec.{fn}: {name}=True is not supported ({self.why[name]}), got "
                    f"{name}=True"
                )
        self.maximize = bool(maximize)
        self.foreach = foreach


class DDCBase(torch.optim.Optimizer):
    """Shared machinery of the DDC optimizers: sites, scales, residuals, policies, state.

    The constructor binds the gauges (discovered, or the given ones) to the model as a
    :class:`~deadspec.optim._plan.Plan` and hands the parameters to ``torch.optim.Optimizer``;
    subclasses validate their own options first, may override :meth:`_bind_model` (called with
    the model once the plan exists, before the param groups are added) and implement ``step``
    and :meth:`_damped_hparams`.
    """

    _fn = "DDC"  #: the optimizer's name in messages
    _plain = "plain"  #: what the optimizer is without gauges (the plain-parameters warning)

    def __init__(
        self,
        model_or_params: nn.Module | Iterable[Any],
        defaults: dict[str, Any],
        *,
        gauges: list[G.Gauge] | None,
        gauge_mode: str,
        balance_rate: float,
        loss: str | None,
        nonfinite: str,
        params: Iterable[Any] | None,
        track_residuals: bool,
        rotations: bool,
        form: str = "coordinate",
        torch_options: TorchOptions | None = None,
    ) -> None:
        fn = self._fn
        if not isinstance(model_or_params, nn.Module):
            model_or_params = check_params_source(fn, model_or_params)
        elif params is not None:
            params = check_params_source(fn, params, "params")
        self._check_gauge_options(gauge_mode, nonfinite, balance_rate, loss)
        opts = torch_options
        self.maximize = False if opts is None else opts.maximize
        self.foreach = None if opts is None else opts.foreach
        self.gauge_mode = gauge_mode
        self.balance_rate = float(balance_rate)
        self.nonfinite = nonfinite
        self.track_residuals = bool(track_residuals)
        self.form = form
        self._names: dict[int, str] = {}
        self._residuals: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        # this step's refused coordinates: (name, count, kept), see _note_refused
        self._refused: list[tuple[str, Any, bool]] = []
        self._grad_norms: dict[int, float] = {}  # this step's ‖g‖₂ per parameter (by id)
        # whether the Adam moments are known to be the optimizer's own (made from zero, or a
        # loaded state that satisfies their bound): the overflow screen relies on it
        self._moments_bounded = True
        if isinstance(model_or_params, nn.Module):
            # torch.compile: the compiled module; DDP: the module it wraps (same parameters)
            model = unwrap_parallel(model_or_params)
            self._names = {id(p): n for n, p in model.named_parameters()}
            explicit = gauges is not None
            # an FSDP2 model's structure is read on a plain mirror (a collective; the same
            # module names): a forward through its submodules would break FSDP
            sharded = bool(sharded_params(model.parameters()))
            self._structure = plain_mirror(model) if sharded else model
            found = (
                G.discover(self._structure, loss=loss, chains=False) if gauges is None else gauges
            )
            self._plan = build_plan(model, list(found), explicit=explicit, fn=fn, heads=rotations)
            if gauges is None:
                warn_unread(model, self._plan, fn, self._plain)
            self._check_form()
            self._bind_model(model)
            source = model.parameters() if params is None else params
        else:
            source = self._plain_parameters(model_or_params, gauges, params, rotations)
        super().__init__(source, defaults)
        self._structure = None  # (the mirror is needed during construction only)
        self._shards: Shards | None = None
        sharded = sharded_params(p for g in self.param_groups for p in g["params"])
        if sharded:
            self._shards = Shards(sharded, fn)
            check_sharded(fn, self._shards, self._plan, self.param_groups, form=self.form,
                          gauge_mode=self.gauge_mode, track_residuals=self.track_residuals)

    def _plain_parameters(
        self, source: Any, gauges: list[G.Gauge] | None, params: Any, rotations: bool
    ) -> Any:
        """The plain-parameters form: the gauges (which must hold modules) are resolved on a
        stand-in model of their modules; without gauges there are none (a warning). Returns
        the entries for ``torch.optim.Optimizer``."""
        fn = self._fn
        if params is not None:
            raise ValueError(
                f"deadspec.{fn}: params must only be given with a model, got both "
                f"parameters and params="
            )
        if not isinstance(source, torch.Tensor):  # (torch refuses a bare tensor itself)
            source = [
                dict(e, params=[e["params"]] if isinstance(e["params"], torch.Tensor)
                     else list(e["params"]))
                if isinstance(e, dict) and "params" in e else e
                for e in source
            ]
        if not gauges:
            if gauges is None:
                warnings.warn(
                    f"deadspec.{fn}: given plain parameters, not a model: no gauges, {fn} is "
                    f"{self._plain}",
                    UserWarning,
                    stacklevel=4,
                )
            self._plan = Plan()
            return source
        names = parameter_names(source)
        root = module_root(list(gauges), names, fn)
        self._names = names or {id(p): n for n, p in root.named_parameters()}
        self._plan = build_plan(root, list(gauges), explicit=True, fn=fn, heads=rotations)
        self._check_form()
        self._bind_gauges(root)
        return source

    def _check_form(self) -> None:
        if self.form == "split" and any(0 in s.consumer_axes for s in self._plan.sites):
            site = next(s for s in self._plan.sites if 0 in s.consumer_axes)
            raise ValueError(
                f"deadspec.{self._fn}: form='split' does not support a Conv1D consumer (GPT-2's "
                f"layout), got one in {site.name!r}; use form='coordinate'"
            )

    def _bind_gauges(self, root: nn.Module) -> None:
        """Plain parameters with gauges: called with the stand-in model of the gauges' modules
        once the plan is built, before the param groups are added."""

    def _bind_model(self, model: nn.Module) -> None:
        """Called once the plan is built, before the param groups are added."""

    # -- step --------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One step (see the class and ``docs/ddc.md``). Returns the closure's loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._refused = []
        with self._signed_gradients():
            self._step()
        self._output_policy()
        return loss

    def _step(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    # -- the check before commit (module docstring) ------------------------------------------
    def _note_refused(self, what: torch.Tensor | str, count: Any, kept: bool = True) -> None:
        """Record ``count`` coordinates (units, for a site) of ``what`` (a parameter or a site
        name) that the step refused to write; an int, or a 0-dim tensor not yet synchronised.
        ``kept=False``: a screened block (``AdamBlock.keep``), whose count means the values
        were written."""
        if isinstance(count, int) and count == 0:
            return
        name = what if isinstance(what, str) else self._param_name(what)
        self._refused.append((name, count, kept))

    def _output_policy(self) -> None:
        """Apply the non-finite policy to the coordinates the step refused (one host
        synchronisation per device for the torch paths' counts)."""
        counts: list[int] = [0] * len(self._refused)
        by_device: dict[torch.device, list[int]] = {}
        for k, (_, c, _) in enumerate(self._refused):
            if isinstance(c, torch.Tensor):
                by_device.setdefault(c.device, []).append(k)
            else:
                counts[k] = int(c)
        for ks in by_device.values():
            vals = torch.stack([self._refused[k][1] for k in ks]).tolist()
            for k, v in zip(ks, vals):
                counts[k] = int(v)
        bad: dict[str, int] = {}
        written: dict[str, int] = {}
        for (name, _, kept), n in zip(self._refused, counts):
            if n:
                into = bad if kept else written
                into[name] = into.get(name, 0) + n
        self._refused = []
        if self._shards is not None and self._shards.any(bool(bad or written)):
            # every rank applies the policy to every rank's refusals (a rank that raised alone
            # would leave the others waiting in the next collective)
            for k, (b_r, w_r) in enumerate(self._shards.objects((bad, written))):
                if k == self._shards.rank:
                    continue
                for into, other in ((bad, b_r), (written, w_r)):
                    for k, v in other.items():
                        into[k] = into.get(k, 0) + v
        if written:
            # (only a parameter within a factor 2 of its dtype's largest value gets here: the
            # screen cleared the step, so the core wrote without keeping)
            where = ", ".join(f"{n!r} ({k})" for n, k in written.items())
            raise RuntimeError(
                f"deadspec.{self._fn}.step: the step must produce finite values, got "
                f"{sum(written.values())} non-finite coordinate(s) written in {where}: a "
                f"parameter already near its dtype's largest value, which the overflow screen "
                f"does not cover; rescale the parameter (they cannot be restored)"
            )
        if not bad:
            return
        where = ", ".join(f"{n!r} ({k})" for n, k in bad.items())
        msg = (
            f"deadspec.{self._fn}.step: the step must produce finite values, got "
            f"{sum(bad.values())} coordinate(s) whose new value or moments overflowed in {where} "
            f"(a gradient times its gauge scale, or the second moment, beyond the dtype's range; "
            f"huge weights or lr)"
        )
        if self.nonfinite == "raise":
            raise RuntimeError(
                msg + "; they keep their pre-step values and moments, the rest of the step was "
                "applied (nonfinite='skip' warns instead)"
            )
        warnings.warn(
            msg + "; those coordinates skipped the step (pre-step values and moments kept)",
            RuntimeWarning,
            stacklevel=5,  # (step's no_grad and profiling wrappers, then the caller)
        )

    def _param_name(self, p: torch.Tensor) -> str:
        for i, group in enumerate(self.param_groups):
            for j, q in enumerate(group["params"]):
                if q is p:
                    return self._name(p, i, j)
        return self._names.get(id(p), "a parameter")

    @contextlib.contextmanager
    def _signed_gradients(self) -> Iterator[None]:
        """``maximize=True``: every gradient negated in place for the step (exact, so every
        path, the C++ core's included, sees g → −g) and restored after it."""
        if not self.maximize:
            yield
            return
        grads: dict[int, torch.Tensor] = {}
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    grads.setdefault(id(p.grad), local(p.grad))
        dense = [g for g in grads.values() if not g.is_sparse]
        other = [g for g in grads.values() if g.is_sparse]

        def negate() -> None:
            if dense:
                torch._foreach_neg_(dense)
            for g in other:
                g.neg_()

        negate()
        try:
            yield
        finally:
            negate()

    # -- introspection -----------------------------------------------------------------------
    @property
    def gauges(self) -> list[G.Gauge]:
        """The (bound) gauges the optimizer conditions on."""
        return list(self._plan.gauges)

    @property
    def sites(self) -> list[str]:
        """Names of the rescaling sites (``pair:<producer>``, ``norm:<norm>``), in step order."""
        return [self._plan.sites[i].name for i in self._plan.order]

    def gauge_residuals(self, relative: bool = False) -> dict[str, torch.Tensor]:
        """Last gauge-mode gradients ``g_V = ĝ_in − ĝ_out`` per site (one value per unit).

        ``ĝ_in = ⟨g_row, w_row⟩`` over the producer block, ``ĝ_out = ⟨g_col, w_col⟩`` over the
        consumers. Zero up to round-off for an exact gauge. ``relative=True`` divides by the
        sum of the absolute terms (0 where that is 0). They cost a pass over every gauged
        block, so they are computed only with ``track_residuals=True`` (or
        ``gauge_mode="damped"``, which needs them); otherwise this raises RuntimeError.
        """
        if not self._wants_modes():
            raise RuntimeError(
                f"deadspec.{self._fn}.gauge_residuals: the gauge-mode gradients are not "
                f"computed; construct the optimizer with track_residuals=True"
            )
        out = {}
        for name, (gv, scale) in self._residuals.items():
            if relative:
                out[name] = torch.where(
                    scale > 0,
                    gv.abs() / scale.clamp_min(torch.finfo(scale.dtype).tiny),
                    torch.zeros_like(gv),
                )
            else:
                out[name] = gv.clone()
        return out

    def chain_modes(self) -> dict[str, torch.Tensor]:
        """The DCT gauge-mode basis of each :class:`~deadspec.gauges.Chain` (theory.md §6).

        For a chain of ``L`` layers (``W_ℓ ↦ a_ℓW_ℓ``, ``b_ℓ ↦ (a_1⋯a_ℓ)b_ℓ``) the invariants
        are the log-scale gradients ``ĝ_ℓ = ∂L/∂log a_ℓ = ⟨g_{W_ℓ}, W_ℓ⟩ + Σ_{m≥ℓ} ⟨g_{b_m},
        b_m⟩``. Returned per chain (key ``"chain:<first>-><last>"``): their orthonormal DCT-II
        coefficients ``c_k = s_k Σ_ℓ ĝ_ℓ cos(πk(ℓ + ½)/L)``, ``s_0 = √(1/L)``,
        ``s_k = √(2/L)``. ``c_0 = Σĝ/√L`` is the radial coordinate (it changes the function);
        ``c_1 … c_{L−1}`` are the chain's ``L − 1`` gauge modes, zero up to round-off for an
        exact chain. Read from the current parameters and gradients (a chain with a missing
        gradient is left out). A readout: the optimizer conditions on the chain through its
        finer per-unit Pairs (the chain's modes are combinations of their ``g_V``).
        """
        if self._shards is not None:
            raise NotImplementedError(
                f"deadspec.{self._fn}.chain_modes: needs whole parameters, got an FSDP2 model "
                f"(read the chain modes on an unsharded copy)"
            )
        out: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for g in self._plan.gauges:
                if not isinstance(g, G.Chain):
                    continue
                mods = [self._plan.chain_layers[n] for n in g.layers]
                ts = [t for m in mods for t in (m.weight, m.bias) if t is not None]
                if any(t.grad is None for t in ts):
                    continue
                w_dot = torch.stack([(m.weight.grad * m.weight).sum().double() for m in mods])
                b_dot = torch.stack(
                    [
                        (m.bias.grad * m.bias).sum().double()
                        if m.bias is not None
                        else torch.zeros((), dtype=torch.float64)
                        for m in mods
                    ]
                )
                # Σ_{m ≥ ℓ}: a bias of layer m is scaled by a_1⋯a_m
                ghat = w_dot + b_dot.flip(0).cumsum(0).flip(0)
                n = ghat.numel()
                k = torch.arange(n, dtype=torch.float64).reshape(-1, 1)
                ell = torch.arange(n, dtype=torch.float64).reshape(1, -1)
                basis = torch.cos(math.pi * k * (ell + 0.5) / n) * math.sqrt(2.0 / n)
                basis[0] = math.sqrt(1.0 / n)
                out[f"chain:{g.layers[0]}->{g.layers[-1]}"] = basis @ ghat
        return out

    def gauge_scales(self) -> dict[str, torch.Tensor]:
        """The current effective scales ρ per site (1 for dead or out-of-gauge units)."""
        with torch.no_grad():
            rho = self._site_scales()
        return {self._plan.sites[i].name: rho[i].clone() for i in self._plan.order}

    # -- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """torch's state dict plus a ``"ddc"`` header (gauge mode, form, sites). A site's own
        state (per-unit moments of the damped policy, the split form's and DDCMuon's radial
        steps) travels in its producer weight's entry of ``"state"``, as ``"site.<key>"``
        entries, so that ``torch.distributed.checkpoint`` (which keeps only ``"state"`` and
        ``"param_groups"``, keyed by parameter names) saves and restores it too; a site whose
        producer is not among the optimizer's parameters keeps it in ``"ddc"``."""
        sd = super().state_dict()
        pids = {id(p): i for i, p in enumerate(p for g in self.param_groups for p in g["params"])}
        orphans: dict[str, dict[str, Any]] = {}
        for st in self._plan.sites:
            if not st.state:
                continue
            entries = {k: (v.clone() if isinstance(v, torch.Tensor) else v)
                       for k, v in st.state.items()}
            pid = pids.get(id(st.weight))
            if pid is None:
                orphans[st.name] = entries
                continue
            slot = sd["state"].setdefault(pid, {})
            slot.update({f"{SITE_KEY}{k}": v for k, v in entries.items()})
        sd["ddc"] = {
            "gauge_mode": self.gauge_mode,
            "form": self.form,
            "sites": [st.name for st in self._plan.sites],
            "site_state": orphans,
        }
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's ``load_state_dict`` plus the DDC entries; a state for other sites, another
        form, or holding a non-finite moment (NaN/Inf in any tensor of the state: it would
        freeze or poison every later step) raises ValueError, with nothing loaded. Takes the
        state dicts of :meth:`state_dict` and of ``torch.distributed.checkpoint``'s
        ``get_optimizer_state_dict`` (no ``"ddc"`` header: the sites are checked through the
        site entries)."""
        self._check_finite_state(state_dict)
        self._moments_bounded = self._bounded_state(state_dict)
        state_dict = dict(state_dict)
        ddc = state_dict.pop("ddc", None)
        if ddc is not None:
            mine = [s.name for s in self._plan.sites]
            if list(ddc.get("sites", [])) != mine:
                raise ValueError(
                    f"deadspec.{self._fn}.load_state_dict: the state must be for the same gauge "
                    f"sites, got {list(ddc.get('sites', []))} but this optimizer has {mine}"
                )
            form = self.form
            if ddc.get("form", "coordinate") != form:
                raise ValueError(
                    f"deadspec.{self._fn}.load_state_dict: the state must be for the same "
                    f"form, got {ddc.get('form', 'coordinate')!r} but this optimizer has "
                    f"form={form!r} (its moments are of other inputs)"
                )
        site_state = dict((ddc or {}).get("site_state") or {})
        state_dict["state"], carried = self._split_site_entries(state_dict)
        super().load_state_dict(state_dict)
        for s in self._plan.sites:
            s.state = {}
            saved = carried.get(id(s.weight), site_state.get(s.name))
            for k, v in (saved or {}).items():
                s.state[k] = (
                    v.to(dtype=s.weight.dtype, device=local(s.weight).device).clone()
                    if isinstance(v, torch.Tensor)
                    else v
                )

    def _split_site_entries(
        self, state_dict: dict[str, Any]
    ) -> tuple[dict[Any, Any], dict[int, dict[str, Any]]]:
        """The parameter states of ``state_dict`` without their ``"site.<key>"`` entries, and
        those entries by ``id`` of the producer weight they belong to (saved keys map to
        parameters by position, as in torch's ``load_state_dict``; ValueError for entries on a
        parameter that is no site's producer: a state for other sites)."""
        state = state_dict.get("state") or {}
        flat = [p for g in self.param_groups for p in g["params"]]
        order = {k: i for i, k in enumerate(
            k for g in state_dict.get("param_groups", []) for k in g.get("params", []))}
        producers = {id(s.weight) for s in self._plan.sites}
        out: dict[Any, Any] = {}
        carried: dict[int, dict[str, Any]] = {}
        for key, entry in state.items():
            if not isinstance(entry, dict) or not any(
                isinstance(k, str) and k.startswith(SITE_KEY) for k in entry
            ):
                out[key] = entry
                continue
            i = order.get(key)
            p = flat[i] if i is not None and i < len(flat) else None
            if p is None or id(p) not in producers:
                raise ValueError(
                    f"deadspec.{self._fn}.load_state_dict: the state must be for the same gauge "
                    f"sites, got site entries on {key!r}, which is no site's producer here"
                )
            carried[id(p)] = {k[len(SITE_KEY):]: v for k, v in entry.items()
                              if k.startswith(SITE_KEY)}
            rest = {k: v for k, v in entry.items() if not k.startswith(SITE_KEY)}
            if rest:
                out[key] = rest
        return out, carried

    def _check_finite_state(self, state_dict: Any) -> None:
        """Refuse a state holding NaN/Inf (named: the parameter and entry, or the site)."""
        fn = f"deadspec.{self._fn}.load_state_dict"
        if not isinstance(state_dict, dict):
            return  # (torch's own checks say what is wrong)
        flat = [p for g in self.param_groups for p in g["params"]]
        order = [k for g in state_dict.get("param_groups", []) for k in g.get("params", [])]
        index = {k: i for i, k in enumerate(order)}

        def bad(v: Any) -> bool:
            return (
                isinstance(v, torch.Tensor)
                and v.is_floating_point()
                and not bool(torch.isfinite(v).all())
            )

        for key, entry in (state_dict.get("state") or {}).items():
            for name, v in (entry.items() if isinstance(entry, dict) else ()):
                if bad(v):
                    i = index.get(key)
                    what = self._param_name(flat[i]) if i is not None and i < len(flat) else key
                    raise ValueError(
                        f"{fn}: the state must hold finite values, got NaN/Inf in {name!r} of "
                        f"{what!r}"
                    )
        site_state = (state_dict.get("ddc") or {}).get("site_state") or {}
        for site, entry in site_state.items():
            for name, v in entry.items():
                if bad(v):
                    raise ValueError(
                        f"{fn}: the state must hold finite values, got NaN/Inf in {name!r} of "
                        f"site {site!r}"
                    )

    def _bounded_state(self, state_dict: Any) -> bool:
        """Whether every loaded (exp_avg, exp_avg_sq) pair satisfies the bound of moments Adam
        makes, ``|m| ≤ R·√v`` (``_functional.adam_ratio_bound`` of its group's betas, with a
        margin): then the overflow screen may clear its steps; else every later step keeps the
        per-element check (exact, a quarter slower in the core)."""
        if not isinstance(state_dict, dict):
            return False
        groups = state_dict.get("param_groups", [])
        betas = {k: g.get("betas") for g in groups for k in g.get("params", [])}
        for key, entry in (state_dict.get("state") or {}).items():
            if not isinstance(entry, dict) or "exp_avg" not in entry:
                continue
            m, v = entry.get("exp_avg"), entry.get("exp_avg_sq")
            b = betas.get(key)
            if not isinstance(m, torch.Tensor) or not isinstance(v, torch.Tensor) or b is None:
                return False
            bound = adam_ratio_bound(float(b[0]), float(b[1]))
            if not math.isfinite(bound):
                return False
            limit = 1.01 * bound * v.double().sqrt() + torch.finfo(torch.float64).tiny
            if bool((m.double().abs() > limit).any()):
                return False
        return True

    # -- helpers -----------------------------------------------------------------------------
    def _check_gauge_options(
        self, gauge_mode: str, nonfinite: str, balance_rate: float, loss: str | None
    ) -> None:
        """Validate the constructor options every DDC optimizer shares."""
        fn = self._fn
        if gauge_mode not in GAUGE_MODES:
            raise ValueError(
                f"deadspec.{fn}: gauge_mode must be one of {GAUGE_MODES}, got {gauge_mode!r}"
            )
        if nonfinite not in NONFINITE:
            raise ValueError(
                f"deadspec.{fn}: nonfinite must be 'raise' or 'skip', got {nonfinite!r}"
            )
        if not (isinstance(balance_rate, numbers.Real) and 0.0 <= balance_rate <= 1.0):
            raise ValueError(
                f"deadspec.{fn}: balance_rate must lie in [0, 1], got {balance_rate!r}"
            )
        if loss not in ("cross_entropy", None):
            raise ValueError(f"deadspec.{fn}: loss must be 'cross_entropy' or None, got {loss!r}")

    def _wants_modes(self) -> bool:
        return self.track_residuals or self.gauge_mode == "damped"

    def _prologue(self, decay: bool = True) -> tuple[bool, list[Any]]:
        """The steps every DDC optimizer starts with (after the closure): the non-finite
        policy, the gauge-mode gradients (when wanted), then (0) decoupled weight decay in the
        original coordinates (shift-aware on the logit layer) unless ``decay=False`` (the
        caller folds it into its update). Returns (proceed, modes)."""
        bad = self._first_nonfinite()
        if bad is not None:
            msg = f"deadspec.{self._fn}.step: gradients must be finite, got NaN/Inf in {bad!r}"
            if self.nonfinite == "raise":
                raise RuntimeError(msg)
            warnings.warn(msg + "; step skipped", RuntimeWarning, stacklevel=6)
            return False, []
        modes = self._gauge_modes() if self._wants_modes() else []
        if not decay:
            return True, modes
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            if wd == 0:
                continue
            for p in group["params"]:
                if p.grad is None:
                    continue
                self._decay(p, lr * wd, id(p) in self._plan.shift)
        return True, modes

    def _decay(self, p: torch.Tensor, rate: float, shift: bool) -> None:
        """Decoupled weight decay of ``p`` in place: ``p·(1 − rate)``, or for a logit layer
        (``shift``) ``p − rate·(p − mean over rows)``. With ``rate <= 1`` no value can grow
        (in place, as AdamW); beyond, the decay overshoots and is checked before commit: a
        coordinate it would overflow keeps its value and is recorded (the factor stays a
        Python float, so a product beyond the dtype is inf, not torch's conversion error)."""
        owner, p = p, local(p)
        mean = self._row_mean(owner) if shift else None
        if rate <= 1.0:
            if mean is not None:
                p.sub_(p - mean, alpha=rate)
            else:
                p.mul_(1 - rate)
            return
        new = p - (p - mean) * rate if mean is not None else p * (1 - rate)
        self._note_refused(owner, commit_finite([p], [new]))

    def _row_mean(self, p: torch.Tensor) -> torch.Tensor:
        """The mean of ``p``'s rows (keepdim), over every rank's rows of a sharded ``p``."""
        if self._shards is None or p is local(p):
            return p.mean(0, keepdim=True)
        total = self._shards.all_sum(local(p).sum(0, keepdim=True))
        return total / p.shape[0]

    def _first_nonfinite(self) -> str | None:
        """The first parameter with a non-finite gradient (None: all finite). Keeps each dense
        gradient's 2-norm (a bound on its largest entry) in ``_grad_norms`` for the step's
        overflow screen (``_functional.screen_safe``)."""
        self._grad_norms = {}
        bad = self._local_nonfinite()
        if self._shards is not None and self._shards.any(bad is not None):
            return bad or "a parameter on another rank"
        return bad

    def _local_nonfinite(self) -> str | None:
        """:meth:`_first_nonfinite` on this process's tensors (a sharded one's local rows)."""
        params = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        grads = [local(p.grad) for p in params]
        dense = [t for t in grads if not t.is_sparse]
        if len(dense) == len(grads) and dense:
            # One pass over all gradients: a norm is finite iff every element is (a finite norm
            # cannot hide a NaN/Inf; an overflowing one falls through to the exact check).
            norms = torch.stack([n.float() for n in torch._foreach_norm(dense)]).tolist()
            if all(math.isfinite(n) for n in norms):
                self._grad_norms = {id(p): n for p, n in zip(params, norms)}
                return None
        for i, group in enumerate(self.param_groups):
            for j, p in enumerate(group["params"]):
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError(
                        f"deadspec.{self._fn}.step: gradients must be dense, got a "
                        f"sparse gradient for {self._name(p, i, j)!r}"
                    )
                if not bool(torch.isfinite(local(p.grad)).all()):
                    return self._name(p, i, j)
        return None

    def _name(self, p: torch.Tensor, i: int, j: int) -> str:
        return self._names.get(id(p), f"param_groups[{i}]['params'][{j}]")

    def _damped_hparams(self, s: Site) -> tuple[float, tuple[float, float], float]:
        """(lr, betas, eps) of the scalar Adam on a site's gauge mode (``gauge_mode="damped"``)."""
        raise NotImplementedError  # pragma: no cover - overridden

    def _group_of(self, p: torch.Tensor) -> dict[str, Any]:
        for group in self.param_groups:
            if any(q is p for q in group["params"]):
                return group
        return self.defaults

    def _site_scales(self, pending_decay: bool = False) -> list[torch.Tensor | None]:
        """ρ per site. ``pending_decay``: the parameters are not decayed yet; return the scales
        of the decayed ones (:meth:`_decay_factor` applied inside the norms)."""
        rho: list[torch.Tensor | None] = [None] * len(self._plan.sites)
        for i in self._plan.order:
            s = self._plan.sites[i]
            col = None if s.in_site is None else rho[s.in_site]
            factors = (1.0, 1.0)
            if pending_decay:
                factors = (
                    self._decay_factor(s.weight),
                    1.0 if s.bias is None else self._decay_factor(s.bias),
                )
            if self._shards is None:
                rho[i] = site_rho(s.weight, s.bias, col, s.units, factors)
                continue
            # each rank its rows' norms, the vector gathered, then the units applied
            part = site_rho(local(s.weight), local(s.bias), col, None, factors)
            rho[i] = restrict_units(self._shards.gather_rows(part, s.weight), s.units)
        return rho

    def _decay_factor(self, p: torch.Tensor) -> float:
        """The factor ``1 − lr·wd`` decoupled weight decay multiplies ``p`` by this step (1 for a
        parameter without a gradient, or in no param group: it is not stepped)."""
        if p.grad is None:
            return 1.0
        for group in self.param_groups:
            if any(q is p for q in group["params"]):
                return 1.0 - group["lr"] * group["weight_decay"]
        return 1.0

    def _param_scale(self, p: torch.Tensor, rho: list[torch.Tensor | None]) -> torch.Tensor | None:
        r = self._plan.row.get(id(p))
        c = self._plan.col.get(id(p))
        if r is None and c is None:
            return None
        scale: torch.Tensor | None = None
        mine = (lambda v: v) if self._shards is None else (lambda v: self._shards.mine(v, p))
        if r is not None:
            row = mine(rho[r]).to(p.dtype)
            scale = row.reshape((-1,) + (1,) * (p.ndim - 1))
        if c is not None:
            axis = self._plan.col_axis.get(id(p), 1)
            shape = (1, -1) if axis == 1 else (-1, 1)
            inv = (rho[c] if axis == 1 else mine(rho[c])).to(p.dtype).reshape(shape)
            scale = 1.0 / inv if scale is None else scale / inv
        return scale

    def _adam_block(
        self, group: dict[str, Any], p: torch.Tensor, row: Any, col: Any, decay: float = 1.0
    ) -> AdamBlock:
        """``p``'s AdamW block (its local rows when sharded) with σ's factors ``row``/``col``."""
        state = self.state[p]
        beta1, beta2 = group["betas"]
        return AdamBlock(
            local(p),
            local(p.grad),
            local(state["exp_avg"]),
            local(state["exp_avg_sq"]),
            state["step"],
            row,
            col,
            self._local_rot(p),
            lr=group["lr"],
            beta1=beta1,
            beta2=beta2,
            eps=group["eps"],
            decay=decay,
        )

    def _local_rot(self, p: torch.Tensor) -> Any:
        """``p``'s rotated head blocks in its local rows (the plan's for a plain ``p``)."""
        r = self._plan.rot.get(id(p))
        if r is None or self._shards is None or r.axis != 0 or p is local(p):
            return r
        a, b = self._shards.rows(p)
        segs = [(s - a, e - a) for s, e in r.segments if a <= s and e <= b]
        return dataclasses.replace(r, size=b - a, segments=segs)

    def _gauge_modes(self) -> list[tuple[torch.Tensor, torch.Tensor] | None]:
        """Per site: (g_V, g_U) on the gauge's units, from the current gradients."""
        out: list[tuple[torch.Tensor, torch.Tensor] | None] = []
        self._residuals = {}
        for s in self._plan.sites:
            ts = [s.weight, s.bias, *s.consumers]
            if any(t is not None and t.grad is None for t in ts):
                out.append(None)
                continue
            if s.weight.ndim == 2:
                gin, ain = gauge_dots(s.weight, s.weight.grad, 1)
            else:
                t_in = s.weight.grad * s.weight
                gin, ain = t_in, t_in.abs()
            if s.bias is not None:
                tb = s.bias.grad * s.bias
                gin, ain = gin + tb, ain + tb.abs()
            gout = torch.zeros_like(gin)
            aout = torch.zeros_like(gin)
            for c, cg in zip(s.consumer_views(), s.consumer_views(grad=True)):
                gc, ac = gauge_dots(c, cg, 0)
                gout = gout + gc.to(gin.dtype)
                aout = aout + ac.to(gin.dtype)
            if s.units is not None:
                idx = s.units.to(gin.device)
                gin, gout, ain, aout = gin[idx], gout[idx], ain[idx], aout[idx]
            gv, gu = gin - gout, gin + gout
            self._residuals[s.name] = (gv.detach().clone(), (ain + aout).detach().clone())
            out.append((gv, gu))
        return out

    def _scale_site_(self, s: Site, c: torch.Tensor) -> None:
        """The gauge move ``c`` (one factor per unit): producer rows ×c, consumer columns ÷c.
        Checked before commit: a unit whose factor is not finite and positive, or would take a
        row or column beyond its dtype's range, is not moved (c := 1) and is recorded."""
        idx = s.units
        ok = torch.isfinite(c) & (c > 0)
        safe = torch.where(ok, c, torch.ones_like(c))
        for t in (s.weight, s.bias):
            if t is not None:
                rows = t if idx is None else t[idx.to(t.device)]
                peak = rows.abs().amax(1) if rows.ndim == 2 else rows.abs()
                ok &= torch.isfinite(peak * safe.to(device=t.device, dtype=t.dtype)).to(ok.device)
        for w in s.consumer_views():
            cols = w if idx is None else w[:, idx.to(w.device)]
            peak = cols.abs().amax(0)
            ok &= torch.isfinite(peak / safe.to(device=w.device, dtype=w.dtype)).to(ok.device)
        c = torch.where(ok, c, torch.ones_like(c))
        self._note_refused(s.name, (~ok).sum())
        scale_rows_(s.weight, idx, c)
        if s.bias is not None:
            scale_rows_(s.bias, idx, c)
        for w in s.consumer_views():
            scale_cols_(w, idx, c)

    def _policy(self, modes: list[tuple[torch.Tensor, torch.Tensor] | None]) -> None:
        """(5) The policy on the pure-gauge scales."""
        if self.gauge_mode == "damped":
            self._damped(modes)
        elif self.gauge_mode == "balance":
            self._balance()

    def _damped(self, modes: list[tuple[torch.Tensor, torch.Tensor] | None]) -> None:
        for s, mode in zip(self._plan.sites, modes):
            if mode is None:
                continue
            gv, gu = mode
            lr, (beta1, beta2), eps = self._damped_hparams(s)
            st = s.state
            if "exp_avg" not in st:
                st["step"] = 0
                st["exp_avg"] = torch.zeros_like(gv)
                st["exp_avg_sq"] = torch.zeros_like(gv)
                st["radial_exp_avg_sq"] = torch.zeros_like(gv)
            st["step"] += 1
            keys = ["exp_avg", "exp_avg_sq", "radial_exp_avg_sq"]
            new = [
                st["exp_avg"].lerp(gv, 1 - beta1),
                st["exp_avg_sq"].mul(beta2).addcmul_(gv, gv, value=1 - beta2),
                st["radial_exp_avg_sq"].mul(beta2).addcmul_(gu, gu, value=1 - beta2),
            ]
            # checked before commit: a unit whose moments would not be finite keeps them
            self._note_refused(s.name, commit_finite([st[k] for k in keys], new))
            bc1 = 1 - beta1 ** st["step"]
            bc2 = 1 - beta2 ** st["step"]
            denom = (st["exp_avg_sq"] / bc2).sqrt() + (st["radial_exp_avg_sq"] / bc2).sqrt()
            delta = -(lr / bc1) * st["exp_avg"] / denom.add_(eps)
            self._scale_site_(s, torch.exp(delta))

    def _balance(self) -> None:
        deltas = []
        for s in self._plan.sites:
            if s.weight.ndim == 2:
                p2 = s.weight.square().sum(1)
            else:
                p2 = s.weight.square()
            if s.bias is not None:
                p2 = p2 + s.bias.square()
            q2 = torch.zeros_like(p2)
            for c in s.consumer_views():
                q2 = q2 + c.square().sum(0).to(p2.dtype)
            if s.units is not None:
                idx = s.units.to(p2.device)
                p2, q2 = p2[idx], q2[idx]
            ok = (p2 > 0) & (q2 > 0) & torch.isfinite(p2) & torch.isfinite(q2)
            safe_p = torch.where(ok, p2, torch.ones_like(p2))
            safe_q = torch.where(ok, q2, torch.ones_like(q2))
            # log c = rate·½(log q − log p) with q, p the norms (here squared norms: ¼)
            delta = torch.where(
                ok, 0.25 * self.balance_rate * (safe_q.log() - safe_p.log()), torch.zeros_like(p2)
            )
            deltas.append(delta)
        for s, d in zip(self._plan.sites, deltas):
            self._scale_site_(s, torch.exp(d))
