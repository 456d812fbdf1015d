"""`nova` against a coordinator: contexts, sites, operations, and the VM and host commands.

A coordinator is selected by `--coordinator URL` (with `--token`, or
`NOVACRON_TOKEN`), by `--context NAME`, or by the current context of
`~/.config/novacron/config.toml` (`nova context add|use|list|remove`, as
`incus remote` and kubectl contexts do; the file is 0600: it holds tokens).
With one selected, `nova vm list/show/create/start/stop/delete/migrate` and
`nova host drain/undrain` ask the coordinator instead of the local agent, and
`nova sites` and `nova operations` exist. Long work (`create`, `migrate`,
drains) prints its operation, and with `--wait` follows it with progress.
Exit codes as everywhere: 0 ok, 1 failed, 2 bad command line, 3 the
coordinator cannot be reached.
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from .common import (
    EXIT_FAILED,
    EXIT_NO_AGENT,
    EXIT_OK,
    CommandError,
    Groups,
    Handler,
    Output,
    Parser,
    UsageError,
    json_flag,
    key_value,
)
from .table import render
from .vms import DEFAULT_VCPUS

CONFIG = (
    Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config")) / "novacron" / "config.toml"
)
TIMEOUT = 30.0
TERMINAL = ("succeeded", "failed", "cancelled")


class Unreachable(Exception):
    """The coordinator did not answer (exit code 3)."""


class Coordinator:
    """A small JSON client of the coordinator's `/v1`."""

    def __init__(self, url: str, token: str, ca: str = "") -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.tls = ssl.create_default_context(cafile=ca or None)

    def call(self, method: str, path: str, body: Any = None, *, redirects: int = 1) -> Any:
        """`path` under the coordinator's URL (or a full URL: a leader's redirect)."""
        url = path if path.startswith(("https://", "http://")) else self.url + path
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            url,
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        try:
            context = self.tls if url.startswith("https://") else None
            with urllib.request.urlopen(request, timeout=TIMEOUT, context=context) as answer:
                return json.loads(answer.read() or b"null")
        except urllib.error.HTTPError as exc:
            location = exc.headers.get("Location")
            if exc.code == 307 and redirects > 0 and location:  # a follower names the leader
                return self.call(method, location, body, redirects=redirects - 1)
            raise CommandError(_message(exc)) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise Unreachable(f"cannot reach the coordinator at {url}: {reason}") from None


def _message(exc: urllib.error.HTTPError) -> str:
    try:
        error = json.loads(exc.read())["error"]
        field = f" (field {error['field']})" if error.get("field") else ""
        return f"{error['message']}{field}"
    except (ValueError, KeyError, TypeError):
        return f"HTTP {exc.code}"


# --- contexts -------------------------------------------------------------------------


def read_contexts(path: Path = CONFIG) -> dict[str, Any]:
    try:
        with open(path, "rb") as source:
            return tomllib.load(source)
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CommandError(f"{path}: {exc}") from None


