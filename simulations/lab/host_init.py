"""The per-host init process: private /run, /etc/libvirt, hostname, libvirtd.

Each host is one long-lived `sh` started as
`ip netns exec NS unshare -m -u --propagation private sh -c INIT_SCRIPT`.
It sets up the host's mount and UTS namespaces, starts virtlogd and libvirtd
inside them, prints a ready line and then `exec sleep infinity`: its only job
from then on is to hold the namespaces, so `nsenter -t <its pid>` can enter
them. Per-host files live in the lab's state directory:

    <state>/<host>/etc-libvirt/   bind-mounted on /etc/libvirt (own host_uuid)
    <state>/<host>/log/           bind-mounted on /var/log/libvirt (survives the host)
    <state>/<host>/init.log       the init script's own output
    <state>/hosts, resolv.conf    shared by all hosts: names resolve, no DNS leaves

/run, /var/lib/libvirt and /var/cache/libvirt are private tmpfs mounts.
QEMU's capability probe (about 8 s per host on a cold cache) is the slow part
of start-up, so the first host's cache is kept under the state root and
copied into later hosts; libvirtd re-validates it and re-probes if stale.
libvirtd is pinned to one CPU because the cache's validity check compares
CPUID as read on whatever CPU libvirtd starts on, and on the development VMs
the CPUs differ ("host cpuid changed"). QEMU processes are not affected:
libvirt gives each one all host CPUs unless the domain pins it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

from novacron.simulations.lab.errors import LabError
from novacron.simulations.lab.processes import MARKER_VAR
from novacron.simulations.lab.state import HostRecord

READY = "nclab-init: ready"
"""The line the init script prints once the host's daemons are started."""

CAPS_CACHE = ".cache/qemu-capabilities"
"""Under the state root: QEMU capability XML shared between hosts and labs."""

LIBVIRT_PORT = 16509
"""libvirtd's TCP port (listen_tcp)."""

PRIVATE_DIRS = ("/var/lib/libvirt", "/var/cache/libvirt")
"""Mount points that get a fresh tmpfs in each host (besides /run)."""

INIT_SCRIPT = r"""
set -eu
say() { echo "nclab-init: $*"; }
printf '%s' "$NCLAB_HOSTNAME" > /proc/sys/kernel/hostname
mount --bind "$NCLAB_SHARED/hosts" /etc/hosts
mount --bind "$NCLAB_SHARED/resolv.conf" /etc/resolv.conf
mount --bind "$NCLAB_HOST_DIR/etc-libvirt" /etc/libvirt
mount --bind "$NCLAB_HOST_DIR/log" /var/log/libvirt
for d in /var/lib/libvirt /var/cache/libvirt; do
    mount -t tmpfs -o mode=0755 "nclab-$NCLAB_HOSTNAME" "$d"
done
mkdir -p /var/lib/libvirt/qemu /var/log/libvirt/qemu /var/cache/libvirt/qemu/capabilities
if [ -d "$NCLAB_CAPS" ]; then
    cp -r "$NCLAB_CAPS"/. /var/cache/libvirt/qemu/capabilities/ 2>/dev/null || true
fi
mount -t tmpfs -o mode=0755 "nclab-$NCLAB_HOSTNAME" /run
mkdir -p /run/libvirt /run/lock
if [ "$NCLAB_LIBVIRT" = 1 ]; then
    say "starting virtlogd and libvirtd"
    virtlogd -d
    taskset -c "$NCLAB_CPU" libvirtd -d -l
fi
say "ready pid $$"
exec sleep infinity
"""

# Settings forced into the per-host copies of libvirt's config files. Plain
# TCP without auth is acceptable only because 198.18.0.0/15 exists solely
# inside the lab's switch; never ship this outside the sandbox.
_LIBVIRTD_KEYS = (
    "host_uuid",
    "listen_tls",
    "listen_tcp",
    "listen_addr",
    "auth_tcp",
    "auth_unix_rw",
    "auth_unix_ro",
    "log_outputs",
)
_QEMU_KEYS = ("user", "group", "migration_host")


def libvirtd_conf(host: HostRecord) -> dict[str, str | int]:
    """libvirtd.conf settings: own host_uuid, TCP on the host address only."""
    return {
        "host_uuid": host.host_uuid,
        "listen_tls": 0,
        "listen_tcp": 1,
        "listen_addr": host.address,
        "auth_tcp": "none",
        "auth_unix_rw": "none",
        "auth_unix_ro": "none",
        "log_outputs": "3:file:/var/log/libvirt/libvirtd.log",
    }


def qemu_conf(host: HostRecord) -> dict[str, str | int]:
    """qemu.conf settings for a lab host.

    QEMU runs as root because /dev/kvm is root-only on the development
    machines: as libvirt-qemu, libvirtd judges KVM unusable and throws away
    its capability cache on every connection (4 s per API call).
    migration_host makes incoming migrations use the host's address, since
    host names do not resolve outside the lab.
    """
    return {"user": "root", "group": "root", "migration_host": host.address}


def render_conf(original: str, settings: Mapping[str, str | int]) -> str:
    """`original` without lines setting any of `settings`' keys, then `settings`."""
    pattern = re.compile(r"^\s*(" + "|".join(map(re.escape, settings)) + r")\s*=")
    kept = [line for line in original.splitlines() if not pattern.match(line)]
    lines = [f"{k} = {v}" if isinstance(v, int) else f'{k} = "{v}"' for k, v in settings.items()]
    return "\n".join([*kept, "# set by the novacron lab", *lines]) + "\n"


