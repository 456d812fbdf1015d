"""The coordinator's template catalogue over real HTTP: uploads of templates a publisher
signed (`nova template publish` into a directory), search and versions, every refusal
leaving the catalogue as it was, and a host pulling from the coordinator with the agent's
own HTTP catalogue client, verifying the publisher's signature."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from novacron.agent.catalogue import TOKEN_ENV, file_path, manifest_path
from novacron.agent.cli import main as nova
from novacron.agent.core.templates import decode_manifest
from novacron.protocol import codec
from novacron.protocol.sealed import Sealed

from .coordinator_harness import Served, served

MAX_BYTES = 4 * 1024 * 1024  # what the test coordinator takes for one template


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Served]:
    async with served("", tmp_path / "coordinator", template_max_bytes=MAX_BYTES) as server:
        yield server


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    where = tmp_path / "keys"
    for name in ("acme", "mallory"):
        assert nova(["template", "keygen", name, "--out", str(where)]) == 0
    return where


def published(
    tmp_path: Path,
    keys: Path,
    name: str,
    version: str,
    image: bytes,
    *,
    key: str = "acme",
    os_name: str = "debian-12",
    description: str = "",
) -> tuple[bytes, bytes]:
    """(signed manifest, image) of a template published into a fresh directory catalogue."""
    root = tmp_path / f"published-{name}-{version}-{hashlib.sha256(image).hexdigest()[:8]}"
    source = tmp_path / f"{name}.qcow2"
    source.write_bytes(image)
    argv = [
        "template", "publish", str(source), "--name", name, "--version", version,
        "--key", str(keys / f"{key}.key"), "--to", str(root), "--memory", "256",
        "--os", os_name, "--description", description,
    ]  # fmt: skip
    assert nova(argv) == 0
    return (root / manifest_path(name, version)).read_bytes(), image


async def upload(
    api: Served, parts: list[tuple[str, bytes]], role: str = "operator"
) -> tuple[int, Any]:
    form = aiohttp.FormData()
    for field, data in parts:
        form.add_field(field, data, filename=field, content_type="application/octet-stream")
    headers = {"Authorization": f"Bearer {api.tokens[role]}"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{api.url}/v1/templates", data=form, headers=headers) as answer,
    ):
        return answer.status, await answer.json()


def held(api: Served) -> dict[str, bytes]:
    """Every file of the coordinator's catalogue directory, staged ones included."""
    root = Path(api.coordinator.config.templates)
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def image(size: int = 300_000) -> bytes:
    return b"QFI\xfb" + os.urandom(size)


async def test_uploads_are_listed_searched_and_versioned_newest_first(
    api: Served, tmp_path: Path, keys: Path
) -> None:
    v1 = published(tmp_path, keys, "debian-12", "1", image(), description="Debian base")
    v2 = published(tmp_path, keys, "debian-12", "2", image(), description="Debian base")
    alpine = published(tmp_path, keys, "alpine", "3.19", image(), os_name="alpine-3")
    for manifest, data in (v1, v2, alpine):
        status, answer = await upload(api, [("manifest", manifest), ("image", data)])
        assert status == 201, answer
    assert answer["image_sha256"] == hashlib.sha256(alpine[1]).hexdigest()

    status, listing, _ = await api.call("GET", "/v1/templates", role="reader")
    assert status == 200
    assert [(t["name"], t["version"], t["versions"]) for t in listing["items"]] == [
        ("alpine", "3.19", ["3.19"]),
        ("debian-12", "2", ["2", "1"]),
    ]
    for query, names in (
        ("q=DEBIAN%20base", ["debian-12"]),
        ("os=alpine", ["alpine"]),
        ("q=debian&os=alpine", []),
        ("q=nothing-like-it", []),
    ):
        found = (await api.call("GET", f"/v1/templates?{query}", role="reader"))[1]["items"]
        assert [t["name"] for t in found] == names, query
    first = (await api.call("GET", "/v1/templates?per_page=1", role="reader"))[1]
    assert [t["name"] for t in first["items"]] == ["alpine"] and first["next_token"]
    rest = (await api.call("GET", f"/v1/templates?next_token={first['next_token']}"))[1]
    assert [t["name"] for t in rest["items"]] == ["debian-12"] and rest["next_token"] is None

    status, detail, _ = await api.call("GET", "/v1/templates/debian-12", role="reader")
    assert status == 200 and [v["version"] for v in detail["versions"]] == ["2", "1"]
    assert (await api.call("GET", "/v1/templates/ubuntu", role="reader"))[0] == 404
    status, answer, _ = await api.call("GET", "/v1/templates/Not%20A%20Name", role="reader")
    assert status == 400 and answer["error"]["field"] == "name"

    # The same version with the same bytes again (a retry over a flaky link) is no change.
    before = held(api)
    assert (await upload(api, [("manifest", v1[0]), ("image", v1[1])]))[0] == 200
    assert held(api) == before

    audit = (await api.call("GET", "/v1/audit"))[1]["items"]
    rows = [(r["principal"], r["action"], r["status"]) for r in audit[:2]]
    assert rows == [
        ("test-operator", "uploadTemplate", 200),
        ("test-operator", "uploadTemplate", 201),
    ]


