"""`nova template`: publisher keys, publishing to a catalogue, this host's templates.

Pulling happens here, in the `nova` process on the host (as `nova site
enroll` does its work): it reads the agent's settings for where templates
are kept (`template_dir`) and whose signatures count (`trusted_publishers`).
Every refusal is exit 1 with one line saying why; with `--json` the object
also carries `reason` (unsigned, untrusted-publisher, bad-signature,
hash-mismatch, truncated, rollback, version-conflict, malformed).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from novacron.agent import catalogue, client
from novacron.agent.catalogue import CatalogueError, Entry, Publication
from novacron.agent.config import AgentConfig, ConfigError, load
from novacron.agent.core.templates import (
    TEMPLATE_LABEL,
    DefaultSpec,
    Manifest,
    TemplateRefused,
    decode_manifest,
    parse_ref,
    verify_manifest,
)
from novacron.agent.template_store import (
    Pulled,
    StoreError,
    TemplateStore,
    load_trusted,
    newest_listed,
)
from novacron.protocol import keyfiles
from novacron.protocol.keys import Ed25519PrivateKey, Ed25519PublicKey, key_id

from .common import (
    EXIT_FAILED,
    EXIT_OK,
    CommandError,
    Output,
    UsageError,
    ask,
    key_value,
    make_dir,
)
from .table import render

MiB = 1024 * 1024
PULL_POLL = 0.5  # seconds between looks at a pull the agent runs


@contextmanager
def _refusals(out: Output) -> Iterator[list[int]]:
    """Turn the template errors into one line (and `reason`) and exit 1: `code[0]`."""
    code = [EXIT_OK]
    try:
        yield code
    except TemplateRefused as exc:
        out.error(f"refused: {exc}", {"reason": exc.reason})
        code[0] = EXIT_FAILED
    except (CatalogueError, StoreError, ConfigError) as exc:
        out.error(str(exc))
        code[0] = EXIT_FAILED


class ProgressLine:
    """Long copies shown on stderr, at most once a second, for people (not with --json)."""

    def __init__(self, out: Output, verb: str) -> None:
        self.out = out
        self.verb = verb
        self.shown_at = time.monotonic()  # a copy done within the first second shows nothing
        self.shown = False

    def __call__(self, what: str, done: int, total: int) -> None:
        if self.out.json:
            return
        now = time.monotonic()
        finished = done >= total
        if now - self.shown_at < 1.0 and not (finished and self.shown):
            return
        self.shown_at, self.shown = now, not finished  # the next file starts afresh
        share = f" ({100 * done // total}%)" if total else ""
        end = "\n" if finished else "\r" if self.out.stderr.isatty() else "\n"
        text = f"{self.verb} {what}: {done // MiB}/{total // MiB} MiB{share}"
        print(text, end=end, file=self.out.stderr, flush=True)


def _settings(args: argparse.Namespace) -> AgentConfig:
    try:
        return load({}, config_file=getattr(args, "config", None))
    except ConfigError as exc:
        raise CommandError(str(exc)) from None


def _store(args: argparse.Namespace) -> TemplateStore:
    return TemplateStore(Path(args.store or _settings(args).template_dir))


def _trusted(args: argparse.Namespace) -> dict[str, Ed25519PublicKey]:
    paths = (*_settings(args).trusted_publishers, *args.trust)
    if not paths:
        raise CommandError(
            "this host trusts no template publisher: list their public key files in "
            "trusted_publishers (agent.toml) or give --trust FILE"
        )
    return load_trusted(paths)


def _ref(text: str) -> tuple[str, str | None]:
    try:
        return parse_ref(text)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


# --- keys and publishing -------------------------------------------------------------


def keygen(args: argparse.Namespace, out: Output) -> int:
    """Write NAME.key (0600) and NAME.pub (0644): the publisher signs with the first and
    hosts trust the second."""
    outdir = Path(args.out)
    key_file, public_file = outdir / f"{args.name}.key", outdir / f"{args.name}.pub"
    existing = [p for p in (key_file, public_file) if p.exists()]
    if existing and not args.force:
        raise CommandError(f"{existing[0]} already exists; --force replaces it")
    make_dir(outdir, 0o755)
    key = Ed25519PrivateKey.generate()
    keyfiles.write_signing_key(key_file, key, f"template publisher key of {args.name}")
    keyfiles.write_public_key(public_file, key.public_key())
    data = {"key_file": str(key_file), "public_file": str(public_file), "key_id": key_id(key)}
    out.result(
        data,
        [
            f"created publisher key {data['key_id']}",
            f"  private key: {key_file} (mode 0600; signs templates: keep it secret)",
            f"  public key:  {public_file} (hosts list it in trusted_publishers)",
        ],
    )
    return EXIT_OK


def publish(args: argparse.Namespace, out: Output) -> int:
    name, version = _ref(f"{args.name}:{args.version}")
    assert version is not None
    if args.initrd and not args.kernel:
        raise UsageError("--initrd goes with --kernel")
    key = keyfiles.load_signing_key(args.key, "publisher key")
    what = Publication(
        name=name,
        version=version,
        publisher=args.publisher or Path(args.key).stem,
        spec=DefaultSpec(
            memory_mib=args.memory,
            vcpus=args.vcpus,
            cmdline=args.cmdline,
            labels=dict(key_value(text, "label") for text in args.label),
        ),
        os=args.os,
        description=args.description,
    )
    files = [Path(p) if p else None for p in (args.image, args.kernel, args.initrd)]
    for path in files:
        if path is not None and not path.is_file():
            raise CommandError(f"{path} is not a file")
    with _refusals(out) as code:
        image, kernel, initrd = files
        assert image is not None
        manifest = catalogue.publish(
            Path(args.to),
            key,
            what,
            image,
            kernel,
            initrd,
            time.time(),
            ProgressLine(out, "publishing"),
        )
        out.result(
            {"template": describe(manifest), "catalogue": args.to},
            [f"published {manifest.ref} (image sha256:{manifest.image.digest}) in {args.to}"],
        )
    return code[0]


# --- this host's store and catalogues ------------------------------------------------


def _catalogue(location: str) -> catalogue.Catalogue:
    """A catalogue, sent the token of $NOVA_CATALOGUE_TOKEN if it is served over HTTP."""
    return catalogue.open_catalogue(location, os.environ.get(catalogue.TOKEN_ENV, ""))


def list_templates(args: argparse.Namespace, out: Output) -> int:
    with _refusals(out) as code:
        if args.source:
            entries = catalogue.read_index(_catalogue(args.source))
            where = args.source
        else:
            store = _store(args)
            entries = [Entry.of(s.manifest) for s in store.held()]
            where = str(store.root)
        rows = [(e.name, e.version, e.os, e.size // MiB, e.publisher) for e in entries]
        out.result(
            {"source": where, "templates": [catalogue.describe(e) for e in entries]},
            render(("name", "version", "os", "MiB", "publisher"), rows)
            if rows
            else [f"no templates in {where}"],
        )
    return code[0]


def show(args: argparse.Namespace, out: Output) -> int:
    name, version = _ref(args.ref)
    with _refusals(out) as code:
        if args.source:
            source = _catalogue(args.source)
            if version is None:
                version = newest_listed(source, name)
            signed = decode_manifest(catalogue.read_manifest(source, name, version))
            manifest = verify_manifest(signed, _trusted(args))  # refused: exit 1, says why
            where = args.source
        else:
            store = _store(args)
            manifest = store.find(name, version)
            where = str(store.root)
        checked = "verified" if args.source else "verified when pulled"
        data = {"source": where, "signature": checked, "template": describe(manifest)}
        out.result(data, _describe_lines(manifest, where, checked))
    return code[0]


def pull(args: argparse.Namespace, out: Output) -> int:
    name, version = _ref(args.ref)
    if not args.source:
        return pull_from_mesh(args.ref, args.socket, out)
    with _refusals(out) as code:
        store, trusted = _store(args), _trusted(args)
        source = _catalogue(args.source)
        result = store.pull(source, name, version, trusted, ProgressLine(out, "pulling"))
        manifest = result.manifest
        data = {
            "template": describe(manifest),
            "outcome": result.outcome.value,
            "fetched_bytes": result.fetched_bytes,
            "image_path": str(store.file(manifest.image)),
        }
        verb = "pulled" if result.outcome is Pulled.ADDED else "already held"
        out.result(
            data,
            [f"{manifest.ref} {verb}: verified, image {data['image_path']}"],
        )
    return code[0]


def pull_from_mesh(ref: str, socket: str | None, out: Output) -> int:
    """Have the agent pull `ref` from its peers; progress shown until it ends."""
    answer, code = ask(out, client.post, "/v1/templates/pulls", {"template": ref}, socket)
    if answer is None:
        return code
    status = answer["pull"]
    shown = ProgressLine(out, "pulling")
    while status["state"] not in ("done", "failed"):
        time.sleep(PULL_POLL)
        answer, code = ask(out, client.get, f"/v1/templates/pulls/{status['pull_id']}", socket)
        if answer is None:
            return code
        status = answer["pull"]
        if status["total_bytes"]:
            shown(status["template"], status["done_bytes"], status["total_bytes"])
    if status["state"] == "failed":
        out.error(f"pull of {status['template']} failed: {status['error']}", status)
        return EXIT_FAILED
    sources = ", ".join(f"{peer} {n}" for peer, n in sorted(status["sources"].items()))
    verb = "pulled" if status["outcome"] == Pulled.ADDED.value else "already held"
    lines = [f"{status['template']} {verb} from the mesh: verified"]
    if sources:
        lines.append(f"  pieces from: {sources}")
    out.result(status, lines)
    return EXIT_OK


def _agent_templates(socket: str | None) -> dict[str, Any] | None:
    """The running agent's template settings (`nova status`), or None if none answers."""
    try:
        templates = client.get("/v1/status", socket).get("templates")
    except (client.AgentUnavailable, client.AgentRequestFailed, client.MalformedAnswer):
        return None
    return templates if isinstance(templates, dict) and templates.get("dir") else None


