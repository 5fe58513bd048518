"""``verify``: damaged journal records and a mirror that disagrees are found, with where."""

from __future__ import annotations

import base64
import json
import sqlite3
from pathlib import Path

import pytest

from daemon.journal.file import FsyncPolicy, Journal
from daemon.journal.keyring import Keyring
from daemon.journal.lock import StateLock, daemon_running
from daemon.journal.logstore import journal_path
from daemon.layout import Layout
from daemon.mirror.db import Mirror
from daemon.mirror.rebuild import rebuild
from daemon.ops.verify import verify
from tests.test_mirror import sample_streams, write_journals


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    layout = Layout(tmp_path / "state", tmp_path / "run")
    layout.create()
    return layout


KEYRING = Keyring.generate()


def mirror_file(layout: Layout) -> Path:
    return layout.runtime_dir / "mirror.sqlite3"


def build(layout: Layout) -> None:
    write_journals(layout.conversations, KEYRING, sample_streams())
    mirror = Mirror.open(mirror_file(layout))
    rebuild(mirror, layout.conversations, KEYRING)
    mirror.close()


def tamper_line(path: Path, line: int) -> None:
    """Flip one bit of the ciphertext on ``line`` (1-based); the envelope stays valid."""
    lines = path.read_bytes().split(b"\n")
    env = json.loads(lines[line - 1])
    data = bytearray(base64.b64decode(env["d"]))
    data[0] ^= 1
    env["d"] = base64.b64encode(bytes(data)).decode()
    lines[line - 1] = json.dumps(env, separators=(",", ":")).encode()
    path.write_bytes(b"\n".join(lines))


def test_a_clean_state_verifies(layout: Layout) -> None:
    build(layout)
    report = verify(layout, KEYRING, mirror_file(layout))
    assert report.ok, report.render()
    assert report.mirror_state == "compared"
    assert report.records == sum(len(s) for s in sample_streams().values())
    assert report.render().endswith("OK\n")


def test_a_planted_mirror_mismatch_is_found_with_table_key_and_columns(layout: Layout) -> None:
    build(layout)
    db = sqlite3.connect(mirror_file(layout))
    db.execute("UPDATE turns SET status = 'failed' WHERE conversation = 'inbox' AND turn = 2")
    db.execute("DELETE FROM tool_calls WHERE conversation = 'digest'")
    db.execute(
        "INSERT INTO skips VALUES ('inbox', 99, 9, '2026-01-01T00:00:00Z', 'x', NULL, NULL, '{}')"
    )
    db.commit()
    db.close()
    report = verify(layout, KEYRING, mirror_file(layout))
    assert not report.ok
    by_table = {(d.table, tuple(d.key.values())): d for d in report.differences}
    changed = by_table["turns", ("inbox", 2)]
    assert (changed.live, changed.rebuilt) == ({"status": "failed"}, {"status": "completed"})
    missing = [d for d in report.differences if d.table == "tool_calls"]
    assert len(missing) == 2
    assert all(d.live is None and d.rebuilt is not None for d in missing)
    extra = by_table["skips", ("inbox", 99)]
    assert extra.rebuilt is None
    assert report.differences_total == 4
    text = report.render()
    assert "turns [conversation='inbox', turn=2]: status: live 'failed' != journal" in text
    assert "vigil rebuild" in text
    assert text.endswith("FAILED\n")


def test_an_index_out_of_step_with_the_turns_is_found(layout: Layout) -> None:
    build(layout)
    db = sqlite3.connect(mirror_file(layout))
    # Both copies of the row agree, but the FTS index still holds the old text.
    db.execute("UPDATE turns SET reply = 'The balloon has landed' WHERE turn = 2")
    db.commit()
    db.close()
    report = verify(layout, KEYRING, mirror_file(layout))
    assert not report.ok
    assert report.mirror_problem is not None
    assert "full-text index" in report.mirror_problem


