"""What every `nova` command shares, checked on the installed console script: exit codes
a script can tell apart, `--json` everywhere, and quiet ends when the reader goes away."""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from novacron.agent.cli import build_parser

NOVA = str(Path(sys.executable).parent / "nova")


def leaf_commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every runnable command (`ca init`, `vm migrate`, ...) with its parser."""
    groups = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not groups:
        yield path, parser
    for group in groups:
        for name, sub in group.choices.items():
            yield from leaf_commands(sub, (*path, name))


def test_every_command_takes_json() -> None:
    commands = dict(leaf_commands(build_parser()))
    assert ("completion",) in commands and ("ca", "revoke") in commands
    assert {("reload",), ("ca", "publish"), ("host", "drain"), ("host", "undrain")} <= set(commands)
    without = [
        " ".join(path)
        for path, parser in commands.items()
        if not any("--json" in action.option_strings for action in parser._actions)
    ]
    assert without == []


def test_completion_json_carries_the_script() -> None:
    done = subprocess.run([NOVA, "completion", "bash", "--json"], capture_output=True, text=True)
    assert (done.returncode, done.stderr) == (0, "")
    answer = json.loads(done.stdout)
    assert answer["ok"] is True and answer["shell"] == "bash"
    assert answer["script"].startswith("# bash completion for nova")
    assert "complete -o default -F _nova nova" in answer["script"]


@pytest.mark.parametrize("argv", [["completion", "bash"], ["--json", "completion", "bash"]])
def test_output_into_a_closed_pipe_ends_quietly(argv: list[str]) -> None:
    """`nova ... | head -1`: the reader is gone before nova writes (made certain here by
    closing the pipe's read end first). No traceback, and the exit code a shell reports
    for any tool that SIGPIPE ended."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run([NOVA, *argv], stdout=write_end, stderr=subprocess.PIPE, text=True)
    finally:
        os.close(write_end)
    assert done.stderr == ""
    assert done.returncode == 141


def test_head_reads_one_line_and_nova_ends_quietly() -> None:
    """The same through a real shell pipeline, as an operator types it."""
    done = subprocess.run(
        ["bash", "-c", f"set -o pipefail; {NOVA} --json completion bash | head -1"],
        capture_output=True,
        text=True,
    )
    assert done.stdout == "{\n"
    assert done.stderr == ""
    assert done.returncode in (0, 141)  # 0 only when nova wrote it all before head left


@pytest.fixture
def root_only_socket(tmp_path: Path) -> Iterator[Path]:
    """A listening unix socket that this test's nova may not connect to: in a directory only
    its owner may enter, as /run/novacron is, and with no write permission for anyone."""
    private = tmp_path / "run"
    private.mkdir(mode=0o700)
    path = private / "agent.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))
        server.listen()
        path.chmod(0)
        yield path


def as_nobody(*argv: str) -> subprocess.CompletedProcess[str]:
    """nova as a user the socket refuses: root drops to nobody (root passes any mode); any
    other user is refused by the socket's mode already."""
    drop = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    command = [*(drop if os.geteuid() == 0 else []), NOVA, *argv]
    return subprocess.run(command, capture_output=True, text=True, timeout=30)


def test_permission_denied_is_not_agent_not_running(root_only_socket: Path) -> None:
    for command in (["status"], ["members"], ["vm", "list"], ["rebalance", "status"]):
        done = as_nobody(*command, "--socket", str(root_only_socket))
        assert done.returncode == 4, (command, done.stderr)
        assert (
            done.stderr
            == f"nova: error: permission denied on {root_only_socket}: run nova as root\n"
        )
    done = as_nobody("--json", "status", "--socket", str(root_only_socket))
    assert done.returncode == 4 and json.loads(done.stdout)["ok"] is False


def test_no_agent_still_exits_3(tmp_path: Path) -> None:
    done = subprocess.run(
        [NOVA, "status", "--socket", str(tmp_path / "none.sock")], capture_output=True, text=True
    )
    assert done.returncode == 3
    assert "the agent is not running" in done.stderr
