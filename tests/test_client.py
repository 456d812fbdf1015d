"""`nova`'s HTTP client: answers parsed right, anything else a clear error."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from novacron.agent import client, httpd
from novacron.agent.cli import main as nova_main
from novacron.agent.cli import migrate as migrate_cli
from novacron.agent.client import MalformedAnswer, encode_request, parse_answer
from novacron.agent.core.refusals import RefusalKind, Refused


def test_a_content_length_answer_is_cut_at_its_length() -> None:
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: application/json\r\n\r\n{}junk"
    assert parse_answer(raw) == (200, b"{}")


def test_a_chunked_answer_is_joined() -> None:
    head = b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n"
    raw = head + b'3\r\n{"a\r\n4\r\n":1}\r\n0\r\n\r\n'
    assert parse_answer(raw) == (404, b'{"a":1}')


def test_an_answer_without_length_runs_to_the_end() -> None:
    assert parse_answer(b"HTTP/1.0 200 OK\r\n\r\n[1, 2]") == (200, b"[1, 2]")


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n",  # headers never end
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}",  # body cut short
        b"SSH-2.0-OpenSSH\r\n\r\n",
        b"HTTP/1.1 abc OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nshort",
        b"HTTP/1.1 200 OK\r\nContent-Length: \xb2\r\n\r\n{}",
    ],
)
def test_what_is_not_a_whole_answer_is_malformed(raw: bytes) -> None:
    with pytest.raises(MalformedAnswer):
        parse_answer(raw)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_parse_or_fail_cleanly(raw: bytes) -> None:
    try:
        status, body = parse_answer(raw)
    except MalformedAnswer:
        return
    assert status >= 0 and isinstance(body, bytes)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80), st.integers(min_value=0, max_value=200))
def test_mutated_answers_parse_or_fail_cleanly(noise: bytes, at: int) -> None:
    good = b'HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n{"ok": true}'
    with contextlib.suppress(MalformedAnswer):
        parse_answer(good[:at] + noise + good[at:])


def test_the_request_names_its_length_and_closes() -> None:
    raw = encode_request("POST", "/v1/vms/a/migrate", {"to": "h2"})
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"POST /v1/vms/a/migrate HTTP/1.1\r\n")
    assert b"Connection: close" in head and b"Content-Length: 12" in head
    assert body == b'{"to": "h2"}'


@pytest.fixture
def canned(tmp_path: Path) -> Iterator[tuple[str, list[bytes], list[bytes]]]:
    """A unix socket server that answers each connection with the next canned answer."""
    path = str(tmp_path / "agent.sock")
    answers: list[bytes] = []
    seen: list[bytes] = []
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen()

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(4096)
                seen.append(data)
                conn.sendall(answers.pop(0))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield path, answers, seen
    server.close()


def test_a_request_over_a_real_socket(canned: tuple[str, list[bytes], list[bytes]]) -> None:
    path, answers, seen = canned
    answers.append(b'HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\n{"alive": 3}\n')
    assert client.get("/v1/status", socket_file=path) == {"alive": 3}
    assert seen[0].startswith(b"GET /v1/status HTTP/1.1\r\n")


def test_an_error_answer_carries_the_agents_reason(
    canned: tuple[str, list[bytes], list[bytes]],
) -> None:
    path, answers, _ = canned
    body = b'{"error": "unknown VM: nope"}'
    answers.append(b"HTTP/1.1 404 Not Found\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    with pytest.raises(client.AgentRequestFailed, match="unknown VM: nope") as caught:
        client.delete("/v1/vms/nope", socket_file=path)
    assert caught.value.status == 404


def test_a_garbled_answer_says_the_agent_did_not_answer(
    canned: tuple[str, list[bytes], list[bytes]],
) -> None:
    path, answers, _ = canned
    answers.append(b"garbage\r\n\r\n")
    with pytest.raises(client.AgentUnavailable, match="did not answer"):
        client.get("/v1/status", socket_file=path)


def test_no_socket_says_the_agent_is_not_running(tmp_path: Path) -> None:
    with pytest.raises(client.AgentUnavailable, match="not running"):
        client.get("/v1/status", socket_file=str(tmp_path / "none.sock"))


# --- `nova vm migrate` to a host that lacks the VM's template ----------------------------


def answer(status: int, body: dict[str, object]) -> bytes:
    data = json.dumps(body).encode()
    return b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n%s" % (status, len(data), data)


LACKING = {
    "error": "h3 lacks template test-guest:1, the base of web's disk: it is fetching it",
    "lacking_template": "test-guest:1",
    "host": "h3",
    "fetching": True,
}


def host_record(templates: list[str], fetching: list[str]) -> bytes:
    return answer(200, {"node_id": "h3", "record": {"templates": templates, "fetching": fetching}})


@pytest.fixture
def quick_looks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(migrate_cli, "TEMPLATE_LOOK", 0.01)
    monkeypatch.setattr(migrate_cli, "FETCH_QUIET", 0.2)


def test_an_error_answer_keeps_the_facts_beside_the_reason(
    canned: tuple[str, list[bytes], list[bytes]],
) -> None:
    path, answers, _ = canned
    answers.append(answer(409, LACKING))
    with pytest.raises(client.AgentRequestFailed, match="lacks template") as caught:
        client.post("/v1/vms/web/migrate", {"to": "h3"}, socket_file=path)
    assert caught.value.status == 409
    assert caught.value.details == {k: v for k, v in LACKING.items() if k != "error"}


def test_a_refusal_with_details_sends_them_beside_the_error() -> None:
    refused = Refused(RefusalKind.CONFLICT, "h3 lacks it", {"lacking_template": "t:1"})
    response = httpd.error_response(409, str(refused), details=refused.details)
    assert json.loads(response.body) == {"lacking_template": "t:1", "error": "h3 lacks it"}


def test_migrate_follows_the_targets_fetch_then_starts_the_migration(
    canned: tuple[str, list[bytes], list[bytes]],
    quick_looks: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path, answers, seen = canned
    answers += [
        answer(409, LACKING),
        host_record([], ["test-guest:1"]),
        host_record([], ["test-guest:1"]),
        host_record(["test-guest:1"], []),
        answer(200, {"migration_id": "m7", "to": "h3"}),
    ]
    code = nova_main(["vm", "migrate", "web", "--to", "h3", "--socket", path])
    out, err = capsys.readouterr()
    assert code == 0 and "migration m7 of web to h3 started" in out
    assert "h3 is fetching template test-guest:1 from its peers" in err
    assert "h3 holds template test-guest:1: migrating" in err
    asked = [request.split(b" ", 2)[:2] for request in seen]
    assert asked == [[b"POST", b"/v1/vms/web/migrate"]] + [[b"GET", b"/v1/hosts/h3"]] * 3 + [
        [b"POST", b"/v1/vms/web/migrate"]
    ]


def test_migrate_gives_up_on_a_target_that_is_not_fetching(
    canned: tuple[str, list[bytes], list[bytes]],
    quick_looks: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path, answers, seen = canned
    answers += [answer(409, LACKING)] + [host_record([], [])] * 200
    code = nova_main(["--json", "vm", "migrate", "web", "--to", "h3", "--socket", path])
    out, _ = capsys.readouterr()
    assert code == 1
    error = json.loads(out)["error"]
    assert "h3 lacks template test-guest:1 and has not been fetching it" in error
    assert not any(request.startswith(b"POST") for request in seen[1:])  # never moved


def test_migrate_refused_by_a_target_that_cannot_be_told_ends_at_once(
    canned: tuple[str, list[bytes], list[bytes]], capsys: pytest.CaptureFixture[str]
) -> None:
    path, answers, seen = canned
    answers.append(answer(409, {**LACKING, "fetching": False}))
    code = nova_main(["vm", "migrate", "web", "--to", "h3", "--socket", path])
    assert code == 1 and "lacks template" in capsys.readouterr().err
    assert len(seen) == 1
