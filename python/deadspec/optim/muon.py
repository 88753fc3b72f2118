"""DDCMuon: Muon on the invariant coordinates of the hidden matrices, DDC AdamW on the rest
(theory.md §6.8)."""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from deadspec import gauges as G
from deadspec._attention import is_conv1d
from deadspec._limits import MAX_NS_STEPS, check_at_most
from deadspec.gauges._recognise import output_layers
from deadspec.gauges._tracing import fallback_logit, trace_info
from deadspec.optim._base import DDCBase, TorchOptions, check_betas, check_nonnegative
from deadspec.optim._functional import AdamBlock, ddc_adam, gauge_dots, init_adam_state
from deadspec.optim._muon import Scratch, ddc_muon_update, guarded_update, hidden_matrices
from deadspec.optim._plan import Site
from deadspec.optim._sharded import is_sharded, local, transposed

__all__ = ["DDCMuon"]

_MUON_KEYS = ("lr", "momentum", "nesterov", "weight_decay", "ns_steps", "ns_coefficients")
_ADAMW_KEYS = ("lr", "betas", "eps", "weight_decay")
_NS_DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)


def _coefficients(fn: str, coefficients: Any) -> tuple[Any, ...]:
    """``ns_coefficients`` as a tuple (its length and values are checked with the group)."""
    if isinstance(coefficients, (str, bytes)) or not hasattr(coefficients, "__iter__"):
        raise TypeError(
            f"deadspec.{fn}: ns_coefficients must hold 3 floats (a, b, c), got "
            f"{type(coefficients).__name__}"
        )
    return tuple(coefficients)


