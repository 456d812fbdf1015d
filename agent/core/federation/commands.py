"""Coordinator commands run at most once on the host that runs them, sans-IO.

The host that a command is pinned to keeps a ledger of the idempotency keys
it has seen. `admit` says whether a key may run: a new key may, and the
caller persists the `started` entry before it acts (so a crash after acting
cannot lead to a second run); a key that finished is answered with its
recorded outcome; a key that started and never finished (the agent died in
the middle) is answered as interrupted and is never run again, because the
ledger cannot know how far it got. The ledger forgets keys after `keep`
seconds once they finished (an unfinished key is kept: see `_forget`) and
holds at most `max_entries`, oldest forgotten first.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from novacron.protocol.sitelink import Outcome

KEEP = 30 * 86400.0  # seconds a key is remembered
MAX_ENTRIES = 10_000
INTERRUPTED = 500  # the status of a command whose run was cut short


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One line of the ledger: a key started at `at`, and how it ended (None: not yet)."""

    key: str
    at: float  # wall-clock seconds: the ledger outlives the agent's monotonic clock
    outcome: Outcome | None = None


class CommandLedger:
    """The keys this host has started, and their outcomes."""

    def __init__(
        self,
        entries: Iterable[LedgerEntry] = (),
        *,
        keep: float = KEEP,
        max_entries: int = MAX_ENTRIES,
    ) -> None:
        self._keep = keep
        self._max = max_entries
        self._entries: OrderedDict[str, LedgerEntry] = OrderedDict()
        for entry in entries:  # a later line about a key replaces an earlier one
            self._entries.pop(entry.key, None)
            self._entries[entry.key] = entry
        self._running: set[str] = set()  # keys started in this life of the agent

    def admit(self, key: str, now: float) -> Outcome | None:
        """None: `key` is new, persist `start(key)` and run it. Otherwise the answer to give."""
        self._forget(now)
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.outcome is not None:
            return entry.outcome
        if key in self._running:
            return Outcome(key, ok=False, status=409, detail="still running on this host")
        return Outcome(
            key,
            ok=False,
            status=INTERRUPTED,
            detail="interrupted: the agent stopped while running it; not run again "
            "(at most once): check the VM",
        )

    def start(self, key: str, now: float) -> LedgerEntry:
        """Note that `key` starts now; the caller persists the entry before acting."""
        entry = LedgerEntry(key, now)
        self._entries[key] = entry
        self._running.add(key)
        return entry

    def finish(self, outcome: Outcome, now: float) -> LedgerEntry:
        """Note how a key ended; the caller persists the entry."""
        entry = LedgerEntry(outcome.key, now, outcome)
        self._entries.pop(outcome.key, None)
        self._entries[outcome.key] = entry
        self._running.discard(outcome.key)
        return entry

    def entries(self) -> list[LedgerEntry]:
        """What to persist when the ledger is rewritten (oldest first)."""
        return list(self._entries.values())

    def _forget(self, now: float) -> None:
        """Forget finished keys older than `keep`, and the oldest beyond `max_entries`.

        A key that started and never finished is kept whatever its age (only
        the cap removes it): the coordinator may redeliver its command for as
        long as no outcome reached it, and forgetting the key would let it run.
        """
        for key, entry in list(self._entries.items()):  # oldest first
            if key in self._running:
                continue
            if len(self._entries) > self._max or (
                entry.outcome is not None and now - entry.at > self._keep
            ):
                del self._entries[key]
            elif now - entry.at <= self._keep:
                return  # the rest are younger
