"""`nova top` on a terminal, end to end: tmux runs it inside a lab host with real agents while a
TCG guest migrates; the screen shows the hosts and the migration's progress, the migration's
end appears among the events; the view follows a resize, says when the agent stops
answering and recovers when it is back; `q` ends it with exit code 0.

The migration cannot converge (the guest dirties memory faster than the bandwidth cap sends
it) and never escalates, so it is still running whenever the screen is read, however loaded
the machine; the test cancels it.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from novacron.simulations.guest import Guest
from novacron.simulations.lab import Lab, LabHost
from novacron.simulations.lab.agents import BIN, LabAgents, wait_for
from tests.lab_vms import SLOW, ended, lab_fixtures, nova, start_guest

pytestmark = pytest.mark.lab

RUN = f"tt{os.getpid() % 100000}"  # its own prefix: labs and kept logs go by it
VM = "top-vm"
mesh, disk_dir = lab_fixtures(RUN, (VM,))
WIDTH, HEIGHT = 120, 40
# A migration's row on the screen once it has made progress: a bar with some '#' in it.
PROGRESS = re.compile(rf"^{VM}\s+h1 -> h2\s+\[#+\.*\]\s+(\d+\.\d)%\s+migrating", re.MULTILINE)


class Terminal:
    """A command in a detached tmux session of its own server, WIDTH x HEIGHT."""

    def __init__(self, where: Path, command: list[str]) -> None:
        if shutil.which("tmux") is None:
            pytest.fail("no tmux (Debian package tmux): sh scripts/install-system-deps.sh")
        self.server = str(where / "tmux.sock")  # its own server, gone with the directory
        self.status = where / "exit-status"
        # The shell notes the command's exit code; the session ends with it.
        shell = f"{shlex.join(command)}; echo $? > {shlex.quote(str(self.status))}"
        self._tmux("new-session", "-d", "-x", str(WIDTH), "-y", str(HEIGHT), "sh", "-c", shell)

    def _tmux(self, *args: str) -> str:
        done = subprocess.run(
            ["tmux", "-S", self.server, *args], capture_output=True, text=True, timeout=30
        )
        assert done.returncode == 0, f"tmux {args[0]}: {done.stderr}"
        return done.stdout

    def screen(self) -> str:
        if self.status.exists():
            return f"(the command ended with {self.status.read_text().strip()})"
        return self._tmux("capture-pane", "-p")

    def wait_screen(self, accept: Callable[[str], bool], timeout: float = 60) -> str:
        return wait_for(self.screen, accept, timeout, interval=0.3)

    def resize(self, width: int, height: int) -> None:
        self._tmux("resize-window", "-x", str(width), "-y", str(height))

    def press(self, key: str) -> None:
        self._tmux("send-keys", key)

    def exit_code(self, timeout: float = 15) -> int:
        wait_for(self.status.exists, bool, timeout, interval=0.2)
        return int(self.status.read_text())

    def close(self) -> None:
        subprocess.run(["tmux", "-S", self.server, "kill-server"], capture_output=True)


@contextlib.contextmanager
def terminal(where: Path, command: list[str]) -> Iterator[Terminal]:
    term = Terminal(where, command)
    try:
        yield term
    finally:
        term.close()


def hosts_listed(screen: str) -> bool:
    rows = [line.split() for line in screen.splitlines()]
    alive = {row[0] for row in rows if len(row) > 3 and "alive" in row[:3]}
    return alive == {"h1", "h2", "h3"}


def widest(screen: str) -> int:
    return max(len(line) for line in screen.splitlines())


def test_nova_top_shows_the_hosts_and_a_running_migration(
    mesh: tuple[Lab, LabAgents], guest: Guest, disk_dir: Path, tmp_path: Path
) -> None:
    lab, agents = mesh
    h1 = lab.hosts[0]
    start_guest(lab, agents, disk_dir, guest, VM, dirty_mib=32, dirty_rate=10)
    code, started = nova(h1, "vm", "migrate", VM, "--to", "h2", *SLOW)
    assert (code, started["ok"]) == (0, True), started

    with terminal(tmp_path, h1.command([str(BIN / "nova"), "top", "--interval", "0.5"])) as term:
        shown = term.wait_screen(lambda s: hosts_listed(s) and PROGRESS.search(s) is not None)
        print(shown)
        assert shown.startswith("nova top  h1 ") and "mesh 3: 3 alive, 0 suspect, 0 dead" in shown
        assert "MIGRATIONS IN FLIGHT (1)" in shown
        assert f"migration of {VM} h1 -> h2 started (manual)" in shown
        hosts = [line for line in shown.splitlines() if line.startswith(("h1", "h2", "h3"))]
        assert all(len(line) > 80 for line in hosts), "drawn for the window (120), not for 80"
        snapshot_agrees(h1)

        code, cancelled = nova(h1, "vm", "cancel", VM)
        assert (code, cancelled["ok"]) == (0, True), cancelled
        assert ended(h1, VM, timeout=60)["outcome"] == "aborted"
        told = f"migration of {VM} h1 -> h2 aborted after"
        shown = term.wait_screen(lambda s: told in s and "MIGRATIONS IN FLIGHT (0)" in s)
        print(shown)

        term.resize(90, 30)
        narrow = term.wait_screen(lambda s: hosts_listed(s) and widest(s) <= 89)
        assert "RECENT EVENTS" in narrow and told in narrow, "redrawn for the smaller window"

        agents.kill(h1)  # the agent goes away under the view, and comes back
        term.wait_screen(lambda s: "agent not answering" in s and hosts_listed(s))
        agents.start(h1)
        back = term.wait_screen(lambda s: "agent not answering" not in s and "h1 *" in s, 60)
        assert back.startswith("nova top  h1 "), back

        term.press("q")
        assert term.exit_code() == 0


def snapshot_agrees(h1: LabHost) -> None:
    """Not on a terminal, `nova top` prints one snapshot: the same hosts and migration."""
    code, answer = nova(h1, "top")
    assert (code, answer["ok"]) == (0, True), answer
    assert sorted(h["node_id"] for h in answer["top"]["hosts"]) == ["h1", "h2", "h3"]
    running = [m for m in answer["top"]["migrations"] if not m["outcome"]]
    assert [(m["vm"], m["source"], m["target"]) for m in running] == [(VM, "h1", "h2")]
    done = h1.run([str(BIN / "nova"), "top"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "MIGRATIONS IN FLIGHT (1)" in done.stdout and "\x1b" not in done.stdout
