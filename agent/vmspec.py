"""What a VM should be (VmSpec) and the libvirt domain XML that says it.

Pure code: no libvirt calls, no files touched, so every rule here is tested
without a hypervisor. The hypervisor adapter (hypervisor.py) validates a spec,
creates its disk overlays, then defines `domain_xml(...)`.

NovaCron's own facts about a VM (labels, and which disk files it owns and may
delete) live in the domain's <metadata> under NAMESPACE: the hypervisor is the
source of truth for what runs on a host, so an agent that restarts reads them
back from libvirt (`parse_metadata`) instead of keeping a database.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

NAMESPACE = "urn:novacron:vm:1"
"""XML namespace of NovaCron's element in <metadata>; a URN, so nothing resolves it."""

PREFIX = "novacron"
"""The namespace prefix libvirt stores with the element."""

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
"""VM names: safe as file names (disk overlays, console logs) and in libvirt."""

LABEL_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_./-]{0,62}")
"""Label keys: short and plain, like Kubernetes label keys."""

MAX_LABEL_VALUE = 256
MAX_MEMORY_MIB = 1024 * 1024  # 1 TiB: larger is a typo on an edge host, not a request
MAX_VCPUS = 256
MAX_DISKS = 16  # vda..vdp
MAX_DISK_MIB = 64 * 1024 * 1024  # 64 TiB
MAX_CMDLINE = 2048  # the x86 kernel's COMMAND_LINE_SIZE

DOMAIN_TYPES = ("kvm", "qemu")
"""Concrete libvirt domain types: kvm (hardware virtualisation) or qemu (TCG)."""


class HypervisorError(Exception):
    """Base of every error the hypervisor adapter raises; the message is for humans."""


class BadSpec(HypervisorError, ValueError):
    """The spec cannot become a VM; the message lists every problem found."""


@dataclass(frozen=True)
class DiskSpec:
    """One VM disk: a private qcow2 overlay on a shared, read-only base image."""

    base: Path  # qcow2 base image; never written (the overlay takes every write)
    size_mib: int | None = None  # overlay's virtual size; None: same as the base


@dataclass(frozen=True)
class NetworkSpec:
    """One virtio NIC, on a libvirt network or a host bridge (exactly one of them)."""

    network: str | None = None  # libvirt network name, e.g. "default"
    bridge: str | None = None  # host bridge name, e.g. "br0"
    mac: str | None = None  # None: libvirt picks one


@dataclass(frozen=True)
class VmSpec:
    """A VM as NovaCron asks for it. Boots a kernel directly, or from its first disk."""

    name: str  # unique per host; also names its disk overlays and console log
    vcpus: int
    memory_mib: int
    kernel: Path | None = None  # direct kernel boot (the test guest) if set
    initrd: Path | None = None  # only with `kernel`
    cmdline: str = ""  # kernel command line; only with `kernel`
    disks: tuple[DiskSpec, ...] = ()  # become vda, vdb, ... in order
    network: NetworkSpec | None = None  # None: no NIC
    labels: Mapping[str, str] = field(default_factory=dict)  # stored in <metadata>

    def problems(self) -> list[str]:
        """Everything wrong with the spec, as sentences; empty when it is valid."""
        return [
            *_name_problems(self.name),
            *_size_problems(self),
            *_boot_problems(self),
            *_label_problems(self.labels),
            *_disk_problems(self.disks),
            *_network_problems(self.network),
        ]

    def validate(self) -> None:
        """Raise BadSpec naming every problem, so a caller fixes them in one go."""
        problems = self.problems()
        if problems:
            raise BadSpec(f"bad spec for VM {self.name!r}: " + "; ".join(problems))


def _name_problems(name: str) -> list[str]:
    if NAME.fullmatch(name):
        return []
    return [
        f"name {name!r} must be 1-63 characters of letters, digits, '_', '.', '-' "
        "and start with a letter or digit"
    ]


def _size_problems(spec: VmSpec) -> list[str]:
    problems = []
    if not 0 < spec.memory_mib <= MAX_MEMORY_MIB:
        problems.append(f"memory_mib must be between 1 and {MAX_MEMORY_MIB}, not {spec.memory_mib}")
    if not 0 < spec.vcpus <= MAX_VCPUS:
        problems.append(f"vcpus must be between 1 and {MAX_VCPUS}, not {spec.vcpus}")
    return problems


