"""This host's templates: verified files and their manifests, and pulling more.

    ROOT/manifests/NAME/VERSION.manifest    as the publisher signed it
    ROOT/files/SHA256                       images, kernels, initrds (read-only)
    ROOT/.incoming/                         pulls in progress

A file enters `files/` only after every file of its template was checked
against the signed manifest, and a manifest is written only after its files
are in place: whatever is refused, and wherever a pull stops (a crash, a cut
link, Ctrl-C), the store holds what it held before plus, at most, files in
`.incoming/`, which the next pull clears. One lock serialises the writers
(`pull`, `remove`), so a removal never takes a file a pull is about to name.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import shutil
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from novacron.protocol import keyfiles
from novacron.protocol.keys import Ed25519PublicKey

from .catalogue import (
    CHUNK,
    Catalogue,
    CatalogueError,
    Progress,
    file_path,
    manifest_path,
    no_progress,
    read_index,
    read_manifest,
)
from .core.images.chunkmap import ChunkMapBuilder, decode_chunk_map
from .core.templates import (
    Admission,
    FileCheck,
    MalformedManifest,
    Manifest,
    SignedManifest,
    TemplateFile,
    TemplateRefused,
    admit,
    decode_manifest,
    newest,
    trusted_keys,
    verify_manifest,
    version_key,
)

QCOW2_MAGIC = b"QFI\xfb"


class StoreError(Exception):
    """The local store cannot do what was asked (not found, no room, unwritable)."""


class InUse(StoreError):
    """A template's file is the base of a VM's disk on this host."""


class Pulled(Enum):
    """What a pull did."""

    ADDED = "added"
    ALREADY_HELD = "already held"


@dataclass(frozen=True)
class PullResult:
    manifest: Manifest
    outcome: Pulled
    fetched_bytes: int  # bytes copied from the catalogue (files held already are not)


def load_trusted(paths: list[str] | tuple[str, ...]) -> dict[str, Ed25519PublicKey]:
    """The publisher keys a host trusts, by key id, from their public key files."""
    return trusted_keys(keyfiles.load_public_key(path, "publisher key") for path in paths)


class TemplateStore:
    """The templates pulled onto this host, in one directory."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def file(self, template_file: TemplateFile) -> Path:
        """Where a file of a held template is."""
        return self.root / file_path(template_file.digest)

    def held(self) -> list[SignedManifest]:
        """Every manifest held, oldest version first within a name.

        They were verified when pulled; a manifest that no longer decodes (a
        hand-edited store) is left out rather than trusted.
        """
        found = []
        for path in sorted((self.root / "manifests").glob("*/*.manifest")):
            try:
                found.append(decode_manifest(path.read_bytes()))
            except (OSError, MalformedManifest):
                continue
        return sorted(found, key=lambda s: (s.manifest.name, version_key(s.manifest.version)))

    def find(self, name: str, version: str | None) -> Manifest:
        """The held NAME:VERSION, or the newest held NAME; StoreError if none."""
        same = [s.manifest for s in self.held() if s.manifest.name == name]
        if version is not None:
            same = [m for m in same if version_key(m.version) == version_key(version)]
        found = newest(same)
        if found is None:
            ref = name if version is None else f"{name}:{version}"
            raise StoreError(
                f"template {ref} is not on this host ({self.root}); "
                f"pull it first: nova template pull {ref} --from CATALOGUE"
            )
        return found

    def missing_files(self, manifest: Manifest) -> list[TemplateFile]:
        """Files of a held template that are gone from the store (removed by hand)."""
        return [f for f in manifest.files if not self.file(f).is_file()]

    def chunk_map_file(self, template_file: TemplateFile) -> Path:
        """Where the chunk map of a held file is kept (what peers fetching it ask for)."""
        return self.root / "chunkmaps" / template_file.digest

    def checked_file(self, sha256: bytes) -> Path | None:
        """The stored file with this SHA-256, if held: `files/` names only files checked
        against their signed manifest, so one lookup answers a peer's ask for a piece."""
        path = self.root / file_path(sha256.hex())
        return path if path.is_file() else None

    def based_on(self, held: Iterable[SignedManifest], bases: set[Path]) -> set[str]:
        """The templates of `held` (NAME:VERSION) one of whose files is among `bases`."""
        return {
            s.manifest.ref
            for s in held
            if any(self.file(f).resolve() in bases for f in s.manifest.files)
        }

    def whole(self) -> list[SignedManifest]:
        """The held templates whose files are all in place: what this host can serve."""
        return [s for s in self.held() if not self.missing_files(s.manifest)]

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Hold the writers' lock with `.incoming/` cleared of what an interrupted pull
        left; `admission` and `install` are called inside it. A context of its own so
        that a pull from the mesh can hold it across its awaits (entered in a thread)."""
        with self._locked():
            self._clear_incoming()
            yield

    def admission(
        self, signed: SignedManifest, trusted: Mapping[str, Ed25519PublicKey]
    ) -> tuple[Manifest, list[TemplateFile]]:
        """The verified manifest and the files this host lacks of it (none: held already).

        Refused (`TemplateRefused`) for an untrusted or bad signature, a rollback or
        a version conflict; `StoreError` when the files do not fit. Call it inside
        `writing()`."""
        manifest = verify_manifest(signed, trusted)
        admission = admit(manifest, [s.manifest for s in self.held()])
        wanted = self.missing_files(manifest)
        if admission is Admission.HELD and not wanted:
            return manifest, []
        self._check_room(manifest, wanted)
        return manifest, wanted

    def incoming_path(self, template_file: TemplateFile) -> Path:
        """A fresh path in `.incoming/` for a file being fetched."""
        return self.root / ".incoming" / f"{template_file.digest}.{secrets.token_hex(4)}"

    def install(
        self,
        signed: SignedManifest,
        staged: list[tuple[TemplateFile, Path]],
        chunk_maps: Mapping[bytes, bytes] | None = None,
    ) -> None:
        """Move checked files from `.incoming/` into the store, with the chunk maps given
        (by file SHA-256), then write the manifest (inside `writing()`): the manifest
        names only files already in place."""
        for template_file, tmp in staged:
            os.chmod(tmp, 0o444)  # a base image is never written: overlays take the writes
            os.replace(tmp, self.file(template_file))
            encoded = (chunk_maps or {}).get(template_file.sha256)
            if encoded is not None:
                self.keep_chunk_map(template_file, encoded)
        target = self.root / manifest_path(signed.manifest.name, signed.manifest.version)
        target.parent.mkdir(mode=0o755, exist_ok=True)
        keyfiles.write_atomic(target, signed.encoded, 0o644)

    def keep_chunk_map(self, template_file: TemplateFile, encoded: bytes) -> None:
        """Keep a held file's chunk map, so that serving it never hashes the file again."""
        path = self.chunk_map_file(template_file)
        path.parent.mkdir(mode=0o755, exist_ok=True)
        keyfiles.write_atomic(path, encoded, 0o644)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the store's lock: one writer at a time, across processes."""
        try:
            for sub in ("manifests", "files", ".incoming"):
                (self.root / sub).mkdir(mode=0o755, parents=True, exist_ok=True)
            fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StoreError(f"cannot use template store {self.root}: {exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # --- pulling ------------------------------------------------------------------

    def pull(
        self,
        catalogue: Catalogue,
        name: str,
        version: str | None,
        trusted: Mapping[str, Ed25519PublicKey],
        progress: Progress = no_progress,
    ) -> PullResult:
        """Fetch NAME[:VERSION] (default: the newest the catalogue lists), verify, keep it.

        Refusals (`TemplateRefused`) come before anything is kept: an untrusted
        or bad signature and a rollback before a byte of the files is fetched,
        a wrong or short file before any file enters the store.
        """
        if version is None:
            version = newest_listed(catalogue, name)
        signed = decode_manifest(read_manifest(catalogue, name, version))
        if (signed.manifest.name, signed.manifest.version) != (name, version):
            raise MalformedManifest(
                f"catalogue {catalogue.location} served {signed.manifest.ref} as {name}:{version}"
            )
        with self.writing():
            manifest, wanted = self.admission(signed, trusted)
            if not wanted:
                return PullResult(manifest, Pulled.ALREADY_HELD, 0)
            maps: dict[bytes, bytes] = {}
            fetched = [self._fetch(catalogue, manifest, f, progress, maps) for f in wanted]
            self.install(signed, list(zip(wanted, fetched, strict=True)), maps)
        return PullResult(manifest, Pulled.ADDED, sum(f.size for f in wanted))

    def _fetch(
        self,
        catalogue: Catalogue,
        manifest: Manifest,
        expected: TemplateFile,
        progress: Progress,
        maps: dict[bytes, bytes],
    ) -> Path:
        """Copy one file into .incoming/, checked on the way; its path when it is right.
        Its chunk map, computed on the way, goes into `maps` when the manifest signs one."""
        tmp = self.incoming_path(expected)
        check = FileCheck(expected, manifest.ref)
        pieces = ChunkMapBuilder()
        try:
            with catalogue.open(file_path(expected.digest)) as source, open(tmp, "xb") as out:
                while chunk := source.read(CHUNK):
                    check.feed(chunk)
                    pieces.feed(chunk)
                    out.write(chunk)
                    progress(f"{manifest.ref} {expected.role}", check.received, expected.size)
                check.finish()
                if expected.chunk_map:
                    maps[expected.sha256] = decode_chunk_map(
                        pieces.finish().encoded(), expected
                    ).encoded()
                out.flush()
                os.fsync(out.fileno())
        except (TemplateRefused, CatalogueError):
            self._clear_incoming()
            raise
        except OSError as exc:
            self._clear_incoming()
            raise StoreError(f"cannot write {tmp}: {exc.strerror or exc}") from None
        return tmp

    def _check_room(self, manifest: Manifest, wanted: list[TemplateFile]) -> None:
        need = sum(f.size for f in wanted)
        free = shutil.disk_usage(self.root).free
        if need > free:
            raise StoreError(
                f"template {manifest.ref} needs {need} bytes and {self.root} has {free} free"
            )

    def _clear_incoming(self) -> None:
        """Remove what an interrupted or refused pull left (called with the lock held)."""
        for leftover in (self.root / ".incoming").iterdir():
            leftover.unlink(missing_ok=True)

    # --- removing -----------------------------------------------------------------

    def remove(
        self, name: str, version: str | None, disk_dir: Path | None = None, force: bool = False
    ) -> tuple[list[Manifest], list[Path]]:
        """Forget NAME:VERSION (or every version of NAME) and delete the files no other
        held template uses; (manifests removed, files deleted).

        Refused (`InUse`), unless `force`, while a qcow2 overlay in `disk_dir` (the
        agent's VM disks) has one of those files as its base: deleting it would
        leave a VM that cannot boot again.
        """
        with self._locked():
            held = self.held()
            gone = [
                s.manifest
                for s in held
                if s.manifest.name == name
                and (version is None or version_key(s.manifest.version) == version_key(version))
            ]
            if not gone:
                ref = name if version is None else f"{name}:{version}"
                raise StoreError(f"template {ref} is not on this host ({self.root})")
            kept = {f.digest for s in held if s.manifest not in gone for f in s.manifest.files}
            doomed = {self.file(f) for m in gone for f in m.files if f.digest not in kept}
            users = overlays_on(doomed, disk_dir) if disk_dir is not None else []
            if users and not force:
                raise InUse(
                    f"{', '.join(m.ref for m in gone)} is the base of VM disk "
                    f"{', '.join(str(u) for u in users[:5])}: delete those VMs first "
                    "(or --force, and they will not boot again)"
                )
            for manifest in gone:
                (self.root / manifest_path(manifest.name, manifest.version)).unlink()
            deleted = sorted(path for path in doomed if path.exists())
            for path in deleted:
                path.unlink()
                (self.root / "chunkmaps" / path.name).unlink(missing_ok=True)
        return gone, deleted


def disk_bases(disk_dir: Path) -> set[Path]:
    """The base files (resolved) of the qcow2 disks in `disk_dir`."""
    return {base for _, base in _disks_and_bases(disk_dir)}


def overlays_on(bases: set[Path], disk_dir: Path) -> list[Path]:
    """The qcow2 files in `disk_dir` whose backing file is one of `bases`."""
    wanted = {base.resolve() for base in bases}
    return [disk for disk, base in _disks_and_bases(disk_dir) if base in wanted]


def _disks_and_bases(disk_dir: Path) -> list[tuple[Path, Path]]:
    """(disk, its base file resolved) for each qcow2 disk in `disk_dir` that has a base."""
    try:
        candidates = sorted(p for p in disk_dir.iterdir() if p.is_file())
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise StoreError(f"cannot list VM disks in {disk_dir}: {exc}") from None
    found = []
    for path in candidates:
        backing = qcow2_backing_file(path)
        if backing is not None:
            found.append((path, (disk_dir / backing).resolve()))
    return found


def qcow2_backing_file(path: Path) -> str | None:
    """The backing file a qcow2 image names in its header, or None (none, or not qcow2).

    The header (qemu's docs/interop/qcow2.txt) starts with the magic, then at
    byte 8 the backing file name's offset (u64) and at 16 its length (u32),
    big-endian; a name is at most 1023 bytes.
    """
    try:
        with open(path, "rb") as image:
            header = image.read(20)
            if len(header) < 20 or header[:4] != QCOW2_MAGIC:
                return None
            offset = int.from_bytes(header[8:16], "big")
            size = int.from_bytes(header[16:20], "big")
            if offset == 0 or not 0 < size < 1024:
                return None
            image.seek(offset)
            return image.read(size).decode(errors="replace")
    except OSError:
        return None


def newest_listed(catalogue: Catalogue, name: str) -> str:
    """The newest version of `name` the catalogue's index lists."""
    versions = [e.version for e in read_index(catalogue) if e.name == name]
    if not versions:
        raise CatalogueError(f"catalogue {catalogue.location} lists no template {name!r}")
    return max(versions, key=version_key)
