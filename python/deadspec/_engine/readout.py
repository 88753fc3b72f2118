"""From collected states to a :class:`~deadspec.reading.Reading`: the spectra of each side."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch

from deadspec._engine.capture import LayerState
from deadspec._engine.collect import POOLS, Collected, CollectOptions
from deadspec._engine.fisher import fisher_matrix
from deadspec._engine.inputs import dtype_name
from deadspec._engine.losses import LABELS, TASKS
from deadspec._engine.results import GaugeZero, LayerReading, Reading
from deadspec._util import check_bool, check_choice, check_real, check_seed
from deadspec.ops import Spectrum, spectrum

__all__ = ["ROUTES", "ReadOptions", "activation_spectrum", "read_states", "reading_options"]

ROUTES = ("auto", "block-sum", "materialize")


@dataclasses.dataclass(frozen=True)
class ReadOptions:
    """How collected states are read (the spectral options of :func:`deadspec.read`)."""

    center: bool = False
    rtol: float | None = None
    gap_ratio: float = 1e3
    route: str = "auto"  #: the Fisher side's sequence route
    gauges: bool = True
    joint: bool = False
    labels: str = "observed"
    pool: str = "none"


def reading_options(
    *,
    targets: torch.Tensor | None,
    loss_fn: Callable | None,
    fisher: bool,
    labels: str,
    batch_size: int | None,
    center: bool,
    pool: str,
    rtol: float | None,
    gap_ratio: float,
    seed: int | None,
    progress: bool | None,
    task: str | None,
    heads: bool,
    gauges: bool,
    route: str,
    joint: bool,
    fn: str = "read",
) -> tuple[CollectOptions, ReadOptions]:
    """:func:`deadspec.read`'s keywords (all of them; its signature holds the defaults) split
    into what is collected and how it is read; the types and choices checked (errors name
    ``deadspec.<fn>`` and the argument)."""
    check_choice(fn, "route", route, ROUTES)
    check_choice(fn, "labels", labels, LABELS)
    check_choice(fn, "pool", pool, POOLS)
    if task is not None:
        check_choice(fn, "task", task, TASKS)
    fisher, center, heads, gauges, joint = (
        check_bool(fn, name, value)
        for name, value in (
            ("fisher", fisher),
            ("center", center),
            ("heads", heads),
            ("gauges", gauges),
            ("joint", joint),
        )
    )
    if progress is not None:
        progress = check_bool(fn, "progress", progress)
    rtol = check_real(fn, "rtol", rtol, optional=True)
    if rtol is not None and not 0.0 <= rtol < 1.0:
        raise ValueError(f"deadspec.{fn}: rtol must be in [0, 1) or None, got {rtol!r}")
    gap_ratio = check_real(fn, "gap_ratio", gap_ratio)
    if not gap_ratio > 1.0:
        raise ValueError(f"deadspec.{fn}: gap_ratio must be > 1, got {gap_ratio!r}")
    seed = check_seed(fn, seed)
    collect_opts = CollectOptions(
        targets=targets,
        loss_fn=loss_fn,
        fisher=fisher,
        labels=labels,
        task=task,
        batch_size=batch_size,
        pool=pool,
        seed=seed,
        progress=progress,
        heads=heads,
        gauges=gauges,
        fn=fn,
    )
    read_opts = ReadOptions(
        center=center,
        rtol=rtol,
        gap_ratio=gap_ratio,
        route=route,
        gauges=gauges,
        joint=joint,
        labels=labels,
        pool=pool,
    )
    return collect_opts, read_opts


def activation_spectrum(
    st: LayerState, center: bool, rtol: float | None, gap_ratio: float, vectors: bool = False
) -> Spectrum:
    """Spectrum of a state's activation Gram (rtol size ``max(R, h)``)."""
    g = st.activation_gram(center)
    return spectrum(
        g,
        rtol=rtol,
        gap_ratio=gap_ratio,
        vectors=vectors,
        input_dtype=dtype_name(st.act_dtype),
        rtol_size=max(st.n_rows, st.width),
    )


