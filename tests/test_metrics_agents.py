"""Metrics of real agents: the exposition on the API socket and on TCP, scraped by a real
Prometheus whose PromQL answers follow the mesh (three alive, then one failed).

Three `nova-agent` processes on loopback (libvirt's test driver) each serve
/metrics on their socket and, with `--metrics-listen`, on a TCP port; Debian's
`prometheus` scrapes them every second with the rules of observability/ loaded.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from novacron.agent.client import AgentRequestFailed, parse_answer
from tests.hostile import AgentProcess, Mesh, kill, wait_until
from tests.prometheus_server import (
    dashboard_queries,
    free_port,
    http_get,
    promtool,
    running_prometheus,
)

pytestmark = pytest.mark.agents


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Mesh, dict[str, int]]]:
    mesh = Mesh(tmp_path_factory.mktemp("metrics"))
    ports: dict[str, int] = {}
    try:
        for node in ("n1", "n2", "n3"):
            ports[node] = free_port()
            mesh.start_agent(node, ["--metrics-listen", f"127.0.0.1:{ports[node]}"])
        mesh.wait_converged()
        yield mesh, ports
    finally:
        mesh.stop()


def scrape_socket(agent: AgentProcess) -> tuple[int, bytes]:
    """GET /metrics on the agent's API socket, as Prometheus' unix-socket scrapers do."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(agent.socket_file)
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return parse_answer(data)


def sample(exposition: bytes, series: str) -> float:
    """The value of one series line (`name{labels}`) in an exposition."""
    for line in exposition.decode().splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    raise AssertionError(f"no {series} in the exposition")


def test_exposition_on_the_socket_is_clean_for_promtool(mesh: tuple[Mesh, dict[str, int]]) -> None:
    status, body = scrape_socket(mesh[0]["n1"])
    assert status == 200
    assert promtool("check", "metrics", stdin=body).strip() == ""  # no lint finding at all
    assert sample(body, 'novacron_members{state="alive"}') == 3
    assert sample(body, 'novacron_member_state{member="n3",state="alive"}') == 1
    assert sample(body, 'novacron_vmis{phase="running"}') >= 1  # the test driver's domain
    assert sample(body, "novacron_gossip_bytes_received_total") > 0
    assert sample(body, "process_resident_memory_bytes") > 0


def test_tcp_listener_serves_metrics_and_nothing_else(
    mesh: tuple[Mesh, dict[str, int]],
) -> None:
    url = f"http://127.0.0.1:{mesh[1]['n2']}"
    status, content_type, body = http_get(f"{url}/metrics")
    assert status == 200 and content_type.startswith("text/plain; version=0.0.4")
    address = mesh[0]["n2"].address
    assert sample(body, f'novacron_agent_info{{address="{address}",node="n2"}}') == 1
    for path in ("/v1/status", "/v1/members", "/v1/drain"):  # the control API stays on the socket
        assert http_get(url + path)[0] == 404, path


def test_a_refused_migration_is_counted(mesh: tuple[Mesh, dict[str, int]]) -> None:
    agent = mesh[0]["n1"]
    before = sample(scrape_socket(agent)[1], 'novacron_vmi_migrations_refused_total{side="source"}')
    with pytest.raises(AgentRequestFailed, match="unknown VM: absent-vm"):
        agent.post("/v1/vms/absent-vm/migrate", {"to": "n2"})
    after = sample(scrape_socket(agent)[1], 'novacron_vmi_migrations_refused_total{side="source"}')
    assert after == before + 1


