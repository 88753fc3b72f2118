"""Tests of deadspec.approach_slope and deadspec.direction_order."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import deadspec

DT = torch.float64
M, H, D_OUT, N = 8, 6, 5, 200


def _linear_net(seed: int = 0, bias: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(M, H, bias=bias), nn.Linear(H, D_OUT, bias=bias)).to(DT)


def _inputs(seed: int = 1, n: int = N, d: int = M) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=DT)


def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_unchanged(model, snap):
    sd = model.state_dict()
    assert sd.keys() == snap.keys()
    for k, v in sd.items():
        assert torch.equal(v, snap[k]), k  # bitwise


# ------------------------------------------------------------------ approach_slope


@pytest.mark.parametrize("r", [1, 2, 3])
def test_activation_slope_is_2r_and_lambda_min_slope_2(r):
    model, x = _linear_net(), _inputs()
    snap = _snapshot(model)
    res = deadspec.approach_slope(model, x, layer="0", units=list(range(r)))
    assert isinstance(res, deadspec.ApproachSlope)
    assert res.slope == pytest.approx(2 * r, rel=0.05)
    assert res.lambda_min_slope == pytest.approx(2, rel=0.05)
    assert res.r2 > 0.999 and res.lambda_min_r2 > 0.99
    assert res.active == H
    assert res.units == tuple(range(r)) and res.layer == "0" and res.side == "activation"
    assert res.next_layer == "1" and res.n_directions == r
    np.testing.assert_allclose(res.t, np.logspace(-3, -1, 7))
    assert res.logdet_plus.shape == res.lambda_min.shape == (7,)
    _assert_unchanged(model, snap)


def test_slope_ratio_is_rank_multiplicative_with_bias_and_relu():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(M, H), nn.ReLU(), nn.Linear(H, D_OUT)).to(DT)
    x = _inputs(2)
    s1 = deadspec.approach_slope(model, x, layer="0", units=[1]).slope
    s3 = deadspec.approach_slope(model, x, layer="0", units=[1, 3, 4]).slope
    assert s3 / s1 == pytest.approx(3, rel=0.05)


def test_units_none_finds_dead_cluster():
    model, x = _linear_net(3), _inputs()
    dead = [1, 4]
    with torch.no_grad():
        model[0].weight[dead] *= 1e-3
    snap = _snapshot(model)
    res = deadspec.approach_slope(model, x, layer="0")
    assert res.units is None and res.n_directions == 2
    assert res.slope == pytest.approx(4, rel=0.05)
    assert res.lambda_min_slope == pytest.approx(2, rel=0.05)
    # The directions found span the dead units.
    u = res.directions
    proj = np.sum(u[dead] ** 2, axis=0)
    np.testing.assert_allclose(proj, 1.0, atol=1e-4)
    _assert_unchanged(model, snap)


def test_units_none_without_dead_cluster_raises():
    model, x = _linear_net(), _inputs()
    with pytest.raises(ValueError, match="dead_count=0.*units="):
        deadspec.approach_slope(model, x, layer="0")


def test_fisher_side_slope():
    # Fisher-Gram of layer "0"'s weight: the rows of r dead units carry δ ∝ t through the scaled
    # columns of W2 -> M·r eigenvalues ∝ t², slope 2·M·r. The output must be wider than H, else
    # δ = W2ᵀ·residual lives in an O-dim subspace (a width limit) that absorbs the scaling.
    o_wide = H + 2
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(M, H, bias=False), nn.Linear(H, o_wide, bias=False)).to(DT)
    x = _inputs()
    y = torch.randn(N, o_wide, generator=torch.Generator().manual_seed(9), dtype=DT)
    snap = _snapshot(model)
    res = deadspec.approach_slope(model, x, layer="0", units=[2], side="fisher", targets=y)
    assert res.side == "fisher" and res.active == M * H
    assert res.slope == pytest.approx(2 * M, rel=0.05)
    assert res.lambda_min_slope == pytest.approx(2, rel=0.05)
    _assert_unchanged(model, snap)


def test_next_layer_choice_and_errors():
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(M, H)
            self.skip = nn.Linear(M, 3)  # registered after `a` but in_features != H
            self.b = nn.Linear(H, D_OUT)

        def forward(self, x):
            return self.b(torch.tanh(self.a(x))) + self.skip(x).sum(-1, keepdim=True)

    model, x = Net().to(DT), _inputs()
    res = deadspec.approach_slope(model, x, layer="a", units=[0])
    assert res.next_layer == "b"
    with pytest.raises(ValueError, match="in_features"):
        deadspec.approach_slope(model, x, layer="a", units=[0], next_layer="skip")
    with pytest.raises(ValueError, match="available names"):
        deadspec.approach_slope(model, x, layer="zz", units=[0])
    with pytest.raises(ValueError, match=r"units must lie in \[0, 6\)"):
        deadspec.approach_slope(model, x, layer="a", units=[6])
    with pytest.raises(ValueError, match="side must be one of"):
        deadspec.approach_slope(model, x, layer="a", units=[0], side="both")
    with pytest.raises(ValueError, match="t must hold finite positive"):
        deadspec.approach_slope(model, x, layer="a", units=[0], t=[0.0, 0.1])


# ------------------------------------------------------------------ direction_order


class _Power(nn.Module):
    """y = w^p · x (one parameter w)."""

    def __init__(self, p: int, w0: float = 0.0):
        super().__init__()
        self.p = p
        self.w = nn.Parameter(torch.tensor(w0, dtype=DT))

    def forward(self, x):
        return (self.w**self.p) * x


class _Product(nn.Module):
    """y = a · b · x."""

    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.zeros((), dtype=DT))
        self.b = nn.Parameter(torch.zeros((), dtype=DT))

    def forward(self, x):
        return self.a * self.b * x


def _xy(n: int = 64):
    x = torch.randn(n, 1, generator=torch.Generator().manual_seed(0), dtype=DT)
    return x, torch.zeros(n, 1, dtype=DT)


@pytest.mark.parametrize("p,k", [(2, 2), (3, 3)])
def test_power_model_order(p, k):
    x, y = _xy()
    model = _Power(p)
    res = deadspec.direction_order(model, x, {"w": torch.tensor(1.0, dtype=DT)}, targets=y)
    assert res.kind == "genuine"
    assert res.k_hat == pytest.approx(k, rel=1e-6)
    assert res.slope == pytest.approx(2 * (k - 1), rel=1e-6)
    assert res.lambda_dir == pytest.approx(1 / (2 * k), rel=1e-6)
    # F_u(t) = p² t^{2(p-1)} E[x²] exactly.
    want = p**2 * res.t ** (2 * (p - 1)) * float((x**2).mean())
    np.testing.assert_allclose(res.fisher, want, rtol=1e-10)
    assert model.w.item() == 0.0


def test_observed_labels_give_the_empirical_rate():
    # Empirical Fisher at a perfect fit vanishes faster: g = (w²x)·2wx ∝ t³ -> slope 6, k̂ = 4.
    x, y = _xy()
    res = deadspec.direction_order(
        _Power(2), x, torch.ones(1, dtype=DT), targets=y, labels="observed"
    )
    assert res.k_hat == pytest.approx(4, rel=1e-6)
    # Sampled labels: noisy but of the true order.
    res_s = deadspec.direction_order(
        _Power(2), x, torch.ones(1, dtype=DT), targets=y, labels="sampled", seed=5
    )
    assert res_s.k_hat == pytest.approx(2, abs=0.3)


def test_regular_linear_model():
    x = _xy()[0]
    y = 0.7 * x
    res = deadspec.direction_order(
        _Power(1, w0=0.7), x, {"w": torch.tensor(2.0, dtype=DT)}, targets=y
    )
    assert res.kind == "regular"
    assert abs(res.slope) < 1e-8
    assert res.k_hat == pytest.approx(1.0, abs=1e-8)
    assert res.lambda_dir == pytest.approx(0.5, abs=1e-8)


def test_product_model_flat_and_genuine():
    x, y = _xy()
    model = _Product()
    flat = deadspec.direction_order(model, x, {"a": torch.tensor(1.0, dtype=DT)}, targets=y)
    assert flat.kind == "flat-gauge" and flat.k_hat == math.inf and flat.lambda_dir == 0.0
    assert np.all(flat.fisher == 0) and np.all(flat.reference > 0)
    diag = deadspec.direction_order(model, x, torch.tensor([1.0, 1.0], dtype=DT), targets=y)
    assert diag.kind == "genuine" and diag.k_hat == pytest.approx(2, rel=1e-6)


def test_softmax_logit_shift_is_flat_gauge():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).to(DT)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(50, 4, generator=g, dtype=DT)
    y = torch.randint(0, 3, (50,), generator=g)
    shift = {"2.bias": torch.ones(3, dtype=DT)}
    res = deadspec.direction_order(model, x, shift, targets=y)
    assert res.kind == "flat-gauge"
    assert np.all(res.fisher <= 1e-12 * res.reference)
    # Empirical Fisher too: Σ_c (p_c − y_c) = 0.
    res_obs = deadspec.direction_order(model, x, shift, targets=y, labels="observed")
    assert res_obs.kind == "flat-gauge"
    # A generic bias direction is not flat; along it F_u stays Θ(1): regular.
    other = {"2.bias": torch.tensor([1.0, -1.0, 0.0], dtype=DT)}
    res2 = deadspec.direction_order(model, x, other, targets=y)
    assert res2.kind == "regular"


def _flat_and_dict_direction():
    """A Tanh MLP, regression data and one direction on "2.weight" in both forms: a flat vector
    over all parameters and a dict (3× longer: directions are scale-free)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).to(DT)
    x = torch.randn(30, 3, generator=torch.Generator().manual_seed(2), dtype=DT)
    y = torch.randn(30, 2, generator=torch.Generator().manual_seed(3), dtype=DT)
    names = [n for n, _ in model.named_parameters()]
    sizes = [p.numel() for p in model.parameters()]
    flat = torch.zeros(sum(sizes), dtype=DT)
    off = sum(sizes[: names.index("2.weight")])
    flat[off : off + 8] = torch.arange(1.0, 9.0, dtype=DT)
    as_dict = {"2.weight": torch.arange(1.0, 9.0, dtype=DT).reshape(2, 4) * 3.0}
    return model, x, y, flat, as_dict


