"""A migration waiting for its target's fetch (`core/images/target_fetch.py`): which
refusals it waits on, and when the wait ends. Pure, no I/O: the CLI and the site's
migrate command both decide with it (their own tests drive them end to end)."""

from __future__ import annotations

from novacron.agent.core.images.target_fetch import (
    AwaitedFetch,
    FetchState,
    FetchWatch,
    awaited_fetch,
    refusal_details,
)

REF = "debian-12:1"
AWAITED = AwaitedFetch("h3", REF)


def test_only_a_refusal_for_a_template_being_fetched_is_waited_on() -> None:
    assert awaited_fetch(refusal_details("h3", REF, True)) == AWAITED
    assert awaited_fetch(refusal_details("h3", REF, False)) is None  # no fetch to wait for
    assert awaited_fetch({}) is None  # any other refusal
    assert awaited_fetch({"lacking_template": REF, "host": 3, "fetching": True}) is None


def test_the_wait_ends_when_the_target_holds_the_template_whole() -> None:
    watch = FetchWatch(AWAITED, now=0.0, quiet=30.0)
    assert watch.look((), (REF,), 1.0) is FetchState.WAITING
    assert watch.look(("debian-12:2",), (REF,), 2.0) is FetchState.WAITING  # another version
    assert watch.look((REF,), (), 3.0) is FetchState.HELD


def test_a_target_quiet_for_longer_than_the_quiet_period_is_given_up() -> None:
    """Quiet counts from the last look that saw it fetching (or the start), not the start:
    a record may miss a fetch between two gossip rounds."""
    watch = FetchWatch(AWAITED, now=0.0, quiet=30.0)
    assert watch.look((), (), 29.0) is FetchState.WAITING  # not yet seen fetching
    assert watch.look((), (REF,), 40.0) is FetchState.WAITING
    assert watch.look((), (), 70.0) is FetchState.WAITING
    assert watch.look((), (), 70.5) is FetchState.QUIET
    assert watch.gave_up().startswith(
        "h3 lacks template debian-12:1 and has not been fetching it for 30 s: no peer may hold"
    )
