"""Shared pieces of the DDC reproductions: a generated corpus, a small causal LM, optimizers.

Used by :mod:`deadspec.experiments.overtraining` and :mod:`deadspec.experiments.detection`
(the same training runs; detection attaches a :class:`deadspec.monitor.DeadDirectionMonitor`)
and, for the optimizer factories, by :mod:`deadspec.experiments.grokking`.

Corpus
------
:func:`generate_corpus` writes English-like text from a fixed probabilistic grammar with
agreement (noun class -> verb set, singular/plural determiners), Zipf-weighted word choices and
optional prepositional phrases, with ``random.Random(seed)`` (stable across Python versions), so
it is reproducible, needs no download and ships nothing. Word-level tokens (a ~90-word
vocabulary plus ``.``). The text has irreducible entropy (the grammar's choices), so a model
that memorises a small training set drives its training loss toward 0 while its validation
loss grows: the *over-training collapse* the DDC paper measures as the validation − train gap.

Model
-----
:class:`TinyLM`: token embedding ``embed`` + learned positions ``pos``, ``n_layers``
:class:`deadspec.models_transformer.TransformerBlock` s (pre-LN, causal attention with separate
q/k/v/o projections, ReLU MLP ``fc_in -> act -> fc_out``), final LayerNorm ``ln_f`` and an
unembedding ``unembed`` (no bias). Output: logits ``(N, T, V)``.

Optimizers (:func:`make_optimizer`)
-----------------------------------
- ``"ddc-adam"``: :class:`deadspec.optim.DDCAdam` (gauges discovered; HeadRotations ignored).
- ``"ddc-adam-split"``: the same with ``form="split"`` (theory.md §6's split step).
- ``"adamw"``: ``torch.optim.AdamW``.
- ``"muon"``: ``torch.optim.Muon`` on the 2-D hidden weights (every ``nn.Linear`` weight except
  the output head; embeddings excluded) + ``torch.optim.AdamW`` on the rest (embeddings, head,
  norm gains, biases), stepped together (:class:`MuonAdamW`).
- ``"ddc-muon"``: :class:`deadspec.optim.DDCMuon` (same split, in gauge-fixed coordinates).

``muon_adjust`` picks torch's Muon learning-rate adjustment: ``"match_rms_adamw"`` (used by the
LM experiments, so that one learning-rate grid is shared by Adam- and Muon-type optimizers:
the Muon update is rescaled to AdamW's RMS, 0.2·√max(rows, cols)) or ``"original"`` (Keller
Jordan's ``√max(1, rows/cols)``, what :class:`~deadspec.optim.DDCMuon` applies; used by the
grokking experiment, where the two Muon variants must match).
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from deadspec.models_transformer import TransformerBlock

__all__ = [
    "OPTIMIZERS",
    "MuonAdamW",
    "TinyLM",
    "corpus_vocabulary",
    "generate_corpus",
    "lm_batches",
    "make_optimizer",
]

OPTIMIZERS = ("ddc-adam", "adamw", "muon", "ddc-muon", "ddc-adam-split")

# ---------------------------------------------------------------------------------------------
# Corpus: a probabilistic grammar with agreement
# ---------------------------------------------------------------------------------------------
_NOUNS = {
    # class -> (singular, plural)
    "animal": (
        ["cat", "dog", "bird", "horse", "fox", "mouse", "wolf", "bear"],
        ["cats", "dogs", "birds", "horses", "foxes", "mice", "wolves", "bears"],
    ),
    "person": (
        ["child", "farmer", "teacher", "king", "woman", "man", "sailor", "baker"],
        ["children", "farmers", "teachers", "kings", "women", "men", "sailors", "bakers"],
    ),
    "thing": (
        ["stone", "river", "house", "tree", "boat", "bell", "road", "field"],
        ["stones", "rivers", "houses", "trees", "boats", "bells", "roads", "fields"],
    ),
}
_VERBS = {
    # subject class -> (singular verbs, plural verbs), transitive
    "animal": (["chases", "sees", "finds", "fears"], ["chase", "see", "find", "fear"]),
    "person": (
        ["builds", "sees", "finds", "loves", "sells"],
        ["build", "see", "find", "love", "sell"],
    ),
    "thing": (["hides", "blocks", "holds"], ["hide", "block", "hold"]),
}
_INTRANS = {
    "animal": (["sleeps", "runs", "sings"], ["sleep", "run", "sing"]),
    "person": (["sleeps", "works", "sings", "waits"], ["sleep", "work", "sing", "wait"]),
    "thing": (["falls", "shines", "waits"], ["fall", "shine", "wait"]),
}
_ADJ = ["old", "small", "red", "quiet", "big", "green", "cold", "bright", "dark", "happy"]
_DET_SG = ["the", "a", "this", "every"]
_DET_PL = ["the", "some", "these", "many"]
_PREP = ["near", "under", "behind", "with", "over"]
_ADV = ["slowly", "often", "today", "again"]
_CONJ = ["and", "but"]
_END = "."


def corpus_vocabulary() -> list[str]:
    """The sorted word list of :func:`generate_corpus` (token id = index)."""
    words: set[str] = {_END}
    for sg, pl in _NOUNS.values():
        words.update(sg, pl)
    for table in (_VERBS, _INTRANS):
        for sg, pl in table.values():
            words.update(sg, pl)
    words.update(_ADJ, _DET_SG, _DET_PL, _PREP, _ADV, _CONJ)
    return sorted(words)


def _zipf(rng: random.Random, items: Sequence[str]) -> str:
    weights = [1.0 / (i + 1) for i in range(len(items))]
    return rng.choices(list(items), weights=weights, k=1)[0]


def _np(rng: random.Random, out: list[str], depth: int = 0) -> tuple[str, bool]:
    cls = rng.choice(sorted(_NOUNS))
    plural = rng.random() < 0.35
    out.append(_zipf(rng, _DET_PL if plural else _DET_SG))
    while rng.random() < 0.3:
        out.append(_zipf(rng, _ADJ))
    out.append(_zipf(rng, _NOUNS[cls][1 if plural else 0]))
    if depth == 0 and rng.random() < 0.2:
        out.append(_zipf(rng, _PREP))
        _np(rng, out, depth + 1)
    return cls, plural


def _clause(rng: random.Random, out: list[str]) -> None:
    cls, plural = _np(rng, out)
    if rng.random() < 0.65:
        out.append(_zipf(rng, _VERBS[cls][1 if plural else 0]))
        _np(rng, out, 1)
    else:
        out.append(_zipf(rng, _INTRANS[cls][1 if plural else 0]))
    if rng.random() < 0.25:
        out.append(_zipf(rng, _ADV))


def generate_corpus(n_tokens: int, seed: int = 0) -> list[str]:
    """Deterministic English-like text from the grammar, as a list of word tokens.

    Parameters
    ----------
    n_tokens : int
        Number of tokens (the stream is cut there, mid-sentence if need be).
    seed : int
        Seed of ``random.Random``; different seeds give independent text.

    Returns
    -------
    list of str
        Words from :func:`corpus_vocabulary`.
    """
    if isinstance(n_tokens, bool) or not isinstance(n_tokens, int) or n_tokens < 1:
        raise ValueError(
            f"deadspec.generate_corpus: n_tokens must be a positive integer, got {n_tokens!r}"
        )
    rng = random.Random(int(seed))
    out: list[str] = []
    while len(out) < n_tokens:
        _clause(rng, out)
        if rng.random() < 0.2:
            out.append(rng.choice(_CONJ))
            _clause(rng, out)
        out.append(_END)
    return out[:n_tokens]


def lm_batches(
    n_train: int, n_val: int, ctx: int, *, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Training and validation sequences from independent streams of the grammar.

    Returns
    -------
    x_train, y_train : LongTensor (n_train, ctx)
        Inputs and next-token targets (``y = x`` shifted by one).
    x_val, y_val : LongTensor (n_val, ctx)
    vocab_size : int
    """
    vocab = corpus_vocabulary()
    index = {w: i for i, w in enumerate(vocab)}

    def chunks(n: int, s: int) -> tuple[torch.Tensor, torch.Tensor]:
        words = generate_corpus(n * (ctx + 1), seed=s)
        ids = torch.tensor([index[w] for w in words], dtype=torch.long).reshape(n, ctx + 1)
        return ids[:, :-1].contiguous(), ids[:, 1:].contiguous()

    x_tr, y_tr = chunks(n_train, 2 * seed)
    x_va, y_va = chunks(n_val, 2 * seed + 1)
    return x_tr, y_tr, x_va, y_va, len(vocab)


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

    def monitored_layers(self) -> list[str]:
        """The linear layers the detection experiment reads (q, k, v, o, fc_in, fc_out, head)."""
        names = []
        for i in range(len(self.blocks)):
            names += [f"blocks.{i}.attn.{c}" for c in ("q", "k", "v", "o")]
            names += [f"blocks.{i}.mlp.fc_in", f"blocks.{i}.mlp.fc_out"]
        return names + ["unembed"]


