"""`make demo-federation` as a user runs it: two sites of three agents and a coordinator on
loopback, the coordinator SIGKILLed and restarted, and the views agreeing again."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.agents  # real agent processes on loopback


def test_the_federation_demo_runs_to_its_end_and_the_views_agree() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "novacron.simulations.federation_demo"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "POST /v1/vms web-1: succeeded on paris/" in out, out
    assert "while the coordinator is away: done by the site alone" in out, out
    for site in ("lyon", "paris"):
        assert f"{site}: the coordinator's view equals the site's" in out, out
    assert out.rstrip().endswith("done"), out[-2000:]
