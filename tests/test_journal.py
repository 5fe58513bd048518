"""The encrypted journal: round trips, keys, torn tails, tampering, write failures."""

from __future__ import annotations

import base64
import errno
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from daemon import events
from daemon.errors import (
    JournalCorruptError,
    JournalFatalError,
    JournalVersionError,
    VigilError,
    WrongKeyError,
)
from daemon.journal.file import FsyncPolicy, Journal
from daemon.journal.framing import Frame, decode_payload
from daemon.journal.keyring import KeyEntry, Keyring, generate_key_file, rotate_key_file
from daemon.journal.scan import read_events, scan

STREAM = "inbox"
RING = Keyring.generate()
CHILD = Path(__file__).with_name("journal_writer_child.py")


def sample_events(n: int) -> list[dict[str, Any]]:
    """``n`` realistic events, the same for the same ``n`` (fixed timestamps)."""
    at = "2026-11-21T13:00:00.000Z"
    out: list[dict[str, Any]] = [events.session_bound("sess-1", "/srv/agent", mode="new", at=at)]
    for i in range(n - 1):
        if i % 3 == 0:
            prompt = f"beat {i}: anything new?"
            out.append(events.turn_started(i, prompt, job="inbox", trigger="schedule", at=at))
        elif i % 3 == 1:
            out.append(events.delta(i, f'part {i} — ünïcode ✓ "quoted" \\ back\nslash', at=at))
        else:
            tool_input = {"path": f"/tmp/{i}", "n": [i, None]}
            out.append(events.tool_use(i, f"tu-{i}", "Read", tool_input, at=at))
    return out[:n]


