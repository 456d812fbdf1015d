"""Key, certificate and revocation files: atomic, private where they must be, clear errors."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from novacron.protocol import keyfiles
from novacron.protocol.errors import IdentityError, IdentityFileError, KeyFileTooOpen
from novacron.protocol.keys import Ed25519PrivateKey, NodeKey, private_bytes, public_bytes


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def loose_umask() -> Iterator[None]:
    """A umask that would make new files world-readable, to prove we do not rely on it."""
    old = os.umask(0)
    yield
    os.umask(old)


def test_atomic_write_creates_0600_file_even_with_umask_0(
    tmp_path: Path, loose_umask: None
) -> None:
    path = tmp_path / "secret.key"
    keyfiles.write_atomic(path, b"secret")
    assert path.read_bytes() == b"secret"
    assert mode(path) == 0o600
    assert os.listdir(tmp_path) == ["secret.key"]  # no temporary file left behind


def test_atomic_write_replaces_and_keeps_0600(tmp_path: Path) -> None:
    path = tmp_path / "secret.key"
    path.write_bytes(b"old")
    path.chmod(0o644)
    keyfiles.write_atomic(path, b"new")
    assert path.read_bytes() == b"new"
    assert mode(path) == 0o600


def test_temporary_file_is_0600_from_creation(
    tmp_path: Path, loose_umask: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Catch the temporary file at the moment it is renamed: it was never world-readable."""
    seen: list[int] = []
    real_replace = os.replace

    def spy(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        seen.append(stat.S_IMODE(os.stat(src).st_mode))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    keyfiles.write_atomic(tmp_path / "ca.key", b"k")
    assert seen == [0o600]


def test_public_files_are_0644_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        keyfiles.write_certificate(tmp_path / "n.crt", b"cert")
    finally:
        os.umask(old)
    assert mode(tmp_path / "n.crt") == 0o644


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "ca.key"
    keyfiles.write_atomic(path, b"old")

    def broken(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(IdentityFileError, match=r"cannot write .*ca.key: No space left"):
        keyfiles.write_atomic(path, b"new")
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["ca.key"]


def test_write_into_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(IdentityFileError, match=r"cannot write .*nope/ca.key"):
        keyfiles.write_atomic(tmp_path / "nope" / "ca.key", b"k")


def test_ca_key_round_trip(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    keyfiles.write_ca_key(tmp_path / "ca.key", key)
    keyfiles.write_ca_public(tmp_path / "ca.pub", key.public_key())
    loaded = keyfiles.load_ca_key(tmp_path / "ca.key")
    assert private_bytes(loaded) == private_bytes(key)
    assert public_bytes(keyfiles.load_ca_public(tmp_path / "ca.pub")) == public_bytes(
        key.public_key()
    )
    assert mode(tmp_path / "ca.key") == 0o600
    assert mode(tmp_path / "ca.pub") == 0o644
    assert b"BEGIN PRIVATE KEY" in (tmp_path / "ca.key").read_bytes()  # openssl can read it


def test_node_key_round_trip_keeps_both_keys(tmp_path: Path) -> None:
    key = NodeKey.generate()
    keyfiles.write_node_key(tmp_path / "edge-1.key", key, "edge-1")
    loaded = keyfiles.load_node_key(tmp_path / "edge-1.key")
    assert private_bytes(loaded.signing) == private_bytes(key.signing)
    assert private_bytes(loaded.curve) == private_bytes(key.curve)
    assert loaded.curve_public_z85() == key.curve_public_z85()


def test_certificate_and_revocation_files_round_trip(tmp_path: Path) -> None:
    data = bytes(range(256)) * 3
    keyfiles.write_certificate(tmp_path / "n.crt", data)
    keyfiles.write_revocation_list(tmp_path / "revoked.crl", data[::-1])
    assert keyfiles.read_certificate(tmp_path / "n.crt") == data
    assert keyfiles.read_revocation_list(tmp_path / "revoked.crl") == data[::-1]
    assert (tmp_path / "n.crt").read_text().startswith("-----BEGIN NOVACRON CERTIFICATE-----\n")


@pytest.mark.parametrize("too_open", [0o644, 0o640, 0o604, 0o660, 0o606, 0o700 | 0o007])
def test_private_key_readable_by_others_is_refused_with_the_fix(
    tmp_path: Path, too_open: int
) -> None:
    path = tmp_path / "ca.key"
    keyfiles.write_ca_key(path, Ed25519PrivateKey.generate())
    path.chmod(too_open)
    with pytest.raises(KeyFileTooOpen) as info:
        keyfiles.load_ca_key(path)
    message = str(info.value)
    assert str(path) in message
    assert f"mode {too_open:04o}" in message
    assert f"chmod 600 {path}" in message


def test_node_key_too_open_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "edge-1.key"
    keyfiles.write_node_key(path, NodeKey.generate(), "edge-1")
    path.chmod(0o640)
    with pytest.raises(KeyFileTooOpen, match="chmod 600"):
        keyfiles.load_node_key(path)


@pytest.mark.parametrize("strict", [0o600, 0o400])
def test_owner_only_modes_are_accepted(tmp_path: Path, strict: int) -> None:
    path = tmp_path / "ca.key"
    keyfiles.write_ca_key(path, Ed25519PrivateKey.generate())
    path.chmod(strict)
    keyfiles.load_ca_key(path)


def test_missing_key_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(IdentityFileError, match=r"CA key .*ca.key does not exist"):
        keyfiles.load_ca_key(tmp_path / "ca.key")


def test_directory_instead_of_key_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(IdentityFileError, match="not a regular file"):
        keyfiles.load_node_key(tmp_path)


def test_unreadable_key_file_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "ca.key"
    keyfiles.write_ca_key(path, Ed25519PrivateKey.generate())

    def denied(*args: object) -> int:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "open", denied)  # we run as root: permissions would not stop us
    with pytest.raises(IdentityFileError, match=r"cannot read CA key .*ca.key: Permission denied"):
        keyfiles.load_ca_key(path)


def corrupt_variants(good: bytes) -> dict[str, bytes]:
    body_start = good.index(b"-----BEGIN PRIVATE KEY-----\n") + 28
    return {
        "empty": b"",
        "text": b"hello\n",
        "truncated": good[: len(good) // 2],
        "bad base64": good[:body_start] + b"!!!!" + good[body_start + 4 :],
        "wrong key bytes": good[:body_start] + b"AAAA" + good[body_start + 4 :],
    }


@pytest.mark.parametrize("variant", ["empty", "text", "truncated", "bad base64", "wrong key bytes"])
def test_corrupt_key_files_are_clear_errors(tmp_path: Path, variant: str) -> None:
    path = tmp_path / "edge-1.key"
    keyfiles.write_node_key(path, NodeKey.generate(), "edge-1")
    keyfiles.write_atomic(path, corrupt_variants(path.read_bytes())[variant])
    with pytest.raises(IdentityFileError, match=r"node key .*edge-1.key is corrupt"):
        keyfiles.load_node_key(path)


def test_ca_key_is_not_a_node_key_and_vice_versa(tmp_path: Path) -> None:
    keyfiles.write_ca_key(tmp_path / "ca.key", Ed25519PrivateKey.generate())
    keyfiles.write_node_key(tmp_path / "n.key", NodeKey.generate(), "n")
    with pytest.raises(IdentityFileError, match="expected an Ed25519 then an X25519"):
        keyfiles.load_node_key(tmp_path / "ca.key")
    with pytest.raises(IdentityFileError, match="expected one Ed25519 private key"):
        keyfiles.load_ca_key(tmp_path / "n.key")


def test_corrupt_public_and_certificate_files_are_clear_errors(tmp_path: Path) -> None:
    (tmp_path / "ca.pub").write_text("not a key\n")
    (tmp_path / "a.crt").write_text("junk\n")
    (tmp_path / "b.crt").write_text(
        "-----BEGIN NOVACRON CERTIFICATE-----\n@@@\n-----END NOVACRON CERTIFICATE-----\n"
    )
    with pytest.raises(IdentityFileError, match=r"CA public key .*ca.pub is corrupt"):
        keyfiles.load_ca_public(tmp_path / "ca.pub")
    with pytest.raises(IdentityFileError, match=r"a.crt is not a novacron certificate file"):
        keyfiles.read_certificate(tmp_path / "a.crt")
    with pytest.raises(IdentityFileError, match=r"b.crt is corrupt"):
        keyfiles.read_certificate(tmp_path / "b.crt")


def test_every_file_error_is_an_identity_error() -> None:
    assert issubclass(KeyFileTooOpen, IdentityFileError)
    assert issubclass(IdentityFileError, IdentityError)
