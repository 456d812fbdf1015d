"""The agent's systemd unit: installed for real, verified by systemd itself, and hardened.

A module fixture runs the install script (systemd/install-agent.sh, what the
README tells an operator to run) into a scratch root: a virtualenv in
<root>/opt/novacron with the package (built from a copy of this checkout;
its dependencies are not needed to check the unit, so PIP_NO_DEPS), the unit
in <root>/etc/systemd/system, links in <root>/usr/local/bin. The scratch root
also gets this machine's own system units, so `systemd-analyze --root` can
load the targets the unit names. `systemd-analyze verify` exits 0 even for
unknown keys, so any output at all is a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from novacron.agent import unit_dropin
from novacron.agent.config import AgentConfig

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "systemd" / "novacron-agent.service"
INSTALL = REPO / "systemd" / "install-agent.sh"
NAME = UNIT.name
MAX_EXPOSURE = 5.0


def _systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    assert found, "systemd-analyze is missing (Debian package: systemd)"
    return found


def directives(text: str) -> dict[str, list[str]]:
    """Every `Key=value` of a unit, values in order."""
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith(("#", ";", "[")):
            found.setdefault(key.strip(), []).append(value.strip())
    return found


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A scratch root with the agent installed by the install script."""
    scratch = tmp_path_factory.mktemp("root")
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md", "agent", "protocol", "coordinator", "simulations"):
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy2
        copy(REPO / name, source / name)
    env = {
        **os.environ,
        "DESTDIR": str(scratch),
        "PIP_NO_DEPS": "1",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }
    done = subprocess.run(
        ["sh", str(INSTALL), str(source)], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # What any system has: its units (for the targets ours names) and mkdir (a drop-in's).
    shutil.copytree("/usr/lib/systemd/system", scratch / "usr/lib/systemd/system", symlinks=True)
    (scratch / "bin").mkdir(exist_ok=True)
    shutil.copy2("/bin/mkdir", scratch / "bin/mkdir")
    yield scratch


def verify(root: Path, name: str = NAME) -> tuple[int, str]:
    """`systemd-analyze verify`'s exit code and what it said about anything but the
    machine's own units. Those are copied in for the targets ours names and are the
    distribution's: e.g. libvirt 11's libvirtd.service says `Type=notify-reload`, which
    Debian 12's systemd 252 does not know and ignores."""
    done = subprocess.run(
        [_systemd_analyze(), "verify", f"--root={root}", name],
        capture_output=True,
        text=True,
        timeout=60,
    )
    machine_units = f"{root}/usr/lib/systemd/system/"
    said = (done.stdout + done.stderr).splitlines(keepends=True)
    return done.returncode, "".join(line for line in said if not line.startswith(machine_units))


def test_the_installed_unit_verifies_without_any_output(root: Path) -> None:
    assert (root / "etc/systemd/system" / NAME).read_text() == UNIT.read_text()
    assert verify(root) == (0, "")


def test_the_unit_runs_what_the_install_put_there(root: Path) -> None:
    (start,) = directives(UNIT.read_text())["ExecStart"]
    agent = start.split()[0]
    assert os.access(root / agent.lstrip("/"), os.X_OK), agent
    assert os.readlink(root / "usr/local/bin/nova-agent") == agent
    assert os.readlink(root / "usr/local/bin/nova") == str(Path(agent).parent / "nova")
    (docs,) = directives(UNIT.read_text())["Documentation"]
    assert (root / docs.removeprefix("file:///")).is_file()


def test_an_install_without_the_agent_fails_verification(root: Path, tmp_path: Path) -> None:
    """The check that caught the old unit: verify notices an ExecStart that is not there."""
    bare = tmp_path / "bare"
    shutil.copytree(root / "usr/lib/systemd/system", bare / "usr/lib/systemd/system", symlinks=True)
    (bare / "etc/systemd/system").mkdir(parents=True)
    shutil.copy2(UNIT, bare / "etc/systemd/system" / NAME)
    assert "is not executable" in verify(bare)[1]


@pytest.mark.parametrize("name", [NAME, "novacron-coordinator.service"])
def test_unit_exposure_score_is_at_most_five(root: Path, name: str) -> None:
    done = subprocess.run(
        [_systemd_analyze(), "security", "--offline=yes", f"--root={root}", name],
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout)
    assert match, done.stdout + done.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE


def test_unit_declares_what_the_agent_relies_on() -> None:
    text = UNIT.read_text()
    for directive in ("Type=notify", "Restart=on-failure", "WatchdogSec=", "NoNewPrivileges=yes"):
        assert directive in text, directive
    # Every relaxed directive says why, right above it.
    relaxed = [line for line in text.splitlines() if line.startswith("# Relaxed:")]
    assert len(relaxed) >= 3


def test_stop_ends_the_whole_control_group() -> None:
    """KillMode stays the default, control-group: children the agent started (qemu-img)
    end with it. That this spares the VMs is shown in tests/test_systemd_lab.py."""
    assert directives(UNIT.read_text()).get("KillMode", ["control-group"]) == ["control-group"]


def test_no_directive_that_has_no_effect_or_blocks_the_start() -> None:
    found = directives(UNIT.read_text())
    # RemoveIPC= only cleans up after a unit that runs as its own user.
    assert "RemoveIPC" not in found or "User" in found
    # A path that must exist (no "-" prefix) makes the unit fail to start where it does
    # not; only the directories the unit creates itself are certain to.
    created = {f"/var/lib/{d}" for d in found.get("StateDirectory", [])}
    created |= {f"/run/{d}" for d in found.get("RuntimeDirectory", [])}
    for key in ("ReadWritePaths", "ReadOnlyPaths", "InaccessiblePaths", "BindPaths"):
        for value in found.get(key, []):
            for path in value.split():
                assert path.startswith("-") or path in created, f"{key}={path}"


def test_the_dropin_knows_what_the_unit_makes_writable() -> None:
    found = directives(UNIT.read_text())
    writable = {f"/var/lib/{d}" for d in found["StateDirectory"]}
    writable |= {f"/run/{d}" for d in found["RuntimeDirectory"]}
    assert {str(p) for p in unit_dropin.UNIT_WRITABLE} == writable
    assert found["ProtectSystem"] == ["strict"] and found["ProtectHome"] == ["yes"]


def test_default_settings_need_no_dropin() -> None:
    text = unit_dropin.dropin(AgentConfig(), hostname="edge-01")
    assert [line for line in text.splitlines() if not line.startswith("#")] == ["[Service]"]


def test_the_printed_dropin_makes_moved_directories_writable(root: Path, tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(
        'disk_dir = "/srv/novacron disks"\n'
        'data_dir = "/var/lib/novacron/state"\n'
        'template_dir = "/srv/templates"\n'
        'cert_file = "/home/ops/edge-01.crt"\n'
        'trusted_publishers = ["/home/ops/publisher.pub", "/etc/novacron/other.pub"]\n'
        'catalogue = "/home/ops/catalogue"\n'
    )
    done = subprocess.run(
        [str(Path(sys.executable).parent / "nova-agent"), "--config", str(config),
         "--key-file", "/etc/novacron/k.key", "--print-unit-dropin"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert (done.returncode, done.stderr) == (0, "")
    found = directives(done.stdout)
    # data_dir is the unit's own state directory: writable already
    assert found["ReadWritePaths"] == ['"/srv/novacron disks"', "/srv/templates"]
    assert found["ExecStartPre"] == [
        '+/bin/mkdir -p "/srv/novacron disks"',
        "+/bin/mkdir -p /srv/templates",
    ]
    assert found["BindReadOnlyPaths"] == [
        "/home/ops/edge-01.crt",
        "/home/ops/publisher.pub",
        "/home/ops/catalogue",
    ]
    assert found["ProtectHome"] == ["tmpfs"]
    dropin_dir = root / "etc/systemd/system" / f"{NAME}.d"
    dropin_dir.mkdir(exist_ok=True)
    (dropin_dir / "paths.conf").write_text(done.stdout)
    try:
        checked = verify(root)
    finally:
        shutil.rmtree(dropin_dir)
    assert checked == (0, "")


# --- the coordinator's unit ---------------------------------------------------------

COORDINATOR_UNIT = REPO / "systemd" / "novacron-coordinator.service"


def test_the_installed_coordinator_unit_verifies_without_any_output(root: Path) -> None:
    installed = root / "etc/systemd/system" / COORDINATOR_UNIT.name
    assert installed.read_text() == COORDINATOR_UNIT.read_text()
    (start,) = directives(COORDINATOR_UNIT.read_text())["ExecStart"]
    program = start.split()[0]
    assert os.readlink(root / "usr/local/bin/nova-coordinator") == program
    assert verify(root, COORDINATOR_UNIT.name) == (0, "")


def test_the_coordinator_unit_runs_unprivileged_and_notifies() -> None:
    text = COORDINATOR_UNIT.read_text()
    wanted = ("Type=notify", "Restart=on-failure", "DynamicUser=yes", "NoNewPrivileges=yes")
    for directive in wanted:
        assert directive in text, directive
