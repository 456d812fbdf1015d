"""`nova completion bash` completes commands and subcommands in a real bash."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

from novacron.agent.cli import main as nova
from novacron.agent.cli.common import Output


def _complete(script: Path, *words: str) -> list[str]:
    line = " ".join(f'"{w}"' for w in words)
    program = (
        f"source {script}; COMP_WORDS=(nova {line}); COMP_CWORD={len(words)}; "
        '_nova; echo "${COMPREPLY[@]}"'
    )
    done = subprocess.run(["bash", "-c", program], capture_output=True, text=True, check=True)
    return done.stdout.split()


def test_bash_completion_follows_the_parser(tmp_path: Path) -> None:
    from novacron.agent.cli.completion import print_completion

    buffer = io.StringIO()
    assert print_completion(None, Output(stdout=buffer)) == 0  # type: ignore[arg-type]
    script = tmp_path / "nova.bash"
    script.write_text(buffer.getvalue())
    assert {"ca", "status", "members", "host", "vm", "completion"} <= set(_complete(script, ""))
    assert _complete(script, "ca", "i") == ["init", "issue"]
    vm_words = ["--help", "--json", "-h", "cancel", "create", "delete", "list", "migrate"]
    vm_words += ["recover", "show", "start", "stop"]
    assert _complete(script, "vm", "") == vm_words
    assert "--socket" in _complete(script, "members", "--")


def test_completion_command_exits_zero(capsys: object) -> None:
    assert nova(["completion", "bash"]) == 0
