"""The lab rule end to end (tests/conftest.py): without root, a lab test fails, never skips.

The run without root is a pytest in a user namespace of its own, where this
process's uid is unmapped: the suite's files stay readable, but geteuid() is
no longer 0, as for an ordinary user.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.lab  # makes a namespace

ROOT = Path(__file__).parent.parent


def test_a_lab_test_without_root_fails_and_says_how_to_leave_it_out() -> None:
    test = "tests/test_guest.py::test_build_is_idempotent"
    command = ["unshare", "--user", sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    done = subprocess.run(
        [*command, test], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"ERROR {test}" in done.stdout
    assert "lab test, but this run lacks root (namespaces, veths, mounts, libvirtd)" in done.stdout
    assert "or deselect lab tests with -m 'not lab' (make test-unit)" in done.stdout
    assert "skipped" not in done.stdout and "1 error" in done.stdout
