"""Core operations: Grams, Fisher-Grams, eigendecompositions, spectral readings, slope fits.

Contract
--------
* Inputs are torch tensors (CPU) or numpy arrays of float32 or float64, any strides. float16 and
  bfloat16 are upcast to float32; integer, bool and complex inputs raise ``TypeError``. NaN/Inf,
  empty inputs, wrong shapes and tensors without data (the ``meta`` device) raise
  ``ValueError``. CUDA tensors raise ``RuntimeError`` (this build has no CUDA backend).
* Inputs cross into C++ zero-copy through DLPack; every computation accumulates in float64 and
  releases the GIL.
* Matrix outputs are float64 and of the input's kind: a torch tensor for a torch input, a numpy
  array otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from deadspec import _core
from deadspec import _dlpack as dl
from deadspec._util import INT64_MAX, check_bool, check_choice, check_integer, check_real

__all__ = [
    "GramAccumulator",
    "Slope",
    "Spectrum",
    "default_rtol",
    "fisher_gram",
    "fisher_gram_from_grads",
    "fisher_route",
    "fit_slope",
    "gram",
    "logdet_top",
    "spectrum",
    "spectrum_from_eigenvalues",
    "sym_eig",
]

_SIDES = ("auto", "feature", "sample")
_ROUTES = ("auto", "block-sum", "materialize")
_DTYPES = ("float64", "float32", "float16", "bfloat16")


def _dtype_arg(fn: str, dtype: Any) -> str:
    """The core's name of a floating dtype given as a string, torch dtype or numpy dtype."""
    if isinstance(dtype, str) or type(dtype).__module__.startswith("torch"):
        name = str(dtype).removeprefix("torch.")  # "float32", torch.float32
    else:
        try:
            name = str(np.dtype(dtype))  # np.float32, np.dtype("float32")
        except TypeError:
            raise TypeError(
                f"deadspec.{fn}: input_dtype must be a dtype or its name (one of {_DTYPES}), "
                f"got {type(dtype).__name__}"
            ) from None
    if name not in _DTYPES:
        raise TypeError(f"deadspec.{fn}: input_dtype must be one of {_DTYPES}, got {name!r}")
    return name


def _vector(fn: str, arg: str, values: Any, *, flatten: bool = False) -> np.ndarray:
    """``values`` (a sequence, array or tensor of real numbers) as a 1-D float64 array
    (``flatten``: any shape, raveled)."""
    if isinstance(values, (str, bytes, dict)) or values is None:
        raise TypeError(
            f"deadspec.{fn}: {arg} must be a 1-D sequence, array or tensor of numbers, got "
            f"{type(values).__name__}"
        )
    dl.refuse_without_data(values, f"deadspec.{fn}", arg)
    host = values.detach().cpu() if dl.kind(values) == "torch" else values
    try:
        v = np.asarray(host, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"deadspec.{fn}: {arg} must be a 1-D sequence, array or tensor of real numbers, got "
            f"{type(values).__name__} ({exc})"
        ) from None
    if flatten:
        return v.ravel()
    if v.ndim != 1:
        raise ValueError(f"deadspec.{fn}: {arg} must be 1-D, got shape {v.shape}")
    return v


def gram(x: Any, *, side: str = "auto", center: bool = False) -> Any:
    """Activation Gram of an N×h matrix.

    Parameters
    ----------
    x : torch.Tensor or numpy.ndarray, shape (N, h)
        Activations (rows = samples or tokens).
    side : {"auto", "feature", "sample"}
        ``"feature"`` gives the h×h matrix (1/N)XᵀX, ``"sample"`` the N×N matrix (1/N)XXᵀ;
        both share their non-zero spectrum. ``"auto"`` picks the smaller (ties: feature).
    center : bool
        Subtract the column means first (the covariance).

    Returns
    -------
    torch.Tensor or numpy.ndarray
        float64, symmetric.
    """
    check_choice("gram", "side", side, _SIDES)
    center = check_bool("gram", "center", center)
    p = dl.prepare(x, "deadspec.gram", "x")
    return dl.wrap(_core.gram(dl.capsule(p), side=side, center=center), x)


