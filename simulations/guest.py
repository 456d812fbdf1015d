"""The test guest: a Debian cloud kernel and a busybox initramfs, from Debian packages only.

Migration tests need a guest that proves it kept running: this one prints
`heartbeat N` on its serial console every 100 ms with N increasing from 1, so
a migrated guest whose counter continues above its pre-migration value never
rebooted. Kernel command line switches make it a harder guest to move:

    dirty_mib=64 dirty_rate=20   keep rewriting 64 MiB at 20 MiB/s with non-zero
                                 data (QEMU sends zero pages as tiny markers, so
                                 zeros would cost a migration nothing); the
                                 achieved rate is reported every 5 s as
                                 `dirty mib=64 rate=20.0 MiB/s passes=N`; a
                                 128 MiB guest has about 70 MiB free, so keep
                                 dirty_mib at or below 48 there
    disk_marker=TEXT             write TEXT into /dev/vda's first sector at boot
                                 (after printing `disk <old contents>`), then
                                 print `disk-written TEXT`
    disk_check=SECONDS           re-read that sector (page cache dropped) every
                                 SECONDS and print `disk <contents>`
    powerbutton=ignore           ignore ACPI power button presses (by default
                                 the guest powers off: graceful stop works)

Nothing is downloaded but Debian packages: the kernel comes out of
linux-image-cloud-amd64's .deb (`apt-get download` + extraction, so the host's
/boot and initramfs hooks are never touched), busybox from busybox-static, and
a small static C helper (rate-limited memory dirtying, power button) is built
with the host's gcc. Builds are idempotent (a manifest of input hashes) and
serialised by a lock, so parallel test sessions share one build.

CLI::

    python -m novacron.simulations.guest build [--out DIR] [--force]
    python -m novacron.simulations.guest boot [--out DIR] [--seconds N] [ARG=VALUE ...]
    python -m novacron.simulations.guest template --key PUBLISHER.key --to CATALOGUE

`template` signs the built guest into a catalogue as template `test-guest:1`
(its blank disk the image, its kernel and initramfs the boot files), the
first template a mesh can spread (docs/templates.md).

`boot` runs the guest under plain QEMU/TCG (no libvirt, no network) and
prints its console, time to first heartbeat included.
"""

from __future__ import annotations

import argparse
import fcntl
import gzip
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

DEFAULT_DIR = Path(os.environ.get("NOVACRON_GUEST_DIR", "/var/lib/novacron-guest"))
"""Where the guest is built: outside the lab's per-host private mounts, so every
lab host (and its QEMU) sees the same kernel and initramfs at the same path."""

KERNEL_PACKAGE = "linux-image-cloud-amd64"
"""Debian's metapackage for the cloud kernel: small, virtio-ready, boots fast."""

BUSYBOX = Path("/bin/busybox")
"""Installed by busybox-static (scripts/install-system-deps.sh): a static binary,
so it runs in the initramfs without a libc."""

MODULES = (
    "drivers/virtio/virtio_ring.ko",
    "drivers/virtio/virtio.ko",
    "drivers/virtio/virtio_pci_legacy_dev.ko",
    "drivers/virtio/virtio_pci_modern_dev.ko",
    "drivers/virtio/virtio_pci.ko",
    "drivers/block/virtio_blk.ko",
    "drivers/acpi/button.ko",
    "drivers/input/evdev.ko",
)
"""Kernel modules the init loads, in dependency order (the cloud kernel builds
virtio, the ACPI button and evdev as modules; the .deb ships no modules.dep)."""

BASE_DISK_SIZE = "64M"
"""Virtual size of the blank base image that VM disks are overlays on."""

DEFAULT_CMDLINE = "console=ttyS0 quiet"
"""Kernel arguments every boot gets: console on the first serial port."""

FORMAT = 1
"""Bump when the build's layout changes, so old build directories are redone."""

