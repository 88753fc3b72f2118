"""Localised SGLD for the LLC estimate (:mod:`deadspec.llc`): the pure update step, the chain
runner, and the data and loss helpers it needs (theory.md §5)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from deadspec._dist import broadcast_object, gather_objects, rank_and_size
from deadspec._engine.losses import sum_per_sample
from deadspec._usercode import MODEL_FORWARD, user_code
from deadspec._util import progress as progress_bar

__all__ = [
    "Chains",
    "Functional",
    "Settings",
    "check_positive",
    "full_loss",
    "gaussian_scale",
    "sgld_step",
    "summary",
    "to_model",
    "unpack_data",
]


def unpack_data(data: Any, fn: str) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(data, torch.utils.data.TensorDataset):
        tensors = data.tensors
    elif isinstance(data, (tuple, list)):
        tensors = tuple(data)
    else:
        raise TypeError(
            f"deadspec.llc.{fn}: data must be an (inputs, targets) pair of tensors or a "
            f"TensorDataset, got {type(data).__name__}"
        )
    if len(tensors) != 2:
        raise ValueError(
            f"deadspec.llc.{fn}: data must hold exactly (inputs, targets), got {len(tensors)} "
            f"tensors"
        )
    x, y = (_member(t, name, fn) for t, name in zip(tensors, ("inputs", "targets")))
    if x.ndim == 0 or y.ndim == 0 or x.shape[0] != y.shape[0]:
        raise ValueError(
            f"deadspec.llc.{fn}: inputs and targets must share a leading sample axis, got "
            f"{tuple(x.shape)} and {tuple(y.shape)}"
        )
    if x.shape[0] < 2:
        raise ValueError(f"deadspec.llc.{fn}: data must hold at least 2 samples, got {x.shape[0]}")
    return x, y


def _member(value: Any, name: str, fn: str) -> torch.Tensor:
    """One member of ``data`` as a tensor: a tensor, or an array or (nested) sequence of
    numbers; TypeError naming it otherwise (None, a string, ragged lists, objects)."""
    if isinstance(value, torch.Tensor):
        return value
    if value is not None and not isinstance(value, (str, bytes, dict)):
        try:
            return torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError):
            pass
    raise TypeError(
        f"deadspec.llc.{fn}: data's {name} must be a tensor (or an array of numbers), got "
        f"{type(value).__name__}"
    )


def check_positive(fn: str, name: str, value: Any, integer: bool = False) -> Any:
    if isinstance(value, (bool, str, bytes)) or not hasattr(value, "__float__"):
        kind = "a positive integer" if integer else "a positive number"
        raise TypeError(f"deadspec.llc.{fn}: {name} must be {kind}, got {type(value).__name__}")
    if integer:
        if int(value) != value or value < 1:
            raise ValueError(f"deadspec.llc.{fn}: {name} must be a positive integer, got {value!r}")
        return int(value)
    v = float(value)
    if not (v > 0 and math.isfinite(v)):
        raise ValueError(f"deadspec.llc.{fn}: {name} must be positive and finite, got {value!r}")
    return v


def batch_mean_loss(
    loss_fn: Callable, out: torch.Tensor, yb: torch.Tensor, fn: str = "llc.estimate"
) -> torch.Tensor:
    with user_code(fn, "loss_fn(output, targets) on a batch of the data"):
        loss = loss_fn(out, yb)
    if not isinstance(loss, torch.Tensor):
        raise TypeError(f"deadspec.{fn}: loss_fn must return a tensor, got {type(loss).__name__}")
    if loss.ndim == 0:
        return loss
    return sum_per_sample(loss, int(out.shape[0]), fn).mean()


def full_loss(model, loss_fn, x, y, chunk: int) -> tuple[float, int]:
    """Mean loss over all samples (chunked forward passes); returns (loss, n_forwards)."""
    total = 0.0
    count = 0
    n = x.shape[0]
    with torch.no_grad():
        for s in range(0, n, chunk):
            xb, yb = x[s : s + chunk], y[s : s + chunk]
            rows = f"rows {s}:{s + xb.shape[0]} of the data, at w*"
            with user_code("llc.estimate", f"{MODEL_FORWARD} on {rows}"):
                out = model(xb)
            with user_code("llc.estimate", f"loss_fn(output, targets) on {rows}"):
                per = loss_fn(out, yb)
            if not isinstance(per, torch.Tensor):
                raise TypeError(
                    f"deadspec.llc.estimate: loss_fn must return a tensor, got {type(per).__name__}"
                )
            if per.ndim == 0:
                total += float(per) * xb.shape[0]
            else:  # per sample first: element-wise and summed losses give the same number
                total += float(sum_per_sample(per, int(xb.shape[0]), "llc.estimate").sum())
            count += 1
    return total / n, count


def gaussian_scale(model, loss_fn, x, y, chunk: int) -> float | None:
    """κ·σ̂²: output curvature of the per-sample loss times the mean squared residual.

    For a Gaussian NLL with noise σ, κ = 1/σ² per output coordinate; at a minimum σ̂² ≈ σ².
    """
    if not y.is_floating_point():
        return None
    xb, yb = x[:chunk], y[:chunk]
    with torch.no_grad():
        with user_code("llc.estimate", f"{MODEL_FORWARD} for the Gaussian NLL scale check"):
            f = model(xb)
        if not isinstance(f, torch.Tensor) or f.shape != yb.shape:
            return None
        g = torch.Generator(device=f.device).manual_seed(12345)
        v = (torch.randint(0, 2, f.shape, generator=g, device=f.device) * 2 - 1).to(f.dtype)
        h = 1e-2 * float(f.abs().mean().clamp_min(1.0))

        def lsum(out: torch.Tensor) -> float:
            with user_code("llc.estimate", "loss_fn(output, targets) for the NLL scale check"):
                per = loss_fn(out, yb)
            return float(per.sum()) if per.ndim else float(per) * f.shape[0]

        # the loss is quadratic in f for a Gaussian NLL: the central second difference is exact
        second = (lsum(f + h * v) - 2 * lsum(f) + lsum(f - h * v)) / (h * h)
        kappa = second / v.numel()
        resid = float((yb - f).pow(2).mean())
    if not math.isfinite(kappa) or resid == 0.0:
        return None
    return kappa * resid


class Functional:
    """A model as a function of a dict of parameters (torch.func)."""

    def __init__(self, model: nn.Module, loss_fn: Callable, fn: str = "llc.estimate") -> None:
        self.model = model
        self.loss_fn = loss_fn
        self.fn = fn
        self.names = [k for k, p in model.named_parameters() if p.requires_grad]
        if not self.names:
            raise ValueError(f"deadspec.{fn}: the model has no parameter with requires_grad=True")
        all_params = dict(model.named_parameters())
        self.fixed = {k: v.detach() for k, v in all_params.items() if k not in self.names}
        self.fixed.update({k: v.detach() for k, v in model.named_buffers()})
        self.shapes = [all_params[k].shape for k in self.names]
        self.numels = [all_params[k].numel() for k in self.names]
        self.d = int(sum(self.numels))

    def loss(
        self, params: dict[str, torch.Tensor], xb: torch.Tensor, yb: torch.Tensor
    ) -> torch.Tensor:
        with user_code(self.fn, f"{MODEL_FORWARD} (torch.func.functional_call) on a batch"):
            out = torch.func.functional_call(self.model, {**params, **self.fixed}, (xb,))
        return batch_mean_loss(self.loss_fn, out, yb, self.fn)

    def split(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """Split a (..., d) tensor into parameter-shaped pieces (leading axes kept)."""
        lead = flat.shape[:-1]
        parts = torch.split(flat, self.numels, dim=-1)
        return [p.reshape(*lead, *s) for p, s in zip(parts, self.shapes)]


def chain_generators(seed: int | None, chains: int, device: torch.device) -> list[torch.Generator]:
    ss = np.random.SeedSequence(seed)
    gens = []
    for child in ss.spawn(chains):
        g = torch.Generator(device=device)
        g.manual_seed(int(child.generate_state(1, dtype=np.uint64)[0] & 0x7FFF_FFFF_FFFF_FFFF))
        gens.append(g)
    return gens


# ---------------------------------------------------------------------------------------------
# estimate
# ---------------------------------------------------------------------------------------------


def sgld_step(
    w: torch.Tensor,
    grad: torch.Tensor,
    noise: torch.Tensor,
    w_star: torch.Tensor,
    *,
    epsilon: float,
    nbeta: float,
    gamma: float,
) -> torch.Tensor:
    """One localised SGLD update (theory.md §5.2), a pure function of flat parameter vectors:
    ``w − (ε/2)·(nβ·∇L_batch(w) + γ·(w − w*)) + √ε·ξ`` with ``ξ = noise`` ~ N(0, I)."""
    return w - (0.5 * epsilon) * (nbeta * grad + gamma * (w - w_star)) + math.sqrt(epsilon) * noise


@dataclasses.dataclass(frozen=True)
class Settings:
    """The validated settings of one :func:`estimate`."""

    epsilon: float
    gamma: float
    nbeta: float
    n: int
    chains: int
    draws: int
    burnin: int
    batch_size: int  #: samples per step (the number of samples for full batch)
    diverge_threshold: float


class Chains:
    """SGLD chains from w*: their generators, loss trace and divergence flags.

    Chain c draws its noise and minibatches from its own generator; a chain whose loss is
    NaN/Inf or whose per-draw λ estimate nβ(L − L*) exceeds the threshold is stopped.
    """

    def __init__(
        self,
        func: Functional,
        x: torch.Tensor,
        y: torch.Tensor,
        w_star: torch.Tensor,
        init_loss: float,
        cfg: Settings,
        seed: int | None,
        chain_ids: list[int] | None = None,
        total: int | None = None,
    ) -> None:
        self.func, self.x, self.y, self.w_star = func, x, y, w_star
        self.init_loss, self.cfg, self.seed = init_loss, cfg, seed
        # chains spread over ranks: this process runs chains `chain_ids` of `total`, each with
        # the generator it has in a single-process run of `total` chains
        self.chain_ids = chain_ids
        self.total = cfg.chains if total is None else total
        self.n_data = int(x.shape[0])
        self.full_batch = cfg.batch_size == self.n_data
        self.steps = cfg.burnin + cfg.draws
        self.reset()

    def reset(self) -> None:
        cfg = self.cfg
        gens = chain_generators(self.seed, self.total, self.w_star.device)
        self.gens = gens if self.chain_ids is None else [gens[c] for c in self.chain_ids]
        self.trace = np.full((cfg.chains, cfg.draws), np.nan)
        self.diverged = np.zeros(cfg.chains, dtype=bool)
        self.diverged_at = np.full(cfg.chains, -1, dtype=np.int64)

    def batch(self, c: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.full_batch:
            return self.x, self.y
        idx = torch.randperm(self.n_data, generator=self.gens[c], device=self.x.device)
        idx = idx[: self.cfg.batch_size]
        return self.x[idx], self.y[idx]

    def noise(self, c: int) -> torch.Tensor:
        w = self.w_star
        return torch.randn(self.func.d, generator=self.gens[c], device=w.device, dtype=w.dtype)

    def params(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        return dict(zip(self.func.names, self.func.split(flat)))

    def flat(self, pd: dict[str, torch.Tensor], lead: int | None) -> torch.Tensor:
        shape = () if lead is None else (lead,)
        return torch.cat([pd[k].reshape(*shape, -1) for k in self.func.names], -1)

    def update(self, w: torch.Tensor, grad: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        return sgld_step(
            w, grad, noise, self.w_star, epsilon=cfg.epsilon, nbeta=cfg.nbeta, gamma=cfg.gamma
        )

    def record(self, c: int, s: int, loss_val: float) -> bool:
        """Record chain c's loss at step s; False if the chain diverged there."""
        cfg = self.cfg
        bad = not math.isfinite(loss_val)
        bad = bad or cfg.nbeta * (loss_val - self.init_loss) > cfg.diverge_threshold
        if bad:
            self.diverged[c] = True
            self.diverged_at[c] = s
            return False
        if s >= cfg.burnin:
            self.trace[c, s - cfg.burnin] = loss_val
        return True

    def run_vectorized(self, progress: bool | None) -> None:
        """All chains in one ``torch.func.vmap`` of ``grad_and_value``."""
        chains = self.cfg.chains
        gv = torch.func.grad_and_value(self.func.loss)
        in_x = None if self.full_batch else 0
        vg = torch.func.vmap(gv, in_dims=(0, in_x, in_x), randomness="error")
        w = self.w_star.unsqueeze(0).repeat(chains, 1)
        alive = torch.ones(chains, dtype=torch.bool, device=w.device)
        desc = f"llc: {chains} chains (vmap)"
        for s in progress_bar(range(self.steps), progress, desc, self.steps):
            if self.full_batch:
                xb, yb = self.x, self.y
            else:
                pairs = [self.batch(c) for c in range(chains)]
                xb = torch.stack([p[0] for p in pairs])
                yb = torch.stack([p[1] for p in pairs])
            g, lv = vg(self.params(w), xb, yb)
            noise = torch.stack([self.noise(c) for c in range(chains)])
            lv = lv.detach().cpu().numpy()
            for c in range(chains):
                if alive[c] and not self.record(c, s, float(lv[c])):
                    alive[c] = False
            w_new = self.update(w, self.flat(g, chains), noise)
            # a dead chain is parked at w* (its numbers are discarded) so it cannot spread NaN
            w = torch.where(alive.unsqueeze(1), w_new, self.w_star.unsqueeze(0))
            if not bool(alive.any()):
                break

    def run_sequential(self, progress: bool | None) -> None:
        """One chain after the other."""
        gv = torch.func.grad_and_value(self.func.loss)
        chains = self.cfg.chains
        for c in progress_bar(range(chains), progress, "llc: chains", chains):
            w = self.w_star.clone()
            for s in progress_bar(range(self.steps), progress, f"llc: chain {c}", self.steps):
                xb, yb = self.batch(c)
                g, lv = gv(self.params(w), xb, yb)
                noise = self.noise(c)
                if not self.record(c, s, float(lv)):
                    break
                w = self.update(w, self.flat(g, None), noise)

    def run(self, vectorize: bool | str, progress: bool | None, msgs: list[str]) -> bool:
        """Run the chains (vectorised when asked and possible); returns whether vectorised."""
        if vectorize in (True, "auto") and self.cfg.chains > 1:
            try:
                self.run_vectorized(progress)
                return True
            except Exception as exc:
                if vectorize is True:
                    raise
                msgs.append(
                    f"vectorised chains failed ({type(exc).__name__}: {exc}); ran sequentially"
                )
                self.reset()
        self.run_sequential(progress)
        return False



