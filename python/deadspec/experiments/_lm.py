"""The over-training language-model runs shared by the over-training and detection experiments.

The two experiments train the same runs (detection attaches a
:class:`deadspec.monitor.DeadDirectionMonitor`, which leaves the trajectories unchanged) on the
corpora of :mod:`deadspec.experiments._corpus`, with the optimizers of
:mod:`deadspec.experiments._optimizers`.

Model
-----
:class:`TinyLM`: token embedding ``embed`` + learned positions ``pos``, ``n_layers``
:class:`deadspec.models_transformer.TransformerBlock` s (pre-LN, causal attention with separate
q/k/v/o projections, ReLU MLP ``fc_in -> act -> fc_out``), final LayerNorm ``ln_f`` and an
unembedding ``unembed`` (no bias). Output: logits ``(N, T, V)``. :func:`lm_gauges`: its gauges.

Runs
----
:class:`LMSizes` / :func:`lm_sizes` (``--quick`` / ``--size`` presets with overrides) and
:func:`train_lm` (one full-batch run far past fit, optionally monitored).
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from typing import Any

import numpy as np
import torch
from torch import nn

from deadspec.experiments._corpus import lm_batches
from deadspec.experiments._optimizers import make_optimizer
from deadspec.models_transformer import TransformerBlock

__all__ = [
    "COLORS",
    "LMSizes",
    "TinyLM",
    "curve_summary",
    "lm_gauges",
    "lm_loss",
    "lm_sizes",
    "train_lm",
]

#: Plot colour of each optimizer.
COLORS = {"ddc-adam": "C0", "adamw": "C3", "muon": "C2", "ddc-muon": "C1", "ddc-adam-split": "C4"}


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------
class TinyLM(nn.Module):
    """A small causal transformer language model.

    Parameters
    ----------
    vocab_size, ctx : int
        Vocabulary size and context length (learned positions).
    d_model, n_heads, n_layers : int
        Width, heads and number of :class:`~deadspec.models_transformer.TransformerBlock` s.
    d_mlp : int, optional
        MLP width (default ``4·d_model``).
    """

    def __init__(
        self,
        vocab_size: int,
        ctx: int,
        d_model: int = 32,
        n_heads: int = 2,
        n_layers: int = 2,
        d_mlp: int | None = None,
    ) -> None:
        super().__init__()
        self.ctx = int(ctx)
        self.embed = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Embedding(ctx, d_model)
        self.blocks = nn.ModuleList(
            [TransformerBlock(d_model, n_heads, d_mlp, causal=True) for _ in range(n_layers)]
        )
        self.ln_f = nn.LayerNorm(d_model)
        self.unembed = nn.Linear(d_model, vocab_size, bias=False)
        with torch.no_grad():
            self.embed.weight.mul_(1.0 / math.sqrt(d_model))
            self.pos.weight.mul_(1.0 / math.sqrt(d_model))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        n, t = tokens.shape
        pos_ids = torch.arange(t, device=tokens.device).expand(n, t)
        x = self.embed(tokens) + self.pos(pos_ids)
        for block in self.blocks:
            x = block(x)
        return self.unembed(self.ln_f(x))


def lm_gauges(model: TinyLM, *, rotations: bool = False) -> list[Any]:
    """The gauges of a :class:`TinyLM`: the discovered ones plus the head's.

    Discovery cannot trace the root (the attention modules check their input's shape), so it
    misses ``NormScale(ln_f -> unembed)`` and ``LogitShift(unembed)``; they are declared here
    (both verified by ``check()`` in the tests). HeadRotations are kept only with
    ``rotations=True`` (an Adam base cannot use them).
    """
    import deadspec.gauges as G

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        found = list(G.discover(model, chains=False))
    if not rotations:
        found = [g for g in found if not isinstance(g, G.HeadRotation)]
    return found + [G.NormScale("ln_f", "unembed"), G.LogitShift("unembed")]


# ---------------------------------------------------------------------------------------------
# The over-training run (shared by the over-training and detection experiments)
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class LMSizes:
    """Sizes of the over-training language-model runs."""

    n_train: int
    n_val: int
    ctx: int
    d_model: int
    n_heads: int
    n_layers: int
    steps: int
    eval_every: int
    lrs: tuple[float, ...]
    weight_decays: tuple[float, ...]
    probe: int
    readings: int


def lm_sizes(quick: bool, size: str, *, presets: dict[str, LMSizes], **overrides: Any) -> LMSizes:
    """The sizes for ``--quick`` / ``--size`` from ``presets`` (keys ``"quick"``, ``"default"``,
    ``"full"``), with non-None ``overrides`` applied and every field validated."""
    if size not in ("default", "full"):
        raise ValueError(f"deadspec.lm_sizes: size must be 'default' or 'full', got {size!r}")
    base = presets["quick" if quick else size]
    changes = {
        k: (tuple(v) if isinstance(v, (list, tuple)) else v)
        for k, v in overrides.items()
        if v is not None
    }
    out = dataclasses.replace(base, **changes)
    for k in (
        "n_train",
        "n_val",
        "ctx",
        "d_model",
        "n_heads",
        "n_layers",
        "steps",
        "eval_every",
        "probe",
        "readings",
    ):
        v = getattr(out, k)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"deadspec.lm_sizes: {k} must be a positive integer, got {v!r}")
    if not out.lrs or any(not (lr > 0) for lr in out.lrs):
        raise ValueError(f"deadspec.lm_sizes: lrs must be positive floats, got {list(out.lrs)}")
    if not out.weight_decays or any(not (w >= 0) for w in out.weight_decays):
        raise ValueError(
            f"deadspec.lm_sizes: weight_decays must be non-negative floats, got "
            f"{list(out.weight_decays)}"
        )
    return out


def lm_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of ``model`` on ``x`` against ``y`` (N × T each)."""
    logits = model(x)
    return nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())


