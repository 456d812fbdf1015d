"""Templates spreading host to host: real `nova-agent` processes on loopback (libvirt's
test driver), a real publisher key and catalogue, `nova template pull` with no catalogue.

The image is served at a capped rate so that a transfer lasts long enough to kill its
source in the middle; every pull is judged as an operator would: the command's exit
code, the SHA-256 of the file in the host's store, and where its pieces came from.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from novacron.agent.cli import main as nova
from novacron.agent.mesh_pull import STALL_TIMEOUT
from tests.agent_process import BIN, agent_args, free_port_pair, make_ca

pytestmark = pytest.mark.agents  # real agent processes on loopback

MiB = 1024 * 1024
IMAGE_SIZE = 24 * MiB + 12345  # 25 pieces, the last one short
SERVE_MIB_S = 6.0  # each holder's cap: a pull from two holders takes about two seconds


@dataclass
class Host:
    name: str
    dir: Path
    args: list[str]
    proc: subprocess.Popen[bytes] | None = None
    log: Any = None

    @property
    def socket(self) -> Path:
        return self.dir / "agent.sock"

    @property
    def store(self) -> Path:
        return self.dir / "templates"


@dataclass
class Mesh:
    tmp: Path
    hosts: dict[str, Host] = field(default_factory=dict)
    image: bytes = b""

    def start(self, name: str) -> Host:
        host = self.hosts[name]
        host.log = (host.dir / "agent.log").open("ab")
        host.proc = subprocess.Popen(host.args, stderr=host.log)
        return host

    def stop_all(self) -> None:
        for host in self.hosts.values():
            if host.proc is not None and host.proc.poll() is None:
                host.proc.kill()
            if host.proc is not None:
                host.proc.wait(timeout=30)
            if host.log is not None:
                host.log.close()


def api(host: Host, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    """`nova`'s own client against the host's agent: (HTTP-ish code, answer)."""
    from novacron.agent import client

    try:
        if body is None:
            return 200, client.get(path, str(host.socket))
        return 202, client.post(path, body, str(host.socket))
    except client.AgentRequestFailed as exc:
        return exc.status, str(exc)


def until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            value = last = check()
        except Exception as exc:  # the agent may not answer yet
            value, last = None, exc
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"{what} (last: {last!r})")


def pull(host: Host, ref: str = "debian-12") -> subprocess.Popen[str]:
    """`nova template pull REF --json` on `host`, through its agent, from the mesh."""
    return subprocess.Popen(
        [str(BIN / "nova"), "template", "pull", ref, "--socket", str(host.socket), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def held_digest(host: Host) -> str | None:
    files = list((host.store / "files").glob("*"))
    if len(files) != 1:
        return None
    return hashlib.sha256(files[0].read_bytes()).hexdigest()


def templates_seen(viewer: Host, holder: str) -> list[str]:
    """What `viewer` hears `holder` offer, [] until it holds `holder` alive."""
    _, answer = api(viewer, f"/v1/hosts/{holder}")
    return list(answer["record"]["templates"]) if answer["state"] == "alive" else []


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    """n1..n4 configured (not started): each trusts the publisher acme; n1 is the seed.
    A catalogue holds debian-12:1, a 24 MiB image."""
    ca = make_ca(tmp_path)
    keys = tmp_path / "keys"
    assert nova(["template", "keygen", "acme", "--out", str(keys)]) == 0
    assert nova(["template", "keygen", "mallory", "--out", str(keys)]) == 0
    image = b"QFI\xfb" + os.urandom(IMAGE_SIZE - 4)
    (tmp_path / "debian.qcow2").write_bytes(image)
    catalogue = tmp_path / "catalogue"
    publish = ["template", "publish", str(tmp_path / "debian.qcow2"), "--name", "debian-12"]
    publish += ["--version", "1", "--key", str(keys / "acme.key"), "--to", str(catalogue)]
    publish += ["--memory", "256"]
    assert nova(publish) == 0
    (ca / "absent.toml").write_text("")
    built = Mesh(tmp_path, image=image)
    seed = 0
    for i in range(1, 5):
        name = f"n{i}"
        if name != "n1":
            assert nova(["ca", "issue", name, "--dir", str(ca / "ca"), "--out", str(ca)]) == 0
        home = tmp_path / name
        home.mkdir()
        port = free_port_pair()
        seed = seed or port
        args = agent_args(ca, port, node=name)
        args[args.index("--api-socket") + 1] = str(home / "agent.sock")
        args[args.index("--data-dir") + 1] = str(home / "data")
        args += ["--template-dir", str(home / "templates")]
        args += ["--trusted-publishers", str(keys / "acme.pub")]
        args += ["--image-serve-mib-s", str(SERVE_MIB_S), "--inventory-interval", "1"]
        if name != "n1":
            args += ["--seeds", f"127.0.0.1:{seed}"]
        built.hosts[name] = Host(name, home, args)
    try:
        yield built
    finally:
        built.stop_all()


def hold_from_catalogue(mesh: Mesh, name: str) -> None:
    """`nova template pull --from CATALOGUE` into `name`'s store (before its agent runs)."""
    host = mesh.hosts[name]
    argv = ["template", "pull", "debian-12", "--from", str(mesh.tmp / "catalogue")]
    argv += ["--store", str(host.store), "--trust", str(mesh.tmp / "keys" / "acme.pub")]
    assert nova(argv) == 0


