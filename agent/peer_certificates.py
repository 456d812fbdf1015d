"""Members' certificates kept in the data directory, so a restarted agent knows its peers.

After a restart the trust store would know no one: every peer reconnecting
would be refused by ZAP ("no certificate is known for Curve key ...") until
introductions caught up, and a normal restart would look like an attack in
the logs. Certificates are public documents signed by the CA, so keeping
them costs no secrecy; each one is verified again when loaded, and a file
that does not decode is ignored (the mesh reintroduces its members anyway).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable
from pathlib import Path

import msgpack

from novacron.protocol.certificates import Certificate
from novacron.protocol.errors import IdentityFileError
from novacron.protocol.keyfiles import write_atomic

from .security import PeerRefused, TrustStore

log = logging.getLogger(__name__)

MAX_FILE = 64 * 1024 * 1024  # far above 10,000 certificates; a larger file is not ours


def save_peer_certificates(path: Path, certificates: Iterable[Certificate]) -> None:
    """Write the certificates (atomically, readable by root only). Thread-safe for a list
    taken from the trust store (`TrustStore.certificates` is a copy)."""
    data = msgpack.packb([cert.encoded for cert in certificates], use_bin_type=True)
    try:
        write_atomic(path, data)
    except (OSError, IdentityFileError) as exc:
        log.warning("cannot keep peers' certificates in %s: %s", path, exc)


def load_peer_certificates(path: Path, trust: TrustStore) -> int:
    """Admit the certificates kept in `path` that still verify; how many did."""
    try:
        with path.open("rb") as source:
            data = source.read(MAX_FILE + 1)
        kept = msgpack.unpackb(data) if len(data) <= MAX_FILE else []
    except FileNotFoundError:
        return 0
    except (OSError, ValueError, msgpack.UnpackException) as exc:
        log.warning("ignoring kept peers' certificates in %s: %s", path, exc)
        return 0
    admitted = 0
    for encoded in kept if isinstance(kept, list) else []:
        if isinstance(encoded, bytes):
            with contextlib.suppress(PeerRefused):  # expired or revoked since: not a peer
                trust.add_certificate(encoded)
                admitted += 1
    return admitted
