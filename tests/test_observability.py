"""The alerting and recording rules, their unit tests and runbooks, and the dashboards.

`promtool` checks and unit-tests the rules as Prometheus would load them; every
alert must say how bad it is, point at its runbook section, and have a unit
test that expects it to fire. The dashboards must be what their builder
(Grafana's foundation SDK) makes. The queries themselves run against real
agents in tests/test_metrics_agents.py.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import prometheus_client
import prometheus_client.core as client
import pytest
import yaml
from prometheus_client.process_collector import ProcessCollector as ClientProcessCollector

from novacron.agent.config import ConfigError, load, metrics_address
from novacron.agent.core.events import StartLibvirtMigration
from novacron.agent.core.membership.stats import Histogram
from novacron.agent.core.migration.saga import JobTotals
from novacron.agent.core.rebalancing.planner import RebalanceConfig, over_line, standing
from novacron.agent.metrics import (
    WrittenFamilies,
    buckets,
    exposition,
    membership_families,
    migration_families,
    vm_families,
    written_migration_histograms,
    written_vm_families,
)
from novacron.agent.migrator import job_totals
from novacron.agent.prometheus import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    ProcessCollector,
)
from novacron.protocol.messages import Leave, NodeRecord, RecordUpdate, Resources, VmSummary
from novacron.simulations.migrations import Mesh, host, seen, vm
from tests.core_harness import node_in, sign, signed, snapshot_of
from tests.prometheus_server import RULES, promtool

ROOT = Path(__file__).resolve().parent.parent
RULE_TESTS = ROOT / "observability" / "prometheus" / "tests" / "rules_test.yml"
RUNBOOKS = ROOT / "docs" / "runbooks.md"
GRAFANA = ROOT / "observability" / "grafana"


def alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_promtool_checks_the_rules() -> None:
    output = promtool("check", "rules", str(RULES))
    assert "SUCCESS" in output


def test_promtool_unit_tests_of_the_rules_pass() -> None:
    output = promtool("test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert "SUCCESS" in output


def test_every_alert_has_severity_runbook_and_a_test_that_fires_it() -> None:
    anchors = {
        re.sub(r"[^a-z0-9-]", "", line[3:].strip().lower().replace(" ", "-"))
        for line in RUNBOOKS.read_text().splitlines()
        if line.startswith("## ")
    }
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fired = {
        case["alertname"]
        for test in tests
        for case in test.get("alert_rule_test", [])
        if case["exp_alerts"]
    }
    names = [rule["alert"] for rule in alerts()]
    assert {"NovaCronMemberDead", "NovaCronMigrationFailureRate", "NovaCronHostOverLine",
            "NovaCronCertificateExpiringSoon", "NovaCronSiteLinkDown"} <= set(names)  # fmt: skip
    for rule in alerts():
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        page, _, anchor = rule["annotations"]["runbook_url"].partition("#")
        assert page == "docs/runbooks.md", rule["alert"]
        assert anchor == rule["alert"].lower() and anchor in anchors, rule["alert"]
        assert rule["alert"] in fired, f"no unit test expects {rule['alert']} to fire"


def test_dashboards_are_what_the_builder_makes() -> None:
    import observability.grafana.build as build  # needs the test extra grafana-foundation-sdk

    rendered = dict(build.rendered())
    assert {p.name for p in rendered} == {
        "mesh-health.json",
        "migrations.json",
        "balance.json",
        "federation.json",
    }
    for path, text in rendered.items():
        assert path.read_text() == text, f"{path.name} is stale: python {build.__file__}"
        dashboard = json.loads(text)
        panels = dashboard["panels"]
        assert len({p["id"] for p in panels}) == len(panels), path.name
        for panel in panels:
            if panel["type"] == "row":
                continue
            refs = [t["refId"] for t in panel["targets"]]
            assert refs and len(set(refs)) == len(refs), (path.name, panel["title"])
            assert all(t["expr"] for t in panel["targets"]), (path.name, panel["title"])


def test_histogram_counts_into_cumulative_buckets() -> None:
    histogram = Histogram((1, 5))
    for value in (0.5, 1, 3, 7, 100):
        histogram.observe(value)
    assert histogram.cumulative() == [(1.0, 2), (5.0, 3), (float("inf"), 5)]
    assert (histogram.count, histogram.sum) == (5, 111.5)


def test_histogram_refuses_unordered_bounds() -> None:
    for bounds in ((), (5, 1), (1, 1)):
        try:
            Histogram(bounds)
        except ValueError:
            continue
        raise AssertionError(f"accepted {bounds}")


def _host(node_id: str, load: float) -> NodeRecord:
    vm = VmSummary("vm-" + node_id, state="running", vcpus=1, memory_mib=256, cpu_load=load)
    return NodeRecord(
        node_id, 1, capacity=Resources(4, 8192), usage=Resources(load, 256), vms=(vm,)
    )


def test_standing_is_the_line_over_line_decides_on() -> None:
    records = {"a": _host("a", 3.6), "b": _host("b", 0.4), "c": _host("c", 0.4)}
    alive = set(records)
    found = standing("a", records, alive, set())
    assert found is not None and found.over and over_line("a", records, alive, set())
    assert found.line == found.mean + RebalanceConfig().trigger
    cold = standing("b", records, alive, set())
    assert cold is not None and not cold.over and not over_line("b", records, alive, set())
    assert standing("a", {"a": records["a"]}, {"a"}, set()) is None  # alone: nothing applies


def test_metrics_listen_must_be_an_address_and_port_with_metrics_on() -> None:
    assert metrics_address(load({}, environ={}, config_file="/dev/null")) is None
    listen = load({"metrics_listen": "[::1]:9101"}, environ={}, config_file="/dev/null")
    assert metrics_address(listen) == ("::1", 9101)
    env = load({}, environ={"NOVACRON_METRICS_LISTEN": "0.0.0.0:9101"}, config_file="/dev/null")
    assert metrics_address(env) == ("0.0.0.0", 9101)
    for bad in ("9101", "host:", ":9101", "host:0", "host:70000", "host:port"):
        with pytest.raises(ConfigError, match="is not ADDR:PORT"):
            load({"metrics_listen": bad}, environ={}, config_file="/dev/null")
    with pytest.raises(ConfigError, match="needs metrics on"):
        load(
            {"metrics_listen": "127.0.0.1:9101", "metrics": False},
            environ={},
            config_file="/dev/null",
        )


class _Families:
    """Families of every kind the agent exposes, with label values that need escaping."""

    def collect(self) -> Iterator[Metric]:
        vms = tuple(
            VmSummary(name, state="running", vcpus=2, memory_mib=3 << 10, cpu_load=0.25)
            for name in ("plain", 'quote"d', "back\\slash", "new\nline", "ünï")
        )
        yield from vm_families(NodeRecord("n1", 1, vms=vms))
        counter = CounterMetricFamily("c", "help with \\ and\nnewline", labels=["a", "b"])
        counter.add_metric(["x", "y"], 3)
        counter.add_metric(["z", ""], 1e21)
        yield counter
        yield GaugeMetricFamily("g", "big and small", value=1.7988997282826102e09)
        yield GaugeMetricFamily("g_inf", "not a number", value=float("nan"))
        histogram = HistogramMetricFamily("h_seconds", "durations", labels=["outcome"])
        durations = Histogram((0.5, 1, 2.5))
        for value in (0.1, 0.7, 3):
            durations.observe(value)
        histogram.add_metric(["committed"], buckets(durations), durations.sum)
        yield histogram


class _Snapshot:
    """Families collected once, yielded unchanged on every scrape."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        yield from self._families


