"""Soak: the lab tests in a loop under CPU load, until they pass N rounds in a row.

A test that passes only on a quiet machine is a flaky test. This keeps one
core busy with `stress-ng --cpu 1` (Debian's stress-ng) while it runs the lab
test files one at a time (as a shared machine allows), each in a fresh
`pytest`, round after round; a round passes when every file passes. It stops
when `--passes` rounds in a row have passed, or after `--max-rounds`.

A soak outlives no session that ends; `--resume REPORT` continues the one that
report describes, rounds and streak included, but only on the very code it ran
(the same commit, no uncommitted change), the same files and the same load.

Every failing file's pytest output is kept in `--keep` (default
/var/lib/novacron-test/soak-<pid>), and every heartbeat wait of the lab tests
(tests/lab_vms.py's `wait_beat_above`, which follows the guest rather than a
fixed clock) is recorded, so a report says how long guests really took to show
life under load. The summary, and with `--json` a file, gives the command, the
machine, the date, every round's outcome and those waits.

Run as root: `.venv/bin/python -m benchmarks.lab_soak [--passes 10] [--tests FILE ...]
[--load 1] [--resume REPORT] --json benchmarks/results/lab_soak.json`
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
LAB_MARK = re.compile(r"^pytestmark = pytest\.mark\.lab$", re.MULTILINE)  # tests/conftest.py


def lab_test_files() -> list[str]:
    """Every test module marked `lab`, as tests/test_suite_layout.py makes them."""
    tests = sorted((ROOT / "tests").glob("test_*.py"))
    return [str(path.relative_to(ROOT)) for path in tests if LAB_MARK.search(path.read_text())]


WAITS_ENV = "NOVACRON_LAB_WAITS"  # read by tests/lab_vms.py
FILE_TIMEOUT = 1800.0  # seconds: a test file hung this long is a failure, and is stopped
TEARDOWN = 180.0  # seconds an interrupted pytest gets to take its labs down


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.partition(":")[2].strip()
            break
    return {"cpus": os.cpu_count(), "cpu": model, "kernel": platform.release()}


def code_version() -> str:
    """The commit the tests run from, marked `+dirty` if anything tracked is changed."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()

    dirty = git("status", "--porcelain", "--untracked-files=no")
    return git("rev-parse", "HEAD") + ("+dirty" if dirty else "")


class ResumeRefused(Exception):
    """A report that cannot be continued here; the message says why."""


def resumed(
    previous: dict[str, Any], code: str, tests: list[str], load: str
) -> list[dict[str, Any]]:
    """The rounds of a stopped soak to continue from, if it ran what this one would."""
    if code.endswith("+dirty"):
        raise ResumeRefused(f"the tests here have uncommitted changes ({code})")
    if previous.get("code") != code:
        raise ResumeRefused(f"the report ran {previous.get('code')}, this is {code}")
    if previous.get("tests") != tests:
        raise ResumeRefused("the report ran other test files")
    if previous.get("load") != load:
        raise ResumeRefused(f"the report ran under {previous.get('load')}, this under {load}")
    rounds = previous.get("rounds")
    if not isinstance(rounds, list):
        raise ResumeRefused("the report has no rounds")
    return rounds


def streak_of(rounds: list[dict[str, Any]]) -> int:
    """Rounds passed in a row at the end."""
    streak = 0
    for done in rounds:
        streak = streak + 1 if done["ok"] else 0
    return streak


def start_load(cpus: int) -> subprocess.Popen[bytes] | None:
    """`stress-ng --cpu N` in its own process group (ended by `stop_load`), or None for 0."""
    if cpus == 0:
        return None
    found = shutil.which("stress-ng")
    if found is None:
        sys.exit("lab_soak: stress-ng is missing (sh scripts/install-system-deps.sh)")
    command = [found, "--cpu", str(cpus), "--cpu-method", "matrixprod", "--quiet"]
    return subprocess.Popen(command, start_new_session=True)


def stop_load(load: subprocess.Popen[bytes] | None) -> None:
    if load is None:
        return
    os.killpg(load.pid, signal.SIGTERM)  # its own group: stress-ng and its workers
    try:
        load.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(load.pid, signal.SIGKILL)
        load.wait(timeout=20)


def run_file(test_file: str, waits: Path, keep: Path, label: str) -> dict[str, Any]:
    """One test file in a fresh pytest; its outcome, time and (if it failed) its output."""
    env = {**os.environ, WAITS_ENV: str(waits)}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test_file]
    started = time.monotonic()
    pytest = subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # our Ctrl-C is not its: it gets one SIGINT, from `interrupt`
    )
    try:
        output, _ = pytest.communicate(timeout=FILE_TIMEOUT)
        code = pytest.returncode
    except subprocess.TimeoutExpired:
        code, output = -1, interrupt(pytest) + f"\nlab_soak: stopped after {FILE_TIMEOUT:g} s"
    except BaseException:  # the soak itself is stopped: so is the test, tidily
        interrupt(pytest)
        raise
    row: dict[str, Any] = {
        "file": test_file,
        "ok": code == 0,
        "exit": code,
        "seconds": round(time.monotonic() - started, 1),
        "summary": output.strip().splitlines()[-1] if output.strip() else "",
    }
    if code != 0:
        log = keep / f"{label}-{Path(test_file).stem}.log"
        log.write_text(output)
        row["failed"] = [line for line in output.splitlines() if line.startswith("FAILED")]
        row["log"] = str(log)
    return row


