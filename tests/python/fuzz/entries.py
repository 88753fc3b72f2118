"""Worker side: what each entry point of the fuzz suite calls, and which outputs must be finite.

An entry function takes ``(ctx, args, kwargs, ops)`` (``args`` and ``kwargs`` already built by
:class:`fuzz.build.Context`, ``ops`` raw specs for stateful entries) and returns a dict
``name -> value`` of the outputs that must be finite when every input was finite (arrays,
tensors, floats, containers of them). Which fields are in that dict is the per-entry decision
of the suite:

- every :class:`deadspec.Spectrum` field (eigenvalues, logdet_plus, lambda_min,
  effective_rank, participation_ratio, condition_number, threshold, rtol): the core defines
  all of them for any finite PSD input (0 for an empty active set);
- :class:`deadspec.Slope`: slope, intercept, r2 always; stderr when n > 2 (NaN by contract with
  two points);
- DDC optimizers and the in-place ``_core.ddc_*`` kernels: every parameter and moment they
  write;
- :func:`deadspec.direction_order` / :func:`deadspec.classify_directions`: F_u and the reference
  always; slope, r2, k_hat, λ_dir unless the direction is a flat gauge (k_hat = inf by contract)
  or fewer than two F_u are positive (the fit is then NaN by contract); λ_dir may be the
  documented NaN exactly where k_hat <= 0 or 1/(2·k_hat) is not finite;
- ``_core.ddc_row_norms``, ``_core.ddc_gauge_dots`` and the sums of ``_core.ddc_split_sums``
  and ``_core.ddc_split_moments``: every value, except ±inf where the exact value, computed
  here in rational arithmetic from the inputs as the kernel reads them, exceeds float64
  (documented: the sums are not scaled; the row norms are, and are +inf only when the norm
  itself exceeds float64), and, for the split sums, any non-finite value of a row or column
  one of whose elements has a quantity the kernel forms in the parameter's dtype (σ, 1/σ, x̃,
  g̃, P x̃, the update u from the moments as stored) beyond that dtype (documented in
  ``deadspec/ddc.hpp``; the optimizer's check before commit refuses those coordinates);
- :func:`deadspec.llc.estimate`: init_loss and nβ always; mean and per-chain values when no
  chain diverged (a diverged chain is NaN by contract and flagged); std with ≥ 2 chains;
- the command line: the spectral columns of the CSV it writes.

An entry raises :class:`Classified` to set an outcome itself (the command line: a traceback out
of ``main`` is unclear whatever its message; ``deadspec: error:`` with status 2 is clean).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import math
import sys
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch

import deadspec
import deadspec.cli
import deadspec.gauges
import deadspec.llc
import deadspec.monitor
import deadspec.optim
from deadspec import _core
from fuzz.build import Context, capsule, is_finite, write_file
from fuzz.specs import CLEAN, OK, UNCLEAR, File

SPECTRUM_FIELDS = (
    "eigenvalues",
    "logdet_plus",
    "lambda_min",
    "effective_rank",
    "participation_ratio",
    "condition_number",
    "threshold",
    "rtol",
)


class Classified(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Raised by an entry that decides its outcome itself."""

    def __init__(self, outcome: str, detail: str) -> None:
        super().__init__(detail)
        self.outcome = outcome
        self.detail = detail


def spectrum_checks(prefix: str, s: Any) -> dict[str, Any]:
    if s is None:
        return {}
    get = s.get if isinstance(s, dict) else (lambda k: getattr(s, k))
    return {f"{prefix}{k}": get(k) for k in SPECTRUM_FIELDS}


def slope_checks(prefix: str, s: Any) -> dict[str, Any]:
    get = s.get if isinstance(s, dict) else (lambda k: getattr(s, k))
    out = {f"{prefix}{k}": get(k) for k in ("slope", "intercept", "r2")}
    if int(get("n")) > 2:
        out[f"{prefix}stderr"] = get("stderr" if isinstance(s, dict) else "stderr")
    return out


def whole(result: Any) -> dict[str, Any]:
    """Every number in the result must be finite (dataclasses are walked field by field)."""
    if isinstance(result, deadspec.Spectrum):
        return spectrum_checks("", result)
    if dataclasses.is_dataclass(result) and not isinstance(result, type):
        return {f.name: getattr(result, f.name) for f in dataclasses.fields(result)}
    return {"result": result}


# ---------------------------------------------------------------------------------------------
# Public ops
# ---------------------------------------------------------------------------------------------
def _simple(fn: Callable[[], Callable[..., Any]]) -> Callable[..., dict[str, Any]]:
    def run(ctx: Context, args: tuple, kwargs: dict, ops: tuple) -> dict[str, Any]:
        return whole(fn()(*args, **kwargs))

    return run


def e_fit_slope(ctx: Context, args: tuple, kwargs: dict, ops: tuple) -> dict[str, Any]:
    return slope_checks("", deadspec.fit_slope(*args, **kwargs))


