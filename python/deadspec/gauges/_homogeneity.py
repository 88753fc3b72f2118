"""Which operations are positively homogeneous of degree 1 and elementwise (so a per-unit
rescaling passes through them), for the validation and discovery of rescaling gauges."""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "DIV_FUNCTIONS",
    "DIV_METHODS",
    "HOMOGENEOUS_FUNCTIONS",
    "HOMOGENEOUS_MODULES",
    "HOMOGENEOUS_NAMES",
    "MUL_FUNCTIONS",
    "MUL_METHODS",
    "NEG_FUNCTIONS",
    "NON_HOMOGENEOUS_FUNCTIONS",
    "NON_HOMOGENEOUS_METHODS",
    "NON_HOMOGENEOUS_MODULES",
    "NON_HOMOGENEOUS_NAMES",
    "TRANSPARENT_METHODS",
    "activation_name",
    "check_activation",
]

#: module types that are positively homogeneous of degree 1 and act elementwise
HOMOGENEOUS_MODULES: tuple[type, ...] = (
    nn.ReLU,
    nn.LeakyReLU,
    nn.PReLU,
    nn.RReLU,
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
)
#: module types known NOT to be positively homogeneous of degree 1
NON_HOMOGENEOUS_MODULES: tuple[type, ...] = (
    nn.GELU,
    nn.Tanh,
    nn.Sigmoid,
    nn.SiLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.Softplus,
    nn.Mish,
    nn.Hardtanh,
    nn.ReLU6,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Softsign,
    nn.Tanhshrink,
    nn.LogSigmoid,
    nn.Softmax,
    nn.LogSoftmax,
    nn.GLU,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.Threshold,
    nn.Softmin,
    nn.Hardshrink,
    nn.Softshrink,
)
HOMOGENEOUS_NAMES = frozenset(
    {"relu", "leaky_relu", "prelu", "rrelu", "identity", "linear", "dropout", "swiglu"}
)
NON_HOMOGENEOUS_NAMES = frozenset(
    {
        "gelu",
        "tanh",
        "sigmoid",
        "silu",
        "swish",
        "elu",
        "selu",
        "celu",
        "softplus",
        "mish",
        "hardtanh",
        "relu6",
        "hardswish",
        "hardsigmoid",
        "softsign",
        "logsigmoid",
        "softmax",
        "exp",
        "sin",
        "cos",
        "square",
        "abs",
    }
)
HOMOGENEOUS_FUNCTIONS = frozenset(
    {F.relu, torch.relu, F.leaky_relu, F.dropout, F.rrelu, F.prelu} | {F.relu_, torch.relu_}
)
NON_HOMOGENEOUS_FUNCTIONS = frozenset(
    {
        F.gelu,
        torch.tanh,
        torch.sigmoid,
        F.silu,
        F.elu,
        F.selu,
        F.celu,
        F.softplus,
        F.mish,
        F.hardtanh,
        F.relu6,
        F.hardswish,
        F.hardsigmoid,
        F.softsign,
        F.logsigmoid,
        F.softmax,
        F.log_softmax,
        torch.softmax,
        torch.exp,
        torch.sin,
        torch.cos,
        F.layer_norm,
        F.tanh,
        F.sigmoid,
        torch.square,
        torch.abs,
        operator.add,
        operator.sub,
        operator.pow,
        torch.add,
        torch.sub,
        operator.iadd,
        operator.isub,
        torch.pow,
        operator.abs,
    }
)
MUL_FUNCTIONS = frozenset({operator.mul, torch.mul, operator.imul})
DIV_FUNCTIONS = frozenset({operator.truediv, torch.div, torch.true_divide, operator.itruediv})
NEG_FUNCTIONS = frozenset({operator.neg, torch.neg})
TRANSPARENT_METHODS = frozenset({"relu", "relu_", "contiguous", "clone", "neg", "neg_"})
MUL_METHODS = frozenset({"mul", "mul_", "__mul__", "__rmul__"})
DIV_METHODS = frozenset({"div", "div_", "__truediv__", "true_divide"})
NON_HOMOGENEOUS_METHODS = frozenset(
    {
        "tanh",
        "sigmoid",
        "exp",
        "add",
        "add_",
        "sub",
        "sub_",
        "pow",
        "softmax",
        "log_softmax",
        "abs",
        "square",
        "sin",
        "cos",
        "__add__",
        "__radd__",
        "__sub__",
        "__rsub__",
        "__pow__",
    }
)


def activation_name(act: Any) -> str:
    if isinstance(act, str):
        return act
    if isinstance(act, nn.Module):
        return type(act).__name__
    if isinstance(act, type):
        return act.__name__
    return getattr(act, "__name__", repr(act))


def check_activation(fn: str, act: Any) -> None:
    """Raise ValueError unless ``act`` is known to be positively homogeneous of degree 1."""
    if act is None:
        return
    if isinstance(act, (list, tuple)):
        for a in act:
            check_activation(fn, a)
        return
    if isinstance(act, str):
        key = act.lower()
        if key in HOMOGENEOUS_NAMES:
            return
        if key in NON_HOMOGENEOUS_NAMES:
            raise ValueError(
                f"deadspec.{fn}: activation must be positively homogeneous of degree 1 "
                f"(relu, leaky_relu, prelu, identity, dropout, swiglu's linear branch), got "
                f"{act!r}, which is not: the rescaling is not a symmetry across it"
            )
        raise ValueError(
            f"deadspec.{fn}: activation must be one of {sorted(HOMOGENEOUS_NAMES)}, a module "
            f"or a function, got {act!r}"
        )
    typ = act if isinstance(act, type) else type(act) if isinstance(act, nn.Module) else None
    if typ is not None:
        if issubclass(typ, HOMOGENEOUS_MODULES):
            return
    elif act in HOMOGENEOUS_FUNCTIONS:
        return
    known_bad = (typ is not None and issubclass(typ, NON_HOMOGENEOUS_MODULES)) or (
        typ is None and act in NON_HOMOGENEOUS_FUNCTIONS
    )
    if known_bad:
        raise ValueError(
            f"deadspec.{fn}: activation must be positively homogeneous of degree 1 (relu, "
            f"leaky_relu, prelu, identity, dropout, swiglu's linear branch), got "
            f"{activation_name(act)}, which is not: the rescaling is not a symmetry across it"
        )
    raise ValueError(
        f"deadspec.{fn}: activation must be known to be positively homogeneous of degree 1 "
        f"(one of {sorted(HOMOGENEOUS_NAMES)} or the matching torch modules/functions), got "
        f"{activation_name(act)}"
    )
