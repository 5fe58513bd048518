"""Issue 8: readers of a journal the daemon is writing.

``vigil history``, ``vigil tail -f`` and ``vigil verify`` read the journals directly
while the daemon appends to them. The daemon writes each record as one whole line, so
the only thing a reader can catch is the start of a line still being written: every
reader must leave it out (it is not damage), never show half a record, and never slow
the writer down.

The first tests put such a half line in a journal by hand, with this test process
holding the state lock as a running daemon does, so each reader meets it for sure.
The last one runs a real daemon with two fast jobs and all three readers at once.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest

from daemon import events as ev
from daemon.journal.framing import seal_json
from daemon.journal.keyring import Keyring, generate_key_file
from daemon.journal.lock import StateLock
from daemon.journal.scan import INCOMPLETE_LAST_LINE, scan
from daemon.layout import Layout
from daemon.testing.harness import Job, LoopbackModel, Site, vigil_argv

VERIFY_FAILED = 8
SESSION = "4f1c2a9e-0000-4000-8000-000000000001"


# ---------------------------------------------------------------- a journal by hand


@dataclass
class Written:
    """A site whose "inbox" journal ends in the first half of record ``len(events) + 1``."""

    root: Path
    config: Path
    keyring: Keyring
    journal: Path
    events: list[dict[str, Any]]
    pending: dict[str, Any]  # the record being written
    rest: bytes  # the second half of its line

    def vigil(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            vigil_argv(*args, "--config", str(self.config)),
            capture_output=True,
            text=True,
            cwd=self.root,
            env=_env(),
            timeout=timeout,
            check=False,
        )

    def append(self, data: bytes) -> None:
        fd = os.open(self.journal, os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("VIGIL_", "ANTHROPIC_"))}


@pytest.fixture
def written(tmp_path: Path) -> Written:
    key = tmp_path / "vigil.key"
    keyring = generate_key_file(key)
    (tmp_path / "work").mkdir()
    config = tmp_path / "vigil.toml"
    config.write_text(
        '[daemon]\nstate_dir = "state"\nruntime_dir = "run"\nkey_file = "vigil.key"\n\n'
        '[[heartbeat]]\nname = "inbox"\nevery = "30m"\nprompt = "Any mail?"\ncwd = "work"\n'
    )
    Layout(tmp_path / "state", tmp_path / "run").create()
    journal = tmp_path / "state" / "conversations" / "inbox.jsonl"
    events = [
        ev.session_bound(SESSION, str(tmp_path / "work"), mode="new"),
        ev.turn_started(1, "Any mail?", job="inbox", trigger="schedule"),
        ev.delta(1, "No new "),
        ev.delta(1, "mail."),
        ev.turn_completed(1),
        ev.turn_started(2, "Any mail?", job="inbox", trigger="schedule"),
        ev.delta(2, "One from "),
    ]
    pending = ev.delta(2, "Alice.")
    lines = [seal_json(keyring, "inbox", seq, e) for seq, e in enumerate(events, start=1)]
    line = seal_json(keyring, "inbox", len(events) + 1, pending)
    half = len(line) // 2
    journal.write_bytes(b"".join(lines) + line[:half])
    journal.chmod(0o600)
    return Written(tmp_path, config, keyring, journal, events, pending, line[half:])


@pytest.fixture
def daemon_lock(written: Written) -> Iterator[StateLock]:
    """This process stands in for the running daemon: it holds the state lock."""
    lock = StateLock(written.root / "state")
    lock.acquire()
    try:
        yield lock
    finally:
        lock.release()


def test_verify_counts_a_line_being_written_as_writing_not_as_damage(
    written: Written, daemon_lock: StateLock
) -> None:
    done = written.vigil("verify", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] is True and report["findings"] == []
    assert report["mirror"]["daemon_running"] is True
    [check] = report["journals"]
    assert (check["records"], check["last_seq"], check["writing"]) == (7, 7, True)
    plain = written.vigil("verify")
    assert plain.returncode == 0
    assert plain.stdout.splitlines()[0] == (
        "journals: 1 files, 7 records authenticated, 0 with problems "
        "(1 being written by the daemon, not counted)"
    )


def test_with_no_daemon_the_same_half_line_is_a_torn_tail(written: Written) -> None:
    done = written.vigil("verify", "--json")
    assert done.returncode == VERIFY_FAILED
    [finding] = json.loads(done.stdout)["findings"]
    good_end = sum(len(raw) for raw in written.journal.read_bytes().splitlines(keepends=True)[:7])
    assert finding == {
        "path": str(written.journal),
        "kind": "torn_tail",
        "line": 8,
        "seq": None,
        "detail": f"{INCOMPLETE_LAST_LINE} at byte {good_end} (a crash mid-write; the next "
        "start cuts it off and keeps a copy)",
    }
    history = written.vigil("history", "inbox", "--json")
    assert history.returncode == 0, history.stderr
    last = json.loads(history.stdout)[-1]
    assert (last["turn"], last["status"], last["reply"]) == (2, "interrupted", "One from ")


def test_history_shows_the_turn_in_progress_without_the_half_record(
    written: Written, daemon_lock: StateLock
) -> None:
    done = written.vigil("history", "inbox", "--json")
    assert done.returncode == 0, done.stderr
    turns = json.loads(done.stdout)
    assert [(t["turn"], t["status"], t["reply"]) for t in turns] == [
        (1, "completed", "No new mail."),
        (2, "running", "One from "),
    ]
    plain = written.vigil("history", "inbox")
    assert plain.returncode == 0
    assert "#2 running" in plain.stdout and "Alice" not in plain.stdout


class LineReader:
    """A child's stdout, line by line, from a thread (so a read can time out)."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for raw in stream:
            self.lines.put(raw)
        self.lines.put(None)

    def next(self, timeout: float) -> str | None:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            return None

    def take(self, count: int, timeout: float) -> list[str]:
        deadline = time.monotonic() + timeout
        got: list[str] = []
        while len(got) < count and time.monotonic() < deadline:
            line = self.next(max(0.01, deadline - time.monotonic()))
            if line is None:
                break
            got.append(line)
        return got