def e_misc(ctx: Context, args: tuple, kwargs: dict, ops: tuple) -> dict[str, Any]:
    """``args[0]`` names one of the small public functions; the rest are its arguments."""
    name, rest = args[0], args[1:]
    fn = {
        "build_info": deadspec.build_info,
        "num_threads": deadspec.num_threads,
        "set_num_threads": deadspec.set_num_threads,
        "cmake_dir": deadspec.cmake_dir,
        "default_rtol": deadspec.default_rtol,
        "fisher_route": deadspec.fisher_route,
    }[name]
    try:
        return whole(fn(*rest, **kwargs))
    finally:
        _core.set_num_threads(1)


def e_gram_accumulator(ctx: Context, args: tuple, kwargs: dict, ops: tuple) -> dict[str, Any]:
    """Public :class:`deadspec.GramAccumulator`: ``ops`` are ``("add", Arr)``,
    ``("merge", features, (Arr, ...))``, ``("merge_obj", spec)``, ``("gram", center)``,
    ``("mean",)``, ``("count",)``."""
    acc = deadspec.GramAccumulator(*args, **kwargs)
    return _accumulate(ctx, acc, ops, deadspec.GramAccumulator, lambda a: a)


def e_core_gram_accumulator(
    ctx: Context, args: tuple, kwargs: dict, ops: tuple
) -> dict[str, Any]:
    """``_core.GramAccumulator`` with the same ops (batches passed as DLPack capsules)."""
    acc = _core.GramAccumulator(*args, **kwargs)
    return _accumulate(ctx, acc, ops, _core.GramAccumulator, capsule)


def _accumulate(ctx: Context, acc: Any, ops: tuple, cls: type, wrap: Callable) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for i, op in enumerate(ops):
        kind = op[0]
        if kind == "add":
            acc.add(wrap(ctx.build(op[1])))
        elif kind == "merge":
            other = cls(ctx.build(op[1]))
            for b in op[2]:
                other.add(wrap(ctx.build(b)))
            acc.merge(other)
        elif kind == "merge_obj":
            acc.merge(ctx.build(op[1]))
        elif kind == "gram":
            out[f"gram[{i}]"] = acc.gram(center=ctx.build(op[1]))
        elif kind == "mean":
            out[f"mean[{i}]"] = np.asarray(acc.mean)
        elif kind == "count":
            out[f"count[{i}]"] = float(acc.count) + 0.0 * float(acc.features)
    return out


# ---------------------------------------------------------------------------------------------
# _core bindings
# ---------------------------------------------------------------------------------------------
def _core_simple(name: str) -> Callable[..., dict[str, Any]]:
    def run(ctx: Context, args: tuple, kwargs: dict, ops: tuple) -> dict[str, Any]:
        result = getattr(_core, name)(*args, **kwargs)
        if name == "spectrum" or name == "spectrum_from_eigenvalues":
            return spectrum_checks("", result)
        if name == "fit_slope":
            return slope_checks("", result)
        return {"result": result}

    return run


def e_core_noargs(ctx: Context, args: tuple, kwargs: dict, ops: tuple) -> dict[str, Any]:
    """``args[0]`` names a binding without tensor arguments; the rest are its arguments."""
    try:
        return {"result": getattr(_core, args[0])(*args[1:], **kwargs)}
    finally:
        _core.set_num_threads(1)


def _is_array(x: Any) -> bool:
    return isinstance(x, (np.ndarray, torch.Tensor))


def _tensors(ctx: Context, value: Any, ops: tuple) -> tuple[Any, Any]:
    """(the value, what is passed to the binding: its capsule unless ops say "raw")."""
    if "raw" in ops or not _is_array(value):
        return value, value
    return value, capsule(value, versioned="versioned" in ops)


def e_core_ddc_adam_update(ctx: Context, args: tuple, kwargs: dict, ops: tuple) -> dict[str, Any]:
    """args: param, grad, exp_avg, exp_avg_sq, scale; kwargs may hold col_scale."""
    built = [_tensors(ctx, a, ops) for a in args]
    kw = dict(kwargs)
    if "col_scale" in kw:
        kw["col_scale"] = _tensors(ctx, kw["col_scale"], ops)[1]
    _core.ddc_adam_update(*[b[1] for b in built], **kw)
    names = ("param", "grad", "exp_avg", "exp_avg_sq")
    return {n: b[0] for n, b in zip(names, built) if n != "grad"}


_BLOCK_TENSORS = (
    "param",
    "grad",
    "exp_avg",
    "exp_avg_sq",
    "scale",
    "col_scale",
    "row_scale",
    "col_mean",
    "row_coef",
    "col_coef",
    "col_norm",
    "row_mult",
    "col_mult",
)
_WRITTEN = ("param", "exp_avg", "exp_avg_sq")


def _blocks(ctx: Context, specs: Any, ops: tuple) -> tuple[Any, dict[str, Any]]:
    """The blocks with their arrays turned into capsules, and the arrays a call may write."""
    if not isinstance(specs, list):
        return specs, {}
    blocks, written = [], {}
    for i, spec in enumerate(specs):
        if not isinstance(spec, dict):
            blocks.append(spec)
            continue
        b = {}
        for k, v in spec.items():
            if k in _BLOCK_TENSORS and _is_array(v):
                value, passed = _tensors(ctx, v, ops)
                b[k] = passed
                if k in _WRITTEN:
                    written[f"block{i}.{k}"] = value
            else:
                b[k] = v
        blocks.append(b)
    return blocks, written