# Console patterns match whole lines only: a console log cut mid-line (a VM
# migrated or stopped while printing "heartbeat 15") must not read as "1".
HEARTBEAT = re.compile(rb"^heartbeat (\d+)\r?\n", re.MULTILINE)
DIRTY_REPORT = re.compile(rb"^dirty mib=(\d+) rate=([0-9.]+) MiB/s", re.MULTILINE)
DISK_LINE = re.compile(rb"^disk (.*?)\r?\n", re.MULTILINE)

INIT_SCRIPT = r"""#!/bin/busybox sh
# NovaCron test guest: PID 1. Heartbeat on ttyS0 every 100 ms; see guest.py.
/bin/busybox mkdir -p /proc /sys /dev /tmp
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
exec </dev/null >/dev/ttyS0 2>&1
echo "novaguest: init at $(cut -d' ' -f1 /proc/uptime) s," \
    "$(awk '/MemAvailable/ {print int($2 / 1024)}' /proc/meminfo) MiB available"

arg() {
    for word in $(cat /proc/cmdline); do
        case "$word" in "$1"=*) echo "${word#*=}"; return 0 ;; esac
    done
    return 1
}

for module in __MODULES__; do
    insmod "/lib/modules/$module.ko" || echo "novaguest: insmod $module failed"
done

if [ "$(arg powerbutton)" != ignore ]; then
    (novaguest powerbutton && echo "novaguest: power button, powering off" \
        && sync && poweroff -f) &
fi

read_disk() {
    echo 3 >/proc/sys/vm/drop_caches
    echo "disk $(dd if=/dev/vda bs=512 count=1 2>/dev/null | tr -d '\000')"
}
waited=0
while [ -e /sys/block/vda ] && [ ! -b /dev/vda ] && [ $waited -lt 20 ]; do
    sleep 0.05; waited=$((waited + 1))
done
if [ -b /dev/vda ]; then
    read_disk
    marker=$(arg disk_marker) && {
        # fsync on the device makes the guest send a flush: QEMU then writes
        # its qcow2 metadata, so the marker survives even a killed QEMU
        printf '%s' "$marker" | dd of=/dev/vda bs=512 count=1 conv=sync,fsync 2>/dev/null
        echo "disk-written $marker"
    }
    check=$(arg disk_check) && (while :; do sleep "$check"; read_disk; done) &
fi

mib=$(arg dirty_mib) && [ "$mib" -gt 0 ] && novaguest dirty "$mib" "$(arg dirty_rate || echo 10)" &

n=0
while :; do
    n=$((n + 1))
    echo "heartbeat $n"
    sleep 0.1
done
"""

