"""Template catalogues: a directory, or the same directory served over HTTP(S).

A catalogue is static files, so any web server serves one and an air-gapped
site mirrors one with `cp -r` or `rsync`:

    index.json                          what is there (name, version, OS, ...)
    manifests/NAME/VERSION.manifest     signed manifests (agent/core/templates.py)
    files/SHA256                        images, kernels, initrds, named by content

Nothing a catalogue serves is trusted: the index only says which versions
exist (it is unsigned, and paths are never taken from it), every manifest is
checked against the host's trusted publisher keys, every file against its
manifest's SHA-256 and size. `publish` writes a directory catalogue.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from novacron.protocol import keyfiles
from novacron.protocol.keys import Ed25519PrivateKey, key_id

from .core.images.chunkmap import ChunkMapBuilder
from .core.templates import (
    MANIFEST_FORMAT,
    MAX_MANIFEST,
    VERSION_RE,
    Boot,
    DefaultSpec,
    MalformedManifest,
    Manifest,
    TemplateFile,
    decode_manifest,
    parse_ref,
    sign_manifest,
    version_key,
)

INDEX = "index.json"
INDEX_FORMAT = 1
MAX_INDEX = 16 * 1024 * 1024  # bytes; a catalogue of thousands of templates is far less
CHUNK = 1024 * 1024  # bytes read and hashed at a time
HTTP_TIMEOUT = 30.0  # seconds without a byte before an HTTP catalogue counts as gone
SKIP_BLOCK = 4 * 1024 * 1024  # bytes read and dropped at a time before a range a server ignored

Progress = Callable[[str, int, int], None]
"""Told (what, bytes done, bytes in all) as a long copy goes."""


def no_progress(what: str, done: int, total: int) -> None:
    """A `Progress` that shows nothing."""


class CatalogueError(Exception):
    """A catalogue cannot be read or written (missing, unreachable, not a catalogue)."""


@dataclass(frozen=True)
class Entry:
    """One template version as the index lists it (unverified: for listing and choosing)."""

    name: str
    version: str
    os: str
    description: str
    publisher: str
    publisher_key: str
    image_sha256: str
    size: int  # bytes of all its files

    @classmethod
    def of(cls, manifest: Manifest) -> Entry:
        return cls(
            name=manifest.name,
            version=manifest.version,
            os=manifest.os,
            description=manifest.description,
            publisher=manifest.publisher,
            publisher_key=manifest.publisher_key,
            image_sha256=manifest.image.digest,
            size=sum(f.size for f in manifest.files),
        )


def manifest_path(name: str, version: str) -> str:
    """Where a manifest lives in a catalogue, from a name and version already validated."""
    return f"manifests/{name}/{version}.manifest"


def file_path(digest: str) -> str:
    return f"files/{digest}"


class Catalogue(Protocol):
    """Where templates are pulled from."""

    location: str  # the directory or URL, for messages

    def read(self, path: str, limit: int) -> bytes:
        """A small file of the catalogue (at most `limit` bytes, else CatalogueError)."""

    def open(self, path: str) -> AbstractContextManager[IO[bytes]]:
        """A large file of the catalogue, to read in chunks."""

    def read_range(self, path: str, offset: int, size: int) -> bytes:
        """At most `size` bytes of a large file from `offset` (fewer at its end)."""


TOKEN_ENV = "NOVA_CATALOGUE_TOKEN"
"""A bearer token sent to HTTP catalogues that ask for one (a coordinator's, reader role)."""


def open_catalogue(location: str, token: str = "") -> Catalogue:
    """An http(s):// URL is served over HTTP (with `token` as a bearer token, if given);
    a file:// URL or anything else is a directory."""
    if location.startswith(("http://", "https://")):
        return HttpCatalogue(location.rstrip("/"), token)
    return DirectoryCatalogue(Path(location.removeprefix("file://")))


class DirectoryCatalogue:
    """A catalogue in a local directory (or a mounted share)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.location = str(root)

    def read(self, path: str, limit: int) -> bytes:
        try:
            with open(self.root / path, "rb") as source:
                data = source.read(limit + 1)
        except FileNotFoundError:
            raise CatalogueError(f"catalogue {self.location} has no {path}") from None
        except OSError as exc:
            raise CatalogueError(f"cannot read {path} in {self.location}: {exc}") from None
        if len(data) > limit:
            raise CatalogueError(f"{path} in {self.location} is over {limit} bytes")
        return data

    @contextmanager
    def open(self, path: str) -> Iterator[IO[bytes]]:
        try:
            source = open(self.root / path, "rb")  # noqa: SIM115 (closed by the with below)
        except FileNotFoundError:
            raise CatalogueError(f"catalogue {self.location} has no {path}") from None
        except OSError as exc:
            raise CatalogueError(f"cannot read {path} in {self.location}: {exc}") from None
        with source:
            yield source

    def read_range(self, path: str, offset: int, size: int) -> bytes:
        with self.open(path) as source:
            source.seek(offset)
            return source.read(size)


class HttpCatalogue:
    """A catalogue served by any web server over HTTP or HTTPS (system trust store)."""

    def __init__(self, url: str, token: str = "") -> None:
        self.location = url
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}

    def read(self, path: str, limit: int) -> bytes:
        with self.open(path) as response:
            data = response.read(limit + 1)
        if len(data) > limit:
            raise CatalogueError(f"{self.location}/{path} is over {limit} bytes")
        return data

    def read_range(self, path: str, offset: int, size: int) -> bytes:
        """One HTTP range request; from a server that ignores ranges (200, the whole file),
        the bytes before `offset` are read and dropped."""
        last = offset + size - 1
        with self.open(path, {"Range": f"bytes={offset}-{last}"}) as response:
            if getattr(response, "status", 200) == 206:
                headers = getattr(response, "headers", {})
                started = _range_start(headers.get("Content-Range", ""))
                if started != offset:
                    raise CatalogueError(
                        f"{self.location}/{path}: asked for bytes from {offset}, got a range "
                        f"from {started}"
                    )
                return _read_exactly(response, size)
            _skip(response, offset)
            return _read_exactly(response, size)

    @contextmanager
    def open(self, path: str, headers: Mapping[str, str] | None = None) -> Iterator[IO[bytes]]:
        # Loaded here: an agent that serves and fetches pieces over the mesh only never
        # pays for an HTTP client in memory.
        import http.client
        import urllib.error
        import urllib.request

        url = f"{self.location}/{path}"
        try:
            request = urllib.request.Request(url, headers={**self._headers, **(headers or {})})
            response = urllib.request.urlopen(request, timeout=HTTP_TIMEOUT)
        except urllib.error.HTTPError as exc:
            raise CatalogueError(f"{url}: HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise CatalogueError(f"cannot reach catalogue {self.location}: {reason}") from None
        with response:
            try:
                yield response
            except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
                raise CatalogueError(f"{url}: the transfer failed: {exc}") from None


def _range_start(content_range: str) -> int | None:
    """Where a `Content-Range: bytes FIRST-LAST/SIZE` answer starts; None if unreadable."""
    unit, _, span = content_range.partition(" ")
    first = span.partition("-")[0]
    return int(first) if unit == "bytes" and first.isdigit() else None


def _skip(source: IO[bytes], count: int) -> None:
    while count > 0:
        skipped = source.read(min(count, SKIP_BLOCK))
        if not skipped:
            return
        count -= len(skipped)


def _read_exactly(source: IO[bytes], size: int) -> bytes:
    """Up to `size` bytes: fewer only where the file ends."""
    parts, left = [], size
    while left > 0:
        part = source.read(left)
        if not part:
            break
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


# --- reading ---------------------------------------------------------------------


def read_index(catalogue: Catalogue) -> list[Entry]:
    """Every template version the catalogue lists, newest version of each name first."""
    data = catalogue.read(INDEX, MAX_INDEX)
    where = f"{INDEX} of catalogue {catalogue.location}"
    try:
        index = json.loads(data)
        if index.get("format") != INDEX_FORMAT:
            raise CatalogueError(f"{where} is format {index.get('format')!r}, not {INDEX_FORMAT}")
        entries = [_entry(item) for item in index["templates"]]
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise CatalogueError(f"{where} is not a catalogue index: {exc}") from None
    entries.sort(key=lambda e: version_key(e.version), reverse=True)
    return sorted(entries, key=lambda e: e.name)  # stable: newest first within a name


def _entry(item: dict[str, Any]) -> Entry:
    """One index entry, its fields of the right types, its name and version valid."""
    entry = Entry(**item)
    texts = [v for k, v in entry.__dict__.items() if k != "size"]
    if not all(isinstance(v, str) for v in texts) or type(entry.size) is not int:
        raise ValueError(f"an entry has fields of the wrong types: {str(item)[:200]}")
    parse_ref(f"{entry.name}:{entry.version}")
    return entry


def read_manifest(catalogue: Catalogue, name: str, version: str) -> bytes:
    """The manifest bytes of NAME:VERSION (checked by the caller, never here)."""
    return catalogue.read(manifest_path(name, version), MAX_MANIFEST)


# --- publishing into a directory ---------------------------------------------------


@dataclass(frozen=True)
class Publication:
    """What a publisher says about a template besides its files."""

    name: str
    version: str
    publisher: str
    spec: DefaultSpec
    os: str = ""
    description: str = ""


def publish(
    root: Path,
    key: Ed25519PrivateKey,
    what: Publication,
    image: Path,
    kernel: Path | None,
    initrd: Path | None,
    now: float,
    progress: Progress = no_progress,
) -> Manifest:
    """Copy the files into the catalogue at `root`, sign the manifest, rewrite the index.

    A version is published once: the same NAME:VERSION again is refused, so
    every copy of a version anywhere is the same template.
    """
    if published(root, what.name, what.version) is not None:
        raise CatalogueError(f"{what.name}:{what.version} is already published in {root}")
    sources = [("image", image), ("kernel", kernel), ("initrd", initrd)]
    files = tuple(
        _add_file(root, role, path, progress) for role, path in sources if path is not None
    )
    spec = what.spec
    if kernel is not None:
        spec = DefaultSpec(spec.memory_mib, spec.vcpus, Boot.KERNEL, spec.cmdline, spec.labels)
    manifest = Manifest(
        format=MANIFEST_FORMAT,
        name=what.name,
        version=what.version,
        publisher=what.publisher,
        publisher_key=key_id(key),
        files=files,
        spec=spec,
        os=what.os,
        description=what.description,
        published_at=now,
    )
    try:
        signed = sign_manifest(key, manifest)
    except ValueError as exc:
        raise CatalogueError(f"cannot publish {what.name}:{what.version}: {exc}") from None
    add_manifest(root, manifest, signed)
    return manifest


def published(root: Path, name: str, version: str) -> Path | None:
    """The manifest file of NAME:VERSION in the catalogue at `root`, if one is there.

    Versions that sort the same (1.0 and 1) are one version: a catalogue holds one of them.
    """
    for existing in (root / "manifests" / name).glob("*.manifest"):
        held = existing.name.removesuffix(".manifest")
        if VERSION_RE.fullmatch(held) and version_key(held) == version_key(version):
            return existing
    return None


def incoming(root: Path) -> Path:
    """A new temporary path in root/files/ for a file on its way in (see `add_manifest`)."""
    _make_dir(root / "files")
    return root / "files" / f".incoming.{secrets.token_hex(6)}"


def add_file(root: Path, staged: Path, template_file: TemplateFile) -> None:
    """Move a staged file, already checked against `template_file`, to its place."""
    os.chmod(staged, 0o644)
    os.replace(staged, root / file_path(template_file.digest))


def add_manifest(root: Path, manifest: Manifest, signed: bytes) -> None:
    """Write a signed manifest whose files are in place, then the index that lists it."""
    manifest_file = root / manifest_path(manifest.name, manifest.version)
    _make_dir(manifest_file.parent)
    keyfiles.write_atomic(manifest_file, signed, 0o644)
    write_index(root)


def _add_file(root: Path, role: str, source: Path, progress: Progress) -> TemplateFile:
    """Copy `source` into root/files/ under its SHA-256, hashing it on the way."""
    tmp = incoming(root)
    digest = hashlib.sha256()
    pieces = ChunkMapBuilder()
    try:
        with open(source, "rb") as src, open(tmp, "xb") as dst:
            total = os.fstat(src.fileno()).st_size
            done = 0
            while chunk := src.read(CHUNK):
                digest.update(chunk)
                pieces.feed(chunk)
                dst.write(chunk)
                done += len(chunk)
                progress(f"{role} {source.name}", done, total)
            dst.flush()
            os.fsync(dst.fileno())
        chunk_map = pieces.finish().digest()
        added = TemplateFile(role=role, sha256=digest.digest(), size=done, chunk_map=chunk_map)
        add_file(root, tmp, added)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise CatalogueError(f"cannot publish {role} {source}: {exc.strerror or exc}") from None
    return added


def write_index(root: Path) -> list[Entry]:
    """Rewrite root/index.json from the manifests present (they are the truth)."""
    entries = []
    for path in sorted((root / "manifests").glob("*/*.manifest")):
        try:
            entries.append(Entry.of(decode_manifest(path.read_bytes()).manifest))
        except (OSError, MalformedManifest):
            continue  # not a manifest this version reads: listed by nobody
    index = {"format": INDEX_FORMAT, "templates": [e.__dict__ for e in entries]}
    data = json.dumps(index, indent=1, sort_keys=True).encode() + b"\n"
    keyfiles.write_atomic(root / INDEX, data, 0o644)
    return entries


def describe(entry: Entry) -> dict[str, Any]:
    """An index entry as `--json` prints it."""
    return dict(entry.__dict__)


def _make_dir(path: Path) -> None:
    try:
        path.mkdir(mode=0o755, parents=True, exist_ok=True)
    except OSError as exc:
        raise CatalogueError(f"cannot create directory {path}: {exc.strerror or exc}") from None
