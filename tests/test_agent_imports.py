"""What an idle agent loads: features it may never use load their modules when
they start, so that every agent does not pay for them in memory (the 60 MB goal,
BENCHMARKS.md "The agent in the lab"; docs/decisions/0004-agent-footprint-libraries.md)."""

from __future__ import annotations

import json
import subprocess
import sys

# Loaded only by an agent that uses the feature: the NATS event stream, OTLP
# traces, the coordinator's site link; uuid (with platform) only by a KVM probe
# or a relayed site command. prometheus_client never: the agent writes its
# metrics itself (its import alone cost every agent 2.5 MiB).
NOT_AT_START = (
    "novacron.agent.event_stream",
    "novacron.agent.event_spool",
    "novacron.agent.nats_publish",
    "novacron.agent.otlp",
    "novacron.agent.tracing",
    "novacron.agent.gateway",
    "novacron.agent.core.federation.sitelink",
    "uuid",
    "prometheus_client",
)


def _loaded_after(code: str) -> set[str]:
    probe = f"{code}; import json, sys; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    )
    return set(json.loads(out.stdout))


def test_an_idle_agent_does_not_load_its_rarely_used_features() -> None:
    loaded = _loaded_after("import novacron.agent.daemon")
    assert sorted(loaded.intersection(NOT_AT_START)) == []


def test_metrics_do_not_load_the_event_stream_nor_prometheus_client() -> None:
    """Metrics are on by default; the event stream is not."""
    loaded = _loaded_after("import novacron.agent.daemon, novacron.agent.metrics")
    assert sorted(loaded.intersection(NOT_AT_START)) == []