HELPER_SOURCE = r"""
/* novaguest: the test guest's helper, built static so it needs no libc in the
 * initramfs.
 *   novaguest dirty MIB RATE   rewrite MIB MiB at RATE MiB/s with non-zero,
 *                              non-uniform data; report the achieved rate every 5 s
 *   novaguest powerbutton      exit 0 when an input device reports KEY_POWER
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <linux/input.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096
#define MIB 1048576.0

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

/* Fill one page with words that differ per word, page and pass: never zero,
 * never one repeated byte, so no migration shortcut applies. */
static void fill(uint64_t *words, uint64_t page, uint64_t pass) {
    uint64_t seed = (pass << 40) ^ (page * 0x9E3779B97F4A7C15ULL) ^ 1;
    for (int i = 0; i < PAGE / 8; i++)
        words[i] = (seed + (uint64_t)i * 0xBF58476D1CE4E5B9ULL) | 1;
}

static int dirty(long mib, double rate) {
    size_t size = (size_t)mib << 20, pages = size / PAGE, page = 0;
    uint64_t pass = 1, written = 0, reported = 0;
    double credit = 0, last = now(), report_at = last;
    unsigned char *buf = mmap(NULL, size, PROT_READ | PROT_WRITE,
                              MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (buf == MAP_FAILED) {
        perror("novaguest: dirty: mmap");
        return 1;
    }
    for (;;) {
        double t = now();
        credit += (t - last) * rate * MIB;
        /* After a pause (migration downtime) do not burst to catch up. */
        if (credit > rate * MIB * 0.05 + PAGE) credit = rate * MIB * 0.05 + PAGE;
        last = t;
        while (credit >= PAGE) {
            fill((uint64_t *)(buf + page * PAGE), page, pass);
            credit -= PAGE;
            written += PAGE;
            if (++page == pages) { page = 0; pass++; }
        }
        if (t - report_at >= 5.0) {
            printf("dirty mib=%ld rate=%.1f MiB/s passes=%llu\n", mib,
                   (written - reported) / MIB / (t - report_at), (unsigned long long)pass - 1);
            fflush(stdout);
            reported = written;
            report_at = t;
        }
        usleep(10000);
    }
}

static int powerbutton(void) {
    struct pollfd fds[32];
    int n = 0;
    DIR *dir = opendir("/dev/input");
    struct dirent *entry;
    while (dir && (entry = readdir(dir)) && n < 32) {
        char path[300];
        if (strncmp(entry->d_name, "event", 5) != 0) continue;
        snprintf(path, sizeof path, "/dev/input/%s", entry->d_name);
        fds[n].fd = open(path, O_RDONLY);
        fds[n].events = POLLIN;
        if (fds[n].fd >= 0) n++;
    }
    if (n == 0) {
        fprintf(stderr, "novaguest: powerbutton: no input devices\n");
        return 1;
    }
    for (;;) {
        struct input_event ev;
        if (poll(fds, n, -1) < 0) return 1;
        for (int i = 0; i < n; i++)
            if ((fds[i].revents & POLLIN) && read(fds[i].fd, &ev, sizeof ev) == sizeof ev &&
                ev.type == EV_KEY && ev.code == KEY_POWER && ev.value == 1)
                return 0;
    }
}

int main(int argc, char **argv) {
    if (argc == 4 && strcmp(argv[1], "dirty") == 0)
        return dirty(atol(argv[2]), atof(argv[3]));
    if (argc == 2 && strcmp(argv[1], "powerbutton") == 0)
        return powerbutton();
    fprintf(stderr, "usage: novaguest dirty MIB RATE | novaguest powerbutton\n");
    return 2;
}
"""


class GuestBuildError(RuntimeError):
    """The guest could not be built; the message says which step and why."""


@dataclass(frozen=True)
class Guest:
    """A built guest: the files a domain boots from."""

    kernel: Path  # bzImage from the Debian cloud kernel package
    initrd: Path  # gzip'd cpio: busybox, the init script, helper and modules
    disk: Path  # blank qcow2 base image for disk overlays (never written to)
    kernel_package: str  # the .deb the kernel came from, e.g. linux-image-6.1.0-56-..._amd64.deb

    @staticmethod
    def cmdline(
        *,
        dirty_mib: int = 0,
        dirty_rate: float = 0,
        disk_marker: str | None = None,
        disk_check: float | None = None,
        powerbutton: bool = True,
    ) -> str:
        """The kernel command line that selects the guest's behaviour (module docstring)."""
        words = [DEFAULT_CMDLINE]
        if dirty_mib > 0:
            words.append(f"dirty_mib={dirty_mib} dirty_rate={dirty_rate:g}")
        if disk_marker is not None:
            if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,200}", disk_marker):
                raise ValueError(f"disk marker {disk_marker!r}: use 1-200 of [A-Za-z0-9_.:-]")
            words.append(f"disk_marker={disk_marker}")
        if disk_check is not None:
            words.append(f"disk_check={disk_check:g}")
        if not powerbutton:
            words.append("powerbutton=ignore")
        return " ".join(words)


# --- console parsing (shared with the tests) ----------------------------------------


def heartbeats(console: bytes) -> list[int]:
    """Every heartbeat counter in a console log, in order."""
    return [int(m) for m in HEARTBEAT.findall(console)]


def dirty_rates(console: bytes) -> list[float]:
    """Every dirty rate (MiB/s) the guest reported, in order."""
    return [float(rate) for _mib, rate in DIRTY_REPORT.findall(console)]


