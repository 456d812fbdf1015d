"""Lists an agent keeps in its data directory from one life to the next (its members'
addresses, its peers' certificates).

msgpack, written atomically; read with a size cap. A file too large to be ours, or
one that does not decode, is logged and read as an empty list: what it held comes
back from the mesh, and the caller checks every item it takes from the list.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import msgpack

from novacron.protocol.errors import IdentityFileError
from novacron.protocol.keyfiles import write_atomic

log = logging.getLogger(__name__)


def save_kept(path: Path, items: list[Any], what: str) -> None:
    """Write `items` to `path` atomically; a failure is logged (`what` names the items)."""
    data = msgpack.packb(items, use_bin_type=True)
    try:
        write_atomic(path, data)
    except (OSError, IdentityFileError) as exc:
        log.warning("cannot keep %s in %s: %s", what, path, exc)


def load_kept(path: Path, what: str, max_bytes: int) -> list[Any]:
    """The list kept in `path`: empty if there is none, or if the file is over `max_bytes`
    or does not decode to a list (logged, `what` naming the items)."""
    try:
        with path.open("rb") as source:
            data = source.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise ValueError(f"over {max_bytes} bytes")
        kept = msgpack.unpackb(data)
    except FileNotFoundError:
        return []
    except (OSError, ValueError, msgpack.UnpackException) as exc:
        log.warning("ignoring %s kept in %s: %s", what, path, exc)
        return []
    return kept if isinstance(kept, list) else []
