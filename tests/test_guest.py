"""The test guest, booted under plain QEMU/TCG (no libvirt, no network).

Migration tests lean on three promises of this guest: its heartbeat counts up
every 100 ms from 1, its memory dirtying runs at the asked rate, and its disk
marker survives. Each is checked here against a real boot, so a migration
test that fails points at migration, not at the guest. The guest is built
once per session into the shared build directory (later runs reuse it).
"""

from __future__ import annotations

import gzip
import re
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from novacron.simulations import guest as guest_mod
from novacron.simulations.guest import Guest

pytestmark = pytest.mark.lab  # QEMU and the test guest, built as root


@contextmanager
def booted(
    guest: Guest, console: Path, cmdline: str, disk: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """QEMU running `guest` with its console in `console`; killed on exit."""
    console.unlink(missing_ok=True)
    command = guest_mod.qemu_command(guest, cmdline, console, disk=disk)
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_build_is_idempotent(guest: Guest) -> None:
    before = {p: p.stat().st_mtime_ns for p in (guest.kernel, guest.initrd, guest.disk)}
    again = guest_mod.build()
    assert again == guest
    assert {p: p.stat().st_mtime_ns for p in before} == before, "an up-to-date build rewrote"


def test_initramfs_is_a_cpio_the_kernel_can_unpack(guest: Guest, tmp_path: Path) -> None:
    """busybox's cpio lists our hand-written newc archive: the format is right."""
    archive = tmp_path / "initrd.cpio"
    archive.write_bytes(gzip.decompress(guest.initrd.read_bytes()))
    listing = subprocess.run(
        ["busybox", "cpio", "-t", "-F", str(archive)], capture_output=True, text=True, check=True
    ).stdout.split()
    assert {"init", "bin/busybox", "bin/novaguest", "dev/console"} <= set(listing)
    assert "lib/modules/virtio_blk.ko" in listing


def test_heartbeat_counts_up_every_100_ms(guest: Guest, tmp_path: Path) -> None:
    console = tmp_path / "console.log"
    with booted(guest, console, guest.cmdline()):
        start = time.monotonic()
        guest_mod.wait_for(console, guest_mod.HEARTBEAT, 30)
        boot_s = time.monotonic() - start
        first = guest_mod.heartbeats(console.read_bytes())[-1]
        time.sleep(3)
        beats = guest_mod.heartbeats(console.read_bytes())
    print(f"first heartbeat {boot_s:.2f} s after QEMU started")
    assert boot_s < 15, "TCG boots this guest in a few seconds"
    assert beats == list(range(1, len(beats) + 1)), "counter starts at 1, no gaps"
    per_second = (beats[-1] - first) / 3
    assert 7 <= per_second <= 11, f"{per_second:.1f} heartbeats/s, expected about 10"


def test_dirtying_runs_at_the_asked_rate(guest: Guest, tmp_path: Path) -> None:
    """Two guests at once (20 and 100 MiB/s): each reports about its rate."""
    consoles = {rate: tmp_path / f"dirty{rate}.log" for rate in (20, 100)}
    with (
        booted(guest, consoles[20], guest.cmdline(dirty_mib=32, dirty_rate=20)),
        booted(guest, consoles[100], guest.cmdline(dirty_mib=32, dirty_rate=100)),
    ):
        for console in consoles.values():
            guest_mod.wait_for(console, re.compile(rb"(?s)dirty mib.*\ndirty mib"), 40)
    for rate, console in consoles.items():
        reported = guest_mod.dirty_rates(console.read_bytes())
        print(f"asked {rate} MiB/s, reported {reported}")
        # The limiter never runs ahead; it falls behind only when starved of CPU.
        assert reported and abs(max(reported) - rate) <= rate * 0.1, reported
        assert guest_mod.heartbeats(console.read_bytes())[-1] > 50, "heartbeat kept going"


def test_disk_marker_persists_across_boots(guest: Guest, tmp_path: Path) -> None:
    overlay = tmp_path / "overlay.qcow2"
    base = ["-b", str(guest.disk), "-F", "qcow2"]
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", *base, str(overlay)], check=True)
    console = tmp_path / "console.log"
    with booted(guest, console, guest.cmdline(disk_marker="mark-1"), disk=overlay):
        guest_mod.wait_for(console, re.compile(rb"disk-written mark-1"), 30)
    assert guest_mod.disk_lines(console.read_bytes()) == [""], "blank before the marker"
    with booted(guest, console, guest.cmdline(disk_check=0.5), disk=overlay):
        guest_mod.wait_for(console, re.compile(rb"(?s)disk mark-1.*disk mark-1"), 30)


def test_cmdline_selects_behaviour() -> None:
    line = Guest.cmdline(dirty_mib=64, dirty_rate=20, disk_marker="m", powerbutton=False)
    assert line == "console=ttyS0 quiet dirty_mib=64 dirty_rate=20 disk_marker=m powerbutton=ignore"
    with pytest.raises(ValueError, match="disk marker"):
        Guest.cmdline(disk_marker="two words")
