"""Tests of deadspec.read: activation and Fisher-Gram spectra of torch layers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

import deadspec

DT = torch.float64


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).to(DT)


def _data(n: int = 40, seed: int = 1, classes: int = 3, d: int = 5):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=DT)
    y = torch.randint(0, classes, (n,), generator=g)
    return x, y


def _brute_fisher_eigs(model, x, y, layer: str | list[str], per_sample_loss) -> np.ndarray:
    """Eigenvalues of (1/N) Γ Γᵀ, Γ the per-sample gradients of the layers' weights and biases."""
    layers = [layer] if isinstance(layer, str) else layer
    names = [f"{ly}.{k}" for ly in layers for k in ("weight", "bias")]
    params = {k: v.detach() for k, v in model.named_parameters() if k in names}

    def loss_one(p, xi, yi):
        out = functional_call(model, p, (xi.unsqueeze(0),))
        return per_sample_loss(out, yi.unsqueeze(0)).sum()

    g = vmap(grad(loss_one), in_dims=(None, 0, 0))(params, x, y)
    gamma = torch.cat([g[k].reshape(x.shape[0], -1) for k in names], dim=1)
    k = (gamma @ gamma.T / x.shape[0]).detach()
    return np.sort(torch.linalg.eigvalsh(k).numpy())[::-1]


def _ce(out, y):
    return nn.functional.cross_entropy(out, y, reduction="none")


def _assert_eigs_close(got, want, rtol=1e-8):
    got = np.asarray(got)
    want = np.clip(np.asarray(want), 0, None)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * want[0])


# ------------------------------------------------------------------ activation side


def test_activation_matches_gram_by_hand():
    model, (x, y) = _mlp(), _data()
    r = deadspec.read(model, x, targets=y, layers=["0", "1", "2"])
    with torch.no_grad():
        z0 = model[0](x)
        h1 = model[1](z0)
    for name, a in (("0", z0), ("1", h1)):
        want = deadspec.spectrum(deadspec.gram(a), input_dtype="float64", rtol_size=max(a.shape))
        got = r[name].activation
        np.testing.assert_allclose(got.eigenvalues, want.eigenvalues, rtol=1e-12, atol=1e-14)
        assert got.active == want.active
        assert got.logdet_plus == pytest.approx(want.logdet_plus, rel=1e-12)
    # Linear(5, 7) with bias: rank of [W b] is at most 6 (a width limit, not a dead unit).
    assert r["0"].activation.active == 6
    assert r["0"].activation.structural_zeros == 1
    assert r["1"].fisher is None  # Tanh: activation side only
    assert r["0"].n_samples == 40 and r["0"].n_rows == 40


def test_center_and_fewer_rows_than_features():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 20)).to(DT)
    x = torch.randn(6, 4, dtype=DT)
    r = deadspec.read(model, x, fisher=False, center=True)
    with torch.no_grad():
        z = model(x)
    want = deadspec.spectrum(deadspec.gram(z, center=True))
    got = r["0"].activation
    assert len(got.eigenvalues) == 6  # R×R route since R=6 < h=20
    np.testing.assert_allclose(got.eigenvalues, want.eigenvalues[:6], rtol=1e-10, atol=1e-12)
    # Same answer streamed.
    rs = deadspec.read(model, x, fisher=False, center=True, batch_size=4)
    np.testing.assert_allclose(
        rs["0"].activation.eigenvalues, got.eigenvalues, rtol=1e-10, atol=1e-12
    )


# ------------------------------------------------------------------ Fisher side


@pytest.mark.parametrize("layer", ["0", "2"])
def test_fisher_matches_brute_force_per_sample_grads(layer):
    model, (x, y) = _mlp(), _data()
    r = deadspec.read(model, x, targets=y, layers=[layer])
    want = _brute_fisher_eigs(model, x, y, layer, _ce)
    _assert_eigs_close(r[layer].fisher.eigenvalues, want)
    # The cross-entropy logit shift: at the output layer δ_i sums to 0, rank ≤ (3-1)·(7+1).
    if layer == "2":
        assert r[layer].fisher.active == 16