def write_journal(path: Path, evs: list[dict[str, Any]], ring: Keyring = RING) -> None:
    journal = Journal.open(path, STREAM, ring, fsync=FsyncPolicy.NEVER)
    try:
        for ev in evs:
            journal.append(ev)
    finally:
        journal.close()


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def broken_copies(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.broken-*"))


def envelope(line: bytes) -> dict[str, Any]:
    doc = json.loads(line)
    assert isinstance(doc, dict)
    return doc


def frames_of(path: Path, ring: Keyring = RING) -> list[Frame]:
    frames: list[Frame] = []
    scan(path, STREAM, ring, frames.append)
    return frames


# --- round trips and keys ---------------------------------------------------------------


def test_round_trip_returns_the_same_events_in_order(tmp_path: Path) -> None:
    path = tmp_path / "inbox.jsonl"
    evs = sample_events(40)
    write_journal(path, evs)
    assert list(read_events(path, STREAM, RING)) == evs
    assert [f.seq for f in frames_of(path)] == list(range(1, 41))
    assert (path.stat().st_mode & 0o777) == 0o600
    # No plaintext at rest: not even the tool name or a prompt word.
    raw = path.read_bytes()
    assert b"beat" not in raw and b"Read" not in raw and b"/srv/agent" not in raw

    journal = Journal.open(path, STREAM, RING)
    try:
        assert journal.last_seq == 40
        assert journal.tail_cut is None
        assert journal.append_payloads([b'{"a":1}', b'{"b":2}']) == 42
        assert journal.append({"c": 3}) == 43
    finally:
        journal.close()
    assert list(read_events(path, STREAM, RING))[40:] == [{"a": 1}, {"b": 2}, {"c": 3}]


def test_open_visits_every_record_and_refuses_bad_stream_ids(tmp_path: Path) -> None:
    path = tmp_path / "inbox.jsonl"
    write_journal(path, sample_events(5))
    seen: list[Frame] = []
    Journal.open(path, STREAM, RING, visit=seen.append).close()
    assert [decode_payload(f.payload) for f in seen] == sample_events(5)
    with pytest.raises(FileNotFoundError):
        Journal.open(tmp_path / "missing.jsonl", STREAM, RING, create=False)
    with pytest.raises(ValueError, match="bad journal stream id"):
        Journal.open(tmp_path / "x.jsonl", "../etc", RING)
    closed = Journal.open(path, STREAM, RING)
    closed.close()
    with pytest.raises(ValueError, match="is closed"):
        closed.append({"late": True})


def test_records_before_and_after_a_key_rotation_stay_readable(tmp_path: Path) -> None:
    key_file = tmp_path / "vigil.key"
    old_ring = generate_key_file(key_file)
    path = tmp_path / "inbox.jsonl"
    evs = sample_events(6)
    write_journal(path, evs[:3], Keyring.load(key_file))

    new_ring = rotate_key_file(key_file)
    assert new_ring.current_id != old_ring.current_id
    write_journal(path, evs[3:], Keyring.load(key_file))

    key_ids = [envelope(line)["k"] for line in lines_of(path)]
    assert key_ids == [old_ring.current_id] * 3 + [new_ring.current_id] * 3
    assert list(read_events(path, STREAM, Keyring.load(key_file))) == evs
    # The old keyring alone cannot read the new records: a clear error, not a cut tail.
    before = path.read_bytes()
    with pytest.raises(WrongKeyError) as info:
        Journal.open(path, STREAM, old_ring)
    assert info.value.key_id == new_ring.current_id
    assert path.read_bytes() == before
    assert broken_copies(tmp_path) == []


def test_a_different_keyring_is_refused_and_nothing_changes(tmp_path: Path) -> None:
    path = tmp_path / "inbox.jsonl"
    right, wrong = tmp_path / "right.key", tmp_path / "wrong.key"
    generate_key_file(right)
    generate_key_file(wrong)
    write_journal(path, sample_events(5), Keyring.load(right))
    before = path.read_bytes()

    with pytest.raises(WrongKeyError) as info:
        Journal.open(path, STREAM, Keyring.load(wrong))
    message = str(info.value)
    assert str(path) in message and str(wrong) in message
    assert "nothing was changed" in message
    with pytest.raises(WrongKeyError):
        list(read_events(path, STREAM, Keyring.load(wrong)))
    assert path.read_bytes() == before
    assert broken_copies(tmp_path) == []


def test_same_key_id_with_other_key_material_is_a_wrong_key_not_a_torn_tail(
    tmp_path: Path,
) -> None:
    path = tmp_path / "inbox.jsonl"
    write_journal(path, sample_events(3))
    impostor = Keyring(
        [KeyEntry(RING.current_id, "2026-01-01T00:00:00Z", os.urandom(32))], "impostor.key"
    )
    before = path.read_bytes()
    with pytest.raises(WrongKeyError, match=r"impostor\.key"):
        Journal.open(path, STREAM, impostor)
    assert path.read_bytes() == before
    assert broken_copies(tmp_path) == []


def test_nonces_stay_unique_across_many_reopen_and_append_cycles(tmp_path: Path) -> None:
    path = tmp_path / "inbox.jsonl"
    for cycle in range(60):
        journal = Journal.open(path, STREAM, RING, fsync=FsyncPolicy.NEVER)
        try:
            for i in range(15):
                journal.append({"cycle": cycle, "i": i})
            journal.append_payloads([b"{}"] * 5)
        finally:
            journal.close()
    nonces = [envelope(line)["n"] for line in lines_of(path)]
    assert len(nonces) == 60 * 20
    assert len(set(nonces)) == len(nonces)
    assert all(len(base64.b64decode(n)) == 12 for n in nonces)
    assert [f.seq for f in frames_of(path)] == list(range(1, 1201))


# --- torn tails -------------------------------------------------------------------------


def assert_recovered(
    directory: Path, path: Path, damaged: bytes, good: bytes, good_events: list[dict[str, Any]]
) -> None:
    """Open a damaged journal and check everything an operator would check."""
    journal = Journal.open(path, STREAM, RING, fsync=FsyncPolicy.NEVER)
    try:
        assert journal.last_seq == len(good_events)
        assert journal.tail_cut is not None
        assert journal.tail_cut.bytes_cut == len(damaged) - len(good)
        assert journal.tail_cut.tail.offset == len(good)
        copies = broken_copies(directory)
        assert copies == [journal.tail_cut.broken_copy]
        assert copies[0].read_bytes() == damaged
        assert (copies[0].stat().st_mode & 0o777) == 0o600
        assert path.read_bytes() == good
        assert journal.append({"after": "recovery"}) == len(good_events) + 1
    finally:
        journal.close()
    assert list(read_events(path, STREAM, RING)) == [*good_events, {"after": "recovery"}]


def test_a_cut_at_every_byte_offset_of_the_last_record_is_recovered(tmp_path: Path) -> None:
    source = tmp_path / "source.jsonl"
    evs = sample_events(4)
    write_journal(source, evs)
    original = source.read_bytes()
    good = b"".join(lines_of(source)[:-1])
    assert len(original) - len(good) > 150
    for offset in range(len(good) + 1, len(original)):
        case = tmp_path / f"cut-{offset}"
        case.mkdir()
        path = case / "inbox.jsonl"
        path.write_bytes(original[:offset])
        assert_recovered(case, path, original[:offset], good, evs[:-1])


def test_a_torn_first_record_leaves_an_empty_journal_that_starts_at_one(tmp_path: Path) -> None:
    source = tmp_path / "source.jsonl"
    write_journal(source, sample_events(1))
    case = tmp_path / "case"
    case.mkdir()
    path = case / "inbox.jsonl"
    damaged = source.read_bytes()[:37]
    path.write_bytes(damaged)
    assert_recovered(case, path, damaged, b"", [])


def _is_json_object(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except (ValueError, RecursionError):
        return False


garbage_tails = st.one_of(
    st.binary(min_size=1, max_size=400),
    st.builds(
        lambda n, nl: b"\x00" * n + (b"\n" if nl else b""), st.integers(1, 5000), st.booleans()
    ),
    st.lists(st.binary(max_size=80), min_size=1, max_size=6).map(b"\n".join),
    st.lists(st.binary(max_size=80), min_size=1, max_size=6).map(lambda ls: b"\n".join(ls) + b"\n"),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cut=st.integers(0, 10_000), garbage=garbage_tails)
def test_garbage_after_the_last_good_record_is_cut_off_and_kept_aside(
    tmp_path_factory: pytest.TempPathFactory, cut: int, garbage: bytes
) -> None:
    """A torn last record (cut anywhere) followed by garbage or NULs, with or without
    newlines: every complete record before it is kept, the rest set aside."""
    case = tmp_path_factory.mktemp("garbage")
    path = case / "inbox.jsonl"
    evs = sample_events(5)
    write_journal(path, evs)
    original = path.read_bytes()
    lines = lines_of(path)
    damaged = b"".join(lines[:-1]) + lines[-1][: cut % (len(lines[-1]) + 1)] + garbage
    if damaged.startswith(original):  # the garbage completed the last record's line
        good, good_events = original, evs
    else:
        good, good_events = b"".join(lines[:-1]), evs[:-1]
    # Garbage that happens to be a JSON object could be a legitimate refusal (a newer
    # version, another stream); random bytes practically never are.
    assume(damaged != good)
    assume(not any(_is_json_object(line) for line in damaged[len(good) :].split(b"\n")))
    path.write_bytes(damaged)
    assert_recovered(case, path, damaged, good, good_events)


def test_deeply_nested_garbage_is_a_torn_tail_before_the_end_and_corruption_inside(
    tmp_path: Path,
) -> None:
    """'[[[[...' overflows the JSON parser's recursion limit; it is still just garbage."""
    path = tmp_path / "inbox.jsonl"
    evs = sample_events(3)
    write_journal(path, evs)
    good = path.read_bytes()
    damaged = good + b"[" * 100_000 + b"\n"
    path.write_bytes(damaged)
    assert_recovered(tmp_path, path, damaged, good, evs)

    lines = lines_of(path)
    lines.insert(1, b"[" * 50_000 + b"\n")
    path.write_bytes(b"".join(lines))
    for copy in broken_copies(tmp_path):
        copy.unlink()
    err = _unchanged_after_refusal(path, JournalCorruptError)
    assert isinstance(err, JournalCorruptError)
    assert (err.line, err.seq) == (2, None)


# --- tampering and corruption before the tail --------------------------------------------


def _unchanged_after_refusal(
    path: Path, expected: type[VigilError], ring: Keyring = RING
) -> VigilError:
    before = path.read_bytes()
    with pytest.raises(expected) as info:
        Journal.open(path, STREAM, ring)
    with pytest.raises(expected):
        list(read_events(path, STREAM, ring))
    assert path.read_bytes() == before, "a refused journal must not be modified"
    assert broken_copies(path.parent) == []
    assert str(path) in str(info.value)
    return info.value


def _rewrite_line(path: Path, index: int, edit: dict[str, Any]) -> None:
    lines = lines_of(path)
    doc = envelope(lines[index])
    doc.update(edit)
    lines[index] = json.dumps(doc, separators=(",", ":")).encode() + b"\n"
    path.write_bytes(b"".join(lines))


def test_a_flipped_ciphertext_bit_in_a_middle_record_names_file_line_and_sequence(
    tmp_path: Path,
) -> None:
    path = tmp_path / "inbox.jsonl"
    write_journal(path, sample_events(6))
    doc = envelope(lines_of(path)[2])
    ct = bytearray(base64.b64decode(doc["d"]))
    ct[5] ^= 0x10
    _rewrite_line(path, 2, {"d": base64.b64encode(bytes(ct)).decode()})
    err = _unchanged_after_refusal(path, JournalCorruptError)
    assert isinstance(err, JournalCorruptError)
    assert (err.line, err.seq) == (3, 3)
    assert "line 3 (sequence 3)" in str(err) and "authentication failed" in str(err)


@pytest.mark.parametrize("index", [2, 3], ids=["middle", "second-to-last"])
def test_every_single_bit_flip_in_a_record_before_the_last_is_refused(
    tmp_path: Path, index: int
) -> None:
    """Each of the record's bits (its line break too), flipped alone, makes open refuse
    and change nothing."""
    path = tmp_path / "inbox.jsonl"
    write_journal(path, sample_events(5))
    original = path.read_bytes()
    lines = lines_of(path)
    start = sum(len(line) for line in lines[:index])
    kinds: dict[str, int] = {}
    for bit in range(len(lines[index]) * 8):
        damaged = bytearray(original)
        damaged[start + bit // 8] ^= 1 << (bit % 8)
        path.write_bytes(bytes(damaged))
        # Corrupt, or for a flipped key id / version digit the precise other refusal.
        with pytest.raises((JournalCorruptError, JournalVersionError, WrongKeyError)) as info:
            Journal.open(path, STREAM, RING)
        assert str(path) in str(info.value)
        if isinstance(info.value, JournalCorruptError | JournalVersionError):
            assert info.value.line == index + 1, (bit, str(info.value))
        assert path.read_bytes() == bytes(damaged)
        kinds[type(info.value).__name__] = kinds.get(type(info.value).__name__, 0) + 1
    assert broken_copies(tmp_path) == []
    assert kinds["JournalCorruptError"] > 0.9 * len(lines[index]) * 8


def test_a_damaged_line_break_between_the_last_two_records_is_not_a_torn_tail(
    tmp_path: Path,
) -> None:
    """Both records were acknowledged: report them, do not cut them off as torn."""
    path = tmp_path / "inbox.jsonl"
    write_journal(path, sample_events(5))
    lines = lines_of(path)
    lines[3] = lines[3][:-1] + b" "
    path.write_bytes(b"".join(lines))
    err = _unchanged_after_refusal(path, JournalCorruptError)
    assert isinstance(err, JournalCorruptError)
    assert (err.line, err.seq) == (4, 4)
    assert "intact record (sequence 5) follows it on line 4" in str(err)


def test_base64_with_unused_bits_set_is_refused_although_it_decodes_the_same(
    tmp_path: Path,
) -> None:
    path = tmp_path / "inbox.jsonl"
    write_journal(path, [{"x": "y" * n} for n in range(6)])
    # Find a record whose ciphertext ends in padding and set the spare bits of the
    # character before it: the decoded bytes, and so the tag, do not change.
    lines = lines_of(path)
    index = next(i for i in range(1, 5) if envelope(lines[i])["d"].endswith("="))
    d = envelope(lines[index])["d"]
    pad = len(d) - len(d.rstrip("="))
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = d[-pad - 1]
    sibling = alphabet[alphabet.index(last) | 1]
    edited = d[: -pad - 1] + sibling + "=" * pad
    assert base64.b64decode(edited) == base64.b64decode(d) and edited != d
    _rewrite_line(path, index, {"d": edited})
    err = _unchanged_after_refusal(path, JournalCorruptError)
    assert isinstance(err, JournalCorruptError)
    assert (err.line, err.seq) == (index + 1, index + 1)
    assert "non-canonical base64" in str(err)


def test_swapped_lines_are_reported_as_out_of_order(tmp_path: Path) -> None:
    path = tmp_path / "inbox.jsonl"
    write_journal(path, sample_events(6))
    lines = lines_of(path)
    lines[2], lines[3] = lines[3], lines[2]
    path.write_bytes(b"".join(lines))
    err = _unchanged_after_refusal(path, JournalCorruptError)
    assert isinstance(err, JournalCorruptError)
    assert (err.line, err.seq) == (3, 4)
    assert "line 3 (sequence 4)" in str(err) and "out of order" in str(err)


def test_a_duplicated_line_is_reported_as_replayed(tmp_path: Path) -> None:
    path = tmp_path / "inbox.jsonl"
    write_journal(path, sample_events(6))
    lines = lines_of(path)
    lines.insert(3, lines[2])
    path.write_bytes(b"".join(lines))
    err = _unchanged_after_refusal(path, JournalCorruptError)
    assert isinstance(err, JournalCorruptError)
    assert (err.line, err.seq) == (4, 3)
    assert "line 4 (sequence 3)" in str(err) and "duplicated or replayed" in str(err)


@pytest.mark.parametrize("where", ["replacing a record", "inserted", "at the end"])
def test_a_line_from_another_conversation_is_refused(tmp_path: Path, where: str) -> None:
    other = tmp_path / "other.jsonl"
    other_journal = Journal.open(other, "other", RING)
    for i in range(4):
        other_journal.append({"other": i})
    other_journal.close()
    foreign = lines_of(other)[2]  # sequence 3 of "other", same keyring

    path = tmp_path / "inbox.jsonl"
    write_journal(path, sample_events(5))
    lines = lines_of(path)
    if where == "replacing a record":
        lines[2] = foreign
    elif where == "inserted":
        lines.insert(2, foreign)
    else:
        lines.append(foreign)
    path.write_bytes(b"".join(lines))
    err = _unchanged_after_refusal(path, JournalCorruptError)
    assert isinstance(err, JournalCorruptError)
    line = 6 if where == "at the end" else 3
    assert (err.line, err.seq) == (line, 3)
    assert f"line {line} (sequence 3)" in str(err)
    assert "another conversation" in str(err) and "'other'" in str(err)


def test_a_foreign_line_relabelled_to_this_conversation_fails_authentication(
    tmp_path: Path,
) -> None:
    other = tmp_path / "other.jsonl"
    other_journal = Journal.open(other, "other", RING)
    for i in range(4):
        other_journal.append({"other": i})
    other_journal.close()
    path = tmp_path / "inbox.jsonl"
    write_journal(path, sample_events(5))
    lines = lines_of(path)
    lines[2] = lines_of(other)[2].replace(b'"c":"other"', f'"c":"{STREAM}"'.encode())
    path.write_bytes(b"".join(lines))
    err = _unchanged_after_refusal(path, JournalCorruptError)
    assert isinstance(err, JournalCorruptError)
    assert (err.line, err.seq) == (3, 3)
    assert "authentication failed" in str(err)


@pytest.mark.parametrize("index", [1, 4])
def test_a_newer_format_version_asks_for_an_upgrade(tmp_path: Path, index: int) -> None:
    path = tmp_path / "inbox.jsonl"
    write_journal(path, sample_events(5))
    _rewrite_line(path, index, {"v": 2})
    err = _unchanged_after_refusal(path, JournalVersionError)
    assert isinstance(err, JournalVersionError)
    assert (err.line, err.version) == (index + 1, 2)
    assert f"line {index + 1}" in str(err) and "written by a newer vigil (format 2)" in str(err)


# --- write and fsync failures ------------------------------------------------------------


def test_a_write_that_hits_the_file_size_limit_is_rolled_back(tmp_path: Path) -> None:
    key_file = tmp_path / "vigil.key"
    generate_key_file(key_file)
    path = tmp_path / "efbig.jsonl"
    done = subprocess.run(
        [sys.executable, str(CHILD), "efbig", str(path), str(key_file), "20"],
        capture_output=True,
        timeout=60,
        check=False,
        cwd=Path(__file__).parent.parent,
    )
    assert done.returncode == 0, done.stderr.decode()
    report = json.loads(done.stdout)
    assert len(report["failures"]) == 2, report
    for failure in report["failures"]:
        assert failure["type"] == "JournalWriteError"
        assert failure["errno_name"] == "EFBIG"
        assert str(path) in failure["message"] and "EFBIG" in failure["message"]
        assert failure["size_after"] == report["size_before"]  # the half record is gone
        assert failure["last_seq"] == 20
    assert report["seq_after"] == 21
    ring = Keyring.load(key_file)
    frames: list[Frame] = []
    scan(path, "efbig", ring, frames.append)
    assert [f.seq for f in frames] == list(range(1, 22))
    assert decode_payload(frames[-1].payload)["text"] == "after the limit was lifted"
    assert scan(path, "efbig", ring).tail is None
    assert broken_copies(tmp_path) == []


def test_a_failed_fsync_is_fatal_and_every_later_append_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "inbox.jsonl"
    journal = Journal.open(path, STREAM, RING, fsync=FsyncPolicy.ALWAYS)
    assert journal.append({"n": 1}) == 1
    # No real EIO is available here: os.fsync fails as it would after a disk error.
    monkeypatch.setattr(os, "fsync", _eio_fsync)
    with pytest.raises(JournalFatalError) as info:
        journal.append({"n": 2})
    assert info.value.errno_name == "EIO"
    assert str(path) in str(info.value) and "fsync failed" in str(info.value)
    monkeypatch.undo()  # the disk "recovered": the journal must still refuse

    for attempt in (lambda: journal.append({"n": 3}), journal.sync):
        with pytest.raises(JournalFatalError):
            attempt()
    with pytest.raises(JournalFatalError):
        journal.append_payloads([b"{}"])
    journal.close()
    assert [f.seq for f in frames_of(path)] == [1, 2]  # record 2 was written, not acked


def test_a_failed_fsync_at_a_turn_boundary_is_fatal(tmp_path: Path) -> None:
    path = tmp_path / "inbox.jsonl"
    journal = Journal.open(path, STREAM, RING, fsync=FsyncPolicy.TURN)
    journal.append({"n": 1})
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "fsync", _eio_fsync)
        journal.append({"n": 2})  # policy "turn": no fsync per append
        with pytest.raises(JournalFatalError):
            journal.sync()
    with pytest.raises(JournalFatalError):
        journal.append({"n": 3})
    journal.close()
    assert [decode_payload(f.payload) for f in frames_of(path)] == [{"n": 1}, {"n": 2}]


def _eio_fsync(fd: int) -> None:
    raise OSError(errno.EIO, os.strerror(errno.EIO))


@pytest.mark.parametrize("index", [-1, -2])
def test_a_complete_last_record_that_fails_authentication_is_corruption_not_a_torn_tail(
    tmp_path: Path, index: int
) -> None:
    """A crash leaves at most an incomplete last line: a complete record (with its
    newline) that fails to authenticate was altered after it was written. Cutting it
    off as a torn tail would let tampering delete the newest records unnoticed."""
    path = tmp_path / "inbox.jsonl"
    write_journal(path, sample_events(5))
    lines = lines_of(path)
    record = json.loads(lines[index])
    data = record["d"]
    record["d"] = data[:20] + ("A" if data[20] != "A" else "B") + data[21:]
    lines[index] = (json.dumps(record, separators=(",", ":")) + "\n").encode()
    if index == -2:  # and a torn write after it: still corruption
        lines[-1] = lines[-1][:30]
    damaged = b"".join(lines)
    path.write_bytes(damaged)
    line = len(lines) + index + 1
    with pytest.raises(JournalCorruptError) as info:
        Journal.open(path, "inbox", RING)
    assert (info.value.line, info.value.seq, info.value.last) == (line, line, True)
    assert "a complete line (with its newline), which a crash mid-write cannot leave" in str(
        info.value
    )
    assert path.read_bytes() == damaged
    assert list(tmp_path.iterdir()) == [path]  # nothing cut, no broken copy
