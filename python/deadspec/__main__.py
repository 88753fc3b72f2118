"""``python -m deadspec``: the ``deadspec`` command line (see :mod:`deadspec.cli`)."""

from __future__ import annotations

import sys

from deadspec.cli import main

if __name__ == "__main__":
    sys.exit(main())
