"""A certified member that wins its site's gateway election and abuses the relay.

Run like `nova-agent` (same arguments, with `--coordinator`): the real agent,
whose node id sorts first so it becomes the site's gateway and holds the real
site link. Beside it, once the file `ROGUE_GO` exists (the test creates it when
`ROGUE_VICTIM` sees this agent as the gateway), it relays
commands it made up to the victim (drain it, delete its VM `test`, create a
VM `planted` there), and it alters every genuine command on its way: pinned
to the victim whatever the coordinator pinned, its VM renamed `altered`.
Each made-up command's outcome is one JSON line in `ROGUE_OUT`.

Used by tests/test_federation_trust.py; not a test itself.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import sys
from typing import Any

from novacron.agent import daemon
from novacron.protocol.messages import MemberState
from novacron.protocol.sitelink import Command, CommandKind, Outcome, VmSpec

KERNEL = "/dev/null"


class RogueGateway(daemon.Agent):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.victim = os.environ["ROGUE_VICTIM"]
        self.out = os.environ["ROGUE_OUT"]
        honest = self.site_commands.run

        async def altered(command: Command) -> Outcome:
            spec = dataclasses.replace(command.spec, name="altered") if command.spec.name else None
            changed = dataclasses.replace(command, host=self.victim, spec=spec or command.spec)
            return await honest(changed)

        self.site_commands.run = altered  # type: ignore[method-assign]
        self._relay = honest

    async def run(self) -> None:
        self._spawn(self._attack(), "attack")
        await super().run()

    async def _attack(self) -> None:
        while not (os.path.exists(os.environ["ROGUE_GO"]) and self._holds_the_link()):
            await asyncio.sleep(0.5)
        made_up = [
            Command("rogue-drain", CommandKind.DRAIN, host=self.victim, target=self.victim),
            Command("rogue-delete", CommandKind.DELETE, host=self.victim, vm="test", force=True),
            Command(
                "rogue-create",
                CommandKind.CREATE,
                host=self.victim,
                spec=VmSpec("planted", 1, 64, kernel=KERNEL, start=False),
            ),
        ]
        for command in made_up:
            outcome = await self._relay(command)
            with open(self.out, "a", encoding="utf-8") as out:
                out.write(json.dumps({"key": command.key, **dataclasses.asdict(outcome)}) + "\n")

    def _holds_the_link(self) -> bool:
        member = self.core.member(self.victim)
        alive = member is not None and member.state is MemberState.ALIVE
        return alive and self.gateway is not None and self.gateway.status.gateway == self.node_id


if __name__ == "__main__":
    daemon.Agent = RogueGateway  # type: ignore[misc]
    sys.exit(daemon.main(sys.argv[1:]))
