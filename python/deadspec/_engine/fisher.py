"""The Fisher side of a reading: per-sample-gradient Fisher-Grams from captured (a, δ).

``K_ij = ⟨g_i, g_j⟩/N`` is formed by :func:`deadspec.fisher_gram` from a layer's inputs a and
output gradients δ (theory.md §2), never from materialised per-sample gradients of the whole
layer; ``nn.Embedding`` tables by :func:`embedding_fisher_gram`. An exact shift gauge
(Σ_k δ_k = 0, the cross-entropy logit shift) is detected and projected out of δ.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from deadspec._engine.capture import Capture, LayerState
from deadspec._engine.results import GaugeZero
from deadspec.ops import fisher_gram, fisher_route

__all__ = ["FisherMatrix", "embedding_fisher_gram", "fisher_matrix", "shift_gauge"]


@dataclasses.dataclass(frozen=True)
class FisherMatrix:
    """A layer's Fisher-Gram and how it was formed."""

    k: torch.Tensor  #: the N×N Fisher-Gram
    route: str  #: "block-sum" | "materialize" | "embedding"
    d_in: int
    d_out: int
    dtype: torch.dtype  #: dtype of the captured inputs (sets the default rtol)
    gauges: tuple[GaugeZero, ...] = ()


def shift_gauge(cap: Capture, grads: torch.Tensor, d_in: int) -> GaugeZero | None:
    """Detect Σ_k δ_k = 0 (cross-entropy logit shift) on a layer's output gradients."""
    d_out = grads.shape[-1]
    if d_out < 2 or not grads.is_floating_point():
        return None
    scale = float(grads.abs().max())
    if scale == 0.0:
        return None
    eps = float(torch.finfo(grads.dtype).eps)
    resid = float(grads.sum(-1).abs().max()) / scale
    if resid > 100.0 * eps * math.sqrt(d_out):
        return None
    kind = "logit-shift" if d_out == cap.out_dim else "mean-shift"
    vec = np.full((d_out, 1), 1.0 / math.sqrt(d_out))
    return GaugeZero(kind, "fisher", d_in + (1 if cap.has_bias else 0), resid, vec)


def embedding_fisher_gram(
    tokens: torch.Tensor, grads: torch.Tensor, padding_idx: int | None, chunk: int = 1024
) -> torch.Tensor:
    """Fisher-Gram of an nn.Embedding: g_i = Σ_t e_{x_it} δ_itᵀ, rows summed per token.

    K_ij = Σ_u G_i[u]·G_j[u] / N with G_i[u] = Σ_{t: x_it = u} δ_it. Rows (sample, token) are
    sorted by token; each chunk of rows is compared only with the rows of the same tokens, so
    the cost is about Σ_u |samples holding u|² · d, never N·V·d.
    """
    n = tokens.shape[0]
    tok = tokens.reshape(n, -1).long()
    t = tok.shape[1]
    g = grads.reshape(n, t, -1).double()
    d = g.shape[-1]
    samp = torch.arange(n).repeat_interleave(t)
    tok_f, g_f = tok.reshape(-1), g.reshape(-1, d)
    if padding_idx is not None:
        keep = tok_f != padding_idx
        tok_f, g_f, samp = tok_f[keep], g_f[keep], samp[keep]
    k = torch.zeros(n, n, dtype=torch.float64)
    if tok_f.numel() == 0:
        return k
    key = tok_f * n + samp
    uniq, inv = torch.unique(key, sorted=True, return_inverse=True)
    rows = torch.zeros(uniq.numel(), d, dtype=torch.float64).index_add_(0, inv, g_f)
    r_tok, r_samp = uniq // n, uniq % n
    _, counts = torch.unique_consecutive(r_tok, return_counts=True)
    ends = counts.cumsum(0)
    starts = ends - counts
    gid = torch.repeat_interleave(torch.arange(counts.numel()), counts)
    r = uniq.numel()
    for r0 in range(0, r, chunk):
        r1 = min(r0 + chunk, r)
        lo, hi = int(starts[gid[r0]]), int(ends[gid[r1 - 1]])
        s = rows[r0:r1] @ rows[lo:hi].T
        s = s * (r_tok[r0:r1, None] == r_tok[None, lo:hi])
        part = torch.zeros(r1 - r0, n, dtype=torch.float64).index_add_(1, r_samp[lo:hi], s)
        k.index_add_(0, r_samp[r0:r1], part)
    k /= n
    return 0.5 * (k + k.T)


def _capture_shift(cap: Capture) -> GaugeZero | None:
    """The shift gauge of a capture, detected once; when found, δ ← δ − mean_k δ_k (an exact
    exclusion of the shift, a round-off change of δ) for every reading of that capture."""
    if not cap.shift_checked:
        acts, grads = cap.concatenated()
        cap.shift_checked = True
        cap.shift = shift_gauge(cap, grads, int(acts.shape[-1]))
        if cap.shift is not None:
            cap.set_concatenated(acts, grads - grads.mean(-1, keepdim=True))
    return cap.shift


def fisher_matrix(st: LayerState, route: str, gauges: bool) -> FisherMatrix:
    """The Fisher-Gram of one reading (a whole layer, or a head's block of it)."""
    cap = st.capture
    if cap.kind == "embedding":
        acts, grads = cap.concatenated()
        k = embedding_fisher_gram(acts, grads, cap.module.padding_idx)
        d_out = int(grads.shape[-1])
        return FisherMatrix(k, "embedding", int(cap.module.num_embeddings), d_out, grads.dtype)
    found: tuple[GaugeZero, ...] = ()
    if st.view is None and gauges:
        shift = _capture_shift(cap)
        found = () if shift is None else (shift,)
    acts, grads = cap.concatenated()
    bias = cap.has_bias
    v = st.view
    if v is not None and v.axis == "out":
        grads = grads[..., v.start : v.stop]
    elif v is not None:
        acts = acts[..., v.start : v.stop]
        bias = False
    d_in, d_out = int(acts.shape[-1]), int(grads.shape[-1])
    k = fisher_gram(acts, grads, bias=bias, route=route)
    taken = "block-sum"
    if acts.ndim == 3 and acts.shape[1] > 1:
        n, t = int(acts.shape[0]), int(acts.shape[1])
        taken = fisher_route(n, t, d_in, d_out) if route == "auto" else route
    return FisherMatrix(k, taken, d_in, d_out, acts.dtype, found)
