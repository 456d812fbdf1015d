"""VM templates: what a signed manifest says, and whether a host may take it.

A template is an image (qcow2), optionally a kernel and initrd for direct
boot, a default VM spec, and metadata, all named by a manifest that a
publisher signs with an Ed25519 key. Every file is named by its SHA-256, so
a copy fetched from anywhere (a directory, a web server, later a peer) is
checked against the manifest, never trusted for where it came from.

The manifest is msgpack in the project's `Sealed` envelope, the format of
certificates and revocation lists: one signing scheme for everything signed,
the strict decoder with its size limits, and the signed body carried as the
exact bytes that were signed, so verification never depends on encoding a
value the same way twice (canonical JSON would need its own canonicaliser,
and a second one in every other implementation).

Pure rules only: no files, no network, no clock. `decode_manifest` turns
untrusted bytes into a `SignedManifest` or raises `MalformedManifest` (and
nothing else); `verify_manifest` checks the signature against the keys a
host trusts; `admit` is the rollback rule; `FileCheck` checks a file's bytes
as they stream past. Every refusal is a `TemplateRefused` with a short
`reason` for scripts and a sentence for people.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Annotated, Final

from novacron.protocol import codec
from novacron.protocol.errors import ProtocolError
from novacron.protocol.keys import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
    key_id,
    signature_valid,
)
from novacron.protocol.messages import Range
from novacron.protocol.sealed import seal, unseal

MANIFEST_FORMAT: Final = 2
"""The manifest layout this code writes: each file with its chunk map's digest, so a copy
fetched from peers is checked piece by piece (`images.chunkmap`)."""

FORMATS: Final = (1, 2)
"""The layouts this code reads (1: no chunk maps; such files come whole from a catalogue);
another is refused, never guessed at."""

MAX_MANIFEST: Final = 64 * 1024  # bytes: a manifest is a few hundred; more is not one
MAX_FILE_SIZE: Final = 1 << 40  # 1 TiB: larger is a lie meant to fill a disk
MAX_MEMORY_MIB: Final = 1024 * 1024
MAX_VCPUS: Final = 256
MAX_TEXT: Final = 1024  # description, OS, publisher name, command line

NAME_RE: Final = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
"""Template names: lower case, so two names never differ only by case on a mirror's
filesystem, and safe as a directory name; no ':' (NAME:VERSION on the command line)."""

VERSION_RE: Final = re.compile(r"(0|[1-9][0-9]{0,8})(\.(0|[1-9][0-9]{0,8})){0,7}")
"""Versions: 1 to 8 dot-separated numbers without leading zeros (1, 12.4, 2024.6.1)."""

ROLES: Final = ("image", "kernel", "initrd")
"""What a file is for: the disk image (always), and a kernel and initrd for direct boot."""

_FILE_SETS: Final = (("image",), ("image", "kernel"), ("image", "kernel", "initrd"))
"""The files a manifest may list, in this order: one order, so one manifest per template."""

_LIMITS: Final = codec.Limits(
    max_frame=MAX_MANIFEST,
    max_str=MAX_TEXT * 4,
    max_bin=MAX_MANIFEST,
    max_array=16,
    max_map=64,
    max_depth=8,
)


# --- refusals -------------------------------------------------------------------


TEMPLATE_LABEL = "novacron/template"
"""The label of a VM made from a template: NAME:VERSION, whose image is its disk's base."""


def template_of(labels: Mapping[str, str]) -> str:
    """The template a VM with `labels` was made from ("" for none)."""
    return labels.get(TEMPLATE_LABEL, "")


class TemplateRefused(ProtocolError):
    """A template cannot be taken; `reason` names why in one word, for scripts."""

    reason = "refused"


class MalformedManifest(TemplateRefused):
    """The bytes are not a manifest this code can read: the only error decoding raises."""

    reason = "malformed"


class Unsigned(TemplateRefused):
    """The manifest carries no signature."""

    reason = "unsigned"


class UntrustedPublisher(TemplateRefused):
    """The manifest names a publisher key this host does not trust."""

    reason = "untrusted-publisher"


class BadSignature(TemplateRefused):
    """The signature does not verify under the key the manifest names."""

    reason = "bad-signature"


class FileMismatch(TemplateRefused):
    """A file's bytes are not the ones the manifest names (different, or too long)."""

    reason = "hash-mismatch"


class FileTruncated(TemplateRefused):
    """A file ended before the size the manifest gives."""

    reason = "truncated"


class RollbackRefused(TemplateRefused):
    """An older version of a template this host already holds in a newer one."""

    reason = "rollback"


class VersionConflict(TemplateRefused):
    """Another manifest with the same name and version, but other contents, is held."""

    reason = "version-conflict"


# --- the manifest ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TemplateFile:
    """One file of a template, named by its content."""

    role: str  # one of ROLES
    sha256: bytes  # SHA-256 of the whole file: its name in every store
    size: Annotated[int, Range(0, MAX_FILE_SIZE)]  # bytes; a shorter copy is truncated
    # SHA-256 of the SHA-256s of its 1 MiB pieces, in order (format 2; b"" in format 1)
    chunk_map: bytes = b""

    @property
    def digest(self) -> str:
        """The hex SHA-256: the file's name in a catalogue and a host's store."""
        return self.sha256.hex()


