"""`nova template ...` as an operator uses it: a publisher key, a catalogue in a directory
and the same catalogue served over real HTTP on 127.0.0.1, a host's store configured in
its agent.toml. Every refusal says why, exits 1, and leaves the store byte for byte as it
was."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from novacron.agent.cli import build_parser, main
from novacron.agent.cli.common import CommandError, UsageError
from novacron.agent.cli.vms import create_request
from novacron.agent.core.images.chunkmap import ChunkMapBuilder
from novacron.agent.core.templates import decode_manifest
from novacron.agent.template_store import TemplateStore
from novacron.protocol import codec
from novacron.protocol.sealed import Sealed

IMAGE = b"QFI\xfb" + os.urandom(3 * 1024 * 1024 + 17)  # not a multiple of the copy chunk


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any], str]:
    code = main([*argv, "--json"])
    out, err = capsys.readouterr()
    return code, json.loads(out), err


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """A publisher key, a catalogue directory served over HTTP, and a host whose
    agent.toml trusts the publisher and keeps templates in `store`."""
    root = tmp_path / "catalogue"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    keys = tmp_path / "keys"
    assert main(["template", "keygen", "acme", "--out", str(keys)]) == 0
    assert main(["template", "keygen", "mallory", "--out", str(keys)]) == 0
    store = tmp_path / "store"
    config = tmp_path / "agent.toml"
    disks = tmp_path / "disks"  # the agent's VM disks: what `rm` looks at for users
    disks.mkdir()
    config.write_text(
        f'template_dir = "{store}"\ntrusted_publishers = ["{keys / "acme.pub"}"]\n'
        f'disk_dir = "{disks}"\n'
    )
    monkeypatch.setenv("NOVACRON_CONFIG", str(config))
    image = tmp_path / "debian.qcow2"
    image.write_bytes(IMAGE)
    try:
        yield {
            "root": root,
            "url": f"http://127.0.0.1:{server.server_address[1]}",
            "keys": keys,
            "store": store,
            "image": image,
            "tmp": tmp_path,
        }
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def publish(
    site: dict[str, Any], version: str, image: Path | None = None, key: str = "acme"
) -> None:
    argv = [
        "template", "publish", str(image or site["image"]), "--name", "debian-12",
        "--version", version, "--key", str(site["keys"] / f"{key}.key"), "--to",
        str(site["root"]), "--memory", "256", "--os", "debian-12", "--label", "team=edge",
    ]  # fmt: skip
    assert main(argv) == 0


def source(site: dict[str, Any], how: str) -> str:
    return str(site["root"]) if how == "directory" else str(site["url"])


def snapshot(store: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under the store with its mode and contents."""
    if not store.exists():
        return {}
    return {
        str(p.relative_to(store)): (p.stat().st_mode, p.read_bytes())
        for p in sorted(store.rglob("*"))
        if p.is_file()
    }


def image_file(site: dict[str, Any], data: bytes = IMAGE) -> Path:
    return Path(site["root"]) / "files" / hashlib.sha256(data).hexdigest()


def manifest_file(site: dict[str, Any], version: str) -> Path:
    return Path(site["root"]) / "manifests" / "debian-12" / f"{version}.manifest"


HOW = pytest.mark.parametrize("how", ["directory", "http"])


@HOW
def test_publish_then_pull_verifies_and_keeps_the_image(
    site: dict[str, Any], how: str, capsys: pytest.CaptureFixture[str]
) -> None:
    publish(site, "1")
    capsys.readouterr()
    code, answer, err = run_json(
        capsys, "template", "pull", "debian-12", "--from", source(site, how)
    )
    assert (code, err) == (0, "")
    assert answer["outcome"] == "added" and answer["fetched_bytes"] == len(IMAGE)
    assert Path(answer["image_path"]).read_bytes() == IMAGE
    assert answer["image_path"].startswith(str(site["store"]))
    assert answer["template"]["spec"] == {
        "memory_mib": 256, "vcpus": 1, "boot": "disk", "cmdline": "", "labels": {"team": "edge"}
    }  # fmt: skip

    code, listed, _ = run_json(capsys, "template", "list")
    assert [(t["name"], t["version"]) for t in listed["templates"]] == [("debian-12", "1")]
    code, again, _ = run_json(
        capsys, "template", "pull", "debian-12:1", "--from", source(site, how)
    )
    assert (code, again["outcome"], again["fetched_bytes"]) == (0, "already held", 0)

    store = TemplateStore(Path(site["store"]))  # what the agent serves peers from
    digest = hashlib.sha256(IMAGE).digest()
    assert store.checked_file(digest) == Path(answer["image_path"])
    assert store.checked_file(hashlib.sha256(b"never held").digest()) is None

    code, removed, _ = run_json(capsys, "template", "rm", "debian-12")
    assert code == 0 and removed["removed"] == ["debian-12:1"]
    assert not Path(answer["image_path"]).exists()
    assert store.checked_file(digest) is None
    assert run_json(capsys, "template", "list")[1]["templates"] == []


