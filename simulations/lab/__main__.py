"""Entry point for `python -m novacron.simulations.lab`."""

from __future__ import annotations

import sys

from novacron.simulations.lab.cli import main

if __name__ == "__main__":
    sys.exit(main())
