"""Tests of deadspec.models."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from deadspec.models import DEMO_WIDTHS, ReducedRankRegression, demo_mlp, mlp


def test_reduced_rank_regression_structure_and_forward():
    torch.manual_seed(0)
    m = ReducedRankRegression(5, 3, 2)
    assert isinstance(m.A, nn.Linear) and isinstance(m.B, nn.Linear)
    assert m.A.weight.shape == (2, 5) and m.B.weight.shape == (3, 2)
    assert m.A.bias is None and m.B.bias is None
    assert [n for n, _ in m.named_modules() if n] == ["A", "B"]
    x = torch.randn(7, 5)
    torch.testing.assert_close(m(x), x @ m.product().T)
    assert torch.linalg.matrix_rank(m.product()) <= 2
    assert "M=5, N=3, H=2" in repr(m)


def test_reduced_rank_regression_bias():
    m = ReducedRankRegression(4, 4, 3, bias=True)
    assert m.A.bias is not None and m.B.bias is not None
    assert m(torch.randn(2, 4)).shape == (2, 4)


@pytest.mark.parametrize("bad", [0, -1])
def test_reduced_rank_regression_rejects_non_positive(bad):
    with pytest.raises(ValueError, match="M must be a positive integer"):
        ReducedRankRegression(bad, 2, 2)


def test_reduced_rank_regression_rejects_non_int():
    with pytest.raises(TypeError, match="H must be a positive integer, got float"):
        ReducedRankRegression(2, 2, 2.0)


def test_mlp_relu_layout():
    m = mlp([4, 8, 8, 3])
    kinds = [type(x).__name__ for x in m]
    assert kinds == ["Linear", "ReLU", "Linear", "ReLU", "Linear"]
    assert m[0].weight.shape == (8, 4) and m[4].weight.shape == (3, 8)
    assert m(torch.randn(5, 4)).shape == (5, 3)


def test_mlp_linear_has_no_activation_modules():
    m = mlp([4, 6, 2], activation="linear", bias=False)
    assert [type(x).__name__ for x in m] == ["Linear", "Linear"]
    assert m[0].bias is None
    x = torch.randn(3, 4)
    torch.testing.assert_close(m(x), x @ (m[1].weight @ m[0].weight).T)


def test_mlp_errors():
    with pytest.raises(ValueError, match="at least 2 entries"):
        mlp([4])
    with pytest.raises(ValueError, match="activation must be one of"):
        mlp([4, 2], activation="swish")
    with pytest.raises(ValueError, match=r"widths\[1\] must be a positive integer"):
        mlp([4, 0, 2])
    with pytest.raises(TypeError, match="widths must be a sequence"):
        mlp(4)


def test_demo_mlp_is_a_zero_argument_factory():
    m = demo_mlp()
    assert isinstance(m, nn.Sequential)
    assert m[0].in_features == DEMO_WIDTHS[0] and m[-1].out_features == DEMO_WIDTHS[-1]
    # same architecture every call, so saved state_dicts load into a fresh one
    demo_mlp().load_state_dict(m.state_dict())