def test_exposition_is_byte_for_byte_what_prometheus_client_writes() -> None:
    registry = CollectorRegistry()
    registry.register(_Families())
    # The process families read live values (CPU seconds, RSS); both writers get one snapshot.
    registry.register(_Snapshot(list(ProcessCollector().collect())))
    ours = exposition(registry)
    assert ours == prometheus_client.generate_latest(registry)  # type: ignore[arg-type]
    assert b'name="quote\\"d"' in ours and b'name="new\\nline"' in ours


def test_the_agents_families_are_prometheus_clients_for_the_same_calls() -> None:
    """The agent's own family classes (it does not import prometheus_client) name their
    samples, labels and buckets as the library's do."""
    ours: list[Any] = [
        GaugeMetricFamily("g", "gauge", value=2.5),
        CounterMetricFamily("c_total", "counter", labels=["a"]),
        HistogramMetricFamily("h_seconds", "histogram", labels=["outcome"]),
    ]
    theirs: list[Any] = [
        client.GaugeMetricFamily("g", "gauge", value=2.5),
        client.CounterMetricFamily("c_total", "counter", labels=["a"]),
        client.HistogramMetricFamily("h_seconds", "histogram", labels=["outcome"]),
    ]
    for families in (ours, theirs):
        families[1].add_metric(["x"], 3)
        families[2].add_metric(["ok"], [("0.5", 1), ("+Inf", 4)], 7.5)
    for mine, library in zip(ours, theirs, strict=True):
        assert (mine.name, mine.type, mine.documentation) == (
            library.name,
            library.type,
            library.documentation,
        )
        assert [tuple(s[:4]) for s in mine.samples] == [tuple(s[:4]) for s in library.samples]


