"""Who in the mesh can give a template's pieces, from the records they gossip.

A host lists in its record the templates it holds whole (`templates`) and those
it is fetching (`fetching`); the second serve the pieces they have so far,
which is what lets twenty hosts fetching one image feed each other instead of
all draining the first holder. Pure: records in, names out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from novacron.protocol.messages import MemberState, NodeRecord

from ..templates import parse_ref, template_of, version_key

MAX_LISTED = 64
"""The most templates a record lists as held (and as being fetched): the record
travels in every gossip exchange, so a host holding more lists its newest."""


@dataclass(frozen=True, slots=True)
class Holders:
    whole: tuple[str, ...]  # hosts that hold every file of the template
    partial: tuple[str, ...]  # hosts fetching it now: they hold some pieces


def holders(
    records: Mapping[str, NodeRecord],
    ref: str,
    me: str,
    states: Mapping[str, MemberState],
) -> Holders:
    """The alive peers that serve images and hold `ref` whole or in part."""
    whole, partial = [], []
    for node, record in sorted(records.items()):
        if node == me or record.image_port == 0 or states.get(node) is not MemberState.ALIVE:
            continue
        if ref in record.templates:
            whole.append(node)
        elif ref in record.fetching:
            partial.append(node)
    return Holders(tuple(whole), tuple(partial))


def lacking(
    target: NodeRecord | None, labels: Mapping[str, Mapping[str, str]]
) -> list[tuple[str, str]]:
    """(VM, template) for each VM (by its labels) made from a template the target does not
    hold whole: its disk's base would be missing there, so the target must fetch it first."""
    held = set(target.templates) if target is not None else set()
    return sorted(
        (vm, ref)
        for vm, vm_labels in labels.items()
        if (ref := template_of(vm_labels)) and ref not in held
    )


def newest_offered(records: Iterable[NodeRecord], name: str) -> str | None:
    """The newest version of template `name` any record lists as held whole, or None."""
    versions = set()
    for record in records:
        for ref in record.templates:
            held_name, _, version = ref.partition(":")
            if held_name == name and version:
                versions.add(version)
    valid = [v for v in versions if _is_version(name, v)]
    return max(valid, key=version_key) if valid else None


def _is_version(name: str, version: str) -> bool:
    try:
        parse_ref(f"{name}:{version}")
    except ValueError:
        return False
    return True


def listed(refs: Iterable[str]) -> tuple[str, ...]:
    """What a record lists: at most `MAX_LISTED` refs, the newest versions first kept."""
    unique = sorted(set(refs), key=_ref_order, reverse=True)
    return tuple(sorted(unique[:MAX_LISTED]))


def _ref_order(ref: str) -> tuple[tuple[int, ...], str]:
    name, _, version = ref.partition(":")
    try:
        return version_key(version), name
    except ValueError:
        return (), name


# --- which pieces a host holds, as it travels ---------------------------------------


def bitmap(pieces: Iterable[int], count: int) -> bytes:
    """Bit i of byte i // 8 (low bit first) set for each piece held, of `count`."""
    bits = bytearray(-(-count // 8))
    for i in pieces:
        if 0 <= i < count:
            bits[i // 8] |= 1 << (i % 8)
    return bytes(bits)


def pieces_of(bits: bytes, count: int) -> set[int]:
    """The pieces a bitmap names, ignoring bits past `count` (an untrusted bitmap)."""
    return {
        i
        for byte_index, byte in enumerate(bits[: -(-count // 8)])
        if byte
        for bit in range(8)
        if byte >> bit & 1 and (i := byte_index * 8 + bit) < count
    }
