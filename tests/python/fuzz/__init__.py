"""The fuzz suite of deadspec (issue #12): hypothesis over every binding and public entry point.

- :mod:`fuzz.specs`: plain-data descriptions of inputs (arrays, models, files, calls). A case is
  a :class:`~fuzz.specs.Case`; its ``repr`` is valid Python (paste it into ``@example(...)``).
- :mod:`fuzz.strategies`: hypothesis strategies, one per entry point, producing cases
  (two in three well-formed with extreme but finite values, one in three anything goes).
- :mod:`fuzz.examples`: explicit inputs run first in every size, one per known finding.
- :mod:`fuzz.entries`: what the worker child does with a case (builds the inputs, calls the
  entry point, says which outputs must be finite and which files are inputs).
- :mod:`fuzz.runner`: the worker child processes, the per-case time bound, the outcome classes,
  the summary; also a command line (``python tests/python/fuzz/runner.py --help``).

The parent imports only ``specs``, ``strategies``, ``examples`` and ``runner`` (no torch, no
deadspec); ``build`` and ``entries`` run in the worker child.
"""
