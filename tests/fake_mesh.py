"""Fake views of the mesh for tests of the migrator and the local API, and a migrator over one.

`FakeView` is two alive hosts (h1 runs `vm1` and the stopped `off`), the view
a `Migrator` asks; `NoView` is an empty mesh view for an `ApiServer` whose
tests are about other routes (a fake view answers with `Fixed` JSON);
`migrator(sent)` is h1's migrator on libvirt's test driver, its messages
appended to `sent`; `labelled_libvirt` is a test driver whose VMs carry labels.
"""

from __future__ import annotations

import dataclasses
import random
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from novacron.agent.core.membership.members import MemberInfo
from novacron.agent.migrator import Migrator
from novacron.agent.vmspec import VmMetadata, metadata_element
from novacron.protocol.messages import MemberState, Message, NodeRecord, Resources, VmSummary


class FakeView:
    """Two alive hosts; h1 runs `vm1` (running) and `off` (shut off)."""

    def __init__(self) -> None:
        vms = (
            VmSummary("vm1", state="running", vcpus=1, memory_mib=128),
            VmSummary("off", state="shutoff"),
        )
        room = Resources(vcpus=4, memory_mib=4096, disk_gib=10)
        self._records = {
            "h1": NodeRecord("h1", 1, capacity=room, vms=vms, libvirt_uri="qemu:///system"),
            "h2": NodeRecord("h2", 1, capacity=room, libvirt_uri="qemu:///system"),
        }

    def member(self, node_id: str) -> MemberInfo | None:
        if node_id not in self._records:
            return None
        address = f"198.18.0.{node_id[1:]}:7946"
        return MemberInfo(node_id, address, 1, MemberState.ALIVE, 0.0, 0.0)

    def records(self) -> Mapping[str, NodeRecord]:
        return self._records

    def gossip(self, node_id: str, **fields: Any) -> None:
        """`node_id`'s next record, with `fields` changed, as gossip brings it."""
        self._records[node_id] = dataclasses.replace(self._records[node_id], **fields)


TEMPLATE = "debian-12:1"


class HolderView(FakeView):
    """FakeView, and h3: as roomy as h2 (which wins their ties), holding `TEMPLATE` whole."""

    def __init__(self) -> None:
        super().__init__()
        h3 = dataclasses.replace(self._records["h2"], node_id="h3", templates=(TEMPLATE,))
        self._records["h3"] = h3


def migrator(
    sent: list[tuple[str, Message]],
    view: FakeView | None = None,
    libvirt_uri: str = "test:///default",
) -> Migrator:
    async def send(destination: str, message: Message) -> None:
        sent.append((destination, message))

    return Migrator(
        "h1",
        view or FakeView(),
        host="198.18.0.1",
        libvirt_uri=libvirt_uri,
        send=send,
        clock=lambda: 100.0,
        rng=random.Random(1),
    )


def labelled_libvirt(directory: Path, labels: Mapping[str, Mapping[str, str]]) -> str:
    """The URI of a libvirt test driver whose domains are `labels`' VMs, each carrying its
    labels in NovaCron's metadata as `nova vm create` writes it (the migrator reads a VM's
    template there: records carry no VM labels)."""
    node = ET.Element("node")
    for vm, vm_labels in labels.items():
        domain = ET.SubElement(node, "domain", type="test")
        ET.SubElement(domain, "name").text = vm
        ET.SubElement(domain, "memory").text = "131072"
        ET.SubElement(ET.SubElement(domain, "os"), "type").text = "hvm"
        metadata = ET.SubElement(domain, "metadata")
        metadata.append(metadata_element(VmMetadata(dict(vm_labels), ())))
    path = directory / "libvirt-node.xml"
    path.write_text(ET.tostring(node, encoding="unicode"))
    return f"test://{path}"


class Fixed:
    """A fake view's answer: whatever JSON the test gives it (the API needs only `to_json`)."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body

    def to_json(self) -> dict[str, Any]:
        return dict(self.body)


class NoView:
    """A mesh with nothing in it."""

    def status(self) -> Fixed:
        return Fixed({})

    def members(self) -> list[Fixed]:
        return []

    def host(self, node_id: str | None) -> Fixed | None:
        return None

    def conflicts(self) -> list[Fixed]:
        return []

    def vms(self) -> list[Fixed]:
        return []
