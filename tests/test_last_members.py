"""The members' addresses a restarted agent knocks at: kept, read back, and any file
that is not ours read as nothing rather than as an error."""

from __future__ import annotations

from pathlib import Path

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from novacron.agent.config import host_port, split_address
from novacron.agent.last_members import MAX_FILE, load_last_members, save_last_members
from tests.fuzzing import fuzz


def test_saved_addresses_are_read_back(tmp_path: Path) -> None:
    path = tmp_path / "last-members"
    save_last_members(path, {"198.18.0.2:7946", "198.18.0.3:7946"})
    assert load_last_members(path) == [("198.18.0.2", 7946), ("198.18.0.3", 7946)]
    assert path.stat().st_mode & 0o777 == 0o600


def test_no_file_is_no_members(tmp_path: Path) -> None:
    assert load_last_members(tmp_path / "absent") == []


@pytest.mark.parametrize(
    "content",
    [
        b"\xc1 not msgpack",
        msgpack.packb({"198.18.0.2:7946": 1}),
        msgpack.packb(["198.18.0.2", "h:0", "h:65536", ":7946", 7946, "x" * 400 + ":1"]),
        b"\x90" + b"\x00" * (MAX_FILE + 1),
    ],
    ids=["undecodable", "not-a-list", "no-address-in-it", "oversized"],
)
def test_a_file_that_is_not_a_list_of_addresses_gives_none(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "last-members"
    path.write_bytes(content)
    assert load_last_members(path) == []


def test_good_addresses_survive_bad_neighbours(tmp_path: Path) -> None:
    path = tmp_path / "last-members"
    path.write_bytes(msgpack.packb([None, "198.18.0.2:7946", b"bytes:1", "[fd00::2]:7946"]))
    assert load_last_members(path) == [("198.18.0.2", 7946), ("fd00::2", 7946)]


@pytest.mark.parametrize(
    "address",
    ["a..b:7946", f"{'x' * 64}.example:7946", "bad\x00host:7946", "under_score:1", ".:7946"],
)
def test_a_host_the_resolver_would_choke_on_is_no_address(address: str) -> None:
    """Such a host makes asyncio's resolver raise UnicodeError, not OSError: refused here,
    it cannot stop the agent that knocks at it."""
    with pytest.raises(ValueError, match="not an IP address or host name"):
        split_address(address)


def test_names_and_both_ip_forms_are_addresses() -> None:
    assert split_address("edge-1.lyon.example.:7946") == ("edge-1.lyon.example.", 7946)
    assert split_address("fd00::2:7946") == ("fd00::2", 7946)
    assert split_address("[fd00::2]:7946") == ("fd00::2", 7946)


@fuzz(300)
@given(st.binary(max_size=512))
def test_any_bytes_load_as_a_list_of_addresses(
    tmp_path_factory: pytest.TempPathFactory, data: bytes
) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "last-members"
    path.write_bytes(data)
    for host, port in load_last_members(path):
        assert split_address(host_port(host, port)) == (host, port)
