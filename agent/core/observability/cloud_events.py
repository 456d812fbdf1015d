"""The agent's events as CloudEvents 1.0: one catalogue of types, one shape.

Every state change a host knows first-hand becomes one CloudEvents 1.0 JSON
event: its membership view (a member joined, was suspected, failed, came back,
left, was expelled), its VMs' lifecycle through the API, and the migrations it
sends or receives. `type` is `io.novacron.<noun>.<verb>` as the coordinator's
events are; `subject` is what it is about (a node id, a VM, a migration id);
`source` is the host (`/novacron/host/<node id>`); `data` holds the event's own
fields. The catalogue (`TYPES`) is the contract consumers filter on, and the
README lists it; an event class not in it is not streamed (records refreshed
every few seconds and the frequent progress samples are told by metrics).

`id` is made by the caller and kept with the event until a sink has it, so a
retried delivery carries the same id and a sink that deduplicates by id (NATS
JetStream's `Nats-Msg-Id`) stores it once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from .. import events as ev

CloudEvent = dict[str, Any]
SPEC_VERSION = "1.0"
PREFIX = "io.novacron."


def _subject_node(event: Any) -> str:
    return str(event.node_id)


def _subject_migration(event: Any) -> str:
    return str(event.migration_id or event.vm)


# Event class -> (type after the prefix, what its subject is). A type's name never changes.
TYPES: dict[type, tuple[str, Callable[[Any], str]]] = {
    ev.MemberJoined: ("member.joined", _subject_node),
    ev.MemberAlive: ("member.alive", _subject_node),
    ev.MemberSuspected: ("member.suspected", _subject_node),
    ev.MemberFailed: ("member.failed", _subject_node),
    ev.MemberLeft: ("member.left", _subject_node),
    ev.MemberRevoked: ("member.revoked", _subject_node),
    ev.IdentityClash: ("member.identity-clash", _subject_node),
    ev.MigrationRefused: ("migration.refused", _subject_migration),
    ev.MigrationProgressed: ("migration.progressed", _subject_migration),
    ev.MigrationProposed: ("migration.started", _subject_migration),
    ev.MigrationAccepted: ("migration.accepted", _subject_migration),
    ev.MigrationEscalated: ("migration.escalated", _subject_migration),
    ev.MigrationInDoubt: ("migration.in-doubt", _subject_migration),
    ev.MigrationUndecided: ("migration.undecided", _subject_migration),
    ev.MigrationCompleted: ("migration.completed", _subject_migration),
    ev.MigrationFailed: ("migration.failed", _subject_migration),
    ev.ReservationMade: ("migration.reserved", _subject_migration),
    ev.ReservationRefused: ("migration.reservation-refused", _subject_migration),
    ev.ReservationReleased: ("migration.reservation-released", _subject_migration),
}


@dataclasses.dataclass(frozen=True, slots=True)
class VmChanged:
    """A VM's lifecycle step done through this host's API (`verb`: created, started,
    stopped, deleted), with what the API answered."""

    vm: str
    verb: str
    detail: dict[str, Any]


VM_VERBS = ("created", "started", "stopped", "deleted")


@dataclasses.dataclass(frozen=True, slots=True)
class RebalanceMoved:
    """The rebalancer started a move: one VM, or an affinity group's VMs together."""

    vms: tuple[str, ...]
    source: str
    target: str
    reason: str  # the planner's: what the move gains
    migration_ids: tuple[str, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class RebalanceRefused:
    """A move the rebalancer planned was refused when it was to start."""

    vms: tuple[str, ...]
    target: str
    reason: str


@dataclasses.dataclass(frozen=True, slots=True)
class DrainChanged:
    """This host began (`verb` started) or ended (ended) a drain."""

    node_id: str
    verb: str


def _subject_vms(event: Any) -> str:
    return "+".join(event.vms)


HOST_EVENTS: dict[type, tuple[str, Callable[[Any], str]]] = {
    RebalanceMoved: ("rebalance.moved", _subject_vms),
    RebalanceRefused: ("rebalance.refused", _subject_vms),
}
DRAIN_VERBS = ("started", "ended")


def type_of(event: object) -> str | None:
    """The CloudEvents type of a domain event, or None for one that is not streamed."""
    if isinstance(event, VmChanged):
        return PREFIX + "vm." + event.verb if event.verb in VM_VERBS else None
    if isinstance(event, DrainChanged):
        return PREFIX + "drain." + event.verb if event.verb in DRAIN_VERBS else None
    entry = _entry(event)
    return PREFIX + entry[0] if entry else None


def _entry(event: object) -> tuple[str, Callable[[Any], str]] | None:
    return TYPES.get(type(event)) or HOST_EVENTS.get(type(event))


def catalogue() -> list[str]:
    """Every type the agent streams, sorted (the README's list)."""
    names = [name for name, _ in (*TYPES.values(), *HOST_EVENTS.values())]
    names += [f"vm.{verb}" for verb in VM_VERBS] + [f"drain.{verb}" for verb in DRAIN_VERBS]
    return sorted(PREFIX + name for name in names)


def cloud_event(event: object, *, source_node: str, event_id: str, at: float) -> CloudEvent | None:
    """`event` as a CloudEvents 1.0 JSON object, or None when it is not streamed.

    `at` is the wall-clock time it happened (Unix seconds).
    """
    kind = type_of(event)
    if kind is None:
        return None
    entry = _entry(event)
    if isinstance(event, VmChanged):
        subject, data = event.vm, {"vm": event.vm, **event.detail}
    elif isinstance(event, DrainChanged):
        subject, data = event.node_id, {"node_id": event.node_id}
    else:
        assert entry is not None  # type_of found it
        subject, data = entry[1](event), _data(event)
    return {
        "specversion": SPEC_VERSION,
        "id": event_id,
        "source": f"/novacron/host/{source_node}",
        "type": kind,
        "subject": subject,
        "time": datetime.fromtimestamp(at, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z"),
        "datacontenttype": "application/json",
        "data": data,
    }


def _data(event: object) -> dict[str, Any]:
    """The event's own fields as JSON values (enums by value, tuples as lists)."""
    out: dict[str, Any] = {}
    for item in dataclasses.fields(event):  # type: ignore[arg-type]
        value = getattr(event, item.name)
        if hasattr(value, "value") and not isinstance(value, int | float | str | bool):
            value = value.value
        elif isinstance(value, tuple):
            value = list(value)
        out[item.name] = value
    return out
