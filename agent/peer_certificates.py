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
from collections.abc import Iterable
from pathlib import Path

from novacron.protocol.certificates import Certificate

from .kept_lists import load_kept, save_kept
from .security import PeerRefused, TrustStore

MAX_FILE = 64 * 1024 * 1024  # far above 10,000 certificates; a larger file is not ours
WHAT = "peers' certificates"


def save_peer_certificates(path: Path, certificates: Iterable[Certificate]) -> None:
    """Write the certificates (atomically, readable by root only). Thread-safe for a list
    taken from the trust store (`TrustStore.certificates` is a copy)."""
    save_kept(path, [cert.encoded for cert in certificates], WHAT)


def load_peer_certificates(path: Path, trust: TrustStore) -> int:
    """Admit the certificates kept in `path` that still verify; how many did."""
    admitted = 0
    for encoded in load_kept(path, WHAT, MAX_FILE):
        if isinstance(encoded, bytes):
            with contextlib.suppress(PeerRefused):  # expired or revoked since: not a peer
                trust.add_certificate(encoded)
                admitted += 1
    return admitted
