"""`make demo`'s narration: a lab name of the operator's choosing, every line stamped.

The demo itself runs three lab hosts, a guest and a migration (a minute or two);
what is checked here is how it speaks and how `make demo` passes the name on.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from novacron.simulations import demo

REPO = Path(__file__).resolve().parent.parent
STAMP = re.compile(r"^\[\d\d:\d\d:\d\d +[+-]\d+\.\ds\] ")


def test_every_line_says_when(capsys: pytest.CaptureFixture[str]) -> None:
    demo.say("kill -9 the agent on h3; waiting for the others to notice")
    demo.say("    [ 31.8%] migrating (precopy)")
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all(STAMP.match(line) for line in lines), lines
    assert lines[1].endswith("    [ 31.8%] migrating (precopy)")


def test_the_lab_name_is_an_option() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "novacron.simulations.demo", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and "--name" in done.stdout


def test_make_demo_passes_the_lab_name_on() -> None:
    named = subprocess.run(
        ["make", "-n", "-C", str(REPO), "demo", "DEMO_LAB=edge-demo"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert "novacron.simulations.demo --name edge-demo" in named.stdout
    plain = subprocess.run(
        ["make", "-n", "-C", str(REPO), "demo"], capture_output=True, text=True, timeout=60
    )
    assert "--name" not in plain.stdout
