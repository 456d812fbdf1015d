"""Keys on libsodium (PyNaCl) and their PEM files, against the code they replaced.

The agent once signed and stored keys with `cryptography`. These
tests pin what must not change: RFC 8032 signatures, the exact bytes of key
files, certificates and revocation lists the old code wrote (made with fixed
seeds, so Ed25519's determinism makes them reproducible), interoperation with
`cryptography` and the `openssl` command (both used only here, in tests), and a
strict PEM/DER decoder that turns any other input into `IdentityFileError`.
"""

from __future__ import annotations

import base64
import contextlib
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import zmq
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519 as c_ed25519
from cryptography.hazmat.primitives.asymmetric import x25519 as c_x25519
from hypothesis import HealthCheck, given
from hypothesis import strategies as st

from novacron.protocol import keyfiles, pem
from novacron.protocol.certificates import issue_certificate, verify_certificate
from novacron.protocol.errors import IdentityFileError
from novacron.protocol.keys import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
    InvalidSignature,
    NodeKey,
    X25519PrivateKey,
    X25519PublicKey,
    key_id,
    signature_valid,
)
from novacron.protocol.revocation import sign_revocation_list, verify_revocation_list
from tests.fuzzing import fuzz
from tests.strategies import mutations

FUZZ = fuzz(500)
FILE_FUZZ = fuzz(200, suppress=[HealthCheck.function_scoped_fixture])
OPENSSL = shutil.which("openssl")  # scripts/install-system-deps.sh installs it

# --- RFC 8032 section 7.1 test vectors (secret seed, public key, message, signature) ---

