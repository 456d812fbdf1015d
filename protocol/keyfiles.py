"""Files that hold identity material: private keys, the CA's public key, certificates.

Private keys are PEM (PKCS#8, readable by `openssl pkey`; see `pem`) in files
of mode 0600; they are refused if group or other users could read them. Every file is
written atomically (temporary file in the same directory, created 0600 with
O_EXCL, fsync, rename), so a crash leaves the old file or the new one, never
half of one, and a secret is never readable by others even for an instant.
Certificates and revocation lists are base64 text between BEGIN/END lines.

Every failure is an `IdentityFileError` naming the path: a missing, unreadable
or corrupt file is an operator's problem to fix, not a traceback.
"""

from __future__ import annotations

import os
import re
import secrets
import stat
from pathlib import Path

from . import pem
from .errors import IdentityFileError, KeyFileTooOpen
from .keys import Ed25519PrivateKey, Ed25519PublicKey, NodeKey, X25519PrivateKey

PRIVATE_MODE = 0o600
PUBLIC_MODE = 0o644
MAX_FILE_SIZE = 4 * 1024 * 1024  # no identity file is anywhere near this
CERTIFICATE_LABEL = "NOVACRON CERTIFICATE"
REVOCATION_LABEL = "NOVACRON REVOCATION LIST"

_PEM_PRIVATE = re.compile(rb"-----BEGIN PRIVATE KEY-----.+?-----END PRIVATE KEY-----", re.S)


# --- writing -------------------------------------------------------------------


def write_atomic(path: Path | str, data: bytes, mode: int = PRIVATE_MODE) -> None:
    """Replace `path` with `data` atomically; the file never exists with a wider mode."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_MODE)
    except OSError as exc:
        raise IdentityFileError(f"cannot write {path}: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)  # exact mode, whatever the umask
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise IdentityFileError(f"cannot write {path}: {exc.strerror or exc}") from exc
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (best effort: some filesystems refuse)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_ca_key(path: Path | str, key: Ed25519PrivateKey) -> None:
    """Write the CA's private key, mode 0600."""
    write_signing_key(path, key, "cluster CA private key")


def write_signing_key(path: Path | str, key: Ed25519PrivateKey, what: str) -> None:
    """Write one Ed25519 private key (a CA's, a template publisher's), mode 0600."""
    header = f"# NovaCron {what} (Ed25519). Keep secret: mode 0600.\n".encode()
    write_atomic(path, header + pem.private_pem(key), PRIVATE_MODE)


def write_node_key(path: Path | str, node_key: NodeKey, node_id: str) -> None:
    """Write a node's two private keys (Ed25519 first, then X25519), mode 0600."""
    header = (
        f"# NovaCron node key for {node_id}: Ed25519 (signing), then X25519 (CurveZMQ).\n"
        "# Keep secret: mode 0600.\n"
    ).encode()
    write_atomic(
        path,
        header + pem.private_pem(node_key.signing) + pem.private_pem(node_key.curve),
        PRIVATE_MODE,
    )


def write_ca_public(path: Path | str, public: Ed25519PublicKey) -> None:
    """Write the CA's public key (PEM SubjectPublicKeyInfo), mode 0644: nodes need it."""
    write_public_key(path, public)


def write_public_key(path: Path | str, public: Ed25519PublicKey) -> None:
    """Write an Ed25519 public key (PEM SubjectPublicKeyInfo), mode 0644."""
    write_atomic(path, pem.public_pem(public), PUBLIC_MODE)


def write_armored(path: Path | str, label: str, data: bytes) -> None:
    """Write `data` as base64 between BEGIN/END `label` lines, mode 0644."""
    write_atomic(path, armor(label, data), PUBLIC_MODE)


def armor(label: str, data: bytes) -> bytes:
    """`data` as PEM-style text: it survives copy and paste and e-mail."""
    return pem.encode(label, data)


# --- reading -------------------------------------------------------------------


def read_file(path: Path | str, what: str, *, private: bool = False) -> bytes:
    """Read a small file; for a private one, first refuse a mode open to group/other."""
    path = Path(path)
    try:
        # O_NONBLOCK: a FIFO planted at `path` must not hang us; regular files ignore it.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise IdentityFileError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise IdentityFileError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)  # the file we opened, not whatever the path names now
        if not stat.S_ISREG(info.st_mode):
            raise IdentityFileError(f"{what} {path} is not a regular file")
        if private:
            check_private_mode(path, info.st_mode)
        data = _read_all(fd, MAX_FILE_SIZE + 1)
    except OSError as exc:
        raise IdentityFileError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_FILE_SIZE:
        raise IdentityFileError(f"{what} {path} is too large to be one")
    return data