def interrupt(pytest: subprocess.Popen[str]) -> str:
    """SIGINT, as Ctrl-C: pytest stops and its fixtures take their labs down; SIGKILL to
    its process group only if it has not ended after `TEARDOWN` seconds. Its output."""
    pytest.send_signal(signal.SIGINT)
    try:
        output, _ = pytest.communicate(timeout=TEARDOWN)
    except subprocess.TimeoutExpired:
        os.killpg(pytest.pid, signal.SIGKILL)
        output, _ = pytest.communicate()
    return output or ""


def read_waits(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_summary(waits: list[dict[str, Any]]) -> dict[str, Any]:
    seconds = sorted(w["seconds"] for w in waits)
    if not seconds:
        return {"count": 0}
    return {
        "count": len(seconds),
        "median_s": round(statistics.median(seconds), 2),
        "p90_s": round(seconds[int(0.9 * (len(seconds) - 1))], 2),
        "max_s": seconds[-1],
        "over_30_s": sum(1 for s in seconds if s > 30),
    }


def soak(args: argparse.Namespace) -> dict[str, Any]:
    """Rounds until the goal or the limit; the report is written after every round, so a
    soak stopped early (SIGTERM, Ctrl-C) keeps what it found."""
    args.keep.mkdir(parents=True, exist_ok=True)
    rounds: list[dict[str, Any]] = list(args.rounds_before)
    streak = streak_of(rounds)
    load = start_load(args.load)
    try:
        while streak < args.passes and len(rounds) < args.max_rounds:
            rounds.append(one_round(args, len(rounds) + 1))
            streak = streak + 1 if rounds[-1]["ok"] else 0
            print(f"round {len(rounds)}: {'passed' if rounds[-1]['ok'] else 'FAILED'}; "
                  f"{streak} in a row", flush=True)  # fmt: skip
            write(args, report(args, rounds, streak))
    finally:
        stop_load(load)
    return report(args, rounds, streak)


def one_round(args: argparse.Namespace, number: int) -> dict[str, Any]:
    """Every test file once, one after another."""
    waits = args.keep / f"round{number}-waits.jsonl"
    started = time.monotonic()
    files = []
    for test_file in args.tests:
        row = run_file(test_file, waits, args.keep, f"round{number}")
        files.append(row)
        print(f"round {number}: {test_file} {'ok' if row['ok'] else 'FAILED'} "
              f"in {row['seconds']:.0f} s: {row['summary']}", flush=True)  # fmt: skip
    return {
        "round": number,
        "ok": all(row["ok"] for row in files),
        "seconds": round(time.monotonic() - started, 1),
        "files": files,
        "heartbeat_waits": read_waits(waits),
    }


def report(args: argparse.Namespace, rounds: list[dict[str, Any]], streak: int) -> dict[str, Any]:
    waits = [wait for r in rounds for wait in r["heartbeat_waits"]]
    return {
        "command": shlex.join(
            [Path(sys.executable).name, "-m", "benchmarks.lab_soak", *sys.argv[1:]]
        ),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "code": args.code,
        "earlier_commands": args.earlier_commands,
        "load": load_name(args.load),
        "tests": list(args.tests),
        "goal": args.passes,
        "reached": streak >= args.passes,
        "rounds_run": len(rounds),
        "rounds_failed": sum(1 for r in rounds if not r["ok"]),
        "streak": streak,
        "heartbeat_waits": wait_summary(waits),
        "rounds": rounds,
    }


def load_name(cpus: int) -> str:
    return f"stress-ng --cpu {cpus}" if cpus else "none"


def write(args: argparse.Namespace, data: dict[str, Any]) -> None:
    if args.json:
        args.json.write_text(json.dumps(data, indent=2) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passes", type=int, default=10, help="rounds in a row to pass (10)")
    parser.add_argument("--max-rounds", type=int, default=30, help="give up after (30)")
    parser.add_argument("--load", type=int, default=1, help="cores stress-ng keeps busy (1)")
    parser.add_argument(
        "--tests",
        nargs="+",
        default=lab_test_files(),
        metavar="FILE",
        help="test files to run (default: every module marked lab)",
    )
    parser.add_argument(
        "--keep", type=Path, default=Path(f"/var/lib/novacron-test/soak-{os.getpid()}")
    )
    parser.add_argument("--json", type=Path, help="write the report here")
    parser.add_argument("--resume", type=Path, metavar="REPORT", help="continue this soak")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("lab_soak: run as root (the lab tests build network namespaces)", file=sys.stderr)
        return 1
    args.code = code_version()
    args.rounds_before, args.earlier_commands = [], []
    if args.resume is not None:
        try:
            previous = json.loads(args.resume.read_text())
            args.rounds_before = resumed(previous, args.code, args.tests, load_name(args.load))
            args.earlier_commands = [*previous.get("earlier_commands", []), previous["command"]]
        except (OSError, ValueError, KeyError, ResumeRefused) as error:
            print(f"lab_soak: cannot resume {args.resume}: {error}", file=sys.stderr)
            return 2
    # SIGTERM ends the soak as Ctrl-C does: the running test's labs come down, load stops.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    # A shell starts a background job (`nohup ... &`) with SIGINT ignored, and pytest would
    # inherit that: the SIGINT that `interrupt` sends must reach it, or its labs stay up.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    done = soak(args)
    write(args, done)
    print(
        f"{done['rounds_run']} rounds, {done['rounds_failed']} failed, "
        f"{done['streak']} passed in a row (goal {args.passes}); heartbeat waits "
        f"{done['heartbeat_waits']}; failing output in {args.keep}"
    )
    return 0 if done["reached"] else 1


if __name__ == "__main__":
    sys.exit(main())