@dataclasses.dataclass
class Spread:
    """The chains of a run spread over the ranks of a process group, gathered in chain order
    (what :func:`summary` and the result read: cfg, trace, divergence, init_loss, steps)."""

    cfg: Settings
    trace: np.ndarray
    diverged: np.ndarray
    diverged_at: np.ndarray
    init_loss: float
    steps: int
    vectorized: bool


def run_spread(
    func: Functional,
    x: torch.Tensor,
    y: torch.Tensor,
    w_star: torch.Tensor,
    init_loss: float,
    cfg: Settings,
    seed: int | None,
    group: Any,
    *,
    vectorize: bool | str,
    progress: bool | None,
    msgs: list[str],
) -> Spread:
    """Chain c on rank c mod size; every rank gets every chain's trace. The ranks must hold the
    same w* and data (checked through the loss at w*, ValueError otherwise); a None seed is
    rank 0's fresh entropy. Chain c draws from the generator it has in one process, so the
    gathered run is the single-process run of the same seed (bitwise run sequentially; a
    vectorised run batches fewer chains per rank, equal to round-off)."""
    fn = "llc.estimate"
    rank, size = rank_and_size(group)
    if seed is None:
        seed = broadcast_object(int(np.random.SeedSequence().entropy), group)
    losses = gather_objects(float(init_loss), group)
    if any(v != losses[0] for v in losses):
        raise ValueError(
            f"deadspec.{fn}: with group= every rank must pass the same model (w*) and data, got "
            f"losses at w* of {losses} across the ranks"
        )
    ids = list(range(rank, cfg.chains, size))
    local = dataclasses.replace(cfg, chains=len(ids))
    run = Chains(func, x, y, w_star, init_loss, local, seed, chain_ids=ids, total=cfg.chains)
    vectorized = run.run(vectorize, progress, msgs) if ids else True
    parts = gather_objects((ids, run.trace, run.diverged, run.diverged_at, vectorized), group)
    trace = np.full((cfg.chains, cfg.draws), np.nan)
    diverged = np.zeros(cfg.chains, dtype=bool)
    diverged_at = np.full(cfg.chains, -1, dtype=np.int64)
    for part_ids, tr, dv, da, _ in parts:
        for k, c in enumerate(part_ids):
            trace[c], diverged[c], diverged_at[c] = tr[k], dv[k], da[k]
    return Spread(cfg, trace, diverged, diverged_at, float(init_loss), run.steps,
                  all(p[4] for p in parts))


