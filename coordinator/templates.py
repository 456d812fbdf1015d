"""The coordinator's template catalogue: the agents' static layout, in the data directory.

The directory is exactly what `nova template publish` writes (agent/catalogue.py
owns the layout and the index), so the API serves it as static files to the
agents' HTTP catalogue client and an operator can mirror it with `rsync`.

An upload is a signed manifest and then its files. The coordinator checks
that the manifest decodes and is signed, and every file's bytes against the
manifest's SHA-256 and size as they stream in; it trusts no publisher (hosts
verify signatures against their own trusted keys). Files are staged beside
the catalogue and moved in only once all of them are right, the manifest
last: a refused upload leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from novacron.agent import catalogue
from novacron.agent.catalogue import DirectoryCatalogue, Entry
from novacron.agent.core.templates import (
    MAX_MANIFEST,
    FileCheck,
    MalformedManifest,
    Manifest,
    TemplateRefused,
    decode_manifest,
)


class UploadRefused(Exception):
    """An upload that is not taken: `field` is the part at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class UploadTooLarge(UploadRefused):
    """More bytes than this coordinator takes for one template."""


class VersionTaken(UploadRefused):
    """NAME:VERSION is in the catalogue already, with other contents."""


@dataclass(frozen=True)
class Template:
    """One template name: its versions as the index lists them, newest first."""

    name: str
    versions: list[Entry]


class TemplateCatalogue:
    """The catalogue directory one coordinator serves and takes uploads into."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes  # bytes of all files of one template
        self._commit = asyncio.Lock()  # one upload at a time checks and writes the index

    def templates(self) -> list[Template]:
        """Every template, by name, each with its versions newest first."""
        if not (self.root / catalogue.INDEX).exists():
            return []
        by_name: dict[str, list[Entry]] = {}
        for entry in catalogue.read_index(DirectoryCatalogue(self.root)):
            by_name.setdefault(entry.name, []).append(entry)
        return [Template(name, versions) for name, versions in by_name.items()]

    def search(self, text: str, system: str) -> list[Template]:
        """Templates with a version whose name, description or OS holds `text` and whose OS
        holds `system` (both ignoring case; empty matches all)."""
        text, system = text.casefold(), system.casefold()

        def matches(e: Entry) -> bool:
            words = f"{e.name}\n{e.description}\n{e.os}".casefold()
            return text in words and system in e.os.casefold()

        return [t for t in self.templates() if any(matches(e) for e in t.versions)]

    def path(self, relative: str) -> Path | None:
        """A file of the catalogue, by its path in the layout, if it is there."""
        path = self.root / relative
        return path if path.is_file() else None

    def upload(self, manifest_bytes: bytes) -> Upload:
        """Begin taking a template: its manifest, checked before any file is read."""
        if len(manifest_bytes) > MAX_MANIFEST:
            raise UploadTooLarge("manifest", f"a manifest is at most {MAX_MANIFEST} bytes")
        try:
            signed = decode_manifest(manifest_bytes)
        except MalformedManifest as exc:
            raise UploadRefused("manifest", str(exc)) from None
        if not signed.signature:
            raise UploadRefused("manifest", "the manifest is not signed by a publisher")
        total = sum(f.size for f in signed.manifest.files)
        if total > self.max_bytes:
            raise UploadTooLarge(
                "manifest",
                f"its files are {total} bytes; this coordinator takes at most {self.max_bytes}",
            )
        return Upload(self, signed.manifest, signed.encoded)


class Upload:
    """One template on its way in: its files staged and checked, then committed or discarded."""

    def __init__(self, into: TemplateCatalogue, manifest: Manifest, encoded: bytes) -> None:
        self.into = into
        self.manifest = manifest
        self.encoded = encoded
        self.staged: dict[str, Path] = {}  # role -> checked file, not yet in the catalogue

    def receive(self, role: str) -> Receiving:
        """Take the file of `role` (image, kernel, initrd) next, once."""
        if not self.manifest.has(role):
            raise UploadRefused(role, f"{self.manifest.ref} has no {role}")
        if role in self.staged:
            raise UploadRefused(role, f"the {role} was sent twice")
        path = catalogue.incoming(self.into.root)
        self.staged[role] = path
        return Receiving(self.manifest, role, path)

    async def commit(self) -> Entry:
        """Move the files in and publish the manifest; VersionTaken if the version differs."""
        for expected in self.manifest.files:
            if expected.role not in self.staged:
                raise UploadRefused(expected.role, f"the {expected.role} was not sent")
        root, m = self.into.root, self.manifest
        async with self.into._commit:
            held = catalogue.published(root, m.name, m.version)
            if held is not None:
                if held.read_bytes() != self.encoded:
                    raise VersionTaken(
                        "manifest",
                        f"{m.ref} is in this catalogue already with other contents "
                        "(publish a new version)",
                    )
                self.discard()
                return Entry.of(m)
            for expected in m.files:
                catalogue.add_file(root, self.staged.pop(expected.role), expected)
            await asyncio.to_thread(catalogue.add_manifest, root, m, self.encoded)
        return Entry.of(m)

    def discard(self) -> None:
        for path in self.staged.values():
            path.unlink(missing_ok=True)
        self.staged.clear()


class Receiving:
    """One file streaming in: every chunk checked (`FileCheck`) and written to its stage."""

    def __init__(self, manifest: Manifest, role: str, path: Path) -> None:
        self.role = role
        self.check = FileCheck(manifest.file(role), manifest.ref)
        self._file: IO[bytes] = open(path, "xb")  # noqa: SIM115 (closed by finish or close)

    def feed(self, chunk: bytes) -> None:
        try:
            self.check.feed(chunk)
        except TemplateRefused as exc:
            raise UploadRefused(self.role, str(exc)) from None
        self._file.write(chunk)

    def finish(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())  # on disk before the manifest can name it
        self._file.close()
        try:
            self.check.finish()
        except TemplateRefused as exc:
            raise UploadRefused(self.role, str(exc)) from None

    def close(self) -> None:
        self._file.close()