# ---------------------------------------------------------------------------------------------
# Optimizers
# ---------------------------------------------------------------------------------------------
class MuonAdamW:
    """``torch.optim.Muon`` on the hidden matrices + ``torch.optim.AdamW`` on the rest.

    Exposes ``step()``, ``zero_grad()`` and ``param_groups`` (both optimizers' groups), enough
    for the training loops here.
    """

    def __init__(self, muon: torch.optim.Optimizer | None, adamw: torch.optim.Optimizer) -> None:
        self.optimizers = [o for o in (muon, adamw) if o is not None]

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [g for o in self.optimizers for g in o.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for o in self.optimizers:
            o.step()


def hidden_matrices(model: nn.Module, head: str | Iterable[str]) -> list[nn.Parameter]:
    """Weights of every ``nn.Linear`` of ``model`` except the ``head`` module(s)."""
    heads = {head} if isinstance(head, str) else set(head)
    return [
        m.weight
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and name not in heads
    ]


def make_optimizer(
    name: str,
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float,
    head: str = "unembed",
    muon_lr: float | None = None,
    muon_adjust: str = "match_rms_adamw",
    betas: tuple[float, float] = (0.9, 0.98),
    momentum: float = 0.95,
    gauges: list[Any] | None = None,
) -> Any:
    """Build one of :data:`OPTIMIZERS` for ``model``.

    Parameters
    ----------
    name : {"ddc-adam", "adamw", "muon", "ddc-muon", "ddc-adam-split"}
    lr : float
        The AdamW learning rate (and the Muon one unless ``muon_lr`` is given).
    weight_decay : float
        Decoupled weight decay, the same on every path.
    head : str
        Name of the output layer (AdamW path of the Muon variants).
    muon_lr : float, optional
        Learning rate of the Muon path (default ``lr``).
    muon_adjust : {"match_rms_adamw", "original"}
        torch Muon's learning-rate adjustment (see the module docstring). ``"ddc-muon"`` only
        implements ``"original"``; with ``"match_rms_adamw"`` its Muon learning rate is
        converted per parameter (``0.2·√max(A, B) / √max(1, A/B)``) through param groups.
    betas : tuple of float
        Adam betas of the Adam-type paths.
    momentum : float
        Muon momentum.
    gauges : list of deadspec.gauges.Gauge, optional
        Gauges of the DDC optimizers (None: discovered).
    """
    import deadspec.optim as dopt

    if name not in OPTIMIZERS:
        raise ValueError(f"deadspec.make_optimizer: name must be one of {OPTIMIZERS}, got {name!r}")
    if muon_adjust not in ("match_rms_adamw", "original"):
        raise ValueError(
            f"deadspec.make_optimizer: muon_adjust must be 'match_rms_adamw' or 'original', got "
            f"{muon_adjust!r}"
        )
    mlr = lr if muon_lr is None else muon_lr
    if name in ("ddc-adam", "ddc-adam-split"):
        import warnings

        form = "split" if name == "ddc-adam-split" else "coordinate"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "HeadRotation ignored" (an Adam base cannot use it)
            return dopt.DDCAdam(
                model, lr=lr, betas=betas, weight_decay=weight_decay, gauges=gauges, form=form
            )
    if name == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=lr, betas=betas, weight_decay=weight_decay)
    hidden = hidden_matrices(model, head)
    hidden_ids = {id(p) for p in hidden}
    rest = [p for p in model.parameters() if id(p) not in hidden_ids]
    if name == "muon":
        muon = torch.optim.Muon(
            hidden,
            lr=mlr,
            weight_decay=weight_decay,
            momentum=momentum,
            adjust_lr_fn=muon_adjust,
        )
        adamw = torch.optim.AdamW(rest, lr=lr, betas=betas, weight_decay=weight_decay)
        return MuonAdamW(muon, adamw)
    # ddc-muon
    if muon_adjust == "original":
        groups = None
    else:
        groups = [{"params": rest, "use_muon": False, "lr": lr}]
        for p in hidden:
            a, b = p.shape
            ratio = 0.2 * math.sqrt(max(a, b)) / math.sqrt(max(1.0, a / b))
            groups.append({"params": [p], "use_muon": True, "lr": mlr * ratio})
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dopt.DDCMuon(
            model,
            lr=mlr,
            momentum=momentum,
            weight_decay=weight_decay,
            adamw_lr=lr,
            adamw_betas=betas,
            head=head,
            params=groups,
            gauges=gauges,
        )