def test_pause_and_drain_show_in_every_agents_metrics(mesh: tuple[Mesh, dict[str, int]]) -> None:
    agents = mesh[0]
    paused = "novacron_rebalance_paused"

    def everywhere(series: str, value: float) -> bool:
        return all(sample(scrape_socket(agents[n])[1], series) == value for n in ("n1", "n2", "n3"))

    agents["n1"].post("/v1/rebalance/pause", {})
    try:
        wait_until(lambda: everywhere(paused, 1), 20, "every agent's metrics say paused")
    finally:
        agents["n1"].post("/v1/rebalance/resume", {})
    wait_until(lambda: everywhere(paused, 0), 20, "every agent's metrics say resumed")
    agents["n2"].post("/v1/drain", {})
    try:
        assert sample(scrape_socket(agents["n2"])[1], "novacron_drain_active") == 1
        assert sample(scrape_socket(agents["n1"])[1], "novacron_drain_active") == 0
    finally:
        agents["n2"].post("/v1/undrain", {})
    assert sample(scrape_socket(agents["n2"])[1], "novacron_drain_active") == 0


def test_a_vm_stopped_and_started_shows_in_the_next_scrapes(tmp_path: Path) -> None:
    alone = Mesh(tmp_path)  # of its own: the shared mesh's VM keeps running
    try:
        agent = alone.start_agent("n7")

        def shows(phase: str) -> bool:
            return sample(scrape_socket(agent)[1], f'novacron_vmis{{phase="{phase}"}}') == 1

        wait_until(lambda: shows("running"), 20, "the test driver's VM running")
        agent.post("/v1/vms/test/stop", {"timeout": 0})
        wait_until(lambda: shows("shutoff"), 20, "the VM shut off in the metrics")
        agent.post("/v1/vms/test/start", {})
        wait_until(lambda: shows("running"), 20, "the VM running again in the metrics")
    finally:
        alone.stop()


def test_metrics_listen_in_use_is_a_one_line_refusal(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        listen = ["--metrics-listen", f"127.0.0.1:{port}"]
        agent = Mesh(tmp_path).start_agent("n9", listen, wait=False)
        assert agent.proc.wait(timeout=30) == 1
    assert f"metrics_listen 127.0.0.1:{port}" in agent.log()


def test_metrics_off_serves_no_metrics(tmp_path: Path) -> None:
    alone = Mesh(tmp_path)  # a mesh of its own: the shared one must not see it come and go
    try:
        agent = alone.start_agent("n8", ["--no-metrics"])
        status, _ = scrape_socket(agent)
        assert status == 404
        assert agent.status()["node_id"] == "n8"  # the rest of the API is there
    finally:
        alone.stop()


def test_prometheus_scrapes_the_mesh_and_sees_a_member_fail(
    mesh: tuple[Mesh, dict[str, int]], tmp_path: Path
) -> None:
    agents, ports = mesh
    targets = {node: f"127.0.0.1:{port}" for node, port in ports.items()}
    with running_prometheus(tmp_path, list(targets.values())) as prometheus:
        prometheus.wait_for(
            lambda: (
                prometheus.values('novacron_members{state="alive"}')
                == {f"instance={t},job=novacron-agent,state=alive": 3.0 for t in targets.values()}
            ),
            30,
            "three agents each counting three alive members",
        )
        for expr in dashboard_queries():  # every panel's query parses and runs
            prometheus.query(expr)
        prometheus.wait_for(
            lambda: prometheus.values("novacron:members_alive:min") == {"": 3.0},
            30,
            "the recording rule at 3",
        )
        kill(agents["n3"])
        prometheus.wait_for(
            lambda: (
                prometheus.values('novacron:member_dead:max{member="n3"}') == {"member=n3": 1.0}
            ),
            60,
            "n3 dead as the surviving agents report it",
        )
        assert prometheus.values(f'up{{instance="{targets["n3"]}"}}') == {
            f"instance={targets['n3']},job=novacron-agent": 0.0
        }
        alive = prometheus.values('novacron_members{state="alive"}')
        assert alive == {
            f"instance={targets[n]},job=novacron-agent,state=alive": 2.0 for n in ("n1", "n2")
        }
        prometheus.wait_for(
            lambda: any(
                a["labels"].get("alertname") == "NovaCronMemberDead"
                and a["labels"].get("member") == "n3"
                for a in prometheus.api("alerts")["alerts"]
            ),
            30,
            "NovaCronMemberDead pending for n3",
        )