class Boot(Enum):
    """How a VM made from the template starts."""

    DISK = "disk"  # the image's own boot loader
    KERNEL = "kernel"  # the template's kernel and initrd, with `cmdline`


@dataclass(frozen=True, slots=True)
class DefaultSpec:
    """The VM a template makes unless the operator says otherwise."""

    memory_mib: Annotated[int, Range(1, MAX_MEMORY_MIB)]
    vcpus: Annotated[int, Range(1, MAX_VCPUS)]
    boot: Boot = Boot.DISK
    cmdline: str = ""  # kernel command line (kernel boot only)
    labels: dict[str, str] = field(default_factory=dict)  # given to every VM made from it


@dataclass(frozen=True, slots=True)
class Manifest:
    """What a publisher signs. Field names are the wire names."""

    format: int  # MANIFEST_FORMAT
    name: str  # NAME_RE
    version: str  # VERSION_RE; newer versions of one name replace older ones
    publisher: str  # the publisher's name, for people
    publisher_key: str  # key id (keys.key_id) of the key that signs it
    files: tuple[TemplateFile, ...]  # the image, then a kernel and initrd if it boots one
    spec: DefaultSpec
    os: str = ""  # e.g. "debian-12"
    description: str = ""
    published_at: float = 0.0  # unix seconds, as the publisher's clock said

    @property
    def image(self) -> TemplateFile:
        """The disk image: the template's identity (its SHA-256 names the template)."""
        return self.file("image")

    def file(self, role: str) -> TemplateFile:
        return next(f for f in self.files if f.role == role)

    def has(self, role: str) -> bool:
        return any(f.role == role for f in self.files)

    @property
    def ref(self) -> str:
        """NAME:VERSION, as operators write it."""
        return f"{self.name}:{self.version}"


@dataclass(frozen=True, slots=True)
class SignedManifest:
    """A decoded manifest with the exact bytes it came from; not yet verified."""

    manifest: Manifest
    body: bytes  # the signed bytes
    signature: bytes  # the publisher's Ed25519 signature over `body` (empty: unsigned)
    encoded: bytes  # the whole manifest as published: what stores keep


def manifest_problems(manifest: Manifest) -> list[str]:
    """Everything wrong with a manifest's contents, as sentences; empty when it is valid."""
    problems = []
    if manifest.format not in FORMATS:
        problems.append(f"manifest format {manifest.format} is not one of {FORMATS}")
    if NAME_RE.fullmatch(manifest.name) is None:
        problems.append(f"name {manifest.name[:80]!r} is not 1-63 of a-z 0-9 . _ -")
    if VERSION_RE.fullmatch(manifest.version) is None:
        problems.append(f"version {manifest.version[:80]!r} is not like 1, 1.2 or 2024.6.1")
    roles = tuple(f.role for f in manifest.files)
    if roles not in _FILE_SETS:
        problems.append(f"files {list(roles)!r} are not the image, then a kernel, then an initrd")
    for f in manifest.files:
        if len(f.sha256) != 32:
            problems.append(f"the {f.role[:16]} hash is {len(f.sha256)} bytes, not 32")
        chunk_map = 32 if manifest.format >= 2 else 0
        if len(f.chunk_map) != chunk_map:
            problems.append(
                f"the {f.role[:16]} chunk map digest is {len(f.chunk_map)} bytes, not "
                f"{chunk_map} (format {manifest.format})"
            )
    spec = manifest.spec
    if (spec.boot is Boot.KERNEL) != ("kernel" in roles):
        problems.append("a kernel file goes with boot 'kernel', and only with it")
    texts = (manifest.publisher, manifest.os, manifest.description, spec.cmdline)
    if any(len(text) > MAX_TEXT for text in texts):
        problems.append(f"a text field is longer than {MAX_TEXT} characters")
    if len(spec.labels) > 32 or any(len(k) > 63 or len(v) > 256 for k, v in spec.labels.items()):
        problems.append("labels: at most 32, keys up to 63 and values up to 256 characters")
    return problems


def sign_manifest(key: Ed25519PrivateKey, manifest: Manifest) -> bytes:
    """Encode and sign `manifest` with the publisher's `key` (whose id it must name)."""
    problems = manifest_problems(manifest)
    if manifest.publisher_key != key_id(key):
        problems.append(f"the manifest names key {manifest.publisher_key!r}, not the signer's")
    if problems:
        raise ValueError("; ".join(problems))
    return seal(key, codec.pack_struct(manifest))


