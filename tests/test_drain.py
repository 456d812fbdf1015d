"""Draining a host (`agent/drain.py`) without a lab: the flag, the moves, the retries.

The migrator runs against a fake two-host view (tests/test_migrator.py), so
a drain's proposals are observed as sent messages; the real moves happen in
tests/test_vm_control_lab.py.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from novacron.agent import drain as drain_mod
from novacron.agent.drain import Drain
from novacron.protocol.messages import Message, MigrationPropose
from tests.test_migrator import migrator


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0.02)


async def test_a_drain_moves_running_vms_retries_failures_and_survives_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(drain_mod, "INTERVAL", 0.01)
    sent: list[tuple[str, Message]] = []
    driver = migrator(sent)
    published: list[bool] = []
    now = [100.0]
    state = tmp_path / "draining"

    def make() -> Drain:
        async def publish() -> None:
            published.append(drain.draining)

        drain = Drain(driver, state, publish=publish, clock=lambda: now[0])
        return drain

    drain = make()
    assert drain.status()["draining"] is False

    await drain.drain()
    await settle()
    assert state.exists() and published == [True]
    proposals = [m for d, m in sent if isinstance(m, MigrationPropose)]
    assert [(p.vm, p.target) for p in proposals] == [("vm1", "h2")]
    status = drain.status()
    assert status["moving"][0]["vm"] == "vm1" and status["moving"][0]["target"] == "h2"
    assert (status["running"], status["not_moved"], status["done"]) == (
        ["vm1"],
        {"off": "unknown"},
        False,
    )
    assert driver.migration(proposals[0].migration_id)["purpose"] == "drain"  # type: ignore[index]

    await driver.cancel(proposals[0].migration_id)
    await settle()
    blocked = drain.status()["blocked"]
    assert blocked == {
        "vm1": f"migration {proposals[0].migration_id} aborted: cancelled by operator"
    }
    assert len([m for _, m in sent if isinstance(m, MigrationPropose)]) == 1  # waits to retry
    now[0] += drain_mod.RETRY_AFTER + 1
    await settle()
    assert len([m for _, m in sent if isinstance(m, MigrationPropose)]) == 2

    await drain.close()  # the agent stops mid-drain ...
    again = make()  # ... and a new life resumes it from the flag file
    assert again.draining is True
    await again.undrain()
    assert not state.exists() and again.status()["draining"] is False
    assert published[-1] is False
    await driver.close()
