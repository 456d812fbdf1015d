"""Operator authority: commands an operator signs, that any host can check alone.

A host obeys a command about itself from three sources: its own operator (the
local root-only socket, nothing to check here), an operator identity the CA
certified for that role, or, later, the coordinator. A mesh member is not an
operator: its node certificate proves it runs an agent, not that a person
asked for anything.

An operator holds a certificate with the `operator` role (`nova ca issue NAME
--role operator`) and its key. A command is a small signed statement: what to
do, to which host, a unique id, and when it was signed. The host checks, in
order of cost: freshness (within `MAX_AGE` of its own clock, so a captured
command cannot be replayed next week; the id is remembered within that window
so it cannot be replayed at all), then the certificate (CA, validity,
revocation, role), then the signature. The relaying agent can delay a
command but not alter or forge one.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgpack

from .certificates import Certificate, verify_certificate
from .errors import IdentityError
from .keys import Ed25519PrivateKey, Ed25519PublicKey, NodeKey, signature_valid
from .revocation import RevocationList

DOMAIN = "novacron-operator-command/1"
OPERATOR_ROLE = "operator"
MAX_AGE = 300.0  # seconds a signed command stays valid either side of the host's clock


class CommandRefused(IdentityError):
    """The command does not carry an operator's authority; the message says why."""


@dataclass(frozen=True, slots=True)
class OperatorCommand:
    """What an operator signed (the fields a host checks, and the signature over them)."""

    action: str  # e.g. "drain", "undrain"
    target: str  # the node id of the host that must act
    request_id: str  # unique per command: a second use of it is a replay
    issued_at: float  # unix seconds when the operator signed it
    certificate: bytes  # the operator's certificate, as issued
    signature: bytes  # Ed25519 by the certificate's key over `command_bytes`


def command_bytes(action: str, target: str, request_id: str, issued_at: float) -> bytes:
    """The exact bytes an operator signs for a command."""
    fields = [DOMAIN, action, target, request_id, float(issued_at)]
    return msgpack.packb(fields, use_bin_type=True)  # type: ignore[no-any-return]


def sign_command(
    key: NodeKey | Ed25519PrivateKey,
    certificate: bytes,
    action: str,
    target: str,
    request_id: str,
    issued_at: float,
) -> OperatorCommand:
    """An operator's signed command (the caller's key must match `certificate`)."""
    signing = key.signing if isinstance(key, NodeKey) else key
    signature = signing.sign(command_bytes(action, target, request_id, issued_at))
    return OperatorCommand(action, target, request_id, issued_at, certificate, signature)


def verify_command(
    command: OperatorCommand,
    ca_public: Ed25519PublicKey,
    now: float,
    revocations: RevocationList | None,
) -> Certificate:
    """The operator's certificate if `command` carries operator authority at `now`.

    Raises `CommandRefused` naming the first problem. Replays within the
    window are the caller's to catch (it remembers request ids).
    """
    if abs(now - command.issued_at) > MAX_AGE:
        raise CommandRefused(
            f"command signed {now - command.issued_at:+.0f} s from this host's clock "
            f"(at most {MAX_AGE:.0f} s either way; check the clocks)"
        )
    if not command.certificate:
        raise CommandRefused("no operator certificate: only an operator may command another host")
    try:
        cert = verify_certificate(command.certificate, ca_public, now, revocations)
    except IdentityError as exc:
        raise CommandRefused(f"operator certificate refused: {exc}") from None
    if not cert.has_role(OPERATOR_ROLE):
        raise CommandRefused(
            f"{cert.label} has no operator role: a member cannot command another host"
        )
    data = command_bytes(command.action, command.target, command.request_id, command.issued_at)
    if not signature_valid(cert.signing_public_key(), command.signature, data):
        raise CommandRefused(f"signature does not verify under {cert.label} (altered or forged)")
    return cert
