"""A certified member floods a host's image transport while it pulls a template, or
claims to hold the template and serves junk.

Mallory sends 1 MiB pieces nobody asked for, of the very file the host is
fetching, as fast as her socket takes them. The host drops a piece its pull did
not ask of her as it arrives, and its queue for image frames is bounded, so the
flood costs it a bounded amount of memory; the pull takes nothing from her and
ends with the signed bytes from the honest holder.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import os
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import psutil
import pytest

from novacron.agent.cli import main as nova
from novacron.agent.client import AgentRequestFailed
from novacron.agent.image_service import IMAGE_LIMITS, INBOX
from novacron.agent.transport import Transport
from novacron.protocol.messages import (
    ImageLack,
    NodeRecord,
    PieceAsk,
    PieceGive,
    PiecesAsk,
    PiecesHeld,
    RecordUpdate,
    TemplateAsk,
    TemplateGive,
)
from novacron.protocol.records import sign_record
from tests.hostile import AgentProcess, Mallory, Mesh, eventually, kill

pytestmark = pytest.mark.agents  # real agent processes on loopback

MiB = 1024 * 1024
IMAGE = b"QFI\xfb" + os.urandom(16 * MiB - 4)
# The flooded host's resident memory must stay below this: unasked pieces are dropped as
# they arrive, so only ZeroMQ's bounded queue of frames may hold them (the agent idles at
# about 60 MiB). Unasked pieces let into the pull's inbox took it to 250-325 MiB.
FLOOD_LIMIT_MIB = 192


def _published(root: Path) -> Path:
    """Template flood-test:1 (IMAGE) signed by acme into `root`/catalogue; acme.pub's path."""
    assert nova(["template", "keygen", "acme", "--out", str(root)]) == 0
    (root / "image.qcow2").write_bytes(IMAGE)
    publish = ["template", "publish", str(root / "image.qcow2"), "--name", "flood-test"]
    publish += ["--version", "1", "--key", str(root / "acme.key"), "--to", str(root / "cat")]
    assert nova([*publish, "--memory", "64"]) == 0
    return root / "acme.pub"


def _holder_and_puller(
    tmp_path: Path, serve_mib_s: float
) -> tuple[Mesh, AgentProcess, AgentProcess]:
    """n1 holding flood-test:1 (serving at `serve_mib_s`) and n2 holding nothing, both
    trusting its publisher, each with its own store under `tmp_path`/stores."""
    public = _published(tmp_path)
    mesh = Mesh(tmp_path / "mesh")

    def options(name: str) -> list[str]:
        store = tmp_path / "stores" / name
        return ["--template-dir", str(store), "--trusted-publishers", str(public)]

    pull = ["template", "pull", "flood-test", "--from", str(tmp_path / "cat"), "--trust"]
    assert nova([*pull, str(public), "--store", str(tmp_path / "stores" / "n1")]) == 0
    holder = mesh.start_agent("n1", [*options("n1"), "--image-serve-mib-s", str(serve_mib_s)])
    return mesh, holder, mesh.start_agent("n2", options("n2"))


async def test_a_flood_of_unasked_pieces_costs_a_bounded_amount_and_is_never_taken(
    tmp_path: Path,
) -> None:
    # The honest holder serves slowly, so the flood runs for the whole pull.
    status, sent, peak = await _pull_flooded(tmp_path, "flood-test:1")
    print(f"flood: {sent} pieces sent, n2 peak {peak // MiB} MiB")
    assert status["state"] == "done", status
    assert set(status["sources"]) == {"n1"}, status
    assert sent > 100, f"the flood hardly ran ({sent} pieces)"
    held = tmp_path / "stores" / "n2" / "files" / hashlib.sha256(IMAGE).hexdigest()
    assert hashlib.sha256(held.read_bytes()).digest() == hashlib.sha256(IMAGE).digest()
    assert peak < FLOOD_LIMIT_MIB * MiB, f"n2 grew to {peak // MiB} MiB under {sent} pieces"


