"""An operator's signed command, as `nova` sends it for another host to check.

`nova host drain HOST --operator alice.crt` signs "drain HOST" with alice's
operator key (`alice.key` next to the certificate, or `--operator-key`);
the local agent relays it over the mesh and HOST's agent checks it
(`protocol/operators.py`). `NOVACRON_OPERATOR` names the certificate when the
flag is not given, so a field engineer sets it once per shell.
"""

from __future__ import annotations

import argparse
import base64
import os
import time
from pathlib import Path
from typing import Any

from novacron.protocol import keyfiles
from novacron.protocol.errors import IdentityError
from novacron.protocol.operators import sign_command

from .common import CommandError

OPERATOR_ENV = "NOVACRON_OPERATOR"


def operator_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--operator",
        metavar="CERT",
        help=f"your operator certificate, to command another host (default ${OPERATOR_ENV})",
    )
    parser.add_argument(
        "--operator-key", metavar="KEY", help="its key (default: CERT with .key instead of .crt)"
    )


def signed_command(args: argparse.Namespace, action: str, target: str) -> dict[str, Any] | None:
    """The body's `operator` object for `action` on `target`, or None without a certificate."""
    cert_path = args.operator or os.environ.get(OPERATOR_ENV)
    if not cert_path:
        return None
    cert_file = Path(cert_path)
    key_file = Path(args.operator_key) if args.operator_key else cert_file.with_suffix(".key")
    try:
        certificate = keyfiles.read_certificate(cert_file)
        key = keyfiles.load_node_key(key_file)
    except IdentityError as exc:
        raise CommandError(f"operator identity: {exc}") from None
    command = sign_command(key, certificate, action, target, os.urandom(8).hex(), time.time())
    return {
        "action": command.action,
        "target": command.target,
        "request_id": command.request_id,
        "issued_at": command.issued_at,
        "certificate": base64.b64encode(command.certificate).decode(),
        "signature": base64.b64encode(command.signature).decode(),
    }
