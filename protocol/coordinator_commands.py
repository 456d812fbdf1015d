"""Coordinator authority: site-link commands the coordinator signs, that any host checks alone.

The gateway is only a relay. Any certified member can advertise a coordinator
URL and win the gateway election, so "it came from the gateway" proves
nothing about the coordinator. The coordinator therefore signs every command
it sends down a site link (its kind, pinned host, arguments, key and issue
time) with the private key of its TLS certificate, and the command carries
that certificate. Every host configured with `coordinator_ca` already trusts
that CA for the link, so the pinned host can check the command without
trusting the gateway: the certificate was issued by a certificate of its own
`coordinator_ca` bundle (directly: no intermediates) and is valid now, it
names the host of one of its configured coordinator URLs (as TLS would), the
signature verifies, the command is pinned to this host, and it was signed
within `MAX_AGE` of this host's clock. Replays within that window are the
caller's to catch: the pinned host's command ledger answers a key it has seen
without running it again.

The TLS key was chosen over a key learned at enrollment because every host
(not only the one that enrolled the site) already has `coordinator_ca`, and
a coordinator's certificate renewal or a second coordinator of an HA pair
needs no new step on the site.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

import msgpack
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from . import codec
from .operators import MAX_AGE, CommandRefused
from .sitelink import Command

DOMAIN = "novacron-coordinator-command/1"

SigningKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


def command_bytes(command: Command) -> bytes:
    """The exact bytes the coordinator signs: every field of the command but the proof and
    the trace context."""
    unsigned = replace(command, certificate=b"", signature=b"", traceparent="")
    return msgpack.packb([DOMAIN, codec.pack_struct(unsigned)], use_bin_type=True)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class CommandSigner:
    """The coordinator's side: its TLS certificate (DER) and the key that goes with it."""

    certificate: bytes
    key: SigningKey

    @classmethod
    def from_files(cls, cert_file: str, key_file: str) -> CommandSigner:
        """The first certificate of `cert_file` (the server's own) and its key."""
        with open(cert_file, "rb") as f:
            cert = x509.load_pem_x509_certificates(f.read())[0]
        with open(key_file, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
        if not isinstance(key, SigningKey):
            raise ValueError(f"{key_file}: unsupported key type {type(key).__name__}")
        return cls(cert.public_bytes(serialization.Encoding.DER), key)

    def sign(self, command: Command, now: float) -> Command:
        stamped = replace(command, issued_at=float(now), certificate=self.certificate)
        data = command_bytes(stamped)
        key = self.key
        if isinstance(key, ec.EllipticCurvePrivateKey):
            signature = key.sign(data, ec.ECDSA(hashes.SHA256()))
        elif isinstance(key, rsa.RSAPrivateKey):
            signature = key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        else:
            signature = key.sign(data)
        return replace(stamped, signature=signature)


@dataclass(frozen=True)
class CoordinatorTrust:
    """The pinned host's side: the CA bundle and the coordinator hosts it was configured with."""

    cas: tuple[x509.Certificate, ...]
    hosts: tuple[str, ...]  # host names or addresses of the configured coordinator URLs

    @classmethod
    def from_config(cls, urls: Sequence[str], ca_file: str) -> CoordinatorTrust:
        """Trust as `coordinator` and `coordinator_ca` say (no CA file: the system's CAs)."""
        if ca_file:
            with open(ca_file, "rb") as f:
                cas = tuple(x509.load_pem_x509_certificates(f.read()))
        else:
            import ssl

            der = ssl.create_default_context().get_ca_certs(binary_form=True)
            cas = tuple(x509.load_der_x509_certificate(d) for d in der)
        hosts = tuple(h for url in urls if (h := urlsplit(url).hostname))
        return cls(cas, hosts)

    def verify(self, command: Command, node_id: str, now: float, *, fresh: bool = True) -> None:
        """Nothing if `command` carries the coordinator's authority for `node_id` at `now`.

        Raises `CommandRefused` naming the first problem. `fresh=False` skips
        the age check, for a key this host already ran (it is answered from
        the ledger, never run again)."""
        if not command.certificate or not command.signature:
            raise CommandRefused("not signed by the coordinator: only the coordinator commands")
        if command.host != node_id:
            raise CommandRefused(f"signed for {command.host or 'no host'}, not {node_id}")
        try:
            cert = x509.load_der_x509_certificate(command.certificate)
        except ValueError:
            raise CommandRefused("the coordinator certificate does not parse") from None
        self._check_certificate(cert, now)
        try:
            _verify_signature(cert, command.signature, command_bytes(command))
        except (InvalidSignature, TypeError, ValueError):
            raise CommandRefused("signature does not verify (altered or forged)") from None
        if fresh and abs(now - command.issued_at) > MAX_AGE:
            raise CommandRefused(
                f"command signed {now - command.issued_at:+.0f} s from this host's clock "
                f"(at most {MAX_AGE:.0f} s either way; check the clocks)"
            )

    def _check_certificate(self, cert: x509.Certificate, now: float) -> None:
        if not any(_issued_by(cert, ca) for ca in self.cas):
            raise CommandRefused("the certificate was not issued by this host's coordinator_ca")
        moment = datetime.datetime.fromtimestamp(now, datetime.UTC)
        if not cert.not_valid_before_utc <= moment <= cert.not_valid_after_utc:
            raise CommandRefused("the coordinator certificate is not valid now")
        if not any(_names(cert, host) for host in self.hosts):
            raise CommandRefused(
                f"the certificate names none of this host's coordinators ({', '.join(self.hosts)})"
            )


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    if cert == ca:  # a self-signed coordinator certificate trusted as such
        return True
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _names(cert: x509.Certificate, host: str) -> bool:
    """Whether `cert`'s subject alternative names cover `host` (as TLS checks it)."""
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        host = host.lower().rstrip(".")
        for name in names.get_values_for_type(x509.DNSName):
            name = name.lower().rstrip(".")
            if name == host or (
                name.startswith("*.") and host.count(".") >= 2 and host.split(".", 1)[1] == name[2:]
            ):
                return True
        return False
    return address in names.get_values_for_type(x509.IPAddress)


def _verify_signature(cert: x509.Certificate, signature: bytes, data: bytes) -> None:
    public = cert.public_key()
    if isinstance(public, ec.EllipticCurvePublicKey):
        public.verify(signature, data, ec.ECDSA(hashes.SHA256()))
    elif isinstance(public, rsa.RSAPublicKey):
        public.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
    elif isinstance(public, ed25519.Ed25519PublicKey):
        public.verify(signature, data)
    else:
        raise TypeError(f"unsupported coordinator key type {type(public).__name__}")
