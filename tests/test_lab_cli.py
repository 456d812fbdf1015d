"""The lab's command line as a newcomer uses it: `up --agents`, the commands it prints,
`exec` in the current directory, agents stopped, killed and restarted one at a time.

One two-host lab with agents, brought up by the CLI itself (as the README says)
and removed by the command `up` printed for that.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from novacron.simulations.lab.agents import wait_for
from novacron.simulations.lab.netns import netns_pids
from novacron.simulations.lab.state import DEFAULT_STATE_ROOT
from novacron.simulations.lab.teardown import tear_down

pytestmark = pytest.mark.lab

NAME = f"c{os.getpid() % 100000}"
LAB = [sys.executable, "-m", "novacron.simulations.lab"]
BARE_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}  # no virtualenv


def lab(*args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LAB, *args], capture_output=True, text=True, timeout=180, **kw)


@pytest.fixture(scope="module")
def printed() -> Iterator[dict[str, str]]:
    """`lab up --agents`: the commands it printed (`see the mesh`, `remove it`)."""
    done = lab("up", "--hosts", "2", "--agents", "--name", NAME)
    try:
        assert done.returncode == 0, done.stdout + done.stderr
        found = {
            "see": re.search(r"see the mesh: (.+)", done.stdout),
            "down": re.search(r"remove it with `(.+)`", done.stdout),
        }
        assert all(found.values()), done.stdout
        yield {key: match.group(1) for key, match in found.items() if match}
    finally:
        tear_down(NAME, DEFAULT_STATE_ROOT)


def run_printed(command: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """A printed command as typed into a fresh shell: elsewhere, outside the virtualenv."""
    return subprocess.run(
        shlex.split(command), cwd=cwd, env=BARE_ENV, capture_output=True, text=True, timeout=120
    )


def members(host: str = "h1") -> dict[str, str]:
    nova = str(Path(sys.executable).parent / "nova")
    done = lab("exec", host, "--name", NAME, "--", nova, "--json", "members")
    rows = json.loads(done.stdout).get("members", []) if done.stdout.strip() else []
    return {row["node_id"]: row["state"] for row in rows}


def agent_pids() -> dict[str, int | None]:
    done = lab("status", "--name", NAME, "--json")
    (status,) = json.loads(done.stdout)["labs"]
    return {host["name"]: host["agent_pid"] for host in status["hosts"]}


def nova_agents_in(host: str) -> list[int]:
    """The nova-agent processes in the host's network namespace, found independently."""
    pids = netns_pids(f"nclab-{NAME}-{host}")
    return [p for p in pids if b"nova-agent" in Path(f"/proc/{p}/cmdline").read_bytes()]


def test_the_printed_command_works_as_printed(printed: dict[str, str], tmp_path: Path) -> None:
    done = run_printed(printed["see"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert re.search(r"^h1 \(self\)\s+198\.18\.0\.1", done.stdout, re.M), done.stdout
    wait_for(members, lambda view: view == {"h1": "alive", "h2": "alive"}, timeout=90)


def test_exec_runs_in_the_current_directory(printed: dict[str, str], tmp_path: Path) -> None:
    script = tmp_path / "where.sh"
    script.write_text("#!/bin/sh\npwd\nhostname\n")
    script.chmod(0o755)
    done = lab("exec", "h2", "--name", NAME, "--", "./where.sh", cwd=tmp_path)
    assert (done.returncode, done.stdout) == (0, f"{tmp_path}\nh2\n"), done.stderr


def test_help_says_how_to_run_nova_on_a_lab_host() -> None:
    for args in (["--help"], ["exec", "--help"]):
        text = " ".join(lab(*args).stdout.split())
        assert f"exec h1 -- {Path(sys.executable).parent / 'nova'} members" in text
        assert "ip netns exec" in text and "private /run" in text


def test_status_shows_each_agents_pid(printed: dict[str, str]) -> None:
    pids = agent_pids()
    assert pids == {"h1": nova_agents_in("h1")[0], "h2": nova_agents_in("h2")[0]}
    text = lab("status", "--name", NAME).stdout
    for host, pid in pids.items():
        assert re.search(rf"^  {host} .* agent pid {pid}$", text, re.M), text


def test_kill_start_stop_and_restart_one_agent(printed: dict[str, str]) -> None:
    first = agent_pids()["h2"]
    done = lab("agent", "kill", "h2", "--name", NAME)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{NAME}/h2: agent {first} killed\n"
    assert nova_agents_in("h2") == [] and agent_pids()["h2"] is None
    assert "agent STOPPED" in lab("status", "--name", NAME).stdout
    wait_for(members, lambda view: view.get("h2") in ("suspect", "dead"), timeout=90)

    done = lab("agent", "start", "h2", "--name", NAME, "--json")
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert (answer["pid_before"], answer["pid"]) == (None, nova_agents_in("h2")[0])
    wait_for(members, lambda view: view.get("h2") == "alive", timeout=90)
    again = lab("agent", "start", "h2", "--name", NAME)
    assert again.returncode == 1 and "already runs" in again.stderr

    done = lab("agent", "stop", "h2", "--name", NAME)
    assert done.returncode == 0 and nova_agents_in("h2") == []
    wait_for(members, lambda view: view.get("h2") == "left", timeout=90)  # SIGTERM: it said goodbye

    lab("agent", "start", "h2", "--name", NAME, check=True)
    before = agent_pids()["h2"]
    done = lab("agent", "restart", "h2", "--name", NAME)
    after = agent_pids()["h2"]
    assert done.returncode == 0 and after not in (None, before)
    assert done.stdout.startswith(f"{NAME}/h2: agent {before} restarted; now pid {after}")
    wait_for(members, lambda view: view == {"h1": "alive", "h2": "alive"}, timeout=90)


def test_the_printed_down_command_removes_the_lab(printed: dict[str, str], tmp_path: Path) -> None:
    done = run_printed(printed["down"], tmp_path)
    assert done.returncode == 0, done.stderr
    # It says what it stops while it waits for them: the agents and each host's daemons.
    stopping = re.search(r"stopping \d+ processes \((.*)\)", done.stdout)
    assert stopping and "nova-agent" in stopping[1] and "libvirtd" in stopping[1], done.stdout
    assert lab("status", "--name", NAME, "--json").stdout.count('"hosts"') == 0