async def test_a_flood_of_pieces_while_a_pull_looks_for_a_holder_is_never_queued(
    tmp_path: Path,
) -> None:
    """A pull of a version nobody offers yet looks for a holder for a while, asking
    nothing: pieces flooding in then are not its answers, and cost it nothing."""
    status, sent, peak = await _pull_flooded(tmp_path, "flood-test:2", enough=4 * INBOX)
    print(f"flood while finding: {sent} pieces sent, n2 peak {peak // MiB} MiB")
    assert status["state"] == "finding", status  # the flood ran while it looked
    assert sent >= 4 * INBOX, f"the flood hardly ran ({sent} pieces)"
    assert peak < FLOOD_LIMIT_MIB * MiB, f"n2 grew to {peak // MiB} MiB under {sent} pieces"


async def _pull_flooded(
    tmp_path: Path, ref: str, enough: int | None = None
) -> tuple[dict[str, Any], int, int]:
    """n2 pulls `ref` while Mallory floods it with pieces of flood-test:1 nobody asked
    for (n1 holds flood-test:1 and serves it slowly): see `_flood`."""
    mesh, holder, puller = _holder_and_puller(tmp_path, serve_mib_s=2)
    try:
        mesh.wait_converged()
        async with Mallory(mesh) as mallory:
            await mallory.join(holder, puller)
            flood = await _image_transport(mallory)
            try:
                await eventually(
                    lambda: puller.api("/v1/hosts/n1")["record"]["templates"] == ["flood-test:1"],
                    30,
                    "n2 hears n1 offer flood-test:1",
                )
                started = puller.post("/v1/templates/pulls", {"template": ref})
                return await _flood(flood, puller, started["pull"]["pull_id"], enough)
            finally:
                await flood.close()
    finally:
        mesh.stop()


async def _flood(
    flood: Transport, puller: AgentProcess, pull_id: str, enough: int | None = None
) -> tuple[dict[str, Any], int, int]:
    """Send `puller` pieces of flood-test:1 nobody asked for while pull `pull_id` looks for
    holders or fetches (until `enough` were sent, if given): the pull's last status, the
    pieces sent and the puller's peak resident memory."""
    port = puller.status()["templates"]["image_port"]
    sha = hashlib.sha256(IMAGE).digest()
    junk = os.urandom(MiB)
    process = psutil.Process(puller.proc.pid)
    peak, sent, index = 0, 0, 0
    while enough is None or sent < enough:
        status = puller.api(f"/v1/templates/pulls/{pull_id}")["pull"]
        if status["state"] not in ("finding", "fetching"):
            break
        for _ in range(64):
            index = (index + 1) % 16
            message = PieceGive(sha, index, junk)
            if await flood.send(puller.node_id, f"127.0.0.1:{port}", message):
                sent += 1
            await asyncio.sleep(0)
        peak = max(peak, process.memory_info().rss)
    for _ in range(10):  # what was sent last is taken in (or dropped) in this time
        peak = max(peak, process.memory_info().rss)
        await asyncio.sleep(0.1)
    return status, sent, peak


async def test_a_member_claiming_the_template_and_serving_corrupt_pieces_is_banned(
    tmp_path: Path,
) -> None:
    """Mallory gossips that she holds flood-test:1 whole and answers every piece asked of
    her with junk. The pull bans her at her first piece, takes nothing from her, and ends
    with the signed bytes from the honest holder."""
    mesh, holder, puller = _holder_and_puller(tmp_path, serve_mib_s=4)
    sha = hashlib.sha256(IMAGE).digest()
    asked: list[int] = []
    try:
        mesh.wait_converged()
        async with Mallory(mesh) as mallory:
            await mallory.join(holder, puller)
            images = await _image_transport(mallory)
            claim = NodeRecord(
                mallory.node_id,
                version=1,
                addresses=(mallory.address,),
                templates=("flood-test:1",),
                image_port=images.port,
            )
            await mallory.send(puller, RecordUpdate(sign_record(mallory.key, claim)))
            await eventually(
                lambda: _offers(puller, mallory.node_id) == ["flood-test:1"],
                30,
                "n2 hears Mallory offer flood-test:1",
            )
            back = f"127.0.0.1:{puller.status()['templates']['image_port']}"
            try:
                status = await _pull_while(puller, _serve_junk(images, back, sha, asked))
            finally:
                await images.close()
    finally:
        mesh.stop()
    assert asked, f"Mallory was never asked for a piece: the test shows nothing ({status})"
    assert status["state"] == "done", status
    assert mallory.node_id in status["banned"], status
    assert set(status["sources"]) == {"n1"}, status
    held = tmp_path / "stores" / "n2" / "files" / sha.hex()
    assert hashlib.sha256(held.read_bytes()).digest() == sha


