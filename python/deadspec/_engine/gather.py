"""A reading over a process group (``read(..., group=)``): each rank collects its own shard
of the batch, then the collected states are combined into those of the concatenated batch
(ranks in order) and read on rank 0, the reading broadcast.

What travels, per layer (``torch.distributed`` object collectives):

- activation side, rows kept (``route="sample"``): the rows; a running Gram
  (``route="feature"``): its count, mean and uncentred Gram (h² floats, whatever N);
- Fisher side: the per-sample factors (layer inputs a and output gradients δ), never
  per-sample gradients: N·(d_in + d_out) floats per layer instead of N·d_in·d_out.

The route of each layer is decided with the total N, as one process reading the whole batch
would. Rows and factors are concatenated in rank order, so those readings are the single-process
ones; merged running Grams equal them to round-off.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from deadspec._dist import agreed, gather_objects, rank_and_size
from deadspec._engine.collect import Collected, CollectOptions, collect
from deadspec._engine.inputs import as_input_tuple

__all__ = ["MergedGram", "collect_over_group", "gather_collected", "payload_bytes"]


class MergedGram:
    """The feature-side Gram of several ranks' running accumulators (the methods the readout
    uses of a :class:`~deadspec.GramAccumulator`)."""

    def __init__(self, parts: list[tuple[int, np.ndarray, np.ndarray]]) -> None:
        counts = np.array([c for c, _, _ in parts], dtype=np.float64)
        self._count = int(counts.sum())
        w = counts / max(self._count, 1)
        self._mean = sum(wi * m for wi, (_, m, _) in zip(w, parts))
        self._raw = sum(wi * g for wi, (_, _, g) in zip(w, parts))  # Σ xxᵀ / N
        self.features = int(self._raw.shape[0])

    def gram(self, *, center: bool = False) -> np.ndarray:
        if not center:
            return self._raw.copy()
        return self._raw - np.outer(self._mean, self._mean)

    @property
    def count(self) -> int:
        return self._count

    @property
    def mean(self) -> np.ndarray:
        return self._mean.copy()


def _local(collected: Collected) -> list[dict[str, Any]]:
    """Each state's payload: its activation part and its capture's Fisher factors."""
    out = []
    seen: set[int] = set()
    for st in collected.states:
        d: dict[str, Any] = {"route": st.route}
        if st.route == "feature" and st.acc is not None:
            d["gram"] = (st.acc.count, np.asarray(st.acc.mean), st.acc.gram(center=False))
        else:
            d["rows"] = torch.cat(st.rows, 0) if st.rows else None
        cap = st.capture
        if st.fisher and cap is not None and id(cap) not in seen:
            seen.add(id(cap))
            a, g = cap.concatenated() if cap.has_factors() else (None, None)
            d["fisher"] = (a, g)
        out.append(d)
    return out


def payload_bytes(payload: list[dict[str, Any]]) -> int:
    """Bytes of the tensors and arrays in one rank's payload."""
    total = 0
    for d in payload:
        for v in (d.get("rows"), *(d.get("fisher") or ()), *(d.get("gram") or ())[1:]):
            if isinstance(v, torch.Tensor):
                total += v.numel() * v.element_size()
            elif isinstance(v, np.ndarray):
                total += v.nbytes
    return total


def gather_collected(collected: Collected, group: Any, n_total: int) -> tuple[Collected, int]:
    """The collected states of the concatenated batch, on rank 0 (other ranks get theirs back
    unchanged, not to be read), and the bytes every rank sent."""
    rank, _ = rank_and_size(group)
    mine = _local(collected)
    parts = gather_objects(mine, group)  # (an all-gather: simple, and every rank can check)
    sent = sum(payload_bytes(p) for p in parts)
    if rank != 0:
        return collected, sent
    seen: set[int] = set()
    for k, st in enumerate(collected.states):
        pieces = [p[k] for p in parts]
        if any(d["route"] == "feature" for d in pieces):
            grams = []
            for d in pieces:
                if "gram" in d:
                    grams.append(d["gram"])
                elif d.get("rows") is not None:
                    x = d["rows"].to(torch.float64).numpy()
                    grams.append((x.shape[0], x.mean(0), x.T @ x / max(x.shape[0], 1)))
            st.acc = MergedGram(grams)  # type: ignore[assignment]
            st.route = "feature"
        else:
            rows = [d["rows"] for d in pieces if d.get("rows") is not None]
            st.rows = [torch.cat(rows, 0)] if rows else []
        st.n_rows = sum(int(d["gram"][0]) if "gram" in d else
                        (0 if d.get("rows") is None else int(d["rows"].shape[0])) for d in pieces)
        cap = st.capture
        if st.fisher and cap is not None and id(cap) not in seen:
            seen.add(id(cap))
            fs = [d["fisher"] for d in pieces if "fisher" in d and d["fisher"][0] is not None]
            if fs:
                cap.set_concatenated(torch.cat([a for a, _ in fs], 0),
                                     torch.cat([g for _, g in fs], 0))
    return Collected(collected.states, n_total), sent



def collect_over_group(
    model: nn.Module,
    inputs: Any,
    layers: str | Sequence[str] | None,
    options: CollectOptions,
    group: Any,
) -> tuple[Collected | None, int]:
    """Every rank of ``group`` collects its shard, each layer's route decided with the total N;
    returns the collected states of the concatenated batch on rank 0 (None on the others) and
    the bytes the ranks sent. A collective: an error on any rank (its inputs, its forward pass)
    raises on every rank, none is left waiting."""
    with agreed(options.fn, group):
        _, n_local = as_input_tuple(inputs, options.fn)
    n_total = sum(gather_objects(int(n_local), group))
    options = dataclasses.replace(options, n_total=n_total)
    with agreed(options.fn, group):
        mine = collect(model, inputs, layers, options)
    collected, sent = gather_collected(mine, group, n_total)
    return (collected if rank_and_size(group)[0] == 0 else None), sent
