"""Template manifests and their rules, without files or network: signing and trust,
the rollback rule, version order, and the check of a file's bytes as they stream."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest

from novacron.agent.core.templates import (
    Admission,
    BadSignature,
    Boot,
    DefaultSpec,
    FileCheck,
    FileMismatch,
    FileTruncated,
    MalformedManifest,
    Manifest,
    RollbackRefused,
    TemplateFile,
    Unsigned,
    UntrustedPublisher,
    VersionConflict,
    admit,
    decode_manifest,
    parse_ref,
    sign_manifest,
    trusted_keys,
    verify_manifest,
    version_key,
)
from novacron.protocol import codec
from novacron.protocol.keys import Ed25519PrivateKey, key_id
from novacron.protocol.sealed import Sealed

PUBLISHER = Ed25519PrivateKey.generate()
IMAGE = b"QFI\xfb" + bytes(range(256)) * 40


def manifest(version: str = "1.0", image: bytes = IMAGE, **changes: object) -> Manifest:
    made = Manifest(
        format=1,
        name="debian-12",
        version=version,
        publisher="acme",
        publisher_key=key_id(PUBLISHER),
        files=(TemplateFile("image", hashlib.sha256(image).digest(), len(image)),),
        spec=DefaultSpec(memory_mib=256, vcpus=1, labels={"os": "debian"}),
        os="debian-12",
        description="a test image",
    )
    return dataclasses.replace(made, **changes)  # type: ignore[arg-type]


TRUSTED = trusted_keys([PUBLISHER.public_key()])


def test_a_signed_manifest_decodes_and_verifies_to_what_was_signed() -> None:
    data = sign_manifest(PUBLISHER, manifest())
    assert verify_manifest(decode_manifest(data), TRUSTED) == manifest()


def test_an_unsigned_manifest_is_refused() -> None:
    body = codec.pack_struct(manifest())
    data = codec.pack_struct(Sealed(body=body, signature=b""))
    with pytest.raises(Unsigned, match="not signed"):
        verify_manifest(decode_manifest(data), TRUSTED)


def test_a_manifest_by_a_key_this_host_does_not_trust_is_refused() -> None:
    other = Ed25519PrivateKey.generate()
    data = sign_manifest(other, manifest(publisher_key=key_id(other)))
    with pytest.raises(UntrustedPublisher, match=key_id(other)):
        verify_manifest(decode_manifest(data), TRUSTED)


def test_a_manifest_that_names_a_trusted_key_but_was_signed_by_another_is_refused() -> None:
    impostor = Ed25519PrivateKey.generate()
    body = codec.pack_struct(manifest())  # names PUBLISHER's key id
    data = codec.pack_struct(Sealed(body=body, signature=impostor.sign(body)))
    with pytest.raises(BadSignature):
        verify_manifest(decode_manifest(data), TRUSTED)


def test_a_manifest_whose_image_hash_was_swapped_under_its_signature_is_refused() -> None:
    signed = codec.unpack_struct(Sealed, sign_manifest(PUBLISHER, manifest()))
    swapped = codec.pack_struct(manifest(image=b"malware"))
    data = codec.pack_struct(Sealed(body=swapped, signature=signed.signature))
    with pytest.raises(BadSignature):
        verify_manifest(decode_manifest(data), TRUSTED)


@pytest.mark.parametrize(
    "changes",
    [
        {"format": 2},  # format 2 signs each file's chunk map: these have none
        {"format": 3},
        {"files": (TemplateFile("image", bytes(32), 1, bytes(32)),)},  # a chunk map in format 1
        {"name": "Debian"},
        {"name": "a:b"},
        {"version": "01"},
        {"version": "1..2"},
        {"files": ()},
        {"files": (TemplateFile("kernel", bytes(32), 1),)},
        {"files": (TemplateFile("image", bytes(31), 1),)},
        {"spec": DefaultSpec(256, 1, boot=Boot.KERNEL)},  # kernel boot without a kernel
    ],
)
def test_a_manifest_that_breaks_the_rules_is_malformed_even_when_signed(
    changes: dict[str, object],
) -> None:
    bad = dataclasses.replace(manifest(), **changes)  # type: ignore[arg-type]
    data = codec.pack_struct(Sealed(body=codec.pack_struct(bad), signature=b"x" * 64))
    with pytest.raises(MalformedManifest):
        decode_manifest(data)
    with pytest.raises(ValueError):
        sign_manifest(PUBLISHER, bad)


def test_versions_order_by_number_not_by_text() -> None:
    assert version_key("10") > version_key("9")
    assert version_key("1.10") > version_key("1.9")
    assert version_key("2") == version_key("2.0.0")
    assert version_key("2024.6.1") > version_key("2024.6")


def test_an_older_version_than_one_held_is_refused_and_a_newer_one_admitted() -> None:
    held = [manifest("2"), manifest("1", image=b"old")]
    with pytest.raises(RollbackRefused, match="older than debian-12:2"):
        admit(manifest("1.5"), held)
    assert admit(manifest("3"), held) is Admission.NEW
    other_name = dataclasses.replace(manifest("0.1"), name="alpine")
    assert admit(other_name, held) is Admission.NEW  # the rule is per name


def test_the_same_manifest_again_is_held_but_the_same_version_with_other_bytes_is_refused() -> None:
    held = [manifest("2")]
    assert admit(manifest("2.0"), [manifest("2.0")]) is Admission.HELD
    with pytest.raises(VersionConflict):
        admit(manifest("2", image=b"something else"), held)


def test_parse_ref_reads_name_and_optional_version() -> None:
    assert parse_ref("debian-12") == ("debian-12", None)
    assert parse_ref("debian-12:1.2") == ("debian-12", "1.2")
    for bad in ("Debian", "debian-12:", "debian-12:x", "../etc"):
        with pytest.raises(ValueError):
            parse_ref(bad)


def _check(data: bytes, chunk: int = 1000) -> None:
    check = FileCheck(manifest().image, "debian-12:1.0")
    for at in range(0, len(data), chunk):
        check.feed(data[at : at + chunk])
    check.finish()


def test_file_check_takes_exactly_the_bytes_named() -> None:
    _check(IMAGE)
    _check(IMAGE, chunk=1)


def test_file_check_refuses_a_short_file_as_truncated() -> None:
    with pytest.raises(FileTruncated, match=f"after {len(IMAGE) - 1} of {len(IMAGE)}"):
        _check(IMAGE[:-1])


def test_file_check_refuses_one_changed_byte_and_one_extra_byte() -> None:
    tampered = bytearray(IMAGE)
    tampered[len(IMAGE) // 2] ^= 0x01
    with pytest.raises(FileMismatch, match="SHA-256"):
        _check(bytes(tampered))
    with pytest.raises(FileMismatch, match="longer than"):
        _check(IMAGE + b"\x00")