def disk_lines(console: bytes) -> list[str]:
    """Every `disk <contents>` line's contents, in order."""
    return [m.decode(errors="replace") for m in DISK_LINE.findall(console)]


# --- building -----------------------------------------------------------------------


def _run(cmd: Sequence[str], step: str, cwd: Path | None = None) -> str:
    """Run `cmd`; on failure raise GuestBuildError naming `step` with its output."""
    try:
        result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise GuestBuildError(f"{step}: {exc.filename} not found") from None
    if result.returncode != 0:
        output = (result.stderr or result.stdout).strip()
        raise GuestBuildError(f"{step}: `{' '.join(cmd)}` failed: {output}")
    return result.stdout


def kernel_package_name() -> str:
    """The versioned kernel package that linux-image-cloud-amd64 currently depends on.

    Asks the local apt cache; if it has no lists yet (a fresh machine whose
    packages were all present, so no `apt-get update` ran), updates them once.
    """
    for attempt in range(2):
        result = subprocess.run(
            ["apt-cache", "depends", "--important", KERNEL_PACKAGE],
            capture_output=True,
            text=True,
            check=False,
        )
        match = re.search(r"Depends: (linux-image-\S+)", result.stdout)
        if match:
            return match.group(1)
        if attempt == 0:
            _run(["apt-get", "update", "-q"], "updating apt lists")
    raise GuestBuildError(f"apt knows no package {KERNEL_PACKAGE}: {result.stderr.strip()}")


def fetch_kernel_deb(debs: Path) -> Path:
    """The kernel .deb in `debs`, downloaded with `apt-get download` unless present."""
    package = kernel_package_name()
    cached = sorted(debs.glob(f"{package}_*.deb"))
    if cached:
        return cached[-1]
    debs.mkdir(parents=True, exist_ok=True)
    _run(["apt-get", "download", "-q", package], f"downloading {package}", cwd=debs)
    cached = sorted(debs.glob(f"{package}_*.deb"))
    if not cached:
        raise GuestBuildError(f"apt-get download {package} left no .deb in {debs}")
    return cached[-1]


def extract_kernel(deb: Path) -> tuple[bytes, dict[str, bytes]]:
    """The bzImage and the MODULES' bytes, read straight from the .deb's data tarball."""
    tar_stream = subprocess.run(
        ["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True, check=False
    )
    if tar_stream.returncode != 0:
        raise GuestBuildError(f"dpkg-deb --fsys-tarfile {deb}: {tar_stream.stderr.decode()}")
    kernel = b""
    modules: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(tar_stream.stdout)) as tar:
        for member in tar:
            name = member.name.removeprefix("./")
            wanted = next((m for m in MODULES if name.endswith("/kernel/" + m)), None)
            if re.fullmatch(r"boot/vmlinuz-.*", name) or wanted:
                data = tar.extractfile(member)
                if data is None:
                    continue
                if wanted:
                    modules[wanted] = data.read()
                else:
                    kernel = data.read()
    missing = [m for m in MODULES if m not in modules]
    if not kernel or missing:
        raise GuestBuildError(f"{deb.name} lacks the kernel or modules {missing}")
    return kernel, modules


def compile_helper(out: Path) -> bytes:
    """Build the static helper with gcc and return the binary."""
    source = out / "novaguest.c"
    binary = out / "novaguest"
    source.write_text(HELPER_SOURCE)
    _run(
        ["gcc", "-static", "-O2", "-s", "-Wall", "-o", str(binary), str(source)],
        "compiling the guest helper (gcc -static; needs build-essential)",
    )
    return binary.read_bytes()


def _cpio_entry(ino: int, name: str, mode: int, data: bytes = b"", rdev: int = 0) -> bytes:
    """One record of a cpio "newc" archive, the format the kernel unpacks as initramfs."""
    encoded = name.encode() + b"\0"
    fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, os.major(rdev), os.minor(rdev))
    header = b"070701" + b"".join(b"%08x" % v for v in fields)
    header += b"%08x%08x" % (len(encoded), 0)
    record = header + encoded
    record += b"\0" * (-len(record) % 4)
    return record + data + b"\0" * (-len(data) % 4)


