"""state.json: every namespace, link and process a lab made, written as it goes.

The record is saved *before* each resource is created (intent first), so a
lab process killed at any point leaves a file that names everything that might
exist. `down` then removes whatever of it does exist. Writes are atomic
(temporary file, fsync, rename): a crash mid-write leaves the previous
version, never half a JSON document.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from novacron.simulations.lab.errors import LabError

DEFAULT_STATE_ROOT = Path("/var/lib/novacron-lab")
"""Not under /run: every host mounts a private /run, and processes inside the
hosts (agents) read their keys and write their logs here. After a reboot the
namespaces are gone but this is not; `down` removes it."""

STATE_FILE = "state.json"


@dataclass
class HostRecord:
    """One host as created: enough to reach it, and to remove it."""

    name: str  # h1, h2, ...: the CLI's handle and the host's hostname
    index: int  # 1-based; the address and every name derive from it
    address: str  # 198.18.x.y, the host's only address
    netns: str  # its network namespace
    switch_port: str  # its veth end on the bridge (in the switch namespace)
    host_uuid: str  # libvirtd's host_uuid, unique per host
    init_pid: int | None = None  # the process holding its mount and UTS namespaces


@dataclass
class LabRecord:
    """A whole lab; `namespaces`, `links` and `pids` are what `down` must undo."""

    name: str
    switch_netns: str
    libvirt: bool  # whether hosts run virtlogd and libvirtd
    creator_pid: int  # the process that ran `up` (for status; it may be gone)
    phase: str = "creating"  # creating -> up; anything but "up" means incomplete
    hosts: list[HostRecord] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)  # in creation order
    links: list[str] = field(default_factory=list)  # "netns/ifname" of each veth end
    pids: list[int] = field(default_factory=list)  # every process the lab started

    def to_json(self) -> dict[str, Any]:
        """A plain dict for json.dump (dataclasses.asdict keeps nesting)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LabRecord:
        """Rebuild from `to_json` output; raises LabError on a malformed file."""
        try:
            hosts = [HostRecord(**h) for h in data.get("hosts", [])]
            fields = {k: v for k, v in data.items() if k != "hosts"}
            return cls(hosts=hosts, **fields)
        except TypeError as exc:
            raise LabError(f"malformed lab state: {exc}") from exc

    def host(self, name: str) -> HostRecord:
        """The host called `name`, or LabError naming the hosts that exist."""
        for host in self.hosts:
            if host.name == name:
                return host
        known = ", ".join(h.name for h in self.hosts) or "none"
        raise LabError(f"lab {self.name!r} has no host {name!r} (hosts: {known})")


def lab_dir(state_root: Path, lab: str) -> Path:
    """Where one lab keeps state.json and its per-host files."""
    return state_root / lab


def save(directory: Path, record: LabRecord) -> None:
    """Atomically replace `directory`/state.json with `record`."""
    target = directory / STATE_FILE
    tmp = directory / f".{STATE_FILE}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as out:
        json.dump(record.to_json(), out, indent=2, sort_keys=True)
        out.write("\n")
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, target)


def load(directory: Path) -> LabRecord | None:
    """The record in `directory`, or None when there is none or it is unreadable.

    None rather than an error because the caller is usually `down`, which
    must carry on with its fallback (namespace names) whatever the file holds.
    """
    with contextlib.suppress(OSError, ValueError, LabError):
        with open(directory / STATE_FILE, encoding="utf-8") as src:
            data = json.load(src)
        if isinstance(data, dict):
            return LabRecord.from_json(data)
    return None


def list_labs(state_root: Path) -> list[str]:
    """Names of labs with a state directory, sorted."""
    if not state_root.is_dir():
        return []
    return sorted(p.name for p in state_root.iterdir() if p.is_dir() and not p.name.startswith("."))