async def test_the_static_layout_is_served_with_its_lengths_to_readers_only(
    api: Served, tmp_path: Path, keys: Path
) -> None:
    manifest, data = published(tmp_path, keys, "debian-12", "1", image())
    assert (await upload(api, [("manifest", manifest), ("image", data)]))[0] == 201
    base = "/v1/templates/catalogue"
    digest = hashlib.sha256(data).hexdigest()
    for path, expected in (
        (f"{base}/{manifest_path('debian-12', '1')}", manifest),
        (f"{base}/{file_path(digest)}", data),
    ):
        status, _, headers = await api.call("GET", path, role="reader")
        assert status == 200 and int(headers["Content-Length"]) == len(expected), path
        assert (
            Path(api.coordinator.config.templates) / path.removeprefix(base + "/")
        ).read_bytes() == expected
        assert (await api.call("GET", path, role=None))[0] == 401
    status, index, _ = await api.call("GET", f"{base}/index.json", role="reader")
    assert status == 200 and [t["name"] for t in index["templates"]] == ["debian-12"]
    assert (await api.call("GET", f"{base}/files/{'0' * 64}"))[0] == 404
    status, answer, _ = await api.call("GET", f"{base}/files/..%2Fsecret")
    assert status in (400, 404)
    status, answer, _ = await api.call("GET", f"{base}/manifests/debian-12/1.json")
    assert status == 400 and answer["error"]["field"] == "manifest"


async def test_a_reader_cannot_publish_and_nothing_is_stored(
    api: Served, tmp_path: Path, keys: Path
) -> None:
    manifest, data = published(tmp_path, keys, "debian-12", "1", image())
    status, answer = await upload(api, [("manifest", manifest), ("image", data)], role="reader")
    assert status == 403 and answer["error"]["code"] == "forbidden"
    assert held(api) == {}
    audit = (await api.call("GET", "/v1/audit"))[1]["items"]
    assert (audit[0]["principal"], audit[0]["action"], audit[0]["status"]) == (
        "test-reader",
        "uploadTemplate",
        403,
    )


def unsigned(manifest: bytes) -> bytes:
    sealed = codec.unpack_struct(Sealed, manifest)
    return codec.pack_struct(Sealed(sealed.body, b""))