def test_joint_fisher_is_the_fisher_gram_of_all_parameters():
    # K_joint = Σ_ℓ K_ℓ: the Fisher-Gram of the concatenated per-sample gradients of both layers.
    model, (x, y) = _mlp(), _data()
    r = deadspec.read(model, x, targets=y, layers=["0", "1", "2"], joint=True)
    assert r.joint_layers == ("0", "2")  # the Tanh has no Fisher side
    want = _brute_fisher_eigs(model, x, y, ["0", "2"], _ce)
    _assert_eigs_close(r.joint_fisher.eigenvalues, want)
    # neither layer alone has that spectrum
    assert r.joint_fisher.logdet_plus != pytest.approx(r["0"].fisher.logdet_plus)
    recs = r.to_records()
    assert recs[-1]["layer"] == "joint" and recs[-1]["side"] == "fisher"
    assert recs[-1]["logdet_plus"] == pytest.approx(r.joint_fisher.logdet_plus)
    assert deadspec.read(model, x, targets=y, layers=["0"]).joint_fisher is None
    # tied weights: the sum of the per-layer Grams would miss the cross terms
    tied = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 3)).to(DT)
    tied[2].weight = tied[0].weight
    with pytest.raises(ValueError, match="disjoint parameters"):
        deadspec.read(tied, x[:, :3], targets=y, layers=["0", "2"], joint=True)


def test_fisher_regression_default_loss_and_custom_loss_fn():
    model, (x, _) = _mlp(), _data()
    y = torch.randn(40, 3, dtype=DT, generator=torch.Generator().manual_seed(5))
    r = deadspec.read(model, x, targets=y, layers=["0"])

    def gauss(out, t):
        return 0.5 * (t - out).pow(2).sum(-1)

    want = _brute_fisher_eigs(model, x, y, "0", gauss)
    _assert_eigs_close(r["0"].fisher.eigenvalues, want)
    # An explicit loss_fn (reduction="none") is used as given: MSE = 2 × the Gaussian loss.
    def mse(out, t):
        return nn.functional.mse_loss(out, t, reduction="none").sum(-1)

    r2 = deadspec.read(model, x, targets=y, layers=["0"], loss_fn=mse)
    _assert_eigs_close(r2["0"].fisher.eigenvalues, 4 * want)


def test_batch_streaming_equals_one_batch():
    model, (x, y) = _mlp(), _data()
    one = deadspec.read(model, x, targets=y, layers=["0", "1", "2"])
    for bs in (7, 13, 40):
        many = deadspec.read(model, x, targets=y, layers=["0", "1", "2"], batch_size=bs)
        for name in one:
            np.testing.assert_allclose(
                many[name].activation.eigenvalues,
                one[name].activation.eigenvalues,
                rtol=1e-10,
                atol=1e-13,
            )
            assert many[name].activation.active == one[name].activation.active
            if one[name].fisher is not None:
                _assert_eigs_close(
                    many[name].fisher.eigenvalues, one[name].fisher.eigenvalues, 1e-10
                )


def test_sequence_input_linear_per_position():
    torch.manual_seed(7)
    n, t, d_in, d_out = 12, 5, 4, 6
    model = nn.Sequential(nn.Linear(d_in, d_out), nn.Tanh(), nn.Linear(d_out, 2)).to(DT)
    g = torch.Generator().manual_seed(8)
    x = torch.randn(n, t, d_in, generator=g, dtype=DT)
    y = torch.randn(n, t, 2, generator=g, dtype=DT)
    r = deadspec.read(model, x, targets=y, layers=["0"])
    with torch.no_grad():
        z = model[0](x)
    want_act = deadspec.spectrum(deadspec.gram(z.reshape(-1, d_out)))
    np.testing.assert_allclose(
        r["0"].activation.eigenvalues, want_act.eigenvalues, rtol=1e-10, atol=1e-13
    )
    assert r["0"].n_rows == n * t
    # pool="mean": one row per sample.
    rm = deadspec.read(model, x, targets=y, layers=["0"], pool="mean", fisher=False)
    want_mean = deadspec.spectrum(deadspec.gram(z.mean(1)))
    np.testing.assert_allclose(
        rm["0"].activation.eigenvalues, want_mean.eigenvalues, rtol=1e-10, atol=1e-13
    )
    assert rm["0"].n_rows == n
    # Fisher: per-sample loss = Σ_t 0.5||y_t - f_t||², g_i = Σ_t δ_it a_itᵀ.
    want = _brute_fisher_eigs(
        model, x, y, "0", lambda out, yy: 0.5 * (yy - out).pow(2).sum((-1, -2))
    )
    _assert_eigs_close(r["0"].fisher.eigenvalues, want)
    rs = deadspec.read(model, x, targets=y, layers=["0"], batch_size=5)
    _assert_eigs_close(rs["0"].fisher.eigenvalues, want)


