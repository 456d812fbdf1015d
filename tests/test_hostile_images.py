"""A certified member floods a host's image transport while it pulls a template.

Mallory sends 1 MiB pieces nobody asked for, of the very file the host is
fetching, as fast as her socket takes them. The host's queues for image frames
are bounded, so the flood costs it a bounded amount of memory; the pull takes
nothing from her and ends with the signed bytes from the honest holder.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import psutil
import pytest

from novacron.agent.cli import main as nova
from novacron.agent.image_service import IMAGE_LIMITS
from novacron.agent.transport import Transport
from novacron.protocol.messages import PieceGive
from tests.hostile import Mallory, Mesh, wait_until

pytestmark = pytest.mark.agents  # real agent processes on loopback

MiB = 1024 * 1024
IMAGE = b"QFI\xfb" + os.urandom(16 * MiB - 4)
FLOOD_LIMIT_MIB = 256  # the flooded host's resident memory must stay below this


def _published(root: Path) -> Path:
    """Template flood-test:1 (IMAGE) signed by acme into `root`/catalogue; acme.pub's path."""
    assert nova(["template", "keygen", "acme", "--out", str(root)]) == 0
    (root / "image.qcow2").write_bytes(IMAGE)
    publish = ["template", "publish", str(root / "image.qcow2"), "--name", "flood-test"]
    publish += ["--version", "1", "--key", str(root / "acme.key"), "--to", str(root / "cat")]
    assert nova([*publish, "--memory", "64"]) == 0
    return root / "acme.pub"


async def test_a_flood_of_unasked_pieces_costs_a_bounded_amount_and_is_never_taken(
    tmp_path: Path,
) -> None:
    public = _published(tmp_path)
    mesh = Mesh(tmp_path / "mesh")

    def options(name: str) -> list[str]:
        store = tmp_path / "stores" / name
        return ["--template-dir", str(store), "--trusted-publishers", str(public)]

    pull = ["template", "pull", "flood-test", "--from", str(tmp_path / "cat"), "--trust"]
    assert nova([*pull, str(public), "--store", str(tmp_path / "stores" / "n1")]) == 0
    # The honest holder serves slowly, so the flood runs for the whole pull.
    holder = mesh.start_agent("n1", [*options("n1"), "--image-serve-mib-s", "2"])
    puller = mesh.start_agent("n2", options("n2"))
    try:
        mesh.wait_converged()
        async with Mallory(mesh) as mallory:
            await mallory.join(holder, puller)
            flood = Transport(
                mallory.node_id, mallory.key, mallory.trust, "127.0.0.1", 0, limits=IMAGE_LIMITS
            )
            await flood.start()
            try:
                wait_until(
                    lambda: puller.api("/v1/hosts/n1")["record"]["templates"] == ["flood-test:1"],
                    30,
                    "n2 hears n1 offer flood-test:1",
                )
                port = puller.status()["templates"]["image_port"]
                started = puller.post("/v1/templates/pulls", {"template": "flood-test:1"})
                pull_id = started["pull"]["pull_id"]
                sha = hashlib.sha256(IMAGE).digest()
                junk = os.urandom(MiB)
                process = psutil.Process(puller.proc.pid)
                peak, sent, index = 0, 0, 0
                while True:
                    status = puller.api(f"/v1/templates/pulls/{pull_id}")["pull"]
                    if status["state"] != "fetching" and status["state"] != "finding":
                        break
                    for _ in range(64):
                        index = (index + 1) % 16
                        message = PieceGive(sha, index, junk)
                        if await flood.send(puller.node_id, f"127.0.0.1:{port}", message):
                            sent += 1
                        await asyncio.sleep(0)
                    peak = max(peak, process.memory_info().rss)
            finally:
                await flood.close()
    finally:
        mesh.stop()
    print(f"flood: {sent} pieces sent, n2 peak {peak // MiB} MiB")
    assert status["state"] == "done", status
    assert set(status["sources"]) == {"n1"}, status
    assert sent > 100, f"the flood hardly ran ({sent} pieces)"
    held = tmp_path / "stores" / "n2" / "files" / hashlib.sha256(IMAGE).hexdigest()
    assert hashlib.sha256(held.read_bytes()).digest() == sha
    assert peak < FLOOD_LIMIT_MIB * MiB, f"n2 grew to {peak // MiB} MiB under {sent} pieces"
