"""The corpora of the DDC language-model experiments (over-training, detection).

Two settings, neither downloaded nor shipped:

- ``"stdlib"``: real text, byte-level: the Python standard library's own source files and
  docstrings (:func:`stdlib_text`, :func:`stdlib_batches`), which every Python installation
  carries. The files differ a little between Python versions, so a run records its version
  and a digest of the sequences it drew.
- ``"grammar"``: the generated English-like text below.


:func:`generate_corpus` writes English-like text from a fixed probabilistic grammar with
agreement (noun class -> verb set, singular/plural determiners), Zipf-weighted word choices and
optional prepositional phrases, with ``random.Random(seed)`` (stable across Python versions), so
it is reproducible, needs no download and ships nothing. Word-level tokens (a ~90-word
vocabulary plus ``.``). The text has irreducible entropy (the grammar's choices), so a model
that memorises a small training set drives its training loss toward 0 while its validation
loss grows: the *over-training collapse* the DDC paper measures as the validation − train gap.
:func:`lm_batches` cuts independent streams of it into training and validation sequences.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch

__all__ = ["corpus_vocabulary", "generate_corpus", "lm_batches", "stdlib_batches", "stdlib_text"]

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


#: Byte vocabulary of the stdlib corpus: ASCII; every byte ≥ 127 maps to 127 (DEL, unused in
#: source), so non-ASCII text in docstrings stays one token per byte.
STDLIB_VOCAB = 128


def stdlib_text() -> bytes:
    """The top-level ``*.py`` files of the running Python's standard library, sorted by name and
    concatenated (a few MB). Raises ``RuntimeError`` when the folder holds none (a Python built
    without its sources)."""
    import sysconfig
    from pathlib import Path

    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(root.glob("*.py"))
    if not files:
        raise RuntimeError(
            f"deadspec.stdlib_text: no *.py files in the standard library folder {root}; use "
            f"the grammar corpus (--corpus grammar)"
        )
    return b"".join(f.read_bytes() for f in files)


def stdlib_batches(
    n_train: int, n_val: int, ctx: int, *, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Training and validation sequences of ``ctx + 1`` bytes from :func:`stdlib_text`.

    The text is cut into consecutive windows of ``ctx + 1`` bytes; a permutation seeded by
    ``seed`` picks ``n_train`` of them for training and the next ``n_val`` for validation, so
    both are drawn from the whole library, never overlapping. Same return value as
    :func:`lm_batches` (vocabulary :data:`STDLIB_VOCAB`).
    """
    data = torch.frombuffer(bytearray(stdlib_text()), dtype=torch.uint8).long().clamp_(max=127)
    n_windows = data.numel() // (ctx + 1)
    if n_train + n_val > n_windows:
        raise ValueError(
            f"deadspec.stdlib_batches: n_train + n_val = {n_train + n_val} windows of {ctx + 1} "
            f"bytes exceed the {n_windows} the standard library holds"
        )
    windows = data[: n_windows * (ctx + 1)].reshape(n_windows, ctx + 1)
    perm = torch.randperm(n_windows, generator=torch.Generator().manual_seed(int(seed)))
    tr, va = windows[perm[:n_train]], windows[perm[n_train : n_train + n_val]]
    return (
        tr[:, :-1].contiguous(),
        tr[:, 1:].contiguous(),
        va[:, :-1].contiguous(),
        va[:, 1:].contiguous(),
        STDLIB_VOCAB,
    )
