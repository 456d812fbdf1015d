"""The agent's views and rebalancing answers are typed inside the agent and JSON at the API.

Each test builds a typed answer, checks its fields, and checks that what the
API sends is byte for byte what the agent sent when these answers were dicts:
the same keys, in the same order, with the same values.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from novacron.agent.api import build_router
from novacron.agent.core.rebalancing.planner import Decision, Move
from novacron.agent.httpd import HttpServer
from novacron.agent.rebalancer import MoveRow, RebalancePlan, RebalanceStatus, StartedMove
from novacron.protocol.messages import RebalanceSetting
from tests.api_server import View, answers, exchange

WALL = 1_700_000_000.123456


async def _served(tmp_path: Path, view: Any = None, **controls: Any) -> tuple[str, HttpServer]:
    server = HttpServer(build_router(view if view is not None else View(), **controls))
    sock = str(tmp_path / "api.sock")
    await server.start_unix(sock)
    return sock, server


async def _raw(sock: str, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
    """(status, body bytes) of one request, as the API's socket answers it."""
    head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
    ((status, _, answer),) = answers(await asyncio.to_thread(exchange, sock, head.encode() + body))
    return status, answer


def _bytes(old: object) -> bytes:
    """What the API sent for `old`, the dict an answer was before it was typed."""
    return json.dumps(old).encode()


# --- rebalancing ------------------------------------------------------------------------------

HOT = "h1 at 0.75 > mean 0.25 + 0.15"
FIRST = Move("vm0", "h1", "h2", 0.123456789, 2048.04, f"{HOT}: affinity group web", ("vm1",))
SECOND = Move("vm2", "h1", "h3", 0.05, 512.0, HOT)
STOPPED = Decision(None, "balanced: 0.25 within 0.15 of mean 0.25", 0.250000001, 0.2500004)
MOVED = Decision(SECOND, HOT, 0.74999999, 0.25)

FIRST_JSON = {  # `dataclasses.asdict` of the planner's move, as it was sent
    "vm": "vm0",
    "source": "h1",
    "target": "h2",
    "benefit": 0.123456789,
    "cost": 2048.04,
    "reason": f"{HOT}: affinity group web",
    "group": ["vm1"],
    "rejoin": False,
}
SECOND_JSON = {
    "vm": "vm2",
    "source": "h1",
    "target": "h3",
    "benefit": 0.05,
    "cost": 512.0,
    "reason": HOT,
    "group": [],
    "rejoin": False,
}
STOPPED_JSON = {  # `_decision_dict` as it was
    "move": None,
    "reason": "balanced: 0.25 within 0.15 of mean 0.25",
    "utilization": 0.25,
    "mean": 0.25,
}

STARTED = StartedMove("m1", "vm0", "h1", "h2", FIRST.reason, FIRST.benefit, FIRST.cost, WALL)
STARTED_JSON = {  # what `Rebalancer.round` kept, rounded as it was kept
    "migration_id": "m1",
    "vm": "vm0",
    "source": "h1",
    "target": "h2",
    "reason": f"{HOT}: affinity group web",
    "benefit": 0.123457,
    "cost_mib": 2048.0,
    "wall_time": 1_700_000_000.123,
}
STATUS = RebalanceStatus(
    "h1",
    True,
    RebalanceSetting(paused=True, since=WALL),
    STOPPED,
    (MoveRow(STARTED, "aborted", "cancelled by the operator"), MoveRow(STARTED, "running", "")),
)
STATUS_JSON = {  # as `Rebalancer.status` wrote it when it was a dict
    "node_id": "h1",
    "enabled": True,
    "paused": True,
    "setting": "paused@1700000000.123",
    "last_decision": STOPPED_JSON,
    "moves": [
        {**STARTED_JSON, "outcome": "aborted", "outcome_reason": "cancelled by the operator"},
        {**STARTED_JSON, "outcome": "running", "outcome_reason": ""},
    ],
}


def test_a_rebalance_status_is_typed_and_its_json_is_the_old_dict() -> None:
    assert STATUS.paused and STATUS.setting.since == WALL
    assert STATUS.last_decision is STOPPED
    assert [(row.move.vm, row.outcome) for row in STATUS.moves] == [
        ("vm0", "aborted"),
        ("vm0", "running"),
    ]
    assert STARTED.benefit == 0.123456789  # exact inside; rounded only in its JSON
    assert json.dumps(STARTED.to_json()) == json.dumps(STARTED_JSON)
    assert json.dumps(STATUS.to_json()) == json.dumps(STATUS_JSON)
    fresh = RebalanceStatus("h1", False, RebalanceSetting(), None)
    assert json.dumps(fresh.to_json()) == json.dumps(
        {
            "node_id": "h1",
            "enabled": False,
            "paused": False,
            "setting": "active@0.000",
            "last_decision": None,
            "moves": [],
        }
    )


def test_a_plan_with_moves_is_explained_by_its_first_move() -> None:
    plan = RebalancePlan(MOVED, (FIRST, SECOND))
    assert (plan.move, plan.reason) == (FIRST, FIRST.reason)
    assert plan.decision.utilization == 0.74999999
    # `preview` wrote the last decision, its moves, then the first move over the decision's.
    before = {"move": SECOND_JSON, "reason": HOT, "utilization": 0.75, "mean": 0.25}
    before["moves"] = [FIRST_JSON, SECOND_JSON]
    before["move"], before["reason"] = FIRST_JSON, FIRST.reason
    assert json.dumps(plan.to_json()) == json.dumps(before)


def test_a_plan_without_moves_says_why_not() -> None:
    plan = RebalancePlan(STOPPED)
    assert (plan.move, plan.reason, plan.moves) == (None, STOPPED.reason, ())
    assert json.dumps(plan.to_json()) == json.dumps({**STOPPED_JSON, "moves": []})


class _Rebalance:
    """A rebalancer whose answers are fixed: `STATUS`, and a plan of two moves."""

    def status(self) -> RebalanceStatus:
        return STATUS

    def preview(self) -> RebalancePlan:
        return RebalancePlan(MOVED, (FIRST, SECOND))

    async def pause(self) -> RebalanceStatus:
        return STATUS

    async def resume(self) -> RebalanceStatus:
        return RebalanceStatus("h1", True, RebalanceSetting(False, WALL + 1), STOPPED)


async def test_the_api_sends_rebalancings_json_byte_for_byte_as_before(tmp_path: Path) -> None:
    sock, server = await _served(tmp_path, rebalance=_Rebalance())
    try:
        assert await _raw(sock, "GET", "/v1/rebalance") == (200, _bytes(STATUS_JSON))
        assert await _raw(sock, "POST", "/v1/rebalance/pause") == (200, _bytes(STATUS_JSON))
        resumed = {
            **STATUS_JSON,
            "paused": False,
            "setting": "active@1700000001.123",
            "moves": [],
        }
        assert await _raw(sock, "POST", "/v1/rebalance/resume") == (200, _bytes(resumed))
        plan = {"move": FIRST_JSON, "reason": FIRST.reason, "utilization": 0.75, "mean": 0.25}
        plan["moves"] = [FIRST_JSON, SECOND_JSON]
        assert await _raw(sock, "GET", "/v1/rebalance/plan") == (200, _bytes(plan))
    finally:
        await server.close()


@pytest.mark.parametrize("answer", [STATUS, RebalancePlan(STOPPED), STARTED, STATUS.moves[0]])
def test_rebalancing_answers_are_frozen_values(answer: object) -> None:
    first = dataclasses.fields(answer)[0].name  # type: ignore[arg-type]
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(answer, first, None)
    assert not hasattr(answer, "__dict__")  # slotted