async def test_an_ask_arriving_before_the_askers_record_is_answered_once_it_arrives(
    tmp_path: Path,
) -> None:
    """A member met a moment ago asks for a manifest before its record, which names the
    port answers go to, has reached the holder (a puller asking at once after it joined).
    The holder answers once the record arrives, not never: a dropped answer left the
    puller waiting 30 s before it asked another holder."""
    mesh, holder, _ = _holder_and_puller(tmp_path, serve_mib_s=4)
    try:
        mesh.wait_converged()
        async with Mallory(mesh, "newcomer") as newcomer:
            await newcomer.join(holder)
            images = await _image_transport(newcomer)
            try:
                await eventually(lambda: holder.state_of("newcomer") == "alive", 30, "n1 knows her")
                there = f"127.0.0.1:{holder.status()['templates']['image_port']}"
                assert await images.send(holder.node_id, there, TemplateAsk("flood-test:1"))
                await eventually(
                    lambda: holder.status()["templates"]["asks_waiting"] == 1,
                    15,
                    "n1 holds her ask, waiting for her record",
                )
                record = NodeRecord(
                    newcomer.node_id,
                    version=1,
                    addresses=(newcomer.address,),
                    image_port=images.port,
                )
                await newcomer.send(holder, RecordUpdate(sign_record(newcomer.key, record)))
                sender, answer = await asyncio.wait_for(images.recv(), 15)
            finally:
                await images.close()
    finally:
        mesh.stop()
    assert sender == holder.node_id, sender
    assert isinstance(answer, TemplateGive) and answer.ref == "flood-test:1", answer


async def test_a_lost_ask_for_the_manifest_is_asked_again(tmp_path: Path) -> None:
    """The one holder left loses the puller's first ask for the manifest, as a holder
    restarted on another port or not yet told of the puller does. The puller asks again
    within seconds and the pull ends with the signed bytes; asked once, it waited 30 s
    and failed."""
    mesh, holder, puller = _holder_and_puller(tmp_path, serve_mib_s=16)
    sha = hashlib.sha256(IMAGE).digest()
    asks: list[float] = []
    try:
        mesh.wait_converged()
        async with Mallory(mesh, "relay") as relay:
            await relay.join(holder, puller)
            images = await _image_transport(relay)
            try:
                record = NodeRecord(
                    relay.node_id, version=1, addresses=(relay.address,), image_port=images.port
                )
                await relay.send(holder, RecordUpdate(sign_record(relay.key, record)))
                copy = await _copy_of(images, holder, sha)
                kill(holder)
                claim = dataclasses.replace(record, version=2, templates=("flood-test:1",))
                await relay.send(puller, RecordUpdate(sign_record(relay.key, claim)))
                await eventually(
                    lambda: (
                        _offers(puller, relay.node_id) == ["flood-test:1"]
                        and puller.state_of(holder.node_id) != "alive"
                    ),
                    60,
                    "n2 hears the relay offer flood-test:1 and has failed n1",
                )
                back = f"127.0.0.1:{puller.status()['templates']['image_port']}"
                serving = _serve_losing_first_ask(images, back, copy, asks)
                status = await _pull_while(puller, serving)
            finally:
                await images.close()
    finally:
        mesh.stop()
    assert len(asks) >= 2, f"the manifest was asked for {len(asks)} times ({status})"
    assert status["state"] == "done", status
    assert set(status["sources"]) == {relay.node_id}, status
    held = tmp_path / "stores" / "n2" / "files" / sha.hex()
    assert hashlib.sha256(held.read_bytes()).digest() == sha


