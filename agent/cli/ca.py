"""`nova ca`: the operator's cluster certificate authority."""

from __future__ import annotations

import argparse
import base64
import json
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
    make_dir,
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

    @property
    def ledger(self) -> Path:
        return self.root / "issued.jsonl"  # one line per certificate issued, 0600

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

    def record_issued(self, cert: Certificate) -> None:
        """Append `cert` to the ledger, durably, before its files are written: a serial
        the ledger lacks was never handed out (by this CA since the ledger began)."""
        entry = json.dumps(_describe(cert), sort_keys=True) + "\n"
        if not self.ledger.exists():  # a CA made by an older nova: it knows no older serials
            entry = json.dumps({"ledger_since": format_time(time.time())}) + "\n" + entry
        try:
            fd = os.open(self.ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, entry.encode())
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise CommandError(f"cannot record the certificate in {self.ledger}: {exc}") from None

    def issued(self) -> tuple[dict[int, str], str | None]:
        """(serial -> node id of every certificate in the ledger, and when the ledger
        began if it does not go back to `ca init`)."""
        issued, since = {}, None
        for line in self.ledger.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
                if "ledger_since" in entry:
                    since = str(entry["ledger_since"])
                else:
                    issued[int(entry["serial"])] = str(entry["node_id"])
            except (ValueError, KeyError, TypeError, AttributeError):
                continue  # a line cut short by a crash: its certificate was never written
        return issued, since

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
    make_dir(ca.root, 0o700)
    key = Ed25519PrivateKey.generate()
    keyfiles.write_ca_key(ca.key, key)
    keyfiles.write_ca_public(ca.public, key.public_key())
    ca.revocations.unlink(missing_ok=True)  # signed by the old CA, if any
    keyfiles.write_atomic(ca.ledger, b"", 0o600)  # from here on, every serial issued
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
    make_dir(outdir, 0o755)
    ca.record_issued(cert)
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
    """Add a serial this CA issued to its signed revocation list (idempotent)."""
    ca = CaFiles.from_args(args)
    ca_key = ca.load_key()
    serial, node_id = _to_revoke(ca, args.target, ca_key.public_key())
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
        "node_id": node_id,
        "already_revoked": already,
        "revoked_count": len(serials),
        "revocation_file": str(ca.revocations),
    }
    verb = "was already revoked" if already else "revoked"
    out.result(
        data,
        [
            f"serial {serial} (node {node_id}) {verb}; "
            f"{data['revoked_count']} revoked in {ca.revocations}"
        ],
    )
    return EXIT_OK


def _to_revoke(ca: CaFiles, target: str, ca_public: Ed25519PublicKey) -> tuple[int, str]:
    """(serial, node id) from a certificate file this CA signed, or from a serial it issued.

    Anything but digits names a file, so a missing file is "does not exist", as
    for `ca show`; a serial must be in the CA's ledger, so a mistyped one is
    refused instead of revoking nothing while looking done.
    """
    if os.path.isfile(target) or not re.fullmatch(r"[0-9]+", target):  # False on any OSError
        cert = decode_certificate(keyfiles.read_certificate(target))
        check_signature(cert, ca_public)
        return cert.serial, cert.node_id
    if len(target) > len(str(MAX_SERIAL)) or int(target) > MAX_SERIAL:
        raise UsageError(f"serial {target[:40]} is out of range (at most {MAX_SERIAL})")
    serial = int(target)
    if not ca.ledger.exists():
        raise CommandError(
            f"the CA in {ca.root} keeps no ledger of the serials it issued (it was made by "
            "an older nova): revoke by certificate file"
        )
    issued, since = ca.issued()
    if serial not in issued and since:
        raise CommandError(
            f"serial {serial} is not in the ledger of the CA in {ca.root} "
            f"({ca.ledger.name}, kept since {since}); revoke an older certificate by its file"
        )
    if serial not in issued:
        raise CommandError(
            f"serial {serial} was never issued by the CA in {ca.root}; "
            "check the number with 'nova ca show CERTFILE', or revoke by file"
        )
    return serial, issued[serial]


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