def lm_gauges(model: TinyLM, *, rotations: bool = False) -> list[Any]:
    """The gauges of a :class:`TinyLM`: the discovered ones plus the head's.

    Discovery cannot trace the root (the attention modules check their input's shape), so it
    misses ``NormScale(ln_f -> unembed)`` and ``LogitShift(unembed)``; they are declared here
    (both verified by ``check()`` in the tests). HeadRotations are kept only with
    ``rotations=True`` (an Adam base cannot use them).
    """
    import warnings

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


LM_SIZES = {
    "quick": LMSizes(8, 16, 8, 16, 2, 1, 40, 5, (3e-3,), (0.1,), 8, 8),
    "default": LMSizes(64, 256, 32, 32, 2, 2, 1500, 25, (1e-3, 3e-3), (0.1, 1.0), 32, 30),
    "full": LMSizes(256, 512, 64, 64, 4, 4, 4000, 50, (3e-4, 1e-3, 3e-3), (0.0, 0.1, 1.0), 64, 40),
}


def lm_sizes(quick: bool, size: str, **overrides: Any) -> LMSizes:
    """The sizes for ``--quick`` / ``--size``, with non-None ``overrides`` applied."""
    if size not in ("default", "full"):
        raise ValueError(f"deadspec.lm_sizes: size must be 'default' or 'full', got {size!r}")
    base = LM_SIZES["quick" if quick else size]
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


