"""`nova-agent --help`, as an operator reads it: every option explained, with its default."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

from novacron.agent.config import AgentConfig

NOVA_AGENT = str(Path(sys.executable).parent / "nova-agent")


def option_help(text: str) -> dict[str, str]:
    """Option (`--port`, `--mdns`) -> its help text, joined from argparse's wrapped lines."""
    found: dict[str, str] = {}
    current = ""
    options = text.split("\noptions:\n", 1)[1].split("\n\n", 1)[0]
    for line in options.splitlines():
        match = re.match(r"  (-\S+(?: \S+)?(?:, --\S+)?)(?:  +(.*))?$", line)
        if match:
            current = [word for word in match.group(1).split() if word.startswith("--")][-1]
            current = current.rstrip(",")
            found[current] = match.group(2) or ""
        else:
            found[current] += " " + line.strip()
    return {option: " ".join(help.split()) for option, help in found.items()}


def test_every_setting_has_a_help_line_with_its_default() -> None:
    done = subprocess.run([NOVA_AGENT, "--help"], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr) == (0, "")
    helps = option_help(done.stdout)
    for setting in dataclasses.fields(AgentConfig):
        option = "--" + setting.name.replace("_", "-")
        if setting.type == "bool":
            option = f"--no-{setting.name.replace('_', '-')}"  # shown as --x, --no-x
        assert option in helps, option
        assert "(default: " in helps[option], (option, helps[option])
        assert "(default: ()" not in helps[option], (option, helps[option])  # said in words
    assert "(default: 7946)" in helps["--port"]
    assert "(default: on)" in helps["--no-mdns"]
    assert "(default: /var/lib/novacron/disks)" in helps["--disk-dir"]
    assert "(default: /etc/novacron/agent.toml)" in helps["--config"]
    assert "--print-unit-dropin" in helps
    assert "NOVACRON_PORT" in done.stdout  # where else a setting can come from