class GramAccumulator:
    """Streaming feature-side Gram over batches of rows (N may exceed memory).

    Keeps the running mean and the centred scatter (pairwise update), so both the uncentred and
    the centred Gram are available at the end and two accumulators can be merged.

    Parameters
    ----------
    features : int
        h, the number of columns of every batch.
    """

    def __init__(self, features: int) -> None:
        features = check_integer("GramAccumulator", "features", features, 1, maximum=INT64_MAX)
        self._acc = _core.GramAccumulator(features)

    def add(self, batch: Any) -> GramAccumulator:
        """Add a (B, h) batch. Returns self."""
        p = dl.prepare(batch, "deadspec.GramAccumulator.add", "batch")
        self._acc.add(dl.capsule(p))
        return self

    def merge(self, other: GramAccumulator) -> GramAccumulator:
        """Add everything ``other`` has seen. Returns self."""
        if not isinstance(other, GramAccumulator):
            raise TypeError(
                f"deadspec.GramAccumulator.merge: other must be a GramAccumulator, got "
                f"{type(other).__name__}"
            )
        self._acc.merge(other._acc)
        return self

    def gram(self, *, center: bool = False) -> np.ndarray:
        """(h, h) float64 Gram of all rows so far, divided by their count."""
        return self._acc.gram(center=check_bool("GramAccumulator.gram", "center", center))

    @property
    def count(self) -> int:
        return self._acc.count

    @property
    def features(self) -> int:
        return self._acc.features

    @property
    def mean(self) -> np.ndarray:
        return np.array(self._acc.mean)

    def __repr__(self) -> str:
        return f"GramAccumulator(features={self.features}, count={self.count})"


def fisher_gram(acts: Any, grads: Any, *, bias: bool = False, route: str = "auto") -> Any:
    """Per-sample-gradient Fisher-Gram of a linear layer, without materialising the gradients.

    For a layer z = W a (+ b) the per-sample weight gradient is g_i = δ_i a_iᵀ (summed over
    positions for sequences), so K_ij = ⟨g_i, g_j⟩/N = (a_i·a_j)(δ_i·δ_j)/N. Its non-zero spectrum
    is that of the empirical Fisher block (1/N)ΓᵀΓ.

    Parameters
    ----------
    acts : tensor, shape (N, d_in) or (N, T, d_in)
        The layer's inputs.
    grads : tensor, shape (N, d_out) or (N, T, d_out)
        δ: gradients of each sample's *own* loss with respect to the layer's outputs.
    bias : bool
        Include the bias block (Σ_t δ_it)·(Σ_s δ_js)/N.
    route : {"auto", "block-sum", "materialize"}
        For sequences: block sums over position pairs of two NT×NT Grams, or per-sample
        gradients formed tile by tile (both exact, float64 accumulation); ``"auto"`` takes the
        one with the lower estimated time (see :func:`fisher_route`, docs/theory.md §2.5).

    Returns
    -------
    tensor, shape (N, N), float64
    """
    check_choice("fisher_gram", "route", route, _ROUTES)
    bias = check_bool("fisher_gram", "bias", bias)
    pa = dl.prepare(acts, "deadspec.fisher_gram", "acts")
    pg = dl.prepare(grads, "deadspec.fisher_gram", "grads")
    if dl.kind(acts) != dl.kind(grads):
        raise TypeError(
            f"deadspec.fisher_gram: acts and grads must both be torch tensors or both numpy "
            f"arrays, got {type(acts).__name__} and {type(grads).__name__}"
        )
    k = _core.fisher_gram(dl.capsule(pa), dl.capsule(pg), bias=bias, route=route)
    return dl.wrap(k, acts)


def fisher_route(n: int, t: int, d_in: int, d_out: int) -> str:
    """The route ``fisher_gram(route="auto")`` takes for these sizes (each a positive int)."""
    sizes = {"n": n, "t": t, "d_in": d_in, "d_out": d_out}
    n, t, d_in, d_out = (
        check_integer("fisher_route", k, v, 1, maximum=INT64_MAX) for k, v in sizes.items()
    )
    return _core.fisher_route(n, t, d_in, d_out)


def fisher_gram_from_grads(grads: Any) -> Any:
    """Fisher-Gram (1/N)ΓΓᵀ from materialised per-sample gradients of shape (N, p...)."""
    p = dl.prepare(grads, "deadspec.fisher_gram_from_grads", "grads")
    return dl.wrap(_core.fisher_gram_from_grads(dl.capsule(p)), grads)