def _read_all(fd: int, limit: int) -> bytes:
    """Read to end of file or `limit` bytes, whichever comes first."""
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = os.read(fd, limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def check_private_mode(path: Path | str, mode: int) -> None:
    """Refuse a private-key file that group or other users may access."""
    if mode & 0o077:
        raise KeyFileTooOpen(
            f"private key {path} has mode {stat.S_IMODE(mode):04o}, which lets other users "
            f"access it; fix it with: chmod 600 {path}"
        )


def _private_keys(path: Path | str, what: str) -> list[pem.PrivateKey]:
    data = read_file(path, what, private=True)
    keys: list[pem.PrivateKey] = []
    for block in _PEM_PRIVATE.findall(data):
        try:
            keys.append(pem.private_from_pem(block))
        except pem.KeyFormatError as exc:
            raise IdentityFileError(f"{what} {path} is corrupt: {exc}") from None
    return keys


def load_ca_key(path: Path | str) -> Ed25519PrivateKey:
    """Load the CA private key written by `write_ca_key`."""
    return load_signing_key(path, "CA key")


def load_signing_key(path: Path | str, what: str) -> Ed25519PrivateKey:
    """Load one Ed25519 private key written by `write_signing_key`."""
    keys = _private_keys(path, what)
    if len(keys) != 1 or not isinstance(keys[0], Ed25519PrivateKey):
        raise IdentityFileError(f"{what} {path} is corrupt: expected one Ed25519 private key")
    return keys[0]


def load_node_key(path: Path | str) -> NodeKey:
    """Load a node's keys written by `write_node_key`."""
    keys = _private_keys(path, "node key")
    if (
        len(keys) != 2
        or not isinstance(keys[0], Ed25519PrivateKey)
        or not isinstance(keys[1], X25519PrivateKey)
    ):
        raise IdentityFileError(
            f"node key {path} is corrupt: expected an Ed25519 then an X25519 private key"
        )
    return NodeKey(signing=keys[0], curve=keys[1])


def load_ca_public(path: Path | str) -> Ed25519PublicKey:
    """Load the CA public key written by `write_ca_public`."""
    return load_public_key(path, "CA public key")


def load_public_key(path: Path | str, what: str) -> Ed25519PublicKey:
    """Load an Ed25519 public key written by `write_public_key` (or `openssl pkey -pubout`)."""
    data = read_file(path, what)
    try:
        public = pem.public_from_pem(data)
    except pem.KeyFormatError as exc:
        raise IdentityFileError(f"{what} {path} is corrupt: {exc}") from None
    if not isinstance(public, Ed25519PublicKey):
        raise IdentityFileError(f"{what} {path} is not an Ed25519 key")
    return public


def read_armored(path: Path | str, label: str, what: str) -> bytes:
    """Read the bytes between BEGIN/END `label` lines (the signature is not checked)."""
    return dearmor(read_file(path, what), label, f"{what} {path}")


def dearmor(text: bytes, label: str, what: str) -> bytes:
    """Inverse of `armor`; `IdentityFileError` naming `what` if the text is not one."""
    try:
        return pem.decode(text, label)
    except pem.NoPemBlock:
        raise IdentityFileError(
            f"{what} is not a {label.lower()} file (no BEGIN/END lines)"
        ) from None
    except pem.KeyFormatError as exc:
        raise IdentityFileError(f"{what} is corrupt: {exc}") from None


def read_certificate(path: Path | str) -> bytes:
    """The certificate bytes in `path` (decode and verify with `certificates`)."""
    return read_armored(path, CERTIFICATE_LABEL, "certificate")


def write_certificate(path: Path | str, encoded: bytes) -> None:
    """Write certificate bytes as a text file, mode 0644."""
    write_armored(path, CERTIFICATE_LABEL, encoded)


def read_revocation_list(path: Path | str) -> bytes:
    """The signed revocation list in `path` (verify with `revocation`)."""
    return read_armored(path, REVOCATION_LABEL, "revocation list")


def write_revocation_list(path: Path | str, encoded: bytes) -> None:
    """Write a signed revocation list as a text file, mode 0644."""
    write_armored(path, REVOCATION_LABEL, encoded)