def _boot_problems(spec: VmSpec) -> list[str]:
    problems = []
    if spec.kernel is None and not spec.disks:
        problems.append("nothing to boot: give a kernel or at least one disk")
    if spec.kernel is None and (spec.initrd is not None or spec.cmdline):
        problems.append("initrd and cmdline need a kernel")
    if len(spec.cmdline) > MAX_CMDLINE:
        problems.append(f"cmdline is {len(spec.cmdline)} characters; the limit is {MAX_CMDLINE}")
    return problems


def _label_problems(labels: Mapping[str, str]) -> list[str]:
    problems = []
    for key, value in labels.items():
        if not LABEL_KEY.fullmatch(key):
            problems.append(f"label key {key!r} must be 1-63 of letters, digits, '_./-'")
        if len(value) > MAX_LABEL_VALUE:
            problems.append(f"label {key!r} is longer than {MAX_LABEL_VALUE} characters")
    return problems


def _disk_problems(disks: Sequence[DiskSpec]) -> list[str]:
    problems = []
    if len(disks) > MAX_DISKS:
        problems.append(f"{len(disks)} disks; at most {MAX_DISKS}")
    for disk in disks:
        if disk.size_mib is not None and not 0 < disk.size_mib <= MAX_DISK_MIB:
            problems.append(f"disk on {disk.base}: size_mib must be 1..{MAX_DISK_MIB}")
    return problems


def _network_problems(network: NetworkSpec | None) -> list[str]:
    if network is None:
        return []
    if (network.network is None) == (network.bridge is None):
        return ["network: give exactly one of network= or bridge="]
    if network.mac is not None and not re.fullmatch(r"([0-9a-f]{2}:){5}[0-9a-f]{2}", network.mac):
        return [f"network: mac {network.mac!r} is not like 52:54:00:12:34:56"]
    return []


def disk_target(index: int) -> str:
    """The guest device name of the `index`-th disk: vda, vdb, ..."""
    return "vd" + chr(ord("a") + index)


# --- domain XML ----------------------------------------------------------------------


@dataclass(frozen=True)
class VmMetadata:
    """NovaCron's facts about a domain, as stored in its <metadata>."""

    labels: dict[str, str]
    disks: tuple[Path, ...]  # overlay files NovaCron created for it: deleted with it


def domain_xml(
    spec: VmSpec, *, domain_type: str, overlays: Sequence[Path], console_log: Path | None
) -> str:
    """The libvirt domain XML for `spec` (validated), booting under `domain_type`.

    `overlays` are the disk files (one per spec disk, already created), and
    `console_log` is where the serial console is logged: a pty (so
    `virsh console` works) whose output virtlogd also writes to that file, on
    whichever host the VM runs at the time (None: no log file).
    """
    if domain_type not in DOMAIN_TYPES:
        raise ValueError(f"domain type must be one of {DOMAIN_TYPES}, not {domain_type!r}")
    if len(overlays) != len(spec.disks):
        raise ValueError(f"{len(spec.disks)} disks but {len(overlays)} overlay files")
    domain = ET.Element("domain", type=domain_type)
    ET.SubElement(domain, "name").text = spec.name
    domain.append(_metadata(VmMetadata(dict(spec.labels), tuple(overlays))))
    ET.SubElement(domain, "memory", unit="MiB").text = str(spec.memory_mib)
    ET.SubElement(domain, "vcpu").text = str(spec.vcpus)
    domain.append(_os(spec))
    ET.SubElement(ET.SubElement(domain, "features"), "acpi")  # graceful shutdown by ACPI
    if domain_type == "kvm":
        ET.SubElement(domain, "cpu", mode="host-model")
    ET.SubElement(domain, "clock", offset="utc")
    for event, action in (("poweroff", "destroy"), ("reboot", "restart"), ("crash", "destroy")):
        ET.SubElement(domain, f"on_{event}").text = action
    domain.append(_devices(spec, overlays, console_log))
    ET.indent(domain)
    return ET.tostring(domain, encoding="unicode")


