"""The result types of a reading: :class:`Reading`, :class:`LayerReading`, :class:`GaugeZero`.

They are public as ``deadspec.reading.Reading`` etc. (re-exported there, and ``__module__``
says so); the engine builds them in :mod:`deadspec._engine.readout`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from deadspec.ops import Spectrum

__all__ = ["RECORD_KEYS", "GaugeZero", "LayerReading", "Reading"]

#: The spectral readings of one side, in the order of ``Reading.to_records()``'s columns.
RECORD_KEYS = (
    "logdet_plus",
    "active",
    "structural_zeros",
    "dead_count",
    "clipped",
    "lambda_min",
    "effective_rank",
    "participation_ratio",
    "condition_number",
)


@dataclasses.dataclass(frozen=True)
class GaugeZero:
    """An exact gauge (symmetry) zero found at a layer, reported and excluded from a spectrum.

    Attributes
    ----------
    kind : str
        ``"layernorm-kernel"``: the output of a LayerNorm satisfies ``(y − ȳ)·γ⁻¹ = 0`` for every
        input, so the centred activation Gram has γ⁻¹ in its kernel (theory.md §1).
        ``"logit-shift"``: the per-sample output gradients δ of the logit layer sum to 0 over
        the classes (cross-entropy), so the weight directions ``W ↦ W + 1vᵀ`` (and ``b ↦ b +
        c1``) are exact zeros of the Fisher. ``"mean-shift"``: the same identity found at a
        layer that is not the logit layer (its output feeds a normalisation).
    side : str
        ``"activation"`` or ``"fisher"``.
    dim : int
        Number of zero directions: output-space directions on the activation side, parameter
        directions (``d_in`` + 1 with a bias) on the Fisher side.
    residual : float
        Size of the gauge component before it was projected out, relative to the matrix
        scale (``uᵀGu/μ₁`` on the activation side, ``max|Σ_k δ_k| / max|δ|`` on the Fisher side):
        round-off for an exact gauge.
    vectors : np.ndarray or None
        Activation side: ``h×dim`` orthonormal columns spanning the kernel (γ⁻¹/‖γ⁻¹‖).
        Fisher side: the output-space direction ``1/√d_out`` (``d_out×1``).
    """

    kind: str
    side: str
    dim: int
    residual: float
    vectors: np.ndarray | None = None

    def to_dict(self) -> dict[str, Any]:
        """Scalars only: ``kind``, ``side``, ``dim``, ``residual``."""
        return {
            "kind": self.kind,
            "side": self.side,
            "dim": int(self.dim),
            "residual": float(self.residual),
        }


@dataclasses.dataclass(frozen=True, repr=False)
class LayerReading:
    """Spectra read at one layer.

    Attributes
    ----------
    name : str
        The layer's ``named_modules()`` name.
    activation : Spectrum
        Spectrum of the activation Gram (``h×h``, or ``R×R`` when there are fewer rows R than
        features h; the non-zero spectrum is the same).
    fisher : Spectrum or None
        Spectrum of the ``N×N`` per-sample-gradient Fisher-Gram; None for modules other than
        ``nn.Linear`` or when ``fisher=False``.
    n_samples : int
        Number of samples N.
    n_rows : int
        Number of rows R of the activation matrix (``N·T`` for token rows, else N).
    route : str or None
        How the Fisher-Gram was formed: ``"block-sum"`` (Hadamard products of the input and
        output-gradient Grams, block-summed over positions; the only route for T = 1),
        ``"materialize"`` (per-sample gradients formed in column chunks), ``"embedding"``
        (sparse per-sample gradient rows of an ``nn.Embedding``); None without a Fisher side.
    gauges : tuple of GaugeZero
        Exact gauge zeros found at this layer and excluded from the spectra (see
        :class:`GaugeZero`): the LayerNorm kernel γ⁻¹ on the activation side, the cross-entropy
        logit shift (or the mean shift of a layer feeding a normalisation) on the Fisher side.
        They are structural zeros, not dead directions.
    """

    name: str
    activation: Spectrum
    fisher: Spectrum | None
    n_samples: int
    n_rows: int = 0
    route: str | None = None
    gauges: tuple[GaugeZero, ...] = ()

    def __repr__(self) -> str:
        def side(s: Spectrum | None) -> str:
            if s is None:
                return "None"
            return (
                f"<dim={len(s.eigenvalues)} active={s.active} dead={s.dead_count} "
                f"logdet+={s.logdet_plus:.4g}>"
            )

        return (
            f"LayerReading(name={self.name!r}, n_samples={self.n_samples}, "
            f"activation={side(self.activation)}, fisher={side(self.fisher)})"
        )


class Reading(Mapping):
    """The result of :func:`read`: a read-only mapping ``layer name -> LayerReading``.

    Iteration follows the order of the requested layers.

    Attributes
    ----------
    n_samples : int
        Number of samples read.
    labels : str
        ``"observed"`` or ``"sampled"`` (labels used on the Fisher side).
    pool : str
        Row convention of sequence outputs (``"none"`` or ``"mean"``).
    center : bool
        Whether the activation Grams were centred.
    joint_fisher : Spectrum or None
        The joint Fisher-Gram reading of ``read(..., joint=True)`` (None otherwise).
    joint_layers : tuple of str
        The layers summed into it.
    bytes_sent : int or None
        A read over a process group (``group=``): the bytes of the collected states all ranks
        exchanged (rows or Gram summaries, per-sample factors); None for one process.
    """

    def __init__(
        self,
        layers: Mapping[str, LayerReading],
        *,
        n_samples: int,
        labels: str = "observed",
        pool: str = "none",
        center: bool = False,
        joint_fisher: Any = None,
        joint_layers: tuple[str, ...] = (),
    ) -> None:
        self.joint_fisher = joint_fisher
        self.joint_layers = tuple(joint_layers)
        self._layers = dict(layers)
        self.n_samples = int(n_samples)
        self.labels = labels
        self.pool = pool
        self.center = bool(center)
        self.bytes_sent: int | None = None

    def __getitem__(self, name: str) -> LayerReading:
        try:
            return self._layers[name]
        except KeyError:
            raise KeyError(
                f"deadspec.Reading: no layer {name!r}; layers read: {list(self._layers)}"
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._layers)

    def __len__(self) -> int:
        return len(self._layers)

    def to_records(self) -> list[dict[str, Any]]:
        """One flat dict per layer × side (the side ``"fisher"`` only where it was read).

        Returns
        -------
        list of dict
            Keys: ``layer``, ``side`` (``"activation"`` | ``"fisher"``), ``n`` (rows of the
            activation matrix, or samples for the Fisher side), ``dim`` (size of the matrix
            whose spectrum was read), ``logdet_plus``, ``active``, ``structural_zeros``,
            ``dead_count``, ``clipped``, ``lambda_min``, ``effective_rank``,
            ``participation_ratio``, ``condition_number``. Plain Python scalars, ready for
            ``pandas.DataFrame`` or ``csv.DictWriter``. A joint Fisher reading comes last, as
            layer ``"joint"``.
        """
        records: list[dict[str, Any]] = []
        entries: list[tuple[str, list[tuple[str, Any, int]]]] = []
        for name, lr in self._layers.items():
            sides = [("activation", lr.activation, lr.n_rows)]
            if lr.fisher is not None:
                sides.append(("fisher", lr.fisher, lr.n_samples))
            entries.append((name, sides))
        if self.joint_fisher is not None:
            entries.append(("joint", [("fisher", self.joint_fisher, self.n_samples)]))
        for name, sides in entries:
            for side, s, n in sides:
                rec: dict[str, Any] = {
                    "layer": name,
                    "side": side,
                    "n": int(n),
                    "dim": len(s.eigenvalues),
                }
                for key in RECORD_KEYS:
                    value = getattr(s, key)
                    rec[key] = int(value) if isinstance(value, (int, np.integer)) else float(value)
                records.append(rec)
        return records

    def gauge_records(self) -> list[dict[str, Any]]:
        """One dict per gauge found: ``layer`` plus the keys of :meth:`GaugeZero.to_dict`."""
        return [
            {"layer": name, **g.to_dict()} for name, lr in self._layers.items() for g in lr.gauges
        ]

    def __repr__(self) -> str:
        head = (
            f"Reading(n_samples={self.n_samples}, labels={self.labels!r}, pool={self.pool!r}, "
            f"center={self.center})"
        )
        cols = ["layer", "side", "n", "dim", "active", "dead", "logdet+", "lambda_min", "eff_rank"]
        rows = []
        for r in self.to_records():
            rows.append(
                [
                    r["layer"] or "<root>",
                    r["side"],
                    str(r["n"]),
                    str(r["dim"]),
                    str(r["active"]),
                    str(r["dead_count"]),
                    f"{r['logdet_plus']:.4g}",
                    f"{r['lambda_min']:.3e}",
                    f"{r['effective_rank']:.3g}",
                ]
            )
        if not rows:
            return head
        widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(cols)]
        left = {0, 1}

        def fmt(row: Sequence[str]) -> str:
            return "  ".join(
                cell.ljust(w) if i in left else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(row, widths))
            ).rstrip()

        lines = [head, fmt(cols)] + [fmt(row) for row in rows]
        return "\n".join(lines)