def test_the_process_families_are_the_librarys() -> None:
    mine = {f.name: f for f in ProcessCollector().collect()}
    library = {f.name: f for f in ClientProcessCollector(registry=None).collect()}
    assert set(mine) == set(library) and len(mine) == 6
    for name, family in mine.items():
        assert (family.type, family.documentation) == (
            library[name].type,
            library[name].documentation,
        )
        assert [s.name for s in family.samples] == [s.name for s in library[name].samples]
    rss = "process_resident_memory_bytes"
    assert abs(mine[rss].samples[0].value - library[rss].samples[0].value) < 64 << 20


class _OwnVms:
    """The per-VM families of whatever record `own` holds now, as the agent's collector
    has them: through `WrittenFamilies`."""

    def __init__(self, written: WrittenFamilies, own: NodeRecord) -> None:
        self.written = written
        self.own = own

    def collect(self) -> Iterator[Metric]:
        yield from written_vm_families(self.written, self.own)


def test_the_per_vm_families_written_ahead_follow_every_new_inventory_sample() -> None:
    running = VmSummary("web", state="running", vcpus=2, memory_mib=512, cpu_load=0.5)
    written = WrittenFamilies()
    own = _OwnVms(written, NodeRecord("n1", 1, vms=(running, VmSummary("db", state="running"))))
    registry = CollectorRegistry()
    registry.register(own)
    assert _sample(exposition(registry, written.text), 'novacron_vmis{phase="running"}') == 2
    for version, web in enumerate(
        (
            dataclasses.replace(running, state="paused", cpu_load=0.0),
            dataclasses.replace(running, cpu_load=1.5),  # one value of one VM
        ),
        start=2,
    ):
        own.own = dataclasses.replace(own.own, version=version, vms=(web, own.own.vms[1]))
        if version == 3:
            written_vm_families(written, own.own)  # as the daemon does when the inventory publishes
        text = exposition(registry, written.text)
        paused = int(web.state == "paused")
        assert _sample(text, 'novacron_vmis{phase="paused"}') == paused
        assert _sample(text, 'novacron_vmis{phase="running"}') == 2 - paused
        assert _sample(text, 'novacron_vmi_cpu_usage_cores{name="web"}') == web.cpu_load
        assert text == prometheus_client.generate_latest(registry)  # type: ignore[arg-type]
    own.own = dataclasses.replace(own.own, version=4, vms=())  # every VM gone
    text = exposition(registry, written.text)
    assert 'name="web"' not in text.decode() and 'name="db"' not in text.decode()
    assert _sample(text, 'novacron_vmis{phase="running"}') == 0


def _families(*families: Metric) -> bytes:
    registry = CollectorRegistry()
    registry.register(_Snapshot(list(families)))
    return exposition(registry)


def _sample(text: bytes, series: str) -> float:
    for line in text.decode().splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    raise AssertionError(f"no {series} in the exposition")


def _migrate(mesh: Mesh, name: str, ends_at: float, totals: JobTotals, error: str = "") -> None:
    """VM `name` asked to move from h1 to h2, its libvirt job ending at `ends_at` (failed
    with `error`, if any) with `totals`."""
    mesh.request("h1", name, "h2")
    migration = mesh.of("h1", StartLibvirtMigration)[-1].migration_id
    mesh.now = ends_at
    ended = mesh.core("h1").migration_finished(migration, not error, error, mesh.now, totals)
    mesh.absorb("h1", ended)
    mesh.flush()