def test_sequence_classification_sums_tokens():
    torch.manual_seed(9)
    n, t = 10, 4
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 4)).to(DT)
    g = torch.Generator().manual_seed(10)
    x = torch.randn(n, t, 3, generator=g, dtype=DT)
    y = torch.randint(0, 4, (n, t), generator=g)
    r = deadspec.read(model, x, targets=y, layers=["0", "2"])

    def ce_tokens(out, yy):
        return nn.functional.cross_entropy(
            out.reshape(-1, 4), yy.reshape(-1), reduction="none"
        ).sum()

    for layer in ("0", "2"):
        want = _brute_fisher_eigs(model, x, y, layer, ce_tokens)
        _assert_eigs_close(r[layer].fisher.eigenvalues, want)


@pytest.mark.parametrize("n", [6, 60])  # R < h (rows kept) and R >= h (accumulator)
def test_inplace_op_downstream_does_not_change_reading(n):
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(4, 20), nn.ReLU(inplace=True), nn.Linear(20, 2)).to(DT)
    x = torch.randn(n, 4, generator=torch.Generator().manual_seed(3), dtype=DT)
    y = torch.randn(n, 2, generator=torch.Generator().manual_seed(4), dtype=DT)
    with torch.no_grad():
        z = model[0](x)  # pre-activation, before the in-place ReLU
    want = deadspec.spectrum(deadspec.gram(z))  # "auto": the same min(R, h) side as read
    for fisher in (False, True):
        r = deadspec.read(model, x, targets=y, layers=["0"], fisher=fisher, batch_size=4)
        got = r["0"].activation.eigenvalues
        np.testing.assert_allclose(got, want.eigenvalues, rtol=1e-10, atol=1e-12)
    # The Fisher side sees the gradient w.r.t. the pre-activation (through the ReLU mask).
    want_f = _brute_fisher_eigs(model, x, y, "0", lambda o, t: 0.5 * (t - o).pow(2).sum(-1))
    _assert_eigs_close(r["0"].fisher.eigenvalues, want_f)


# ------------------------------------------------------------------ labels


def test_sampled_labels_reproducible_and_differ_from_observed():
    model, (x, y) = _mlp(), _data()
    obs = deadspec.read(model, x, targets=y, layers=["2"])
    s1 = deadspec.read(model, x, targets=y, layers=["2"], labels="sampled", seed=11)
    s2 = deadspec.read(model, x, targets=y, layers=["2"], labels="sampled", seed=11)
    s3 = deadspec.read(model, x, targets=y, layers=["2"], labels="sampled", seed=12)
    e1, e2, e3 = (s.__getitem__("2").fisher.eigenvalues for s in (s1, s2, s3))
    np.testing.assert_array_equal(e1, e2)
    assert not np.allclose(e1, e3)
    assert not np.allclose(e1, obs["2"].fisher.eigenvalues)
    # Without targets the task comes from loss_fn or task=.
    s4 = deadspec.read(model, x, layers=["2"], labels="sampled", seed=11, task="classification")
    np.testing.assert_array_equal(s4["2"].fisher.eigenvalues, e1)
    s5 = deadspec.read(
        model,
        x,
        layers=["2"],
        labels="sampled",
        seed=11,
        loss_fn=nn.CrossEntropyLoss(reduction="none"),
    )
    np.testing.assert_allclose(s5["2"].fisher.eigenvalues, e1, rtol=1e-12, atol=1e-15)
    with pytest.raises(ValueError, match="task="):
        deadspec.read(model, x, layers=["2"], labels="sampled", seed=11)


