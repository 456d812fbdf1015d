"""The lab's network: namespaces, one bridge, one veth "cable" per host.

Nothing here touches the root namespace's network. The bridge lives in its
own switch namespace and each veth pair is created there with its host end
moved straight into the host's namespace, so no interface ever appears in the
root namespace. Hosts get no default route: an address outside 198.18.0.0/15
is unreachable from inside a host, which keeps tests from leaking traffic.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from novacron.simulations.lab.errors import LabError
from novacron.simulations.lab.naming import BRIDGE, HOST_IFACE, LAB_NET

T = TypeVar("T")

MULTICAST_NET = "224.0.0.0/4"
"""Routed explicitly to eth0 so mDNS (224.0.0.251:5353) leaves the host on it."""


def ip(*args: str, check: bool = True) -> str:
    """Run `ip ARGS`; on failure raise LabError quoting the command and stderr."""
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise LabError(f"`ip {' '.join(args)}` failed: {result.stderr.strip()}")
    return result.stdout


def list_netns() -> list[str]:
    """Names of all network namespaces (`ip netns list` prints "name (id: N)")."""
    return [line.split()[0] for line in ip("netns", "list").splitlines() if line.strip()]


def netns_exists(name: str) -> bool:
    """True if a namespace called `name` is mounted under /run/netns."""
    return name in list_netns()


def add_netns(name: str) -> None:
    """Create namespace `name` with its loopback up (many daemons need 127.0.0.1)."""
    ip("netns", "add", name)
    ip("-n", name, "link", "set", "lo", "up")


def delete_netns(name: str) -> None:
    """Remove namespace `name` if it exists; its veth ends vanish with it."""
    if netns_exists(name):
        ip("netns", "delete", name)


def netns_pids(name: str) -> list[int]:
    """PIDs of processes in namespace `name` (none if it does not exist)."""
    if not netns_exists(name):
        return []
    return [int(p) for p in ip("netns", "pids", name, check=False).split()]


def create_switch(netns: str) -> None:
    """Build the bridge in `netns`, with multicast flooded to every port.

    IGMP snooping is off because hosts joining 224.0.0.251 may not send
    reports a snooping bridge would trust; flooding is what a dumb edge
    switch does, and what mDNS discovery expects.
    """
    add_netns(netns)
    ip("-n", netns, "link", "add", BRIDGE, "type", "bridge", "mcast_snooping", "0")
    ip("-n", netns, "link", "set", BRIDGE, "up")


def plug_host(switch: str, port: str, host: str, address: str) -> None:
    """Connect host namespace `host` to the bridge and give it `address`."""
    ip("-n", switch, "link", "add", port, "type", "veth", "peer", "name", HOST_IFACE, "netns", host)
    ip("-n", switch, "link", "set", port, "master", BRIDGE)
    ip("-n", switch, "link", "set", port, "up")
    ip("-n", host, "addr", "add", f"{address}/{LAB_NET.prefixlen}", "dev", HOST_IFACE)
    ip("-n", host, "link", "set", HOST_IFACE, "multicast", "on", "up")
    ip("-n", host, "route", "add", MULTICAST_NET, "dev", HOST_IFACE)


def set_port(switch: str, port: str, up: bool) -> None:
    """Pull or plug a host's cable by setting its switch-side port down or up.

    The switch side rather than the host's eth0: the host keeps its address
    and routes (the multicast route would be lost with eth0 down) and just
    sees carrier go away, like an unplugged cable.
    """
    ip("-n", switch, "link", "set", port, "up" if up else "down")


def port_state(switch: str, port: str) -> str:
    """ "up" or "down" (administrative state of the switch port), "missing" if gone."""
    if not netns_exists(switch):
        return "missing"
    out = ip("-j", "-n", switch, "link", "show", "dev", port, check=False)
    links: list[dict[str, Any]] = json.loads(out) if out.strip() else []
    if not links:
        return "missing"
    return "up" if "UP" in links[0].get("flags", []) else "down"


CLONE_NEWNET = 0x40000000  # setns(2): join a network namespace
_libc = ctypes.CDLL(None, use_errno=True)


def call_in(pid: int, fn: Callable[[], T]) -> T:
    """`fn()` run in the network namespace of process `pid` (a lab host's init).

    setns(CLONE_NEWNET) affects only the calling thread, and a socket stays in
    the namespace it was created in, so a short-lived thread joins the
    namespace, calls `fn` and ends: what `fn` opened (a libvirt connection, a
    listening socket) is then usable from any thread, in that namespace.
    """
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns into the namespace of pid {pid}")
            finally:
                os.close(fd)
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=run, name=f"netns-{pid}")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]
