"""The host record's typed fields: mesh-wide state the codec checks, not string labels.

A record carrying each field round-trips; a value out of its range, and a
label under the reserved `novacron/` prefix, are refused by the codec with
the field and the reason; a record that lacks the fields reads as their
defaults (no migrations, rebalancing not paused, not a gateway candidate,
libvirt reachable).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
from typing import Any

import msgpack
import pytest

from novacron.agent import client
from novacron.agent.cli import mesh
from novacron.agent.cli.common import Output
from novacron.agent.config import ConfigError, load
from novacron.agent.view import _record_dict
from novacron.protocol import codec
from novacron.protocol import messages as m
from novacron.protocol.errors import InvalidField, MalformedRecord, UnsupportedVersion
from novacron.protocol.keys import NodeKey
from novacron.protocol.records import sign_record, verify_record

BASE = m.NodeRecord("edge-1", 3, labels={"site": "lyon"}, addresses=("198.18.0.1",))


@pytest.mark.parametrize(
    "fields",
    [
        {"migrations_out": 2},
        {"migrations_in": 1},
        {"migrations_out": m.MAX_MIGRATIONS, "migrations_in": m.MAX_MIGRATIONS},
        {"rebalance": m.RebalanceSetting(paused=True, since=1_700_000_000.25)},
        {"rebalance": m.RebalanceSetting(paused=False, since=1_700_000_001.0)},
        {"gateway_candidate": True},
        {"libvirt_unreachable_since": 1_800_000_000.5},
        {"libvirt_unreachable_since": m.MAX_WALL_TIME},
    ],
    ids=repr,
)
def test_a_record_carrying_each_field_round_trips(fields: dict[str, Any]) -> None:
    record = dataclasses.replace(BASE, **fields)
    assert codec.unpack_struct(m.NodeRecord, codec.pack_struct(record)) == record


def test_a_record_without_the_fields_reads_as_their_defaults() -> None:
    """What an agent of this version makes of a record that never set them."""
    wire = {"node_id": "edge-1", "version": 3, "labels": {"site": "lyon"}}
    record = codec.unpack_struct(m.NodeRecord, msgpack.packb(wire))
    assert (record.migrations_out, record.migrations_in) == (0, 0)
    assert record.rebalance == m.RebalanceSetting(paused=False, since=0.0)
    assert record.gateway_candidate is False
    assert record.libvirt_unreachable_since == 0.0


def test_fields_at_their_defaults_add_no_bytes() -> None:
    """A quiet host's record is as small as before the fields existed."""
    plain = {
        "node_id": "edge-1",
        "version": 3,
        "labels": {"site": "lyon"},
        "addresses": ["198.18.0.1"],
    }
    assert codec.pack_struct(BASE) == msgpack.packb(plain, use_bin_type=True)


def _refusal(wire: dict[str, Any]) -> str:
    base = {"node_id": "edge-1", "version": 3}
    with pytest.raises(InvalidField) as info:
        codec.unpack_struct(m.NodeRecord, msgpack.packb({**base, **wire}, use_bin_type=True))
    return str(info.value)


@pytest.mark.parametrize(
    ("wire", "reason"),
    [
        ({"migrations_out": -1}, "NodeRecord.migrations_out: -1 is outside 0..1024"),
        ({"migrations_out": 10**9}, "NodeRecord.migrations_out: 1000000000 is outside 0..1024"),
        ({"migrations_in": 1025}, "NodeRecord.migrations_in: 1025 is outside 0..1024"),
        ({"migrations_out": "2"}, "NodeRecord.migrations_out: expected an integer, got str"),
        ({"migrations_in": 1.0}, "NodeRecord.migrations_in: expected an integer, got float"),
        ({"rebalance": {"paused": "yes"}}, "NodeRecord.rebalance.paused: expected a boolean"),
        ({"rebalance": "paused@1700000000"}, "NodeRecord.rebalance: expected a map, got str"),
        ({"rebalance": {"since": -5.0}}, "NodeRecord.rebalance.since: -5.0 is outside 0..2534"),
        ({"rebalance": {"since": 1e300}}, "NodeRecord.rebalance.since: 1e+300 is outside 0..253"),
        ({"rebalance": {"since": float("nan")}}, "rebalance.since: expected a finite number"),
        ({"gateway_candidate": 1}, "NodeRecord.gateway_candidate: expected a boolean, got int"),
        ({"gateway_candidate": "1"}, "NodeRecord.gateway_candidate: expected a boolean, got str"),
        ({"libvirt_unreachable_since": -1}, "libvirt_unreachable_since: -1.0 is outside 0..2534"),
        (
            {"libvirt_unreachable_since": "2026-12-03T10:00:00Z"},
            "NodeRecord.libvirt_unreachable_since: expected a number, got str",
        ),
    ],
    ids=repr,
)
def test_each_out_of_range_value_is_refused_with_its_reason(
    wire: dict[str, Any], reason: str
) -> None:
    assert reason in _refusal(wire)