def _setup(
    sizes: LMSizes,
    optimizer: str,
    lr: float,
    weight_decay: float,
    *,
    seed: int,
    vocab: int,
    probe: tuple[torch.Tensor, torch.Tensor] | None,
    monitor: dict[str, Any] | None,
) -> tuple[TinyLM, Any, Any, int]:
    """The model (seeded), its optimizer, the monitor (or None) and the monitor's period."""
    with torch.random.fork_rng():
        torch.manual_seed(1000 + seed)
        model = TinyLM(vocab, sizes.ctx, sizes.d_model, sizes.n_heads, sizes.n_layers)
    gauges = (
        lm_gauges(model, rotations=optimizer == "ddc-muon") if optimizer.startswith("ddc") else None
    )
    opt = make_optimizer(optimizer, model, lr=lr, weight_decay=weight_decay, gauges=gauges)
    every = max(1, sizes.steps // sizes.readings)
    mon = None
    if monitor is not None:
        from deadspec.monitor import DeadDirectionMonitor

        mon = DeadDirectionMonitor(model, every=every, inputs=probe[0], targets=probe[1], **monitor)
    return model, opt, mon, every


def _fit(
    model: TinyLM,
    opt: Any,
    mon: Any,
    every: int,
    sizes: LMSizes,
    data: tuple[torch.Tensor, ...],
    on_eval: Any = None,
    on_read: Any = None,
) -> tuple[list[int], list[float], list[float], bool]:
    """Full-batch training for ``sizes.steps`` steps; returns the evaluation steps, the train and
    validation losses there, and whether the loss diverged (the run stops at once then).
    ``on_eval(step, model)`` is called at every evaluation (model in eval mode, no grad);
    ``on_read(step, model)`` after every monitor reading (the same)."""
    x_tr, y_tr, x_va, y_va = data[:4]
    steps_rec: list[int] = []
    tr_rec: list[float] = []
    va_rec: list[float] = []

    def evaluate(step: int, train_loss: float) -> None:
        model.eval()
        with torch.no_grad():
            va = float(lm_loss(model, x_va, y_va))
            if on_eval is not None:
                on_eval(step, model)
        model.train()
        steps_rec.append(step)
        tr_rec.append(train_loss)
        va_rec.append(va)

    model.train()
    for step in range(sizes.steps + 1):
        opt.zero_grad(set_to_none=True)
        loss = lm_loss(model, x_tr, y_tr)
        lval = float(loss.detach())
        if not math.isfinite(lval):
            evaluate(step, lval)
            return steps_rec, tr_rec, va_rec, True
        if step % sizes.eval_every == 0 or step == sizes.steps:
            evaluate(step, lval)
        if mon is not None and (step % every == 0 or step == sizes.steps):
            mon(step, force=True)
            if on_read is not None:
                model.eval()
                with torch.no_grad():
                    on_read(step, model)
                model.train()
        if step == sizes.steps:
            break
        loss.backward()
        opt.step()
    return steps_rec, tr_rec, va_rec, False


def curve_summary(steps: list[int], train: list[float], val: list[float]) -> dict[str, Any]:
    """Final, tail (mean of the last 10 % of the evaluations) and minimum validation losses."""
    va = np.asarray(val, dtype=np.float64)
    finite = np.isfinite(va)
    i_min = int(np.argmin(np.where(finite, va, np.inf))) if finite.any() else 0
    n_tail = max(1, len(val) // 10)
    tail_tr = float(np.mean(train[-n_tail:]))
    tail_va = float(np.mean(val[-n_tail:]))
    return {
        "tail_train": tail_tr,
        "tail_val": tail_va,
        "tail_gap": tail_va - tail_tr,
        "steps": steps,
        "train_loss": train,
        "val_loss": val,
        "final_train": train[-1],
        "final_val": val[-1],
        "gap": val[-1] - train[-1],
        "min_val": float(va[i_min]) if finite.any() else float("nan"),
        "min_val_step": steps[i_min],
    }


def train_lm(
    sizes: LMSizes,
    optimizer: str,
    lr: float,
    weight_decay: float,
    *,
    seed: int = 0,
    data: tuple[torch.Tensor, ...] | None = None,
    monitor: dict[str, Any] | None = None,
    on_eval: Any = None,
    on_read: Any = None,
) -> dict[str, Any]:
    """One over-training run: full-batch training of a :class:`TinyLM` far past fit.

    Parameters
    ----------
    sizes : LMSizes
    optimizer : one of OPTIMIZERS
        (``"ddc-muon"`` also works; Muon variants use ``muon_adjust="match_rms_adamw"`` so the
        learning-rate grid is shared.)
    lr, weight_decay : float
    seed : int
        Seed of the model initialisation (and of the corpus streams).
    data : tuple, optional
        ``lm_batches`` output to reuse.
    monitor : dict, optional
        Attach a :class:`~deadspec.monitor.DeadDirectionMonitor` with these keyword arguments
        (``layers`` among them; probe: the first ``sizes.probe`` training sequences and their
        targets; ``sizes.readings`` readings evenly spread over the run, the last at the final
        step).
    on_eval : callable, optional
        ``on_eval(step, model)`` at every evaluation (in eval mode, under ``torch.no_grad``).
    on_read : callable, optional
        ``on_read(step, model)`` after every monitor reading (the same).

    Returns
    -------
    dict
        ``steps``, ``train_loss``, ``val_loss`` (lists, every ``eval_every`` steps and at the
        end), ``final_train``, ``final_val``, ``gap`` (= final val − final train),
        ``tail_train``, ``tail_val``, ``tail_gap`` (the same over the mean of the last 10 % of
        the evaluations: robust to the loss spikes of long constant-lr runs), ``min_val``,
        ``min_val_step``, ``seconds``, ``monitor`` (or None), ``diverged``, ``n_params``.
    """
    if data is None:
        data = lm_batches(sizes.n_train, sizes.n_val, sizes.ctx, seed=seed)
    x_tr, y_tr = data[0], data[1]
    probe = (x_tr[: sizes.probe], y_tr[: sizes.probe])
    model, opt, mon, every = _setup(
        sizes, optimizer, lr, weight_decay, seed=seed, vocab=data[4], probe=probe, monitor=monitor
    )
    t0 = time.perf_counter()
    steps, train, val, diverged = _fit(model, opt, mon, every, sizes, data, on_eval, on_read)
    seconds = time.perf_counter() - t0
    return {
        **curve_summary(steps, train, val),
        "seconds": seconds,
        "monitor": mon,
        "diverged": diverged,
        "n_params": sum(p.numel() for p in model.parameters()),
    }
