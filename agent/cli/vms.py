"""`nova vm create|start|stop|delete`: VMs on this host, through its agent.

The agent does the work (and refuses with the reason: bad spec, name taken,
no capacity, host draining, VM migrating); these commands only ask and report.
"""

from __future__ import annotations

import argparse
from typing import Any

from novacron.agent import client

from .common import EXIT_OK, Groups, Output, Parser, UsageError, agent_flags, ask, key_value

DEFAULT_VCPUS = 1  # a VM's vCPUs when neither --vcpus nor a template says


def add_vm_lifecycle_commands(vm_commands: Groups[Parser]) -> None:
    """Register create, start, stop and delete in the `vm` group."""
    create = vm_commands.add_parser("create", help="define a VM on this host (and start it)")
    create.add_argument("name", metavar="VM")
    create.add_argument(
        "--template",
        metavar="NAME[:VERSION]",
        help="a template pulled to this host (nova template pull): its image is the first "
        "disk's base, its spec the defaults of the flags below",
    )
    create.add_argument("--vcpus", type=int, help="virtual CPUs (default: the template's, or 1)")
    create.add_argument(
        "--memory", type=int, metavar="MiB", help="memory (required without --template)"
    )
    create.add_argument("--kernel", metavar="PATH", help="kernel for direct boot")
    create.add_argument("--initrd", metavar="PATH", help="initramfs for direct boot")
    create.add_argument("--cmdline", help="kernel command line")
    create.add_argument(
        "--disk",
        action="append",
        default=[],
        metavar="BASE[:MiB]",
        help="a qcow2 overlay on base image BASE, optionally resized (repeatable)",
    )
    create.add_argument(
        "--label", action="append", default=[], metavar="KEY=VALUE", help="(repeatable)"
    )
    create.add_argument("--start", action="store_true", help="start it once defined")
    agent_flags(create)
    create.set_defaults(handler=create_vm)

    start = vm_commands.add_parser("start", help="start a VM defined on this host")
    start.add_argument("name", metavar="VM")
    agent_flags(start)
    start.set_defaults(handler=start_vm)

    stop = vm_commands.add_parser("stop", help="shut a VM down (forced after a timeout)")
    stop.add_argument("name", metavar="VM")
    stop.add_argument(
        "--timeout", type=float, default=30.0, metavar="s", help="grace before forcing (30)"
    )
    agent_flags(stop)
    stop.set_defaults(handler=stop_vm)

    delete = vm_commands.add_parser("delete", help="remove a VM and the disks it owns")
    delete.add_argument("name", metavar="VM")
    delete.add_argument("--force", action="store_true", help="also if it is running")
    agent_flags(delete)
    delete.set_defaults(handler=delete_vm)

    recover = vm_commands.add_parser(
        "recover", help="run a VM in doubt on one host (every other copy is removed)"
    )
    recover.add_argument("name", metavar="VM")
    recover.add_argument(
        "--on", required=True, metavar="HOST", help="the host to run it on (holds its definition)"
    )
    agent_flags(recover)
    recover.set_defaults(handler=recover_vm)


def create_vm(args: argparse.Namespace, out: Output) -> int:
    answer, code = ask(out, client.post, "/v1/vms", create_request(args, out), args.socket)
    if answer is None:
        return code
    what = "created and started" if answer["started"] else "created (not started)"
    out.result(answer, [f"VM {args.name} {what} on {answer['host']}"])
    return EXIT_OK


def create_request(args: argparse.Namespace, out: Output | None = None) -> dict[str, Any]:
    """The agent's create request: the flags, over a template's defaults if one is named
    (pulled from the mesh through the agent first if this host lacks it, given `out`)."""
    base: dict[str, Any] = {"vcpus": DEFAULT_VCPUS, "cmdline": "", "disks": [], "labels": {}}
    if args.template:
        from .template import template_defaults  # loads the signing library: only when used

        base = template_defaults(args, out)
    elif args.memory is None:
        raise UsageError("--memory is required (or --template, whose spec gives it)")
    body: dict[str, Any] = {
        "name": args.name,
        "vcpus": base["vcpus"] if args.vcpus is None else args.vcpus,
        "memory_mib": base.get("memory_mib") if args.memory is None else args.memory,
        "cmdline": base["cmdline"] if args.cmdline is None else args.cmdline,
        "disks": base["disks"] + [_disk(text) for text in args.disk],
        "labels": {**base["labels"], **dict(key_value(text, "label") for text in args.label)},
        "start": args.start,
    }
    for key in ("kernel", "initrd"):
        if getattr(args, key) or base.get(key):
            body[key] = getattr(args, key) or base[key]
    return body


def start_vm(args: argparse.Namespace, out: Output) -> int:
    answer, code = ask(out, client.post, f"/v1/vms/{args.name}/start", {}, args.socket)
    if answer is None:
        return code
    what = "started" if answer["started"] else "was already running"
    out.result(answer, [f"VM {args.name} {what}"])
    return EXIT_OK


def stop_vm(args: argparse.Namespace, out: Output) -> int:
    body = {"timeout": args.timeout}
    timeout = args.timeout + 30.0  # the agent waits for the guest; we wait for the agent
    answer, code = ask(out, client.post, f"/v1/vms/{args.name}/stop", body, args.socket, timeout)
    if answer is None:
        return code
    how = answer["stopped"]
    line = f"VM {args.name} was not running" if how == "not running" else f"VM {args.name} {how}"
    if how in ("graceful", "forced"):
        line = f"VM {args.name} stopped ({how})"
    out.result(answer, [line])
    return EXIT_OK


def delete_vm(args: argparse.Namespace, out: Output) -> int:
    path = f"/v1/vms/{args.name}" + ("?force=1" if args.force else "")
    answer, code = ask(out, client.delete, path, args.socket, 60.0)
    if answer is None:
        return code
    lines = [f"VM {args.name} deleted"] + [f"  removed {p}" for p in answer["removed"]]
    out.result(answer, lines)
    return EXIT_OK


def recover_vm(args: argparse.Namespace, out: Output) -> int:
    path = f"/v1/vms/{args.name}/recover"
    answer, code = ask(out, client.post, path, {"on": args.on}, args.socket, 120.0)
    if answer is None:
        return code
    what = "started afresh" if answer["started"] else "already ran there"
    lines = [f"VM {args.name} recovered on {answer['host']}: {what}"]
    lines += [f"  {host}: {done}" for host, done in answer["removed"].items()]
    if answer["was"]:
        lines.append(f"  was {answer['was']}")
    out.result(answer, lines)
    return EXIT_OK


def _disk(text: str) -> dict[str, Any]:
    base, sep, size = text.rpartition(":")
    if sep and size.isdigit():
        return {"base": base, "size_mib": int(size)}
    return {"base": text}