def test_sampled_regression_brute_force():
    model, (x, _) = _mlp(), _data()
    yobs = torch.zeros(40, 3, dtype=DT)
    r = deadspec.read(model, x, targets=yobs, layers=["2"], labels="sampled", seed=3)
    with torch.no_grad():
        out = model(x)
    gen = torch.Generator().manual_seed(3)
    ys = out + torch.randn(out.shape, generator=gen, dtype=DT)
    want = _brute_fisher_eigs(model, x, ys, "2", lambda o, t: 0.5 * (t - o).pow(2).sum(-1))
    _assert_eigs_close(r["2"].fisher.eigenvalues, want)


# ------------------------------------------------------------------ state restoration


def _state(model):
    return (
        [m.training for m in model.modules()],
        [
            (p.requires_grad, p.grad, None if p.grad is None else p.grad.clone())
            for p in model.parameters()
        ],
        {k: v.clone() for k, v in model.state_dict().items()},
    )


def _assert_same_state(model, before):
    modes, params, sd = before
    assert [m.training for m in model.modules()] == modes
    for p, (rg, g_obj, g_val) in zip(model.parameters(), params):
        assert p.requires_grad == rg
        assert p.grad is g_obj
        if g_val is not None:
            assert torch.equal(p.grad, g_val)
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k]), k
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks


def test_modes_grads_buffers_restored():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7), nn.Tanh(), nn.Linear(7, 3)).to(DT)
    model.train()
    model[2].eval()  # a mixed mode must survive too
    model[0].weight.grad = torch.full_like(model[0].weight, 0.25)
    model[3].bias.requires_grad_(False)
    x, y = _data()
    before = _state(model)
    r = deadspec.read(model, x, targets=y, batch_size=16)
    assert set(r) == {"0", "3"}
    _assert_same_state(model, before)


def test_state_restored_after_error():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(5, 3)
            self.aux = nn.Linear(5, 2)

        def forward(self, x):
            self.aux(x)  # computed but never used: no gradient reaches it
            return self.fc(x)

    torch.manual_seed(0)
    model = Branchy().to(DT)
    model.eval()
    x, y = _data()
    before = _state(model)
    with pytest.raises(RuntimeError, match="'aux'.*no gradient"):
        deadspec.read(model, x, targets=y)
    _assert_same_state(model, before)
    # Activation side alone is fine for such a layer.
    r = deadspec.read(model, x, fisher=False)
    assert r["aux"].fisher is None and r["aux"].activation.active == 2


def test_frozen_parameters_still_read():
    model, (x, y) = _mlp(), _data()
    for p in model.parameters():
        p.requires_grad_(False)
    r = deadspec.read(model, x, targets=y, layers=["0"])
    want = _brute_fisher_eigs(model, x, y, "0", _ce)
    _assert_eigs_close(r["0"].fisher.eigenvalues, want)
    assert all(not p.requires_grad and p.grad is None for p in model.parameters())


# ------------------------------------------------------------------ errors


def test_unknown_layer_lists_names():
    model, (x, y) = _mlp(), _data()
    with pytest.raises(ValueError, match=r"'nope'.*available names:.*0 \(Linear\).*1 \(Tanh\)"):
        deadspec.read(model, x, targets=y, layers=["nope"])


def test_scalar_loss_rejected():
    model, (x, y) = _mlp(), _data()
    with pytest.raises(ValueError, match='reduction="none"'):
        deadspec.read(model, x, targets=y, loss_fn=nn.CrossEntropyLoss())
    with pytest.raises(ValueError, match=r"shape \(40,\) or element-wise losses"):
        deadspec.read(
            model,
            x,
            targets=nn.functional.one_hot(y, 3).to(DT),
            loss_fn=lambda out, t: nn.functional.mse_loss(out, t, reduction="none").T,
        )


