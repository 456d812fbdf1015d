"""`nova ca`: the operator's cluster certificate authority."""

from __future__ import annotations

import argparse
import base64
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from novacron.agent import client
from novacron.protocol import keyfiles
from novacron.protocol.certificates import (
    MAX_SERIAL,
    Certificate,
    check_signature,
    decode_certificate,
    format_time,
    issue_certificate,
    verify_certificate,
)
from novacron.protocol.errors import IdentityError
from novacron.protocol.keys import Ed25519PrivateKey, Ed25519PublicKey, NodeKey, key_id
from novacron.protocol.revocation import (
    RevocationList,
    sign_revocation_list,
    verify_revocation_list,
)

from .ca_commands import CA_DIR_ENV, DEFAULT_CA_DIR
from .common import (
    EXIT_FAILED,
    EXIT_OK,
    CommandError,
    Output,
    UsageError,
    ask,
)

CLOCK_SKEW = 300.0  # seconds a new certificate is backdated, for hosts whose clock lags


@dataclass(frozen=True)
class CaFiles:
    """The files of a cluster CA directory."""

    root: Path

    @property
    def key(self) -> Path:
        return self.root / "ca.key"  # Ed25519 private key, 0600: only the operator has it

    @property
    def public(self) -> Path:
        return self.root / "ca.pub"  # Ed25519 public key, 0644: every node has it

    @property
    def revocations(self) -> Path:
        return self.root / "revoked.crl"  # CA-signed revocation list, 0644

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> CaFiles:
        """`--dir`, else $NOVACRON_CA_DIR, else /etc/novacron/ca."""
        return cls(Path(args.dir or os.environ.get(CA_DIR_ENV) or DEFAULT_CA_DIR))

    def load_key(self) -> Ed25519PrivateKey:
        """The CA private key, or a hint to run `nova ca init` if there is none."""
        if not self.key.exists() and not self.public.exists():
            raise CommandError(
                f"no CA in {self.root}: create one with 'nova ca init --dir {self.root}'"
            )
        return keyfiles.load_ca_key(self.key)

    def load_revocations(self, ca_public: Ed25519PublicKey) -> RevocationList | None:
        """The current revocation list, verified, or None if nothing was ever revoked."""
        if not self.revocations.exists():
            return None
        return verify_revocation_list(keyfiles.read_revocation_list(self.revocations), ca_public)


def ca_init(args: argparse.Namespace, out: Output) -> int:
    """Create the CA key (0600) and public key (0644); refuse to replace one without --force."""
    ca = CaFiles.from_args(args)
    existing = [p for p in (ca.key, ca.public) if p.exists()]
    if existing and not args.force:
        raise CommandError(
            f"a CA already exists in {ca.root} ({existing[0].name}); --force replaces it "
            "and invalidates every certificate it issued"
        )
    _make_dir(ca.root, 0o700)
    key = Ed25519PrivateKey.generate()
    keyfiles.write_ca_key(ca.key, key)
    keyfiles.write_ca_public(ca.public, key.public_key())
    ca.revocations.unlink(missing_ok=True)  # signed by the old CA, if any
    data = {
        "ca_dir": str(ca.root),
        "key_file": str(ca.key),
        "public_file": str(ca.public),
        "key_id": key_id(key),
    }
    out.result(
        data,
        [
            f"created cluster CA {data['key_id']} in {ca.root}",
            f"  private key: {ca.key} (mode 0600; keep it secret, off the nodes)",
            f"  public key:  {ca.public} (copy to every node)",
        ],
    )
    return EXIT_OK


def ca_issue(args: argparse.Namespace, out: Output) -> int:
    """Generate a node's Ed25519 and X25519 keys and a CA-signed certificate for them."""
    ca = CaFiles.from_args(args)
    ca_key = ca.load_key()
    outdir = Path(args.out)
    key_file, cert_file = outdir / f"{args.node_id}.key", outdir / f"{args.node_id}.crt"
    existing = [p for p in (key_file, cert_file) if p.exists()]
    if args.renew:
        node_key = _key_to_renew(key_file)
    elif existing and not args.force:
        raise CommandError(
            f"{existing[0]} already exists; --force replaces it, --renew keeps its key"
        )
    else:
        node_key = NodeKey.generate()
    now = time.time()
    cert = issue_certificate(
        ca_key,
        args.node_id,
        node_key.signing_public,
        node_key.curve_public,
        not_before=now - CLOCK_SKEW,
        not_after=now + args.days * 86400.0,
        serial=secrets.randbelow(2**63 - 1) + 1,
        roles=() if args.role == "node" else (args.role,),
    )
    _make_dir(outdir, 0o755)
    if not args.renew:
        keyfiles.write_node_key(key_file, node_key, args.node_id)
    keyfiles.write_certificate(cert_file, cert.encoded)
    data = {**_describe(cert), "key_file": str(key_file), "cert_file": str(cert_file)}
    out.result(
        data,
        [
            f"issued certificate for node {cert.node_id}",
            *_describe_lines(cert),
            f"  key file:     {key_file} (mode 0600)",
            f"  certificate:  {cert_file}",
        ],
    )
    return EXIT_OK


