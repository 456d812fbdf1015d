"""How hard the hypothesis fuzz tests try: every example in `make test`, a tenth elsewhere.

`make test` (what CI runs, as root) sets NOVACRON_FUZZ=full, so the decoders
get every example their tests ask for: over 10,000 a run. Any other run, such
as `pytest -m "not lab"` on a laptop, tries a tenth of each, which keeps it
within a minute; the examples are random each run, so quick runs still add
coverage over time rather than repeat one sample.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from hypothesis import HealthCheck, settings

FULL = os.environ.get("NOVACRON_FUZZ") == "full"
QUICK_SHARE = 10  # a quick run tries 1 in this many of the examples a full run tries


def fuzz(examples: int, *, suppress: Sequence[HealthCheck] = ()) -> settings:
    """Settings for a test of `examples` generated inputs (full runs), without a deadline."""
    return settings(
        max_examples=examples if FULL else max(1, examples // QUICK_SHARE),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, *suppress],
    )