def test_direction_forms_agree_and_path_callable():
    model, x, y, flat, as_dict = _flat_and_dict_direction()
    r_flat = deadspec.direction_order(model, x, flat, targets=y)
    r_dict = deadspec.direction_order(model, x, as_dict, targets=y)
    np.testing.assert_allclose(r_flat.fisher, r_dict.fisher, rtol=1e-12)
    # path= reproducing the default straight line gives the same numbers.
    theta = {n: p.detach().clone() for n, p in model.named_parameters()}
    u = as_dict["2.weight"] / as_dict["2.weight"].norm()
    r_path = deadspec.direction_order(
        model, x, as_dict, targets=y, path=lambda t: {"2.weight": theta["2.weight"] + t * u}
    )
    np.testing.assert_allclose(r_path.fisher, r_dict.fisher, rtol=1e-12)
    # Streaming does not change the average.
    r_b = deadspec.direction_order(model, x, as_dict, targets=y, batch_size=7)
    np.testing.assert_allclose(r_b.fisher, r_dict.fisher, rtol=1e-12)


def test_classify_user_candidates_in_both_forms():
    """A user candidate given as one flat vector is classified like its dict form, and the
    result's direction is the unit direction (non-zero entries only) in both."""
    model, x, y, flat, as_dict = _flat_and_dict_direction()
    got = deadspec.classify_directions(model, x, targets=y, gauges=False, n_small=0,
                                       candidates={"flat": flat, "dict": as_dict})
    assert [c.name for c in got] == ["flat", "dict"] and {c.source for c in got} == {"user"}
    np.testing.assert_allclose(got[0].order.fisher, got[1].order.fisher, rtol=1e-12)
    unit = as_dict["2.weight"] / as_dict["2.weight"].norm()
    for c in got:
        assert list(c.direction) == ["2.weight"]
        torch.testing.assert_close(c.direction["2.weight"], unit, rtol=1e-12, atol=0)