def _lm_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    logits = model(x)
    return nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())


def train_lm(
    sizes: LMSizes,
    optimizer: str,
    lr: float,
    weight_decay: float,
    *,
    seed: int = 0,
    monitor: bool = False,
    data: tuple[torch.Tensor, ...] | None = None,
    monitor_options: dict[str, Any] | None = None,
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
    monitor : bool
        Attach a :class:`~deadspec.monitor.DeadDirectionMonitor` to
        :meth:`TinyLM.monitored_layers` (probe: the first ``sizes.probe`` training sequences
        and their targets; ``sizes.readings`` readings evenly spread over the run, the last at
        the final step).
    data : tuple, optional
        ``lm_batches`` output to reuse.
    monitor_options : dict, optional
        Extra keyword arguments of the monitor.

    Returns
    -------
    dict
        ``steps``, ``train_loss``, ``val_loss`` (lists, every ``eval_every`` steps and at the
        end), ``final_train``, ``final_val``, ``gap`` (= final val − final train),
        ``tail_train``, ``tail_val``, ``tail_gap`` (the same over the mean of the last 10 % of
        the evaluations: robust to the loss spikes of long constant-lr runs), ``min_val``,
        ``min_val_step``, ``seconds``, ``monitor`` (or None), ``diverged``.
    """
    import time

    if data is None:
        data = lm_batches(sizes.n_train, sizes.n_val, sizes.ctx, seed=seed)
    x_tr, y_tr, x_va, y_va, vocab = data
    with torch.random.fork_rng():
        torch.manual_seed(1000 + seed)
        model = TinyLM(vocab, sizes.ctx, sizes.d_model, sizes.n_heads, sizes.n_layers)
    gauges = (
        lm_gauges(model, rotations=optimizer == "ddc-muon") if optimizer.startswith("ddc") else None
    )
    opt = make_optimizer(optimizer, model, lr=lr, weight_decay=weight_decay, gauges=gauges)
    mon = None
    every = max(1, sizes.steps // sizes.readings)
    if monitor:
        from deadspec.monitor import DeadDirectionMonitor

        mon = DeadDirectionMonitor(
            model,
            model.monitored_layers(),
            every=every,
            inputs=x_tr[: sizes.probe],
            targets=y_tr[: sizes.probe],
            **(monitor_options or {}),
        )
    steps_rec: list[int] = []
    tr_rec: list[float] = []
    va_rec: list[float] = []
    t0 = time.perf_counter()
    diverged = False

    def evaluate(step: int, train_loss: float) -> None:
        model.eval()
        with torch.no_grad():
            va = float(_lm_loss(model, x_va, y_va))
        model.train()
        steps_rec.append(step)
        tr_rec.append(train_loss)
        va_rec.append(va)

    model.train()
    for step in range(sizes.steps + 1):
        opt.zero_grad(set_to_none=True)
        loss = _lm_loss(model, x_tr, y_tr)
        lval = float(loss.detach())
        if not math.isfinite(lval):
            diverged = True
            evaluate(step, lval)
            break
        if step % sizes.eval_every == 0 or step == sizes.steps:
            evaluate(step, lval)
        if mon is not None and (step % every == 0 or step == sizes.steps):
            mon(step, force=True)
        if step == sizes.steps:
            break
        loss.backward()
        opt.step()
    seconds = time.perf_counter() - t0
    va = np.asarray(va_rec, dtype=np.float64)
    finite = np.isfinite(va)
    i_min = int(np.argmin(np.where(finite, va, np.inf))) if finite.any() else 0
    n_tail = max(1, len(va_rec) // 10)
    tail_tr = float(np.mean(tr_rec[-n_tail:]))
    tail_va = float(np.mean(va_rec[-n_tail:]))
    return {
        "tail_train": tail_tr,
        "tail_val": tail_va,
        "tail_gap": tail_va - tail_tr,
        "steps": steps_rec,
        "train_loss": tr_rec,
        "val_loss": va_rec,
        "final_train": tr_rec[-1],
        "final_val": va_rec[-1],
        "gap": va_rec[-1] - tr_rec[-1],
        "min_val": float(va[i_min]) if finite.any() else float("nan"),
        "min_val_step": steps_rec[i_min],
        "seconds": seconds,
        "monitor": mon,
        "diverged": diverged,
        "n_params": sum(p.numel() for p in model.parameters()),
    }


# ---------------------------------------------------------------------------------------------
# Small utilities shared by the experiments
# ---------------------------------------------------------------------------------------------
def finite_or_nan(v: Any) -> float:
    """``float(v)`` if finite, else NaN."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return float("nan")
    return f if math.isfinite(f) else float("nan")


def fmt(v: Any, spec: str) -> str:
    """Format a number for a table ('-' for None, 'nan' for non-finite)."""
    width = int(spec.split(".")[0] or 0) if spec[:1].isdigit() else 0
    if v is None:
        return "-".rjust(width)
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v).rjust(width)
    return "nan".rjust(width) if not math.isfinite(f) else format(f, spec)


