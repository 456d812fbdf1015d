"""mDNS discovery on the loopback interface: two agents find each other.

zeroconf is bound to 127.0.0.1 only, so the multicast queries and answers
leave through `lo` and never reach another host. Node ids carry a random
suffix: other tests running at the same time may advertise on loopback too.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator

import pytest

from novacron.agent.discovery import (
    SERVICE_TYPE,
    Discovery,
    DuplicateNode,
    PeerEvent,
    PeerFound,
    PeerLost,
    host_name,
    instance_label,
)
from novacron.protocol.codec import PROTOCOL_VERSION

LOOPBACK = "127.0.0.1"
TIMEOUT = 10.0  # mDNS probing and announcing take a few seconds by design


async def next_about(discovery: Discovery, node_id: str) -> PeerEvent:
    """The next event about `node_id`, skipping adverts of unrelated test runs."""
    while True:
        event = await discovery.events.get()
        if event.node_id == node_id:
            return event


@pytest.fixture
def suffix() -> str:
    return secrets.token_hex(4)


@pytest.fixture
async def pair(suffix: str) -> AsyncIterator[tuple[Discovery, Discovery]]:
    alpha = Discovery(f"alpha-{suffix}", 47001, "aa" * 32, interfaces=[LOOPBACK])
    beta = Discovery(f"beta.{suffix}", 47002, "bb" * 32, interfaces=[LOOPBACK])
    await asyncio.wait_for(asyncio.gather(alpha.start(), beta.start()), TIMEOUT)
    yield alpha, beta
    await asyncio.wait_for(asyncio.gather(alpha.close(), beta.close()), TIMEOUT)


async def test_two_agents_discover_each_other_with_their_properties(
    pair: tuple[Discovery, Discovery], suffix: str
) -> None:
    alpha, beta = pair
    seen_by_alpha = await asyncio.wait_for(next_about(alpha, f"beta.{suffix}"), TIMEOUT)
    seen_by_beta = await asyncio.wait_for(next_about(beta, f"alpha-{suffix}"), TIMEOUT)

    assert seen_by_alpha == PeerFound(
        node_id=f"beta.{suffix}",
        addresses=(LOOPBACK,),
        port=47002,
        fingerprint="bb" * 32,
        protocol_version=PROTOCOL_VERSION,
    )
    assert seen_by_alpha.address == f"{LOOPBACK}:47002"
    assert seen_by_beta == PeerFound(
        f"alpha-{suffix}", (LOOPBACK,), 47001, "aa" * 32, PROTOCOL_VERSION
    )


async def test_an_agent_ignores_its_own_advert(
    pair: tuple[Discovery, Discovery], suffix: str
) -> None:
    alpha, _ = pair
    await asyncio.wait_for(next_about(alpha, f"beta.{suffix}"), TIMEOUT)
    await asyncio.sleep(0.5)  # let any late self-report arrive (there must be none)
    mine = [e for e in _drain(alpha) if e.node_id == alpha.node_id]
    assert mine == []
    assert all(p.node_id != alpha.node_id for p in alpha.peers)


async def test_clean_shutdown_withdraws_the_advert(
    pair: tuple[Discovery, Discovery], suffix: str
) -> None:
    alpha, beta = pair
    await asyncio.wait_for(next_about(alpha, f"beta.{suffix}"), TIMEOUT)
    await asyncio.wait_for(beta.close(), TIMEOUT)
    gone = await asyncio.wait_for(next_about(alpha, f"beta.{suffix}"), TIMEOUT)
    assert gone == PeerLost(f"beta.{suffix}")


def test_names_fit_dns_labels() -> None:
    long_id = "n" * 64
    assert len(instance_label(long_id)) <= 63
    assert instance_label("edge-1") == "edge-1"
    assert host_name("edge.1_a") == "novacron-edge-1-a.local."
    assert SERVICE_TYPE == "_novacron._tcp.local."


def _drain(discovery: Discovery) -> list[PeerEvent]:
    events = []
    while not discovery.events.empty():
        events.append(discovery.events.get_nowait())
    return events


async def test_a_second_advert_of_one_node_id_is_refused_in_one_line(suffix: str) -> None:
    first = Discovery(f"twin-{suffix}", 47003, "cc" * 32, interfaces=[LOOPBACK])
    await asyncio.wait_for(first.start(), TIMEOUT)
    try:
        twin = Discovery(f"twin-{suffix}", 47004, "dd" * 32, interfaces=[LOOPBACK])
        with pytest.raises(DuplicateNode) as refused:
            await asyncio.wait_for(twin.start(), TIMEOUT)
        reason = str(refused.value)
        assert f"another agent already advertises node twin-{suffix}" in reason
        assert "\n" not in reason
    finally:
        await asyncio.wait_for(first.close(), TIMEOUT)