def test_tail_follow_prints_a_record_once_its_line_is_whole(written: Written) -> None:
    follower = subprocess.Popen(
        vigil_argv("tail", "inbox", "-f", "-n", "100", "--json", "--config", str(written.config)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=written.root,
        env=_env(),
    )
    try:
        assert follower.stdout is not None
        out = LineReader(follower.stdout)
        first = [json.loads(line) for line in out.take(7, timeout=60)]
        assert first == [{"seq": n, **e} for n, e in enumerate(written.events, start=1)]
        # Polled several times with the half line there: nothing printed for it.
        assert out.next(timeout=1.5) is None
        written.append(written.rest)
        completed = ev.turn_completed(2)
        written.append(seal_json(written.keyring, "inbox", 9, completed))
        rest = [json.loads(line) for line in out.take(2, timeout=30)]
        assert rest == [{"seq": 8, **written.pending}, {"seq": 9, **completed}]
        assert out.next(timeout=1.0) is None  # each record exactly once
    finally:
        follower.terminate()
        follower.wait(timeout=10)
    assert follower.stderr is not None
    assert follower.stderr.read() == ""


# ---------------------------------------------------------------- a real daemon


@dataclass
class Snapshot:
    """One run of ``vigil history NAME --json`` while the daemon wrote."""

    name: str
    turns: list[dict[str, Any]]


class JournalScanner:
    """Scans both journals in a loop from this process, as fast as it can: the reader
    most likely to meet a line the daemon is still writing."""

    def __init__(self, site: Site, names: list[str]) -> None:
        self.site, self.names = site, names
        self.scans = 0
        self.half_lines_seen = 0
        self.problems: list[str] = []
        self.last_seq = dict.fromkeys(names, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for name in self.names:
                try:
                    result = scan(self.site.journal_path(name), name, self.site.keyring)
                except Exception as exc:  # reported by the test, with the journal's name
                    self.problems.append(f"{name}: {exc!r}")
                    return
                self.scans += 1
                if result.tail is not None:
                    if result.tail.reason != INCOMPLETE_LAST_LINE:
                        self.problems.append(f"{name}: tail {result.tail}")
                    self.half_lines_seen += 1
                if result.last_seq < self.last_seq[name]:
                    self.problems.append(f"{name}: went back to {result.last_seq}")
                self.last_seq[name] = result.last_seq

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


@pytest.fixture
def live_site(tmp_path: Path) -> Iterator[Site]:
    model = LoopbackModel()
    made = Site(tmp_path, model)
    try:
        yield made
    finally:
        made.close()
        model.stop()


def _window(lines: list[dict[str, Any]], event: str, job: str) -> int:
    return sum(1 for x in lines if x.get("event") == event and x.get("job") == job)


def _check_snapshots(snapshots: list[list[dict[str, Any]]], final: dict[int, Any]) -> None:
    """Each ``history --json`` read while the daemon wrote, against the final history."""
    counts = [len(turns) for turns in snapshots]
    assert counts == sorted(counts) and counts[-1] > counts[0], counts
    for turns in snapshots:
        *settled, last = turns
        assert [t["turn"] for t in turns] == list(range(1, len(turns) + 1))
        for turn in settled:
            assert turn == final[turn["turn"]]
        if last["status"] == "running":
            _same_turn_so_far(last, final[last["turn"]])
        else:  # finished: only its deliveries may still have been under way
            assert {k: v for k, v in last.items() if k != "deliveries"} == {
                k: v for k, v in final[last["turn"]].items() if k != "deliveries"
            }


def _same_turn_so_far(seen: dict[str, Any], final: dict[str, Any]) -> None:
    """A turn read while it ran: the same turn, with a prefix of its final reply."""
    assert (seen["turn"], seen["prompt"], seen["started_at"]) == (
        final["turn"],
        final["prompt"],
        final["started_at"],
    )
    assert final["reply"].startswith(seen["reply"]), (seen["reply"], final["reply"])


@pytest.mark.e2e
@pytest.mark.timeout(600)
def test_history_tail_and_verify_read_a_live_daemon(live_site: Site) -> None:
    site = live_site
    names = ["alpha", "beta"]
    site.write_config(
        [
            Job("alpha", "alpha beat [slow:25]", every="2s"),
            Job("beta", "beta beat [slow:25]", every="2s"),
        ]
    )
    config = str(site.config_path)
    daemon = site.start()
    for name in names:
        daemon.wait_event("turn_completed", 90, job=name)

    follower = subprocess.Popen(
        vigil_argv("tail", "alpha", "-f", "-n", "1000", "--json", "--config", config),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=site.root,
        env=site.env(),
    )
    assert follower.stdout is not None
    tail_out = LineReader(follower.stdout)
    scanner = JournalScanner(site, names)
    start = daemon.count()
    snapshots: list[Snapshot] = []
    verifies: list[dict[str, Any]] = []
    deadline = time.monotonic() + 300
    try:
        rounds = 0
        while rounds < 4 or any(
            _window(daemon.events()[start:], "turn_completed", n) < 3 for n in names
        ):
            assert time.monotonic() < deadline, daemon.tail()
            rounds += 1
            for name in names:
                done = site.vigil("history", name, "--config", config, "--json")
                assert done.returncode == 0, done.stderr
                snapshots.append(Snapshot(name, json.loads(done.stdout)))
            done = site.vigil("verify", "--config", config, "--json")
            report = json.loads(done.stdout)
            assert done.returncode == 0, json.dumps(report, indent=1)
            verifies.append(report)
        end = daemon.count()
    finally:
        scanner.stop()
    during = daemon.events()[start:end]
    assert daemon.terminate() == 0, daemon.tail()

    # The writer was never held up: every beat that came due while the readers ran
    # was run and finished, none skipped as still running, none failed.
    for name in names:
        started = _window(during, "turn_started", name)
        completed = _window(during, "turn_completed", name)
        assert completed >= 3 and started - completed <= 1, (name, started, completed)
        assert _window(during, "beat_skipped", name) == 0, daemon.tail(60)
        assert _window(during, "turn_failed", name) == 0, daemon.tail(60)

    # The in-process scanner: only ever a line in progress at the end, never damage.
    assert scanner.problems == []
    assert scanner.scans > 0
    print(f"scans of live journals: {scanner.scans}, a line in progress: {scanner.half_lines_seen}")

    # verify: clean every time, mirror compared up to what the daemon had applied.
    for report in verifies:
        assert report["ok"] is True and report["findings"] == []
        assert report["mirror"]["daemon_running"] is True
        assert report["mirror"]["differences_total"] == 0
    final_verify = site.vigil("verify", "--config", config, "--json")
    assert final_verify.returncode == 0, final_verify.stdout

    # history: every snapshot agrees with the journal read after the daemon stopped.
    finals = {name: {t["turn"]: t for t in site.history(name, cli=True)} for name in names}
    for name in names:
        _check_snapshots([s.turns for s in snapshots if s.name == name], finals[name])

    # tail -f: every event, once, in sequence, exactly as journaled.
    frames = site.frames("alpha")
    printed: list[dict[str, Any]] = []
    catch_up = time.monotonic() + 60
    while (not printed or printed[-1]["seq"] < max(frames)) and time.monotonic() < catch_up:
        line = tail_out.next(timeout=5)
        if line is not None:
            printed.append(json.loads(line))
    follower.terminate()
    follower.wait(timeout=10)
    assert [p["seq"] for p in printed] == sorted(frames), "gaps, repeats or missing events"
    for record in printed:
        seq = record.pop("seq")
        assert record == frames[seq]
    assert follower.stderr is not None
    assert follower.stderr.read() == ""
