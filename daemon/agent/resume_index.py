"""Where a transcript's resume view lies in its journal file: read only those records.

A store-backed resume needs what :func:`daemon.agent.resume_view.resume_view` picks:
everything from the last compaction on, and a few records before it. :class:`ViewIndex`
remembers where those are (sequence number and byte offset of the record holding the
last boundary, and of each earlier record the view needs), so a resume decrypts them
and the records after the boundary, not the whole history.

The index is derived and rebuildable: kept beside the stream as ``<digest>.view``
(sequence numbers and offsets only, no conversation text; written by rename, never
fsynced) and checked on use: each record it names must open, authenticated, at its
offset with its sequence number (AEAD binds the sequence), so a rewritten file (e.g.
by ``vigil key rotate --reencrypt``) or a stale index is noticed and rebuilt from a
full read. Records the view skips are not authenticated at resume; ``vigil verify``
reads every one.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon.agent.resume_view import last_boundary, resume_view
from daemon.journal.framing import Frame, FrameError, decode_payload, open_line
from daemon.journal.keyring import Keyring
from daemon.journal.scan import scan

__all__ = ["INDEX_SUFFIX", "ViewIndex", "ViewLoad", "load_view", "remove_index"]

INDEX_SUFFIX = ".view"
Position = tuple[int, int]  # (seq, byte offset of its line)


@dataclass(frozen=True)
class Positioned:
    """One decrypted record and where it is."""

    seq: int
    offset: int
    record: dict[str, Any]


@dataclass(frozen=True)
class ViewIndex:
    boundary: Position  # the record holding the last compact boundary
    keep: tuple[Position, ...]  # records before it holding entries the view needs

    def to_json(self) -> str:
        return json.dumps({"v": 1, "boundary": list(self.boundary), "keep": self.keep})

    @classmethod
    def read(cls, path: Path) -> ViewIndex | None:
        """The index at ``path``; None when missing or malformed (then rebuilt)."""
        try:
            data = json.loads(path.read_text())
            seq, offset = data["boundary"]
            keep = tuple((int(s), int(o)) for s, o in data["keep"])
            if data.get("v") != 1:
                return None
            return cls((int(seq), int(offset)), keep)
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def write(self, path: Path) -> None:
        """Replace the index at ``path`` (derived: no fsync; a lost one is rebuilt)."""
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.to_json())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)


def remove_index(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def read_at(
    path: Path, stream_id: str, keyring: Keyring, positions: tuple[Position, ...]
) -> list[Positioned] | None:
    """The records at ``positions``; None when one is not there, authentic, with its
    sequence number (the file changed: rebuild the index)."""
    out: list[Positioned] = []
    try:
        with path.open("rb") as f:
            for seq, offset in positions:
                f.seek(offset)
                raw = f.readline()
                if not raw.endswith(b"\n"):
                    return None
                frame = open_line(keyring, stream_id, raw[:-1])
                if frame.seq != seq:
                    return None
                out.append(Positioned(seq, offset, decode_payload(frame.payload)))
    except (OSError, FrameError, ValueError):
        return None
    return out


def recent(
    path: Path, stream_id: str, keyring: Keyring, index: ViewIndex
) -> tuple[set[str], Any] | None:
    """What an append needs (the uuids it must not store twice, the last summary's
    data) from the records since the last compaction and those the view keeps, so the
    first append after a start does not read a months-long history. Enough: a resume
    materializes only those entries, so only they can come back (and ``load`` drops
    duplicates anyway). None when the index does not fit the file, or no summary."""
    tail = read_from(path, stream_id, keyring, index.boundary)
    kept = read_at(path, stream_id, keyring, index.keep)
    if tail is None or kept is None:
        return None
    summaries = [p.record for p in tail.records if p.record.get("kind") == "summary"]
    if not summaries:
        return None
    uuids: set[str] = set()
    for positioned in [*kept, *tail.records]:
        if positioned.record.get("kind") == "entries":
            for entry in positioned.record["entries"]:
                uid = entry.get("uuid")
                if isinstance(uid, str):
                    uuids.add(uid)
    return uuids, summaries[-1]["data"]


@dataclass(frozen=True)
class Tail:
    records: list[Positioned]
    last_seq: int
    good_end: int  # where the complete records end (a torn last line is left out)


def read_from(path: Path, stream_id: str, keyring: Keyring, start: Position) -> Tail | None:
    """Every record from ``start`` to the end, in sequence; a torn last line is left out
    (the next append cuts it). None when anything else is wrong: the caller reads the
    whole file the careful way (``journal.scan``), which reports what it is."""
    seq, offset = start
    records: list[Positioned] = []
    try:
        with path.open("rb") as f:
            f.seek(offset)
            lines = f.read().splitlines(keepends=True)
    except OSError:
        return None
    for i, raw in enumerate(lines):
        frame = _open(keyring, stream_id, raw)
        if frame is None:
            if i == len(lines) - 1:
                break  # torn (or being written): left out, like ``scan`` does
            return None
        if frame.seq != seq:
            return None
        records.append(Positioned(seq, offset, decode_payload(frame.payload)))
        seq, offset = seq + 1, offset + len(raw)
    if not records or records[0].seq != start[0]:
        return None
    return Tail(records, seq - 1, offset)


def _open(keyring: Keyring, stream_id: str, raw: bytes) -> Frame | None:
    if not raw.endswith(b"\n"):
        return None
    try:
        return open_line(keyring, stream_id, raw[:-1])
    except FrameError:
        return None


def line_offsets(path: Path, count: int) -> list[int]:
    """Byte offsets of the first ``count`` lines (record ``seq`` starts line ``seq``)."""
    offsets: list[int] = []
    offset = 0
    with path.open("rb") as f:
        for raw in f:
            if len(offsets) == count:
                break
            offsets.append(offset)
            offset += len(raw)
    return offsets


@dataclass(frozen=True)
class ViewLoad:
    """What :func:`load_view` read: the entries to hand the SDK, the index to keep
    (None: no compaction yet, or the rule could not be applied), and where the file's
    complete records end."""

    entries: list[dict[str, Any]]
    index: ViewIndex | None
    last_seq: int
    good_end: int
    full: bool  # every record was read


def load_view(path: Path, stream_id: str, keyring: Keyring, index: ViewIndex | None) -> ViewLoad:
    """The resume view of a transcript stream, through ``index`` when it still holds.

    Falls back to reading every record (``journal.scan``: its errors propagate) when the
    index is missing or stale, and to every entry when the view cannot be applied."""
    if index is not None:
        kept = read_at(path, stream_id, keyring, index.keep)
        tail = read_from(path, stream_id, keyring, index.boundary) if kept is not None else None
        if kept is not None and tail is not None:
            view = _view(kept + tail.records)
            if view is not None:
                return ViewLoad(view[0], view[1], tail.last_seq, tail.good_end, full=False)
    records, last_seq, good_end = _read_all(path, stream_id, keyring)
    view = _view(records)
    if view is None:
        return ViewLoad(_flatten(records)[0], None, last_seq, good_end, full=True)
    return ViewLoad(view[0], view[1], last_seq, good_end, full=True)


def _read_all(path: Path, stream_id: str, keyring: Keyring) -> tuple[list[Positioned], int, int]:
    payloads: list[dict[str, Any]] = []
    result = scan(path, stream_id, keyring, lambda fr: payloads.append(decode_payload(fr.payload)))
    offsets = line_offsets(path, len(payloads))
    records = [Positioned(i + 1, offsets[i], p) for i, p in enumerate(payloads)]
    return records, result.last_seq, result.good_end


def _flatten(records: list[Positioned]) -> tuple[list[dict[str, Any]], list[Position]]:
    """Every entry once (appends are idempotent on uuid), with its record's position."""
    entries: list[dict[str, Any]] = []
    where: list[Position] = []
    seen: set[str] = set()
    for r in records:
        if r.record.get("kind") != "entries":
            continue
        for entry in r.record["entries"]:
            uid = entry.get("uuid")
            if isinstance(uid, str):
                if uid in seen:
                    continue
                seen.add(uid)
            entries.append(entry)
            where.append((r.seq, r.offset))
    return entries, where


def _view(records: list[Positioned]) -> tuple[list[dict[str, Any]], ViewIndex | None] | None:
    """The view's entries and its index; None when the rule cannot be applied."""
    entries, where = _flatten(records)
    chosen = resume_view(entries)
    if chosen is None:
        return None
    b = last_boundary(entries)
    if b is None:
        return [entries[i] for i in chosen], None
    boundary = where[b]
    keep = tuple(sorted({where[i] for i in chosen if where[i][0] < boundary[0]}))
    return [entries[i] for i in chosen], ViewIndex(boundary, keep)
