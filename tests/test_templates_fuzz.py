"""Property tests: bytes from a catalogue that are not a published manifest raise only
`MalformedManifest` when decoded, and a mutated manifest never verifies."""

from __future__ import annotations

import contextlib
import hashlib

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from novacron.agent.core.templates import (
    Boot,
    DefaultSpec,
    MalformedManifest,
    Manifest,
    TemplateFile,
    TemplateRefused,
    decode_manifest,
    sign_manifest,
    trusted_keys,
    verify_manifest,
)
from novacron.protocol import codec
from novacron.protocol.keys import Ed25519PrivateKey, key_id
from novacron.protocol.sealed import Sealed
from tests.fuzzing import fuzz
from tests.strategies import mutations

FUZZ = fuzz(1000)

PUBLISHER = Ed25519PrivateKey.generate()
TRUSTED = trusted_keys([PUBLISHER.public_key()])
SIGNED = sign_manifest(
    PUBLISHER,
    Manifest(
        format=1,
        name="debian-12",
        version="1.2",
        publisher="acme",
        publisher_key=key_id(PUBLISHER),
        files=(
            TemplateFile("image", hashlib.sha256(b"image").digest(), 5),
            TemplateFile("kernel", hashlib.sha256(b"kernel").digest(), 6),
        ),
        spec=DefaultSpec(256, 2, Boot.KERNEL, "console=ttyS0", {"a": "b"}),
    ),
)


@FUZZ
@given(data=mutations(SIGNED))
def test_a_mutated_manifest_is_malformed_or_refused_never_accepted(data: bytes) -> None:
    with pytest.raises(TemplateRefused):
        verify_manifest(decode_manifest(data), TRUSTED)


@FUZZ
@given(data=mutations(SIGNED))
def test_decoding_a_mutated_manifest_raises_only_malformed_manifest(data: bytes) -> None:
    with contextlib.suppress(MalformedManifest):
        decode_manifest(data)


@FUZZ
@given(data=st.binary(max_size=512))
def test_decoding_random_bytes_raises_only_malformed_manifest(data: bytes) -> None:
    with contextlib.suppress(MalformedManifest):
        decode_manifest(data)


WIRE_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
FIELDS = st.sampled_from(
    [
        "format",
        "name",
        "version",
        "publisher",
        "publisher_key",
        "files",
        "spec",
        "os",
        "role",
        "sha256",
        "size",
        "memory_mib",
        "vcpus",
        "boot",
        "labels",
    ]
)


@FUZZ
@given(body=st.dictionaries(FIELDS, WIRE_VALUES, max_size=10), signature=st.binary(max_size=64))
def test_decoding_any_structure_in_the_envelope_raises_only_malformed_manifest(
    body: dict[str, object], signature: bytes
) -> None:
    """Well-formed msgpack of the wrong shapes: the manifest's own checks, not the codec's."""
    packed = msgpack.packb(body, use_bin_type=True)
    with contextlib.suppress(MalformedManifest):
        decode_manifest(codec.pack_struct(Sealed(body=packed, signature=signature)))