@pytest.mark.parametrize(
    "label",
    ["novacron/migrations-out", "novacron/rebalance", "novacron/gateway", "novacron/anything"],
)
def test_a_host_label_under_the_reserved_prefix_is_refused(label: str) -> None:
    reason = _refusal({"labels": {"site": "lyon", label: "1"}})
    assert f"NodeRecord.labels[{label!r}]: 'novacron/' keys are reserved" in reason


def test_user_labels_stay_free_form() -> None:
    labels = {"site": "lyon", "novacron": "x", "Novacron/x": "y", "rack/novacron/": "", "": ""}
    record = dataclasses.replace(BASE, labels=labels)
    assert codec.unpack_struct(m.NodeRecord, codec.pack_struct(record)).labels == labels


def test_vm_labels_keep_the_prefix_for_placement_rules() -> None:
    """Affinity groups are labels on VMs, set by operators: the reservation is the host's."""
    vm = m.VmSummary("web", labels={"novacron/anti-affinity": "db"})
    record = dataclasses.replace(BASE, vms=(vm,))
    assert codec.unpack_struct(m.NodeRecord, codec.pack_struct(record)) == record


def test_a_signed_record_with_a_reserved_label_is_malformed_whoever_signed_it() -> None:
    """A peer (or an older agent) that signs the old label form gets its record refused."""
    key = NodeKey.generate()
    forged = dataclasses.replace(BASE, labels={"novacron/rebalance": "paused@9999999999"})
    with pytest.raises(MalformedRecord, match="'novacron/' keys are reserved"):
        verify_record(sign_record(key, forged), key.signing.public_key())


def test_a_frame_of_the_label_era_is_refused_at_the_envelope() -> None:
    """A version 2 agent's frames are refused by version, before any record is read."""
    old = msgpack.packb([2, "nack", "edge-1", {"seq": 1}])
    with pytest.raises(UnsupportedVersion, match="version 2; this node speaks 3"):
        codec.decode(old)


def test_an_operator_label_under_the_reserved_prefix_stops_the_agent_with_the_reason() -> None:
    """Peers would refuse every record the agent signs: refused at start, not in the mesh."""
    flags = {"labels": {"site": "lyon", "novacron/gateway": "1"}}
    reason = "labels novacron/gateway: the prefix novacron/ is reserved"
    with pytest.raises(ConfigError, match=reason):
        load(flags, environ={}, config_file="/dev/null")
    environ = {"NOVACRON_LABELS": "site=lyon,novacron/rebalance=paused@1"}
    with pytest.raises(ConfigError, match="labels novacron/rebalance: the prefix"):
        load({}, environ=environ, config_file="/dev/null")
    assert load({"labels": {"site": "lyon"}}, environ={}, config_file="/dev/null").labels == {
        "site": "lyon"
    }


def test_nova_host_show_says_what_the_fields_say(monkeypatch: pytest.MonkeyPatch) -> None:
    """The state that used to show among the labels is shown on its own lines."""
    record = dataclasses.replace(
        BASE,
        migrations_out=1,
        migrations_in=2,
        rebalance=m.RebalanceSetting(paused=True, since=1_796_292_000.0),
        gateway_candidate=True,
        libvirt_unreachable_since=1_796_292_060.0,
    )
    host = {"node_id": "edge-1", "state": "alive", "address": "198.18.0.1:7946"}
    answer = {**host, "record": json.loads(json.dumps(_record_dict(record)))}  # as the API sends
    monkeypatch.setattr(client, "get", lambda path, sock: answer)
    stdout = io.StringIO()
    args = argparse.Namespace(node_id="edge-1", socket="/nonexistent")
    assert mesh.show_host(args, Output(stdout=stdout)) == 0
    text = stdout.getvalue()
    assert "unreachable since 2026-12-03T10:01:00Z" in text
    assert "labels:    site=lyon\n" in text
    assert "migrating: 1 out, 2 in\n" in text
    assert "rebalance: paused since 2026-12-03T10:00:00Z\n" in text
    assert "gateway:   candidate\n" in text
