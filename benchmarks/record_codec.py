"""Benchmark: what signing and strict decoding cost on top of plain msgpack.

For one node record of about 1 KiB (a host with six VMs, one migration
out, rebalancing resumed once, a gateway candidate), in the same run:

- baseline: `msgpack.packb` / `msgpack.unpackb` of the record as a plain map;
- codec: `codec.encode` / `codec.decode` of a `RecordUpdate` frame (typed,
  limit- and type-checked), without signatures;
- signed: `sign_record` + `codec.encode`, and `codec.decode` + `verify_record`
  (Ed25519), the path every gossiped record takes.

Prints operations per second and the ratio to the baseline, the record's
size, and the size the same mesh state took as version 2's `novacron/`
labels; writes JSON.
Run: `.venv/bin/python -m benchmarks.record_codec [--seconds 1.0] [--json PATH]`
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import msgpack

from novacron.protocol import codec
from novacron.protocol.keys import NodeKey
from novacron.protocol.messages import (
    NodeRecord,
    RebalanceSetting,
    RecordUpdate,
    Resources,
    VmSummary,
)
from novacron.protocol.records import sign_record, verify_record


def sample_record() -> NodeRecord:
    """A realistic record of about 1 KiB: a host with six VMs."""
    vms = tuple(
        VmSummary(
            name=f"vm-{i:03d}",
            uuid=f"5f0c8a1e-0000-4000-8000-{i:012d}",
            state="running",
            vcpus=2,
            memory_mib=2048,
            cpu_load=0.4 * i,
            dirty_rate_mib_s=1.5,
            labels={"tenant": "acme"},
        )
        for i in range(6)
    )
    return NodeRecord(
        node_id="edge-lyon-017",
        version=4211,
        capacity=Resources(vcpus=32, memory_mib=131072, disk_gib=1800),
        usage=Resources(vcpus=9.5, memory_mib=12288, disk_gib=240.5),
        load=2.25,
        vms=vms,
        labels={"site": "lyon", "rack": "r3"},
        addresses=("198.18.0.17",),
        libvirt_uri="qemu:///system",
        migrations_out=1,
        rebalance=RebalanceSetting(paused=False, since=1_796_292_000.0),
        gateway_candidate=True,
    )


def label_form(record: NodeRecord) -> NodeRecord:
    """The same mesh state as protocol version 2 carried it: strings in reserved labels
    (encodable still; the codec now refuses to decode it). For the size comparison only."""
    setting = "paused" if record.rebalance.paused else "active"
    labels = {
        **record.labels,
        "novacron/migrations-out": str(record.migrations_out),
        "novacron/migrations-in": str(record.migrations_in),
        "novacron/rebalance": f"{setting}@{record.rebalance.since:.3f}",
        **({"novacron/gateway": "1"} if record.gateway_candidate else {}),
    }
    return dataclasses.replace(
        record,
        labels=labels,
        migrations_out=0,
        migrations_in=0,
        rebalance=RebalanceSetting(),
        gateway_candidate=False,
    )


def rate(operation: Callable[[], object], seconds: float, repeats: int = 5) -> float:
    """Median operations per second over `repeats` timed batches of ~`seconds` each."""
    batch = 1
    while True:  # double the batch until it takes a tenth of the budget
        start = time.perf_counter()
        for _ in range(batch):
            operation()
        elapsed = time.perf_counter() - start
        if elapsed > seconds / 10:
            break
        batch *= 2
    batch = max(1, round(batch * seconds / elapsed))
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(batch):
            operation()
        rates.append(batch / (time.perf_counter() - start))
    return statistics.median(rates)


def run(seconds: float) -> dict[str, Any]:
    record = sample_record()
    key = NodeKey.generate()
    public = key.signing.public_key()
    plain_map = codec.to_wire(record)  # the same content as a plain map
    plain_bytes: bytes = msgpack.packb(plain_map, use_bin_type=True)
    signed = sign_record(key, record)
    frame = codec.encode(RecordUpdate(signed), "edge-lyon-017")

    def verify_decode() -> NodeRecord:
        message = codec.decode(frame).message
        assert isinstance(message, RecordUpdate)
        return verify_record(message.signed, public)

    results = {
        "plain_encode": rate(lambda: msgpack.packb(plain_map, use_bin_type=True), seconds),
        "plain_decode": rate(lambda: msgpack.unpackb(plain_bytes, raw=False), seconds),
        "codec_encode": rate(lambda: codec.pack_struct(record), seconds),
        "codec_decode": rate(lambda: codec.unpack_struct(NodeRecord, signed.record), seconds),
        "sign_encode": rate(
            lambda: codec.encode(RecordUpdate(sign_record(key, record)), "edge-lyon-017"), seconds
        ),
        "decode_verify": rate(verify_decode, seconds),
    }
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "machine": f"{platform.node()} {platform.machine()} python {platform.python_version()}",
        "record_bytes": len(signed.record),
        "frame_bytes": len(frame),
        "label_form_record_bytes": len(codec.pack_struct(label_form(record))),
        "ops_per_second": results,
        "ratio_to_plain": {
            "codec_encode": results["plain_encode"] / results["codec_encode"],
            "codec_decode": results["plain_decode"] / results["codec_decode"],
            "sign_encode": results["plain_encode"] / results["sign_encode"],
            "decode_verify": results["plain_decode"] / results["decode_verify"],
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="time budget per batch")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    result = run(args.seconds)
    print(
        f"record: {result['record_bytes']} B, frame with signature: {result['frame_bytes']} B; "
        f"the same state as labels: {result['label_form_record_bytes']} B"
    )
    print(f"{'operation':<15} {'ops/s':>12} {'slower than plain msgpack':>27}")
    for name, ops in result["ops_per_second"].items():
        ratio = result["ratio_to_plain"].get(name)
        print(f"{name:<15} {ops:>12,.0f} {'' if ratio is None else f'{ratio:.1f}x':>27}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(result, out, indent=2)


if __name__ == "__main__":
    main()