def write_shared_files(lab_dir: Path, hosts: list[HostRecord]) -> None:
    """The lab-wide /etc/hosts (every host by name) and an empty resolv.conf.

    The empty resolv.conf makes glibc ask 127.0.0.1 (nothing listens), so a
    lookup fails at once instead of timing out on an unreachable server.
    """
    names = "".join(f"{h.address}\t{h.name}\n" for h in hosts)
    (lab_dir / "hosts").write_text(f"127.0.0.1\tlocalhost\n::1\tlocalhost\n{names}")
    (lab_dir / "resolv.conf").write_text("# novacron lab: no DNS server inside the lab\n")


def prepare_host_dir(host_dir: Path, host: HostRecord) -> None:
    """Per-host /etc/libvirt copy with its own libvirtd.conf and qemu.conf."""
    etc = host_dir / "etc-libvirt"
    if Path("/etc/libvirt").is_dir():
        shutil.copytree("/etc/libvirt", etc, symlinks=True, dirs_exist_ok=True)
    etc.mkdir(parents=True, exist_ok=True)
    (host_dir / "log").mkdir(exist_ok=True)
    for name, settings in (("libvirtd.conf", libvirtd_conf(host)), ("qemu.conf", qemu_conf(host))):
        path = etc / name
        original = path.read_text() if path.exists() else ""
        path.write_text(render_conf(original, settings))


def ensure_mount_points() -> None:
    """Create the directories the private mounts cover, if missing.

    Debian creates them only with libvirt-daemon-system. Apart from the
    libvirt-qemu account, these empty directories are the only change the lab
    makes to the machine outside its state root.
    """
    for path in (*PRIVATE_DIRS, "/var/log/libvirt", "/etc/libvirt"):
        os.makedirs(path, exist_ok=True)


def start_init(
    lab: str, host: HostRecord, lab_dir: Path, state_root: Path, libvirt: bool
) -> subprocess.Popen[bytes]:
    """Start the host's init process; its PID is the Popen's (ip and unshare exec)."""
    host_dir = lab_dir / host.name
    env = dict(os.environ)
    env.update(
        {
            MARKER_VAR: lab,
            "NCLAB_HOSTNAME": host.name,
            "NCLAB_HOST_DIR": str(host_dir),
            "NCLAB_SHARED": str(lab_dir),
            "NCLAB_CAPS": str(state_root / CAPS_CACHE),
            "NCLAB_LIBVIRT": "1" if libvirt else "0",
            "NCLAB_CPU": str(min(os.sched_getaffinity(0))),
        }
    )
    command = ["ip", "netns", "exec", host.netns, "unshare", "-m", "-u", "--propagation", "private"]
    with open(host_dir / "init.log", "ab") as log:
        return subprocess.Popen(
            [*command, "sh", "-c", INIT_SCRIPT],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # a Ctrl-C at the terminal must not reach the hosts
        )


def tail(path: Path, lines: int = 15) -> str:
    """The last `lines` lines of `path`, or a note that it is missing."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"({path} not found)"


def diagnostics(host_dir: Path) -> str:
    """The tails of the host's init output and libvirtd log, for error messages."""
    parts = []
    for path in (host_dir / "init.log", host_dir / "log" / "libvirtd.log"):
        if path.exists():
            parts.append(f"--- tail of {path}:\n{tail(path)}")
    return "\n".join(parts)


def wait_init_ready(proc: subprocess.Popen[bytes], host_dir: Path, timeout: float) -> None:
    """Wait for the init script's ready line; raise with its output if it dies.

    The script exits (set -e) when a mount fails or `libvirtd -d` reports a
    start-up error, so a dead init is usually a libvirtd that would not start.
    """
    deadline = time.monotonic() + timeout
    log = host_dir / "init.log"
    while time.monotonic() < deadline:
        if READY in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise LabError(
                f"host {host_dir.name} failed to start (init exited with status "
                f"{proc.returncode}):\n{diagnostics(host_dir)}"
            )
        time.sleep(0.05)
    raise LabError(
        f"host {host_dir.name} not ready after {timeout:.0f} s:\n{diagnostics(host_dir)}"
    )


def wait_libvirtd(host: HostRecord, host_dir: Path, init_pid: int, timeout: float) -> None:
    """Wait until libvirtd answers over TCP on the host's address.

    The first call blocks while libvirtd probes QEMU, hence one long attempt
    rather than many short ones. Failure shows libvirtd's own log.
    """
    uri = f"qemu+tcp://{host.address}/system"
    command = ["nsenter", "-t", str(init_pid), "-n", "-m", "-u", "virsh", "-c", uri, "version"]
    deadline = time.monotonic() + timeout
    error = ""
    while time.monotonic() < deadline:
        remaining = max(1.0, deadline - time.monotonic())
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=remaining)
        except subprocess.TimeoutExpired:
            break
        if result.returncode == 0:
            return
        error = result.stderr.strip()
        time.sleep(0.2)
    raise LabError(
        f"libvirtd on {host.name} ({uri}) did not answer within {timeout:.0f} s: {error}\n"
        + diagnostics(host_dir)
    )


def harvest_caps_cache(init_pid: int, state_root: Path) -> None:
    """Keep a started host's QEMU capability cache for hosts started later."""
    source = Path(f"/proc/{init_pid}/root/var/cache/libvirt/qemu/capabilities")
    target = state_root / CAPS_CACHE
    target.mkdir(parents=True, exist_ok=True)
    for xml in source.glob("*.xml"):
        tmp = target / f".{xml.name}.{os.getpid()}.tmp"
        shutil.copyfile(xml, tmp)
        os.replace(tmp, target / xml.name)