def initramfs(busybox: bytes, helper: bytes, modules: dict[str, bytes]) -> bytes:
    """The gzip'd initramfs: init script, busybox, helper, modules and /dev/console.

    Written in Python rather than with cpio(1) so the build needs no root
    (for the device node) and no extra package, and is byte-for-byte
    reproducible.
    """
    names = " ".join(Path(m).stem for m in MODULES)
    entries: list[tuple[str, int, bytes, int]] = [
        (d, 0o40755, b"", 0) for d in ("bin", "dev", "proc", "sys", "tmp", "lib", "lib/modules")
    ]
    entries += [
        ("dev/console", 0o20600, b"", os.makedev(5, 1)),
        ("init", 0o100755, INIT_SCRIPT.replace("__MODULES__", names).encode(), 0),
        ("bin/busybox", 0o100755, busybox, 0),
        ("bin/novaguest", 0o100755, helper, 0),
    ]
    entries += [(f"lib/modules/{Path(m).name}", 0o100644, modules[m], 0) for m in MODULES]
    archive = b"".join(
        _cpio_entry(i + 1, name, mode, data, rdev)
        for i, (name, mode, data, rdev) in enumerate(entries)
    )
    archive += _cpio_entry(0, "TRAILER!!!", 0)
    return gzip.compress(archive, compresslevel=6, mtime=0)


