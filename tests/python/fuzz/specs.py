"""Plain-data descriptions of fuzz inputs.

A case is built in the parent (by hypothesis) and sent to a worker child, which turns each spec
into the real object (:func:`fuzz.entries.build`). Specs hold only strings, numbers, tuples and
dicts, so a case pickles cheaply and its ``repr`` is valid Python: every finding is reported
as an expression that rebuilds the exact input, e.g.::

    Case('spectrum', (Arr('numpy', 'float64', (2, 2), fill='psd', scale=1e300),))

This module imports neither torch nor deadspec.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

__all__ = ["SPECIAL", "Arr", "Capsule", "Case", "Direction", "File", "Fn", "Layer", "Loss",
           "Model", "Num", "Obj"]


class _Spec:
    """repr with the positional fields, then only the keyword fields that differ from the
    default: short, and valid Python."""

    _positional = 0

    def __repr__(self) -> str:
        parts = []
        for i, f in enumerate(fields(self)):
            v = getattr(self, f.name)
            default = f.default_factory() if f.default_factory is not MISSING else f.default
            if i < self._positional:
                parts.append(repr(v))
            elif v != default:
                parts.append(f"{f.name}={v!r}")
        return f"{type(self).__name__}({', '.join(parts)})"


@dataclass(frozen=True, repr=False)
class Num(_Spec):
    """A float that ``repr`` cannot spell (``'nan'``, ``'inf'``, ``'-inf'``, ``'-0.0'``) or any
    float given as text."""

    text: str
    _positional = 1

    @property
    def value(self) -> float:
        return float(self.text)

    @property
    def finite(self) -> bool:
        return math.isfinite(self.value)


#: Named special values injected into arrays (``Arr.special``).
SPECIAL = {
    "nan": float("nan"),
    "inf": float("inf"),
    "-inf": float("-inf"),
    "-0": -0.0,
    "sub64": 5e-324,  # smallest float64 subnormal
    "sub32": 1e-45,  # a float32 subnormal
    "huge64": 1e300,
    "-huge64": -1e300,
    "huge32": 3e38,
    "-huge32": -3e38,
    "max16": 65000.0,
}


@dataclass(frozen=True, repr=False)
class Arr(_Spec):
    """An array or tensor.

    lib : ``"numpy"``, ``"torch"`` or ``"list"`` (nested Python lists).
    dtype : numpy/torch dtype name (``"bfloat16"`` only for torch).
    shape : the logical shape of the result.
    fill : ``"normal"``, ``"uniform"``, ``"zeros"``, ``"ones"``, ``"const"``, ``"arange"``,
        ``"psd"`` (``X Xᵀ/k`` of a random X, square shapes), ``"sym"`` (symmetrised normal),
        ``"lowrank"`` (rank-1 product), ``"int"`` (integers in ``[0, scale)``), ``"desc"``
        (``|normal|·scale`` sorted descending: an eigenvalue vector).
    scale : multiplies the fill (``"psd"``: its entries scale like ``scale``).
    seed : seed of the fill.
    special : ``(flat index, name)`` pairs: the entry at ``index % size`` becomes
        ``SPECIAL[name]``.
    layout : ``"c"``, ``"T"`` (transposed view), ``"strided"`` (every other column),
        ``"fortran"``, ``"reversed"`` (negative stride, numpy), ``"broadcast"`` (zero stride),
        ``"offset"`` (a view into a larger buffer), ``"grad"`` (torch, requires_grad).
    """

    lib: str
    dtype: str
    shape: tuple[int, ...]
    fill: str = "normal"
    scale: float = 1.0
    seed: int = 0
    special: tuple[tuple[int, str], ...] = ()
    layout: str = "c"
    _positional = 3


@dataclass(frozen=True, repr=False)
class Model(_Spec):
    """A small torch model.

    kind : ``"mlp"`` (:func:`deadspec.models.mlp` over ``widths`` with ``act``),
        ``"mlp_ln"`` (a LayerNorm before the last Linear), ``"transformer"``
        (:class:`deadspec.models.ModAddTransformer` with ``p = widths[0]``,
        ``d_model = widths[1]``, ``n_heads = widths[2]``), ``"rrr"``
        (:class:`deadspec.models.ReducedRankRegression`), ``"conv"`` (Conv1d, ReLU, Flatten,
        Linear), ``"noparams"`` (ReLU only), ``"tuple_out"`` (returns a tuple).
    dtype : parameter dtype.
    init_scale : parameters multiplied by it after the seeded init (``0`` zeroes them).
    dead : hidden units of the first layer whose weight row and bias are zeroed (dead ReLUs).
    special : ``(flat index over all parameters, name)`` injections, as in :class:`Arr`.
    """

    kind: str
    widths: tuple[int, ...] = (3, 4, 2)
    act: str = "relu"
    bias: bool = True
    dtype: str = "float64"
    seed: int = 0
    init_scale: float = 1.0
    dead: tuple[int, ...] = ()
    special: tuple[tuple[int, str], ...] = ()
    layernorm: bool = False
    _positional = 1


@dataclass(frozen=True, repr=False)
class Layer(_Spec):
    """The ``index``-th name of ``model.named_modules()`` (modulo their number; the root ``""``
    included), or ``name`` verbatim when given."""

    index: int = 0
    name: str | None = None
    linear_only: bool = False


@dataclass(frozen=True, repr=False)
class Loss(_Spec):
    """A loss function by name: ``"ce"``, ``"mse"``, ``"bce"``, ``"l1"`` (torch losses with
    ``reduction="none"``), ``"ce_mean"``/``"mse_mean"`` (scalar), ``"token_ce"``
    (:class:`deadspec.TokenCrossEntropy`), ``"gauss"`` (:func:`deadspec.llc.gaussian_nll`
    with ``sigma``), ``"ce_nll"`` (:func:`deadspec.llc.cross_entropy_nll`), ``"nan"`` (returns
    NaN losses), ``"transposed"`` (an ``(1, N)`` loss), ``"raises"`` (raises ``KeyError``: a
    user error, expected to propagate unchanged), ``"notcallable"`` (the integer 3)."""

    name: str
    sigma: float = 1.0
    _positional = 1


@dataclass(frozen=True, repr=False)
class Fn(_Spec):
    """A callable by name, for arguments that take one: ``"approach_norm"`` (the Frobenius
    norm of all parameters), ``"approach_const"`` (1.0), ``"approach_nan"``, ``"path_line"``
    (``t -> {first parameter: t·it}``)."""

    name: str
    _positional = 1


@dataclass(frozen=True, repr=False)
class Obj(_Spec):
    """An object that is neither an array nor a number: ``"object"``, ``"dict"``, ``"set"``,
    ``"generator"``, ``"bytes"``, ``"model"`` (a fresh ``nn.Linear(2, 2)``), ``"tensor_cuda"``
    (a tensor on the meta device, standing in for a non-CPU device), ``"dtype_<name>"`` (a torch
    dtype)."""

    name: str
    _positional = 1


@dataclass(frozen=True, repr=False)
class Direction(_Spec):
    """A parameter-space direction of the case's model: ``form`` ``"flat"`` (a vector of
    length Σ numel), ``"dict"`` (``{name: tensor}`` over the parameters, ``keep`` of them),
    ``"wronglen"`` (Σ numel + 1 entries), ``"badname"`` (``{"nope": ...}``); entries
    ``normal·scale`` (``fill="zeros"``: the zero direction)."""

    form: str = "flat"
    fill: str = "normal"
    scale: float = 1.0
    seed: int = 0
    keep: int = 1
    special: tuple[tuple[int, str], ...] = ()


@dataclass(frozen=True, repr=False)
class Capsule(_Spec):
    """The DLPack capsule of an :class:`Arr` (``versioned``: ``__dlpack__(max_version=(1,0))``),
    for the ``deadspec._core`` bindings. ``used``: the capsule is consumed once before the call
    (a used capsule)."""

    arr: Arr
    versioned: bool = False
    used: bool = False
    _positional = 1


@dataclass(frozen=True, repr=False)
class File(_Spec):
    """A file (or folder) the worker writes into the case's own temporary folder before a
    command-line call; its path replaces ``{name}`` in the argv (``name`` its key in the case's
    ``files``). An input file must never be written by the call.

    kind : ``"factory"`` (a ``.py`` file whose ``make()`` returns
        ``deadspec.models.mlp(widths)``), ``"ckpt"`` (``torch.save`` of that model's state_dict,
        seeded by ``seed``), ``"ckpt_wrapped"`` (under ``"state_dict"``), ``"ckpt_prefix"`` (keys
        prefixed ``model.``),
        ``"ckpt_wrongkeys"``, ``"ckpt_wrongshape"``, ``"safetensors"``, ``"data_pt"`` (``{"inputs",
        "targets"}``), ``"data_npz"``, ``"data_tensor"`` (a bare tensor), ``"data_badtargets"``
        (fewer targets than inputs), ``"data_nan"`` (NaN inputs), ``"garbage"`` (random bytes),
        ``"empty"`` (0 bytes), ``"dir"`` (an empty folder), ``"csv"`` (an existing CSV the user
        keeps), ``"pickle"`` (a pickled object: ``weights_only`` must refuse it).
    widths : the model's widths (``factory``, ``ckpt*``) or ``(N, d_in, d_out)`` of data files.
    suffix : the file name's suffix.
    """

    kind: str
    widths: tuple[int, ...] = (3, 4, 2)
    seed: int = 0
    suffix: str = ""
    targets: str = "int"
    _positional = 1


@dataclass(frozen=True, repr=False)
class Case(_Spec):
    """One call of one entry point: ``entry`` (a name of :data:`fuzz.entries.ENTRIES`),
    positional ``args`` and keyword ``kwargs`` (specs or plain values), and ``ops``: further
    steps for stateful entries (accumulators, optimizers, monitors, files)."""

    entry: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    ops: tuple[Any, ...] = ()
    _positional = 2

    def __hash__(self) -> int:  # kwargs is a dict: hash its repr
        return hash(repr(self))


#: Outcome classes, in the order the summary lists them. ``ok``, ``clean_error`` and
#: ``model_error`` are expected; :data:`FINDINGS` are the findings; ``"nonfinite_in"`` only
#: informs (a non-finite result of a non-finite input that was accepted instead of refused).
#: ``model_error``: the user's model (or loss_fn, path) raised its own exception, which deadspec
#: passed unchanged with a note naming itself and what it ran (``deadspec._usercode``).
OK = "ok"
CLEAN = "clean_error"
CRASH = "crash"
HANG = "hang"
NONFINITE = "nonfinite"
UNCLEAR = "unclear_error"
OVERWRITE = "overwrite"
NONFINITE_IN = "nonfinite_in"
MODEL_ERROR = "model_error"
OUTCOMES = (OK, CLEAN, MODEL_ERROR, CRASH, HANG, NONFINITE, UNCLEAR, OVERWRITE, NONFINITE_IN)
FINDINGS = (CRASH, HANG, NONFINITE, UNCLEAR, OVERWRITE)