def set_threads(n: int | None) -> Callable[[], None]:
    """Set torch's intra-op threads (None: leave); returns a function that restores them."""
    old = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(int(n))
    return lambda: torch.set_num_threads(old)


def summary_stats(values: Sequence[float]) -> tuple[float, float]:
    """Mean and median of the finite values (NaN, NaN if none)."""
    v = np.asarray([x for x in values if math.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(np.median(v))


def run_grid(
    sizes: LMSizes,
    optimizers: Sequence[str],
    *,
    seed: int = 0,
    monitor: bool = False,
    progress: bool = False,
    desc: str = "over-training",
    monitor_options: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """:func:`train_lm` over ``optimizers × sizes.lrs × sizes.weight_decays`` (one shared corpus).

    Each result dict gets ``optimizer``, ``lr``, ``weight_decay`` and ``seed`` keys.
    """
    from tqdm.auto import tqdm

    bad = [o for o in optimizers if o not in OPTIMIZERS]
    if bad or not optimizers:
        raise ValueError(
            f"deadspec.run_grid: optimizers must be a non-empty subset of {OPTIMIZERS}, got "
            f"{list(optimizers)}"
        )
    data = lm_batches(sizes.n_train, sizes.n_val, sizes.ctx, seed=seed)
    jobs = [(o, lr, wd) for lr in sizes.lrs for wd in sizes.weight_decays for o in optimizers]
    results = []
    bar = tqdm(jobs, desc=desc, unit="run", disable=not progress)
    for o, lr, wd in bar:
        bar.set_postfix_str(f"{o} lr={lr:g} wd={wd:g}")
        res = train_lm(
            sizes, o, lr, wd, seed=seed, monitor=monitor, data=data, monitor_options=monitor_options
        )
        res.update(optimizer=o, lr=lr, weight_decay=wd, seed=seed)
        results.append(res)
    return results


def write_rows(path: Any, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    """Write ``rows`` (dicts) as a CSV with ``columns``."""
    import csv

    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns))
        w.writeheader()
        for row in rows:
            w.writerow({k: row.get(k) for k in columns})