class DDCMuon(DDCBase):
    """Muon for hidden matrices + AdamW for the rest, both in gauge-fixed coordinates.

    Exactly equivariant under the network's gauges, ``step(g·θ) = g·step(θ)``, rescalings
    (Pair, Chain, NormScale), the logit shift and the per-head attention rotations
    (:class:`~deadspec.gauges.HeadRotation`) included. The design, and what is exactly
    equivariant, is written up in ``docs/ddc.md`` (section "DDCMuon").

    Parameters
    ----------
    model_or_params : nn.Module or iterable of parameters / param-group dicts
        The model (needed to discover the gauges and to tell hidden matrices from the output
        head and embeddings), or plain parameters: 2-D tensors get Muon, the rest AdamW (use
        ``use_muon`` groups to choose). With ``gauges=`` holding modules (see
        :class:`DDCAdam`: ``deadspec.gauges.bind(gauges, model)``) the step conditions on them
        and the head is the LogitShift layer among them (AdamW path): for a model whose 2-D
        tensors are its ``nn.Linear`` weights, the same trajectory as the model form, bit for
        bit. Without gauges: none (a warning). A ``torch.compile`` d model is taken through
        the module it compiles.
    lr, momentum, nesterov, weight_decay, ns_steps, ns_coefficients
        The Muon path: ``B ← lerp(B, g̃, 1 − momentum)``, Nesterov ``U = lerp(g̃, B, momentum)``,
        ``ns_steps`` quintic Newton–Schulz steps with ``ns_coefficients``, Keller's shape scale
        ``max(1, rows/cols)^½``, decoupled weight decay ``x ← (1 − lr·weight_decay)x`` (as
        ``torch.optim.Muon``).
    adamw_lr, adamw_betas, adamw_eps
        The AdamW path (embeddings, the output head, norm gains, biases, any non-2-D tensor).
    gauges : list of deadspec.gauges.Gauge, optional
        None: :func:`deadspec.gauges.discover` ``(model, loss=loss)``, HeadRotations included.
        An explicit list is bound to the model and its hand-declared entries validated.
        ``[]``: no gauges (plain Muon + AdamW).
    gauge_mode : {"zero", "damped", "balance"}
        Policy on the pure-gauge scales ρ, as :class:`DDCAdam` (the damped scalar Adam uses the
        AdamW hyper-parameters of the site's gain/bias, else ``adamw_*``).
    nonfinite : {"raise", "skip"}
        A NaN/Inf gradient: raise RuntimeError naming the parameter, or skip the whole step
        with a warning (parameters and state untouched). What the step produces is checked
        before it is written, as :class:`DDCAdam`: a coordinate whose new value or moments
        (momentum buffer; AdamW's moments) would be NaN/Inf keeps its pre-step ones, then
        ``"raise"`` raises RuntimeError naming the parameters and ``"skip"`` warns. (The Muon
        path keeps a copy of each block for its step to do so: Newton–Schulz leaves no cheaper
        point to check.)
    adamw_weight_decay : float, optional
        Decoupled weight decay of the AdamW path (default: ``weight_decay``).
    ns_dtype : torch.dtype, optional
        Dtype of the Newton–Schulz iteration (float64, float32, bfloat16, float16). Default:
        each parameter's dtype. ``torch.bfloat16`` reproduces ``torch.optim.Muon`` (and
        KellerJordan/Muon); exact equivariance is measured in float64.
    ns_eps : float
        ``X₀ = U/max(‖U‖_F, ns_eps)`` (``torch.optim.Muon``'s ``eps``).
    per_head : bool
        Orthogonalise each rotated head block on its own (default; ``W_q,h``, ``W_k,h``,
        ``W_v,h`` as ``d_head×d_model`` matrices, ``W_o[:, h]`` as ``d_model×d_head``). False:
        whole matrices (also exactly equivariant: the block-diagonal rotation is orthogonal).
    head : "auto", str, sequence of str or None
        Modules whose weights are the output head (AdamW path). "auto": the LogitShift layers
        among the gauges, plus the layer the traced model returns (a warning when the model
        cannot be traced and no LogitShift names it). None: no head.
    balance_rate, loss
        As :class:`DDCAdam`.
    params : iterable, optional
        With a model: the parameters or param-group dicts (default ``model.parameters()``).
        A group with ``use_muon=True`` is a Muon group (keys ``lr``, ``momentum``,
        ``nesterov``, ``weight_decay``, ``ns_steps``, ``ns_coefficients``; 2-D tensors only);
        ``use_muon=False`` an AdamW group (keys ``lr``, ``betas``, ``eps``, ``weight_decay``,
        defaults ``adamw_*``); without ``use_muon`` the group is split into both, the AdamW
        half taking ``adamw_lr``, ``adamw_betas``, ``adamw_eps``, ``adamw_weight_decay`` from
        the group or the defaults. Every entry of ``param_groups`` is therefore one path, with
        ``"use_muon"`` True or False, and its ``"lr"`` is that path's (LR schedulers scale
        both paths).
    track_residuals : bool
        As :class:`DDCAdam`: compute ``g_V`` each step for :meth:`gauge_residuals`.
    maximize : bool
        As :class:`DDCAdam`: each step sees ``−g`` (both paths).
    foreach, fused, capturable, differentiable
        torch's options, accepted at their off values (``foreach`` None: the Muon matrices one
        at a time, the AdamW blocks in one call, the C++ core's pass when there are gauges;
        False: the AdamW blocks one tensor at a time through torch); anything else raises
        NotImplementedError (``foreach=True``: no multi-tensor path; the others as
        :class:`DDCAdam`).

    Notes
    -----
    - Muon path (default): the ``weight`` of every ``nn.Linear`` and the ``in_proj_weight`` of
      ``nn.MultiheadAttention``, except the output head and weights shared with an embedding.
    - On the rows of a Pair's producer weight (Muon path), the update loses its radial part
      along the invariant row ``x̃``, and the row's scale ρ takes a step of its own: a scalar
      Adam per unit on ``ĝ = ⟨g_row, w_row⟩`` with the Muon ``lr`` and the AdamW betas and eps
      (theory.md §6.8). Kept in Muon's update, that radial part moved log ρ by a fixed fraction
      of ``lr`` per step whatever the gradient's size, and ρ grew geometrically under
      cross-entropy (issue #12; ``docs/ddc.md``, "Producer rows").
    - Parameters without a gradient are skipped, dead units (ρ = 0) are not scaled, as in
      :class:`DDCAdam`.
    - A HeadRotation whose rotated rows are also a Pair/NormScale producer's (or whose rotated
      columns a consumer's) raises ValueError: σ must be constant along the rotated axis.
    """

    _fn = "DDCMuon"
    _plain = "plain Muon (2-D tensors) + AdamW"

    def __init__(
        self,
        model_or_params: nn.Module | Iterable[Any],
        lr: float = 0.02,
        momentum: float = 0.95,
        nesterov: bool = True,
        weight_decay: float = 0.0,
        ns_steps: int = 5,
        ns_coefficients: tuple[float, float, float] = (3.4445, -4.7750, 2.0315),
        adamw_lr: float = 3e-4,
        adamw_betas: tuple[float, float] = (0.9, 0.95),
        adamw_eps: float = 1e-8,
        *,
        gauges: list[G.Gauge] | None = None,
        gauge_mode: str = "zero",
        nonfinite: str = "raise",
        adamw_weight_decay: float | None = None,
        ns_dtype: torch.dtype | None = None,
        ns_eps: float = 1e-7,
        per_head: bool = True,
        head: str | Iterable[str] | None = "auto",
        balance_rate: float = 0.1,
        loss: str | None = "cross_entropy",
        params: Iterable[Any] | None = None,
        track_residuals: bool = False,
        maximize: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
    ) -> None:
        fn = self._fn
        torch_options = TorchOptions(
            fn,
            maximize=maximize,
            foreach=foreach,
            fused=fused,
            capturable=capturable,
            differentiable=differentiable,
            multi_tensor=False,
        )
        if ns_dtype is not None and ns_dtype not in _NS_DTYPES:
            raise ValueError(
                f"deadspec.{fn}: ns_dtype must be None or one of {_NS_DTYPES}, got {ns_dtype!r}"
            )
        if not (isinstance(ns_eps, (int, float)) and ns_eps > 0 and math.isfinite(ns_eps)):
            raise ValueError(
                f"deadspec.{fn}: ns_eps must be a positive finite float, got {ns_eps!r}"
            )
        self.ns_dtype = ns_dtype
        self.ns_eps = float(ns_eps)
        self.per_head = bool(per_head)
        self._muon_defaults = {
            "lr": lr,
            "momentum": momentum,
            "nesterov": bool(nesterov),
            "weight_decay": weight_decay,
            "ns_steps": ns_steps,
            "ns_coefficients": _coefficients(fn, ns_coefficients),
        }
        self._adamw_defaults = {
            "lr": adamw_lr,
            "betas": check_betas(fn, "adamw_betas", adamw_betas),
            "eps": adamw_eps,
            "weight_decay": weight_decay if adamw_weight_decay is None else adamw_weight_decay,
        }
        self._adamw_wd_follows = adamw_weight_decay is None
        self._check_muon(self._muon_defaults)
        self._check_adamw(self._adamw_defaults, "adamw_")
        self._head = head
        self._muon_ids: set[int] | None = None  # None: plain parameters, 2-D -> Muon
        self._head_ids: set[int] = set()  # plain parameters: the head's weight (AdamW path)
        self._transposed: set[int] = set()  # Conv1D weights (stored in × out)
        self._scratch = Scratch()  # the Muon step's work tensors (not state)
        super().__init__(
            model_or_params,
            {"lr": lr, "weight_decay": weight_decay},
            gauges=gauges,
            gauge_mode=gauge_mode,
            balance_rate=balance_rate,
            loss=loss,
            nonfinite=nonfinite,
            params=params,
            track_residuals=track_residuals,
            rotations=True,
            torch_options=torch_options,
        )

    def _bind_model(self, model: nn.Module) -> None:
        # (names from the model's structure: an FSDP2 model's plain mirror, see DDCBase)
        self._muon_ids = hidden_matrices(model, self._heads(self._structure, self._head))
        self._transposed = {id(m.weight) for m in model.modules() if is_conv1d(m)}

    def _bind_gauges(self, root: nn.Module) -> None:
        """Plain parameters with gauges: the head is the LogitShift layers among the gauges
        (``head="auto"``; names need the model)."""
        self._transposed = {id(m.weight) for m in root.modules() if is_conv1d(m)}
        if self._head is None:
            return
        if self._head != "auto":
            raise ValueError(
                f"deadspec.{self._fn}: head must be 'auto' or None with plain parameters (names "
                f"need the model; the head is the LogitShift layer among the gauges, or put its "
                f"parameters in a group with use_muon=False), got {self._head!r}"
            )
        for g in self._plan.gauges:
            if isinstance(g, G.LogitShift):
                self._head_ids.add(id(root.get_submodule(g.layer).weight))

    # -- construction helpers ----------------------------------------------------------------
    def _check_muon(self, g: dict[str, Any]) -> None:
        fn = self._fn
        check_nonnegative(fn, "lr", g["lr"])
        if not (isinstance(g["momentum"], (int, float)) and 0.0 <= g["momentum"] < 1.0):
            raise ValueError(
                f"deadspec.{fn}: momentum must be a float in [0, 1), got {g['momentum']!r}"
            )
        check_nonnegative(fn, "weight_decay", g["weight_decay"])
        ns = g["ns_steps"]
        if isinstance(ns, bool) or not isinstance(ns, int) or ns < 1:
            raise ValueError(f"deadspec.{fn}: ns_steps must be a positive integer, got {ns!r}")
        check_at_most(fn, "ns_steps", ns, MAX_NS_STEPS, "5 are the usual (each is three matrix "
                      "products)")
        coefs = tuple(g["ns_coefficients"])
        if len(coefs) != 3 or not all(
            isinstance(c, (int, float)) and not isinstance(c, bool) and math.isfinite(c)
            for c in coefs
        ):
            raise ValueError(
                f"deadspec.{fn}: ns_coefficients must hold 3 finite floats (a, b, c), got "
                f"{g['ns_coefficients']!r}"
            )

    def _check_ns_range(self, group: dict[str, Any], dtype: torch.dtype) -> None:
        """The Newton–Schulz coefficients and ns_eps are scalars of the iteration's dtype: one
        beyond its range is refused (torch's "value cannot be converted" otherwise)."""
        top = torch.finfo(dtype).max
        values = (*group["ns_coefficients"], self.ns_eps)
        if any(abs(v) > top for v in values):
            raise ValueError(
                f"deadspec.{self._fn}.step: ns_coefficients and ns_eps must be representable in "
                f"the Newton–Schulz dtype {str(dtype).removeprefix('torch.')} (|value| <= "
                f"{top:g}), got ns_coefficients={tuple(group['ns_coefficients'])}, "
                f"ns_eps={self.ns_eps:g}"
            )

    def _check_ranges(self) -> None:
        """Scalars the Muon steps apply in a parameter's or the iteration's dtype, checked for
        every Muon parameter before the step writes anything: the Newton–Schulz settings
        (:meth:`_check_ns_range`) and ``lr`` times the largest shape scale (beyond the dtype,
        torch's "value cannot be converted" part-way through a step)."""
        for group in self.param_groups:
            if not group["use_muon"]:
                continue
            for p in group["params"]:
                if p.grad is None:
                    continue
                self._check_ns_range(group, p.dtype if self.ns_dtype is None else self.ns_dtype)
                if p.ndim != 2:
                    continue
                rows, cols = p.shape
                bound = group["lr"] * math.sqrt(max(rows, cols) / max(min(rows, cols), 1))
                top = torch.finfo(p.dtype).max
                if bound > top:
                    name = self._names.get(id(p), "a parameter")
                    dtype = str(p.dtype).removeprefix("torch.")
                    raise ValueError(
                        f"deadspec.{self._fn}.step: lr times Muon's shape scale must be "
                        f"representable in the parameter's dtype {dtype} (<= {top:g}), got "
                        f"lr={group['lr']:g} for {name!r} of shape {tuple(p.shape)}"
                    )

    def _check_adamw(self, g: dict[str, Any], prefix: str = "") -> None:
        fn = self._fn
        check_nonnegative(fn, f"{prefix}lr", g["lr"])
        check_betas(fn, f"{prefix}betas", g["betas"])
        check_nonnegative(fn, f"{prefix}eps", g["eps"])
        check_nonnegative(fn, f"{prefix}weight_decay", g["weight_decay"])

    def _heads(self, model: nn.Module, head: Any) -> set[str]:
        """The output head modules (AdamW path): ``head`` resolved against the model."""
        fn = self._fn
        if head is None:
            return set()
        if head != "auto":
            if not isinstance(head, str) and not (
                hasattr(head, "__iter__") and all(isinstance(h, str) for h in head)
            ):
                raise TypeError(
                    f"deadspec.{fn}: head must be 'auto', None, a module name or a sequence of "
                    f"them, got {type(head).__name__}"
                )
            heads = {head} if isinstance(head, str) else set(head)
            mods = dict(model.named_modules())
            for h in heads:
                if h not in mods:
                    raise ValueError(
                        f"deadspec.{fn}: head must name modules of the model, got {h!r}"
                    )
            return heads
        heads = {g.layer for g in self._plan.gauges if isinstance(g, G.LogitShift)}
        info = trace_info(model)
        heads |= set(info.logit_layers) | fallback_logit(model, None) | output_layers(model)
        if not heads and not info.root_traced:
            warnings.warn(
                f"deadspec.{fn}: could not identify the output head (the model cannot be "
                f"traced and no LogitShift names it): every nn.Linear weight gets Muon; "
                f"pass head=<module name> (or head=None to silence this)",
                UserWarning,
                stacklevel=5,
            )
        return heads

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group; without ``use_muon`` it is split into a Muon and an AdamW group."""
        if not isinstance(param_group, dict):
            raise TypeError(
                f"deadspec.{self._fn}.add_param_group: param_group must be a dict, got "
                f"{type(param_group).__name__}"
            )
        group = dict(param_group)
        params = group["params"]
        if isinstance(params, torch.Tensor):
            params = [params]
        elif isinstance(params, set):
            raise TypeError(f"deadspec.{self._fn}: params must be an ordered collection, got a set")
        params = list(params)
        use = group.pop("use_muon", None)
        extra_keys = set(_MUON_KEYS) | {"adamw_lr", "adamw_betas", "adamw_eps"}
        extra_keys |= {"adamw_weight_decay", "betas", "eps", "params", "param_names"}
        extra = {k: v for k, v in group.items() if k not in extra_keys}
        if use is None:
            tensor = [e[1] if isinstance(e, tuple) else e for e in params]
            muon = [e for e, t in zip(params, tensor) if self._auto_muon(t)]
            rest = [e for e, t in zip(params, tensor) if not self._auto_muon(t)]
            adam = {
                "lr": group.get("adamw_lr", self._adamw_defaults["lr"]),
                "betas": group.get("adamw_betas", self._adamw_defaults["betas"]),
                "eps": group.get("adamw_eps", self._adamw_defaults["eps"]),
                "weight_decay": group.get(
                    "adamw_weight_decay", self._adamw_defaults["weight_decay"]
                ),
            }
            if (
                "adamw_weight_decay" not in group
                and self._adamw_wd_follows
                and "weight_decay" in group
            ):
                adam["weight_decay"] = group["weight_decay"]  # adamw_weight_decay=None follows it
            if muon or not rest:
                mu = {k: group.get(k, self._muon_defaults[k]) for k in _MUON_KEYS}
                self._add_path_group({**extra, **mu, "params": muon}, True)
            if rest:
                self._add_path_group({**extra, **adam, "params": rest}, False)
            return
        if use:
            mu = {k: group.get(k, self._muon_defaults[k]) for k in _MUON_KEYS}
            self._add_path_group({**extra, **mu, "params": params}, True)
        else:
            ad = {k: group.get(k, self._adamw_defaults[k]) for k in _ADAMW_KEYS}
            self._add_path_group({**extra, **ad, "params": params}, False)

    def _auto_muon(self, p: torch.Tensor) -> bool:
        if self._muon_ids is None:
            return p.ndim == 2 and id(p) not in self._head_ids
        return id(p) in self._muon_ids

    def _add_path_group(self, group: dict[str, Any], muon: bool) -> None:
        if muon:
            group["ns_coefficients"] = tuple(group["ns_coefficients"])
            group["nesterov"] = bool(group["nesterov"])
            self._check_muon(group)
            for e in group["params"]:
                t = e[1] if isinstance(e, tuple) else e
                if isinstance(t, torch.Tensor) and t.ndim != 2:
                    raise ValueError(
                        f"deadspec.{self._fn}: params on the Muon path (use_muon=True) must be "
                        f"2-D matrices, got {self._names.get(id(t), 'a tensor')!r} of shape "
                        f"{tuple(t.shape)}"
                    )
        else:
            group["betas"] = tuple(group["betas"])
            self._check_adamw(group)
        group["use_muon"] = bool(muon)
        super().add_param_group(group)

    # -- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        sd["ddc"]["rotated"] = sorted(r.name for r in self._plan.rot.values())
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        fn = self._fn
        ddc = state_dict.get("ddc")
        if ddc is not None:
            mine = sorted(r.name for r in self._plan.rot.values())
            if list(ddc.get("rotated", [])) != mine:
                raise ValueError(
                    f"deadspec.{fn}.load_state_dict: the state must be for the same head "
                    f"rotations, got {list(ddc.get('rotated', []))} but this optimizer has {mine}"
                )
        saved = [bool(g.get("use_muon")) for g in state_dict.get("param_groups", [])]
        paths = [g["use_muon"] for g in self.param_groups]
        if saved != paths:
            raise ValueError(
                f"deadspec.{fn}.load_state_dict: the state must have the same Muon/AdamW "
                f"groups (use_muon), got {saved} but this optimizer has {paths}"
            )
        super().load_state_dict(state_dict)

    # -- step (DDCBase.step: the closure, then this with the gradients' sign applied) ---------
    def _step(self) -> None:
        self._check_ranges()  # before anything is written (the prologue decays)
        ok, modes = self._prologue()
        if not ok:
            return
        # (1) gauge scales and the producers' radial gradients; (2) Muon / AdamW in invariant
        # coordinates, mapped back (Muon tangential on producer rows); (3) the radial steps
        rho = self._site_scales()
        radial = self._radial_inputs(rho)
        k = 0  # (the Muon matrices in step order: the owning rank of each is k mod world)
        blocks: list[AdamBlock] = []
        owners: list[torch.Tensor] = []
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if group["use_muon"]:
                    self._note_refused(p, self._muon_param(group, p, rho, radial, k))
                    k += 1
                    continue
                if len(self.state[p]) == 0:
                    init_adam_state(self.state[p], p)
                owners.append(p)
                blocks.append(self._adam_block(group, p, self._param_scale(p, rho), None))
        # the AdamW blocks in one call (with gauges, the C++ core's pass on CPU; without,
        # torch's single-tensor AdamW operations, bit for bit)
        fused = None if self._plan.gauges and self.foreach is not False else False
        for p, n in zip(owners, ddc_adam(blocks, fused=fused)):
            self._note_refused(p, n)
        self._radial_step(radial)
        # (4) policy on the pure-gauge scales
        self._policy(modes)

    def _muon_param(
        self,
        group: dict[str, Any],
        p: torch.Tensor,
        rho: list[torch.Tensor | None],
        radial: dict[int, tuple[Site, torch.Tensor, torch.Tensor]],
        k: int,
    ) -> int | torch.Tensor:
        """The Muon step of one matrix (the ``k``-th of the step), checked before commit;
        returns how many coordinates were refused."""
        state = self.state[p]
        if len(state) == 0:
            state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        scale = self._muon_scale(p, rho)
        ns_dtype = p.dtype if self.ns_dtype is None else self.ns_dtype
        rot = self._plan.rot.get(id(p))
        blocks = (rot.axis, rot.cover()) if rot is not None and self.per_head else None
        rad = radial.get(id(p))
        tangent = None if rad is None else rad[1]
        # a Conv1D weight (stored in × out) is orthogonalised as the out × in matrix it acts
        # as (Keller's shape scale and the head blocks read that way)
        x, gr, buf = local(p), local(p.grad), local(state["momentum_buffer"])
        shape, whole = (int(p.shape[0]), int(p.shape[1])), None
        sh = self._shards
        if sh is not None and is_sharded(p):
            # (this rank's rows; the update orthogonalised on the whole matrix)
            whole = functools.partial(sh.whole, k, owner=p)
            tangent = sh.mine(tangent, p)
        if id(p) in self._transposed:
            x, gr, buf = x.T, gr.T, buf.T
            scale = None if scale is None else scale.T
            blocks = None if blocks is None else (1 - blocks[0], blocks[1])
            shape = (shape[1], shape[0])
            whole = None if whole is None else transposed(whole)
        update = functools.partial(
            ddc_muon_update,
            x,
            gr,
            buf,
            scale,
            blocks,
            lr=group["lr"],
            momentum=group["momentum"],
            nesterov=group["nesterov"],
            ns_coefficients=group["ns_coefficients"],
            ns_steps=group["ns_steps"],
            ns_eps=self.ns_eps,
            ns_dtype=ns_dtype,
            tangent=tangent,
            shape=shape,
            whole=whole,
            scratch=self._scratch,
        )
        return guarded_update(local(p), local(state["momentum_buffer"]), update, self._scratch)

    def _muon_scale(self, p: torch.Tensor, rho: list[torch.Tensor | None]) -> torch.Tensor | None:
        """σ of a Muon matrix (this rank's rows), as :meth:`DDCBase._param_scale` gives it, the
        outer quotient of a row and a column scale written into a kept work tensor."""
        r, c = self._plan.row.get(id(p)), self._plan.col.get(id(p))
        if r is None or c is None or self._plan.col_axis.get(id(p), 1) != 1:
            return self._param_scale(p, rho)
        pl = local(p)
        mine = (lambda v: v) if self._shards is None else (lambda v: self._shards.mine(v, p))
        row = mine(rho[r]).to(p.dtype).reshape(-1, 1)
        col = rho[c].to(p.dtype).reshape(1, -1)
        return torch.div(row, col, out=self._scratch.get("sigma", pl))

    def _radial_inputs(
        self, rho: list[torch.Tensor | None]
    ) -> dict[int, tuple[Site, torch.Tensor, torch.Tensor]]:
        """The Pair sites whose producer weight is on the Muon path and has its gradients this
        step (weight and bias), keyed by ``id(weight)``: (site, live units, ĝ). The live units
        are those in the gauge with ρ > tiny (the others get plain Muon, no radial step);
        ``ĝ = ⟨g_row, w_row⟩`` over the producer block, the log-scale gradient ∂L/∂log ρ
        (invariant; 0 off the live units). Read after the decay, before any update."""
        out: dict[int, tuple[Site, torch.Tensor, torch.Tensor]] = {}
        for s in self._plan.sites:
            w, b = s.weight, s.bias
            if w.ndim != 2 or w.grad is None or (b is not None and b.grad is None):
                continue
            if not self._group_of(w).get("use_muon"):
                continue
            col = None if s.in_site is None else rho[s.in_site]
            wl, bl = local(w), local(b)  # (a sharded producer: this rank's rows, then gathered)
            prod = self._scratch.get("prod", wl)
            wc = wl if col is None else torch.mul(wl, col.to(wl.dtype).reshape(1, -1), out=prod)
            sq = torch.mul(wc, wc, out=prod).sum(1)
            ghat = torch.mul(wl, local(w.grad), out=prod).sum(1)
            if ghat.device.type == "cpu" and not math.isfinite(float(ghat.sum())):
                ghat = gauge_dots(wl, local(w.grad), 1)[0]  # (products that overflow: exact)
            if bl is not None:
                sq = sq + bl.square()
                ghat = ghat + local(b.grad) * bl
            if self._shards is not None:
                sq = self._shards.gather_rows(sq, w)
                ghat = self._shards.gather_rows(ghat, w)
            live = sq.sqrt() > torch.finfo(sq.dtype).tiny
            if s.units is not None:
                inside = torch.zeros_like(live)
                inside[s.units.to(live.device)] = True
                live &= inside
            out[id(w)] = (s, live, torch.where(live, ghat, torch.zeros_like(ghat)))
        return out

    def _radial_step(self, radial: dict[int, tuple[Site, torch.Tensor, torch.Tensor]]) -> None:
        """The producers' radial step: a scalar Adam per unit on ĝ with the Muon group's lr and
        the site's AdamW betas and eps (as the damped policy), applied as ``w_row, b ← e^Δ·w_row,
        e^Δ·b`` on the live units, ``Δ = −lr·m̂/(√v̂ + eps)``."""
        for s, live, ghat in radial.values():
            lr = self._group_of(s.weight)["lr"]
            _, (beta1, beta2), eps = self._damped_hparams(s)
            st = s.state
            if "scale_exp_avg" not in st:
                st["scale_step"] = 0
                st["scale_exp_avg"] = torch.zeros_like(ghat)
                st["scale_exp_avg_sq"] = torch.zeros_like(ghat)
            st["scale_step"] += 1
            # checked before commit: a unit whose moments or factor would not be finite (or
            # would take its row beyond the dtype's range) keeps its state and is not moved
            m = st["scale_exp_avg"].lerp(ghat, 1 - beta1)
            v = st["scale_exp_avg_sq"].mul(beta2).addcmul_(ghat, ghat, value=1 - beta2)
            bc1 = 1 - beta1 ** st["scale_step"]
            bc2 = 1 - beta2 ** st["scale_step"]
            denom = (v / bc2).sqrt().add_(eps)
            c = m.div(denom).mul_(-lr / bc1).exp_()
            ok = torch.isfinite(m) & torch.isfinite(v) & torch.isfinite(c) & (c > 0)
            for t in (s.weight, s.bias):
                if t is not None:
                    tl = local(t)
                    peak = tl.abs() if tl.ndim == 1 else (
                        torch.abs(tl, out=self._scratch.get("prod", tl)).amax(1)
                    )
                    if self._shards is not None:
                        peak = self._shards.gather_rows(peak, t)
                    ok &= torch.isfinite(peak * torch.where(ok, c, torch.ones_like(c)))
            st["scale_exp_avg"] = torch.where(ok, m, st["scale_exp_avg"])
            st["scale_exp_avg_sq"] = torch.where(ok, v, st["scale_exp_avg_sq"])
            self._note_refused(s.name, (live & ~ok).sum())
            c = torch.where(live & ok, c, torch.ones_like(c))
            if self._shards is not None:
                c = self._shards.mine(c, s.weight)
            local(s.weight).mul_(c.reshape(-1, 1))
            if s.bias is not None:
                local(s.bias).mul_(c)

    def _damped_hparams(self, s: Site) -> tuple[float, tuple[float, float], float]:
        for t in (s.bias, s.weight):
            if t is None:
                continue
            group = self._group_of(t)
            if group.get("use_muon") is False:
                return group["lr"], group["betas"], group["eps"]
        d = self._adamw_defaults
        return d["lr"], d["betas"], d["eps"]
