"""A VM's migration history in its own metadata: written, read back, and bounded when read
from another host's libvirt (libvirt's test driver; the lab shows it across hosts)."""

from __future__ import annotations

import libvirt
from hypothesis import given, settings
from hypothesis import strategies as st

from novacron.agent.history import (
    KEEP,
    MAX_TEXT,
    HistoryEntry,
    add_history,
    from_xml,
    iso,
    read_history,
    to_xml,
)

TEST_URI = "test:///default"


def entry(i: int, outcome: str = "committed") -> HistoryEntry:
    return HistoryEntry(f"m{i}", "h1", "h2", outcome, 1_800_000_000.0 + i, 1_800_000_005.25 + i)


def test_the_history_reads_back_as_written_and_keeps_the_last_entries() -> None:
    entries = [entry(i) for i in range(KEEP + 5)]
    back = from_xml(to_xml(entries))
    assert back == entries[-KEEP:]
    assert iso(back[0].ended_at) == "2027-01-15T08:00:10.250Z"


def test_long_reasons_are_cut_and_broken_entries_skipped() -> None:
    long = HistoryEntry("m1", "h1", "h2", "aborted", 1.0, 2.0, reason="x" * 10_000)
    (back,) = from_xml(to_xml([long]))
    assert len(back.reason) == MAX_TEXT
    text = to_xml([entry(1), entry(2)]).replace('ended_at="1800000007.25"', 'ended_at="soon"')
    assert [e.migration_id for e in from_xml(text)] == ["m1"]
    assert from_xml("<history") == [] and from_xml("x" * 100_000) == []


@settings(max_examples=300)
@given(st.text(max_size=2000))
def test_whatever_another_host_returns_reading_it_never_raises(text: str) -> None:
    for found in from_xml(text):
        assert found.migration_id


def test_a_domain_carries_its_history() -> None:
    conn = libvirt.open(TEST_URI)
    add_history(conn, "test", entry(1))
    add_history(conn, "test", entry(2, "aborted"))
    add_history(conn, "test", entry(2, "aborted"))  # written twice: kept once
    assert read_history(conn, "test") == [entry(1), entry(2, "aborted")]
    assert read_history(conn, "no-such-vm") == []
    conn.close()
