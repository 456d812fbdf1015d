"""Why a control will not act, as the domain says it: a kind of refusal and a sentence.

Domain code (the core's answers, the agent's controls) names what kind of
refusal it makes; it never names a protocol's status code. The local API alone
turns a kind into an HTTP status (`api.HTTP_STATUS`, one table), and the site
link's outcomes take theirs from that same table.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum


class RefusalKind(StrEnum):
    """What kind of refusal: what the caller can do about it."""

    INVALID = "invalid"  # the request is malformed or contradicts itself: fix the request
    UNKNOWN = "unknown"  # it names a VM, host or migration this agent does not know
    FORBIDDEN = "forbidden"  # the caller may not ask this (no, or a refused, operator command)
    CONFLICT = "conflict"  # the state of things forbids it now (draining, migrating, no room)
    UNAVAILABLE = "unavailable"  # a service this host needs does not answer (its libvirt)
    NO_ANSWER = "no-answer"  # a peer that was asked did not answer in time


class Refused(Exception):
    """A control will not do what was asked: `kind` says what kind of refusal, the message why.

    Nothing changed when it is raised.
    """

    def __init__(
        self, kind: RefusalKind, reason: str, details: Mapping[str, object] | None = None
    ) -> None:
        super().__init__(reason)
        self.kind = kind
        # Facts a caller can act on without parsing the sentence (plain JSON values).
        self.details: dict[str, object] = dict(details or {})
