"""Fixtures every test module may use."""

from __future__ import annotations

import pytest

from novacron.simulations import guest as guest_mod
from novacron.simulations.guest import Guest


@pytest.fixture(scope="session")
def guest() -> Guest:
    """The test guest (built once from Debian packages; later sessions only check it)."""
    return guest_mod.build()