def expected_digest(mesh: Mesh) -> str:
    return hashlib.sha256(mesh.image).hexdigest()


def test_a_template_spreads_from_peers_and_its_source_killed_mid_transfer_is_replaced(
    mesh: Mesh,
) -> None:
    """n1 and n2 hold debian-12:1; n3 pulls it with no catalogue. n1 is killed while n3
    holds part of the image: the pull finishes from n2, and the file is the signed one."""
    hold_from_catalogue(mesh, "n1")
    hold_from_catalogue(mesh, "n2")
    for name in ("n1", "n2", "n3"):
        mesh.start(name)
    n1, n3 = mesh.hosts["n1"], mesh.hosts["n3"]
    until(
        lambda: all(templates_seen(n3, h) == ["debian-12:1"] for h in ("n1", "n2")),
        60,
        "n3 never saw n1 and n2 offer debian-12:1",
    )
    puller = pull(n3)
    # Within the pull's own stall limit: a loaded machine's first pieces can be slow.
    status = until(
        lambda: [p for p in api(n3, "/v1/templates/pulls")[1]["pulls"] if p["done_bytes"] > 0],
        STALL_TIMEOUT,
        "n3's pull never started receiving pieces",
    )[0]
    assert n1.proc is not None
    n1.proc.send_signal(signal.SIGKILL)
    at_kill = api(n3, f"/v1/templates/pulls/{status['pull_id']}")[1]["pull"]
    out, err = puller.communicate(timeout=120)
    assert puller.returncode == 0, err
    result = json.loads(out)
    assert at_kill["done_bytes"] < at_kill["total_bytes"], "the pull ended before n1 was killed"
    assert result["state"] == "done" and result["outcome"] == "added"
    assert result["sources"].get("n2", 0) > 0
    assert held_digest(n3) == expected_digest(mesh)
    assert until(lambda: templates_seen(mesh.hosts["n2"], "n3") == ["debian-12:1"], 30, "")


def test_a_pull_asked_before_the_host_has_heard_of_a_holder_waits_for_one(mesh: Mesh) -> None:
    """n2 is asked for debian-12 while it knows no member (its seed n1 is not up yet):
    the pull looks for a holder while the records arrive, rather than failing at once."""
    hold_from_catalogue(mesh, "n1")
    n1 = mesh.hosts["n1"]
    n2 = mesh.start("n2")
    # n1 knocks at n2 as soon as it starts (n2's own retries of its seed back off).
    n1.args += ["--seeds", f"127.0.0.1:{n2.args[n2.args.index('--port') + 1]}"]
    until(lambda: api(n2, "/v1/status")[0] == 200, 30, "n2's agent never answered")
    puller = pull(n2)
    until(lambda: api(n2, "/v1/templates/pulls")[1]["pulls"], 10, "n2 never began the pull")
    mesh.start("n1")
    out, err = puller.communicate(timeout=120)
    assert puller.returncode == 0, err
    result = json.loads(out)
    assert result["state"] == "done" and result["sources"].get("n1", 0) > 0
    assert held_digest(n2) == expected_digest(mesh)


