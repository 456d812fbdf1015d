"""Where the members were, kept in the data directory, so a restarted agent can rejoin.

A restarted agent knows no member. The others still hold its previous life
alive, then failed, and cannot reach the new one: it does not know their
addresses, so it answers none of them. Static seeds and mDNS bring it back,
but the mesh's own seed has no seed but itself, and mDNS may be off or not
cross a router. So, as Serf's snapshot does, the agent keeps the addresses
of its members (alive or failed, not those that left) and knocks at some of
them while it is alone. A file that does not decode is ignored; every address found in it is
only ever introduced to, which checks the certificate of whoever answers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from pathlib import Path

from .config import split_address
from .kept_lists import load_kept, save_kept

MAX_FILE = 4 * 1024 * 1024  # far above 10,000 members' addresses; a larger file is not ours
WHAT = "the members' addresses"


def save_last_members(path: Path, addresses: Iterable[str]) -> None:
    """Write the members' addresses (`host:port`), atomically."""
    save_kept(path, sorted(addresses), WHAT)


def load_last_members(path: Path) -> list[tuple[str, int]]:
    """The addresses kept in `path` as (host, port); those that do not parse are skipped."""
    addresses = []
    for address in load_kept(path, WHAT, MAX_FILE):
        with contextlib.suppress(ValueError):
            addresses.append(split_address(address))
    return addresses
