"""A template spreading through a lab of ten hosts, each with its own libvirtd and its
own store (a private directory at the same path on every host, as on separate machines).

The test guest is published as template test-guest:1; h1 pulls it from the catalogue;
every other host but the last creates a VM from it with no catalogue at all (the agent
fetches it from its peers); a VM running on h1 migrates to the last host, which never had
a copy: one `nova vm migrate --wait` has that host fetch the template from its peers
first, then moves the VM. Every copy has the manifest's SHA-256.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from novacron.agent.cli import main as nova_main
from novacron.simulations.guest import TEMPLATE_NAME, Guest, publish_template
from novacron.simulations.lab import Lab, LabHost
from novacron.simulations.lab.agents import LabAgents, wait_for
from tests.lab_vms import nova, remove_everywhere, running_mesh, wait_beat_above

pytestmark = pytest.mark.lab

RUN = f"tp{os.getpid() % 100000}"  # its own prefix: labs and kept logs go by it
HOSTS = 10
STORE = Path("/var/lib/libvirt/novacron-templates")  # private to each lab host
REF = f"{TEMPLATE_NAME}:1"
VMS = [f"tpl-{i}" for i in range(1, HOSTS + 1)]


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory: pytest.TempPathFactory, guest: Guest) -> Path:
    """A publisher key pair and a catalogue holding the test guest as test-guest:1."""
    root = tmp_path_factory.mktemp("templates")
    assert nova_main(["template", "keygen", "acme", "--out", str(root)]) == 0
    assert publish_template(guest, root / "acme.key", root / "catalogue") == 0
    return root


@pytest.fixture(scope="module")
def mesh(catalogue: Path) -> Iterator[tuple[Lab, LabAgents]]:
    extra = ["--template-dir", str(STORE), "--trusted-publishers", str(catalogue / "acme.pub")]
    with running_mesh(RUN, VMS, hosts=HOSTS, extra_args=extra) as built:
        yield built


def held_refs(observer: LabHost, host: str) -> list[str]:
    code, answer = nova(observer, "host", "show", host)
    return list(answer["host"]["record"]["templates"]) if code == 0 else []


def image_digest(host: LabHost, digest: str) -> str | None:
    """SHA-256 of the file named `digest` in `host`'s own store, None if it has none."""
    image = host.path(STORE / "files" / digest)
    return hashlib.sha256(image.read_bytes()).hexdigest() if image.exists() else None


def served(host: LabHost) -> int:
    code, answer = nova(host, "status")
    return int(answer["status"]["templates"]["served_pieces"]) if code == 0 else 0


def test_a_template_spreads_to_every_host_and_a_vm_migrates_to_a_host_without_it(
    mesh: tuple[Lab, LabAgents], catalogue: Path
) -> None:
    lab, _ = mesh
    h1, last = lab.hosts[0], lab.hosts[-1]
    code, pulled = nova(
        h1, "template", "pull", TEMPLATE_NAME, "--from", str(catalogue / "catalogue"),
        "--store", str(STORE), "--trust", str(catalogue / "acme.pub"),
    )  # fmt: skip
    assert code == 0, pulled
    signed = {f["role"]: f["sha256"] for f in pulled["template"]["files"]}
    for host in lab.hosts[1:]:  # gossip reaches hosts in no set order: each must know
        wait_for(partial(held_refs, host, h1.name), lambda refs: refs == [REF], 60, 0.5)

    for i, host in enumerate(lab.hosts[:-1], start=1):  # the last host never pulls it
        code, created = nova(host, "vm", "create", f"tpl-{i}", "--template", REF, timeout=300)
        assert code == 0, (host.name, created)
    for host in lab.hosts[:-1]:
        for digest in signed.values():
            assert image_digest(host, digest) == digest, host.name
    assert image_digest(last, signed["image"]) is None

    code, started = nova(h1, "vm", "start", "tpl-1")
    assert code == 0, started
    before = wait_beat_above(h1, "tpl-1", 5)[-1]
    # One command: the target lacks the template, fetches it from its peers, then the VM moves.
    code, moved = nova(h1, "vm", "migrate", "tpl-1", "--to", last.name, "--wait", timeout=300)
    assert code == 0 and moved["migration"]["outcome"] == "committed", moved
    for digest in signed.values():
        assert image_digest(last, digest) == digest
    wait_beat_above(last, "tpl-1", before)
    assert served(h1) > 0
    assert any(served(host) > 0 for host in lab.hosts[1:]), "only h1 ever served pieces"
    remove_everywhere(lab, *VMS)
