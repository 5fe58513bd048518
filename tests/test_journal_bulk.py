"""The rebuild's fast journal reader against ``journal.scan``: the same records or the
same error, for clean journals and for every kind of damage the journal tests plant."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from daemon import events as ev
from daemon.journal import bulk as journal_bulk
from daemon.journal.bulk import NotPlain, read_payloads
from daemon.journal.file import FsyncPolicy, Journal
from daemon.journal.framing import decode_payload
from daemon.journal.keyring import KeyEntry, Keyring
from daemon.journal.scan import scan
from daemon.mirror.db import Mirror
from daemon.mirror.queries import DumpRow
from daemon.mirror.rebuild import journal_feed
from daemon.mirror.rows import fold_journal

STREAM = "inbox"
AT = "2026-11-21T13:00:00.000Z"
OLD = Keyring.generate()
RING = OLD.rotated()  # two keys: records of both must read


def sample_events(n: int) -> list[dict[str, Any]]:
    """A conversation of ``n`` records: turns with deltas (some not ASCII), tools,
    results with cost, a skipped beat."""
    out: list[dict[str, Any]] = [ev.session_bound("s-1", "/srv/agent", mode="new", at=AT)]
    turn = 0
    while len(out) < n:
        turn += 1
        if turn % 4 == 0:
            out.append(ev.beat_skipped(turn, "busy", "still running", at=AT))
            continue
        out.append(
            ev.turn_started(turn, f"beat {turn}: anything new?", job="j", trigger="schedule")
        )
        out += [ev.delta(turn, f'part {i} — ünïcode ✓ "q" \\ x{"y" * i}', at=AT) for i in range(4)]
        out.append(ev.tool_use(turn, f"tu-{turn}", "Read", {"path": f"/tmp/{turn}"}, at=AT))
        out.append(ev.tool_result(turn, f"tu-{turn}", [{"text": "ok"}], is_error=False, at=AT))
        out.append(
            ev.result(
                turn,
                session_id="s-1",
                is_error=False,
                subtype="success",
                text=None,
                session_cost_usd=turn / 100,
                usage={"input_tokens": 10, "output_tokens": 2},
                duration_ms=5,
                num_turns=1,
                at=AT,
            )
        )
        out.append(ev.turn_completed(turn, at=AT))
    return out[:n]


def write_journal(path: Path, events: list[dict[str, Any]]) -> None:
    """Half the records sealed with the old key, half with the current one."""
    half = len(events) // 2
    for ring, part in ((OLD, events[:half]), (RING, events[half:])):
        journal = Journal.open(path, STREAM, ring, fsync=FsyncPolicy.NEVER)
        for event in part:
            journal.append(event)
        journal.close()


def edit_line(path: Path, index: int, change: Callable[[dict[str, Any]], None]) -> None:
    lines = path.read_bytes().splitlines(keepends=True)
    doc = json.loads(lines[index])
    change(doc)
    lines[index] = json.dumps(doc, separators=(",", ":")).encode() + b"\n"
    path.write_bytes(b"".join(lines))


def set_spare_bits(doc: dict[str, Any]) -> None:
    d = doc["d"]
    pad = len(d) - len(d.rstrip("="))
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    doc["d"] = d[: -pad - 1] + alphabet[alphabet.index(d[-pad - 1]) | 1] + "=" * pad


def flip_bit(doc: dict[str, Any]) -> None:
    d = doc["d"]
    doc["d"] = ("B" if d[0] == "A" else "A") + d[1:]


def sealed_elsewhere(path: Path, ring: Keyring, stream: str, seq: int) -> bytes:
    """Line ``seq`` of a journal of ``stream`` written with ``ring``."""
    other = path.with_name("other.jsonl")
    journal = Journal.open(other, stream, ring, fsync=FsyncPolicy.NEVER)
    for i in range(seq):
        journal.append({"ev": 1, "type": "delta", "at": AT, "turn": 1, "text": f"x{i}"})
    journal.close()
    line = other.read_bytes().splitlines(keepends=True)[seq - 1]
    other.unlink()
    return line


def damage(path: Path, kind: str) -> None:  # noqa: PLR0912  # one branch per kind
    lines = path.read_bytes().splitlines(keepends=True)
    if kind == "clean":
        return
    if kind == "torn tail":
        lines[-1] = lines[-1][: len(lines[-1]) // 2]
    elif kind == "no final newline":
        lines[-1] = lines[-1][:-1]
    elif kind == "garbage line at the end":
        lines.append(b"garbage\n")
    elif kind == "empty":
        lines = []
    elif kind == "flipped bit inside":
        path.write_bytes(b"".join(lines))
        edit_line(path, 3, flip_bit)
        return
    elif kind == "flipped bit in the last record":
        path.write_bytes(b"".join(lines))
        edit_line(path, len(lines) - 1, flip_bit)
        return
    elif kind == "spare base64 bits":
        index = next(i for i in range(1, len(lines) - 1) if b'="}' in lines[i])
        path.write_bytes(b"".join(lines))
        edit_line(path, index, set_spare_bits)
        return
    elif kind == "swapped":
        lines[2], lines[3] = lines[3], lines[2]
    elif kind == "duplicated":
        lines.insert(3, lines[2])
    elif kind == "another conversation's line":
        lines[2] = sealed_elsewhere(path, RING, "other", 3)
    elif kind == "unknown key":
        stranger = Keyring([KeyEntry("feedf00d", AT, os.urandom(32))])
        lines.append(sealed_elsewhere(path, stranger, STREAM, len(lines) + 1))
    elif kind == "newer version":
        path.write_bytes(b"".join(lines))
        edit_line(path, 4, lambda d: d.update(v=2))
        return
    elif kind == "fields reordered":  # still a valid record: scan reads it
        doc = json.loads(lines[4])
        lines[4] = json.dumps(dict(reversed(doc.items()))).encode() + b"\n"
    elif kind == "payload not JSON":
        path.write_bytes(b"".join(lines))
        journal = Journal.open(path, STREAM, RING, fsync=FsyncPolicy.NEVER)
        journal.append_payloads([b"{not json"])
        journal.close()
        return
    else:
        raise AssertionError(kind)
    path.write_bytes(b"".join(lines))


KINDS = [
    "clean",
    "empty",
    "torn tail",
    "no final newline",
    "garbage line at the end",
    "flipped bit inside",
    "flipped bit in the last record",
    "spare base64 bits",
    "swapped",
    "duplicated",
    "another conversation's line",
    "unknown key",
    "newer version",
    "fields reordered",
    "payload not JSON",
]
PLAIN = {"clean", "empty"}  # the fast reader reads these itself


def outcome(read: Callable[[], Any]) -> tuple[Any, ...]:
    try:
        return ("rows", read())
    except Exception as exc:  # the outcome compared is the error itself
        return ("error", type(exc), str(exc))


def replayed(path: Path, limit: int | None) -> list[DumpRow]:
    """The reference: ``journal.scan`` record by record into ``Mirror.replay``."""
    mirror = Mirror.open(":memory:")

    def feed(sink: Any) -> None:
        def visit(fr: Any) -> None:
            if limit is None or fr.seq <= limit:
                sink(fr.seq, decode_payload(fr.payload))

        scan(path, STREAM, RING, visit)

    mirror.replay(STREAM, feed)
    return mirror.dump()


def folded(path: Path, limit: int | None) -> list[DumpRow]:
    mirror = Mirror.open(":memory:")
    rows = fold_journal(path, STREAM, RING, limit)
    with mirror.bulk_load() as load:
        load.add(rows)
    return mirror.dump()


def fed(path: Path, limit: int | None) -> list[DumpRow]:
    mirror = Mirror.open(":memory:")
    mirror.replay(STREAM, journal_feed(path, STREAM, RING, limit))
    return mirror.dump()


@pytest.mark.parametrize("block", [journal_bulk.BLOCK_BYTES, 700])
@pytest.mark.parametrize("kind", KINDS)
def test_the_fast_reader_gives_the_same_records_or_the_same_error_as_scan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, block: int
) -> None:
    monkeypatch.setattr(journal_bulk, "BLOCK_BYTES", block)  # 700: a few lines per block
    path = tmp_path / "inbox.jsonl"
    write_journal(path, sample_events(40))
    damage(path, kind)
    before = path.read_bytes()

    payloads: list[bytes] = []
    try:
        for chunk in read_payloads(path, STREAM, RING):
            payloads += chunk
        plain = True
    except NotPlain:
        plain = False
    assert plain == (kind in PLAIN or kind == "payload not JSON")
    if plain:
        frames: list[bytes] = []
        scan(path, STREAM, RING, lambda fr: frames.append(fr.payload))
        assert payloads == frames

    for limit in (None, 7):
        expected = outcome(lambda: replayed(path, limit))  # noqa: B023  # called at once
        assert outcome(lambda: folded(path, limit)) == expected  # noqa: B023
        assert outcome(lambda: fed(path, limit)) == expected  # noqa: B023
    if kind in PLAIN:
        assert expected[0] == "rows"
    assert path.read_bytes() == before  # both only read


@pytest.mark.parametrize(
    "payload",
    [
        b'{"type":"delta","text":"\\u00fc \xc3\xbc \\"q\\""}',
        b' {"a": [1, 2.5, null, true]} \n',
        b'{"a":1} {"b":2}',
        b'{"a":1}x',
        b"{not json",
        b"",
        b"   ",
        b"[1, 2]",
        b'"text"',
        b"[" * 100_000,
        b"\xff",
    ],
)
def test_decode_payload_accepts_and_refuses_what_json_loads_does(payload: bytes) -> None:
    def expected() -> Any:
        obj = json.loads(payload.decode("utf-8"))
        if not isinstance(obj, dict):
            raise ValueError("journal payload is not a JSON object")
        return obj

    assert outcome(lambda: decode_payload(payload)) == outcome(expected)
