"""The `nova template` command line: its parser, with the work in `template.py` loaded on use.

Like `nova ca`, the work needs the signing library; every `nova` invocation
builds the whole parser, so the import waits until a template command runs.
"""

from __future__ import annotations

import argparse

from .common import Groups, Handler, Parser, handled_later, json_flag

CATALOGUE_HELP = "directory or URL (over HTTP, sends $NOVA_CATALOGUE_TOKEN as a bearer token)"


def _later(name: str) -> Handler:
    return handled_later("template", name)


def add_template_commands(groups: Groups[Parser]) -> None:
    """Register `nova template keygen|publish|list|show|pull|rm`."""
    template = groups.add_parser(
        "template", help="signed VM templates: publish to a catalogue, pull onto this host"
    )
    json_flag(template)
    commands = template.add_subparsers(dest="template_command", metavar="COMMAND", required=True)

    keygen = commands.add_parser("keygen", help="create a publisher key pair (NAME.key, NAME.pub)")
    keygen.add_argument("name", metavar="NAME", help="the publisher's name, e.g. acme-images")
    keygen.add_argument("--out", default=".", help="where the two files go (default: .)")
    keygen.add_argument("--force", action="store_true", help="replace existing key files")
    keygen.set_defaults(handler=_later("keygen"))

    publish = commands.add_parser("publish", help="sign a template into a catalogue directory")
    publish.add_argument("image", metavar="IMAGE", help="the qcow2 disk image")
    publish.add_argument("--name", required=True, help="template name: a-z 0-9 . _ -")
    publish.add_argument("--version", required=True, help="e.g. 1, 1.2 or 2024.6.1")
    publish.add_argument("--key", required=True, metavar="FILE", help="publisher key (keygen)")
    publish.add_argument("--to", required=True, metavar="DIR", help="the catalogue directory")
    publish.add_argument("--publisher", help="publisher name shown (default: the key file's)")
    publish.add_argument("--os", default="", help="e.g. debian-12")
    publish.add_argument("--description", default="")
    publish.add_argument("--memory", type=int, required=True, metavar="MiB", help="default memory")
    publish.add_argument("--vcpus", type=int, default=1, help="default vCPUs (1)")
    publish.add_argument("--kernel", metavar="FILE", help="kernel for direct boot (else disk)")
    publish.add_argument("--initrd", metavar="FILE", help="initramfs for direct boot")
    publish.add_argument("--cmdline", default="", help="kernel command line")
    publish.add_argument(
        "--label", action="append", default=[], metavar="KEY=VALUE", help="(repeatable)"
    )
    publish.set_defaults(handler=_later("publish"))

    listing = commands.add_parser("list", help="templates on this host, or in a catalogue")
    listing.add_argument("--from", dest="source", metavar="CATALOGUE", help=CATALOGUE_HELP)
    _store_flags(listing)
    listing.set_defaults(handler=_later("list_templates"))

    show = commands.add_parser("show", help="one template's manifest (from a catalogue: verified)")
    show.add_argument("ref", metavar="NAME[:VERSION]")
    show.add_argument("--from", dest="source", metavar="CATALOGUE", help=CATALOGUE_HELP)
    _store_flags(show)
    show.set_defaults(handler=_later("show"))

    pull = commands.add_parser(
        "pull",
        help="fetch and verify a template into this host's store: from the peers that hold "
        "it (through the agent), or with --from from a catalogue",
    )
    pull.add_argument("ref", metavar="NAME[:VERSION]", help="default version: the newest offered")
    pull.add_argument(
        "--from",
        dest="source",
        metavar="CATALOGUE",
        help=f"{CATALOGUE_HELP} (default: the mesh, through the agent)",
    )
    pull.add_argument(
        "--socket", help="agent API socket, for a pull from the mesh (default: the agent's)"
    )
    _store_flags(pull)
    pull.set_defaults(handler=_later("pull"))

    remove = commands.add_parser("rm", help="remove a template (all versions without :VERSION)")
    remove.add_argument("ref", metavar="NAME[:VERSION]")
    remove.add_argument(
        "--force", action="store_true", help="even if a VM's disk (in disk_dir) is based on it"
    )
    _store_flags(remove)
    remove.set_defaults(handler=_later("remove"))

    for sub in (keygen, publish, listing, show, pull, remove):
        json_flag(sub)


def _store_flags(parser: argparse.ArgumentParser) -> None:
    """Where this host's templates are and whom it trusts: the agent's settings by default."""
    parser.add_argument("--config", metavar="FILE", help="the agent's TOML file")
    parser.add_argument("--store", metavar="DIR", help="template store (default: template_dir)")
    parser.add_argument(
        "--trust",
        action="append",
        default=[],
        metavar="FILE",
        help="also trust this publisher public key (repeatable; besides trusted_publishers)",
    )