@pytest.mark.parametrize("chunk_map", ["kept", "lost"])
def test_a_copy_altered_on_a_holders_disk_is_never_served_and_no_longer_offered(
    mesh: Mesh, chunk_map: str
) -> None:
    """n2's copy of the image was altered on its disk. n2 checks every piece it reads
    against the signed chunk map before serving it: n3 gets nothing from n2 and ends with
    the signed bytes from n1, and n2 says so in its log and stops offering the template.
    Without its kept chunk map, n2 rebuilds one from its bytes, finds it is not the
    signed one, and the same follows. (A peer that sends corrupt pieces on purpose is
    banned: test_hostile_images.py.)"""
    hold_from_catalogue(mesh, "n1")
    hold_from_catalogue(mesh, "n2")
    (bad,) = (mesh.hosts["n2"].store / "files").glob("*")
    bad.chmod(0o644)
    data = bytearray(bad.read_bytes())
    for offset in range(100, len(data), MiB):
        data[offset] ^= 0xFF  # every piece differs from the signed one
    bad.write_bytes(bytes(data))
    if chunk_map == "lost":
        for kept in (mesh.hosts["n2"].store / "chunkmaps").glob("*"):
            kept.unlink()
    for name in ("n1", "n2", "n3"):
        mesh.start(name)
    n3 = mesh.hosts["n3"]
    until(
        lambda: all(templates_seen(n3, h) == ["debian-12:1"] for h in ("n1", "n2")),
        60,
        "n3 never saw n1 and n2 offer debian-12:1",
    )
    puller = pull(n3)
    out, err = puller.communicate(timeout=120)
    assert puller.returncode == 0, err
    result = json.loads(out)
    assert set(result["sources"]) == {"n1"}, result
    assert held_digest(n3) == expected_digest(mesh)
    until(lambda: templates_seen(n3, "n2") == [], 30, "n2 still offers its damaged copy")
    assert templates_seen(n3, "n1") == ["debian-12:1"]
    log = (mesh.hosts["n2"].dir / "agent.log").read_bytes()
    assert b"does not match its signed hash on this host's disk" in log


def test_pulls_that_cannot_succeed_say_why_and_change_nothing(mesh: Mesh) -> None:
    """A template nobody holds, a host that trusts another publisher, bad input."""
    hold_from_catalogue(mesh, "n1")
    n4 = mesh.hosts["n4"]
    trusted = n4.args.index("--trusted-publishers") + 1
    n4.args[trusted] = str(mesh.tmp / "keys" / "mallory.pub")
    for name in ("n1", "n2", "n4"):
        mesh.start(name)
    n2 = mesh.hosts["n2"]
    until(lambda: templates_seen(n4, "n1") == ["debian-12:1"], 60, "n4 never saw n1's template")

    nobody = pull(n2, "ubuntu-24")
    out, _ = nobody.communicate(timeout=60)
    assert nobody.returncode == 1
    error = json.loads(out)["error"]
    assert "no peer holds a template named ubuntu-24 (looked for 15 s)" in error

    untrusted = pull(n4)
    out, _ = untrusted.communicate(timeout=60)
    assert untrusted.returncode == 1
    answer = json.loads(out)
    assert answer["reason"] == "untrusted-publisher", answer
    assert not list(n4.store.glob("*/*")), "the refused pull left files in n4's store"

    code, error = api(n2, "/v1/templates/pulls", {"template": "Not A Name"})
    assert code == 400 and "template name" in error
    code, error = api(n2, "/v1/templates/pulls", {"template": "debian-12", "from": "x"})
    assert code == 400 and "unknown setting" in error


def test_a_template_no_vm_uses_for_the_grace_is_removed_and_one_a_disk_uses_is_kept(
    mesh: Mesh,
) -> None:
    """n1 keeps templates unused for 2 s. While a VM disk in its disk directory has the
    image as base, the template stays; once that disk is gone, the template is removed,
    files and manifest, and n1's record no longer offers it."""
    hold_from_catalogue(mesh, "n1")
    n1, n2 = mesh.hosts["n1"], mesh.hosts["n2"]
    disks = n1.dir / "disks"
    disks.mkdir()
    (image,) = (n1.store / "files").glob("*")
    overlay = disks / "web-1-vda.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-u", "-b", str(image),
         str(overlay), "64M"],
        check=True,
    )  # fmt: skip
    n1.args += ["--disk-dir", str(disks), "--template-unused-grace", "2"]
    mesh.start("n1")
    mesh.start("n2")
    until(lambda: templates_seen(n2, "n1") == ["debian-12:1"], 60, "n2 never saw n1's template")
    time.sleep(6)  # three graces, with a look every second: a disk's base must stay
    assert image.exists() and templates_seen(n2, "n1") == ["debian-12:1"]

    overlay.unlink()  # the VM is deleted
    until(lambda: not image.exists(), 30, "n1 kept a template no VM used")
    assert not list(n1.store.glob("manifests/*/*.manifest"))
    until(lambda: templates_seen(n2, "n1") == [], 30, "n1's record still offers the template")
    assert b"template debian-12:1 removed" in (n1.dir / "agent.log").read_bytes()