def decode_manifest(data: bytes) -> SignedManifest:
    """Decode untrusted bytes; `MalformedManifest` for anything that is not a manifest."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MalformedManifest(f"a manifest is bytes, not {type(data).__name__}")
    if len(data) > MAX_MANIFEST:
        raise MalformedManifest(f"manifest of {len(data)} bytes is over {MAX_MANIFEST}")
    sealed = unseal(data, MalformedManifest, "manifest")
    try:
        manifest = codec.unpack_struct(Manifest, sealed.body, _LIMITS)
    except ProtocolError as exc:
        raise MalformedManifest(f"manifest body is malformed: {exc}") from None
    problems = manifest_problems(manifest)
    if problems:
        raise MalformedManifest("manifest is invalid: " + "; ".join(problems))
    return SignedManifest(manifest, sealed.body, sealed.signature, bytes(data))


def verify_manifest(signed: SignedManifest, trusted: Mapping[str, Ed25519PublicKey]) -> Manifest:
    """The manifest, if one of the `trusted` keys (by key id) signed it; else a refusal."""
    manifest = signed.manifest
    if not signed.signature:
        raise Unsigned(f"template {manifest.ref} is not signed")
    public = trusted.get(manifest.publisher_key)
    if public is None:
        raise UntrustedPublisher(
            f"template {manifest.ref} is signed by publisher key {manifest.publisher_key[:64]!r}"
            f" ({manifest.publisher[:64]}), which this host does not trust"
        )
    if not signature_valid(public, signed.signature, signed.body):
        raise BadSignature(
            f"template {manifest.ref}: the signature does not verify under publisher key "
            f"{manifest.publisher_key}"
        )
    return manifest


def trusted_keys(keys: Iterable[Ed25519PublicKey]) -> dict[str, Ed25519PublicKey]:
    """The trusted set as `verify_manifest` takes it: key id to key."""
    return {key_id(key): key for key in keys}


def parse_ref(text: str) -> tuple[str, str | None]:
    """NAME or NAME:VERSION as (name, version or None); ValueError saying what is wrong."""
    name, sep, version = text.partition(":")
    if NAME_RE.fullmatch(name) is None:
        raise ValueError(f"template name {name[:80]!r} is not 1-63 of a-z 0-9 . _ -")
    if sep and VERSION_RE.fullmatch(version) is None:
        raise ValueError(f"template version {version[:80]!r} is not like 1, 1.2 or 2024.6.1")
    return name, (version if sep else None)


# --- versions and the rollback rule ----------------------------------------------


def version_key(version: str) -> tuple[int, ...]:
    """What versions sort by: their numbers, missing trailing numbers counted as 0."""
    numbers = [int(part) for part in version.split(".")]
    while len(numbers) > 1 and numbers[-1] == 0:
        numbers.pop()
    return tuple(numbers)


def newest(manifests: Iterable[Manifest]) -> Manifest | None:
    """The manifest with the highest version, or None for none."""
    return max(manifests, key=lambda m: version_key(m.version), default=None)


class Admission(Enum):
    """What a host does with a verified manifest."""

    NEW = "new"  # take it
    HELD = "held"  # the same manifest is held already: nothing to do


def admit(incoming: Manifest, held: Iterable[Manifest]) -> Admission:
    """Whether a host holding `held` (manifests of any names) may take `incoming`.

    A version older than the newest one held of the same name is refused: a
    catalogue or mirror replaying an old, validly signed manifest must not
    bring back what a newer version replaced. To go back on purpose, the
    operator removes the newer version first. One version of a name means
    one content: the same version with other contents is refused too.
    """
    same_name = [m for m in held if m.name == incoming.name]
    key = version_key(incoming.version)
    for manifest in same_name:
        if version_key(manifest.version) == key:
            if manifest == incoming:
                return Admission.HELD
            raise VersionConflict(
                f"template {incoming.ref}: this host holds {manifest.ref} with other contents"
            )
    latest = newest(same_name)
    if latest is not None and version_key(latest.version) > key:
        raise RollbackRefused(
            f"template {incoming.ref} is older than {latest.ref}, which this host holds "
            f"(remove {latest.ref} first to go back)"
        )
    return Admission.NEW


# --- file contents ----------------------------------------------------------------


class FileCheck:
    """Checks one file's bytes as they stream past: fed in chunks, then finished.

    Refuses as soon as more bytes arrive than the manifest gives, so a source
    that never stops costs no more than the declared size.
    """

    def __init__(self, expected: TemplateFile, ref: str) -> None:
        self.expected = expected  # what the manifest says the file is
        self.ref = ref  # the template, for messages
        self.received = 0  # bytes fed so far
        self._hash = hashlib.sha256()

    def feed(self, chunk: bytes) -> None:
        """Account for the next `len(chunk)` bytes of the file."""
        self.received += len(chunk)
        if self.received > self.expected.size:
            raise FileMismatch(
                f"template {self.ref}: the {self.expected.role} is longer than the "
                f"{self.expected.size} bytes its manifest gives"
            )
        self._hash.update(chunk)

    def finish(self) -> None:
        """Return if the bytes fed are exactly the file the manifest names, else refuse."""
        if self.received < self.expected.size:
            raise FileTruncated(
                f"template {self.ref}: the {self.expected.role} ended after {self.received} of "
                f"{self.expected.size} bytes"
            )
        if self._hash.digest() != self.expected.sha256:
            raise FileMismatch(
                f"template {self.ref}: the {self.expected.role}'s SHA-256 is "
                f"{self._hash.hexdigest()}, not {self.expected.digest} as its manifest says"
            )
