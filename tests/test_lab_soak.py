"""The lab soak continues a stopped soak only on the code, files and load it ran."""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks.lab_soak import ResumeRefused, resumed, streak_of

CODE = "0123456789abcdef0123456789abcdef01234567"
TESTS = ["tests/test_admission_lab.py", "tests/test_drain_lab.py"]
LOAD = "stress-ng --cpu 1"


def report(*outcomes: bool, code: str = CODE) -> dict[str, Any]:
    rounds = [{"round": n, "ok": ok} for n, ok in enumerate(outcomes, 1)]
    return {"code": code, "tests": TESTS, "load": LOAD, "rounds": rounds, "command": "x"}


def test_a_soak_on_the_same_code_continues_its_rounds_and_streak() -> None:
    rounds = resumed(report(True, False, True, True), CODE, TESTS, LOAD)
    assert [r["round"] for r in rounds] == [1, 2, 3, 4]
    assert streak_of(rounds) == 2


@pytest.mark.parametrize(
    ("code", "tests", "load", "why"),
    [
        ("fedcba9876543210fedcba9876543210fedcba98", TESTS, LOAD, "the report ran"),
        (CODE + "+dirty", TESTS, LOAD, "uncommitted changes"),
        (CODE, TESTS[:1], LOAD, "other test files"),
        (CODE, TESTS, "none", "under stress-ng --cpu 1"),
    ],
)
def test_other_code_files_or_load_are_refused(
    code: str, tests: list[str], load: str, why: str
) -> None:
    with pytest.raises(ResumeRefused, match=why):
        resumed(report(True, True), code, tests, load)


def test_a_report_of_the_same_code_but_dirty_is_refused_even_if_it_matches() -> None:
    with pytest.raises(ResumeRefused, match="uncommitted"):
        resumed(report(True, code=CODE + "+dirty"), CODE + "+dirty", TESTS, LOAD)


def test_the_streak_counts_only_the_passes_after_the_last_failure() -> None:
    assert streak_of([]) == 0
    assert streak_of([{"ok": False}]) == 0
    assert streak_of([{"ok": True}, {"ok": False}, {"ok": True}]) == 1