def test_a_tampered_record_is_found_by_file_line_and_sequence(layout: Layout) -> None:
    build(layout)
    inbox = journal_path(layout.conversations, "inbox")
    tamper_line(inbox, 4)
    report = verify(layout, KEYRING, mirror_file(layout))
    assert not report.ok
    (finding,) = report.findings
    assert (finding.path, finding.kind, finding.line, finding.seq) == (str(inbox), "corrupt", 4, 4)
    assert f"{inbox}: line 4 (sequence 4) corrupt" in report.render()
    checked = {Path(j.path).name: j for j in report.journals}
    assert checked["digest.jsonl"].records == len(sample_streams()["digest"])  # went on
    # The rebuilt side leaves the damaged conversation out, as `vigil rebuild` would.
    assert {d.key.get("conversation", d.key.get("name")) for d in report.differences} == {"inbox"}


def test_a_torn_tail_a_wrong_key_and_a_transcript_are_each_reported(layout: Layout) -> None:
    build(layout)
    digest = journal_path(layout.conversations, "digest")
    with digest.open("ab") as f:
        f.write(b'{"v":1,"c":"digest","s":13,"k":"')  # a crash mid-write
    other = Keyring.generate()
    stranger = Journal.open(
        journal_path(layout.conversations, "stranger"), "stranger", other, fsync=FsyncPolicy.NEVER
    )
    stranger.append({"ev": 1, "type": "session_bound", "at": "x"})
    stranger.close()
    transcript = layout.transcripts / "ab12.jsonl"
    t = Journal.open(transcript, "t:ab12", KEYRING, fsync=FsyncPolicy.NEVER)
    for i in range(3):
        t.append({"kind": "entries", "entries": [{"uuid": str(i)}]})
    t.close()
    tamper_line(transcript, 2)
    report = verify(layout, KEYRING, mirror_file(layout))
    found = {(Path(f.path).name, f.kind, f.line) for f in report.findings}
    assert found == {
        ("digest.jsonl", "torn_tail", 13),
        ("stranger.jsonl", "wrong_key", None),
        ("ab12.jsonl", "corrupt", 2),
    }
    payload = report.as_json()
    assert payload["ok"] is False
    assert len(payload["findings"]) == 3


def test_a_running_daemons_mirror_may_lag_but_not_differ(layout: Layout) -> None:
    streams = sample_streams()
    write_journals(layout.conversations, KEYRING, streams)
    mirror = Mirror.open(mirror_file(layout), flush_every=10_000, flush_interval=3600)
    for name, events in streams.items():
        for seq, event in enumerate(events[:-2], start=1):
            mirror.apply(name, seq, event)
    mirror.flush()
    lock = StateLock(layout.state_dir)
    lock.acquire()  # this process plays the daemon
    try:
        assert daemon_running(layout.state_dir)
        report = verify(layout, KEYRING, mirror_file(layout))
        assert report.ok, report.render()
        assert report.daemon_running
    finally:
        lock.release()
    report = verify(layout, KEYRING, mirror_file(layout))
    assert not report.daemon_running
    assert not report.ok  # stopped: the mirror must hold every record
    assert ("conversations", {"name": "inbox"}) in [(d.table, d.key) for d in report.differences]
    mirror.close()


def test_no_mirror_is_not_a_failure(layout: Layout) -> None:
    write_journals(layout.conversations, KEYRING, sample_streams())
    report = verify(layout, KEYRING, mirror_file(layout))
    assert report.ok
    assert report.mirror_state == "absent"
    assert not mirror_file(layout).exists()  # verify created nothing


def test_daemon_running_without_proc_locks_probes(layout: Layout) -> None:
    def no_proc() -> str:
        raise OSError("no /proc here")

    assert not daemon_running(layout.state_dir, no_proc)  # no lock file yet
    lock = StateLock(layout.state_dir)
    lock.acquire()
    try:
        assert daemon_running(layout.state_dir, no_proc)
    finally:
        lock.release()
    assert not daemon_running(layout.state_dir, no_proc)
    assert not daemon_running(layout.state_dir)
