"""deadspec._core: the C++ core of deadspec (private; use the deadspec package).

Stub of the pybind11 extension (python/src). Started from ``pybind11-stubgen deadspec._core``
and edited by hand; tests/python/test_typing.py checks that its names match the module's.
Tensors cross as DLPack capsules (``t.__dlpack__()``: CPU float32/float64 unless stated);
results come back as float64 numpy arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

_Capsule: TypeAlias = Any  # a DLPack capsule ("dltensor" or "dltensor_versioned"), consumed
_F64: TypeAlias = npt.NDArray[np.float64]
# One block of the batched DDC calls: a dict with named entries (see each function).
_Block: TypeAlias = dict[str, Any]

__version__: str

class Error(RuntimeError):
    """A failure of the core that is not an argument error (e.g. no convergence)."""

class GramAccumulator:
    """Streaming feature-side Gram (running mean + centred scatter)."""

    def __init__(self, features: int) -> None: ...
    def add(self, batch: _Capsule) -> None:
        """Add a B×h batch (any strides); an empty batch is a no-op."""
    def merge(self, other: GramAccumulator) -> None:
        """Add everything ``other`` has seen (same number of features)."""
    def gram(self, *, center: bool = False) -> _F64:
        """h×h Gram of all rows seen so far, divided by their count."""
    @property
    def count(self) -> int: ...
    @property
    def features(self) -> int: ...
    @property
    def mean(self) -> _F64: ...

class DDCAdamPlan:
    """DDCAdam's coordinate step over all blocks (``optim/_coreplan.py``), the structure bound
    once: :meth:`check` the gradients, then :meth:`step`."""

    def __init__(
        self, blocks: list[dict[str, Any]], sites: list[dict[str, Any]], order: list[int]
    ) -> None:
        """``blocks``: dicts with the capsules ``param``, ``exp_avg``, ``exp_avg_sq``, ``step``
        (the float32 step count) and optional ``row_site``, ``col_site`` (int, -1: none),
        ``col_axis`` (1; 0: a Conv1D consumer), ``group`` (int), ``fold_decay`` (bool),
        ``rot_axis`` with ``rot_segments``; ``sites``: dicts with ``weight``, optional
        ``bias``, ``in_site``, ``units``, ``weight_block``, ``bias_block``; ``order``: the sites
        in topological order. Validated here (ValueError naming the entry)."""
    @property
    def num_blocks(self) -> int: ...
    def check(self, grads: list[_Capsule | None]) -> int:
        """Take this step's gradients (None: no gradient) and read them once; the first block
        whose gradient is not finite, or -1."""
    def step(
        self, groups: list[tuple[float, float, float, float, float]], bounded: bool
    ) -> tuple[list[int], list[bool]]:
        """The step of every block with a gradient; ``groups``: (lr, beta1, beta2, eps,
        weight_decay) per param group; ``bounded``: the overflow screen may clear blocks.
        Returns (refused, kept) per block."""
    def scale(self, site: int) -> _F64:
        """ρ of a site from the last step, float64."""
    def grad_max(self, block: int) -> float:
        """max |g| of a block from the last check (NaN: not finite)."""

class DDCSplitPlan:
    """DDCAdam's split form over all blocks (``optim/_splitplan.py``), the structure bound
    once: :meth:`check` the gradients (and take the first pass), then :meth:`step`."""

    def __init__(
        self, blocks: list[dict[str, Any]], sites: list[dict[str, Any]], order: list[int]
    ) -> None:
        """``blocks``: dicts with the capsules ``param``, ``exp_avg``, ``exp_avg_sq``, ``step``
        (the float32 step count) and optional ``row_site``, ``col_site`` (int, -1: none),
        ``group`` (int), ``deferred`` (bool), ``col_mean`` (capsule), ``rot_axis`` with
        ``rot_segments``; ``sites``: dicts with ``weight_block`` and optional ``bias_block``,
        ``in_site``, ``units``, ``consumers`` (block indices), ``group``, ``exp_avg`` and
        ``exp_avg_sq`` (the radial Adam's moments); ``order``: the sites in topological order.
        Validated here (ValueError naming the entry)."""
    @property
    def num_blocks(self) -> int: ...
    def check(
        self,
        grads: list[_Capsule | None],
        groups: list[tuple[float, float, float, float, float]],
    ) -> int:
        """Take this step's gradients (None: no gradient) and groups ((lr, beta1, beta2, eps,
        weight_decay) each), compute the scales and the first pass's sums; the first block
        whose gradient is not finite, or -1."""
    def split(self, site: int) -> bool:
        """Whether a site is split this step (after :meth:`check`)."""
    def step(self, site_steps: list[int]) -> tuple[list[int], list[int]]:
        """The rest of the step (``site_steps``: each site's radial step count before it).
        Returns (refused per block, refused units per site)."""

def build_info() -> dict[str, Any]:
    """Build flavour of the core: version, CUDA, LAPACK backend, Eigen version."""

def dlpack_data_ptr(x: _Capsule) -> int:
    """Address the core reads from for this DLPack capsule (consumes it; for zero-copy tests)."""

# -- Gram and Fisher-Gram (bind_gram.cpp, bind_fisher.cpp) --------------------------------------

def gram(x: _Capsule, *, side: str = "auto", center: bool = False) -> _F64:
    """Activation Gram of an N×h tensor: (1/N)XᵀX (``side="feature"``) or (1/N)XXᵀ
    (``"sample"``); ``"auto"`` picks the smaller. ``center`` subtracts the column means."""

def resolve_gram_side(n: int, h: int, side: str = "auto") -> str:
    """The side (``"feature"`` or ``"sample"``) ``side`` resolves to for an N×h input."""

def fisher_gram(
    acts: _Capsule,
    grads: _Capsule,
    *,
    bias: bool = False,
    route: str = "auto",
    chunk_bytes: int = 268435456,
) -> _F64:
    """Fisher-Gram K_ij = <g_i, g_j>/N of a linear layer from inputs and output gradients
    (``route``: ``"auto"``, ``"block-sum"`` or ``"materialize"``)."""

def fisher_gram_from_grads(grads: _Capsule) -> _F64:
    """Fisher-Gram (1/N)ΓΓᵀ from materialised per-sample gradients (N×p)."""

def fisher_route(n: int, t: int, d_in: int, d_out: int, route: str = "auto") -> str:
    """The route (``"block-sum"`` or ``"materialize"``) ``route`` resolves to for these sizes."""

def fisher_gram_cost(n: int, t: int, d_in: int, d_out: int) -> dict[str, float]:
    """Multiply-add counts of the two routes: ``{"block-sum": ..., "materialize": ...}``."""

# -- eigendecomposition and spectra (bind_spectrum.cpp) -----------------------------------------

def eig_backend() -> str:
    """Name of the eigensolver this build uses."""

def num_threads() -> int:
    """Threads the BLAS/LAPACK backend may use."""

def threads_in_use() -> int:
    """BLAS/LAPACK threads in use now (in auto mode: the last choice)."""

def openmp_runtime() -> str:
    """The OpenMP runtime (file) the optimizer plans' passes run their threads in: the process's
    own (torch's libgomp), or '' when none is loaded or DEADSPEC_OPENMP=0."""

def set_num_threads(n: int) -> None:
    """Fix the BLAS/LAPACK (OpenBLAS) thread count of the core."""

def set_num_threads_auto() -> None:
    """Return the core's BLAS/LAPACK threads to auto mode (the default)."""

def sym_eig(a: _Capsule, *, vectors: bool = False) -> tuple[_F64, _F64 | None]:
    """Eigenvalues (descending) and optionally eigenvectors (columns) of a symmetric matrix."""

def spectrum(
    g: _Capsule,
    *,
    rtol: float = -1.0,
    input_dtype: str = "float64",
    rtol_size: int = 0,
    gap_ratio: float = 1000.0,
    vectors: bool = False,
) -> dict[str, Any]:
    """Spectral readings of a symmetric PSD matrix (a dict; see deadspec.Spectrum)."""

def spectrum_from_eigenvalues(
    values: npt.ArrayLike,
    *,
    rtol: float = -1.0,
    input_dtype: str = "float64",
    rtol_size: int = 0,
    gap_ratio: float = 1000.0,
) -> dict[str, Any]:
    """The readings of :func:`spectrum` from given eigenvalues (descending, float64)."""

def logdet_top(eigenvalues: npt.ArrayLike, k: int) -> float:
    """Σ log of the k largest eigenvalues of a descending vector."""

def default_rtol(input_dtype: str, size: int) -> float:
    """ε(input_dtype)·size: the default relative threshold of :func:`spectrum`."""

# -- slopes (bind_slope.cpp) ---------------------------------------------------------------------

def fit_slope(x: Sequence[float], y: Sequence[float], *, method: str = "ols") -> dict[str, float]:
    """Line fit y ≈ intercept + slope·x (``method``: ``"ols"`` or ``"theil-sen"``); a dict
    with slope, intercept, r2, stderr and n."""

# -- DDCAdam kernels (bind_ddc.cpp); every call writes its tensors in place ----------------------

def ddc_adam_update(
    param: _Capsule,
    grad: _Capsule,
    exp_avg: _Capsule,
    exp_avg_sq: _Capsule,
    scale: _Capsule | None,
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    step: int,
    col_scale: _Capsule | None = None,
    decay: float = 1.0,
) -> int:
    """Fused DDCAdam block step in place (param, exp_avg, exp_avg_sq are written);
    σ = scale·col_scale, param multiplied by decay first. Returns the number of elements whose
    new value or moments were not finite: they keep their pre-step values."""

def ddc_adam_update_many(blocks: list[_Block]) -> list[int]:
    """Fused DDCAdam step of many blocks in one call, all validated before any is written.

    Each block is a dict: ``param``, ``grad``, ``exp_avg``, ``exp_avg_sq`` (capsules);
    ``lr``, ``beta1``, ``beta2``, ``eps`` (float); ``step`` (int); optional ``scale``,
    ``col_scale`` (capsules; absent or None: 1), ``decay`` (float, default 1.0), and for a
    block with rotated head segments ``rot_axis`` (int) with ``rot_segments`` (list of
    ``(start, stop)``), and ``keep`` (bool, default True: the check before commit; False: the
    screened step, written unconditionally, non-finite results only counted). An unknown or
    missing entry raises ValueError naming it. Returns per block the number of elements whose
    new values were not finite (kept at their pre-step values unless ``keep=False``).
    """

def ddc_split_sums(
    blocks: list[_Block],
) -> list[tuple[_F64, _F64, _F64, _F64]]:
    """Split form, pass 0: per block (Σ g̃x̃ per row, Σ x̃² per row, Σ g̃·Px̃ per column,
    Σ (Px̃)² per column), float64. σ, 1/σ, x̃, g̃ and Px̃ are formed in the parameter's dtype and
    their products summed in float64, not scaled: ±inf where the exact sum exceeds float64,
    non-finite where an element has one of those quantities beyond the parameter's dtype.
    ``row_scale`` and ``col_scale`` must be positive scales, finite with their reciprocals in
    the parameter's dtype (ValueError otherwise, every pass).

    Each block is a dict with the entries of :func:`ddc_adam_update_many` except ``scale`` and
    ``decay``, plus the optional capsules ``row_scale``, ``col_scale``, ``col_mean``,
    ``row_coef``, ``col_coef``, ``col_norm``, ``row_mult``, ``col_mult``.
    """

def ddc_split_moments(blocks: list[_Block]) -> list[tuple[_F64, _F64, int]]:
    """Split form, pass 1: moments on the tangential inputs (written); per block the update's
    (Σ u·x̃ per row, Σ u·Px̃ per column), float64, and the number of elements whose new moments
    were not finite (kept at their pre-step values). Blocks as in :func:`ddc_split_sums`."""

def ddc_split_apply(blocks: list[_Block]) -> list[int]:
    """Split form, pass 2: the re-projected update applied in place (radial factors
    row_mult/col_mult, coefficients of the update in row_coef/col_coef). Returns per block the
    number of elements whose new value was not finite (kept at its pre-step value)."""

def ddc_split_units(args: dict[str, Any]) -> int:
    """The per-unit step of one split site: a dict with the capsules ``q``, ``g_in``, ``n2``,
    ``g_out``, ``g_only``, ``exp_avg``, ``exp_avg_sq``, ``out`` and ``step`` (int), ``beta1``,
    ``beta2``, ``eps``, optional ``units``, ``lrs``. Returns the units whose radial moments were
    not finite (kept)."""

def ddc_row_norms(
    weight: _Capsule,
    col_scale: _Capsule | None = None,
    bias: _Capsule | None = None,
    weight_factor: float = 1.0,
    bias_factor: float = 1.0,
) -> _F64:
    """Row norms of [f_w·W·diag(col_scale) | f_b·b] (float64). A row whose plain sum of
    squares overflows is recomputed scaled, so for finite inputs +inf means the norm itself
    exceeds float64."""

def ddc_gauge_dots(x: _Capsule, g: _Capsule, axis: int) -> tuple[_F64, _F64]:
    """(Σ x·g, Σ |x·g|) along axis (1: per row, 0: per column), float64, not scaled: ±inf where
    the exact sum exceeds float64."""
