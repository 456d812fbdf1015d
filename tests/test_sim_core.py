"""Small simulations of the real membership core: outcomes, and reproducibility.

About 50 nodes each, a few simulated minutes in all; the assertions are the
protocol's promises (an update reaches everyone, a crash is detected by every
live node, a healed partition converges, no false alarms on a clean network).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from novacron.protocol.claims import line_claim
from novacron.protocol.errors import ProtocolError
from novacron.protocol.messages import Alive, MemberDigest, MemberState, SignedRecord, Suspect
from novacron.simulations.cluster import initial_record
from novacron.simulations.gossip import main as gossip_main
from novacron.simulations.report import run, to_json
from novacron.simulations.scenarios import Params, build, parse_groups, split_sides
from novacron.simulations.signing import (
    ClaimCache,
    SimKeyring,
    VerificationCache,
    make_signer,
    sign_claim_as_signer,
)

ROOT = Path(__file__).resolve().parent.parent


def results(name: str, **overrides: Any) -> dict[str, Any]:
    params = Params(**{"nodes": 50, "seed": 3, **overrides})
    report = run(name, params, with_runtime=False)
    assert report["simulation"]["engine"].get("deadline-not-advanced", 0) == 0
    found: dict[str, Any] = report["results"]
    return found


def test_an_update_reaches_every_node() -> None:
    r = results("dissemination", loss=0.05)
    assert r["coverage"] == 1.0
    assert r["time_to_50pct_s"] <= r["time_to_99pct_s"] <= r["time_to_100pct_s"] < 30.0


def test_a_crash_is_detected_by_every_live_node() -> None:
    r = results("failure-detection")
    assert r["marked_failed_by"] == r["live_nodes"] == 49
    bounds = r["memberlist_suspicion_timeout"]
    assert r["first_suspicion_s"] is not None
    assert r["all_marked_failed_s"] < bounds["max_s"] + 5


@pytest.mark.parametrize("groups", ["2", "3", "1,*", "5,10,*"])
def test_a_healed_partition_of_any_shape_converges(groups: str) -> None:
    r = results("partition-heal", groups=groups, split=120.0)
    assert r["sides"] == parse_groups(groups, 50)
    assert r["cross_pairs_failed_at_heal"] > 0
    assert r["everyone_alive_again_s"] is not None
    assert r["pairs_not_alive_at_end"] == 0
    assert r["false_failures_during_split"] == 0


@pytest.mark.parametrize("groups", ["2", "1,*"])
def test_a_split_held_long_starts_failed_across_and_heals(groups: str) -> None:
    params = Params(nodes=50, seed=3, groups=groups, held_split=True)
    cluster = build(params)
    sides = split_sides(params, cluster.ids)
    held = {info.node_id: info.state for info in cluster.members[sides[0][0]].members()}
    assert {held[n] for n in sides[1]} == {MemberState.DEAD}
    assert {held[n] for n in sides[0]} == {MemberState.ALIVE}
    r = results("partition-heal", groups=groups, held_split=True)
    assert r["cross_pairs_failed_at_heal"] == r["pairs_not_alive_at_heal"] == r["cross_pairs"]
    assert r["everyone_alive_again_s"] is not None
    assert r["pairs_not_alive_at_end"] == 0
    assert r["false_failures_during_split"] == r["false_failures_after_heal"] == 0


def test_a_held_split_is_refused_outside_a_partition_heal() -> None:
    for argv in (["--scenario", "churn"], ["--scenario", "partition-heal", "--split", "5"]):
        assert gossip_main([*argv, "--held-split", "--nodes", "10"]) == 2


def test_a_long_run_says_how_far_it_is_and_reports_the_same() -> None:
    params = Params(nodes=40, seed=3, groups="2", held_split=True)
    lines: list[str] = []
    say = lines.append
    told = run("partition-heal", params, with_runtime=False, progress=say, progress_every=0.0)
    quiet = run("partition-heal", params, with_runtime=False)
    assert to_json(told) == to_json(quiet)
    assert len(lines) >= told["simulation"]["simulated_s"] - 1  # one a simulated second here
    assert lines[0].startswith("simulated 1 s, wall clock ") and "RSS" in lines[0]
    for every, lines_expected in (("0.000001", True), ("0", False)):
        command = [
            sys.executable, "-m", "novacron.simulations.gossip", "--scenario", "dissemination",
            "--nodes", "20", "--progress-every", every,
        ]  # fmt: skip
        out = subprocess.run(command, check=True, cwd=ROOT, capture_output=True, text=True)
        assert ("simulated 1 s, wall clock" in out.stderr) is lines_expected, out.stderr
        assert "simulated 1 s" not in out.stdout
    assert "scenario dissemination" in out.stdout


def test_every_simulated_node_shares_one_cache_of_push_pull_lines_per_start() -> None:
    # Nodes of one snapshot and of its held sides, and processes started fresh, each
    # share a cache: at 10,000 nodes a cache per node would hold 10^8 lines.
    cluster = build(Params(nodes=30, seed=5, groups="3", held_split=True))
    caches = {id(node._line_cache) for node in cluster.members.values()}
    assert len(caches) == 1
    cluster.crash("node-00007")
    cluster.restart("node-00007")
    assert cluster.members["node-00007"]._line_cache is cluster.lines


def test_partition_sides_are_parsed_and_bad_shapes_refused() -> None:
    assert parse_groups("3", 100) == [34, 33, 33]
    assert parse_groups("1,*", 1000) == [1, 999]
    assert parse_groups("10, 20, 70", 100) == [10, 20, 70]
    for bad in ("1", "0,*", "*,*", "10,20", "x,*", "200,*", "101"):
        with pytest.raises(ValueError):
            parse_groups(bad, 100)


def test_churn_marks_no_healthy_node_failed_and_returns_are_seen() -> None:
    r = results("churn", loss=0.01, duration=120.0, churn=0.2, downtime=20.0)
    assert r["restarts"] >= 15
    assert r["healthy_nodes_marked_failed"] == 0
    assert r["restarted_nodes_marked_failed_while_up"] == 0
    assert r["down_nodes_failed_by_all_before_return"] > 0  # the long absences were noticed
    assert r["returns_never_seen_by_all"] == 0
    assert r["return_seen_alive_by_all_s"]["max"] <= 5.0


def test_churn_names_the_observers_that_miss_a_return_and_what_they_hold() -> None:
    r = results("churn", nodes=30, loss=0.4, duration=120.0, churn=0.2, downtime=20.0)
    missed = r["returns_missed_at_5s"]
    assert 0 < len(missed) <= r["returns_measured"] - r["returns_seen_by_all_within_5s"]
    for entry in missed:
        assert entry["observers"], entry  # somebody did not hold it alive
        for observer in entry["observers"]:
            assert observer["observer"] != entry["node"]
            assert observer["holds"] in (None, "SUSPECT", "DEAD", "LEFT")


def test_an_isolated_node_catches_up_within_two_push_pull_intervals() -> None:
    r = results("catch-up", isolation=30.0)
    assert r["records_missing_at_heal"] > 0
    assert r["records_still_missing"] == 0
    assert r["within_two_push_pull_intervals"] is True


def test_no_false_positives_without_loss() -> None:
    r = results("false-positives", duration=60.0)
    assert r["healthy_nodes_marked_failed"] == 0
    assert r["healthy_nodes_suspected"] == 0


def test_same_seed_gives_identical_json() -> None:
    params = Params(nodes=30, seed=9, loss=0.1, duration=10.0)
    first = to_json(run("failure-detection", params, with_runtime=False))
    assert first == to_json(run("failure-detection", params, with_runtime=False))
    other = to_json(run("failure-detection", Params(nodes=30, seed=10, loss=0.1, duration=10.0)))
    assert json.loads(first)["results"] != json.loads(other)["results"]


def test_results_do_not_depend_on_the_hash_seed(tmp_path: Path) -> None:
    outputs = []
    for hash_seed in ("1", "12345"):
        out = tmp_path / f"run-{hash_seed}.json"
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        command = [
            sys.executable, "-m", "novacron.simulations.gossip", "--scenario", "dissemination",
            "--nodes", "30", "--loss", "0.1", "--seed", "4", "--duration", "10",
            "--json", str(out), "--no-runtime",
        ]  # fmt: skip
        subprocess.run(command, check=True, env=env, cwd=ROOT, capture_output=True)
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1]


def test_hmac_records_verify_and_forgeries_do_not() -> None:
    cache = VerificationCache()
    signed = make_signer("node-1")(initial_record("node-1", 4))
    assert cache(signed).version == 4
    assert cache(signed).version == 4
    assert (cache.misses, cache.hits) == (1, 1)
    forged = SignedRecord("node-1", 4, signed.record + b"x", signed.signature)
    with pytest.raises(ProtocolError):
        cache(forged)
    stolen = SignedRecord("node-2", 4, signed.record, signed.signature)
    with pytest.raises(ProtocolError):
        cache(stolen)
    with pytest.raises(ValueError):
        make_signer("node-2")(initial_record("node-1"))


def test_shared_claim_checks_refuse_forgeries_and_check_each_claim_once() -> None:
    cache = ClaimCache()
    claim = dataclasses.replace(
        Suspect("node-1", 3, "node-2"),
        signature=sign_claim_as_signer(Suspect("node-1", 3, "node-2")),
    )
    assert cache(claim) and cache(claim)
    assert (cache.misses, cache.hits) == (1, 1)
    forged = dataclasses.replace(claim, by="node-3")  # node-2's signature, node-3's name
    assert not cache(forged)
    assert not SimKeyring("node-9", claims=cache).verify_claim(forged)
    assert SimKeyring("node-9", claims=cache).verify_claim(claim)


def test_a_claim_read_anew_from_each_line_is_checked_once_and_a_forged_one_refused() -> None:
    cache = ClaimCache()
    alive = Alive("node-1", 2, "sim://node-1")
    line = MemberDigest("node-1", 2, MemberState.ALIVE, "sim://node-1", sign_claim_as_signer(alive))
    # Every receiver of a push-pull answer reads its own claim from the line.
    assert cache(line_claim(line)) and cache(line_claim(line))
    assert (cache.misses, cache.hits) == (1, 1)
    forged = dataclasses.replace(line, signature=sign_claim_as_signer(alive, key=bytes(32)))
    assert not cache(line_claim(forged))
    assert not cache(line_claim(forged))
    moved = dataclasses.replace(line, address="sim://elsewhere")  # the signature of another
    assert not cache(line_claim(moved))
    assert cache(line_claim(line))
    one = Alive("node-1", 1, "sim://node-1")
    one = dataclasses.replace(one, signature=sign_claim_as_signer(one))
    assert cache(one)
    # Equal as values, signed apart: True == 1, but msgpack packs a bool.
    assert not cache(dataclasses.replace(one, incarnation=True))


def test_a_restarted_node_rejoins_with_a_higher_incarnation() -> None:
    cluster = build(Params(nodes=30, seed=5))
    victim = "node-00007"
    cluster.engine.run(3.0)
    cluster.crash(victim)
    cluster.engine.run(30.0)
    live = cluster.live_ids()
    before = [cluster.members[n].member(victim) for n in live]
    assert all(v is not None and v.state is MemberState.DEAD for v in before)
    cluster.restart(victim)
    cluster.engine.run(60.0)
    views = [cluster.members[n].member(victim) for n in live]
    assert all(v is not None and v.state is MemberState.ALIVE for v in views)
    assert cluster.members[victim].incarnation > 1
    assert len(cluster.members[victim].members()) == 30
