"""`nova-coordinator`: run the coordinator, and manage its sites and API tokens locally.

    nova-coordinator serve [--listen ADDR:PORT] [--tls-cert F --tls-key F] [--database URL]
    nova-coordinator site add NAME [--label K=V ...] [--cost N]    # prints the enrollment token
    nova-coordinator site token NAME                              # a new one-time token
    nova-coordinator site list | revoke NAME
    nova-coordinator token create NAME --role reader|operator|admin [--tenant T]
    nova-coordinator token list | revoke ID

The local commands open the database directly (as the host's administrator:
`local-admin` in the audit). Every command takes `--json`. Settings also come
from the environment (`NOVACRON_COORDINATOR_DATABASE`, `..._DATA_DIR`).
Exit codes: 0 ok, 1 failed, 2 bad command line.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from novacron.agent import logs
from novacron.agent.sdnotify import Notifier

from .db import DatabaseError, open_database
from .service import Coordinator, ServiceConfig, server_tls
from .store import LOCAL_ADMIN, ROLES, Store, StoreError

log = logging.getLogger("novacron.coordinator")

DEFAULT_DATA_DIR = "/var/lib/novacron-coordinator"
DEFAULT_LISTEN = "0.0.0.0:8443"
EXIT_FAILED = 1
EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    env = os.environ
    parser = argparse.ArgumentParser(prog="nova-coordinator", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument(
        "--data-dir", default=env.get("NOVACRON_COORDINATOR_DATA_DIR", DEFAULT_DATA_DIR)
    )
    parser.add_argument(
        "--database",
        default=env.get("NOVACRON_COORDINATOR_DATABASE", ""),
        help="postgresql://... (default: SQLite in the data directory)",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the coordinator")
    serve.add_argument("--listen", default=env.get("NOVACRON_COORDINATOR_LISTEN", DEFAULT_LISTEN))
    serve.add_argument("--tls-cert", default=env.get("NOVACRON_COORDINATOR_TLS_CERT", ""))
    serve.add_argument("--tls-key", default=env.get("NOVACRON_COORDINATOR_TLS_KEY", ""))
    serve.add_argument("--url", default="", help="how others reach this coordinator")
    serve.add_argument("--node", default=socket.gethostname(), help="this coordinator's id")
    serve.add_argument("--rate", type=float, default=100.0, help="requests/s per token (0: off)")
    serve.add_argument(
        "--tracing-otlp",
        default=env.get("NOVACRON_COORDINATOR_TRACING_OTLP", ""),
        metavar="URL",
        help="send the API's spans to this OTLP/HTTP collector (default: no traces)",
    )
    serve.add_argument("--log-format", choices=("kv", "json"), default="kv")
    serve.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info")

    site = commands.add_parser("site", help="sites").add_subparsers(dest="action", required=True)
    add = site.add_parser("add", help="add a site; prints its one-time enrollment token")
    add.add_argument("name")
    add.add_argument("--label", action="append", default=[], metavar="K=V")
    add.add_argument("--cost", type=float, default=0.0)
    site.add_parser("token", help="a new enrollment token").add_argument("name")
    site.add_parser("list", help="sites")
    site.add_parser("revoke", help="refuse the site's link from now on").add_argument("name")

    token = commands.add_parser("token", help="API tokens").add_subparsers(
        dest="action", required=True
    )
    create = token.add_parser("create", help="create a token (the secret is printed once)")
    create.add_argument("name")
    create.add_argument("--role", choices=ROLES, required=True)
    create.add_argument("--tenant", default="")
    token.add_parser("list", help="tokens")
    token.add_parser("revoke", help="revoke a token").add_argument("id")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    as_json = "--json" in argv  # accepted anywhere on the line, as nova's is
    args = build_parser().parse_args([a for a in argv if a != "--json"])
    args.json = as_json
    try:
        if args.command == "serve":
            logs.configure(args.log_format, args.log_level)
            return asyncio.run(_serve(args))
        return asyncio.run(_local(args))
    except (DatabaseError, StoreError, OSError, ValueError) as exc:
        _error(args, str(exc))
        return EXIT_FAILED


def _error(args: argparse.Namespace, message: str) -> None:
    print(f"nova-coordinator: error: {message}", file=sys.stderr)
    if args.json:
        print(json.dumps({"ok": False, "error": message}))


async def _local(args: argparse.Namespace) -> int:
    db = await open_database(args.database, Path(args.data_dir))
    try:
        result = await _run_local(Store(db), args)
    finally:
        await db.close()
    if args.json:
        print(json.dumps(result, indent=1, sort_keys=True))
    else:
        print(_text(args, result))
    return 0


async def _run_local(store: Store, args: argparse.Namespace) -> Any:
    key = (args.command, args.action)
    if key == ("site", "add"):
        labels = dict(_label(item) for item in args.label)
        site, token = await store.add_site(args.name, labels, args.cost, LOCAL_ADMIN)
        await _audit(store, "addSite", args.name)
        return {"site": site, "enrollment_token": token}
    if key == ("site", "token"):
        token = await store.new_enrollment(args.name, LOCAL_ADMIN)
        await _audit(store, "newEnrollmentToken", args.name)
        return {"site": args.name, "enrollment_token": token}
    if key == ("site", "list"):
        return await store.sites()
    if key == ("site", "revoke"):
        await _audit(store, "revokeSite", args.name)
        return await store.revoke_site(args.name, LOCAL_ADMIN)
    if key == ("token", "create"):
        created, secret = await store.create_token(args.name, args.role, args.tenant, LOCAL_ADMIN)
        await _audit(store, "createToken", created["id"])
        return {"token": created, "secret": secret}
    if key == ("token", "list"):
        return await store.tokens()
    await _audit(store, "revokeToken", args.id)
    return await store.revoke_token(args.id, LOCAL_ADMIN)


async def _audit(store: Store, action: str, target: str) -> None:
    await store.audit(LOCAL_ADMIN, "CLI", "nova-coordinator", action, target, 0)


def _label(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ValueError(f"label {item!r} is not K=V")
    return key, value


def _text(args: argparse.Namespace, result: Any) -> str:
    if isinstance(result, dict) and "enrollment_token" in result:
        return (
            f"site {args.name}: enrollment token (one use, 24 h):\n{result['enrollment_token']}\n"
            f"on any host of the site: nova site enroll URL TOKEN"
        )
    if isinstance(result, dict) and "secret" in result:
        token = result["token"]
        return f"token {token['id']} ({args.role}); the secret, shown once:\n{result['secret']}"
    if isinstance(result, list):
        return "\n".join(_line(row) for row in result) or "(none)"
    return _line(result)


def _line(row: dict[str, Any]) -> str:
    if "role" in row:
        revoked = " revoked" if row.get("revoked_at") else ""
        return f"{row['id']}  {row['name']}  {row['role']}{revoked}"
    link = "connected" if row.get("connected") else "not connected"
    return f"{row['name']}  {row['state']}  {link}"


# --- serve --------------------------------------------------------------------------------


async def _serve(args: argparse.Namespace) -> int:
    host, _, port = args.listen.rpartition(":")
    if not host or not port.isdigit():
        print(
            f"nova-coordinator: error: --listen {args.listen!r} is not ADDR:PORT", file=sys.stderr
        )
        return EXIT_USAGE
    if bool(args.tls_cert) != bool(args.tls_key):
        print("nova-coordinator: error: --tls-cert and --tls-key go together", file=sys.stderr)
        return EXIT_USAGE
    if args.tracing_otlp and urlsplit(args.tracing_otlp).scheme not in ("http", "https"):
        print(
            f"nova-coordinator: error: --tracing-otlp {args.tracing_otlp!r} is not an http:// "
            "or https:// URL",
            file=sys.stderr,
        )
        return EXIT_USAGE
    db = await open_database(args.database, Path(args.data_dir))
    leadership = None
    if db.dialect == "postgresql":
        from .leader import Leadership

        url = args.url or f"{'https' if args.tls_cert else 'http'}://{args.listen}"
        leadership = Leadership(args.database, args.node, url)
        await leadership.start()
    store = Store(db, poll=1.0)
    coordinator = Coordinator(
        store,
        ServiceConfig(
            node=args.node,
            url=args.url,
            rate=args.rate,
            burst=max(2 * args.rate, 1),
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            templates=str(Path(args.data_dir) / "templates"),
            tracing_otlp=args.tracing_otlp,
        ),
        is_leader=leadership.is_leader if leadership else lambda: True,
        leader_url=leadership.leader_url if leadership else lambda: "",
    )
    if leadership is not None:
        leadership.on_change = coordinator.leadership_changed
        coordinator.leadership_changed(leadership.is_leader())
    runner = web.AppRunner(coordinator.app(), access_log=None, handle_signals=False)
    await runner.setup()
    tls = server_tls(args.tls_cert, args.tls_key) if args.tls_cert else None
    try:
        await web.TCPSite(runner, host, int(port), ssl_context=tls).start()
    except OSError as exc:
        await runner.cleanup()
        await db.close()
        print(f"nova-coordinator: error: cannot listen on {args.listen}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    # What was built to start (modules, the app and its routes: most of the process's
    # objects) lives as long as the process. Kept out of the cyclic collector's scans, a
    # full collection no longer walks it, and no longer pauses every request while it does.
    gc.freeze()
    log.info(
        "coordinator serving",
        extra={"fields": {"listen": args.listen, "database": db.dialect, "tls": bool(tls)}},
    )
    Notifier().ready(f"serving on {args.listen} ({db.dialect})")
    traces = (
        asyncio.create_task(coordinator.tracing.exporter.run(), name="traces")
        if coordinator.tracing is not None
        else None
    )
    await stop.wait()
    await coordinator.links.close()
    await runner.cleanup()
    if traces is not None and coordinator.tracing is not None:
        traces.cancel()
        await coordinator.tracing.exporter.flush()
    if leadership is not None:
        await leadership.close()
    await db.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