@pytest.mark.parametrize(
    "loss",
    [
        nn.MSELoss(reduction="none"),
        nn.BCEWithLogitsLoss(reduction="none"),
        nn.L1Loss(reduction="none"),
    ],
)
def test_elementwise_losses_are_summed_per_sample(loss):
    # reduction="none" gives (N, outputs) losses: each sample's loss is their sum
    model, (x, y) = _mlp(), _data()
    t = nn.functional.one_hot(y, 3).to(DT)
    got = deadspec.read(model, x, targets=t, loss_fn=loss, layers=["0", "2"])
    want = deadspec.read(
        model, x, targets=t, loss_fn=lambda out, tt: loss(out, tt).sum(-1), layers=["0", "2"]
    )
    for name in ("0", "2"):
        np.testing.assert_array_equal(got[name].fisher.eigenvalues, want[name].fisher.eigenvalues)
    assert got["2"].fisher.active > 0


def test_missing_targets_and_bad_options():
    model, (x, y) = _mlp(), _data()
    with pytest.raises(ValueError, match="needs targets"):
        deadspec.read(model, x)
    with pytest.raises(ValueError, match="labels must be one of"):
        deadspec.read(model, x, targets=y, labels="true")
    with pytest.raises(ValueError, match="pool must be one of"):
        deadspec.read(model, x, fisher=False, pool="max")
    with pytest.raises(ValueError, match="batch_size"):
        deadspec.read(model, x, fisher=False, batch_size=0)
    with pytest.raises(ValueError, match="batch size 40"):
        deadspec.read(model, x, targets=y[:10])


def test_nan_activation_names_layer():
    model, (x, y) = _mlp(), _data()
    with torch.no_grad():
        model[2].weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="layer '2'.*NaN"):
        deadspec.read(model, x, targets=y)
    x2 = x.clone()
    x2[3, 1] = float("inf")
    with pytest.raises(ValueError, match="layer '0'"):
        deadspec.read(_mlp(), x2, fisher=False)


# ------------------------------------------------------------------ Reading object


def test_reading_mapping_records_repr():
    model, (x, y) = _mlp(), _data()
    r = deadspec.read(model, x, targets=y, layers=["0", "1", "2"])
    assert isinstance(r, deadspec.Reading)
    assert list(r) == ["0", "1", "2"] and len(r) == 3 and "1" in r
    assert isinstance(r["0"], deadspec.LayerReading)
    recs = r.to_records()
    assert [(d["layer"], d["side"]) for d in recs] == [
        ("0", "activation"),
        ("0", "fisher"),
        ("1", "activation"),
        ("2", "activation"),
        ("2", "fisher"),
    ]
    keys = {
        "layer",
        "side",
        "n",
        "dim",
        "logdet_plus",
        "active",
        "structural_zeros",
        "dead_count",
        "clipped",
        "lambda_min",
        "effective_rank",
        "participation_ratio",
        "condition_number",
    }
    assert all(set(d) == keys for d in recs)
    assert recs[1]["dim"] == 40 and recs[0]["dim"] == 7 and recs[0]["n"] == 40
    assert recs[0]["structural_zeros"] == recs[0]["dim"] - recs[0]["active"]
    assert all(type(d["active"]) is int and type(d["logdet_plus"]) is float for d in recs)
    text = repr(r)
    lines = text.splitlines()
    assert lines[0].startswith("Reading(n_samples=40")
    assert "logdet+" in lines[1] and len(lines) == 2 + len(recs)
    with pytest.raises(KeyError, match="layers read"):
        r["zzz"]


@pytest.mark.cuda
def test_cuda_model_matches_cpu():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    model, (x, y) = _mlp(), _data()
    cpu = deadspec.read(model, x, targets=y, layers=["0", "2"])
    gpu = deadspec.read(model.cuda(), x.cuda(), targets=y.cuda(), layers=["0", "2"], batch_size=16)
    for name in cpu:
        np.testing.assert_allclose(
            gpu[name].activation.eigenvalues,
            cpu[name].activation.eigenvalues,
            rtol=1e-8,
            atol=1e-12,
        )
        _assert_eigs_close(gpu[name].fisher.eigenvalues, cpu[name].fisher.eigenvalues, 1e-8)