def test_direction_order_validation():
    x, y = _xy()
    model = _Power(2)
    with pytest.raises(ValueError, match="not parameters of the model"):
        deadspec.direction_order(model, x, {"v": torch.tensor(1.0)}, targets=y)
    with pytest.raises(ValueError, match="norm 0"):
        deadspec.direction_order(model, x, {"w": torch.tensor(0.0)}, targets=y)
    with pytest.raises(ValueError, match="length 1"):
        deadspec.direction_order(model, x, torch.ones(2), targets=y)
    with pytest.raises(ValueError, match="task="):
        deadspec.direction_order(model, x, torch.ones(1))
    with pytest.raises(ValueError, match="labels must be one of"):
        deadspec.direction_order(model, x, torch.ones(1), targets=y, labels="true")


def test_direction_order_sums_elementwise_losses():
    x, y = _xy()
    model = _Power(2)
    kw = dict(targets=y, labels="observed", n_probes=1)
    def summed(o, t):
        return nn.functional.mse_loss(o, t, reduction="none").sum(-1)

    elementwise = nn.MSELoss(reduction="none")
    a = deadspec.direction_order(model, x, torch.ones(1), loss_fn=elementwise, **kw)
    b = deadspec.direction_order(model, x, torch.ones(1), loss_fn=summed, **kw)
    np.testing.assert_array_equal(a.fisher, b.fisher)
    assert a.kind == b.kind


def test_read_at_reads_after_the_relu():
    # A scaled unit's post-ReLU column is t times its own (positive homogeneity): slope 2r
    # after the nonlinearity too, and the reading is of module "1", not the Linear.
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 4)).double()
    x = torch.randn(300, 5, dtype=torch.float64)
    pre = deadspec.approach_slope(net, x, layer="0", units=[1, 4])
    post = deadspec.approach_slope(net, x, layer="0", units=[1, 4], read_at="1")
    assert post.slope == pytest.approx(4.0, rel=1e-3)
    assert post.lambda_min_slope == pytest.approx(2.0, rel=1e-2)
    # the post-ReLU Gram is another matrix: its log det⁺ differs from the pre-activation one
    assert not np.allclose(post.logdet_plus, pre.logdet_plus)


def test_read_at_errors():
    net = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 4)).double()
    x = torch.randn(50, 5, dtype=torch.float64)
    with pytest.raises(ValueError, match="read_at 'relu' is not a submodule"):
        deadspec.approach_slope(net, x, layer="0", units=[0], read_at="relu")
    with pytest.raises(ValueError, match="activation side only"):
        deadspec.approach_slope(
            net, x, layer="0", units=[0], read_at="1", side="fisher", targets=torch.randn(50, 4)
        )
    with pytest.raises(TypeError, match="read_at must be a module name"):
        deadspec.approach_slope(net, x, layer="0", units=[0], read_at=1)
