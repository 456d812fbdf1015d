"""Real agents stream their events to a real NATS JetStream, through an outage of it.

Two `nova-agent` processes on loopback (libvirt's test driver), one of them
streaming to `nats-server -js`. NATS is stopped; meanwhile the host drains and undrains,
the other agent is killed and a VM stopped through `nova`; `nova status` says the events wait.
NATS comes back: every event is there once, in the order it happened.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from novacron.agent.cli import main as nova
from tests.agent_process import BIN, agent_args, free_port_pair, make_ca
from tests.nats_server import NatsServer

pytestmark = pytest.mark.agents  # real agent processes on loopback

STREAM = "NOVACRON_EVENTS"


def _nova(sock: Path, *args: str) -> dict[str, Any]:
    done = subprocess.run(
        [str(BIN / "nova"), "--json", *args, "--socket", str(sock)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def _until(check: Any, timeout: float, what: str, show: Any = None) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {timeout} s" + (f": {show()}" if show else ""))
        time.sleep(0.2)


def _metrics(sock: Path) -> dict[str, float]:
    """The agent's `novacron_events_*` samples, scraped from its socket."""
    with socket.socket(socket.AF_UNIX) as conn:
        conn.settimeout(30)
        conn.connect(str(sock))
        conn.sendall(b"GET /metrics HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    body = data.partition(b"\r\n\r\n")[2].decode()
    return {
        line.split()[0]: float(line.split()[1])
        for line in body.splitlines()
        if line.startswith("novacron_events_")
    }


def _events(server: NatsServer) -> list[dict[str, Any]]:
    return [body for _, body in asyncio.run(server.messages(STREAM))]


def test_events_wait_out_a_nats_outage_and_arrive_in_order_once(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    ca = make_ca(tmp_path)
    assert nova(["ca", "issue", "n2", "--dir", str(ca / "ca"), "--out", str(ca)]) == 0
    (ca / "absent.toml").write_text("")
    first, second = free_port_pair(), free_port_pair()
    one = [*agent_args(ca, first), "--events-nats", nats_server.url]
    two = agent_args(ca, second, node="n2")
    two[two.index("--api-socket") + 1] = str(ca / "agent2.sock")
    two[two.index("--data-dir") + 1] = str(ca / "data2")
    two += ["--seeds", f"127.0.0.1:{first}"]
    sock = ca / "agent.sock"
    log = (ca / "n1.log").open("w")
    procs = [subprocess.Popen(one, stderr=log), subprocess.Popen(two, stderr=subprocess.DEVNULL)]
    try:
        _until(
            lambda: any(e["type"] == "io.novacron.member.joined" for e in _events(nats_server)),
            60,
            "n1 did not stream n2 joining",
        )
        nats_server.stop()
        _nova(sock, "host", "drain")  # n1 drains and undrains while NATS is away
        _nova(sock, "host", "undrain")
        procs[1].kill()  # n2 dies while NATS is away
        procs[1].wait(timeout=30)
        how = _nova(sock, "vm", "stop", "test", "--timeout", "5")["stopped"]
        assert how in ("graceful", "forced")
        waiting = _until(
            lambda: (
                (s := _nova(sock, "status")["status"]["event_stream"])["last_error"]
                and s["backlog"] > 0
                and s
            ),
            60,
            "nova status did not say that events wait for NATS",
            show=lambda: _nova(sock, "status")["status"].get("event_stream"),
        )
        seen_failed = _until(
            lambda: any(
                m["node_id"] == "n2" and m["state"] == "dead"
                for m in _nova(sock, "members")["members"]
            ),
            90,
            "n1 did not declare n2 failed",
        )
        assert seen_failed
        text = subprocess.run(
            [str(BIN / "nova"), "status", "--socket", str(sock)],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
        assert "events:" in text and "unreachable" in text, text
        assert waiting["dropped"] == 0
        down = _metrics(sock)
        assert down["novacron_events_sink_up"] == 0 and down["novacron_events_waiting"] > 0
        nats_server.start()
        _until(
            lambda: _nova(sock, "status")["status"]["event_stream"]["backlog"] == 0,
            90,
            "the events did not reach NATS after it came back",
        )
        up = _metrics(sock)
        assert up["novacron_events_sink_up"] == 1 and up["novacron_events_waiting"] == 0
        assert up["novacron_events_dropped_total"] == 0
        assert up["novacron_events_delivered_total"] >= 4  # joined, stopped, suspected, failed
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=30)
    events = _events(nats_server)
    ids = [e["id"] for e in events]
    assert len(ids) == len(set(ids)), "an event was stored twice"
    assert {e["source"] for e in events} == {"/novacron/host/n1"}
    sequence = [int(i.rsplit(".", 1)[1]) for i in ids]
    assert sequence == sorted(sequence), "events out of order"
    about_n2 = [e["type"].removeprefix("io.novacron.") for e in events if e["subject"] == "n2"]
    assert about_n2[0] == "member.joined"
    assert about_n2.index("member.suspected") < about_n2.index("member.failed")
    drains = [e["type"] for e in events if e["type"].startswith("io.novacron.drain.")]
    assert drains == ["io.novacron.drain.started", "io.novacron.drain.ended"]
    stopped = [e for e in events if e["type"] == "io.novacron.vm.stopped"]
    assert [(e["subject"], e["data"]["how"]) for e in stopped] == [("test", how)]