def _write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data` in one step: a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


@contextmanager
def _locked(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on the build directory (parallel sessions share it)."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _inputs_digest(deb: Path, busybox: bytes) -> str:
    """A hash of everything the kernel and initramfs are made from."""
    digest = hashlib.sha256(f"{FORMAT}\n{deb.name}\n{' '.join(MODULES)}\n".encode())
    for part in (INIT_SCRIPT.encode(), HELPER_SOURCE.encode(), busybox):
        digest.update(hashlib.sha256(part).digest())
    return digest.hexdigest()


def _guest(out: Path, deb_name: str) -> Guest:
    return Guest(out / "vmlinuz", out / "initrd.gz", out / "disk.qcow2", deb_name)


def build(out: Path = DEFAULT_DIR, *, force: bool = False) -> Guest:
    """Build the guest into `out` unless it is already up to date; return its files."""
    if not BUSYBOX.exists():
        raise GuestBuildError(f"{BUSYBOX} missing: run scripts/install-system-deps.sh")
    out = out.resolve()
    with _locked(out):
        deb = fetch_kernel_deb(out / "debs")
        busybox = BUSYBOX.read_bytes()
        digest = _inputs_digest(deb, busybox)
        guest = _guest(out, deb.name)
        manifest = out / "manifest.json"
        if not force and _up_to_date(manifest, digest, guest):
            return guest
        kernel, modules = extract_kernel(deb)
        _write_atomic(guest.kernel, kernel)
        _write_atomic(guest.initrd, initramfs(busybox, compile_helper(out), modules))
        if not guest.disk.exists():
            _run(
                ["qemu-img", "create", "-q", "-f", "qcow2", str(guest.disk), BASE_DISK_SIZE], "base"
            )
        _write_atomic(manifest, json.dumps({"digest": digest, "kernel": deb.name}).encode())
        return guest


def _up_to_date(manifest: Path, digest: str, guest: Guest) -> bool:
    """Whether the manifest records `digest` and every output exists."""
    try:
        recorded = json.loads(manifest.read_text()).get("digest")
    except (OSError, ValueError):
        return False
    outputs = (guest.kernel, guest.initrd, guest.disk)
    return bool(recorded == digest and all(p.exists() for p in outputs))


# --- booting without libvirt (for checks and tests of the guest itself) --------------


def qemu_command(
    guest: Guest, cmdline: str, console: Path, memory_mib: int = 128, disk: Path | None = None
) -> list[str]:
    """A plain QEMU/TCG invocation: serial console into `console`, no network, no display."""
    command = [
        "qemu-system-x86_64",
        "-machine", "pc,accel=tcg",
        "-m", str(memory_mib),
        "-nodefaults", "-no-user-config", "-display", "none", "-nic", "none",
        "-serial", f"file:{console}",
        "-kernel", str(guest.kernel),
        "-initrd", str(guest.initrd),
        "-append", cmdline,
    ]  # fmt: skip
    if disk is not None:
        command += ["-drive", f"file={disk},format=qcow2,if=virtio"]
    return command


def wait_for(console: Path, pattern: re.Pattern[bytes], timeout: float) -> bytes:
    """Wait until `pattern` appears in the file `console`; return the file's content."""
    deadline = time.monotonic() + timeout
    while True:
        content = console.read_bytes() if console.exists() else b""
        if pattern.search(content):
            return content
        if time.monotonic() >= deadline:
            tail = content[-2000:].decode(errors="replace")
            raise TimeoutError(f"no {pattern.pattern!r} in {console} after {timeout} s:\n{tail}")
        time.sleep(0.05)


def _boot(args: argparse.Namespace) -> int:
    """The `boot` command: run the guest for a while and show its console."""
    guest = build(args.out)
    console = args.out / "boot-console.log"
    console.unlink(missing_ok=True)  # else the last boot's heartbeats count
    cmdline = " ".join([DEFAULT_CMDLINE, *args.args])
    start = time.monotonic()
    proc = subprocess.Popen(qemu_command(guest, cmdline, console, args.memory))
    try:
        wait_for(console, HEARTBEAT, 60)
        print(f"first heartbeat after {time.monotonic() - start:.2f} s", file=sys.stderr)
        time.sleep(args.seconds)
    finally:
        proc.terminate()
        proc.wait()
    sys.stdout.write(console.read_text(errors="replace"))
    return 0


TEMPLATE_NAME = "test-guest"


def publish_template(
    guest: Guest, key: Path, catalogue: Path, version: str = "1", memory_mib: int = 128
) -> int:
    """Sign the guest into `catalogue` as template test-guest:VERSION with publisher `key`:
    the blank disk is its image, the kernel and initramfs boot it, heartbeats on."""
    from novacron.agent.cli import main as nova  # the signing library: only for this command

    argv = ["template", "publish", str(guest.disk), "--name", TEMPLATE_NAME]
    argv += ["--version", version, "--key", str(key), "--to", str(catalogue)]
    argv += ["--memory", str(memory_mib), "--kernel", str(guest.kernel)]
    argv += ["--initrd", str(guest.initrd), "--cmdline", DEFAULT_CMDLINE, "--os", "busybox"]
    argv += ["--description", "NovaCron's test guest: a heartbeat on its console every 100 ms"]
    return nova(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """`build` or `boot` the test guest, or publish it as a `template` (module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m novacron.simulations.guest")
    parser.add_argument("command", choices=["build", "boot", "template"])
    parser.add_argument(
        "--key", type=Path, help="template: the publisher key (nova template keygen)"
    )
    parser.add_argument("--to", type=Path, help="template: the catalogue directory")
    parser.add_argument("--version", default="1", help="template: its version (1)")
    parser.add_argument("--out", type=Path, default=DEFAULT_DIR, help="build directory")
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    parser.add_argument("--seconds", type=float, default=3.0, help="boot: run this long")
    parser.add_argument("--memory", type=int, default=128, help="boot: guest MiB")
    parser.add_argument("args", nargs="*", help="boot: kernel arguments, e.g. dirty_mib=64")
    args = parser.parse_intermixed_args(argv)
    try:
        if args.command == "build":
            guest = build(args.out, force=args.force)
            print(f"kernel {guest.kernel}\ninitrd {guest.initrd}\ndisk   {guest.disk}")
            return 0
        if args.command == "template":
            if args.key is None or args.to is None:
                parser.error("template needs --key FILE and --to CATALOGUE")
            return publish_template(build(args.out), args.key, args.to, args.version)
        return _boot(args)
    except GuestBuildError as exc:
        print(f"guest: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