def test_the_migration_histograms_written_ahead_count_a_migration_that_ended() -> None:
    mesh = Mesh([host("h1", vm("vm1")), host("h2")])
    core = mesh.core("h1")
    written = WrittenFamilies()

    class Histograms:
        def collect(self) -> Iterator[Metric]:
            yield from written_migration_histograms(written, core)

    registry = CollectorRegistry()
    registry.register(Histograms())
    committed = 'novacron_vmi_migration_duration_seconds_count{outcome="committed"}'
    assert _sample(exposition(registry, written.text), committed) == 0
    _migrate(mesh, "vm1", 2.0, JobTotals(data_bytes=1 << 20, downtime_s=0.01))
    text = exposition(registry, written.text)
    assert _sample(text, committed) == 1
    assert _sample(text, "novacron_vmi_migration_downtime_seconds_count") == 1
    assert text == prometheus_client.generate_latest(registry)  # type: ignore[arg-type]


def test_a_migrations_downtime_and_bytes_are_observed_when_its_saga_ends() -> None:
    mesh = Mesh([host("h1", vm("vm1"), vm("vm2")), host("h2")])
    core = mesh.core("h1")
    _migrate(mesh, "vm1", 3.0, JobTotals(data_bytes=300 << 20, downtime_s=0.042))
    job = JobTotals(data_bytes=100 << 20, downtime_s=0.5)  # a pause, but the VM stayed
    _migrate(mesh, "vm2", 3.0, job, error="link cut")
    # Not counted until the saga ends: the failed job's VM is looked for first.
    assert core.transferred["aborted"].count == 0
    mesh.call("h1", "vm_presence", "vm2", seen("h1"))

    text = _families(*migration_families(core))
    sent = "novacron_vmi_migration_data_processed_bytes"
    assert _sample(text, f'{sent}_count{{outcome="committed"}}') == 1
    assert _sample(text, f'{sent}_sum{{outcome="committed"}}') == 300 << 20
    assert _sample(text, f'{sent}_bucket{{le="268435456.0",outcome="committed"}}') == 0
    assert _sample(text, f'{sent}_bucket{{le="1073741824.0",outcome="committed"}}') == 1
    assert _sample(text, f'{sent}_sum{{outcome="aborted"}}') == 100 << 20
    assert _sample(text, "novacron_vmi_migration_downtime_seconds_count") == 1
    assert _sample(text, "novacron_vmi_migration_downtime_seconds_sum") == 0.042
    assert _sample(text, 'novacron_vmi_migration_downtime_seconds_bucket{le="0.05"}') == 1
    assert _sample(text, 'novacron_vmi_migration_downtime_seconds_bucket{le="0.025"}') == 0
    assert promtool("check", "metrics", stdin=text).strip() == ""


def test_job_totals_come_from_a_finished_jobs_statistics_only() -> None:
    done = {"type": libvirt.VIR_DOMAIN_JOB_COMPLETED, "data_processed": 5 << 20, "downtime": 37}
    assert job_totals(done) == JobTotals(data_bytes=5 << 20, downtime_s=0.037)
    failed = {"type": libvirt.VIR_DOMAIN_JOB_FAILED, "data_processed": 7}
    assert job_totals(failed) == JobTotals(data_bytes=7, downtime_s=None)
    running = {"type": libvirt.VIR_DOMAIN_JOB_UNBOUNDED, "data_processed": 7, "downtime": 30}
    assert job_totals(running) is None  # a running job's downtime is an estimate
    assert job_totals({"type": libvirt.VIR_DOMAIN_JOB_NONE}) is None


def test_record_age_is_exported_per_member_and_as_the_oldest_alive() -> None:
    node = node_in(snapshot_of(3))
    node.receive("n002", RecordUpdate(signed("n001", 3)), 1.0)
    node.receive("n001", RecordUpdate(signed("n002", 3)), 7.0)
    text = _families(*membership_families(node, 10.0))
    assert _sample(text, 'novacron_member_record_age_seconds{member="n001"}') == 9.0
    assert _sample(text, 'novacron_member_record_age_seconds{member="n002"}') == 3.0
    assert _sample(text, "novacron_record_age_max_seconds") == 9.0
    node.receive("n002", sign(Leave("n001", 1)), 11.0)  # gone: its record may age freely
    text = _families(*membership_families(node, 12.0))
    assert _sample(text, 'novacron_member_record_age_seconds{member="n001"}') == 11.0
    assert _sample(text, "novacron_record_age_max_seconds") == 5.0
    assert promtool("check", "metrics", stdin=text).strip() == ""
