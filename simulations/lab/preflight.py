"""Checks before touching the system, so failures name their fix up front.

A lab half-built because `libvirtd` was missing is worse than no lab: the
error then surfaces as an obscure exit status deep in host start-up. Each
binary is mapped to the Debian package that ships it, and the fix for all of
them is the project's one package list, scripts/install-system-deps.sh.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess

from novacron.simulations.lab.errors import LabError

NETWORK_BINARIES: dict[str, str] = {
    "ip": "iproute2",
    "nsenter": "util-linux",
    "unshare": "util-linux",
    "mount": "mount",
    "sleep": "coreutils",
}
"""Needed by every lab: namespaces, veths, the per-host init process."""

LIBVIRT_BINARIES: dict[str, str] = {
    "libvirtd": "libvirt-daemon",
    "virtlogd": "libvirt-daemon",
    "virsh": "libvirt-clients",
    "qemu-system-x86_64": "qemu-system-x86",
    "taskset": "util-linux",
}
"""Needed only when hosts run libvirtd (the default)."""

QEMU_USER = "libvirt-qemu"
"""The account Debian's libvirt is built to expect; libvirt-daemon-system makes it."""


def require_root(euid: int | None = None) -> None:
    """Namespaces, veths and mounts need CAP_SYS_ADMIN and CAP_NET_ADMIN."""
    if (os.geteuid() if euid is None else euid) != 0:
        raise LabError(
            "the lab needs root (it creates network namespaces, veth pairs and "
            "mounts); run it as root, e.g. with sudo"
        )


def missing_binaries(libvirt: bool) -> dict[str, str]:
    """Binary -> Debian package for each required binary not on PATH."""
    wanted = dict(NETWORK_BINARIES)
    if libvirt:
        wanted.update(LIBVIRT_BINARIES)
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    return {b: pkg for b, pkg in wanted.items() if shutil.which(b, path=path) is None}


def require_binaries(libvirt: bool) -> None:
    """Raise a LabError that lists every missing binary and its package."""
    missing = missing_binaries(libvirt)
    if missing:
        listing = ", ".join(f"{b} (Debian package {p})" for b, p in sorted(missing.items()))
        packages = " ".join(sorted(set(missing.values())))
        raise LabError(
            f"missing programs: {listing}; install them with "
            f"`apt-get install {packages}` or `sh scripts/install-system-deps.sh`"
        )


def ensure_qemu_user() -> None:
    """Create the libvirt-qemu system account if the machine lacks it.

    Only libvirt-daemon-system creates it, and that package drags in systemd
    units the lab does not use; libvirtd's QEMU driver refuses to start
    without the account it was built for.
    """
    try:
        pwd.getpwnam(QEMU_USER)
        return
    except KeyError:
        pass
    command = ["useradd", "--system", "--user-group", "--no-create-home"]
    command += ["--home-dir", "/var/lib/libvirt", "--shell", "/usr/sbin/nologin", QEMU_USER]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise LabError(f"could not create user {QEMU_USER}: {result.stderr.strip()}")
