"""The target side of a migration: the phases of an arriving VM and the only moves between them.

The source's saga has its table (`saga.py`); this is the target's. The
target learns where a migration stands from its source (`MigrationProgress`
carries the libvirt job's phase, `MigrationCommit` ends it), so every move
here is triggered by a message, and a message that would move the VM back
out of post-copy, or move it at all once it landed, is refused: the guest's
memory is split once post-copy began, and no honest source reports pre-copy
again after that.

| phase      | precopy | switchover | postcopy | commit  |
|------------|---------|------------|----------|---------|
| reserved   | precopy | switchover | postcopy | landed  |
| precopy    | precopy | switchover | postcopy | landed  |
| switchover | precopy | switchover | postcopy | landed  |
| postcopy   | refused | refused    | postcopy | landed  |
| landed     | refused | refused    | refused  | refused |

`reserved`: room is held, no progress heard yet. `switchover` back to `precopy`
is allowed: the source's pause for the final copy is sampled from libvirt
and a sample may catch the guest running again. An abort, a revocation or an
expired lease ends the reservation from any phase (it leaves the book;
`reservations.py`), so those are not moves of this table.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Literal

from novacron.protocol.messages import JobPhase


class Inbound(StrEnum):
    """Where an arriving VM stands on its target."""

    RESERVED = "reserved"
    PRECOPY = "precopy"
    SWITCHOVER = "switchover"
    POSTCOPY = "postcopy"
    LANDED = "landed"


COMMIT: Literal["commit"] = "commit"
"""The trigger of a `MigrationCommit`: the VM runs here now."""

InboundTrigger = JobPhase | Literal["commit"]

_I, _J = Inbound, JobPhase
_BEFORE_POSTCOPY: Mapping[InboundTrigger, Inbound] = {
    _J.PRECOPY: _I.PRECOPY,
    _J.SWITCHOVER: _I.SWITCHOVER,
    _J.POSTCOPY: _I.POSTCOPY,
    COMMIT: _I.LANDED,
}
INBOUND_MOVES: Mapping[Inbound, Mapping[InboundTrigger, Inbound]] = {
    _I.RESERVED: _BEFORE_POSTCOPY,
    _I.PRECOPY: _BEFORE_POSTCOPY,
    _I.SWITCHOVER: _BEFORE_POSTCOPY,
    _I.POSTCOPY: {_J.POSTCOPY: _I.POSTCOPY, COMMIT: _I.LANDED},
    _I.LANDED: {},
}


def next_inbound(phase: Inbound, trigger: InboundTrigger) -> Inbound | None:
    """The phase `trigger` leads to from `phase`, or None if the table has no such move."""
    return INBOUND_MOVES[phase].get(trigger)
