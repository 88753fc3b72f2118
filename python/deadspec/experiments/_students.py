"""The trained students of the rank-deficit experiment (private): how their spare directions are
removed, found, checked and revived (:mod:`deadspec.experiments.rank_deficit`'s docstring)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from deadspec.experiments import _harness

__all__ = [
    "align_dead_linear",
    "dead_units",
    "revive",
    "train_group_lasso",
    "train_l2",
    "unit_norms",
]


def train_l2(
    model,
    x,
    y,
    *,
    steps: int,
    lr: float,
    weight_decay: float,
    lr_min: float,
    optimizer: str = "adam",
) -> float:
    """Full-batch Adam/AdamW/SGD with weight decay and a cosine schedule; returns the final loss."""
    import torch

    if optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    elif optimizer == "adamw":
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    elif optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=lr, weight_decay=weight_decay, momentum=0.9)
    else:
        raise ValueError(
            f"deadspec.rank_deficit: optimizer must be 'adam', 'adamw' or 'sgd', got {optimizer!r}"
        )
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=lr_min)
    model.train()
    with _harness.threads(1):  # tiny full-batch steps: thread start-up costs more than it saves
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            loss = 0.5 * ((model(x) - y) ** 2).sum(dim=1).mean()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        final = 0.5 * ((model(x) - y) ** 2).sum(dim=1).mean()
    return float(final)


def unit_norms(model):
    """Each hidden unit's group norm ‖(W₁[j, :], b₁[j], W₂[:, j])‖ (first and last Linear)."""
    l0, l2 = model[0], model[-1]
    return (l0.weight.pow(2).sum(1) + l0.bias.pow(2) + l2.weight.pow(2).sum(0)).sqrt()


def train_group_lasso(model, x, y, *, steps: int, training) -> float:
    """Fit ½‖f(x) − y‖² (mean over samples) + λ Σ_j ‖θ_j‖ (θ_j: unit j's incoming weights,
    bias and outgoing weights; λ = ``training.group_lasso``): ``steps`` full-batch Adam steps
    on the penalised loss (cosine schedule), then ``steps`` proximal-gradient steps (gradient
    step of size ``training.prox_lr`` on the data loss, then the group soft-threshold
    θ_j ← max(0, 1 − ηλ/‖θ_j‖)·θ_j), which leave the units the penalty removes at exactly 0.
    Returns the final data loss."""
    import torch

    def data_loss():
        return 0.5 * ((model(x) - y) ** 2).sum(dim=1).mean()

    opt = torch.optim.Adam(model.parameters(), lr=training.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=training.lr_min)
    lam, eta = training.group_lasso, training.prox_lr
    l0, l2 = model[0], model[-1]
    model.train()
    with _harness.threads(1):
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            (data_loss() + lam * unit_norms(model).sum()).backward()
            opt.step()
            sched.step()
        for _ in range(steps):
            model.zero_grad(set_to_none=True)
            data_loss().backward()
            with torch.no_grad():
                for p in model.parameters():
                    p.sub_(eta * p.grad)
                nrm = unit_norms(model)
                keep = torch.clamp(1.0 - eta * lam / nrm.clamp_min(1e-300), min=0.0)
                l0.weight.mul_(keep[:, None])
                l0.bias.mul_(keep)
                l2.weight.mul_(keep[None, :])
    model.zero_grad(set_to_none=True)
    model.eval()
    with torch.no_grad():
        return float(data_loss())


def dead_units(model, x) -> tuple[list[int], float, float]:
    """The dead hidden units of a trained ReLU student, checked one by one: a unit is dead when
    its group norm is exactly 0 or its pre-activation is never positive on ``x`` (no output
    either way). Also returns the dead units' largest group norm and the alive units'
    smallest, each over the alive units' largest (residue and margin)."""
    import torch

    with torch.no_grad():
        nrm = unit_norms(model)
        fires = (model[0](x) > 0).any(dim=0)
    dead = [j for j in range(nrm.numel()) if float(nrm[j]) == 0.0 or not bool(fires[j])]
    alive = [float(nrm[j]) for j in range(nrm.numel()) if j not in dead]
    if not alive:
        return dead, float("nan"), float("nan")
    residue = max((float(nrm[j]) for j in dead), default=0.0) / max(alive)
    return dead, residue, min(alive) / max(alive)


def revive(model, units: Sequence[int], seed: int) -> None:
    """Give each dead unit a direction to approach along: incoming weights a random unit vector
    times the alive units' median incoming norm (bias 0, so it fires on about half the
    inputs), outgoing weights likewise. Scaling these by t then runs a path θ(t) with
    θ(0) the trained checkpoint (its dead units are exactly 0)."""
    import torch

    l0, l2 = model[0], model[-1]
    alive = [j for j in range(l0.out_features) if j not in set(units)]
    g = torch.Generator().manual_seed(30_000 + seed)
    with torch.no_grad():
        a_in = l0.weight[alive].norm(dim=1).median()
        a_out = l2.weight[:, alive].norm(dim=0).median()
        for j in units:
            v = torch.randn(l0.in_features, generator=g, dtype=l0.weight.dtype)
            w = torch.randn(l2.out_features, generator=g, dtype=l2.weight.dtype)
            l0.weight[j] = a_in * v / v.norm()
            l0.bias[j] = 0.0
            l2.weight[:, j] = a_out * w / w.norm()


def align_dead_linear(model, x, gap_ratio: float):
    """Rotate a trained linear student's hidden layer so that its dead cluster lies on the
    first units: W₁ ← RᵀW₁, b₁ ← Rᵀb₁, W₂ ← W₂R with R = [U, U⊥] orthogonal, U the dead-cluster
    eigenvectors of layer 0's activation Gram (below a gap of ``gap_ratio``, with any below the
    active set) and U⊥ the others. A rotation of
    the hidden layer leaves a linear network's function unchanged. Returns ``(dead units
    0 … k−1, residue, margin, reason)``: the dead units' largest group norm over the alive
    units' largest (what the revival replaces), the alive units' smallest over their largest,
    and a reason (else None) when there is no dead cluster."""
    import torch

    import deadspec

    spec = deadspec.read(model, x, layers=["0"], fisher=False, gap_ratio=gap_ratio)["0"].activation
    l0, l2 = model[0], model[-1]
    # dead: the cluster at the bottom of the active set and anything below the active set
    k = l0.out_features - spec.active + spec.dead_count
    if k == 0:
        ev = np.array2string(np.asarray(spec.eigenvalues), precision=2)
        reason = f"no dead cluster at gap_ratio={gap_ratio:g} (eigenvalues {ev})"
        return [], float("nan"), float("nan"), reason
    with torch.no_grad():
        h = l0(x)
        _, vecs = torch.linalg.eigh(h.T @ h)  # ascending eigenvalues
        rot = vecs  # ascending: the k dead directions first, then the others
        l0.weight.copy_(rot.T @ l0.weight)
        l0.bias.copy_(rot.T @ l0.bias)
        l2.weight.copy_(l2.weight @ rot)
        nrm = unit_norms(model)
    top = float(nrm[k:].max())
    return list(range(k)), float(nrm[:k].max()) / top, float(nrm[k:].min()) / top, None
