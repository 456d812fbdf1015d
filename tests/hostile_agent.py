"""A certified member that lies about migrations and VMs: a real `nova-agent`, plus an attack.

Run like `nova-agent` (same arguments), inside a lab host: it joins the mesh with
the product's own code over real CurveZMQ sockets, and then, as
`HOSTILE_MODE` says:

- `reserve`: proposes VMs that never come to `HOSTILE_VICTIM` (`HOSTILE_COUNT`
  at a time, `HOSTILE_MIB` each) and keeps renewing every proposal with
  progress messages, to hold the victim's inbound slots and memory;
- `claim`: lists in its own signed record every VM the victim's record lists,
  as running here (a host claiming another host's VMs);
- both, given as `reserve,claim`.

Used by tests/test_admission_lab.py; not a test itself.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sys
from typing import Any

from novacron.agent import daemon
from novacron.protocol.messages import MemberState, MigrationProgress, MigrationPropose, VmSummary

RENEW_EVERY = 2.0  # seconds between rounds of proposals and renewals


class HostileAgent(daemon.Agent):
    """The real agent, with one of the attacks above running beside it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.victim = os.environ["HOSTILE_VICTIM"]
        self.modes = set(os.environ.get("HOSTILE_MODE", "reserve").split(","))
        self.ghosts: set[str] = set()  # ids of the proposals she made up
        honest = self.migrator.receive

        async def receive(sender: str, message: Any) -> None:
            # Her own agent would answer an Accept of a made-up id with an Abort: silence it.
            if getattr(message, "migration_id", None) not in self.ghosts:
                await honest(sender, message)

        self.migrator.receive = receive  # type: ignore[method-assign]
        if "claim" in self.modes:
            listed = self.inventory.vms

            async def vms() -> tuple[VmSummary, ...]:
                return (*await listed(), *self._stolen())

            self.inventory.vms = vms  # type: ignore[method-assign]

    def _stolen(self) -> tuple[VmSummary, ...]:
        record = self.core.records().get(self.victim)
        if record is None:
            return ()
        return tuple(dataclasses.replace(vm, state="running") for vm in record.vms)

    async def run(self) -> None:
        if "reserve" in self.modes:
            self._spawn(self._hold_reservations(), "attack")
        await super().run()

    async def _hold_reservations(self) -> None:
        count = int(os.environ.get("HOSTILE_COUNT", "2"))
        memory = int(os.environ.get("HOSTILE_MIB", "150"))
        proposed: list[str] = []
        round_ = 0
        while True:
            await asyncio.sleep(RENEW_EVERY)
            member = self.core.member(self.victim)
            if member is None or member.state is not MemberState.ALIVE:
                continue
            round_ += 1
            for i in range(count):
                mid = f"{round_:08x}{i:08x}"
                proposed.append(mid)
                self.ghosts.add(mid)
                propose = MigrationPropose(
                    mid, f"ghost-{round_}-{i}", self.node_id, self.victim, 1, memory
                )
                await self._send(self.victim, propose)
            for mid in proposed[-50:]:  # "still migrating": renew every lease
                await self._send(self.victim, MigrationProgress(mid, percent=1.0))


if __name__ == "__main__":
    daemon.Agent = HostileAgent  # type: ignore[misc]
    sys.exit(daemon.main(sys.argv[1:]))