def _key_to_renew(key_file: Path) -> NodeKey:
    """The key pair a renewed certificate is for: the node keeps its identity."""
    if not key_file.exists():
        raise CommandError(f"--renew: {key_file} does not exist (issue without --renew first)")
    try:
        return keyfiles.load_node_key(key_file)
    except IdentityError as exc:
        raise CommandError(f"--renew: {exc}") from None


def ca_revoke(args: argparse.Namespace, out: Output) -> int:
    """Add a serial to the CA's signed revocation list (idempotent)."""
    ca = CaFiles.from_args(args)
    ca_key = ca.load_key()
    serial = _serial_to_revoke(args.target, ca_key.public_key())
    current = ca.load_revocations(ca_key.public_key())
    serials = current.serials if current else ()
    already = serial in serials
    if not already:
        # A newer list must say so even if the clock stepped back since the last one.
        issued_at = max(time.time(), current.issued_at + 0.001 if current else 0.0)
        signed = sign_revocation_list(ca_key, (*serials, serial), issued_at=issued_at)
        keyfiles.write_revocation_list(ca.revocations, signed)
        serials = (*serials, serial)
    data = {
        "serial": serial,
        "already_revoked": already,
        "revoked_count": len(serials),
        "revocation_file": str(ca.revocations),
    }
    verb = "was already revoked" if already else "revoked"
    out.result(
        data, [f"serial {serial} {verb}; {data['revoked_count']} revoked in {ca.revocations}"]
    )
    return EXIT_OK


def _serial_to_revoke(target: str, ca_public: Ed25519PublicKey) -> int:
    """A serial from the command line, or from a certificate file this CA issued."""
    if Path(target).is_file():
        cert = decode_certificate(keyfiles.read_certificate(target))
        check_signature(cert, ca_public)
        return cert.serial
    if re.fullmatch(r"[0-9]+", target) and int(target) <= MAX_SERIAL:
        return int(target)
    raise UsageError(f"{target!r} is neither a serial number nor a certificate file")


def ca_publish(args: argparse.Namespace, out: Output) -> int:
    """Give the CA's revocation list to the local agent, which adopts it and gossips it."""
    path = Path(args.crl) if args.crl else CaFiles.from_args(args).revocations
    data = keyfiles.read_revocation_list(path)
    body = {"crl": base64.b64encode(data).decode()}
    answer, code = ask(out, client.post, "/v1/revocations", body, args.socket)
    if answer is None:
        return code
    state = "adopted and spreading" if answer["adopted"] else "not newer than the agent's"
    revoked = ", ".join(answer["revoked_members"]) or "none"
    out.result(
        answer,
        [f"revocation list of {answer['issued_at']}: {state}", f"  members expelled: {revoked}"],
    )
    return EXIT_OK


def ca_show(args: argparse.Namespace, out: Output) -> int:
    """Print a certificate's contents, then verify it against the CA (exit 1 if invalid)."""
    ca = CaFiles.from_args(args)
    data = keyfiles.read_certificate(args.certfile)
    cert = decode_certificate(data)
    details = _describe(cert)
    try:
        ca_public = keyfiles.load_ca_public(ca.public)
        verify_certificate(data, ca_public, time.time(), ca.load_revocations(ca_public))
    except IdentityError as exc:
        if not out.json:
            out.result(details, _describe_lines(cert))
        out.error(str(exc), {**details, "verified": False})
        return EXIT_FAILED
    lines = [*_describe_lines(cert), f"  status:       valid (verified against CA in {ca.root})"]
    out.result({**details, "verified": True}, lines)
    return EXIT_OK


def _describe(cert: Certificate) -> dict[str, Any]:
    return {
        "node_id": cert.node_id,
        "serial": cert.serial,
        "not_before": format_time(cert.not_before),
        "not_after": format_time(cert.not_after),
        "issuer": cert.issuer,
        "fingerprint": f"sha256:{cert.fingerprint}",
        "curve_public_z85": cert.curve_public_z85(),
        "roles": list(cert.body.roles) or ["node"],
    }


def _describe_lines(cert: Certificate) -> list[str]:
    d = _describe(cert)
    return [
        f"  node id:      {d['node_id']}",
        f"  serial:       {d['serial']}",
        f"  valid from:   {d['not_before']}",
        f"  valid until:  {d['not_after']}",
        f"  issuer CA:    {d['issuer']}",
        f"  fingerprint:  {d['fingerprint']}",
        f"  curve key:    {d['curve_public_z85']}",
    ]


def _make_dir(path: Path, mode: int) -> None:
    try:
        path.mkdir(mode=mode, parents=True, exist_ok=True)
    except OSError as exc:
        raise CommandError(f"cannot create directory {path}: {exc.strerror or exc}") from None