class _Joint:
    """The joint Fisher-Gram Σ_ℓ K_ℓ of the layers read (``joint=True``)."""

    def __init__(self) -> None:
        self.k: torch.Tensor | None = None
        self.layers: list[str] = []
        self.size = 0
        self.dtype: torch.dtype | None = None
        self.owner: dict[tuple[int, Any], str] = {}

    def add(self, st: LayerState, k: Any, d_in: int, d_out: int, dtype: torch.dtype) -> None:
        # Σ K_ℓ is the Fisher-Gram of the concatenated parameters only when the blocks are
        # disjoint: tied weights would need the cross terms.
        cap = st.capture
        w = getattr(cap.module, "weight", None)
        owner = (id(w) if isinstance(w, torch.Tensor) else id(cap.module), cap.proj)
        if owner in self.owner:
            raise ValueError(
                f"deadspec.read: joint=True needs layers with disjoint parameters, got "
                f"{self.owner[owner]!r} and {st.name!r} sharing a weight (tied weights); read "
                f"them without joint=True or leave one out"
            )
        self.owner[owner] = st.name
        kd = torch.as_tensor(k).to(torch.float64)
        self.k = kd.clone() if self.k is None else self.k + kd
        self.layers.append(st.name)
        self.size += d_in + d_out
        self.dtype = dtype if self.dtype is None else self.dtype

    def spectrum(self, n: int, opts: ReadOptions) -> Spectrum | None:
        if self.k is None:
            return None
        return spectrum(
            self.k,
            rtol=opts.rtol,
            gap_ratio=opts.gap_ratio,
            input_dtype=dtype_name(self.dtype),
            rtol_size=max(n, self.size),
        )


def _layernorm_zero(st: LayerState) -> GaugeZero:
    basis = st.gauge_basis
    residual = st.gauge_residual()
    return GaugeZero("layernorm-kernel", "activation", int(basis.shape[1]), residual, basis)


def read_states(collected: Collected, opts: ReadOptions) -> Reading:
    """The :class:`Reading` of collected states: per layer the activation spectrum and, where
    captured, the Fisher spectrum; a capture's (a, δ) are released after its last reading."""
    n = collected.n
    remaining: dict[int, int] = {}
    for st in collected.states:
        if st.fisher:
            remaining[id(st.capture)] = remaining.get(id(st.capture), 0) + 1
    joint = _Joint()
    out: dict[str, LayerReading] = {}
    for st in collected.states:
        found: list[GaugeZero] = []
        if st.gauge_basis is not None:
            found.append(_layernorm_zero(st))
        act = activation_spectrum(st, opts.center, opts.rtol, opts.gap_ratio)
        fis, taken = None, None
        if st.fisher:
            fm = fisher_matrix(st, opts.route, opts.gauges)
            found.extend(fm.gauges)
            taken = fm.route
            fis = spectrum(
                fm.k,
                rtol=opts.rtol,
                gap_ratio=opts.gap_ratio,
                input_dtype=dtype_name(fm.dtype),
                # K is never formed from the N×p stack of per-sample gradients; its entries
                # are products of inner products over d_in and d_out coordinates.
                rtol_size=max(n, fm.d_in + fm.d_out),
            )
            if opts.joint and "[h=" not in st.name:
                joint.add(st, fm.k, fm.d_in, fm.d_out, fm.dtype)
            key = id(st.capture)
            remaining[key] -= 1
            if remaining[key] == 0:
                st.capture.release()
        out[st.name] = LayerReading(st.name, act, fis, n, st.n_rows, taken, tuple(found))
    return Reading(
        out,
        n_samples=n,
        labels=opts.labels,
        pool=opts.pool,
        center=opts.center,
        joint_fisher=joint.spectrum(n, opts),
        joint_layers=tuple(joint.layers),
    )
