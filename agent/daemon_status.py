"""What the daemon tells of itself: its identity, libvirt, transport, observability, templates.

Typed values the daemon builds and the local API sends (`to_json`): the
daemon's half of `nova status` (`view.MeshStatus` carries it), and what a
reload or a new revocation list answers. Their own module, so that `view`
(which the daemon imports) can name them without importing the daemon.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from novacron.protocol.certificates import format_time

from .core.events import Event

if TYPE_CHECKING:  # the daemon's parts whose status this carries; only their types are needed
    from .event_stream import StreamStatus
    from .gateway import SiteLinkStatus
    from .introduction import IntroductionStats
    from .otlp import ExporterStatus
    from .transport import TransportStats


@dataclass(frozen=True, slots=True)
class CertificateStatus:
    """This node's certificate: which one, and how long it has left."""

    serial: int
    not_after: float  # unix seconds
    expires_in_s: float  # seconds left when asked (negative: expired)
    expiring: bool  # close enough to its end to warn (renew it)

    def to_json(self) -> dict[str, Any]:
        return {
            "serial": self.serial,
            "not_after": format_time(self.not_after),
            "expires_in_s": round(self.expires_in_s),
            "expiring": self.expiring,
        }


@dataclass(frozen=True, slots=True)
class RevocationsPublished:
    """What an operator's revocation list did here (`nova ca revoke` pushes it)."""

    adopted: bool  # newer than the list this host held
    issued_at: float  # the list this host holds now (unix seconds)
    revoked_members: tuple[str, ...]  # members expelled by it, sorted

    def to_json(self) -> dict[str, Any]:
        return {
            "adopted": self.adopted,
            "issued_at": format_time(self.issued_at),
            "revoked_members": list(self.revoked_members),
        }


@dataclass(frozen=True, slots=True)
class TemplatesStatus:
    """This host's template store and image service."""

    dir: str
    image_port: int
    served_pieces: int  # pieces served to other hosts since start
    served_bytes: int
    pulls_running: tuple[str, ...]  # pull ids fetching now
    asks_waiting: int  # asks from members whose records have not arrived yet

    def to_json(self) -> dict[str, Any]:
        return {
            "dir": self.dir,
            "image_port": self.image_port,
            "served_pieces": self.served_pieces,
            "served_bytes": self.served_bytes,
            "pulls_running": list(self.pulls_running),
            "asks_waiting": self.asks_waiting,
        }


@dataclass(frozen=True, slots=True)
class RecentEvent:
    """A membership event as `nova status` lists it: what happened, and when."""

    event: Event  # the core's event (never a `RecordUpdated`: too frequent to list)
    at: float  # unix seconds when the daemon heard of it

    def to_json(self) -> dict[str, Any]:
        return {
            "event": type(self.event).__name__,
            "at": round(self.at, 3),
            **event_fields(self.event),
        }


def event_fields(event: Event) -> dict[str, Any]:
    """A membership event's fields as its log line and `nova status` show them (without a
    record: it is large, and a host's own view tells it)."""
    return {k: v for k, v in dataclasses.asdict(event).items() if k != "record"}


@dataclass(frozen=True, slots=True)
class DaemonStatus:
    """The daemon's facts in `nova status`, beside the membership core's."""

    certificate: CertificateStatus
    revocations_issued_at: float  # the revocation list held (0: none)
    revoked_members: tuple[str, ...]  # sorted
    identity_clashes: Mapping[str, list[str]]  # node id -> the addresses it speaks from
    uptime_s: float
    libvirt_uri: str
    libvirt_connected: bool
    libvirt_warning: str | None
    domain_type: str | None  # kvm or qemu; None until the hypervisor has decided
    domain_type_reason: str  # why that type, or why none yet
    transport: TransportStats  # a copy: the live counters go on
    handling_failures: int
    introductions: IntroductionStats
    refusals: Mapping[str, int]  # peer refusals by kind
    last_refusal: str | None  # the last certificate refusal's reason
    recent_events: tuple[RecentEvent, ...]  # membership events, oldest first
    site_link: SiteLinkStatus | None  # None without a coordinator
    site_commands_refused: int
    event_stream: StreamStatus | None  # None without an event stream
    tracing: ExporterStatus | None  # None without traces
    templates: TemplatesStatus

    def to_json(self) -> dict[str, Any]:
        issued_at = self.revocations_issued_at
        stream, tracing, link = self.event_stream, self.tracing, self.site_link
        return {
            "certificate": self.certificate.to_json(),
            "revocations_issued_at": format_time(issued_at) if issued_at else None,
            "revoked_members": list(self.revoked_members),
            "identity_clashes": dict(self.identity_clashes),
            "uptime_s": round(self.uptime_s, 1),
            "libvirt_uri": self.libvirt_uri,
            "libvirt_connected": self.libvirt_connected,
            "libvirt_warning": self.libvirt_warning,
            "domain_type": self.domain_type,
            "domain_type_reason": self.domain_type_reason,
            "transport": dataclasses.asdict(self.transport),
            "handling_failures": self.handling_failures,
            "introductions": self.introductions.to_json(),
            "refusals": dict(self.refusals),
            "last_refusal": self.last_refusal,
            "recent_events": [event.to_json() for event in self.recent_events],
            "site_link": link.to_json() if link is not None else None,
            "site_commands_refused": self.site_commands_refused,
            "event_stream": stream.to_json() if stream is not None else None,
            "tracing": tracing.to_json() if tracing is not None else None,
            "templates": self.templates.to_json(),
        }
