"""deadspec: read and control the dead directions of deep networks.

Dead-Direction Signatures (DDS): closed-form spectral readings of a layer's activation Gram and
per-sample-gradient Fisher-Gram (log det⁺ of the active part, its slope along an approach to the
singular set, dead-direction counts), from one forward, one backward and one eigendecomposition.
"""

from __future__ import annotations

import os as _os
from importlib import import_module as _import_module
from typing import Any as _Any

from deadspec._loader import core as _core
from deadspec.ops import (
    GramAccumulator,
    Slope,
    Spectrum,
    default_rtol,
    fisher_gram,
    fisher_gram_from_grads,
    fisher_route,
    fit_slope,
    gram,
    logdet_top,
    spectrum,
    spectrum_from_eigenvalues,
    sym_eig,
)

__version__: str = _core.__version__
Error = _core.Error

# DEADSPEC_NUM_THREADS fixes the core's BLAS/LAPACK threads at import ("auto" or unset: the
# default, one per core while the machine is quiet and 1 while it is oversubscribed; README,
# "Threads").
_threads_env = _os.environ.get("DEADSPEC_NUM_THREADS", "").strip().lower()
if _threads_env not in ("", "auto"):
    try:
        _core.set_num_threads(int(_threads_env))
    except ValueError as _exc:
        raise ValueError(
            f"deadspec: DEADSPEC_NUM_THREADS must be a positive integer or 'auto', got "
            f"{_os.environ['DEADSPEC_NUM_THREADS']!r}"
        ) from _exc

# torch-facing names load lazily, so `import deadspec` works for numpy users without torch.
_LAZY = {
    "read": "deadspec.reading",
    "Reading": "deadspec.reading",
    "LayerReading": "deadspec.reading",
    "GaugeZero": "deadspec.reading",
    "TokenCrossEntropy": "deadspec.reading",
    "classify_directions": "deadspec.approach",
    "gauge_directions": "deadspec.approach",
    "DirectionClass": "deadspec.approach",
    "approach_slope": "deadspec.approach",
    "ApproachSlope": "deadspec.approach",
    "direction_order": "deadspec.approach",
    "DirectionOrder": "deadspec.approach",
}
_SUBMODULES = (
    "models",
    "theory",
    "experiments",
    "cli",
    "gauges",
    "optim",
    "llc",
    "monitor",
    "integrations",
)

__all__ = [
    "ApproachSlope",
    "DirectionClass",
    "DirectionOrder",
    "Error",
    "GaugeZero",
    "GramAccumulator",
    "LayerReading",
    "Reading",
    "Slope",
    "Spectrum",
    "__version__",
    "approach_slope",
    "build_info",
    "classify_directions",
    "cmake_dir",
    "default_rtol",
    "direction_order",
    "fisher_gram",
    "fisher_gram_from_grads",
    "fisher_route",
    "fit_slope",
    "gauge_directions",
    "gram",
    "logdet_top",
    "num_threads",
    "read",
    "set_num_threads",
    "spectrum",
    "spectrum_from_eigenvalues",
    "sym_eig",
    "TokenCrossEntropy",
]


def build_info() -> dict[str, _Any]:
    """Build flavour: version, CUDA (always False for now), LAPACK backend, eigensolver, Eigen."""
    return dict(_core.build_info())


def set_num_threads(n: int | str) -> None:
    """Set the thread count of the core's BLAS/LAPACK (OpenBLAS; independent of torch's).

    ``n >= 1`` fixes it. ``"auto"`` is the default: every core while the machine is quiet,
    1 thread while it is oversubscribed (the calling thread waited for a CPU during more than
    20% of a core call). OpenBLAS's threads busy-wait at a barrier in every step of a solver,
    so next to other busy processes 2 threads can be 10x slower than 1.
    """
    from deadspec._util import INT32_MAX, check_integer

    if isinstance(n, str) and n.strip().lower() == "auto":
        _core.set_num_threads_auto()
        return
    # the core takes a C int (OpenBLAS's own reading of n < 1 is kept)
    n = check_integer("set_num_threads", "n", n, -INT32_MAX - 1, maximum=INT32_MAX)
    _core.set_num_threads(n)


def num_threads() -> int:
    """Thread count of the core's BLAS/LAPACK: the count set, or in auto mode one per core
    (the most it uses; while the machine is oversubscribed it uses 1)."""
    return _core.num_threads()


def cmake_dir() -> str:
    """Folder holding ``deadspecConfig.cmake``: pass it as ``deadspec_DIR`` to CMake.

    Raises
    ------
    FileNotFoundError
        If this installation does not carry the C++ SDK (e.g. a development tree).
    """
    here = _os.path.dirname(_os.path.abspath(__file__))
    path = _os.path.join(here, "lib", "cmake", "deadspec")
    if not _os.path.isfile(_os.path.join(path, "deadspecConfig.cmake")):
        raise FileNotFoundError(
            f"deadspec.cmake_dir: no deadspecConfig.cmake under {path}; the C++ SDK is installed "
            "by `pip install .` (it is not present in a source tree)"
        )
    return path


def __getattr__(name: str) -> _Any:
    if name in _LAZY:
        value = getattr(_import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        module = _import_module(f"deadspec.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'deadspec' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | set(_SUBMODULES))