def summary(run: Chains | Spread, msgs: list[str]) -> tuple[np.ndarray, float, float, float]:
    """(per-chain λ̂, mean, std, drift) of finished chains; divergence and sign noted in msgs."""
    cfg, trace, diverged = run.cfg, run.trace, run.diverged
    with np.errstate(invalid="ignore"):
        per_chain = cfg.nbeta * (trace.mean(axis=1) - run.init_loss)
    per_chain = np.where(diverged, np.nan, per_chain)
    if diverged.any():
        msgs.append(
            f"{int(diverged.sum())}/{cfg.chains} chains diverged (NaN/Inf loss or nβ(L−L*) > "
            f"{cfg.diverge_threshold:g}) at steps {run.diverged_at[diverged].tolist()}: lower "
            f"epsilon or raise gamma"
        )
        mean = std = float("nan")
    else:
        mean = float(per_chain.mean())
        std = scaled_std(per_chain) if cfg.chains > 1 else 0.0
    if math.isfinite(mean) and mean < 0:
        msgs.append(f"negative LLC estimate {mean:.4g}: w* is not a local minimum of the loss")
    half = cfg.draws // 2
    drift = float("nan")
    if half >= 1 and not diverged.all():
        ok = ~diverged
        m1 = np.nanmean(trace[ok, :half], axis=1)
        m2 = np.nanmean(trace[ok, cfg.draws - half :], axis=1)
        drift = float(cfg.nbeta * np.mean(m2 - m1))
    return per_chain, mean, std, drift



def scaled_std(v: np.ndarray) -> float:
    """The sample standard deviation (ddof=1) of finite values, computed on ``v / max|v|``: finite
    wherever the result is (plain squares of values near 1e154 and above overflow)."""
    scale = float(np.max(np.abs(v))) if v.size else 0.0
    if scale == 0.0 or not math.isfinite(scale):
        return float(np.std(v, ddof=1))
    return float(np.std(v / scale, ddof=1)) * scale


def to_model(
    x: torch.Tensor, y: torch.Tensor, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Data on the model's device; floating data in its dtype."""
    x, y = x.to(device), y.to(device)
    if x.is_floating_point():
        x = x.to(dtype)
    if y.is_floating_point():
        y = y.to(dtype)
    return x, y


# ---------------------------------------------------------------------------------------------
# curvature scale and calibration
# ---------------------------------------------------------------------------------------------