@HOW
def test_list_and_show_read_a_catalogue(
    site: dict[str, Any], how: str, capsys: pytest.CaptureFixture[str]
) -> None:
    publish(site, "1")
    publish(site, "1.10", image=site["tmp"] / "agent.toml")  # any bytes will do as a file
    capsys.readouterr()
    code, listed, _ = run_json(capsys, "template", "list", "--from", source(site, how))
    assert [t["version"] for t in listed["templates"]] == ["1.10", "1"]  # newest first
    code, shown, _ = run_json(capsys, "template", "show", "debian-12", "--from", source(site, how))
    assert code == 0 and shown["template"]["version"] == "1.10"
    assert shown["signature"] == "verified"


def tamper_byte(site: dict[str, Any]) -> None:
    path = image_file(site)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))


def truncate(site: dict[str, Any]) -> None:
    path = image_file(site)
    path.write_bytes(path.read_bytes()[: len(IMAGE) - 4096])


def flip_signature(site: dict[str, Any]) -> None:
    path = manifest_file(site, "2")
    sealed = codec.unpack_struct(Sealed, path.read_bytes())
    signature = bytes([sealed.signature[0] ^ 1]) + sealed.signature[1:]
    path.write_bytes(codec.pack_struct(Sealed(sealed.body, signature)))


def strip_signature(site: dict[str, Any]) -> None:
    path = manifest_file(site, "2")
    sealed = codec.unpack_struct(Sealed, path.read_bytes())
    path.write_bytes(codec.pack_struct(Sealed(sealed.body, b"")))


def swap_image_under_signature(site: dict[str, Any]) -> None:
    """The attack a signature exists for: another image, its hash put into the manifest."""
    evil = b"QFI\xfb" + b"\x90" * len(IMAGE)
    image_file(site, evil).write_bytes(evil)
    path = manifest_file(site, "2")
    sealed = codec.unpack_struct(Sealed, path.read_bytes())
    manifest = decode_manifest(path.read_bytes()).manifest
    pieces = ChunkMapBuilder()  # the attacker names the other image's pieces too
    pieces.feed(evil)
    image = manifest.image.__class__(
        "image", hashlib.sha256(evil).digest(), len(evil), pieces.finish().digest()
    )
    body = codec.pack_struct(manifest.__class__(**{**_fields(manifest), "files": (image,)}))
    path.write_bytes(codec.pack_struct(Sealed(body, sealed.signature)))


def _fields(obj: Any) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in obj.__dataclass_fields__}


def signed_by_untrusted_key(site: dict[str, Any]) -> None:
    manifest_file(site, "2").unlink()
    publish(site, "2", key="mallory")