def sym_eig(a: Any, *, vectors: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """Eigenvalues (descending) and, if asked, eigenvectors (columns) of a symmetric matrix.

    Only the lower triangle is read. Uses LAPACK ``dsyevd`` when the build has it (see
    ``deadspec.build_info()["eig_backend"]``), Eigen's solver otherwise; eigenvalues alone of
    an order from 1024 on go through the core's two-stage reduction (dense to band to
    tridiagonal, the band's bulge chase pipelined over the core's threads). Computed in float64
    (float32 input near 1e±38 included); an eigenvalue beyond float64 (a finite matrix can have
    one, e.g. ``[[M, M], [M, M]]`` with ``M = 1e308``) raises ``OverflowError``, as
    :func:`gram` does, rather than returning Inf.
    """
    vectors = check_bool("sym_eig", "vectors", vectors)
    p = dl.prepare(a, "deadspec.sym_eig", "a")
    values, vecs = _core.sym_eig(dl.capsule(p), vectors=vectors)
    return np.asarray(values), (None if vecs is None else np.asarray(vecs))


@dataclass(frozen=True)
class Spectrum:
    """Spectral readings of one Gram (theory.md §3).

    Attributes
    ----------
    eigenvalues : numpy.ndarray
        Descending; round-off negatives clipped to 0 (counted in ``clipped``).
    eigenvectors : numpy.ndarray or None
        Columns matching ``eigenvalues`` (only when asked for).
    logdet_plus : float
        Σ log μ_i over the active set (μ_i > threshold); 0.0 for an empty active set.
    active, structural_zeros : int
        Size of the active set and m − active.
    dead_count : int
        Active eigenvalues below the largest gap in log μ, when that gap's ratio ≥ gap_ratio.
    lambda_min : float
        Smallest active eigenvalue.
    effective_rank, participation_ratio, condition_number : float
        exp(entropy of μ/Σμ), (Σμ)²/Σμ², μ_1/λ_min, all over the active set.
    threshold, rtol : float
        The active-set cut rtol·μ_1 and the rtol used.
    """

    eigenvalues: np.ndarray = field(repr=False)
    eigenvectors: np.ndarray | None = field(repr=False)
    logdet_plus: float
    active: int
    structural_zeros: int
    dead_count: int
    clipped: int
    lambda_min: float
    effective_rank: float
    participation_ratio: float
    condition_number: float
    threshold: float
    rtol: float

    @property
    def dim(self) -> int:
        return int(self.eigenvalues.shape[0])

    def logdet_top(self, k: int) -> float:
        """Σ log μ_i over the k largest eigenvalues (a fixed active set)."""
        return logdet_top(self.eigenvalues, k)

    def to_dict(self) -> dict[str, float | int]:
        """The scalar readings as a flat dict."""
        return {
            "dim": self.dim,
            "logdet_plus": self.logdet_plus,
            "active": self.active,
            "structural_zeros": self.structural_zeros,
            "dead_count": self.dead_count,
            "clipped": self.clipped,
            "lambda_min": self.lambda_min,
            "effective_rank": self.effective_rank,
            "participation_ratio": self.participation_ratio,
            "condition_number": self.condition_number,
            "threshold": self.threshold,
            "rtol": self.rtol,
        }


def _spectrum_from_dict(d: dict) -> Spectrum:
    d = dict(d)
    d["eigenvalues"] = np.asarray(d["eigenvalues"])
    if d["eigenvectors"] is not None:
        d["eigenvectors"] = np.asarray(d["eigenvectors"])
    return Spectrum(**d)


def _rtol_args(fn: str, rtol: float | None, input_dtype: Any, rtol_size: int | None) -> dict:
    rtol = check_real(fn, "rtol", rtol, optional=True)
    if rtol is not None and not (0.0 <= rtol < 1.0):
        raise ValueError(f"deadspec.{fn}: rtol must be in [0, 1), got {rtol}")
    rtol_size = check_integer(fn, "rtol_size", rtol_size, optional=True, maximum=INT64_MAX)
    if rtol_size is not None and rtol_size <= 0:
        raise ValueError(f"deadspec.{fn}: rtol_size must be positive, got {rtol_size}")
    name = _dtype_arg(fn, input_dtype)
    return {
        "rtol": -1.0 if rtol is None else float(rtol),
        "input_dtype": name,
        "rtol_size": 0 if rtol_size is None else int(rtol_size),
    }


def spectrum(
    g: Any,
    *,
    rtol: float | None = None,
    gap_ratio: float = 1e3,
    vectors: bool = False,
    input_dtype: Any = None,
    rtol_size: int | None = None,
) -> Spectrum:
    """Eigendecompose a symmetric PSD matrix (a Gram) and read its spectrum.

    Parameters
    ----------
    g : tensor, shape (m, m)
        Symmetric (checked) positive semi-definite matrix.
    rtol : float, optional
        Active set μ_i > rtol·μ_1. Default ``rtol_size · ε(input_dtype)`` (numpy's matrix_rank
        rule, applied to the data the Gram was built from).
    gap_ratio : float
        The dead cluster is counted only below a gap of at least this ratio.
    vectors : bool
        Keep the eigenvectors.
    input_dtype : str or dtype, optional
        dtype of the data the Gram was built from; default g's dtype.
    rtol_size : int, optional
        max(shape) of that data; default m.

    The readings are scale-invariant (theory.md §3.2): finite for any finite Gram, 1e±300
    included. ``OverflowError`` where one cannot be represented: an eigenvalue or the condition
    number beyond float64 (the latter only with a tiny ``rtol``).
    """
    gap_ratio = check_real("spectrum", "gap_ratio", gap_ratio)
    vectors = check_bool("spectrum", "vectors", vectors)
    p = dl.prepare(g, "deadspec.spectrum", "g")
    if input_dtype is None:
        input_dtype = dl.dtype_name(p)
        if input_dtype not in ("float32", "float64"):
            input_dtype = "float64"
    args = _rtol_args("spectrum", rtol, input_dtype, rtol_size)
    d = _core.spectrum(dl.capsule(p), gap_ratio=gap_ratio, vectors=vectors, **args)
    return _spectrum_from_dict(d)


def spectrum_from_eigenvalues(
    values: Any,
    *,
    rtol: float | None = None,
    gap_ratio: float = 1e3,
    input_dtype: Any = "float64",
    rtol_size: int | None = None,
) -> Spectrum:
    """Readings from a set of eigenvalues (any order) without an eigendecomposition."""
    fn = "spectrum_from_eigenvalues"
    v = _vector(fn, "values", values)
    if v.size == 0:
        raise ValueError(f"deadspec.{fn}: values must not be empty, got shape (0,)")
    gap_ratio = check_real(fn, "gap_ratio", gap_ratio)
    args = _rtol_args(fn, rtol, input_dtype, rtol_size)
    res = _core.spectrum_from_eigenvalues(v, gap_ratio=gap_ratio, **args)
    return _spectrum_from_dict(res)


def logdet_top(eigenvalues: Any, k: int) -> float:
    """Σ log μ_i over the k largest entries of a descending eigenvalue vector."""
    v = _vector("logdet_top", "eigenvalues", eigenvalues)
    return _core.logdet_top(v, check_integer("logdet_top", "k", k, maximum=INT64_MAX))


def default_rtol(input_dtype: Any, size: int) -> float:
    """size · ε(input_dtype): the default relative threshold of the active set."""
    name = _dtype_arg("default_rtol", input_dtype)
    size = check_integer("default_rtol", "size", size, 1, maximum=INT64_MAX)
    return _core.default_rtol(name, size)


@dataclass(frozen=True)
class Slope:
    """A straight-line fit y ≈ intercept + slope·x.

    ``stderr`` is the OLS standard error of the slope (NaN with two points); ``r2`` is
    1 − SS_res/SS_tot of the fitted line.
    """

    slope: float
    intercept: float
    r2: float
    stderr: float
    n: int


_METHODS = ("ols", "theil-sen")


def fit_slope(x: Any, y: Any, *, method: str = "ols") -> Slope:
    """Fit a line through (x, y): least squares with intercept, or Theil–Sen (robust).

    Scale-invariant: the fit runs on x and y scaled by powers of two into (−1, 1) and centred,
    and the line is mapped back exactly, so finite data of any scale (1e±300) give finite
    readings; a slope, intercept or standard error beyond float64 raises ``OverflowError``.
    """
    check_choice("fit_slope", "method", method, _METHODS)
    xs = _vector("fit_slope", "x", x, flatten=True)
    ys = _vector("fit_slope", "y", y, flatten=True)
    d = _core.fit_slope(xs.tolist(), ys.tolist(), method=method)
    return Slope(**d)