def remove(args: argparse.Namespace, out: Output) -> int:
    name, version = _ref(args.ref)
    with _refusals(out) as code:
        disk_dir = Path(_settings(args).disk_dir)
        gone, deleted = _store(args).remove(name, version, disk_dir, args.force)
        data = {"removed": [m.ref for m in gone], "deleted_files": [str(p) for p in deleted]}
        lines = [f"removed {m.ref}" for m in gone] + [f"  deleted {p}" for p in deleted]
        out.result(data, lines)
    return code[0]


# --- describing -------------------------------------------------------------------


def describe(manifest: Manifest) -> dict[str, Any]:
    """A manifest as `--json` prints it."""
    spec = manifest.spec
    return {
        "name": manifest.name,
        "version": manifest.version,
        "os": manifest.os,
        "description": manifest.description,
        "publisher": manifest.publisher,
        "publisher_key": manifest.publisher_key,
        "published_at": manifest.published_at,
        "files": [{"role": f.role, "sha256": f.digest, "size": f.size} for f in manifest.files],
        "spec": {
            "memory_mib": spec.memory_mib,
            "vcpus": spec.vcpus,
            "boot": spec.boot.value,
            "cmdline": spec.cmdline,
            "labels": dict(spec.labels),
        },
    }


def _describe_lines(manifest: Manifest, where: str, checked: str) -> list[str]:
    spec = manifest.spec
    lines = [
        f"template {manifest.ref} ({where})",
        f"  os:          {manifest.os or '-'}",
        f"  description: {manifest.description or '-'}",
        f"  publisher:   {manifest.publisher} (key {manifest.publisher_key})",
        f"  signature:   {checked}",
        f"  defaults:    {spec.memory_mib} MiB, {spec.vcpus} vCPU, boot from {spec.boot.value}",
    ]
    if spec.cmdline:
        lines.append(f"  cmdline:     {spec.cmdline}")
    for k, v in sorted(spec.labels.items()):
        lines.append(f"  label:       {k}={v}")
    for f in manifest.files:
        lines.append(f"  {f.role + ':':12} sha256:{f.digest} ({f.size} bytes)")
    return lines


