"""Which domain type this host's VMs get, kvm or qemu (TCG), and why.

`auto` (the default) means KVM wherever the host can run it: libvirt's
capabilities offer a kvm domain for x86_64 guests (libvirt checks that its
QEMU has KVM and may open /dev/kvm) and /dev/kvm answers this agent. TCG
emulates every instruction, 10-50x slower, so it is the choice only where
KVM is not there. The operator may also turn on a probe guest: KVM is then
used only if that guest, booted under KVM, shows its heartbeat in time (on
some machines KVM accepts a guest and then hangs early in its boot). The
probe is an extra check on top of the others, never a way to KVM by itself.

`choose` is the decision, a pure function of those reports, so it is tested
against capabilities faked both ways. `kvm_in_capabilities` reads libvirt's
capabilities XML; `kvm_device_problem` asks the host's /dev/kvm.
"""

from __future__ import annotations

import fcntl
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = [
    "ARCH",
    "DomainTypeVerdict",
    "ProbeOutcome",
    "choose",
    "kvm_device_problem",
    "kvm_in_capabilities",
]

ARCH = "x86_64"  # the architecture of every domain NovaCron defines (vmspec)
KVM_DEVICE = Path("/dev/kvm")
KVM_GET_API_VERSION = 0xAE00  # ioctl: the KVM API version, 12 on every kernel since 2.6.22
KVM_API_VERSION = 12
TCG = "VMs run emulated (TCG)"


@dataclass(frozen=True)
class DomainTypeVerdict:
    """Which domain type VMs get, and why (shown by `nova status`, logged once)."""

    domain_type: Literal["kvm", "qemu"]
    reason: str


@dataclass(frozen=True)
class ProbeOutcome:
    """What a probe guest booted under KVM showed."""

    heartbeat_after: float | None  # seconds to its first heartbeat; None: none in time
    timeout: float  # seconds it was given


def choose(
    configured: str,
    *,
    capabilities_xml: str,
    device_problem: str | None,
    probe: ProbeOutcome | None = None,
) -> DomainTypeVerdict:
    """The domain type for `configured` (kvm, qemu or auto) given what the host reports.

    `capabilities_xml` is libvirt's getCapabilities(); `device_problem` is
    None when /dev/kvm answers, else why not; `probe` is the probe guest's
    outcome, None when no probe ran (the operator did not turn it on).
    """
    if configured == "kvm":
        return DomainTypeVerdict("kvm", "configured as kvm")
    if configured == "qemu":
        return DomainTypeVerdict("qemu", "configured as qemu (TCG)")
    if configured != "auto":
        raise ValueError(f"domain type must be kvm, qemu or auto, not {configured!r}")
    missing = kvm_in_capabilities(capabilities_xml)
    if missing is not None:
        return DomainTypeVerdict("qemu", f"auto: {missing}; {TCG}")
    if device_problem is not None:
        return DomainTypeVerdict("qemu", f"auto: libvirt offers KVM, but {device_problem}; {TCG}")
    offered = f"auto: libvirt offers KVM for {ARCH} guests and {KVM_DEVICE} answers"
    if probe is None:
        return DomainTypeVerdict("kvm", offered)
    if probe.heartbeat_after is None:
        return DomainTypeVerdict(
            "qemu",
            f"{offered}, but a KVM probe guest showed no heartbeat within "
            f"{probe.timeout:g} s (KVM does not run guests here, or the probe could not "
            f"start); {TCG}",
        )
    seen = f"a KVM probe guest's first heartbeat came after {probe.heartbeat_after:.1f} s"
    return DomainTypeVerdict("kvm", f"{offered}, and {seen}")


def kvm_in_capabilities(capabilities_xml: str, arch: str = ARCH) -> str | None:
    """None if libvirt's capabilities offer a kvm domain for `arch` guests, else why not."""
    try:
        root = ET.fromstring(capabilities_xml)
    except ET.ParseError as exc:
        return f"libvirt's capabilities are unreadable ({exc})"
    offered: set[str] = set()
    for guest in root.iterfind("guest"):
        if guest.findtext("os_type") != "hvm":
            continue
        for guest_arch in guest.iterfind(f"arch[@name='{arch}']"):
            offered.update(d.get("type", "") for d in guest_arch.iterfind("domain"))
    if "kvm" in offered:
        return None
    if not offered:
        return f"libvirt offers no {arch} guests at all (is qemu-system-x86 installed?)"
    return f"libvirt offers no KVM for {arch} guests (only {', '.join(sorted(offered))})"


def kvm_device_problem(device: Path = KVM_DEVICE) -> str | None:
    """None if `device` opens read-write and speaks the KVM API, else why not.

    Blocking but quick: one open and one ioctl.
    """
    try:
        fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return f"{device} does not exist (no KVM kernel module, or no hardware virtualisation)"
    except OSError as exc:
        return f"{device} cannot be opened read-write ({exc.strerror})"
    try:
        version = fcntl.ioctl(fd, KVM_GET_API_VERSION)
    except OSError as exc:
        return f"{device} is not a KVM device ({exc.strerror})"
    finally:
        os.close(fd)
    if version != KVM_API_VERSION:
        return f"{device} speaks KVM API {version}, not {KVM_API_VERSION}"
    return None
