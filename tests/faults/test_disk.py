"""The disk under the journals fails: it fills up, or fsync reports EIO.

The faultfs shim (``LD_PRELOAD``) makes the state directory behave like a full file
system (a short write, then ENOSPC) or makes fsync fail, in the running daemon only.

* **Disk full**: no partial record is left behind (the journal rolls a short write
  back), nothing is logged that is not journaled, systemd is told ``STATUS=degraded``
  and, once space returns, beats resume in the same process with the conversation's
  memory intact, and still intact after a restart.
* **fsync EIO**: the daemon exits at once with exit code 6 without acknowledging
  (logging) the record, and a restart finds every acknowledged record.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from daemon.ops.verify import check_journal
from daemon.testing.harness import Daemon, Job, Site
from tests.e2e.conftest import parse_reply, shown
from tests.e2e.test_notify import NotifySocket
from tests.faults.conftest import FaultFS, Journals, Tallies, faults_of

pytestmark = [pytest.mark.e2e, pytest.mark.long]

NAMES = ("disk1", "disk2")
FULL_CYCLES = 2
LONG_FULL_CYCLES = 10
FAILED_WRITES_PER_CYCLE = 4  # journal writes that must fail before space returns


def transcript_damage(site: Site) -> list[str]:
    """Findings of every transcript journal (the CLI's transcripts, via the store)."""
    found = []
    for path in sorted((site.state_dir / "transcripts").glob("*.jsonl")):
        check = check_journal(path, f"t:{path.name.removesuffix('.jsonl')}", site.keyring)
        if check.finding is not None:
            found.append(check.finding.describe())
    return found


def memory_problems(site: Site, name: str) -> tuple[list[str], int]:
    """Each completed reply shows the model saw exactly the completed turns before it
    and this prompt: a turn the journal could not take is dropped from the model's
    memory too (the journal is the truth). A turn the daemon interrupted while it
    stopped (reason ``shutdown``: here, the other turns when fsync failed) stays in
    the CLI's transcript, as at any SIGTERM, so the model may have seen its prompt."""
    problems = []
    turns = [t for t in site.history(name) if t["status"] != "skipped"]
    completed = [t for t in turns if t["status"] == "completed"]
    for index, turn in enumerate(completed):
        seen = parse_reply(turn["reply"] or "")
        stopped = sum(1 for t in turns if t["turn"] < turn["turn"] and t["reason"] == "shutdown")
        expected = (index + 1, shown(turns[0]["prompt"]), shown(turn["prompt"]))
        if (seen.first, seen.last) != expected[1:] or not (
            index + 1 <= seen.n <= index + 1 + stopped
        ):
            problems.append(f"{name} turn {turn['turn']}: {seen}, expected {expected}")
    return problems, len(completed)


def wait_count(daemon: Daemon, event: str, count: int, start: int, timeout: float) -> None:
    """Wait until ``count`` lines of ``event`` were logged from line ``start`` on."""
    deadline = time.monotonic() + timeout
    while sum(1 for x in daemon.lines[start:] if x.get("event") == event) < count:
        assert daemon.running, daemon.tail()
        assert time.monotonic() < deadline, f"fewer than {count} {event} lines\n{daemon.tail()}"
        time.sleep(0.1)


def wait_statuses(
    notify: NotifySocket, start: int, done: Callable[[list[str]], bool], timeout: float = 30
) -> list[str]:
    """The ``STATUS=`` datagrams from ``start`` on, once ``done`` holds of them (or at the
    timeout). The daemon logs a line and then notifies: the datagram can reach the socket's
    reader thread a moment after the log line reaches the test."""
    deadline = time.monotonic() + timeout
    while True:
        got = [m.text for m in notify.messages()[start:] if m.text.startswith("STATUS=")]
        if done(got) or time.monotonic() > deadline:
            return got
        time.sleep(0.05)


@pytest.mark.timeout(900)
@pytest.mark.parametrize("full", ["state", "transcripts"])
def test_a_full_disk_degrades_loses_nothing_and_beats_resume(
    site: Site,
    short_tmp: Path,
    faultfs_library: Path,
    tally: Tallies,
    *,
    long_run: bool,
    full: str,
) -> None:
    """``state``: the whole state directory fills up; ``transcripts``: only the CLI
    transcripts' store fails (the conversation journals still take records), which
    must not let a turn count as completed while its transcript was lost."""
    record = tally.new(f"disk_full_{full}")
    began = time.monotonic()
    notify = NotifySocket(short_tmp / "notify.sock")
    watched = site.state_dir if full == "state" else site.state_dir / "transcripts"
    fs = FaultFS(faultfs_library, watched, site.root / "faultfs.mode")
    site.write_config([Job(name, f"{name} beat [slow:30]", every="1s") for name in NAMES])
    journals = Journals(site, list(NAMES))
    daemon = site.start(extra_env={**fs.env(), "NOTIFY_SOCKET": str(notify.path)})
    for name in NAMES:
        daemon.wait_event("turn_completed", 90, job=name)

    cycles = LONG_FULL_CYCLES if long_run else FULL_CYCLES
    partial: list[str] = []
    unjournaled: list[str] = []
    for _ in range(cycles):
        # The disk fills up in the middle of a streamed reply.
        daemon.wait_event("delta", 90, start=daemon.count())
        mark, sent = daemon.count(), len(notify.messages())
        fs.set("full")
        wait_count(daemon, "journal_write_failed", FAILED_WRITES_PER_CYCLE, mark, 90)
        # While the disk is full: no partial record anywhere, nothing shown unjournaled.
        partial += [f"{name}: {len(tail)} bytes" for name, tail in journals.read().items()]
        partial += transcript_damage(site)
        unjournaled += journals.unjournaled(daemon)
        degraded = wait_statuses(notify, sent, lambda got: any("=degraded" in t for t in got))
        assert any(text.startswith("STATUS=degraded") for text in degraded), degraded

        fs.set("")
        freed, sent = daemon.count(), len(notify.messages())
        for name in NAMES:
            daemon.wait_event("turn_completed", 120, job=name, start=freed)
        statuses = wait_statuses(notify, sent, lambda got: bool(got) and "degraded" not in got[-1])
        assert statuses and "degraded" not in statuses[-1], statuses
    assert daemon.running
    assert daemon.terminate() == 0
    notify.close()
    unjournaled += journals.unjournaled(daemon)
    partial += [f"{name}: {len(tail)} bytes" for name, tail in journals.read().items()]

    # A restart on the same journals: the memory survived the full disk.
    again = site.start()
    for name in NAMES:
        again.wait_event("turn_completed", 90, job=name)
    assert again.terminate() == 0
    partial += [f"{name}: {len(tail)} bytes" for name, tail in journals.read().items()]
    unjournaled += journals.unjournaled(again)
    problems: list[str] = []
    completed = 0
    for name in NAMES:
        found, count = memory_problems(site, name)
        problems += found
        completed += count
    done = site.vigil("verify", "--config", str(site.config_path))

    injected = faults_of(daemon)
    record.injected = len(injected)
    record.by_kind = {
        "enospc": len(faults_of(daemon, "enospc")),
        "short_write": len(faults_of(daemon, "short_write")),
        "full_periods": cycles,
    }
    record.checked = {
        "journal_writes_failed_and_rolled_back": len(daemon.events("journal_write_failed")),
        "logged_events_journaled": journals.shown_count(daemon) + journals.shown_count(again),
        "completed_turns_with_memory": completed,
        "resumed_after_space_returned": cycles,
    }
    record.lost = {
        "partial_records": len(partial),
        "unjournaled_events": len(unjournaled),
        "memory_problems": len(problems),
        "verify_failed": int(done.returncode != 0),
    }
    record.seconds = round(time.monotonic() - began, 1)
    print(f"\ndisk full: injected {record.by_kind}; checked {record.checked}; lost {record.lost}")
    assert not partial, partial
    assert not unjournaled, unjournaled[:20]
    assert not problems, problems
    assert done.returncode == 0, done.stdout + done.stderr


# ---------------------------------------------------------------- fsync EIO

FSYNC_ROUNDS = 1
LONG_FSYNC_ROUNDS = 5


@pytest.mark.timeout(900)
@pytest.mark.parametrize("policy", ["always", "turn"])
def test_a_failed_fsync_exits_without_acknowledging_and_a_restart_has_everything(
    site: Site, faultfs_library: Path, long_run: bool, tally: Tallies, policy: str
) -> None:
    """fsync fails (EIO) in the middle of a streamed reply. With ``fsync = "always"``
    the record whose fsync failed is never logged; with ``turn`` (records are synced
    at the turn's end) the turn's reply is never delivered. Either way the daemon
    starts nothing more, exits 6, and the next start has every acknowledged record."""
    record = tally.new(f"fsync_eio_{policy}")
    began = time.monotonic()
    fs = FaultFS(faultfs_library, site.state_dir, site.root / "faultfs.mode")
    site.write_config(
        [Job(name, f"{name} beat [slow:30]", every="1s") for name in NAMES], fsync=policy
    )
    journals = Journals(site, list(NAMES))
    unjournaled: list[str] = []
    acknowledged_after: list[str] = []
    exits: list[int] = []
    rounds = LONG_FSYNC_ROUNDS if long_run else FSYNC_ROUNDS
    for _ in range(rounds):
        fs.set("")
        daemon = site.start(extra_env=fs.env())
        for name in NAMES:
            daemon.wait_event("turn_completed", 90, job=name, start=daemon.count())
        daemon.wait_event("delta", 90, start=daemon.count())
        fs.set("fsync-eio")
        exits.append(daemon.wait(120))
        fault = daemon.wait_for(
            lambda x: x.get("event") == "faultfs" and x.get("fault") == "fsync_eio", 5
        )
        at = daemon.lines.index(fault)
        failed = Path(fault["path"])
        fatal = daemon.events("fatal")
        assert fatal and "fsync failed" in fatal[0]["error"], daemon.tail()
        unjournaled += journals.unjournaled(daemon)
        later = daemon.lines[at + 1 :]
        acknowledged_after += [
            f"{x['event']} of {x.get('job')} turn {x.get('turn')}"
            for x in later
            if x.get("event") in ("turn_started", "session_bound", "reply", "delivery_started")
        ]
        if policy == "always" and failed.parent.name == "conversations":
            name = failed.name.removesuffix(".jsonl")
            last = journals.followers[name].last_seq
            acknowledged_after += [
                f"{name} seq {last} (its fsync failed) was logged"
                for x in daemon.lines
                if x.get("job") == name and x.get("seq") == last
            ]
    # The next start: every acknowledged record is there, the conversations go on.
    fs.set("")
    again = site.start()
    for name in NAMES:
        again.wait_event("turn_completed", 90, job=name)
    assert again.terminate() == 0
    unjournaled += journals.unjournaled(again)
    problems: list[str] = []
    completed = 0
    for name in NAMES:
        found, count = memory_problems(site, name)
        problems += found
        completed += count
    runs = site.daemons
    record.injected = sum(len(faults_of(d, "fsync_eio")) for d in runs)
    record.by_kind = {"fsync_eio_rounds": rounds}
    record.checked = {
        "exited_6": sum(1 for rc in exits if rc == 6),
        "logged_events_journaled": sum(journals.shown_count(d) for d in runs),
        "completed_turns_with_memory": completed,
    }
    record.lost = {
        "unjournaled_events": len(unjournaled),
        "acknowledged_after_the_failure": len(acknowledged_after),
        "memory_problems": len(problems),
    }
    record.seconds = round(time.monotonic() - began, 1)
    print(f"\nfsync EIO ({policy}): exits {exits}; checked {record.checked}; lost {record.lost}")
    assert exits == [6] * rounds
    assert not unjournaled, unjournaled[:20]
    assert not acknowledged_after, acknowledged_after
    assert not problems, problems
