"""`nova site enroll URL TOKEN`: make this host's site known to a coordinator.

Run on any host of the site, as root (it reads the node's key): the host
sends the cluster CA's public key with the one-time token that
`nova-coordinator site add NAME` printed, and signs both with its own node
key, whose certificate (issued by that CA) goes along. The coordinator's
TLS certificate is verified (`--coordinator-ca`, or the agent's
`coordinator_ca` setting, or the system's trust store).
"""

from __future__ import annotations

import argparse
import base64
import json
import socket
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from novacron.agent.config import ConfigError, identity_paths, load
from novacron.agent.identity import IdentityProblem, load_identity
from novacron.protocol.sitelink import enroll_bytes

from .common import EXIT_OK, CommandError, Groups, Output, Parser, json_flag

TIMEOUT = 15.0


def add_site_commands(groups: Groups[Parser]) -> None:
    site = groups.add_parser("site", help="this host's site and the coordinator")
    json_flag(site)
    commands = site.add_subparsers(dest="site_command", metavar="COMMAND", required=True)
    enroll_parser = commands.add_parser(
        "enroll", help="enroll this site's CA with a coordinator (one-time token)"
    )
    json_flag(enroll_parser)
    enroll_parser.add_argument("url", help="the coordinator, https://HOST:PORT")
    enroll_parser.add_argument("token", help="from 'nova-coordinator site add NAME'")
    enroll_parser.add_argument("--config", help="the agent's TOML file (its CA, certificate, key)")
    enroll_parser.add_argument("--coordinator-ca", help="PEM that signed the coordinator's TLS")
    enroll_parser.set_defaults(handler=enroll)


def enroll(args: argparse.Namespace, out: Output) -> int:
    if not args.url.startswith("https://"):
        raise CommandError(f"{args.url} is not an https:// URL: enrollment goes over TLS")
    try:
        config = load({}, config_file=args.config)
        cert_file, key_file = identity_paths(config, socket.gethostname())
        identity = load_identity(Path(config.ca_file), cert_file, key_file, None, time.time())
    except (ConfigError, IdentityProblem) as exc:
        raise CommandError(str(exc)) from None
    ca = identity.ca_public.public_bytes_raw()
    body = {
        "token": args.token,
        "ca_public": base64.b64encode(ca).decode(),
        "certificate": base64.b64encode(identity.certificate_bytes).decode(),
        "signature": base64.b64encode(
            identity.key.signing.sign(enroll_bytes(args.token, ca))
        ).decode(),
    }
    tls = ssl.create_default_context(cafile=args.coordinator_ca or config.coordinator_ca or None)
    site = _post(args.url.rstrip("/") + "/v1/enroll", body, tls)
    out.result(
        {"site": site},
        [
            f"enrolled: the coordinator knows this cluster's CA as site {site['name']}",
            f'next: coordinator = ["{args.url}"] in agent.toml on the hosts that may hold '
            "the link, then restart their agents",
        ],
    )
    return EXIT_OK


def _post(url: str, body: dict[str, Any], tls: ssl.SSLContext) -> dict[str, Any]:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT, context=tls) as answer:
            return json.loads(answer.read())  # type: ignore[no-any-return]
    except urllib.error.HTTPError as exc:
        raise CommandError(f"the coordinator refused: {_message(exc)}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise CommandError(f"cannot reach the coordinator at {url}: {reason}") from None


def _message(exc: urllib.error.HTTPError) -> str:
    try:
        return str(json.loads(exc.read())["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {exc.code}"
