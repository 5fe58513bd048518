"""Reading a journal: authenticate every record in order, and tell a torn tail from damage.

A crash mid-write can only leave a prefix of whole lines followed by one torn line
(or a few unauthenticated ones); that tail is reported in :attr:`ScanResult.tail`, for
:meth:`daemon.journal.file.Journal.open` to cut off. Anything a crash cannot produce
(damage followed by a good record, a record out of sequence, a newer format, an
unknown key) raises. Nothing here writes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon.errors import JournalCorruptError, JournalVersionError, WrongKeyError
from daemon.journal.framing import (
    FORMAT_VERSION,
    Frame,
    FrameError,
    FrameProblem,
    decode_payload,
    open_line,
)
from daemon.journal.heads import payload_digest
from daemon.journal.keyring import Keyring

__all__ = ["INCOMPLETE_LAST_LINE", "ScanResult", "Tail", "Visitor", "read_events", "scan"]

_RECORD_START = b'{"v":'
#: ``Tail.reason`` of a last line without its newline: a torn write, or one in progress.
INCOMPLETE_LAST_LINE = "incomplete last line"


@dataclass(frozen=True)
class Tail:
    """Damage at the end of a file: from byte ``offset`` (line ``line``) to the end."""

    line: int
    offset: int
    reason: str


@dataclass(frozen=True)
class ScanResult:
    records: int
    last_seq: int
    good_end: int
    tail: Tail | None
    last_digest: str = ""  # heads.payload_digest of the last good record


Visitor = Callable[[Frame], None]


def scan(
    path: Path,
    stream_id: str,
    keyring: Keyring,
    visit: Visitor | None = None,
) -> ScanResult:
    """Authenticate every record of ``path`` in order, calling ``visit`` for each.

    Returns where the good records end and what (if anything) follows them. Raises
    ``JournalCorruptError`` for damage followed by a good record or for a complete,
    authentic record out of sequence; ``JournalVersionError`` for a newer format;
    ``WrongKeyError`` when the keyring cannot decrypt the file at all. Reads only.
    """
    last_seq = 0
    offset = 0
    good_end = 0
    count = 0
    last_payload = b""
    first_bad: tuple[int, int, FrameError | None, str] | None = None
    damaged: list[tuple[int, bytes]] = []  # the lines from first_bad on
    forged: tuple[int, FrameError] | None = None  # the first complete line failing auth
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            start, offset = offset, offset + len(raw)
            if not raw.endswith(b"\n"):
                if first_bad is None:
                    first_bad = (lineno, start, None, INCOMPLETE_LAST_LINE)
                damaged.append((lineno, raw))
                break
            try:
                frame = open_line(keyring, stream_id, raw[:-1])
            except FrameError as err:
                _raise_if_never_torn(path, lineno, err, keyring)
                if first_bad is None:
                    first_bad = (lineno, start, err, str(err))
                if forged is None and err.problem is FrameProblem.AUTH:
                    forged = (lineno, err)
                damaged.append((lineno, raw))
                continue
            if first_bad is not None:
                bad_line, _, bad_err, reason = first_bad
                raise JournalCorruptError(path, bad_line, bad_err.seq if bad_err else None, reason)
            if frame.seq != last_seq + 1:
                what = "duplicated or replayed" if frame.seq <= last_seq else "out of order"
                raise JournalCorruptError(
                    path,
                    lineno,
                    frame.seq,
                    f"record is {what} (expected sequence {last_seq + 1})",
                )
            last_seq = frame.seq
            last_payload = frame.payload
            good_end = offset
            count += 1
            if visit is not None:
                visit(frame)
    tail = None
    if first_bad is not None:
        line, start, tail_err, reason = first_bad
        if count == 0 and tail_err is not None and tail_err.problem is FrameProblem.AUTH:
            # Not one record authenticates: this is the wrong key, not a torn write.
            raise WrongKeyError(path, tail_err.key_id or "?", keyring.source)
        _raise_if_record_inside(path, stream_id, keyring, damaged, last_seq)
        if forged is not None:
            # A record is written in one call, its newline last: a crash leaves at most
            # an incomplete last line (or garbage the file system never wrote, which is
            # cut off and kept aside). A complete record that fails to authenticate was
            # changed after it was written: corruption, never a torn tail to cut.
            bad_line, bad = forged
            raise JournalCorruptError(path, bad_line, bad.seq, str(bad), last=True)
        tail = Tail(line, start, reason)
    digest = payload_digest(last_payload) if count else ""
    return ScanResult(count, last_seq, good_end, tail, digest)


def _raise_if_record_inside(
    path: Path, stream_id: str, keyring: Keyring, damaged: list[tuple[int, bytes]], last_seq: int
) -> None:
    """A torn write leaves a prefix of whole lines; it never leaves an intact record
    after damage on the same line. That happens when the newline between two records
    is damaged: then both are acknowledged records, to report and not to cut off."""
    for lineno, raw in damaged:
        body = raw[:-1] if raw.endswith(b"\n") else raw
        pos = body.find(_RECORD_START, 1)
        while pos != -1:
            try:
                frame = open_line(keyring, stream_id, body[pos:])
            except FrameError:
                pos = body.find(_RECORD_START, pos + 1)
                continue
            raise JournalCorruptError(
                path,
                damaged[0][0],
                last_seq + 1,
                f"damaged record; an intact record (sequence {frame.seq}) follows it "
                f"on line {lineno} at byte {pos}, so the line break between them was damaged",
            )


def _raise_if_never_torn(path: Path, lineno: int, err: FrameError, keyring: Keyring) -> None:
    """Problems a crash mid-write cannot produce are reported, never cut off."""
    if err.problem is FrameProblem.VERSION:
        raise JournalVersionError(path, lineno, err.version, FORMAT_VERSION)
    if err.problem is FrameProblem.UNKNOWN_KEY:
        raise WrongKeyError(path, err.key_id or "?", keyring.source)
    if err.problem is FrameProblem.STREAM:
        raise JournalCorruptError(path, lineno, err.seq, str(err))


def read_events(path: Path, stream_id: str, keyring: Keyring) -> Iterator[dict[str, Any]]:
    """Every event of a journal in order, without modifying it.

    A damaged tail (possibly a record still being written by the daemon) is not
    yielded; damage before the tail raises.
    """
    events: list[dict[str, Any]] = []
    scan(path, stream_id, keyring, lambda fr: events.append(decode_payload(fr.payload)))
    yield from events
