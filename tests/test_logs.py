"""Structured log lines: one line per record, values that cannot forge fields or lines."""

from __future__ import annotations

import json
import logging

from hypothesis import given
from hypothesis import strategies as st

from novacron.agent.logs import _KeyValueFormatter


def line(value: str) -> str:
    record = logging.LogRecord("novacron.t", logging.INFO, __file__, 1, "drain asked", None, None)
    record.fields = {"by": value}
    return _KeyValueFormatter().format(record)


def test_plain_words_stay_bare() -> None:
    assert line("h1").endswith(" by=h1")
    assert 'msg="drain asked"' in line("h1")


def test_a_carriage_return_or_newline_cannot_start_a_new_line() -> None:
    forged = "h1\rts=2026-01-01T00:00:00Z level=error msg=forged"
    text = line(forged)
    assert "\r" not in text and "\n" not in text
    assert text.endswith(" by=" + json.dumps(forged))


@given(st.text(max_size=40))
def test_every_value_reads_back_exactly(value: str) -> None:
    text = line(value)
    assert "\n" not in text and "\r" not in text
    shown = text.split(" by=", 1)[1]
    assert (json.loads(shown) if shown.startswith('"') else shown) == value
