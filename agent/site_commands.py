"""Coordinator commands on the host they are pinned to: ledger, relay, at most once.

The gateway hands each command (pinned, its pin acknowledged) to `run`. A
command pinned to this host runs here; one pinned to another host is relayed
over the mesh (`SiteCommandRelay`, authenticated like every mesh message)
and that host answers with its outcome. The receiving host obeys only the
member it sees as the site's gateway, and runs only what the coordinator
signed for it (`CoordinatorTrust`: the gateway relays, it does not command;
a host with no coordinator configured runs nothing from the site link).
Before a command runs, its key goes
into the ledger file with an fsync, so no crash can make it run twice
(`core/federation/commands.py`); a key seen again is answered from the ledger, and a
relay repeated while the command still runs waits for the same run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from novacron.protocol import codec
from novacron.protocol.errors import ProtocolError
from novacron.protocol.messages import MemberState, Message, SiteCommandRelay, SiteCommandResult
from novacron.protocol.operators import CommandRefused
from novacron.protocol.sitelink import Command, Outcome

from .core.federation.commands import CommandLedger, LedgerEntry
from .site_controls import SiteControls
from .tasks import cancel_and_wait

if TYPE_CHECKING:  # `cryptography` is loaded only by an agent that has a coordinator
    from novacron.protocol.coordinator_commands import CoordinatorTrust

log = logging.getLogger("novacron.site_commands")

RELAY_TIMEOUT = 60.0  # seconds a relayed command may run before the gateway asks again
MAX_LEDGER_LINES = 20_000  # the file is rewritten (compacted) beyond this

Send = Callable[[str, Message], Awaitable[None]]


class SiteCommands:
    def __init__(
        self,
        controls: SiteControls,
        ledger_file: Path,
        *,
        send: Send,
        gateway: Callable[[], str | None],
        member_state: Callable[[str], MemberState | None],
        trust: CoordinatorTrust | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.node_id = controls.node_id
        self._controls = controls
        self._file = ledger_file
        self._send = send
        self._gateway = gateway  # the site's gateway in this host's view
        self._member_state = member_state
        self._trust = trust  # None: no coordinator configured, every command is refused
        self.refused = 0  # commands refused for want of the coordinator's authority
        self._clock = clock
        entries = _read(ledger_file)
        self._lines = len(entries)  # lines in the file (compacted beyond MAX_LEDGER_LINES)
        self.ledger = CommandLedger(entries)
        self._running: dict[str, asyncio.Task[Outcome]] = {}  # key -> its run here
        self._pending: dict[str, tuple[str, asyncio.Future[Outcome]]] = {}  # relays awaited
        self._tasks: set[asyncio.Task[None]] = set()

    # --- the gateway's side ------------------------------------------------------------

    async def run(self, command: Command) -> Outcome:
        """Run `command` on its pinned host (here, or relayed) and return how it ended."""
        if command.host == self.node_id:
            return await self.run_here(command)
        frame = codec.pack_struct(command)
        while True:
            state = self._member_state(command.host)
            if state not in (MemberState.ALIVE, MemberState.SUSPECT):
                return Outcome(
                    command.key,
                    ok=False,
                    host=command.host,
                    status=503,
                    detail=f"host {command.host} is {state.value if state else 'unknown'}: "
                    "the command may or may not have run there; check before retrying",
                )
            import uuid  # only when relaying: uuid loads platform and libuuid into every agent

            request_id = str(uuid.uuid4())
            future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
            self._pending[request_id] = (command.host, future)
            try:
                await self._send(command.host, SiteCommandRelay(request_id, frame))
                return await asyncio.wait_for(future, RELAY_TIMEOUT + command.stop_timeout)
            except TimeoutError:
                log.warning(
                    "no answer to a relayed command; asking again",
                    extra={"fields": {"key": command.key, "host": command.host}},
                )
            finally:
                self._pending.pop(request_id, None)

    # --- the pinned host's side -----------------------------------------------------------

    async def run_here(self, command: Command) -> Outcome:
        """Run `command` on this host at most once (see the module docstring)."""
        running = self._running.get(command.key)
        known = self.ledger.admit(command.key, self._clock()) if running is None else None
        # A key already run here is answered from the ledger whatever its age: a
        # redelivery never runs it again, so only a new key must be fresh.
        why = self._refusal(command, fresh=running is None and known is None)
        if why is not None:
            self.refused += 1
            log.warning(
                "site command refused",
                extra={"fields": {"key": command.key, "kind": command.kind.value, "why": why}},
            )
            return Outcome(command.key, False, self.node_id, 403, f"refused: {why}")
        if running is not None:
            return await asyncio.shield(running)
        if known is not None:
            return known
        self._append(self.ledger.start(command.key, self._clock()))  # persisted before acting
        task = asyncio.create_task(self._controls.execute(command), name=f"command:{command.key}")
        self._running[command.key] = task
        try:
            outcome = await asyncio.shield(task)
        except Exception as exc:  # a control that raised instead of refusing
            log.error("site command failed", exc_info=True, extra={"fields": {"key": command.key}})
            outcome = Outcome(command.key, False, self.node_id, 500, f"failed: {exc}")
        finally:
            self._running.pop(command.key, None)
        self._append(self.ledger.finish(outcome, self._clock()))
        log.info(
            "site command done",
            extra={"fields": {"key": command.key, "kind": command.kind.value, "ok": outcome.ok}},
        )
        return outcome

    def _refusal(self, command: Command, *, fresh: bool) -> str | None:
        """Why `command` lacks the coordinator's authority here (None: it has it)."""
        if self._trust is None:
            return (
                f"{self.node_id} has no coordinator configured (coordinator, coordinator_ca), "
                "so it obeys no coordinator command"
            )
        try:
            self._trust.verify(command, self.node_id, self._clock(), fresh=fresh)
        except CommandRefused as exc:
            return str(exc)
        return None

    @staticmethod
    def handles(message: Message) -> bool:
        return isinstance(message, SiteCommandRelay | SiteCommandResult)

    async def receive(self, sender: str, message: Message) -> None:
        if isinstance(message, SiteCommandResult):
            self._settle(sender, message)
        elif isinstance(message, SiteCommandRelay):
            task = asyncio.create_task(self._answer(sender, message), name="site-command")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        await cancel_and_wait(self._tasks)
        for _, future in self._pending.values():
            future.cancel()

    async def _answer(self, sender: str, relay: SiteCommandRelay) -> None:
        outcome = await self._relayed(sender, relay)
        await self._send(sender, SiteCommandResult(relay.request_id, codec.pack_struct(outcome)))

    async def _relayed(self, sender: str, relay: SiteCommandRelay) -> Outcome:
        try:
            command = codec.unpack_struct(Command, relay.command)
        except ProtocolError as exc:
            return Outcome("", False, self.node_id, 400, f"malformed command: {exc}")
        gateway = self._gateway()
        if sender != gateway:
            why = f"{sender} is not the site's gateway in {self.node_id}'s view ({gateway})"
            log.warning("site command refused", extra={"fields": {"from": sender, "why": why}})
            return Outcome(command.key, False, self.node_id, 403, why)
        if command.host != self.node_id:
            return Outcome(command.key, False, self.node_id, 400, f"pinned to {command.host}")
        return await self.run_here(command)

    def _settle(self, sender: str, result: SiteCommandResult) -> None:
        pending = self._pending.get(result.request_id)
        if pending is None or pending[0] != sender or pending[1].done():
            return
        try:
            outcome = codec.unpack_struct(Outcome, result.outcome)
        except ProtocolError as exc:
            outcome = Outcome("", False, sender, 502, f"malformed answer from {sender}: {exc}")
        pending[1].set_result(outcome)

    # --- the ledger file ------------------------------------------------------------------

    def _append(self, entry: LedgerEntry) -> None:
        """One line, flushed to disk before the caller goes on."""
        self._file.parent.mkdir(parents=True, exist_ok=True)
        if self._lines >= MAX_LEDGER_LINES:
            self._rewrite()
        with open(self._file, "a", encoding="utf-8") as out:
            out.write(json.dumps(_entry_json(entry)) + "\n")
            out.flush()
            os.fsync(out.fileno())
        self._lines += 1

    def _rewrite(self) -> None:
        temporary = self._file.with_suffix(".tmp")
        with open(temporary, "w", encoding="utf-8") as out:
            for entry in self.ledger.entries():
                out.write(json.dumps(_entry_json(entry)) + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, self._file)
        self._lines = len(self.ledger.entries())


def _entry_json(entry: LedgerEntry) -> dict[str, Any]:
    outcome = None
    if entry.outcome is not None:
        outcome = codec.pack_struct(entry.outcome).hex()
    return {"key": entry.key, "at": entry.at, "outcome": outcome}


def _read(path: Path) -> list[LedgerEntry]:
    """The ledger's lines; a torn last line (a crash mid-write) is skipped."""
    entries = []
    with contextlib.suppress(FileNotFoundError):
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                raw = json.loads(line)
                outcome = None
                if raw.get("outcome"):
                    outcome = codec.unpack_struct(Outcome, bytes.fromhex(raw["outcome"]))
                entries.append(LedgerEntry(str(raw["key"]), float(raw["at"]), outcome))
            except (ValueError, KeyError, TypeError, ProtocolError):
                log.warning("unreadable ledger line skipped", extra={"fields": {"file": str(path)}})
    return entries
