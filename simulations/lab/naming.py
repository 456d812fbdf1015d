"""Names and addresses of everything a lab creates, derived from the lab name.

Every namespace, interface and address is a pure function of the lab name and
a host index. That is what lets `down` find a lab's leftovers after a crash
that lost state.json: the names are recomputable, and the pattern in
`owns_netns` matches exactly one lab's namespaces (lab "a" never claims lab
"a-b"'s, because the suffix after the prefix must be `sw` or `h<digits>`).
"""

from __future__ import annotations

import ipaddress
import re
import shlex
import sys

from novacron.simulations.lab.errors import LabError

NETNS_PREFIX = "nclab"
"""First part of every lab namespace name, so `ip netns list` shows whose they are."""

LAB_NET = ipaddress.IPv4Network("198.18.0.0/15")
"""RFC 2544 benchmarking space: reachable only inside the lab's own switch."""

MAX_HOSTS = 250
"""More hosts than two cores can run libvirtd for; a guard against typos."""

BRIDGE = "br0"
"""The bridge inside the switch namespace that every host's cable plugs into."""

HOST_IFACE = "eth0"
"""The host-side end of each veth pair, the host's only network interface."""

MODULE = "novacron.simulations.lab"
"""The lab's command line, run as `python -m MODULE`."""

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,23}$")


def validate_lab_name(name: str) -> str:
    """Return `name` if it can be used in namespace and file names, else raise."""
    if not _NAME_RE.match(name):
        raise LabError(
            f"invalid lab name {name!r}: use 1-24 characters a-z, 0-9 and '-', "
            "starting with a letter or digit"
        )
    return name


def host_name(index: int) -> str:
    """The lab-wide host name (`h1`, `h2`, ...); also the host's UTS hostname."""
    return f"h{index}"


def host_index(name: str) -> int:
    """Inverse of `host_name`; raises LabError for anything else."""
    match = re.fullmatch(r"h([1-9][0-9]*)", name)
    if match is None:
        raise LabError(f"no such host {name!r}: hosts are named h1, h2, ...")
    return int(match.group(1))


def switch_netns(lab: str) -> str:
    """The namespace that holds the lab's bridge (and nothing else)."""
    return f"{NETNS_PREFIX}-{lab}-sw"


def host_netns(lab: str, index: int) -> str:
    """The network namespace of one host."""
    return f"{NETNS_PREFIX}-{lab}-{host_name(index)}"


def switch_port(index: int) -> str:
    """The switch-side end of host `index`'s veth pair (its port on the bridge)."""
    return host_name(index)


def host_address(index: int) -> str:
    """198.18.0.<index> for the first hosts: the host's only address."""
    if not 1 <= index <= MAX_HOSTS:
        raise LabError(f"host index {index} out of range 1..{MAX_HOSTS}")
    return str(LAB_NET.network_address + index)


def libvirt_uri(address: str) -> str:
    """How another host reaches this host's libvirtd: plain TCP, no auth (lab only)."""
    return f"qemu+tcp://{address}/system"


def owns_netns(lab: str, netns: str) -> bool:
    """True if `netns` is one of the namespaces lab `lab` creates."""
    pattern = rf"{re.escape(NETNS_PREFIX)}-{re.escape(lab)}-(sw|h[1-9][0-9]*)"
    return re.fullmatch(pattern, netns) is not None


def lab_command(*args: str) -> str:
    """A lab command line that works as printed, from any directory, in a virtualenv or
    not: this Python by its full path (a bare `python` may lack the package)."""
    return shlex.join([sys.executable, "-m", MODULE, *args])