def template_defaults(args: argparse.Namespace, out: Output | None = None) -> dict[str, Any]:
    """What `nova vm create --template NAME[:VERSION]` starts from: the held template's
    image as the first disk's base, its kernel and initrd, its spec, and a label naming it.

    The store is the running agent's (its `template_dir`), else the configured one. A
    template this host lacks is pulled from the mesh through the agent first (given
    `out`, where its progress shows)."""
    name, version = _ref(args.template)
    agent = _agent_templates(args.socket)
    store = TemplateStore(Path(agent["dir"] if agent else _settings(args).template_dir))
    try:
        manifest = store.find(name, version)
    except StoreError as exc:
        if out is None or agent is None:
            raise CommandError(str(exc)) from None
        if pull_from_mesh(args.template, args.socket, out) != EXIT_OK:
            raise CommandError(
                f"template {args.template} is not on this host and was not pulled"
            ) from None
        manifest = store.find(name, version)
    missing = store.missing_files(manifest)
    if missing:
        raise CommandError(
            f"template {manifest.ref}: {store.file(missing[0])} is gone from the store; "
            f"remove and pull it again (nova template rm {manifest.ref})"
        )
    spec = manifest.spec
    defaults: dict[str, Any] = {
        "vcpus": spec.vcpus,
        "memory_mib": spec.memory_mib,
        "cmdline": spec.cmdline,
        "disks": [{"base": str(store.file(manifest.image))}],
        "labels": {**spec.labels, TEMPLATE_LABEL: manifest.ref},
    }
    for role in ("kernel", "initrd"):
        if manifest.has(role):
            defaults[role] = str(store.file(manifest.file(role)))
    return defaults
