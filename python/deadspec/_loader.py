"""Loads the C++ core (``deadspec._core``) with the environment its OpenBLAS should see.

OpenBLAS's idle threads busy-wait 2^28 cycles (about 0.1 s) after every call, holding the cores
that torch's next operation needs (and torch's spinning threads hold ours). With 2^20 cycles
(about 0.4 ms), a loop of torch steps and core calls ran 2x faster on 2 cores and no benchmark
case ran slower (bench/README.md, "Threads"). The core's own OpenBLAS reads
``OPENBLAS_THREAD_TIMEOUT`` when it is loaded with ``_core``: it is set for that moment, unless
the user chose a value, and the environment is then left as it was found.
"""

from __future__ import annotations

import os

THREAD_TIMEOUT = "20"

_own_timeout = "OPENBLAS_THREAD_TIMEOUT" not in os.environ
if _own_timeout:
    os.environ["OPENBLAS_THREAD_TIMEOUT"] = THREAD_TIMEOUT
try:
    from deadspec import _core as core
finally:
    if _own_timeout:
        os.environ.pop("OPENBLAS_THREAD_TIMEOUT", None)

__all__ = ["core", "THREAD_TIMEOUT"]