def write_contexts(data: dict[str, Any], path: Path = CONFIG) -> None:
    """The file, written whole with mode 0600 (it holds tokens)."""
    lines = []
    if data.get("current"):
        lines.append(f"current = {json.dumps(data['current'])}")
    for name, context in sorted(data.get("contexts", {}).items()):
        lines.append(f"\n[contexts.{json.dumps(name)}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in sorted(context.items())]
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write("\n".join(lines) + "\n")
    os.replace(temporary, path)


def _may_hold_contexts(path: Path) -> bool:
    """Whether `path` exists; a home we may not even look into (another user's, as under
    `sudo -u`) holds no contexts of ours, so the command goes to the local agent."""
    try:
        return path.exists()
    except PermissionError:
        return False


def selected(args: argparse.Namespace) -> Coordinator | None:
    """The coordinator this command line selects, or None (the local agent)."""
    url = getattr(args, "coordinator", None) or os.environ.get("NOVACRON_COORDINATOR", "")
    name = getattr(args, "context", None)
    token = getattr(args, "token", None) or os.environ.get("NOVACRON_TOKEN", "")
    if url:
        return Coordinator(url, token, getattr(args, "coordinator_ca", None) or "")
    data = read_contexts() if name or _may_hold_contexts(CONFIG) else {}
    name = name or data.get("current")
    if not name:
        return None
    context = data.get("contexts", {}).get(name)
    if context is None:
        raise UsageError(f"no context {name!r} (see 'nova context list')")
    return Coordinator(context["url"], token or context.get("token", ""), context.get("ca", ""))


def global_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--coordinator", metavar="URL", help="ask this coordinator, not the agent")
    parser.add_argument("--context", metavar="NAME", help="a coordinator from 'nova context'")
    parser.add_argument("--token", help="the coordinator's bearer token (or NOVACRON_TOKEN)")
    parser.add_argument("--coordinator-ca", metavar="PEM", help="CA of the coordinator's TLS")


def add_federation_commands(groups: Groups[Parser]) -> None:
    context = groups.add_parser("context", help="named coordinators (~/.config/novacron)")
    json_flag(context)
    commands = context.add_subparsers(dest="context_command", metavar="COMMAND", required=True)
    add = commands.add_parser("add", help="remember a coordinator under a name")
    add.add_argument("name")
    add.add_argument("url")
    add.add_argument("--token", dest="context_token", required=True)
    add.add_argument("--ca", default="", help="PEM that signed its TLS certificate")
    add.set_defaults(handler=context_add)
    json_flag(add)
    for name, handler, text in (
        ("use", context_use, "make a context the current one"),
        ("remove", context_remove, "forget a context"),
    ):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("name")
        sub.set_defaults(handler=handler)
        json_flag(sub)
    commands.add_parser("list", help="contexts").set_defaults(handler=context_list)
    json_flag(commands.choices["list"])

    sites = groups.add_parser("sites", help="the coordinator's sites")
    json_flag(sites)
    sites.set_defaults(handler=needs_coordinator(list_sites))

    ops = groups.add_parser("operations", help="the coordinator's operations (newest first)")
    json_flag(ops)
    ops.add_argument("id", nargs="?", help="one operation")
    ops.add_argument("--wait", action="store_true", help="follow it to its end")
    ops.set_defaults(handler=needs_coordinator(show_operations))


def context_add(args: argparse.Namespace, out: Output) -> int:
    data = read_contexts()
    data.setdefault("contexts", {})[args.name] = {
        "url": args.url,
        "token": args.context_token,
        **({"ca": str(Path(args.ca).resolve())} if args.ca else {}),
    }
    data.setdefault("current", args.name)
    write_contexts(data)
    out.result({"context": args.name}, [f"context {args.name}: {args.url}"])
    return EXIT_OK


def context_use(args: argparse.Namespace, out: Output) -> int:
    data = read_contexts()
    if args.name not in data.get("contexts", {}):
        raise CommandError(f"no context {args.name!r} (see 'nova context list')")
    data["current"] = args.name
    write_contexts(data)
    out.result({"current": args.name}, [f"current context: {args.name}"])
    return EXIT_OK


def context_remove(args: argparse.Namespace, out: Output) -> int:
    data = read_contexts()
    if data.get("contexts", {}).pop(args.name, None) is None:
        raise CommandError(f"no context {args.name!r}")
    if data.get("current") == args.name:
        data.pop("current")
    write_contexts(data)
    out.result({"removed": args.name}, [f"context {args.name} removed"])
    return EXIT_OK


def context_list(args: argparse.Namespace, out: Output) -> int:
    data = read_contexts()
    current = data.get("current")
    rows = [
        ("*" if name == current else "", name, context["url"])
        for name, context in sorted(data.get("contexts", {}).items())
    ]
    listing = [{"name": r[1], "url": r[2], "current": bool(r[0])} for r in rows]
    out.result({"contexts": listing}, render(("", "name", "url"), rows) if rows else ["none"])
    return EXIT_OK


# --- dispatch ------------------------------------------------------------------------------


def needs_coordinator(handler: Any) -> Handler:
    def run(args: argparse.Namespace, out: Output) -> int:
        coordinator = selected(args)
        if coordinator is None:
            raise UsageError("no coordinator: give --coordinator URL or --context NAME")
        return _guarded(handler, coordinator, args, out)

    return run


def _guarded(handler: Any, coordinator: Coordinator, args: argparse.Namespace, out: Output) -> int:
    try:
        return int(handler(coordinator, args, out))
    except Unreachable as exc:
        out.error(str(exc))
        return EXIT_NO_AGENT


def federated(handler: Handler, args: argparse.Namespace) -> Handler:
    """The handler to run: its coordinator version when a coordinator is selected."""
    remote = FEDERATED.get(getattr(handler, "__name__", ""))
    if remote is None:
        return handler
    coordinator = selected(args)
    if coordinator is None:
        return handler
    return lambda a, out: _guarded(remote, coordinator, a, out)


def extend(parser: argparse.ArgumentParser) -> None:
    """Coordinator-only options on the commands that go to a coordinator when one is selected."""
    vm = _sub(parser, "vm")
    create = _sub(vm, "create")
    create.add_argument("--site", help="with a coordinator: only this site")
    create.add_argument(
        "--where", action="append", default=[], metavar="K=V",
        help="with a coordinator: a site label it needs (region=eu-west, residency=fr)",
    )  # fmt: skip
    create.add_argument("--wait", action="store_true", help="with a coordinator: follow it")
    listing = _sub(vm, "list")
    for name in ("site", "host", "state"):
        listing.add_argument(f"--{name}", help=f"with a coordinator: only this {name}")
    listing.add_argument("--label", action="append", default=[], metavar="K=V")
    for name in ("show", "start", "stop", "delete", "migrate"):
        _sub(vm, name).add_argument("--site", help="with a coordinator: the VM's site")
    host = _sub(parser, "host")
    for name in ("drain", "undrain"):
        _sub(host, name).add_argument("--site", help="with a coordinator: the host's site")


def _sub(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and name in action.choices:
            return action.choices[name]  # type: ignore[no-any-return]
    raise KeyError(name)


# --- the commands, against a coordinator ---------------------------------------------------


def list_sites(c: Coordinator, args: argparse.Namespace, out: Output) -> int:
    sites = c.call("GET", "/v1/sites?per_page=1000")["items"]
    rows = [
        (s["name"], s["state"], "up" if s["connected"] else "down", s["gateway"] or None,
         ",".join(f"{k}={v}" for k, v in sorted(s["labels"].items())) or None)
        for s in sites
    ]  # fmt: skip
    out.result({"sites": sites}, render(("site", "state", "link", "gateway", "labels"), rows))
    return EXIT_OK


def remote_list_vms(c: Coordinator, args: argparse.Namespace, out: Output) -> int:
    query = [("per_page", "1000")]
    for name in ("site", "host", "state"):
        if getattr(args, name, None):
            query.append((name, getattr(args, name)))
    query += [("label", item) for item in getattr(args, "label", [])]
    vms: list[dict[str, Any]] = []
    token = None
    while True:
        page = c.call("GET", "/v1/vms?" + urllib.parse.urlencode([*query, *_token(token)]))
        vms += page["items"]
        token = page["next_token"]
        if not token:
            break
    rows = [(v["site"], v["name"], v["state"], v["host"], v["vcpus"], v["memory_mib"]) for v in vms]
    out.result({"vms": vms}, render(("site", "name", "state", "host", "vcpus", "memory mib"), rows))
    return EXIT_OK


def _token(token: str | None) -> list[tuple[str, str]]:
    return [("next_token", token)] if token else []


def remote_show_vm(c: Coordinator, args: argparse.Namespace, out: Output) -> int:
    vm = c.call("GET", f"/v1/vms/{_vm_id(c, args.name, args.site)}")
    lines = [
        f"vm:      {vm['site']}:{vm['name']}",
        f"runs on: {vm['host']} ({vm['state']})",
        f"size:    {vm['vcpus']} vCPUs, {vm['memory_mib']} MiB",
    ]
    lines += [
        f"moved:   {h['from_host'] or '-'} -> {h['to_host'] or '-'} ({h['how']})"
        for h in vm["history"]
    ]
    out.result({"vm": vm}, lines)
    return EXIT_OK


def _vm_id(c: Coordinator, name: str, site: str | None) -> str:
    """SITE:NAME for `name` (already SITE:NAME, or with --site, or the one site running it)."""
    if ":" in name:
        return urllib.parse.quote(name, safe=":")
    if site:
        return urllib.parse.quote(f"{site}:{name}", safe=":")
    found = c.call("GET", "/v1/vms?per_page=1000")["items"]
    sites = sorted({vm["site"] for vm in found if vm["name"] == name})
    if len(sites) != 1:
        where = f"sites {', '.join(sites)}" if sites else "no site"
        raise CommandError(f"VM {name} is known in {where}: name it SITE:{name} or give --site")
    return urllib.parse.quote(f"{sites[0]}:{name}", safe=":")


def remote_create_vm(c: Coordinator, args: argparse.Namespace, out: Output) -> int:
    if getattr(args, "template", None):
        raise UsageError("--template names a template pulled to this host: not with a coordinator")
    if args.memory is None:
        raise UsageError("--memory is required")
    body: dict[str, Any] = {
        "name": args.name,
        "vcpus": DEFAULT_VCPUS if args.vcpus is None else args.vcpus,
        "memory_mib": args.memory,
        "start": True,
    }
    for name in ("kernel", "initrd", "cmdline"):
        if getattr(args, name, None):
            body[name] = getattr(args, name)
    labels = dict(_pairs(getattr(args, "label", None) or [], "--label"))
    if labels:
        body["labels"] = labels
    disks = getattr(args, "disk", None) or []
    if disks:
        body["disks"] = [_disk(d) for d in disks]
    constraints: dict[str, Any] = {}
    if args.site:
        constraints["site"] = args.site
    wanted = dict(_pairs(args.where, "--where"))
    if wanted:
        constraints["labels"] = wanted
    if constraints:
        body["constraints"] = constraints
    return _operation(c, c.call("POST", "/v1/vms", body), args, out)


def _disk(text: str) -> dict[str, Any]:
    base, sep, size = text.rpartition(":")
    if sep and size.isdigit():
        return {"base": base, "size_mib": int(size)}
    return {"base": text}


def _pairs(items: list[str], flag: str) -> list[tuple[str, str]]:
    return [key_value(item, flag) for item in items]


def remote_start_vm(c: Coordinator, args: argparse.Namespace, out: Output) -> int:
    return _vm_action(c, args, out, "start", {})


def remote_stop_vm(c: Coordinator, args: argparse.Namespace, out: Output) -> int:
    timeout = getattr(args, "timeout", None)
    return _vm_action(c, args, out, "stop", {"timeout": timeout} if timeout is not None else {})


def remote_delete_vm(c: Coordinator, args: argparse.Namespace, out: Output) -> int:
    vm = _vm_id(c, args.name, args.site)
    force = "?force=true" if args.force else ""
    return _operation(c, c.call("DELETE", f"/v1/vms/{vm}{force}"), args, out)


def remote_migrate_vm(c: Coordinator, args: argparse.Namespace, out: Output) -> int:
    body = {"to": args.to} if args.to else {}
    return _operation(
        c, c.call("POST", f"/v1/vms/{_vm_id(c, args.vm, args.site)}/migrate", body), args, out
    )


def _vm_action(
    c: Coordinator, args: argparse.Namespace, out: Output, action: str, body: dict[str, Any]
) -> int:
    vm = _vm_id(c, args.name, args.site)
    return _operation(c, c.call("POST", f"/v1/vms/{vm}/{action}", body), args, out)


def remote_drain(c: Coordinator, args: argparse.Namespace, out: Output) -> int:
    return _host_action(c, args, out, "drain")


def remote_undrain(c: Coordinator, args: argparse.Namespace, out: Output) -> int:
    return _host_action(c, args, out, "undrain")


def _host_action(c: Coordinator, args: argparse.Namespace, out: Output, action: str) -> int:
    node = getattr(args, "node", None) or getattr(args, "node_id", None)
    site = args.site
    if node and "/" in node and not site:
        site, _, node = node.partition("/")
    if not node or not site:
        raise UsageError(f"name the host as SITE/HOST or give --site: nova host {action} SITE/HOST")
    path = f"/v1/sites/{urllib.parse.quote(site)}/hosts/{urllib.parse.quote(node)}/{action}"
    return _operation(c, c.call("POST", path), args, out)


def _operation(c: Coordinator, op: dict[str, Any], args: argparse.Namespace, out: Output) -> int:
    """Report an accepted operation; with --wait, follow it to its end with progress."""
    if not getattr(args, "wait", False):
        out.result(
            {"operation": op}, [f"operation {op['id']}: {op['kind']} {op['status']}", op["detail"]]
        )
        return EXIT_OK
    return _follow(c, op, out)


def _follow(c: Coordinator, op: dict[str, Any], out: Output) -> int:
    last = ""
    while op["status"] not in TERMINAL:
        line = f"{op['kind']} {op['target']}: {op['status']} {op['progress']}% {op['detail']}"
        if line != last and not out.json:
            print(line, file=sys.stderr)
            last = line
        op = c.call("GET", f"/v1/operations/{op['id']}/wait?timeout=10")
    if op["status"] != "succeeded":
        error = (op.get("error") or {}).get("message") or op["detail"]
        out.error(f"{op['kind']} {op['target']} {op['status']}: {error}", {"operation": op})
        return EXIT_FAILED
    out.result({"operation": op}, [f"{op['kind']} {op['target']}: succeeded: {op['detail']}"])
    return EXIT_OK


def show_operations(c: Coordinator, args: argparse.Namespace, out: Output) -> int:
    if args.id:
        op = c.call("GET", f"/v1/operations/{urllib.parse.quote(args.id)}")
        if args.wait:
            return _follow(c, op, out)
        out.result(
            {"operation": op},
            [f"{op['id']}: {op['kind']} {op['target']} {op['status']}", op["detail"]],
        )
        return EXIT_OK
    ops = c.call("GET", "/v1/operations?per_page=50")["items"]
    rows = [
        (o["id"][:8], o["kind"], o["site"], o["target"], o["status"], o["detail"][:60]) for o in ops
    ]
    out.result(
        {"operations": ops}, render(("id", "kind", "site", "target", "status", "detail"), rows)
    )
    return EXIT_OK


FEDERATED = {
    "list_vms": remote_list_vms,
    "show_vm": remote_show_vm,
    "create_vm": remote_create_vm,
    "start_vm": remote_start_vm,
    "stop_vm": remote_stop_vm,
    "delete_vm": remote_delete_vm,
    "migrate_vm": remote_migrate_vm,
    "drain_host": remote_drain,
    "undrain_host": remote_undrain,
}
"""Local handlers (by name) and their coordinator versions."""
