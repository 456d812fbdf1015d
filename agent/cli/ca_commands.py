"""The `nova ca` command line: its parser, with the work in `ca.py` loaded on use.

`ca.py` needs the signing library (PyNaCl, which loads libsodium) and the
certificate code; every `nova` invocation builds the whole parser, so this
module defers that import to the moment a `nova ca` command actually runs.
"""

from __future__ import annotations

import argparse
import re

from .common import Groups, Handler, Parser, agent_flags, handled_later, json_flag

DEFAULT_CA_DIR = "/etc/novacron/ca"
CA_DIR_ENV = "NOVACRON_CA_DIR"
DEFAULT_DAYS = 365


def _later(name: str) -> Handler:
    return handled_later("ca", name)


def add_ca_commands(groups: Groups[Parser]) -> None:
    """Register `nova ca init|issue|revoke|show`: the operator's certificate authority."""
    ca = groups.add_parser(
        "ca", help="cluster certificate authority: issue and revoke node certificates"
    )
    json_flag(ca)
    commands = ca.add_subparsers(dest="ca_command", metavar="COMMAND", required=True)
    dir_help = f"CA directory (default: ${CA_DIR_ENV} or {DEFAULT_CA_DIR})"

    init = commands.add_parser("init", help="create the cluster CA key pair")
    init.add_argument("--dir", help=dir_help)
    init.add_argument(
        "--force", action="store_true", help="replace an existing CA (invalidates all certificates)"
    )
    init.set_defaults(handler=_later("ca_init"))

    issue = commands.add_parser("issue", help="create a node's keys and certificate")
    issue.add_argument(
        "node_id", metavar="NODE_ID", type=_node_id_arg, help="1-64 of A-Z a-z 0-9 . _ -"
    )
    issue.add_argument("--dir", help=dir_help)
    issue.add_argument(
        "--out", default=".", help="where NODE_ID.key and NODE_ID.crt go (default: .)"
    )
    issue.add_argument(
        "--days", type=_days_arg, default=DEFAULT_DAYS, help=f"validity (default: {DEFAULT_DAYS})"
    )
    issue.add_argument("--force", action="store_true", help="replace existing NODE_ID.key/.crt")
    issue.add_argument(
        "--renew",
        action="store_true",
        help="new certificate for the keys in NODE_ID.key (a running agent reloads it)",
    )
    issue.add_argument(
        "--role",
        choices=("node", "operator"),
        default="node",
        help="node: a mesh member (default); operator: a person who may command any host",
    )
    issue.set_defaults(handler=_later("ca_issue"))

    revoke = commands.add_parser("revoke", help="revoke a certificate by serial or file")
    revoke.add_argument("target", metavar="SERIAL|CERTFILE")
    revoke.add_argument("--dir", help=dir_help)
    revoke.set_defaults(handler=_later("ca_revoke"))

    show = commands.add_parser("show", help="print a certificate and verify it against the CA")
    show.add_argument("certfile", metavar="CERTFILE")
    show.add_argument("--dir", help=dir_help)
    show.set_defaults(handler=_later("ca_show"))

    publish = commands.add_parser(
        "publish", help="hand the revocation list to this host's agent; the mesh spreads it"
    )
    publish.add_argument("--dir", help=dir_help)
    publish.add_argument("--crl", metavar="FILE", help="the list to publish (default: DIR/crl.pem)")
    agent_flags(publish)
    publish.set_defaults(handler=_later("ca_publish"))

    for sub in (init, issue, revoke, show):
        json_flag(sub)


def _node_id_arg(text: str) -> str:
    from novacron.protocol.certificates import check_node_id
    from novacron.protocol.errors import InvalidNodeId

    try:
        return check_node_id(text)
    except InvalidNodeId as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _days_arg(text: str) -> int:
    if not re.fullmatch(r"[0-9]+", text) or not 1 <= int(text) <= 36500:
        raise argparse.ArgumentTypeError(f"invalid day count {text!r}: use a whole number 1-36500")
    return int(text)