def _core_blocks(name: str) -> Callable[..., dict[str, Any]]:
    def run(ctx: Context, args: tuple, kwargs: dict, ops: tuple) -> dict[str, Any]:
        blocks, written = _blocks(ctx, args[0], ops)
        result = getattr(_core, name)(blocks, *args[1:], **kwargs)
        if name == "ddc_split_sums" and not is_finite(result):
            result = [_split_sums_overflow(spec, sums) for spec, sums in zip(args[0], result)]
        if name == "ddc_split_moments" and not is_finite(result):
            result = [
                _split_moments_overflow(spec, dots, {k.split(".", 1)[1]: v for k, v in
                                                     written.items()
                                                     if k.startswith(f"block{i}.")})
                for i, (spec, dots) in enumerate(zip(args[0], result))
            ]
        return {**written, "result": result}

    return run


def e_core_ddc_adam_plan(ctx: Context, args: tuple, kwargs: dict, ops: tuple) -> dict[str, Any]:
    """``_core.DDCAdamPlan`` over the blocks of ``ddc_adam_update_many`` (no sites; each block its
    own group, its step count made from the block's ``step``): bound, checked and stepped with
    the per-element keep (``bounded=False``: the fuzzed moments are not the optimizer's own)."""
    blocks, written = _blocks(ctx, args[0], ops)
    plan_blocks, grads, groups = [], [], []
    for k, b in enumerate(blocks if isinstance(blocks, list) else []):
        if not isinstance(b, dict):
            plan_blocks.append(b)
            continue
        step = b.get("step")
        count = float(step) - 1.0 if isinstance(step, (int, float)) else 0.0
        pb = {key: b[key] for key in ("param", "exp_avg", "exp_avg_sq", "rot_axis",
                                      "rot_segments") if key in b}
        pb["step"] = capsule(torch.tensor(count, dtype=torch.float32))
        pb["group"] = k
        plan_blocks.append(pb)
        grads.append(b.get("grad"))
        vals = [b.get(key) for key in ("lr", "beta1", "beta2", "eps")]
        groups.append(tuple(float(v) if isinstance(v, (int, float)) else 0.1 for v in vals)
                      + (0.0,))
    plan = _core.DDCAdamPlan(plan_blocks if isinstance(blocks, list) else blocks, [], [])
    if plan.check(grads) >= 0:
        return {"result": -1}
    refused, kept = plan.step(groups, False)
    return {**written, "result": [float(n) for n in refused] + [float(k) for k in kept]}


def e_core_ddc_split_plan(ctx: Context, args: tuple, kwargs: dict, ops: tuple) -> dict[str, Any]:
    """``_core.DDCSplitPlan`` over the blocks of ``ddc_adam_update_many`` (no sites: each block
    its own group, without decay; its step count made from the block's ``step``): bound, checked
    and stepped."""
    blocks, written = _blocks(ctx, args[0], ops)
    plan_blocks, grads, groups = [], [], []
    for k, b in enumerate(blocks if isinstance(blocks, list) else []):
        if not isinstance(b, dict):
            plan_blocks.append(b)
            continue
        step = b.get("step")
        count = float(step) - 1.0 if isinstance(step, (int, float)) else 0.0
        pb = {key: b[key] for key in ("param", "exp_avg", "exp_avg_sq", "rot_axis",
                                      "rot_segments") if key in b}
        pb["step"] = capsule(torch.tensor(count, dtype=torch.float32))
        pb["group"] = k
        plan_blocks.append(pb)
        grads.append(b.get("grad"))
        vals = [b.get(key) for key in ("lr", "beta1", "beta2", "eps")]
        groups.append(tuple(float(v) if isinstance(v, (int, float)) else 0.1 for v in vals)
                      + (0.0,))
    plan = _core.DDCSplitPlan(plan_blocks if isinstance(blocks, list) else blocks, [], [])
    if plan.check(grads, groups) >= 0:
        return {"result": -1}
    refused, site_refused = plan.step([])
    return {**written, "result": [float(n) for n in refused] + [float(n) for n in site_refused]}


def e_core_ddc_split_units(ctx: Context, args: tuple, kwargs: dict, ops: tuple) -> dict[str, Any]:
    """``_core.ddc_split_units`` on one dict of vectors: the refused count and the radial
    moments it writes (checked before commit: finite). Its ``out`` is not compared: a quotient
    there may exceed the dtype where its exact value does (the passes then refuse)."""
    spec = args[0]
    if not isinstance(spec, dict):
        return {"result": _core.ddc_split_units(spec)}
    d, written = {}, {}
    for k, v in spec.items():
        value, passed = _tensors(ctx, v, ops)
        d[k] = passed
        if k in ("exp_avg", "exp_avg_sq") and _is_array(v):
            written[k] = value
    return {**written, "result": float(_core.ddc_split_units(d))}


#: The largest float64, exactly.
_MAX = Fraction(sys.float_info.max)


def _exact(a: Any, dtype: Any = None) -> np.ndarray | None:
    """An array's values as exact Fractions (an object array), read as ``dtype`` first (as the
    kernel reads a vector in the parameter's dtype); None if one is not finite (the outcome is
    then ``nonfinite_in`` anyway)."""
    arr = np.asarray(a.detach().cpu() if isinstance(a, torch.Tensor) else a)
    if dtype is not None:
        arr = arr.astype(dtype)
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        return None
    out = np.empty(arr.shape, dtype=object)
    for idx, v in np.ndenumerate(arr):
        out[idx] = Fraction(float(v))
    return out