def _metadata(meta: VmMetadata) -> ET.Element:
    metadata = ET.Element("metadata")
    metadata.append(metadata_element(meta))
    return metadata


def metadata_element(meta: VmMetadata) -> ET.Element:
    """NovaCron's element inside <metadata>: labels and owned disks.

    Written with literal prefixed names and its own xmlns attribute because
    libvirt keeps only the namespace declared on the element itself (ElementTree
    would hoist it to <domain>, where libvirt drops it).
    """
    element = ET.Element(f"{PREFIX}:vm", {f"xmlns:{PREFIX}": NAMESPACE})
    for key, value in sorted(meta.labels.items()):
        ET.SubElement(element, f"{PREFIX}:label", key=key).text = value
    for path in meta.disks:
        ET.SubElement(element, f"{PREFIX}:disk", path=str(path))
    return element


def _os(spec: VmSpec) -> ET.Element:
    os_element = ET.Element("os")
    ET.SubElement(os_element, "type", arch="x86_64", machine="pc").text = "hvm"
    if spec.kernel is None:
        ET.SubElement(os_element, "boot", dev="hd")
        return os_element
    ET.SubElement(os_element, "kernel").text = str(spec.kernel)
    if spec.initrd is not None:
        ET.SubElement(os_element, "initrd").text = str(spec.initrd)
    ET.SubElement(os_element, "cmdline").text = spec.cmdline
    return os_element


def _devices(spec: VmSpec, overlays: Sequence[Path], console_log: Path | None) -> ET.Element:
    devices = ET.Element("devices")
    for index, overlay in enumerate(overlays):
        disk = ET.SubElement(devices, "disk", type="file", device="disk")
        ET.SubElement(disk, "driver", name="qemu", type="qcow2")
        ET.SubElement(disk, "source", file=str(overlay))
        ET.SubElement(disk, "target", dev=disk_target(index), bus="virtio")
    if spec.network is not None:
        devices.append(_interface(spec.network))
    serial = ET.SubElement(devices, "serial", type="pty")
    if console_log is not None:
        ET.SubElement(serial, "log", file=str(console_log), append="off")
    ET.SubElement(serial, "target", port="0")
    console = ET.SubElement(devices, "console", type="pty")
    ET.SubElement(console, "target", type="serial", port="0")
    ET.SubElement(devices, "controller", type="usb", model="none")
    ET.SubElement(devices, "memballoon", model="none")
    return devices


def _interface(network: NetworkSpec) -> ET.Element:
    kind = "network" if network.network is not None else "bridge"
    interface = ET.Element("interface", type=kind)
    ET.SubElement(interface, "source", {kind: str(network.network or network.bridge)})
    if network.mac is not None:
        ET.SubElement(interface, "mac", address=network.mac)
    ET.SubElement(interface, "model", type="virtio")
    return interface


def parse_metadata(xml: str) -> VmMetadata:
    """NovaCron's metadata from a domain XML or the bare element; empty if absent.

    The bare element is what virDomainGetMetadata returns: libvirt strips the
    namespace from it, so a root <vm> counts as ours. Domains NovaCron did not
    create have none: they are listed with no labels and no owned disks, so
    deleting them never removes a file.
    """
    root = ET.fromstring(xml)
    element = root if root.tag in ("vm", f"{{{NAMESPACE}}}vm") else None
    if element is None:
        element = root.find(f"metadata/{{{NAMESPACE}}}vm")
    if element is None:
        return VmMetadata({}, ())
    labels = {
        child.get("key", ""): child.text or "" for child in element if _local(child.tag) == "label"
    }
    disks = tuple(Path(child.get("path", "")) for child in element if _local(child.tag) == "disk")
    return VmMetadata(labels, tuple(d for d in disks if d.is_absolute()))


def _local(tag: str) -> str:
    """An element name without its {namespace}."""
    return tag.rpartition("}")[2]


def domain_type_of(xml: str) -> str:
    """The type attribute (kvm, qemu) of a domain XML."""
    return ET.fromstring(xml).get("type", "")
