"""Small models shared by the gauge and optimizer tests."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def mlp_ln(seed: int = 0, act: Callable[[], nn.Module] = nn.ReLU) -> nn.Sequential:
    """2 hidden ReLU layers, a LayerNorm before a linear layer, a cross-entropy head (float64)."""
    torch.manual_seed(seed)
    m = nn.Sequential(
        nn.Linear(6, 10),
        act(),
        nn.Linear(10, 8),
        act(),
        nn.Linear(8, 7),
        nn.LayerNorm(7),
        nn.Linear(7, 4),
    ).double()
    with torch.no_grad():
        m[5].weight.uniform_(0.5, 1.5)
        m[5].bias.normal_()
    return m