def _overflow_accepted(got: Any, exact: np.ndarray) -> np.ndarray:
    """``got`` with each ±inf whose exact value exceeds float64 with the same sign set to 0
    (accepted: the documented +inf/−inf); everything else as it was (NaN stays a finding)."""
    out = np.array(got, dtype=np.float64, copy=True)
    for idx, v in np.ndenumerate(out):
        e = exact[idx]
        if math.isinf(v) and abs(e) > _MAX and (v > 0) == (e > 0):
            out[idx] = 0.0
    return out


def _np(a: Any) -> np.ndarray:
    return np.asarray(a.detach().cpu() if isinstance(a, torch.Tensor) else a)


def _split_terms(spec: Any) -> dict[str, np.ndarray] | None:
    """The per-element quantities a split kernel forms in the parameter's dtype T, as its loops
    do (σ = r·c, 1/σ = (1/r)·(1/c), x̃ = x·(1/σ), g̃ = g·σ, P x̃ = x̃ − μ; vectors read as T),
    as h×d arrays of T; None when the block is not one this can mirror (the call refused it)
    or an input is not finite."""
    if not isinstance(spec, dict) or not _is_array(spec.get("param")):
        return None
    x, g = _np(spec["param"]), _np(spec.get("grad"))
    if x.dtype not in (np.float32, np.float64) or g.shape != x.shape or x.ndim not in (1, 2):
        return None
    t = x.dtype.type
    x2 = x.reshape(x.shape[0], -1).astype(t)
    g2 = g.reshape(x.shape[0], -1).astype(t)
    h, d = x2.shape
    vec = {}
    for name, n in (("row_scale", h), ("col_scale", d), ("col_mean", d)):
        v = spec.get(name)
        if v is None:
            continue
        if not _is_array(v) or _np(v).size != n:
            return None
        with np.errstate(all="ignore"):
            vec[name] = _np(v).reshape(-1).astype(np.float64).astype(t)
    one = t(1)
    r = vec.get("row_scale", np.full(h, one, dtype=t)).reshape(h, 1)
    c = vec.get("col_scale", np.full(d, one, dtype=t)).reshape(1, d)
    mu = vec.get("col_mean", np.zeros(d, dtype=t)).reshape(1, d)
    if not all(np.isfinite(a).all() for a in (x2, g2, r, c, mu)):
        return None
    with np.errstate(all="ignore"):
        sig = (r * c).astype(t)
        isig = ((one / r) * (one / c)).astype(t)
        xt = x2 * isig
        out = {"sig": sig, "isig": isig, "xt": xt, "gt": g2 * sig, "pc": xt - mu}
    return {k: np.broadcast_to(v, (h, d)) for k, v in out.items()}


def _sums_accepted(got: Any, a: np.ndarray, b: np.ndarray, bad: np.ndarray, axis: int) -> Any:
    """``got`` (Σ a·b along ``axis``, float64) with its non-finite entries accepted (set to 0)
    where the documented contract allows them: an element of the sum had a quantity that is not
    finite in the parameter's dtype (``bad``), or the exact sum of the dtype-precision terms
    exceeds float64 with the sign of the ±inf."""
    out = np.array(got, dtype=np.float64, copy=True)
    lines = out.shape[0]
    for k in range(lines):
        v = out[k]
        if math.isfinite(v):
            continue
        sel = (slice(None), k) if axis == 0 else (k, slice(None))
        if bad[sel].any():
            out[k] = 0.0
            continue
        e = sum(Fraction(float(p)) * Fraction(float(q)) for p, q in zip(a[sel], b[sel]))
        if math.isinf(v) and abs(e) > _MAX and (v > 0) == (e > 0):
            out[k] = 0.0
    return out


def _split_sums_overflow(spec: Any, sums: tuple) -> Any:
    """``ddc_split_sums``'s (Σ g̃x̃, Σ x̃² per row, Σ g̃·Px̃, Σ (Px̃)² per column), non-finite
    entries accepted where :func:`_sums_accepted` says."""
    q = _split_terms(spec)
    if q is None:
        return sums
    bad = ~(np.isfinite(q["sig"]) & np.isfinite(q["isig"]) & np.isfinite(q["xt"])
            & np.isfinite(q["gt"]) & np.isfinite(q["pc"]))
    pairs = ((q["gt"], q["xt"], 1), (q["xt"], q["xt"], 1), (q["gt"], q["pc"], 0),
             (q["pc"], q["pc"], 0))
    out = [_sums_accepted(got, a, b, bad, axis) if np.size(got) else got
           for got, (a, b, axis) in zip(sums, pairs)]
    return tuple(out) + tuple(sums[4:])


