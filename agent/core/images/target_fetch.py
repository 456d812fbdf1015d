"""A migration waiting for its target to fetch the VM's template, sans-IO.

A migration to a host that lacks the VM's template is refused, and the target
is asked to fetch it from its peers; the refusal carries the facts beside its
reason (`refusal_details`). A caller that wants the VM moved anyway (`nova vm
migrate`, a coordinator's migrate command) follows the target's gossiped
record until it holds the template whole, then asks again with that host as
the target. It gives up once the target has been neither fetching nor holding
it for `FETCH_QUIET` seconds: no peer may hold it whole. Both callers decide
with this module, so they wait and give up alike; each reads the record and
sleeps its own way.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from enum import Enum

TEMPLATE_ASKS = 3  # a target that loses the template again after fetching it is asked anew
TEMPLATE_LOOK = 1.0  # seconds between looks at the target's record while it fetches
FETCH_QUIET = 30.0  # seconds a target neither fetching nor holding the template is given up


@dataclass(frozen=True, slots=True)
class AwaitedFetch:
    """The target a migration waits for, and the template it fetches."""

    host: str
    ref: str  # NAME:VERSION


def refusal_details(host: str, ref: str, fetching: bool) -> dict[str, object]:
    """The facts of a refusal for want of template `ref` on `host`; `fetching`: whether
    `host` was asked to fetch it (else no wait can end it)."""
    return {"lacking_template": ref, "host": host, "fetching": fetching}


def awaited_fetch(details: Mapping[str, object]) -> AwaitedFetch | None:
    """The fetch a refusal's details say the migration can wait for; None for any other
    refusal, and for a target that could not be asked to fetch."""
    ref, host = details.get("lacking_template"), details.get("host")
    if isinstance(ref, str) and isinstance(host, str) and details.get("fetching"):
        return AwaitedFetch(host, ref)
    return None


class FetchState(Enum):
    HELD = "held"  # the target holds the template whole: ask again
    WAITING = "waiting"  # it fetches, or went quiet only a short while ago
    QUIET = "quiet"  # neither fetching nor holding it for too long: give up


class FetchWatch:
    """One target's fetch, as its records show it over time."""

    def __init__(self, awaited: AwaitedFetch, now: float, quiet: float = FETCH_QUIET) -> None:
        self.awaited = awaited
        self.started = now
        self._quiet = quiet
        self._last_seen = now  # the last time the target was seen fetching (or the start)

    def look(self, templates: Collection[str], fetching: Collection[str], now: float) -> FetchState:
        """What the target's record (the templates it holds whole and those it fetches)
        says at `now`."""
        ref = self.awaited.ref
        if ref in templates:
            return FetchState.HELD
        if ref in fetching:
            self._last_seen = now
        elif now - self._last_seen > self._quiet:
            return FetchState.QUIET
        return FetchState.WAITING

    def gave_up(self) -> str:
        """Why the wait ended without the template: what a caller reports."""
        host, ref = self.awaited.host, self.awaited.ref
        return (
            f"{host} lacks template {ref} and has not been fetching it for "
            f"{self._quiet:.0f} s: no peer may hold it whole (see 'nova host show {host}' "
            "and that host's agent log; 'nova template pull' on it says why)"
        )
