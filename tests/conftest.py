"""Fixtures every test module may use, and the rule for tests that need the lab.

Shared helpers live in this folder's helper modules (the ones not named
test_*: agent_process, api_client, coordinator_harness, core_harness,
fake_mesh, fuzzing, lab_vms, postgres, strategies; the federation's processes
live in novacron.simulations.federation, migration cores with a fake hypervisor in
novacron.simulations.migrations). Test modules import from those,
never from one another (tests/test_suite_layout.py checks).

The `lab` marker (a module's `pytestmark = pytest.mark.lab`) is for tests
that need root and what the lab builds on: network namespaces, libvirtd,
QEMU, the test guest. The rule:

- A selected lab test runs, or FAILS saying what is missing (root, a program
  and its Debian package). It never skips: a CI run, which runs `make test`
  as root, must not report the lab as working when nothing checked it.
- The one way not to run lab tests is to deselect them: `pytest -m "not lab"`
  (`make test-unit`), which passes as an ordinary user. Everything else is
  plain code, loopback sockets and libvirt's test driver.
"""

from __future__ import annotations

import collections
import functools
import os

import pytest

from novacron.simulations import guest as guest_mod
from novacron.simulations.guest import Guest
from novacron.simulations.lab import preflight

# Fixtures: `served`, the session's `postgres`, a `nats_server` per test.
pytest_plugins = ("tests.api_server", "tests.postgres", "tests.nats_server")

DESELECT = "deselect lab tests with -m 'not lab' (make test-unit)"


@functools.cache
def lab_missing() -> str | None:
    """What this run lacks for the lab, or None; asked once per session."""
    missing = []
    if os.geteuid() != 0:
        missing.append("root (namespaces, veths, mounts, libvirtd)")
    programs = preflight.missing_binaries(libvirt=True)
    if programs:
        listing = ", ".join(
            f"{name} (Debian package {pkg})" for name, pkg in sorted(programs.items())
        )
        missing.append(f"{listing}: sh scripts/install-system-deps.sh")
    return "; ".join(missing) or None


# `make test` runs the suite on two workers (pytest-xdist, `--dist loadgroup`). Tests that
# share a machine-wide resource run one after another in one group: the lab's (root,
# namespaces, the lab libvirtd, TCG guests that want a core each) and the real agents'
# on the host's own loopback and multicast (mDNS), with discovery's. Everything else,
# sockets on port 0 and files in temporary directories, goes to whichever worker is free.
HOST_NETWORK_MODULES = frozenset({"test_discovery.py"})


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("lab") is not None:
            item.add_marker(pytest.mark.xdist_group("lab"))
        elif (
            item.get_closest_marker("agents") is not None or item.path.name in HOST_NETWORK_MODULES
        ):
            item.add_marker(pytest.mark.xdist_group("host-network"))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """A lab test without its prerequisites fails here, before its fixtures build anything."""
    if item.get_closest_marker("lab") is None:
        return
    missing = lab_missing()
    if missing is not None:
        pytest.fail(f"lab test, but this run lacks {missing}; {DESELECT}", pytrace=False)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The modules that took longest (setup, call and teardown together: a module's lab
    or services count, which `--durations` splits over its tests), and one line saying why
    lab tests failed wholesale, and how to leave them out."""
    _slowest_modules(terminalreporter)
    missing = lab_missing() if lab_missing.cache_info().currsize else None
    if missing is not None:
        terminalreporter.write_line(
            f"lab tests could not run: this run lacks {missing}. Run the suite as root "
            f"(make test, as CI does), or {DESELECT}.",
            red=True,
        )


def _slowest_modules(terminalreporter: pytest.TerminalReporter, shown: int = 15) -> None:
    spent: dict[str, float] = collections.defaultdict(float)
    for reports in terminalreporter.stats.values():
        for report in reports:
            if isinstance(report, pytest.TestReport):
                spent[report.nodeid.split("::")[0]] += report.duration
    if spent:
        terminalreporter.write_sep("=", f"slowest {shown} modules")
        for module, seconds in sorted(spent.items(), key=lambda kv: -kv[1])[:shown]:
            terminalreporter.write_line(f"{seconds:8.1f}s {module}")


@pytest.fixture(scope="session")
def guest() -> Guest:
    """The test guest (built once from Debian packages; later sessions only check it)."""
    return guest_mod.build()
