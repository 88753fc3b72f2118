"""Small reference models used by deadspec's experiments, tests and CLI examples.

All models are plain ``torch.nn`` modules on CPU in the default dtype; nothing here touches
the C++ core. :func:`demo_mlp` is the ``MODULE:FACTORY`` example of the ``deadspec`` CLI
(``--model deadspec.models:demo_mlp``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from deadspec._limits import MAX_LAYERS, MAX_PARAMETERS, check_at_most

__all__ = [
    "DEMO_WIDTHS",
    "ModAddTransformer",
    "ReducedRankRegression",
    "SelfAttention",
    "TransformerBlock",
    "demo_mlp",
    "mlp",
    "modadd_data",
]

#: Widths of the network built by :func:`demo_mlp` (input, hidden, hidden, output).
DEMO_WIDTHS: tuple[int, ...] = (8, 16, 16, 4)

_ACTIVATIONS = {
    "relu": nn.ReLU,
    "linear": None,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
}


def _check_pos_int(fn: str, name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            import numpy as np

            if isinstance(value, np.integer):
                value = int(value)
            else:
                raise TypeError
        except (ImportError, TypeError):
            raise TypeError(
                f"deadspec.{fn}: {name} must be a positive integer, got "
                f"{type(value).__name__} {value!r}"
            ) from None
    if value < 1:
        raise ValueError(f"deadspec.{fn}: {name} must be a positive integer, got {value}")
    return int(value)


class ReducedRankRegression(nn.Module):
    """Reduced-rank regression x ↦ B A x (a two-layer linear network).

    Parameters
    ----------
    M : int
        Input dimension.
    N : int
        Output dimension.
    H : int
        Inner dimension (the model's maximal rank).
    bias : bool, optional
        Give both layers a bias (default False, the setting of Aoyagi & Watanabe; see
        :func:`deadspec.theory.rrr_rlct`).

    Attributes
    ----------
    A : torch.nn.Linear
        ``nn.Linear(M, H)``; its weight is the H×M matrix A.
    B : torch.nn.Linear
        ``nn.Linear(H, N)``; its weight is the N×H matrix B.
    """

    def __init__(self, M: int, N: int, H: int, bias: bool = False) -> None:
        super().__init__()
        self.M = _check_pos_int("ReducedRankRegression", "M", M)
        self.N = _check_pos_int("ReducedRankRegression", "N", N)
        self.H = _check_pos_int("ReducedRankRegression", "H", H)
        self.A = nn.Linear(self.M, self.H, bias=bias)
        self.B = nn.Linear(self.H, self.N, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.B(self.A(x))

    def product(self) -> torch.Tensor:
        """The N×M matrix B·A (detached)."""
        return (self.B.weight @ self.A.weight).detach()

    def extra_repr(self) -> str:
        return f"M={self.M}, N={self.N}, H={self.H}"


def mlp(
    widths: Sequence[int],
    activation: str = "relu",
    bias: bool = True,
) -> nn.Sequential:
    """A fully connected network as an ``nn.Sequential``.

    ``mlp([d0, d1, ..., dL])`` is
    ``Linear(d0, d1), act, Linear(d1, d2), act, ..., Linear(dL-1, dL)``
    (no activation after the last layer). With the module names of ``nn.Sequential``, the
    Linear layers are ``"0", "2", "4", ...`` and the activations ``"1", "3", ...``; with
    ``activation="linear"`` there are no activation modules and the Linear layers are
    ``"0", "1", "2", ...``.

    Parameters
    ----------
    widths : sequence of int
        Layer widths, input first; at least two entries.
    activation : {"relu", "linear", "tanh", "gelu"}
        Hidden nonlinearity ("linear" = none: a deep linear network).
    bias : bool
        Whether the Linear layers have biases.

    At most 10,000 layers and 2³⁴ parameters (ValueError before anything is allocated;
    ``deadspec._limits``).

    Returns
    -------
    torch.nn.Sequential
    """
    if isinstance(widths, (str, bytes)) or not isinstance(widths, Sequence):
        raise TypeError(
            f"deadspec.mlp: widths must be a sequence of int, got {type(widths).__name__}"
        )
    if len(widths) < 2:
        raise ValueError(f"deadspec.mlp: widths must have at least 2 entries, got {list(widths)}")
    check_at_most("mlp", "the number of layers len(widths) − 1", len(widths) - 1, MAX_LAYERS,
                  "fewer widths")
    ws = [_check_pos_int("mlp", f"widths[{i}]", w) for i, w in enumerate(widths)]
    n_params = sum(a * b + (b if bias else 0) for a, b in zip(ws[:-1], ws[1:]))
    check_at_most("mlp", "the number of parameters", n_params, MAX_PARAMETERS, "smaller widths")
    if activation not in _ACTIVATIONS:
        raise ValueError(
            f"deadspec.mlp: activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}"
        )
    act = _ACTIVATIONS[activation]
    layers: list[nn.Module] = []
    for i in range(len(ws) - 1):
        layers.append(nn.Linear(ws[i], ws[i + 1], bias=bias))
        if act is not None and i < len(ws) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


def demo_mlp() -> nn.Sequential:
    """The over-parameterised ReLU MLP of ``deadspec demo`` (widths :data:`DEMO_WIDTHS`).

    A zero-argument factory, so it can be named on the command line:
    ``deadspec read ckpt.pt --model deadspec.models:demo_mlp --data data.pt``.
    """
    return mlp(DEMO_WIDTHS, activation="relu", bias=True)


# Transformer models live in their own module; they are part of this namespace.
from deadspec.models_transformer import (  # noqa: E402
    ModAddTransformer,
    SelfAttention,
    TransformerBlock,
    modadd_data,
)