def _split_moments_overflow(spec: Any, dots: tuple, written: dict[str, Any]) -> Any:
    """``ddc_split_moments``'s (Σ u·x̃ per row, Σ u·Px̃ per column): u recomputed in the dtype
    from the moments as stored (``(den > 0 ? m/den : 0)·ss``, den = √v·ibc + eps), non-finite
    entries accepted where :func:`_sums_accepted` says."""
    q = _split_terms(spec)
    m, v = written.get("exp_avg"), written.get("exp_avg_sq")
    if q is None or m is None or v is None:
        return dots
    t = q["xt"].dtype.type
    try:
        b1, b2, step = float(spec["beta1"]), float(spec["beta2"]), int(spec["step"])
        ibc = t(1.0 / math.sqrt(1.0 - b2**step))
        ss = t(float(spec["lr"]) / (1.0 - b1**step))
        eps = t(float(spec["eps"]))
    except (KeyError, TypeError, ValueError, ZeroDivisionError, OverflowError):
        return dots
    h, d = q["xt"].shape
    m2, v2 = _np(m).reshape(h, d).astype(t), _np(v).reshape(h, d).astype(t)
    with np.errstate(all="ignore"):
        den = np.sqrt(v2) * ibc + eps
        u = np.where(den > 0, m2 / den, t(0)) * ss
    bad = ~(np.isfinite(q["sig"]) & np.isfinite(q["isig"]) & np.isfinite(q["xt"])
            & np.isfinite(q["pc"]) & np.isfinite(u))
    pairs = ((u, q["xt"], 1), (u, q["pc"], 0))
    out = [_sums_accepted(got, a, b, bad, axis) if np.size(got) else got
           for got, (a, b, axis) in zip(dots, pairs)]
    return tuple(out) + tuple(dots[2:])


def e_core_row_norms(ctx: Context, args: tuple, kwargs: dict, ops: tuple) -> dict[str, Any]:
    """The row norms; a +inf is accepted where the exact norm exceeds float64."""
    vals = [(_tensors(ctx, a, ops)[1] if _is_array(a) else a) for a in args]
    result = _core.ddc_row_norms(*vals, **kwargs)
    if not is_finite(result):
        result = _row_norms_overflow(args, kwargs, result)
    return {"result": result}


def _row_norms_overflow(args: tuple, kwargs: dict, result: Any) -> Any:
    """``result`` with the +inf norms whose exact squares exceed float64's accepted."""
    names = ("weight", "col_scale", "bias", "weight_factor", "bias_factor")
    given = {**dict(zip(names, args)), **kwargs}
    w = given.get("weight")
    if not _is_array(w) or w.ndim != 2:
        return result
    names = ("weight", "col_scale", "bias")
    exact = {k: _exact(given[k]) for k in names if _is_array(given.get(k))}
    if any(v is None for v in exact.values()):
        return result
    w = exact["weight"]
    c = exact["col_scale"].reshape(-1) if "col_scale" in exact else None
    b = exact["bias"].reshape(-1) if "bias" in exact else None
    try:
        fw = Fraction(float(given.get("weight_factor", 1.0)))
        fb = Fraction(float(given.get("bias_factor", 1.0)))
    except (TypeError, ValueError, OverflowError):
        return result
    h, d = w.shape
    sq = np.empty(h, dtype=object)
    for i in range(h):
        s = sum((w[i, j] * (c[j] if c is not None else 1) * fw) ** 2 for j in range(d))
        sq[i] = s + ((b[i] * fb) ** 2 if b is not None else 0)
    norms_exceed = np.array([s > _MAX**2 for s in sq], dtype=object)
    marker = np.array([2 * _MAX if e else Fraction(0) for e in norms_exceed], dtype=object)
    return _overflow_accepted(result, marker)


def e_core_gauge_dots(ctx: Context, args: tuple, kwargs: dict, ops: tuple) -> dict[str, Any]:
    """(Σ x·g, Σ |x·g|) along an axis; ±inf accepted where the exact sum exceeds float64."""
    vals = [(_tensors(ctx, a, ops)[1] if _is_array(a) else a) for a in args]
    result = _core.ddc_gauge_dots(*vals, **kwargs)
    if not is_finite(result) and len(args) >= 2 and _is_array(args[0]) and _is_array(args[1]):
        axis = args[2] if len(args) > 2 else kwargs.get("axis")
        x, g = _np(args[0]).astype(np.float64), _np(args[1]).astype(np.float64)
        if np.isfinite(x).all() and np.isfinite(g).all() and x.ndim == 2 and axis in (0, 1):
            none = np.zeros(x.shape, dtype=bool)  # one sum per row (axis 1) or column (axis 0)
            result = (_sums_accepted(result[0], x, g, none, int(axis)),
                      _sums_accepted(result[1], np.abs(x), np.abs(g), none, int(axis)))
    return {"result": result}