async def test_spoiled_uploads_are_refused_naming_the_part_and_nothing_is_stored(
    api: Served, tmp_path: Path, keys: Path
) -> None:
    manifest, data = published(tmp_path, keys, "debian-12", "1", image())
    flipped = bytearray(data)
    flipped[1000] ^= 1
    oversized = published(tmp_path, keys, "big", "1", image(MAX_BYTES))
    m, big = manifest, oversized
    cases: list[tuple[str, list[tuple[str, bytes]], int, str]] = [
        ("a tampered byte", [("manifest", m), ("image", bytes(flipped))], 400, "image"),
        ("a truncated image", [("manifest", m), ("image", data[:-1])], 400, "image"),
        ("bytes past its size", [("manifest", m), ("image", data + b"x")], 400, "image"),
        ("no image", [("manifest", m)], 400, "image"),
        ("the image twice", [("manifest", m), ("image", data), ("image", data)], 400, "image"),
        ("a file it has not", [("manifest", m), ("image", data), ("kernel", b"k")], 400, "kernel"),
        ("files before the manifest", [("image", data), ("manifest", m)], 400, "manifest"),
        ("not a manifest", [("manifest", b"\x93garbage"), ("image", data)], 400, "manifest"),
        ("an unsigned manifest", [("manifest", unsigned(m)), ("image", data)], 400, "manifest"),
        ("a huge manifest", [("manifest", b"m" * 70_000), ("image", data)], 413, "manifest"),
        ("over the size taken", [("manifest", big[0]), ("image", big[1])], 413, "manifest"),
    ]
    assert decode_manifest(unsigned(manifest)).signature == b""
    for what, parts, status, field in cases:
        got, answer = await upload(api, parts)
        assert (got, answer["error"]["field"]) == (status, field), (what, answer)
        assert held(api) == {}, what
    status, answer, _ = await api.call("POST", "/v1/templates", {"manifest": "x"})
    assert status == 400 and answer["error"]["field"] == "body"
    assert (await api.call("GET", "/v1/templates", role="reader"))[1]["items"] == []


async def test_the_same_version_with_other_bytes_is_refused_and_the_first_stays(
    api: Served, tmp_path: Path, keys: Path
) -> None:
    first = published(tmp_path, keys, "debian-12", "1", image())
    assert (await upload(api, [("manifest", first[0]), ("image", first[1])]))[0] == 201
    before = held(api)
    for key in ("acme", "mallory"):  # a new image under the same version, by anyone
        other = published(tmp_path, keys, "debian-12", "1.0", image(), key=key)
        status, answer = await upload(api, [("manifest", other[0]), ("image", other[1])])
        assert status == 409 and answer["error"]["code"] == "conflict", answer
        assert "debian-12:1" in answer["error"]["message"]
        assert held(api) == before


async def test_a_host_pulls_from_the_coordinator_and_verifies_the_publisher(
    api: Served, tmp_path: Path, keys: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = published(tmp_path, keys, "debian-12", "1", image())
    forged = published(tmp_path, keys, "forged", "1", image(), key="mallory")
    for manifest, data in (good, forged):
        assert (await upload(api, [("manifest", manifest), ("image", data)]))[0] == 201
    store = tmp_path / "store"
    config = tmp_path / "agent.toml"
    config.write_text(
        f'template_dir = "{store}"\ntrusted_publishers = ["{keys / "acme.pub"}"]\n'
        f'disk_dir = "{tmp_path}"\n'
    )
    monkeypatch.setenv("NOVACRON_CONFIG", str(config))
    url = f"{api.url}/v1/templates/catalogue"

    async def pull(ref: str, token: str) -> tuple[int, dict[str, Any]]:
        monkeypatch.setenv(TOKEN_ENV, token)
        out = tmp_path / "out.json"

        def run() -> int:
            with open(out, "w") as stream, contextlib.redirect_stdout(stream):
                return nova(["template", "pull", ref, "--from", url, "--json"])

        code = await asyncio.to_thread(run)  # the client blocks; the coordinator is this loop's
        return code, json.loads(out.read_text() or "{}")

    code, answer = await pull("debian-12", "nvc_not_a_token")
    assert code == 1 and "401" in json.dumps(answer)
    assert not store.exists() or not any(store.rglob("*.manifest"))
    code, answer = await pull("debian-12", api.tokens["reader"])
    assert code == 0 and answer["outcome"] == "added", answer
    assert Path(answer["image_path"]).read_bytes() == good[1]
    assert answer["template"]["publisher_key"] == decode_manifest(good[0]).manifest.publisher_key
    kept = sorted(p.name for p in store.rglob("*") if p.is_file())
    code, answer = await pull("forged", api.tokens["reader"])
    assert code == 1 and answer["reason"] == "untrusted-publisher", answer
    assert sorted(p.name for p in store.rglob("*") if p.is_file()) == kept
