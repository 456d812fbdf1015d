"""The outbound-migration journal (`agent/journal.py`): what a restarted agent finds."""

from __future__ import annotations

from pathlib import Path

from novacron.agent.journal import JournalEntry, MigrationJournal


def test_entries_survive_until_taken_and_only_their_own_id_forgets_them(tmp_path: Path) -> None:
    journal = MigrationJournal(tmp_path / "migrations")
    assert journal.take_all() == []
    journal.record(JournalEntry("vm1", "m1", "h2"))
    journal.record(JournalEntry("vm2", "m2", "h3"))
    journal.forget("vm1", "other-id")  # a later migration's end must not erase this one
    journal.forget("vm2", "m2")

    again = MigrationJournal(tmp_path / "migrations")  # the next life of the agent

    assert again.take_all() == [JournalEntry("vm1", "m1", "h2")]
    assert again.take_all() == []


def test_a_garbled_entry_is_skipped_not_fatal(tmp_path: Path) -> None:
    journal = MigrationJournal(tmp_path)
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "partial.json").write_text('{"vm": "x"}')
    journal.record(JournalEntry("ok", "m3", "h1"))
    assert journal.take_all() == [JournalEntry("ok", "m3", "h1")]
    assert list(tmp_path.glob("*.json")) == []