async def _copy_of(images: Transport, holder: AgentProcess, sha: bytes) -> dict[str, Any]:
    """flood-test:1's manifest answer and every piece, asked of `holder` as any member may."""
    there = f"127.0.0.1:{holder.status()['templates']['image_port']}"
    pieces = len(IMAGE) // MiB
    assert await images.send(holder.node_id, there, TemplateAsk("flood-test:1"))
    for index in range(pieces):
        assert await images.send(holder.node_id, there, PieceAsk(sha, index))
    copy: dict[str, Any] = {"pieces": {}}
    while "manifest" not in copy or len(copy["pieces"]) < pieces:
        _, message = await asyncio.wait_for(images.recv(), 30)
        if isinstance(message, TemplateGive):
            copy["manifest"] = message
        elif isinstance(message, PieceGive):
            copy["pieces"][message.index] = message
    return copy


async def _serve_losing_first_ask(
    images: Transport, back: str, copy: dict[str, Any], asks: list[float]
) -> None:
    """Serve `copy` as a whole holder would, except that the first ask for the manifest
    is lost."""
    while True:
        sender, message = await images.recv()
        if isinstance(message, TemplateAsk):
            asks.append(time.monotonic())
            if len(asks) > 1:
                await images.send(sender, back, copy["manifest"])
        elif isinstance(message, PiecesAsk):
            await images.send(sender, back, PiecesHeld(message.sha256, whole=True))
        elif isinstance(message, PieceAsk):
            await images.send(sender, back, copy["pieces"][message.index])


def _offers(agent: AgentProcess, host: str) -> list[str]:
    """The templates `agent` hears `host` offer ([] until it knows `host`)."""
    try:
        record = agent.api(f"/v1/hosts/{host}")["record"] or {}
    except AgentRequestFailed:
        return []
    return list(record.get("templates", []))


async def _image_transport(mallory: Mallory) -> Transport:
    """An image transport of Mallory's own (her keys, any free port), started."""
    transport = Transport(
        mallory.node_id, mallory.key, mallory.trust, "127.0.0.1", 0, limits=IMAGE_LIMITS
    )
    await transport.start()
    return transport


async def _pull_while(puller: AgentProcess, serving: Coroutine[Any, Any, None]) -> dict[str, Any]:
    """`puller` pulls flood-test:1 while `serving` answers its asks; the pull once ended."""
    task = asyncio.create_task(serving)
    try:
        started = puller.post("/v1/templates/pulls", {"template": "flood-test:1"})
        return await _pull_ended(puller, started["pull"]["pull_id"], timeout=120)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _pull_ended(agent: AgentProcess, pull_id: str, timeout: float) -> dict[str, Any]:
    """The pull's status once it ended, looked at without blocking the loop (Mallory's
    tasks answer meanwhile)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pull = await asyncio.to_thread(agent.api, f"/v1/templates/pulls/{pull_id}")
        if pull["pull"]["state"] not in ("finding", "fetching"):
            return dict(pull["pull"])
        await asyncio.sleep(0.2)
    raise AssertionError(f"{agent.node_id}'s pull did not end within {timeout:.0f} s")


async def _serve_junk(images: Transport, back: str, sha: bytes, asked: list[int]) -> None:
    """Answer every piece asked with 1 MiB of junk; claim to hold all of them."""
    junk = os.urandom(MiB)
    while True:
        sender, message = await images.recv()
        if isinstance(message, PieceAsk):
            asked.append(message.index)
            await images.send(sender, back, PieceGive(sha, message.index, junk))
        elif isinstance(message, PiecesAsk):
            await images.send(sender, back, PiecesHeld(sha, whole=True))
        elif isinstance(message, TemplateAsk):
            await images.send(sender, back, ImageLack(message.ref, "not here"))