@HOW
@pytest.mark.parametrize(
    ("spoil", "reason", "says"),
    [
        (signed_by_untrusted_key, "untrusted-publisher", "does not trust"),
        (flip_signature, "bad-signature", "does not verify"),
        (strip_signature, "unsigned", "not signed"),
        (swap_image_under_signature, "bad-signature", "does not verify"),
        (tamper_byte, "hash-mismatch", "SHA-256"),
        (truncate, "truncated", f"ended after {len(IMAGE) - 4096} of {len(IMAGE)} bytes"),
    ],
)
def test_a_spoiled_template_is_refused_and_the_store_is_unchanged(
    site: dict[str, Any],
    how: str,
    spoil: Any,
    reason: str,
    says: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    other = site["tmp"] / "other.qcow2"
    other.write_bytes(b"QFI\xfb another template")
    publish(site, "1", image=other)
    assert main(["template", "pull", "debian-12:1", "--from", source(site, how)]) == 0
    publish(site, "2")
    spoil(site)
    capsys.readouterr()
    before = snapshot(site["store"])
    assert len(before) > 1  # a store holding a template: the refusal must leave it be

    code, answer, err = run_json(
        capsys, "template", "pull", "debian-12", "--from", source(site, how)
    )
    assert code == 1
    assert answer["ok"] is False and answer["reason"] == reason
    assert says in answer["error"] and err.startswith("nova: error: refused: ")
    assert snapshot(site["store"]) == before
    assert not any(Path(site["store"], ".incoming").iterdir())


@HOW
def test_a_replayed_older_version_is_refused_and_the_store_is_unchanged(
    site: dict[str, Any], how: str, capsys: pytest.CaptureFixture[str]
) -> None:
    old = site["tmp"] / "old.qcow2"
    old.write_bytes(b"QFI\xfb version one, with a hole in it")
    publish(site, "1", image=old)
    publish(site, "2")
    assert main(["template", "pull", "debian-12:2", "--from", source(site, how)]) == 0
    # A mirror replays version 1 (validly signed, once current) as if it were the newest.
    manifest_file(site, "2").unlink()
    (Path(site["root"]) / "index.json").write_text(
        (Path(site["root"]) / "index.json").read_text().replace('"version": "2"', '"version": "1"')
    )
    capsys.readouterr()
    before = snapshot(site["store"])
    for ref in ("debian-12", "debian-12:1"):
        code, answer, _ = run_json(capsys, "template", "pull", ref, "--from", source(site, how))
        assert (code, answer["reason"]) == (1, "rollback"), answer
        assert "older than debian-12:2" in answer["error"]
        assert snapshot(site["store"]) == before
    stored = Path(site["store"], "files", hashlib.sha256(old.read_bytes()).hexdigest())
    assert not stored.exists()


def test_a_host_that_trusts_no_publisher_says_how_to_trust_one(
    site: dict[str, Any], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    publish(site, "1")
    monkeypatch.setenv("NOVACRON_TRUSTED_PUBLISHERS", "")
    capsys.readouterr()
    code, answer, _ = run_json(capsys, "template", "pull", "debian-12", "--from", str(site["root"]))
    assert code == 1 and "trusted_publishers" in answer["error"]
    assert snapshot(site["store"]) == {}
    # --trust names a key on the command line instead
    trust = str(site["keys"] / "acme.pub")
    code, answer, _ = run_json(
        capsys, "template", "pull", "debian-12", "--from", str(site["root"]), "--trust", trust
    )
    assert code == 0 and answer["outcome"] == "added"


def test_a_catalogue_that_is_not_there_is_one_clear_line(
    site: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    for where in (str(site["tmp"] / "nowhere"), f"{site['url']}/nowhere"):
        code, answer, err = run_json(capsys, "template", "pull", "debian-12", "--from", where)
        assert code == 1 and err.count("\n") == 1 and "Traceback" not in err
        assert "index.json" in answer["error"]


def test_publishing_a_version_twice_is_refused(
    site: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    publish(site, "1")
    before = manifest_file(site, "1").read_bytes()
    capsys.readouterr()
    code, answer, _ = run_json(
        capsys, "template", "publish", str(site["tmp"] / "agent.toml"), "--name", "debian-12",
        "--version", "1.0", "--key", str(site["keys"] / "acme.key"), "--to", str(site["root"]),
        "--memory", "128",
    )  # fmt: skip
    assert code == 1 and "already published" in answer["error"]
    assert manifest_file(site, "1").read_bytes() == before


def test_a_kernel_template_with_a_bad_initrd_keeps_none_of_its_files(
    site: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """The image and kernel check out, the initrd does not: nothing enters the store,
    not even the files that were right (a manifest is kept with all its files or none)."""
    kernel, initrd = site["tmp"] / "vmlinuz", site["tmp"] / "initrd.img"
    kernel.write_bytes(b"MZ kernel" * 1000)
    initrd.write_bytes(b"\x1f\x8b initramfs" * 1000)
    argv = [
        "template", "publish", str(site["image"]), "--name", "debian-12", "--version", "1",
        "--key", str(site["keys"] / "acme.key"), "--to", str(site["root"]), "--memory", "128",
        "--kernel", str(kernel), "--initrd", str(initrd), "--cmdline", "console=ttyS0",
    ]  # fmt: skip
    assert main(argv) == 0
    image_file(site, initrd.read_bytes()).write_bytes(b"\x1f\x8b initramfs" * 999 + b"x" * 12)
    capsys.readouterr()
    code, answer, _ = run_json(capsys, "template", "pull", "debian-12", "--from", site["url"])
    assert (code, answer["reason"]) == (1, "hash-mismatch") and "initrd" in answer["error"]
    assert [p for p in snapshot(site["store"]) if not p.startswith(".lock")] == []

    image_file(site, initrd.read_bytes()).write_bytes(initrd.read_bytes())  # mended
    code, answer, _ = run_json(capsys, "template", "pull", "debian-12", "--from", site["url"])
    assert code == 0 and answer["template"]["spec"]["boot"] == "kernel"
    assert [f["role"] for f in answer["template"]["files"]] == ["image", "kernel", "initrd"]


def test_vm_create_from_a_template_uses_its_verified_image_and_defaults(
    site: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    publish(site, "1")
    publish(site, "2", image=site["tmp"] / "agent.toml")
    assert main(["template", "pull", "debian-12:1", "--from", str(site["root"])]) == 0
    parser = build_parser()

    def request(*flags: str) -> dict[str, Any]:
        return create_request(parser.parse_args(["vm", "create", "web-1", *flags]))

    body = request("--template", "debian-12", "--label", "team=core", "--disk", "/data.qcow2")
    image = Path(site["store"], "files", hashlib.sha256(IMAGE).hexdigest())
    assert body["disks"] == [{"base": str(image)}, {"base": "/data.qcow2"}]
    assert (body["memory_mib"], body["vcpus"]) == (256, 1)
    assert body["labels"] == {"team": "core", "novacron/template": "debian-12:1"}
    assert request("--template", "debian-12:1", "--memory", "512")["memory_mib"] == 512
    with pytest.raises(CommandError, match="pull it first"):
        request("--template", "debian-12:2")  # published, never pulled here
    image.unlink()
    with pytest.raises(CommandError, match="gone from the store"):
        request("--template", "debian-12")
    with pytest.raises(UsageError, match="--memory is required"):
        request()


class _CutsFiles(_Quiet):
    """Serves the catalogue, but every file of files/ stops halfway and the connection
    closes, under a Content-Length that promised all of it: a link cut mid-transfer."""

    def do_GET(self) -> None:
        if not self.path.startswith("/files/"):
            super().do_GET()
            return
        data = Path(self.directory, self.path.lstrip("/")).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2])
        self.wfile.flush()
        self.close_connection = True


def test_a_link_cut_mid_transfer_keeps_nothing_and_a_later_pull_completes(
    site: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    publish(site, "1")
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_CutsFiles, directory=str(site["root"]))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        capsys.readouterr()
        code, answer, err = run_json(capsys, "template", "pull", "debian-12", "--from", url)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    assert code == 1 and answer["ok"] is False and "Traceback" not in err
    assert answer["reason"] == "truncated"
    assert f"ended after {len(IMAGE) // 2} of {len(IMAGE)} bytes" in answer["error"]
    assert [p for p in snapshot(site["store"]) if not p.startswith(".lock")] == []
    code, answer, _ = run_json(capsys, "template", "pull", "debian-12", "--from", site["url"])
    assert code == 0 and Path(answer["image_path"]).read_bytes() == IMAGE


def test_keygen_writes_a_secret_key_and_a_public_one_and_publish_refuses_an_open_key(
    site: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    keys = Path(site["keys"])
    assert (keys / "acme.key").stat().st_mode & 0o777 == 0o600
    assert (keys / "acme.pub").stat().st_mode & 0o777 == 0o644
    code, answer, _ = run_json(capsys, "template", "keygen", "acme", "--out", str(keys))
    assert code == 1 and "already exists" in answer["error"]
    (keys / "acme.key").chmod(0o644)
    code, answer, _ = run_json(
        capsys, "template", "publish", str(site["image"]), "--name", "debian-12", "--version",
        "1", "--key", str(keys / "acme.key"), "--to", str(site["root"]), "--memory", "64",
    )  # fmt: skip
    assert code == 1 and "chmod 600" in answer["error"]
    assert not Path(site["root"], "index.json").exists()


def test_rm_refuses_a_template_a_vm_disk_is_based_on_unless_forced(
    site: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """A VM's overlay (made by qemu-img, as libvirt makes them) names the template's image
    as its base: removing the image would leave a VM that never boots again."""
    publish(site, "1")
    capsys.readouterr()
    code, pulled, _ = run_json(capsys, "template", "pull", "debian-12", "--from", site["url"])
    disks = Path(site["tmp"], "disks")
    overlay = disks / "web-1-vda.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-u", "-b",
         pulled["image_path"], str(overlay), "64M"],
        check=True,
    )  # fmt: skip
    (disks / "other.qcow2").write_bytes(b"QFI\xfb" + b"\xff" * 60)  # a header that lies
    before = snapshot(site["store"])
    code, answer, _ = run_json(capsys, "template", "rm", "debian-12")
    assert code == 1 and "web-1-vda.qcow2" in answer["error"] and "--force" in answer["error"]
    assert snapshot(site["store"]) == before

    code, answer, _ = run_json(capsys, "template", "rm", "debian-12", "--force")
    assert code == 0 and answer["deleted_files"] == [pulled["image_path"]]
    assert not Path(pulled["image_path"]).exists()
