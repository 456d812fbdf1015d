"""NovaCron's Grafana dashboards, built with Grafana's own foundation SDK.

`python observability/grafana/build.py` writes one JSON file per dashboard
beside this script; tests/test_observability.py checks that the checked-in files
are what this script builds, and runs every panel's query through a real
Prometheus scraping real agents. Import the JSON files in Grafana (Dashboards,
New, Import) and pick the Prometheus data source that scrapes the agents.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

from grafana_foundation_sdk.builders.dashboard import Dashboard, DatasourceVariable, Row
from grafana_foundation_sdk.builders.prometheus import Dataquery
from grafana_foundation_sdk.builders.stat import Panel as Stat
from grafana_foundation_sdk.builders.timeseries import Panel as Timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef

HERE = Path(__file__).resolve().parent
SOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
RUNNING = 'novacron_vmi_migrations_running{direction="outbound"}'


def _query(expr: str, legend: str = "") -> Dataquery:
    query = Dataquery().expr(expr).datasource(SOURCE)
    return query.legend_format(legend) if legend else query


def _series(title: str, unit: str, *queries: tuple[str, str]) -> Timeseries:
    panel = Timeseries().title(title).unit(unit).datasource(SOURCE).height(8).span(12)
    for index, (expr, legend) in enumerate(queries):
        panel = panel.with_target(_query(expr, legend).ref_id(chr(ord("A") + index)))
    return panel


def _stat(title: str, expr: str, unit: str = "none") -> Stat:
    panel = Stat().title(title).unit(unit).datasource(SOURCE).height(4).span(6)
    return panel.with_target(_query(expr).ref_id("A"))


def _dashboard(uid: str, title: str) -> Dashboard:
    return (
        Dashboard(title)
        .uid(uid)
        .tags(["novacron"])
        .refresh("30s")
        .time("now-1h", "now")
        .with_variable(DatasourceVariable("datasource").label("Prometheus").type("prometheus"))
    )


def mesh_health() -> Dashboard:
    return (
        _dashboard("novacron-mesh", "NovaCron / Mesh health")
        .with_row(Row("Members"))
        .with_panel(_stat("Agents scraped up", 'sum(up{job="novacron-agent"})'))
        .with_panel(_stat("Fewest alive members seen", "novacron:members_alive:min"))
        .with_panel(_stat("Members dead", "sum(novacron:member_dead:max)"))
        .with_panel(_stat("Members suspect", 'max(novacron_members{state="suspect"})'))
        .with_panel(
            _series(
                "Members by state (per agent)",
                "none",
                ("novacron_members", "{{instance}} {{state}}"),
            )
        )
        .with_panel(
            _series(
                "Probes and failures",
                "ops",
                ("rate(novacron_membership_probes_sent_total[5m])", "{{instance}} probes"),
                ("rate(novacron_membership_probes_failed_total[5m])", "{{instance}} failed"),
                (
                    "rate(novacron_membership_suspicions_started_total[5m])",
                    "{{instance}} suspected",
                ),
                ("rate(novacron_membership_refutations_total[5m])", "{{instance}} refutations"),
            )
        )
        .with_row(Row("Gossip"))
        .with_panel(
            _series(
                "Gossip traffic",
                "Bps",
                ("rate(novacron_gossip_bytes_sent_total[5m])", "{{instance}} out"),
                ("rate(novacron_gossip_bytes_received_total[5m])", "{{instance}} in"),
            )
        )
        .with_panel(
            _series(
                "Frames dropped and connections refused",
                "ops",
                (
                    "sum by (instance, reason) (rate(novacron_gossip_frames_dropped_total[5m]))",
                    "{{instance}} {{reason}}",
                ),
                ("rate(novacron_gossip_connections_refused_total[5m])", "{{instance}} refused"),
            )
        )
        .with_panel(
            _series(
                "Agent memory",
                "bytes",
                ('process_resident_memory_bytes{job="novacron-agent"}', "{{instance}}"),
            )
        )
        .with_panel(
            _series(
                "Oldest record of an alive member (per agent)",
                "s",
                ("novacron_record_age_max_seconds", "{{instance}}"),
            )
        )
        .with_panel(
            _series(
                "Certificate expires in",
                "s",
                ("novacron_certificate_expiry_timestamp_seconds - time()", "{{instance}}"),
            )
        )
    )


def migrations() -> Dashboard:
    return (
        _dashboard("novacron-migrations", "NovaCron / Migrations")
        .with_row(Row("Now"))
        .with_panel(_stat("Running (outbound)", f"sum({RUNNING})"))
        .with_panel(_stat("Failure ratio (15 min)", "novacron:migration_failures:ratio_rate15m",
                          "percentunit"))
        .with_panel(_stat("Drains in progress", "sum(novacron_drain_active)"))
        .with_panel(_stat("VMs left to drain", 'sum(novacron_drain_vms{status="running"})'))
        .with_row(Row("History"))
        .with_panel(
            _series("Migrations ended, by outcome", "ops",
                    ("novacron:migrations:rate5m", "{{outcome}}"))
        )
        .with_panel(
            _series(
                "Duration (p50, p95)",
                "s",
                ("histogram_quantile(0.5, sum by (le) "
                 "(rate(novacron_vmi_migration_duration_seconds_bucket[15m])))", "p50"),
                ("histogram_quantile(0.95, sum by (le) "
                 "(rate(novacron_vmi_migration_duration_seconds_bucket[15m])))", "p95"),
            )
        )
        .with_panel(
            _series(
                "Guest downtime at the switchover (p50, p95)",
                "s",
                ("histogram_quantile(0.5, sum by (le) "
                 "(rate(novacron_vmi_migration_downtime_seconds_bucket[15m])))", "p50"),
                ("histogram_quantile(0.95, sum by (le) "
                 "(rate(novacron_vmi_migration_downtime_seconds_bucket[15m])))", "p95"),
            )
        )
        .with_panel(
            _series(
                "Data sent per migration (mean), and in all",
                "bytes",
                ("sum(rate(novacron_vmi_migration_data_processed_bytes_sum[15m])) / "
                 "sum(rate(novacron_vmi_migration_data_processed_bytes_count[15m]))", "mean"),
                ("sum(increase(novacron_vmi_migration_data_processed_bytes_sum[15m]))",
                 "all (15 min)"),
            )
        )
        .with_panel(
            _series(
                "Refusals, escalations, reconciles",
                "ops",
                ("sum by (side) (rate(novacron_vmi_migrations_refused_total[5m]))",
                 "refused ({{side}})"),
                ("sum(rate(novacron_vmi_migration_escalations_total[5m]))", "escalated"),
                ("sum(rate(novacron_vmi_migration_reconciles_total[5m]))", "reconciled"),
            )
        )
        .with_panel(
            _series("Drain", "none", ("novacron_drain_vms", "{{instance}} {{status}}"))
        )
    )  # fmt: skip


def balance() -> Dashboard:
    return (
        _dashboard("novacron-balance", "NovaCron / Balance")
        .with_row(Row("Hosts"))
        .with_panel(_stat("Hosts over their line", "sum(novacron_host_over_line)"))
        .with_panel(_stat("Rebalancing paused", "max(novacron_rebalance_paused)"))
        .with_panel(
            _series(
                "CPU utilization against the mean",
                "percentunit",
                ("novacron_host_cpu_utilization_ratio", "{{instance}}"),
                ("avg(novacron_mesh_cpu_utilization_mean_ratio)", "mesh mean"),
            )
        )
        .with_panel(
            _series(
                "Above the mean",
                "percentunit",
                ("novacron:host_cpu_utilization_above_mean:ratio", "{{instance}}"),
            )
        )
        .with_row(Row("Rebalancer and VMs"))
        .with_panel(
            _series(
                "Rebalancer moves",
                "ops",
                ("sum(rate(novacron_rebalance_moves_started_total[5m]))", "started"),
                ("sum(rate(novacron_rebalance_moves_refused_total[5m]))", "refused"),
                ("sum(rate(novacron_rebalance_rounds_total[5m]))", "rounds"),
            )
        )
        .with_panel(
            _series(
                "VMs by state",
                "none",
                ("sum by (phase) (novacron_vmis)", "{{phase}}"),
            )
        )
        .with_panel(
            _series(
                "VM CPU use (top 10)",
                "none",
                ("topk(10, novacron_vmi_cpu_usage_cores)", "{{instance}} {{name}}"),
            )
        )
        .with_panel(
            _series(
                "VM memory dirty rate (top 10)",
                "Bps",
                ("topk(10, novacron_vmi_dirty_rate_bytes_per_second)", "{{instance}} {{name}}"),
            )
        )
    )


REQUESTS = "novacron_coordinator_http_request_duration_seconds"


def federation() -> Dashboard:
    return (
        _dashboard("novacron-federation", "NovaCron / Federation")
        .with_row(Row("Sites"))
        .with_panel(_stat("Site links up",
                          "sum(max by (site) (novacron_coordinator_site_link_up))"))
        .with_panel(_stat("Site links down",
                          "count(max by (site) (novacron_coordinator_site_link_up) == 0)"))
        .with_panel(_stat("Commands pending", "sum(novacron_coordinator_commands_pending)"))
        .with_panel(_stat("Coordinators leading", "sum(novacron_coordinator_leader)"))
        .with_panel(
            _series("Site links (1: up)", "none",
                    ("max by (site) (novacron_coordinator_site_link_up)", "{{site}}"))
        )
        .with_panel(
            _series("Commands not done, by site", "none",
                    ("sum by (site, state) (novacron_coordinator_commands_pending)",
                     "{{site}} {{state}}"))
        )
        .with_row(Row("API and database"))
        .with_panel(
            _series("Requests by route and code", "reqps",
                    (f"sum by (route, code) (rate({REQUESTS}_count[5m]))", "{{route}} {{code}}"))
        )
        .with_panel(
            _series("Request duration p95 by route", "s",
                    (f"histogram_quantile(0.95, sum by (route, le) (rate({REQUESTS}_bucket[5m])))",
                     "{{route}}"))
        )
        .with_panel(
            _series(
                "Database latency p95 by kind",
                "s",
                ("histogram_quantile(0.95, sum by (operation, le) "
                 "(rate(novacron_coordinator_database_duration_seconds_bucket[5m])))",
                 "{{operation}}"),
            )
        )
    )  # fmt: skip


DASHBOARDS = {
    "mesh-health": mesh_health,
    "migrations": migrations,
    "balance": balance,
    "federation": federation,
}


def rendered() -> Iterator[tuple[Path, str]]:
    """Each dashboard's file and its JSON, as checked in."""
    encoder = JSONEncoder(sort_keys=True, indent=2)
    for name, build in DASHBOARDS.items():
        model = build().build()
        for number, panel in enumerate(model.panels or [], start=1):
            panel.id_val = number  # Grafana wants ids unique within a dashboard
        yield HERE / f"{name}.json", encoder.encode(model) + "\n"


def main() -> int:
    for path, text in rendered():
        path.write_text(text)
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
