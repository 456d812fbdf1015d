"""`nova ca ...` as an operator uses it: files, modes, exit codes, text and JSON output."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from novacron.agent.cli import main
from novacron.protocol import keyfiles
from novacron.protocol.certificates import issue_certificate, verify_certificate
from novacron.protocol.keys import Ed25519PrivateKey, NodeKey, key_id
from novacron.protocol.revocation import verify_revocation_list


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    code, out, _ = run(capsys, *argv, "--json")
    return code, json.loads(out)


def run_json_err(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any], str]:
    code, out, err = run(capsys, *argv, "--json")
    return code, json.loads(out), err


def assert_one_line_error(err: str, *fragments: str) -> None:
    assert err.count("\n") == 1 and err.startswith("nova: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err


@pytest.fixture
def ca_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    ca = tmp_path / "ca"
    assert run(capsys, "ca", "init", "--dir", str(ca))[0] == 0
    return ca


@pytest.fixture
def issued(ca_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    code, data = run_json(
        capsys, "ca", "issue", "edge-1", "--dir", str(ca_dir), "--out", str(tmp_path / "nodes")
    )
    assert code == 0
    return data


# --- nova ca init -----------------------------------------------------------------


def test_init_creates_private_key_and_public_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ca = tmp_path / "new" / "ca"
    code, out, err = run(capsys, "ca", "init", "--dir", str(ca))
    assert (code, err) == (0, "")
    assert mode(ca / "ca.key") == 0o600
    assert mode(ca / "ca.pub") == 0o644
    key = keyfiles.load_ca_key(ca / "ca.key")
    assert key_id(keyfiles.load_ca_public(ca / "ca.pub")) == key_id(key)
    assert f"created cluster CA {key_id(key)}" in out


def test_init_json_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, data = run_json(capsys, "ca", "init", "--dir", str(tmp_path))
    assert code == 0
    assert data["ok"] is True
    assert data["key_file"] == str(tmp_path / "ca.key")
    assert data["public_file"] == str(tmp_path / "ca.pub")
    assert data["key_id"] == key_id(keyfiles.load_ca_key(tmp_path / "ca.key"))


def test_init_refuses_to_overwrite_without_force(
    ca_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = (ca_dir / "ca.key").read_bytes()
    code, out, err = run(capsys, "ca", "init", "--dir", str(ca_dir))
    assert code == 1
    assert out == ""
    assert_one_line_error(err, "a CA already exists", "--force")
    assert (ca_dir / "ca.key").read_bytes() == before


def test_init_force_replaces_the_ca_and_its_revocations(
    ca_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old_id = key_id(keyfiles.load_ca_key(ca_dir / "ca.key"))
    serial = run_json(capsys, "ca", "issue", "n1", "--dir", str(ca_dir), "--out", str(ca_dir))[1]
    assert run(capsys, "ca", "revoke", str(serial["serial"]), "--dir", str(ca_dir))[0] == 0
    code, data = run_json(capsys, "ca", "init", "--dir", str(ca_dir), "--force")
    assert code == 0
    assert data["key_id"] != old_id
    assert not (ca_dir / "revoked.crl").exists()
    # The old CA's serials are not the new one's to revoke.
    code, _, err = run(capsys, "ca", "revoke", str(serial["serial"]), "--dir", str(ca_dir))
    assert code == 1
    assert_one_line_error(err, "never issued")


def test_ca_dir_defaults_to_the_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOVACRON_CA_DIR", str(tmp_path / "envca"))
    assert run(capsys, "ca", "init")[0] == 0
    assert (tmp_path / "envca" / "ca.key").exists()


# --- nova ca issue ----------------------------------------------------------------


def test_issue_writes_key_0600_and_certificate_signed_by_the_ca(
    ca_dir: Path, tmp_path: Path, issued: dict[str, Any]
) -> None:
    key_file, cert_file = tmp_path / "nodes" / "edge-1.key", tmp_path / "nodes" / "edge-1.crt"
    assert (issued["key_file"], issued["cert_file"]) == (str(key_file), str(cert_file))
    assert mode(key_file) == 0o600
    assert mode(cert_file) == 0o644
    node_key = keyfiles.load_node_key(key_file)
    cert = verify_certificate(
        keyfiles.read_certificate(cert_file),
        keyfiles.load_ca_public(ca_dir / "ca.pub"),
        time.time(),
    )
    assert cert.node_id == issued["node_id"] == "edge-1"
    assert cert.serial == issued["serial"] > 0
    assert cert.curve_key == node_key.curve_public
    assert cert.curve_public_z85() == issued["curve_public_z85"]
    assert cert.signing_public_key().public_bytes_raw() == node_key.signing_public
    assert issued["fingerprint"] == f"sha256:{cert.fingerprint}"


def test_issue_honours_days_and_uses_fresh_serials(
    ca_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    serials = set()
    for node in ("a", "b", "c"):
        code, data = run_json(
            capsys, "ca", "issue", node, "--dir", str(ca_dir), "--out", str(tmp_path), "--days", "7"
        )
        assert code == 0
        serials.add(data["serial"])
        cert = keyfiles.read_certificate(tmp_path / f"{node}.crt")
        public = keyfiles.load_ca_public(ca_dir / "ca.pub")
        got = verify_certificate(cert, public, time.time())
        assert got.not_after - time.time() == pytest.approx(7 * 86400, abs=60)
    assert len(serials) == 3


def test_issue_text_output_names_node_serial_and_files(
    ca_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(
        capsys, "ca", "issue", "web.lyon", "--dir", str(ca_dir), "--out", str(tmp_path)
    )
    assert (code, err) == (0, "")
    assert "issued certificate for node web.lyon" in out
    assert "serial:" in out and "fingerprint:  sha256:" in out
    assert str(tmp_path / "web.lyon.key") in out


@pytest.mark.parametrize("bad", ["a/b", "", "-x", "x" * 65, "..", "a b"])
def test_issue_refuses_invalid_node_id_as_usage_error(
    ca_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], bad: str
) -> None:
    code, _, err = run(
        capsys, "ca", "issue", "--dir", str(ca_dir), "--out", str(tmp_path), "--", bad
    )
    assert code == 2
    assert_one_line_error(err, "invalid node id", "1-64 characters")
    assert list(tmp_path.iterdir()) == [ca_dir]


def test_issue_without_ca_says_how_to_create_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "ca", "issue", "n1", "--dir", str(tmp_path / "none"))
    assert code == 1
    assert_one_line_error(err, "no CA in", "nova ca init --dir")


def test_issue_refuses_to_overwrite_node_files_without_force(
    ca_dir: Path, tmp_path: Path, issued: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    args = ("ca", "issue", "edge-1", "--dir", str(ca_dir), "--out", str(tmp_path / "nodes"))
    code, _, err = run(capsys, *args)
    assert code == 1
    assert_one_line_error(err, "edge-1.key already exists", "--force")
    code, data = run_json(capsys, *args, "--force")
    assert code == 0 and data["serial"] != issued["serial"]


def test_issue_refuses_a_ca_key_readable_by_others(
    ca_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (ca_dir / "ca.key").chmod(0o644)
    code, out, err = run_json_err(
        capsys, "ca", "issue", "n1", "--dir", str(ca_dir), "--out", str(tmp_path)
    )
    assert code == 1
    assert out["ok"] is False
    assert f"chmod 600 {ca_dir / 'ca.key'}" in out["error"]
    assert_one_line_error(err, "mode 0644")


@pytest.mark.parametrize("days", ["0", "-3", "x", "36501"])
def test_issue_refuses_bad_days(
    ca_dir: Path, capsys: pytest.CaptureFixture[str], days: str
) -> None:
    code, _, err = run(capsys, "ca", "issue", "n1", "--dir", str(ca_dir), f"--days={days}")
    assert code == 2
    assert_one_line_error(err, "invalid day count")


# --- nova ca revoke / show ------------------------------------------------------------


def test_show_prints_the_certificate_and_verifies_it(
    ca_dir: Path, tmp_path: Path, issued: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "ca", "show", issued["cert_file"], "--dir", str(ca_dir))
    assert (code, err) == (0, "")
    assert "node id:      edge-1" in out
    assert f"serial:       {issued['serial']}" in out
    assert issued["fingerprint"] in out
    assert f"valid until:  {issued['not_after']}" in out
    assert "status:       valid" in out


def test_show_json(
    ca_dir: Path, issued: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    code, data = run_json(capsys, "ca", "show", issued["cert_file"], "--dir", str(ca_dir))
    assert code == 0
    assert data["verified"] is True
    for name in ("node_id", "serial", "not_before", "not_after", "fingerprint", "issuer"):
        assert data[name] == issued[name]


def test_revoke_by_file_then_show_reports_revoked(
    ca_dir: Path, issued: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    code, data = run_json(capsys, "ca", "revoke", issued["cert_file"], "--dir", str(ca_dir))
    assert code == 0
    assert (data["serial"], data["already_revoked"], data["revoked_count"]) == (
        issued["serial"],
        False,
        1,
    )
    assert mode(ca_dir / "revoked.crl") == 0o644
    revocations = verify_revocation_list(
        keyfiles.read_revocation_list(ca_dir / "revoked.crl"),
        keyfiles.load_ca_public(ca_dir / "ca.pub"),
    )
    assert revocations.serials == (issued["serial"],)

    code, out, err = run(capsys, "ca", "show", issued["cert_file"], "--dir", str(ca_dir))
    assert code == 1
    assert "node id:      edge-1" in out
    assert_one_line_error(err, "'edge-1'", "revoked")
    code, shown, err = run_json_err(capsys, "ca", "show", issued["cert_file"], "--dir", str(ca_dir))
    assert (code, shown["ok"], shown["verified"]) == (1, False, False)
    assert "revoked" in shown["error"]


def issue(capsys: pytest.CaptureFixture[str], ca_dir: Path, node: str, out: Path) -> int:
    code, data = run_json(capsys, "ca", "issue", node, "--dir", str(ca_dir), "--out", str(out))
    assert code == 0, data
    serial: int = data["serial"]
    return serial


def test_revoke_by_serial_is_idempotent_and_accumulates(
    ca_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = (issue(capsys, ca_dir, node, tmp_path) for node in ("n1", "n2"))
    code, data = run_json(capsys, "ca", "revoke", str(first), "--dir", str(ca_dir))
    assert (code, data["revoked_count"], data["node_id"]) == (0, 1, "n1")
    code, data = run_json(capsys, "ca", "revoke", str(first), "--dir", str(ca_dir))
    assert (code, data["already_revoked"], data["revoked_count"]) == (0, True, 1)
    code, out, _ = run(capsys, "ca", "revoke", str(second), "--dir", str(ca_dir))
    assert code == 0 and f"serial {second} (node n2) revoked; 2 revoked" in out


def test_revoke_refuses_a_serial_the_ca_never_issued(
    ca_dir: Path, issued: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    never = issued["serial"] + 1
    code, data, err = run_json_err(capsys, "ca", "revoke", str(never), "--dir", str(ca_dir))
    assert (code, data["ok"]) == (1, False)
    assert_one_line_error(err, f"serial {never} was never issued by the CA in {ca_dir}")
    assert not (ca_dir / "revoked.crl").exists()
    for huge in (str(2**64), "9" * 5000):  # 5000 digits: more than int() reads by default
        code, _, err = run(capsys, "ca", "revoke", huge, "--dir", str(ca_dir))
        assert code == 2
        assert_one_line_error(err, "out of range")


def test_revoke_of_a_missing_file_says_so_as_show_does(
    ca_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = str(tmp_path / "gone" / "edge-9.crt")
    for command in ("revoke", "show"):
        code, out, err = run(capsys, "ca", command, missing, "--dir", str(ca_dir))
        assert (code, out) == (1, "")
        assert_one_line_error(err, f"certificate {missing} does not exist")
    code, _, err = run(capsys, "ca", "revoke", "not-a-serial", "--dir", str(ca_dir))
    assert code == 1
    assert_one_line_error(err, "certificate not-a-serial does not exist")
    assert not (ca_dir / "revoked.crl").exists()


def test_the_ledger_lists_every_issued_certificate_privately(
    ca_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    serials = [issue(capsys, ca_dir, node, tmp_path / str(i)) for i, node in enumerate("aba")]
    ledger = ca_dir / "issued.jsonl"
    assert mode(ledger) == 0o600
    rows = [json.loads(line) for line in ledger.read_text().splitlines()]
    assert [(row["serial"], row["node_id"]) for row in rows] == list(
        zip(serials, "aba", strict=True)
    )
    with ledger.open("a") as out:
        out.write('{"serial": 12')  # a crash mid-append: that certificate was never written
    assert run(capsys, "ca", "revoke", str(serials[1]), "--dir", str(ca_dir))[0] == 0
    assert run(capsys, "ca", "revoke", "12", "--dir", str(ca_dir))[0] == 1


def test_a_ca_without_a_ledger_revokes_by_file_and_keeps_one_from_then_on(
    ca_dir: Path, tmp_path: Path, issued: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    (ca_dir / "issued.jsonl").unlink()  # as a CA made before the ledger existed
    old = str(issued["serial"])
    code, _, err = run(capsys, "ca", "revoke", old, "--dir", str(ca_dir))
    assert code == 1
    assert_one_line_error(err, "keeps no ledger", "revoke by certificate file")
    newer = issue(capsys, ca_dir, "n2", tmp_path)
    code, _, err = run(capsys, "ca", "revoke", old, "--dir", str(ca_dir))
    assert code == 1
    assert_one_line_error(err, "kept since", "revoke an older certificate by its file")
    assert run(capsys, "ca", "revoke", str(newer), "--dir", str(ca_dir))[0] == 0
    code, data = run_json(capsys, "ca", "revoke", issued["cert_file"], "--dir", str(ca_dir))
    assert (code, data["serial"], data["revoked_count"]) == (0, issued["serial"], 2)


def test_revoke_refuses_foreign_certificates(
    ca_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "other"
    run(capsys, "ca", "init", "--dir", str(other))
    run(capsys, "ca", "issue", "x1", "--dir", str(other), "--out", str(tmp_path))
    code, _, err = run(capsys, "ca", "revoke", str(tmp_path / "x1.crt"), "--dir", str(ca_dir))
    assert code == 1
    assert_one_line_error(err, "not by this cluster's CA")
    assert not (ca_dir / "revoked.crl").exists()


def test_show_refuses_expired_and_foreign_certificates(
    ca_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    node = NodeKey.generate()
    old = issue_certificate(
        keyfiles.load_ca_key(ca_dir / "ca.key"),
        "old-1",
        node.signing_public,
        node.curve_public,
        not_before=1_000_000_000.0,
        not_after=1_000_086_400.0,
        serial=3,
    )
    keyfiles.write_certificate(tmp_path / "old.crt", old.encoded)
    code, _, err = run(capsys, "ca", "show", str(tmp_path / "old.crt"), "--dir", str(ca_dir))
    assert code == 1
    assert_one_line_error(err, "'old-1'", "expired at 2001-09-10T01:46:40Z")

    foreign = issue_certificate(
        Ed25519PrivateKey.generate(),
        "x1",
        node.signing_public,
        node.curve_public,
        not_before=0.0,
        not_after=4e9,
        serial=4,
    )
    keyfiles.write_certificate(tmp_path / "x1.crt", foreign.encoded)
    code, _, err = run(capsys, "ca", "show", str(tmp_path / "x1.crt"), "--dir", str(ca_dir))
    assert code == 1
    assert_one_line_error(err, "not by this cluster's CA")


def test_show_corrupt_or_missing_certificate_is_a_clear_error(
    ca_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "bad.crt").write_text(
        "-----BEGIN NOVACRON CERTIFICATE-----\nAAAA\n-----END NOVACRON CERTIFICATE-----\n"
    )
    code, _, err = run(capsys, "ca", "show", str(tmp_path / "bad.crt"), "--dir", str(ca_dir))
    assert code == 1
    assert_one_line_error(err, "certificate is malformed")
    code, _, err = run(capsys, "ca", "show", str(tmp_path / "none.crt"), "--dir", str(ca_dir))
    assert code == 1
    assert_one_line_error(err, "none.crt does not exist")


# --- usage ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [[], ["ca"], ["bogus"], ["ca", "bogus"], ["ca", "issue"], ["ca", "init", "--nope"]],
)
def test_usage_errors_exit_2_with_one_line(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert out == ""
    assert_one_line_error(err, "--help")


def test_usage_error_with_json_is_machine_readable(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "ca", "issue", "--json")
    assert code == 2
    assert json.loads(out)["ok"] is False


def test_json_flag_works_before_the_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "--json", "ca", "init", "--dir", str(tmp_path))
    assert code == 0 and json.loads(out)["ok"] is True


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "ca", "--help")
    assert code == 0
    for command in ("init", "issue", "revoke", "show"):
        assert command in out


# --- the installed console script ---------------------------------------------


def nova_script() -> str:
    found = shutil.which("nova") or str(Path(sys.executable).parent / "nova")
    assert os.access(found, os.X_OK), f"the nova console script is not installed at {found}"
    return found


def test_installed_nova_script_end_to_end(tmp_path: Path) -> None:
    nova = nova_script()

    def call(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [nova, *argv], capture_output=True, text=True, timeout=60, check=False
        )

    ca = str(tmp_path / "ca")
    assert call("ca", "init", "--dir", ca).returncode == 0
    issued = call("ca", "issue", "edge-7", "--dir", ca, "--out", str(tmp_path), "--json")
    assert issued.returncode == 0, issued.stderr
    serial = json.loads(issued.stdout)["serial"]
    shown = call("ca", "show", str(tmp_path / "edge-7.crt"), "--dir", ca, "--json")
    assert shown.returncode == 0
    assert json.loads(shown.stdout)["serial"] == serial
    assert mode(tmp_path / "edge-7.key") == 0o600

    again = call("ca", "init", "--dir", ca)
    assert again.returncode == 1
    assert again.stderr.startswith("nova: error: a CA already exists")
    assert "Traceback" not in again.stderr
    assert call("ca", "issue", "bad/id", "--dir", ca).returncode == 2