RFC8032 = [
    (  # TEST 1: empty message
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bac"
        "c61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    ),
    (  # TEST 2: one byte
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e"
        "458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    ),
    (  # TEST 3: two bytes
        "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
        "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
        "af82",
        "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290"
        "ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
    ),
]


@pytest.mark.parametrize(("seed", "public", "message", "signature"), RFC8032)
def test_rfc8032_vectors(seed: str, public: str, message: str, signature: str) -> None:
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(seed))
    assert key.public_key().public_bytes_raw().hex() == public
    assert key.sign(bytes.fromhex(message)).hex() == signature
    verifier = Ed25519PublicKey.from_public_bytes(bytes.fromhex(public))
    assert signature_valid(verifier, bytes.fromhex(signature), bytes.fromhex(message))
    assert not signature_valid(verifier, bytes.fromhex(signature), bytes.fromhex(message) + b"!")


# --- what the cryptography-based code wrote, with fixed seeds ---

CA_SEED = bytes(range(32))
NODE_SIGNING_SEED = bytes(range(32, 64))
NODE_CURVE_SECRET = bytes(range(64, 96))

OLD_CA_KEY_FILE = b"""\
# NovaCron cluster CA private key (Ed25519). Keep secret: mode 0600.
-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f
-----END PRIVATE KEY-----
"""
OLD_CA_PUBLIC_FILE = b"""\
-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAA6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg=
-----END PUBLIC KEY-----
"""
OLD_NODE_KEY_FILE = b"""\
# NovaCron node key for edge-1: Ed25519 (signing), then X25519 (CurveZMQ).
# Keep secret: mode 0600.
-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEICAhIiMkJSYnKCkqKywtLi8wMTIzNDU2Nzg5Ojs8PT4/
-----END PRIVATE KEY-----
-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VuBCIEIEBBQkNERUZHSElKS0xNTk9QUVJTVFVWV1hZWltcXV5f
-----END PRIVATE KEY-----
"""
OLD_CERTIFICATE = bytes.fromhex(
    "82a4626f6479c4c287a76e6f64655f6964a6656467652d31ab7369676e696e675f6b6579c42029acbae1"
    "41bccaf0b22e1a94d34d0bc7361e526d0bfe12c89794bc9322966dd7a963757276655f6b6579c42079a6"
    "31eede1bf9c98f12032cdeadd0e7a079398fc786b88cc846ec89af85a51aaa6e6f745f6265666f7265cb"
    "41d954fc40000000a96e6f745f6166746572cb41dad27480000000a673657269616c2aa6697373756572"
    "d9203536343735616137353436333437346330323835646635646266326263616237a97369676e617475"
    "7265c4405ced582874e2a8dca6046071e4c6c96b6469e78a59594c27a600d7e52290ea0b9a53aa681241"
    "9289f31467af6f0dfccbd88b63552a962e32d45d48167504ef02"
)
OLD_REVOCATIONS = bytes.fromhex(
    "82a4626f6479c44883a6697373756572d9203536343735616137353436333437346330323835646635"
    "646266326263616237a96973737565645f6174cb41da13b860000000a773657269616c7392072aa973"
    "69676e6174757265c4406b569f8a17c0d3fa30e6745fa5f497df19150e771ed02ef4d63d3301e96773"
    "e32ead39eecc4623957bee4f28c1d6ca75101d0322ea42ced709b3891e466a6603"
)
OLD_CURVE_PUBLIC_Z85 = "D8rs:?w=pjJ$IKC?Mte/PM@LU:a?9.:vtJMUz5!>"
OLD_CURVE_SECRET_Z85 = "kTv.7l}6Nnnj=ADoIFnTp/ga?r8($2sxO*itWpVy"
OLD_CA_KEY_ID = "56475aa75463474c0285df5dbf2bcab7"


def fixed_keys() -> tuple[Ed25519PrivateKey, NodeKey]:
    ca = Ed25519PrivateKey.from_private_bytes(CA_SEED)
    node = NodeKey(
        Ed25519PrivateKey.from_private_bytes(NODE_SIGNING_SEED),
        X25519PrivateKey.from_private_bytes(NODE_CURVE_SECRET),
    )
    return ca, node


def write_private(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    path.chmod(0o600)
    return path


def test_files_are_byte_identical_to_the_old_code(tmp_path: Path) -> None:
    ca, node = fixed_keys()
    keyfiles.write_ca_key(tmp_path / "ca.key", ca)
    keyfiles.write_ca_public(tmp_path / "ca.pub", ca.public_key())
    keyfiles.write_node_key(tmp_path / "edge-1.key", node, "edge-1")
    assert (tmp_path / "ca.key").read_bytes() == OLD_CA_KEY_FILE
    assert (tmp_path / "ca.pub").read_bytes() == OLD_CA_PUBLIC_FILE
    assert (tmp_path / "edge-1.key").read_bytes() == OLD_NODE_KEY_FILE


def test_old_files_load(tmp_path: Path) -> None:
    ca, _ = fixed_keys()
    loaded_ca = keyfiles.load_ca_key(write_private(tmp_path / "ca.key", OLD_CA_KEY_FILE))
    assert loaded_ca.private_bytes_raw() == CA_SEED
    (tmp_path / "ca.pub").write_bytes(OLD_CA_PUBLIC_FILE)
    assert keyfiles.load_ca_public(tmp_path / "ca.pub") == ca.public_key()
    loaded = keyfiles.load_node_key(write_private(tmp_path / "n.key", OLD_NODE_KEY_FILE))
    assert loaded.signing.private_bytes_raw() == NODE_SIGNING_SEED
    assert loaded.curve.private_bytes_raw() == NODE_CURVE_SECRET
    assert loaded.curve_public_z85() == OLD_CURVE_PUBLIC_Z85
    assert loaded.curve_secret_z85() == OLD_CURVE_SECRET_Z85


def test_certificate_and_revocation_list_are_byte_identical_to_the_old_code() -> None:
    ca, node = fixed_keys()
    assert key_id(ca) == OLD_CA_KEY_ID
    cert = issue_certificate(
        ca,
        "edge-1",
        node.signing_public,
        node.curve_public,
        not_before=1_700_000_000.0,
        not_after=1_800_000_000.0,
        serial=42,
    )
    assert cert.encoded == OLD_CERTIFICATE
    assert sign_revocation_list(ca, [7, 42], issued_at=1_750_000_000.0) == OLD_REVOCATIONS
    assert verify_certificate(OLD_CERTIFICATE, ca.public_key(), 1_750_000_000.0) == cert
    assert verify_revocation_list(OLD_REVOCATIONS, ca.public_key()).serials == (7, 42)


# --- interoperation with the cryptography package ---


def crypto_pem_private(key: c_ed25519.Ed25519PrivateKey | c_x25519.X25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@pytest.mark.parametrize("size", [0, 1, 64, 1168, 70_000])
def test_signatures_match_cryptography_both_ways(size: int) -> None:
    theirs = c_ed25519.Ed25519PrivateKey.generate()
    ours = Ed25519PrivateKey.from_private_bytes(theirs.private_bytes_raw())
    data = bytes(i % 251 for i in range(size))
    signature = ours.sign(data)
    assert signature == theirs.sign(data)
    theirs.public_key().verify(signature, data)  # raises if not valid
    ours.public_key().verify(theirs.sign(data), data)
    assert ours.public_key().public_bytes_raw() == theirs.public_key().public_bytes_raw()


def test_pem_encodings_match_cryptography() -> None:
    for _ in range(20):
        ed = c_ed25519.Ed25519PrivateKey.generate()
        x = c_x25519.X25519PrivateKey.generate()
        our_ed = Ed25519PrivateKey.from_private_bytes(ed.private_bytes_raw())
        our_x = X25519PrivateKey.from_private_bytes(x.private_bytes_raw())
        assert pem.private_pem(our_ed) == crypto_pem_private(ed)
        assert pem.private_pem(our_x) == crypto_pem_private(x)
        assert pem.public_pem(our_ed.public_key()) == ed.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        assert our_x.public_key().public_bytes_raw() == x.public_key().public_bytes_raw()
        assert pem.private_from_pem(crypto_pem_private(ed)).private_bytes_raw() == (
            ed.private_bytes_raw()
        )


def test_our_files_load_in_cryptography(tmp_path: Path) -> None:
    node = NodeKey.generate()
    keyfiles.write_node_key(tmp_path / "n.key", node, "n")
    blocks = keyfiles._PEM_PRIVATE.findall((tmp_path / "n.key").read_bytes())
    signing = serialization.load_pem_private_key(blocks[0], password=None)
    curve = serialization.load_pem_private_key(blocks[1], password=None)
    assert isinstance(signing, c_ed25519.Ed25519PrivateKey)
    assert isinstance(curve, c_x25519.X25519PrivateKey)
    assert signing.private_bytes_raw() == node.signing.private_bytes_raw()
    assert curve.public_key().public_bytes_raw() == node.curve_public
    keyfiles.write_ca_public(tmp_path / "ca.pub", node.signing.public_key())
    public = serialization.load_pem_public_key((tmp_path / "ca.pub").read_bytes())
    assert isinstance(public, c_ed25519.Ed25519PublicKey)
    assert public.public_bytes_raw() == node.signing_public


def test_curve_keys_agree_with_libzmq() -> None:
    """libzmq derives the public half from our Z85 secret exactly as libsodium did here."""
    assert zmq.has("curve"), "this pyzmq's libzmq has no CURVE: the agent cannot run on it"
    for _ in range(10):
        node = NodeKey.generate()
        secret = node.curve_secret_z85().encode()
        assert zmq.curve_public(secret).decode() == node.curve_public_z85()


# --- interoperation with the openssl command ---


def openssl(*args: str, data: bytes | None = None) -> bytes:
    assert OPENSSL is not None, "no openssl command (scripts/install-system-deps.sh installs it)"
    return subprocess.run(
        [OPENSSL, *args], input=data, capture_output=True, check=True, timeout=60
    ).stdout


def test_openssl_keys_load_in_ours(tmp_path: Path) -> None:
    ed = openssl("genpkey", "-algorithm", "ed25519")
    x = openssl("genpkey", "-algorithm", "x25519")
    ca_key = keyfiles.load_ca_key(write_private(tmp_path / "ca.key", ed))
    (tmp_path / "ca.pub").write_bytes(openssl("pkey", "-pubout", data=ed))
    assert keyfiles.load_ca_public(tmp_path / "ca.pub") == ca_key.public_key()
    node = keyfiles.load_node_key(
        write_private(tmp_path / "n.key", b"# made by openssl\n" + ed + x)
    )
    x_public_der = pem.decode(openssl("pkey", "-pubout", data=x), "PUBLIC KEY")
    assert x_public_der[-32:] == node.curve_public
    assert pem.public_from_der(x_public_der) == node.curve.public_key()


def test_our_keys_load_in_openssl(tmp_path: Path) -> None:
    ca = Ed25519PrivateKey.generate()
    keyfiles.write_ca_key(tmp_path / "ca.key", ca)
    keyfiles.write_ca_public(tmp_path / "ca.pub", ca.public_key())
    out = openssl("pkey", "-in", str(tmp_path / "ca.key"), "-pubout")
    assert out == (tmp_path / "ca.pub").read_bytes()
    node = NodeKey.generate()
    curve_pem = pem.private_pem(node.curve)
    text = openssl("pkey", "-noout", "-text", data=curve_pem).decode()
    assert "X25519 Private-Key" in text
    assert pem.public_from_pem(openssl("pkey", "-pubout", data=curve_pem)) == (
        node.curve.public_key()
    )


def test_openssl_signature_verifies_in_ours_and_ours_in_openssl(tmp_path: Path) -> None:
    ca = Ed25519PrivateKey.generate()
    keyfiles.write_ca_key(tmp_path / "ca.key", ca)
    keyfiles.write_ca_public(tmp_path / "ca.pub", ca.public_key())
    message = tmp_path / "message"
    message.write_bytes(b"a record, about to be gossiped" * 10)
    signature = openssl(
        "pkeyutl", "-sign", "-rawin", "-inkey", str(tmp_path / "ca.key"), "-in", str(message)
    )
    assert signature == ca.sign(message.read_bytes())
    (tmp_path / "sig").write_bytes(signature)
    out = openssl(
        "pkeyutl", "-verify", "-rawin", "-pubin", "-inkey", str(tmp_path / "ca.pub"),
        "-in", str(message), "-sigfile", str(tmp_path / "sig"),
    )  # fmt: skip
    assert b"Signature Verified Successfully" in out


@pytest.mark.parametrize("algorithm", ["ed448", "x448", "EC"])
def test_keys_of_other_algorithms_are_clear_errors(tmp_path: Path, algorithm: str) -> None:
    options = ["-pkeyopt", "ec_paramgen_curve:P-256"] if algorithm == "EC" else []
    key = openssl("genpkey", "-algorithm", algorithm, *options)
    path = write_private(tmp_path / "ca.key", key)
    with pytest.raises(IdentityFileError, match=r"CA key .*ca.key is corrupt: not an Ed25519"):
        keyfiles.load_ca_key(path)
    (tmp_path / "ca.pub").write_bytes(openssl("pkey", "-pubout", data=key))
    with pytest.raises(IdentityFileError, match=r"CA public key .*ca.pub is corrupt"):
        keyfiles.load_ca_public(tmp_path / "ca.pub")


def test_encrypted_key_is_a_clear_error(tmp_path: Path) -> None:
    key = openssl("genpkey", "-algorithm", "ed25519", "-aes-256-cbc", "-pass", "pass:secret")
    assert b"ENCRYPTED PRIVATE KEY" in key
    with pytest.raises(IdentityFileError, match="expected one Ed25519 private key"):
        keyfiles.load_ca_key(write_private(tmp_path / "ca.key", key))


# --- the strict decoder ---

ED_DER = pem.private_der(Ed25519PrivateKey.from_private_bytes(CA_SEED))
X_DER = pem.private_der(X25519PrivateKey.from_private_bytes(NODE_CURVE_SECRET))
ED_SPKI = pem.public_der(Ed25519PrivateKey.from_private_bytes(CA_SEED).public_key())


def test_der_layouts_are_rfc8410() -> None:
    assert ED_DER[:16] == bytes.fromhex("302e020100300506032b657004220420")
    assert ED_DER[16:] == CA_SEED
    assert X_DER[:16] == bytes.fromhex("302e020100300506032b656e04220420")
    assert X_DER[16:] == NODE_CURVE_SECRET
    assert ED_SPKI[:12] == bytes.fromhex("302a300506032b6570032100") and len(ED_SPKI) == 44


def pkcs8_v2(der: bytes, public: bytes) -> bytes:
    """The same key as PKCS#8 v2 (OneAsymmetricKey with the public key, RFC 8410 sec. 10.3)."""
    inner = b"\x02\x01\x01" + der[5:] + b"\x81\x21\x00" + public
    return bytes([0x30, len(inner)]) + inner


@pytest.mark.parametrize(
    ("name", "der"),
    [
        ("trailing byte", ED_DER + b"\x00"),
        ("short", ED_DER[:-1]),
        ("header only", ED_DER[:16]),
        ("empty", b""),
        ("public key as private", ED_SPKI),
        ("Ed448 OID", ED_DER[:11] + b"\x71" + ED_DER[12:]),
        ("version 1", ED_DER[:4] + b"\x01" + ED_DER[5:]),
        ("PKCS#8 v2", pkcs8_v2(ED_DER, ED_SPKI[-32:])),
    ],
)
def test_other_private_encodings_are_refused(tmp_path: Path, name: str, der: bytes) -> None:
    with pytest.raises(pem.KeyFormatError):
        pem.private_from_der(der)
    path = write_private(tmp_path / "ca.key", pem.encode("PRIVATE KEY", der))
    with pytest.raises(IdentityFileError, match=r"CA key .*ca.key is corrupt"):
        keyfiles.load_ca_key(path)


@pytest.mark.parametrize(
    "der", [ED_SPKI + b"\x00", ED_SPKI[:-1], ED_DER, ED_SPKI[:8] + b"\x71" + ED_SPKI[9:]]
)
def test_other_public_encodings_are_refused(tmp_path: Path, der: bytes) -> None:
    with pytest.raises(pem.KeyFormatError):
        pem.public_from_der(der)
    (tmp_path / "ca.pub").write_bytes(pem.encode("PUBLIC KEY", der))
    with pytest.raises(IdentityFileError, match=r"CA public key .*ca.pub is corrupt"):
        keyfiles.load_ca_public(tmp_path / "ca.pub")


def test_x25519_public_key_is_not_a_ca_key(tmp_path: Path) -> None:
    (tmp_path / "ca.pub").write_bytes(pem.public_pem(X25519PrivateKey.generate().public_key()))
    with pytest.raises(IdentityFileError, match=r"ca.pub is not an Ed25519 key"):
        keyfiles.load_ca_public(tmp_path / "ca.pub")


def test_pem_with_headers_or_bad_base64_is_refused() -> None:
    body = base64.b64encode(ED_DER)
    for text in (
        b"-----BEGIN PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\n\n"
        + body
        + b"\n-----END PRIVATE KEY-----\n",
        b"-----BEGIN PRIVATE KEY-----\n" + body[:-1] + b"\n-----END PRIVATE KEY-----\n",
        b"-----BEGIN PRIVATE KEY-----\n" + body + b"\n",
        b"",
    ):
        with pytest.raises(pem.KeyFormatError):
            pem.private_from_pem(text)
    wrapped = b"-----BEGIN PRIVATE KEY-----\n" + body[:20] + b"\r\n  " + body[20:] + b"\n"
    assert pem.private_from_pem(wrapped + b"-----END PRIVATE KEY-----").private_bytes_raw() == (
        CA_SEED
    )


def cryptography_private(der: bytes) -> bytes | None:
    """The raw private key `cryptography` finds in DER, or None if it refuses it."""
    try:
        key = serialization.load_der_private_key(der, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return None
    if isinstance(key, c_ed25519.Ed25519PrivateKey | c_x25519.X25519PrivateKey):
        return key.private_bytes_raw()
    return None


def check_private_der(der: bytes) -> None:
    """Ours accepts only what `cryptography` accepts, and finds the same key in it."""
    try:
        key = pem.private_from_der(der)
    except pem.KeyFormatError:
        return
    assert cryptography_private(der) == key.private_bytes_raw()
    assert pem.private_der(key) == der  # one encoding per key: nothing ignored


def check_public_der(der: bytes) -> None:
    try:
        key = pem.public_from_der(der)
    except pem.KeyFormatError:
        return
    assert pem.public_der(key) == der
    theirs = serialization.load_der_public_key(der)
    assert isinstance(theirs, c_ed25519.Ed25519PublicKey | c_x25519.X25519PublicKey)
    assert theirs.public_bytes_raw() == key.public_bytes_raw()


@FUZZ
@given(der=st.binary(max_size=80) | mutations(ED_DER) | mutations(X_DER) | mutations(ED_SPKI))
def test_fuzzed_der_is_a_key_or_key_format_error(der: bytes) -> None:
    check_private_der(der)
    check_public_der(der)


@FUZZ
@given(text=st.binary(max_size=200) | mutations(OLD_CA_PUBLIC_FILE) | mutations(OLD_CA_KEY_FILE))
def test_fuzzed_pem_text_is_a_key_or_key_format_error(text: bytes) -> None:
    for decode in (pem.private_from_pem, pem.public_from_pem):
        with contextlib.suppress(pem.KeyFormatError):
            decode(text)


@FILE_FUZZ
@given(
    data=mutations(OLD_NODE_KEY_FILE) | mutations(OLD_CA_KEY_FILE) | mutations(OLD_CA_PUBLIC_FILE)
)
def test_fuzzed_key_files_load_or_raise_identity_file_error(tmp_path: Path, data: bytes) -> None:
    """Every loader, on every mutation: a key of the right kind, or `IdentityFileError`."""
    path = write_private(tmp_path / "fuzzed.key", data)
    for load in (keyfiles.load_node_key, keyfiles.load_ca_key, keyfiles.load_ca_public):
        try:
            loaded = load(path)
        except IdentityFileError:
            continue
        if load is keyfiles.load_node_key:
            assert isinstance(loaded, NodeKey)
        elif load is keyfiles.load_ca_key:
            assert isinstance(loaded, Ed25519PrivateKey)
        else:
            assert isinstance(loaded, Ed25519PublicKey)


# --- the key objects ---


def test_bad_signatures_are_invalid_not_errors() -> None:
    key = Ed25519PrivateKey.generate()
    signature = key.sign(b"data")
    public = key.public_key()
    for bad in (b"", signature[:-1], signature + b"\x00", bytes(64), b"\xff" * 64):
        assert not signature_valid(public, bad, b"data")
        with pytest.raises(InvalidSignature):
            public.verify(bad, b"data")
    like_bytes: Any = (bytearray(signature), memoryview(b"data"))  # bytes-like, as before
    assert signature_valid(public, *like_bytes)


def test_key_constructors_check_length_and_type() -> None:
    for cls in (Ed25519PrivateKey, X25519PrivateKey):
        with pytest.raises(ValueError, match="32 bytes"):
            cls.from_private_bytes(bytes(31))
    for public_cls in (Ed25519PublicKey, X25519PublicKey):
        with pytest.raises(ValueError, match="32 bytes"):
            public_cls.from_public_bytes(bytes(33))
    with pytest.raises(TypeError):
        Ed25519PrivateKey.from_private_bytes("x" * 32)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Ed25519PrivateKey.generate().sign(5)  # type: ignore[arg-type]


def test_public_keys_compare_by_value_and_secrets_stay_out_of_repr() -> None:
    key = Ed25519PrivateKey.generate()
    same = Ed25519PublicKey.from_public_bytes(key.public_key().public_bytes_raw())
    assert same == key.public_key() and hash(same) == hash(key.public_key())
    assert same != Ed25519PrivateKey.generate().public_key()
    curve = X25519PrivateKey.generate()
    for secret_holder in (key, curve):
        raw = secret_holder.private_bytes_raw()
        assert raw.hex() not in repr(secret_holder)
        assert base64.b64encode(raw).decode() not in repr(secret_holder)


def test_the_agent_does_not_load_cryptography() -> None:
    """cryptography's Rust extension costs an idle agent about 9 MiB
    (docs/decisions/0004-agent-footprint-libraries.md)."""
    code = "import sys, novacron.agent.daemon; print('cryptography' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "False"
