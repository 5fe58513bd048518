"""``key rotate --reencrypt``: every journal ends under the new key with the same records,
and a SIGKILL at any moment leaves each journal complete under one key or the other."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from daemon.errors import StateLockedError, WrongKeyError
from daemon.journal.file import FsyncPolicy, Journal
from daemon.journal.framing import Frame, decode_payload
from daemon.journal.keyring import Keyring, generate_key_file
from daemon.journal.lock import StateLock
from daemon.journal.scan import read_events, scan
from daemon.layout import Layout
from daemon.ops.reencrypt import TMP_SUFFIX, journals, reencrypt_all, rotate_and_reencrypt

ROOT = Path(__file__).resolve().parent.parent


def make_state(tmp_path: Path, *, conversations: int, records: int) -> tuple[Layout, Path]:
    """Conversation and transcript journals under a fresh key file."""
    layout = Layout(tmp_path / "state", tmp_path / "run")
    layout.create()
    key_path = tmp_path / "vigil.key"
    ring = generate_key_file(key_path)
    rng = random.Random(3)
    streams = [(layout.conversations / f"job-{i}.jsonl", f"job-{i}") for i in range(conversations)]
    streams.append((layout.transcripts / "0a1b2c.jsonl", "t:0a1b2c"))
    for path, stream in streams:
        journal = Journal.open(path, stream, ring, fsync=FsyncPolicy.NEVER)
        for k in range(records):
            text = "".join(rng.choice("abcdefgh ") for _ in range(rng.randint(20, 120)))
            journal.append({"ev": 1, "type": "delta", "at": "t", "turn": k // 20, "text": text})
        journal.close()
    return layout, key_path


def contents(layout: Layout, ring: Keyring) -> dict[str, list[dict[str, Any]]]:
    return {stream: list(read_events(path, stream, ring)) for path, stream in journals(layout)}


def key_ids(layout: Layout, ring: Keyring) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for path, stream in journals(layout):
        frames: list[Frame] = []
        scan(path, stream, ring, frames.append)
        out[stream] = {f.key_id for f in frames}
    return out


def test_round_trip_under_the_new_key(tmp_path: Path) -> None:
    layout, key_path = make_state(tmp_path, conversations=3, records=40)
    old = Keyring.load(key_path)
    before = contents(layout, old)
    stats = rotate_and_reencrypt(key_path, layout)
    ring = Keyring.load(key_path)
    assert ring.key_ids == [*old.key_ids, stats.key_id]
    assert (stats.files, stats.rewritten, stats.records) == (4, 4, 160)
    assert contents(layout, ring) == before
    assert set().union(*key_ids(layout, ring).values()) == {stats.key_id}
    # The daemon can open and append to them as before.
    path, stream = journals(layout)[0]
    journal = Journal.open(path, stream, ring, create=False)
    assert journal.tail_cut is None
    assert journal.append({"ev": 1, "type": "delta", "at": "t", "turn": 9, "text": "on"}) == 41
    journal.close()
    # Nothing left to do the second time.
    again = reencrypt_all(layout, ring)
    assert (again.rewritten, again.already_current) == (0, 4)
    for path, _ in journals(layout):
        assert path.stat().st_mode & 0o777 == 0o600


def test_refuses_while_a_daemon_holds_the_state_and_changes_nothing(tmp_path: Path) -> None:
    layout, key_path = make_state(tmp_path, conversations=1, records=3)
    key_before = key_path.read_bytes()
    files_before = {p: p.read_bytes() for p, _ in journals(layout)}
    lock = StateLock(layout.state_dir)
    lock.acquire()
    try:
        with pytest.raises(StateLockedError):
            rotate_and_reencrypt(key_path, layout)
    finally:
        lock.release()
    assert key_path.read_bytes() == key_before
    assert {p: p.read_bytes() for p, _ in journals(layout)} == files_before


def test_a_key_file_that_cannot_read_the_journals_is_refused_before_rotating(
    tmp_path: Path,
) -> None:
    layout, _ = make_state(tmp_path, conversations=1, records=3)
    wrong = tmp_path / "other.key"
    generate_key_file(wrong)
    before = wrong.read_bytes()
    with pytest.raises(WrongKeyError):
        rotate_and_reencrypt(wrong, layout)
    assert wrong.read_bytes() == before


def test_leftovers_are_removed_and_a_torn_tail_is_cut_aside(tmp_path: Path) -> None:
    layout, key_path = make_state(tmp_path, conversations=2, records=5)
    first = layout.conversations / "job-0.jsonl"
    leftover = first.with_name(first.name + TMP_SUFFIX)
    leftover.write_bytes(b"half a copy")
    second = layout.conversations / "job-1.jsonl"
    with second.open("ab") as f:
        f.write(b'{"v":1,"c":"job-1"')
    stats = rotate_and_reencrypt(key_path, layout)
    assert stats.leftovers_removed == [str(leftover)]
    assert not leftover.exists()
    assert stats.tails_cut == [str(second)]
    assert len(list(layout.conversations.glob("job-1.jsonl.broken-*"))) == 1
    ring = Keyring.load(key_path)
    assert [len(v) for v in contents(layout, ring).values()] == [5, 5, 5]


CHILD = """
import sys
from pathlib import Path
from daemon.layout import Layout
from daemon.ops.reencrypt import rotate_and_reencrypt
layout = Layout(Path(sys.argv[1]), Path(sys.argv[2]))
print("ready", flush=True)
rotate_and_reencrypt(Path(sys.argv[3]), layout)
print("done", flush=True)
"""


def run_child(layout: Layout, key_path: Path, kill_after: float | None) -> tuple[bool, float]:
    """Run a rotation in a child; SIGKILL it ``kill_after`` s into the work (after its
    imports). Returns whether it finished, and how long its work ran."""
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(layout.state_dir), str(layout.runtime_dir), key_path],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    assert child.stdout.readline() == "ready\n"
    started = time.perf_counter()
    if kill_after is None:
        assert child.wait(timeout=120) == 0
        return True, time.perf_counter() - started
    time.sleep(kill_after)
    child.send_signal(signal.SIGKILL)  # our own child, by its pid
    child.wait(timeout=30)
    return child.returncode == 0, time.perf_counter() - started


def test_reencrypt_killed_at_random_points_never_loses_a_record(tmp_path: Path) -> None:
    layout, key_path = make_state(tmp_path, conversations=8, records=300)
    expected = contents(layout, Keyring.load(key_path))
    _, work = run_child(layout, key_path, None)
    rng = random.Random()
    kills = 0  # children killed while still working
    mixed = 0  # kills that left some journals under the new key and some under an older one
    for _ in range(100):
        finished, _ = run_child(layout, key_path, rng.uniform(0, work))
        kills += not finished
        ring = Keyring.load(key_path)  # whatever keys the rotations got to add
        for path, stream in journals(layout):
            journal = Journal.open(path, stream, ring, create=False)  # as the daemon would
            assert journal.tail_cut is None
            journal.close()
        assert contents(layout, ring) == expected
        ids = key_ids(layout, ring)
        assert all(len(v) == 1 for v in ids.values())  # each file is wholly one copy
        mixed += len(set().union(*ids.values())) > 1
        if kills >= 24:
            break
    assert kills >= 24
    assert mixed >= 3, "the kills never landed in the middle of the swaps"
    run_child(layout, key_path, None)
    ring = Keyring.load(key_path)
    assert contents(layout, ring) == expected
    assert set().union(*key_ids(layout, ring).values()) == {ring.current_id}
    assert not list(layout.conversations.glob(f"*{TMP_SUFFIX}"))


def test_payloads_survive_byte_for_byte(tmp_path: Path) -> None:
    layout, key_path = make_state(tmp_path, conversations=1, records=10)
    old = Keyring.load(key_path)
    path, stream = journals(layout)[0]
    before: list[Frame] = []
    scan(path, stream, old, before.append)
    rotate_and_reencrypt(key_path, layout)
    after: list[Frame] = []
    scan(path, stream, Keyring.load(key_path), after.append)
    assert [(f.seq, f.payload) for f in after] == [(f.seq, f.payload) for f in before]
    assert decode_payload(after[0].payload)["type"] == "delta"
    assert os.stat(path).st_mode & 0o777 == 0o600