# ---------------------------------------------------------------------------------------------
# Model-level entry points
# ---------------------------------------------------------------------------------------------
def reading_checks(r: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, lr in r.items():
        out.update(spectrum_checks(f"{name}.activation.", lr.activation))
        out.update(spectrum_checks(f"{name}.fisher.", lr.fisher))
    return out


def e_read(ctx: Context, args: tuple, kwargs: dict, ops: tuple) -> dict[str, Any]:
    return reading_checks(deadspec.read(*args, **kwargs))


def e_approach_slope(ctx: Context, args: tuple, kwargs: dict, ops: tuple) -> dict[str, Any]:
    r = deadspec.approach_slope(*args, **kwargs)
    out = {
        k: getattr(r, k)
        for k in ("slope", "intercept", "r2", "lambda_min_slope", "lambda_min_r2", "t")
    }
    out.update(logdet_plus=r.logdet_plus, lambda_min=r.lambda_min, directions=r.directions)
    if len(r.t) > 2:
        out["stderr"] = r.stderr
    return out


def undefined_lambda(o: Any) -> bool:
    """Whether ``o.lambda_dir`` is the documented NaN (undefined, not a dead direction): NaN
    exactly where ``k_hat <= 0`` or ``1/(2·k_hat)`` is not finite (``k_hat`` itself is checked
    to be finite)."""
    k, lam = float(o.k_hat), float(o.lambda_dir)
    if not (math.isnan(lam) and math.isfinite(k)):
        return False
    return k <= 0 or not math.isfinite(1.0 / (2.0 * k))


def order_checks(prefix: str, o: Any) -> dict[str, Any]:
    out = {f"{prefix}fisher": o.fisher, f"{prefix}reference": o.reference, f"{prefix}t": o.t}
    positive = int(np.sum(np.asarray(o.fisher) > 0))
    if o.kind != "flat-gauge" and positive >= 2:
        for k in ("slope", "r2", "k_hat", "lambda_dir"):
            if k == "lambda_dir" and undefined_lambda(o):
                continue  # the documented NaN, and only it
            out[f"{prefix}{k}"] = getattr(o, k)
    return out


def e_direction_order(ctx: Context, args: tuple, kwargs: dict, ops: tuple) -> dict[str, Any]:
    return order_checks("", deadspec.direction_order(*args, **kwargs))


def e_classify_directions(
    ctx: Context, args: tuple, kwargs: dict, ops: tuple
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for c in deadspec.classify_directions(*args, **kwargs):
        out.update(order_checks(f"{c.name}.", c.order))
        out[f"{c.name}.direction"] = c.direction
    return out


def e_gauge_directions(ctx: Context, args: tuple, kwargs: dict, ops: tuple) -> dict[str, Any]:
    return {"result": deadspec.gauge_directions(*args, **kwargs)}


def e_discover(ctx: Context, args: tuple, kwargs: dict, ops: tuple) -> dict[str, Any]:
    found = deadspec.gauges.discover(*args, **kwargs)
    str(found)  # the summary table must print
    return {}


def e_gauge_check(ctx: Context, args: tuple, kwargs: dict, ops: tuple) -> dict[str, Any]:
    """``ops[0]``: ``("discovered", index)`` (the index-th discovered gauge, if any) or
    ``("declared", kind, refs...)`` (a Pair/NormScale/LogitShift declared by hand); then
    ``gauge.check(*args, **kwargs)``."""
    model = args[0]
    how = ops[0]
    if how[0] == "discovered":
        found = deadspec.gauges.discover(model, loss=None)
        if not found:
            return {}
        gauge = found[how[1] % len(found)]
    else:
        cls = getattr(deadspec.gauges, how[1])
        gauge = cls(*ctx.build(how[2:]))
    return {"rel": gauge.check(*args, **kwargs)}


# -- optimizers --------------------------------------------------------------------------------
def _optimizer(cls: type, model: Any, kwargs: dict) -> Any:
    kw = dict(kwargs)
    if kw.pop("plain", False):
        gauges = deadspec.gauges.bind(deadspec.gauges.discover(model), model)
        return cls(model.parameters(), gauges=gauges, **kw)
    return cls(model, **kw)


def _optim_step(ctx: Context, model: Any, opt: Any, op: tuple) -> None:
    kind = op[0]
    if kind == "backward":
        x, y, loss = ctx.build(op[1]), ctx.build(op[2]), ctx.build(op[3])
        opt.zero_grad()
        try:  # the training step's own forward/backward: not deadspec's code
            out = model(x)
            value = (out.double() ** 2).mean() if loss is None else loss(out, y).sum()
            value.backward()
        except Exception:  # noqa: BLE001 - data the model cannot take: no step
            return
        for p in model.parameters():
            if p.grad is not None:
                ctx.add_input(p.grad)
        opt.step()
    elif kind == "grad":
        _, _, scale, seed, special = op
        g = torch.Generator().manual_seed(seed)
        for i, p in enumerate(model.parameters()):
            grad = torch.randn(p.shape, generator=g, dtype=torch.float64) * scale
            if special and grad.numel():
                for idx, name in special:
                    if idx % 3 == i % 3:
                        grad.view(-1)[idx % grad.numel()] = float(name)
            p.grad = grad.to(p.dtype)
            ctx.add_input(p.grad)
        opt.step()
    elif kind == "nograd":
        opt.zero_grad(set_to_none=True)
        opt.step()
    elif kind == "state":
        opt.load_state_dict(opt.state_dict())
    elif kind == "closure":
        opt.step(lambda: torch.tensor(0.0))


def _optim_entry(name: str) -> Callable[..., dict[str, Any]]:
    def run(ctx: Context, args: tuple, kwargs: dict, ops: tuple) -> dict[str, Any]:
        model = args[0]
        opt = _optimizer(getattr(deadspec.optim, name), model, kwargs)
        for op in ops:
            _optim_step(ctx, model, opt, op)
        out: dict[str, Any] = {f"param.{n}": p for n, p in model.named_parameters()}
        for i, state in enumerate(opt.state.values()):
            for k, v in state.items():
                if isinstance(v, torch.Tensor) and k != "step":
                    out[f"state{i}.{k}"] = v
        return out

    return run


# -- llc, monitor -----------------------------------------------------------------------------
def e_llc(ctx: Context, args: tuple, kwargs: dict, ops: tuple) -> dict[str, Any]:
    r = deadspec.llc.estimate(*args, **kwargs)
    out = {"init_loss": r.init_loss, "nbeta": r.nbeta}
    if not np.any(r.diverged):
        out.update(mean=r.mean, per_chain=r.per_chain)
        if r.chains >= 2:
            out["std"] = r.std
    return out


def e_monitor(ctx: Context, args: tuple, kwargs: dict, ops: tuple) -> dict[str, Any]:
    """``ops``: ``("step", step, force)``, ``("train", seed, lr)`` (a random parameter nudge),
    ``("records",)``, ``("rates", options)``, ``("cells",)``, ``("dead", Layer)``,
    ``("approach", Layer)``, ``("csv", what)``, ``("state",)``, ``("plot",)``."""
    mon = deadspec.monitor.DeadDirectionMonitor(*args, **kwargs)
    model = args[0]
    out: dict[str, Any] = {}
    for i, op in enumerate(ops):
        kind = op[0]
        if kind == "step":
            mon.step(op[1], force=op[2])
        elif kind == "train":
            g = torch.Generator().manual_seed(op[1])
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * op[2])
        elif kind == "records":
            for j, rec in enumerate(mon.records()):
                for k in ("logdet_plus", "lambda_min", "effective_rank", "participation_ratio"):
                    out[f"records[{j}].{k}"] = rec.get(k)
        elif kind == "rates":
            mon.rates(**ctx.build(op[1]))
        elif kind == "cells":
            mon.cells_reading()
        elif kind == "dead":
            mon.dead_directions(ctx.build(op[1]))
        elif kind == "approach":
            mon.approach_values(ctx.build(op[1]))
        elif kind == "csv":
            mon.to_csv(ctx.workdir / f"monitor{i}.csv", what=op[1])
        elif kind == "state":
            other = deadspec.monitor.DeadDirectionMonitor(*args, **kwargs)
            other.load_state_dict(mon.state_dict())
        elif kind == "plot":
            mon.plot(ctx.workdir / f"monitor{i}.png")
    return out


# -- command line ------------------------------------------------------------------------------
_CSV_FIELDS = ("logdet_plus", "lambda_min", "effective_rank", "participation_ratio")


def e_cli(ctx: Context, args: tuple, kwargs: dict, ops: tuple) -> dict[str, Any]:
    """``args``: the argv, where ``{name}`` stands for the path of ``kwargs["files"][name]``
    and ``{new:name}`` for a fresh path in the case folder. Every file is an input except those
    named in ``kwargs["outputs"]`` (an existing file the user names as the output) and a folder
    named as ``demo --out``."""
    files: dict[str, File] = kwargs.get("files", {})
    outputs = kwargs.get("outputs", ())
    paths = {}
    for name, spec in files.items():
        path = ctx.workdir / f"{name}{spec.suffix}"
        write_file(path, spec.kind, spec.widths, spec.seed, spec.targets)
        paths[name] = path
    argv = [_substitute(a, paths, ctx.workdir) for a in args]
    # `demo --out DIR` writes into DIR: a folder named there is an output, a file is not
    demo = argv[:1] == ["demo"] and "--out" in argv[:-1]
    demo_dir = argv[argv.index("--out") + 1] if demo else ""
    for name, path in paths.items():
        if name not in outputs and not (path.is_dir() and str(path) == demo_dir):
            ctx.remember_file(path)
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = _main_in(ctx.workdir, argv)
    except SystemExit as exc:
        code = exc.code
        if code in (0, None):
            raise Classified(OK, "SystemExit(0)") from None
        if code == 2 and "usage:" in err.getvalue():
            last = err.getvalue().strip().splitlines()[-1]
            raise Classified(CLEAN, "argparse: " + last) from None
        raise Classified(UNCLEAR, f"SystemExit({code!r}): {err.getvalue()[-300:]}") from None
    except Exception as exc:  # noqa: BLE001 - a traceback out of main is the finding
        raise Classified(UNCLEAR, f"escaped main: {type(exc).__name__}: {exc}") from exc
    if status == 2 and "deadspec: error:" in err.getvalue():
        raise Classified(CLEAN, err.getvalue().strip().splitlines()[-1][:300])
    if status != 0:
        raise Classified(UNCLEAR, f"exit status {status}: {err.getvalue()[-300:]}")
    return _csv_checks(argv, ctx.workdir)


def _main_in(workdir: Path, argv: list[str]) -> int:
    """``deadspec.cli.main(argv)`` run from ``workdir`` (relative paths land there)."""
    import os

    before = os.getcwd()
    os.chdir(workdir)
    try:
        return deadspec.cli.main(argv)
    finally:
        os.chdir(before)


def _substitute(arg: str, paths: dict[str, Path], workdir: Path) -> str:
    if arg.startswith("{new:") and arg.endswith("}"):
        return str(workdir / arg[5:-1])
    for name, path in paths.items():
        arg = arg.replace("{" + name + "}", str(path))
    return arg


def _csv_checks(argv: list[str], workdir: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "--out" not in argv or argv[0] != "read":
        return out
    path = Path(argv[argv.index("--out") + 1])
    if not path.is_absolute():
        path = workdir / path
    if not path.is_file():
        raise Classified(UNCLEAR, f"read returned 0 but wrote no CSV at {path}")
    with open(path, newline="") as f:
        for j, row in enumerate(csv.DictReader(f)):
            for k in _CSV_FIELDS:
                if row.get(k) not in (None, ""):
                    out[f"row{j}.{k}"] = float(row[k])
    return out


def _selftest(ctx: Context, args: tuple, kwargs: dict, ops: tuple) -> dict[str, Any]:
    """The runner's own test entry: ``args[0]`` says what to do (abort, sleep, a non-finite
    result, an unclear or clean error, the model's own error with deadspec's note, pybind11's
    argument error, writing over an input file, or return normally)."""
    what = args[0]
    if what == "abort":
        import os

        os.abort()
    if what == "sleep":
        import time

        time.sleep(float(args[1]))
    if what == "nan":
        return {"x": math.nan}
    if what == "unclear":
        raise AttributeError("'NoneType' object has no attribute 'shape'")
    if what == "clean":
        raise ValueError("deadspec.selftest: x must be positive, got -1")
    if what == "model":  # the user's model failed; deadspec passed its error on with a note
        exc = RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x5 and 3x4)")
        exc.__notes__ = ["deadspec.selftest: raised by the model's forward on batch 0"]  # 3.10 too
        raise exc
    if what == "pybind":  # a binding's argument error (clean for _core.* entries only)
        raise TypeError("f(): incompatible function arguments. The following argument types "
                        "are supported:\n    1. (x: int) -> int")
    if what == "overwrite":
        path = ctx.workdir / "input.bin"
        path.write_bytes(b"before")
        ctx.remember_file(path)
        path.write_bytes(b"after")
    return {"x": 1.0}


#: entry name -> function. The names are those of the summary and of the CI tests.
ENTRIES: dict[str, Callable[..., dict[str, Any]]] = {
    # public ops
    "gram": _simple(lambda: deadspec.gram),
    "fisher_gram": _simple(lambda: deadspec.fisher_gram),
    "fisher_gram_from_grads": _simple(lambda: deadspec.fisher_gram_from_grads),
    "sym_eig": _simple(lambda: deadspec.sym_eig),
    "spectrum": _simple(lambda: deadspec.spectrum),
    "spectrum_from_eigenvalues": _simple(lambda: deadspec.spectrum_from_eigenvalues),
    "logdet_top": _simple(lambda: deadspec.logdet_top),
    "fit_slope": e_fit_slope,
    "GramAccumulator": e_gram_accumulator,
    "misc": e_misc,
    # model-level
    "read": e_read,
    "approach_slope": e_approach_slope,
    "direction_order": e_direction_order,
    "classify_directions": e_classify_directions,
    "gauge_directions": e_gauge_directions,
    "gauges.discover": e_discover,
    "gauges.check": e_gauge_check,
    "optim.DDCAdam": _optim_entry("DDCAdam"),
    "optim.DDCMuon": _optim_entry("DDCMuon"),
    "llc.estimate": e_llc,
    "monitor.DeadDirectionMonitor": e_monitor,
    "cli.main": e_cli,
    # bindings
    "_core.gram": _core_simple("gram"),
    "_core.resolve_gram_side": _core_simple("resolve_gram_side"),
    "_core.fisher_gram": _core_simple("fisher_gram"),
    "_core.fisher_gram_from_grads": _core_simple("fisher_gram_from_grads"),
    "_core.fisher_route": _core_simple("fisher_route"),
    "_core.fisher_gram_cost": _core_simple("fisher_gram_cost"),
    "_core.sym_eig": _core_simple("sym_eig"),
    "_core.spectrum": _core_simple("spectrum"),
    "_core.spectrum_from_eigenvalues": _core_simple("spectrum_from_eigenvalues"),
    "_core.logdet_top": _core_simple("logdet_top"),
    "_core.default_rtol": _core_simple("default_rtol"),
    "_core.fit_slope": _core_simple("fit_slope"),
    "_core.dlpack_data_ptr": _core_simple("dlpack_data_ptr"),
    "_core.noargs": e_core_noargs,
    "_core.GramAccumulator": e_core_gram_accumulator,
    "_core.ddc_adam_update": e_core_ddc_adam_update,
    "_core.ddc_adam_update_many": _core_blocks("ddc_adam_update_many"),
    "_core.DDCAdamPlan": e_core_ddc_adam_plan,
    "_core.DDCSplitPlan": e_core_ddc_split_plan,
    "_core.ddc_split_units": e_core_ddc_split_units,
    "_core.ddc_split_sums": _core_blocks("ddc_split_sums"),
    "_core.ddc_split_moments": _core_blocks("ddc_split_moments"),
    "_core.ddc_split_apply": _core_blocks("ddc_split_apply"),
    "_core.ddc_row_norms": e_core_row_norms,
    "_core.ddc_gauge_dots": e_core_gauge_dots,
    # the runner's own tests (never fuzzed)
    "selftest": _selftest,
}
