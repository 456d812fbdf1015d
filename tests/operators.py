"""An operator identity for tests: a CA, an operator certificate and the commands it signs."""

from __future__ import annotations

import base64
import os
import time
from pathlib import Path
from typing import Any

from novacron.protocol import keyfiles
from novacron.protocol.certificates import issue_certificate
from novacron.protocol.keys import Ed25519PrivateKey, NodeKey
from novacron.protocol.operators import OperatorCommand, sign_command, verify_command


class Operator:
    """`alice`, certified with the operator role by a fresh CA; her files under `directory`."""

    def __init__(
        self,
        directory: Path,
        name: str = "alice",
        role: str = "operator",
        ca: Ed25519PrivateKey | None = None,
    ) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.ca = ca or Ed25519PrivateKey.generate()
        self.key = NodeKey.generate()
        now = time.time()
        self.certificate = issue_certificate(
            self.ca,
            name,
            self.key.signing_public,
            self.key.curve_public,
            not_before=now - 60,
            not_after=now + 86400,
            serial=7,
            roles=(role,) if role != "node" else (),
        )
        self.cert_file = directory / f"{name}.crt"
        keyfiles.write_certificate(self.cert_file, self.certificate.encoded)
        keyfiles.write_node_key(directory / f"{name}.key", self.key, name)

    def command(
        self, action: str, target: str, *, issued_at: float | None = None
    ) -> OperatorCommand:
        """A command she signed now (or at `issued_at`), with a fresh id."""
        when = time.time() if issued_at is None else issued_at
        cert = self.certificate.encoded
        return sign_command(self.key, cert, action, target, os.urandom(8).hex(), when)

    def body(self, action: str, target: str) -> dict[str, Any]:
        """The `operator` object of an API request body, as `nova` sends it."""
        command = self.command(action, target)
        return {
            "action": command.action,
            "target": command.target,
            "request_id": command.request_id,
            "issued_at": command.issued_at,
            "certificate": base64.b64encode(command.certificate).decode(),
            "signature": base64.b64encode(command.signature).decode(),
        }

    def authority(self, command: OperatorCommand) -> str:
        """What a host of her CA checks (`DrainRequests`' authority)."""
        return verify_command(command, self.ca.public_key(), time.time(), None).node_id
