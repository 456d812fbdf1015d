"""The XML the source sends to the target's libvirtd for a disk copy: names survive any path."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from hypothesis import given
from hypothesis import strategies as st

from novacron.agent.disks import LocalDisk, pool_xml, volume_xml

# What a file name may hold (no NUL, no slash), XML's special characters included.
NAMES = st.text(
    alphabet=st.characters(blacklist_categories=["Cs", "Cc"], blacklist_characters="/"),
    min_size=1,
    max_size=40,
)


@given(NAMES, NAMES)
def test_volume_xml_keeps_names_and_backing_exact(name: str, base: str) -> None:
    disk = LocalDisk(f"/var/lib/novacron/{name}", "qcow2", f"/var/lib/bases/{base}", "qcow2")
    volume = ET.fromstring(volume_xml(disk, 1 << 30, with_backing=True))
    assert volume.findtext("name") == name
    assert volume.findtext("backingStore/path") == disk.backing
    assert volume.findtext("capacity") == str(1 << 30)
    assert volume.find("target/format").get("type") == "qcow2"  # type: ignore[union-attr]


@given(NAMES)
def test_pool_xml_keeps_the_directory_exact(name: str) -> None:
    pool = ET.fromstring(pool_xml(f"/srv/{name}"))
    assert pool.findtext("target/path") == f"/srv/{name}"
    assert pool.findtext("name", "").startswith("novacron-")


def test_quotes_in_a_format_cannot_break_out_of_the_attribute() -> None:
    disk = LocalDisk("/d/a.img", "raw' evil='1", None, None)
    volume = ET.fromstring(volume_xml(disk, 1, with_backing=False))
    assert volume.find("target/format").attrib == {"type": "raw' evil='1"}  # type: ignore[union-attr]
