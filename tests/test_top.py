"""`nova top` without a terminal or an agent: the screen's lines from a snapshot, and the
events told from what changed between two snapshots."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from novacron.agent.cli.top_events import Event, changes, remember
from novacron.agent.cli.top_render import bar, screen
from novacron.agent.cli.top_screen import Watcher
from novacron.agent.cli.top_snapshot import (
    HostRow,
    MigrationRow,
    MoveRow,
    Snapshot,
    host_row,
    migration_row,
)

T0 = 1_700_000_000.0


def host(node: str, cpu: float, state: str = "alive", **kw: object) -> HostRow:
    fields: dict[str, object] = dict(
        node_id=node,
        state=state,
        is_self=node == "h1",
        cpu_used=cpu,
        cpu_total=4.0,
        memory_used_mib=512,
        memory_total_mib=2048,
        vms=1,
        draining=False,
    )
    return HostRow(**{**fields, **kw})  # type: ignore[arg-type]


def migration(mid: str = "m1", percent: float = 42.0, **kw: object) -> MigrationRow:
    fields: dict[str, object] = dict(
        migration_id=mid,
        vm="web-1",
        source="h1",
        target="h2",
        direction="outbound",
        phase="migrating",
        percent=percent,
        outcome="",
        reason="",
        elapsed_s=12.0,
        purpose="manual",
        started=T0 - 12,
        ended=None,
    )
    return MigrationRow(**{**fields, **kw})  # type: ignore[arg-type]


def snapshot(
    hosts: tuple[HostRow, ...] = (),
    migrations: tuple[MigrationRow, ...] = (),
    moves: tuple[MoveRow, ...] = (),
    taken: float = T0,
) -> Snapshot:
    hosts = hosts or (host("h1", 1.0), host("h2", 3.0), host("h3", 0.0))
    states = {"alive": 0, "suspect": 0, "dead": 0, "left": 0}
    for h in hosts:
        states[h.state] += 1
    return Snapshot(taken, "h1", "198.18.0.1", states, hosts, migrations, moves)


# --- the screen ----------------------------------------------------------------------------


def test_bar_fills_to_the_share() -> None:
    assert bar(0.0, 12) == "[..........]"
    assert bar(0.5, 12) == "[#####.....]"
    assert bar(1.0, 12) == "[##########]"
    assert bar(7.0, 12) == bar(1.0, 12) and bar(-1, 12) == bar(0.0, 12)


def test_hosts_come_busiest_first_with_bars_memory_and_vms() -> None:
    lines = screen(snapshot(), [], T0)
    assert lines[0].startswith("nova top  h1 198.18.0.1  mesh 3: 3 alive, 0 suspect, 0 dead")
    rows = [line for line in lines if line.startswith(("h1", "h2", "h3"))]
    assert [row.split()[0] for row in rows] == ["h2", "h1", "h3"]
    assert "[##############....]   75%  3.0/4" in rows[0]
    assert "512/2048" in rows[0] and rows[0].endswith("  1")
    assert rows[1].startswith("h1 *"), "this agent's host is marked"


def test_a_running_migration_shows_its_progress_and_an_ended_one_does_not() -> None:
    done = migration("m0", 100.0, outcome="committed", ended=T0 - 30)
    lines = screen(snapshot(migrations=(migration(), done)), [], T0)
    at = lines.index("MIGRATIONS IN FLIGHT (1)")
    row = lines[at + 1]
    assert row.startswith("web-1  h1 -> h2  [########..........]   42.0%  migrating")
    assert row.endswith("12s")
    assert "m0" not in "\n".join(lines) and lines[at + 2] == ""


def test_nothing_in_flight_says_so() -> None:
    lines = screen(snapshot(), [], T0)
    at = lines.index("MIGRATIONS IN FLIGHT (0)")
    assert lines[at + 1] == "none"


def test_every_line_fits_the_width_and_the_bars_shrink_to_fit() -> None:
    wide = screen(snapshot(migrations=(migration(),)), [Event(T0, "x" * 300)], T0, width=160)
    narrow = screen(snapshot(migrations=(migration(),)), [Event(T0, "x" * 300)], T0, width=60)
    assert all(len(line) <= 60 for line in narrow)
    assert all(len(line) <= 160 for line in wide)
    wide_bar = next(line for line in wide if line.startswith("h2")).count("#")
    narrow_bar = next(line for line in narrow if line.startswith("h2")).count("#")
    assert 0 < narrow_bar < wide_bar


def test_a_short_window_counts_the_hosts_that_do_not_fit_and_keeps_migrations_and_events() -> None:
    many = tuple(host(f"h{i:02d}", i / 10) for i in range(40))
    events = [Event(T0 - i, f"event {i}") for i in range(10)]
    lines = screen(snapshot(hosts=many, migrations=(migration(),)), events, T0, 120, 24)
    assert len(lines) == 24
    assert any(line.startswith("... ") and "more hosts" in line for line in lines)
    assert "MIGRATIONS IN FLIGHT (1)" in lines and "RECENT EVENTS" in lines
    assert any(line.endswith("event 0") for line in lines), "the newest event is on screen"
    assert next(line for line in lines if line.startswith("h")).startswith("h39"), "busiest"


def test_a_tiny_window_gets_what_fits() -> None:
    for width, height in ((1, 1), (10, 3), (30, 8)):
        lines = screen(snapshot(migrations=(migration(),)), [Event(T0, "e")], T0, width, height)
        assert len(lines) <= height and all(len(line) <= width for line in lines)
        assert "nova top  h1 198.18.0.1".startswith(lines[0][:23])


def test_an_agent_not_answering_is_said_over_the_last_view() -> None:
    lines = screen(snapshot(), [], T0 + 9, problem="no socket at /run/x.sock")
    assert lines[1].startswith("agent not answering: no socket at /run/x.sock (retrying; last")
    assert any(line.startswith("h2") for line in lines), "the last view stays"


def test_events_are_listed_newest_first_with_their_time() -> None:
    events = remember([Event(T0 - 60, "old")], [Event(T0, "new")])
    lines = screen(snapshot(), events, T0)
    at = lines.index("RECENT EVENTS")
    assert lines[at + 1].endswith("  new") and lines[at + 2].endswith("  old")
    assert lines[at + 1][2] == ":" and lines[at + 1][5] == ":", "HH:MM:SS first"


# --- the events ----------------------------------------------------------------------------


def texts(events: list[Event]) -> list[str]:
    return [e.text for e in events]


def test_the_first_look_tells_recent_migrations_and_moves_at_their_own_times() -> None:
    ended = migration("m0", 100.0, outcome="aborted", reason="cancelled", started=T0 - 90)
    ended = dataclasses.replace(ended, ended=T0 - 80, elapsed_s=10.0)
    move = MoveRow("m1", "web-1", "h2", "h1 over its line", T0 - 13)
    events = changes(None, snapshot(migrations=(migration(), ended), moves=(move,)))
    assert [(e.at, e.text) for e in events] == [
        (T0 - 12, "migration of web-1 h1 -> h2 started (manual)"),
        (T0 - 13, "rebalance: move web-1 to h2: h1 over its line"),
        (T0 - 80, "migration of web-1 h1 -> h2 aborted after 10.0 s: cancelled"),
        (T0 - 90, "migration of web-1 h1 -> h2 started (manual)"),
    ]


def test_nothing_changed_tells_nothing() -> None:
    same = snapshot(migrations=(migration(),))
    later = dataclasses.replace(same, taken=T0 + 2)
    assert changes(same, later) == []


def test_a_member_changing_state_joining_draining_and_leaving() -> None:
    before = snapshot(hosts=(host("h1", 1), host("h2", 1), host("h3", 1)))
    after = snapshot(
        hosts=(host("h1", 1, draining=True), host("h2", 1, state="suspect"), host("h4", 0)),
        taken=T0 + 2,
    )
    assert sorted(texts(changes(before, after))) == [
        "h1 draining",
        "h2 alive -> suspect",
        "h3 left this agent's view",
        "h4 joined (alive)",
    ]
    assert {e.at for e in changes(before, after)} == {T0 + 2}


def test_a_migration_ending_is_told_once_with_its_outcome() -> None:
    running = snapshot(migrations=(migration(),))
    done = migration(outcome="committed", percent=100.0, ended=T0 + 3, elapsed_s=15.0)
    ended = snapshot(migrations=(done,), taken=T0 + 4)
    assert [(e.at, e.text) for e in changes(running, ended)] == [
        (T0 + 3, "migration of web-1 h1 -> h2 committed after 15.0 s")
    ]
    assert changes(ended, dataclasses.replace(ended, taken=T0 + 6)) == []


def test_a_migration_seen_only_ended_is_told_started_and_ended() -> None:
    quick = migration(outcome="refused", reason="no room", ended=T0 - 11, elapsed_s=1.0)
    events = changes(snapshot(), snapshot(migrations=(quick,), taken=T0 + 2))
    assert texts(events) == [
        "migration of web-1 h1 -> h2 refused after 1.0 s: no room",
        "migration of web-1 h1 -> h2 started (manual)",
    ]


def test_a_new_rebalance_move_is_told_once() -> None:
    move = MoveRow("m7", "db-1", "h3", "h2 over its line", T0 + 1)
    before, after = snapshot(), snapshot(moves=(move,), taken=T0 + 2)
    assert texts(changes(before, after)) == ["rebalance: move db-1 to h3: h2 over its line"]
    assert changes(after, dataclasses.replace(after, taken=T0 + 4)) == []


def test_the_log_keeps_the_newest() -> None:
    log: list[Event] = []
    for i in range(10):
        log = remember(log, [Event(T0 + i, str(i))], keep=4)
    assert texts(log) == ["9", "8", "7", "6"]


# --- from the API's answers, and an agent that goes away -----------------------------------


def test_rows_from_the_api_answers() -> None:
    member = {"node_id": "h2", "state": "suspect", "self": False}
    record = {
        "capacity": {"vcpus": 2, "memory_mib": 1024, "disk_gib": 10.0},
        "usage": {"vcpus": 0.5, "memory_mib": 256, "disk_gib": 1.0},
        "vms": [{"name": "a"}, {"name": "b"}],
        "draining": True,
    }
    row = host_row(member, record)
    assert (row.cpu_share, row.memory_used_mib, row.vms, row.draining) == (0.25, 256, 2, True)
    assert host_row(member, {}).cpu_share == 0.0, "a member whose record has not arrived"
    api = {
        "migration_id": "m1",
        "vm": "web-1",
        "source": "h1",
        "target": "h2",
        "direction": "outbound",
        "phase": "migrating",
        "percent": 42,
        "outcome": "",
        "reason": "",
        "elapsed_s": 12.5,
        "purpose": "manual",
        "started": "2023-11-14T22:13:08.000Z",
        "ended": None,
    }
    parsed = migration_row(api)
    assert (parsed.started, parsed.ended, parsed.running) == (T0 - 12, None, True)


def test_a_look_at_an_agent_that_is_gone_keeps_the_last_view_and_says_why(
    tmp_path: Path,
) -> None:
    first = snapshot(migrations=(migration(),))
    watcher = Watcher(first, str(tmp_path / "gone.sock"), interval=0.5)
    watcher.look()
    version, shown, events, problem = watcher.view()
    assert version == 1 and shown is first
    assert problem is not None and "the agent is not running" in problem
    assert texts(events) == ["migration of web-1 h1 -> h2 started (manual)"]
