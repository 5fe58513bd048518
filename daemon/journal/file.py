"""Append-only, encrypted, crash-safe JSONL journals: one file per stream.

Contract of :class:`Journal`:

* ``append`` writes one complete line in one ``write`` call (looping on short writes)
  and returns the record's sequence number only once the bytes are in the kernel;
  with fsync ``always`` also only once they are on disk. Callers show an event only
  after ``append`` returned ("write before show").
* A failed write is rolled back to the last complete record (``JournalWriteError``);
  if that is impossible, or an fsync fails, the journal is dead and every later call
  raises ``JournalFatalError``: the process must exit, never retry on the descriptor.
* ``open`` recovers: a torn tail (incomplete, unparseable or unauthenticated last
  lines) is copied aside as ``<file>.broken-<UTC timestamp>`` and cut off; damage
  followed by good records raises ``JournalCorruptError`` and changes nothing.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from daemon.errors import (
    JournalCorruptError,
    JournalFatalError,
    JournalVersionError,
    JournalWriteError,
    WrongKeyError,
)
from daemon.fsutil import FILE_MODE, fsync_dir
from daemon.journal.framing import (
    FORMAT_VERSION,
    Frame,
    FrameError,
    FrameProblem,
    check_stream_id,
    decode_payload,
    encode_payload,
    open_line,
    seal,
)
from daemon.journal.keyring import Keyring

JOURNAL_SUFFIX = ".jsonl"
_RECORD_START = b'{"v":'
#: ``Tail.reason`` of a last line without its newline: a torn write, or one in progress.
INCOMPLETE_LAST_LINE = "incomplete last line"


class FsyncPolicy(StrEnum):
    ALWAYS = "always"  # every append
    TURN = "turn"  # at turn boundaries (``Journal.sync``), the default
    NEVER = "never"  # leave it to the kernel


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


@dataclass(frozen=True)
class TailCut:
    """What ``Journal.open`` did about a torn tail."""

    tail: Tail
    broken_copy: Path
    bytes_cut: int


Visitor = Callable[[Frame], None]


def scan(
    path: Path,
    stream_id: str,
    keyring: Keyring,
    visit: Visitor | None = None,
    *,
    after: tuple[int, int] = (0, 0),
) -> ScanResult:
    """Authenticate every record of ``path`` in order, calling ``visit`` for each.

    Returns where the good records end and what (if anything) follows them. Raises
    ``JournalCorruptError`` for damage followed by a good record or for a complete,
    authentic record out of sequence; ``JournalVersionError`` for a newer format;
    ``WrongKeyError`` when the keyring cannot decrypt the file at all. Reads only.
    ``after`` = (byte offset, sequence): read on from there, the end of that record
    (known good: a checkpoint's anchor); the result counts the records before it.
    """
    offset, last_seq = after
    good_end = offset
    count = last_seq  # record n is on line n
    first_bad: tuple[int, int, FrameError | None, str] | None = None
    damaged: list[tuple[int, bytes]] = []  # the lines from first_bad on
    with path.open("rb") as f:
        f.seek(offset)
        for lineno, raw in enumerate(f, start=last_seq + 1):
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
        tail = Tail(line, start, reason)
    return ScanResult(count, last_seq, good_end, tail)


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


class Journal:
    """One open, appendable journal file. See the module docstring for the contract."""

    def __init__(
        self,
        path: Path,
        stream_id: str,
        keyring: Keyring,
        *,
        fd: int,
        last_seq: int,
        size: int,
        fsync: FsyncPolicy,
        tail_cut: TailCut | None,
    ) -> None:
        self.path = path
        self.stream_id = stream_id
        self.keyring = keyring
        self.fsync_policy = fsync
        self.last_seq = last_seq
        self.tail_cut = tail_cut
        self._fd: int | None = fd
        self._size = size
        self._dirty = False
        self._dead: JournalFatalError | None = None

    @classmethod
    def open(
        cls,
        path: Path,
        stream_id: str,
        keyring: Keyring,
        *,
        fsync: FsyncPolicy = FsyncPolicy.TURN,
        visit: Visitor | None = None,
        create: bool = True,
    ) -> Journal:
        """Open (recovering a torn tail) or create the journal at ``path``."""
        check_stream_id(stream_id)
        if not path.exists():
            if not create:
                raise FileNotFoundError(path)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, FILE_MODE)
            os.fchmod(fd, FILE_MODE)
            fsync_dir(path.parent)
            return cls(
                path, stream_id, keyring, fd=fd, last_seq=0, size=0, fsync=fsync, tail_cut=None
            )
        return cls._adopt(path, stream_id, keyring, scan(path, stream_id, keyring, visit), fsync)

    @classmethod
    def open_scanned(
        cls,
        path: Path,
        stream_id: str,
        keyring: Keyring,
        result: ScanResult,
        size: int,
        *,
        fsync: FsyncPolicy = FsyncPolicy.TURN,
    ) -> Journal | None:
        """Open for appending a journal whose :func:`scan` (``result``, of a file of
        ``size`` bytes) was made elsewhere, cutting its torn tail. ``None`` when the file
        is no longer that size: read it again with :meth:`open`."""
        if path.stat().st_size != size:
            return None
        return cls._adopt(path, stream_id, keyring, result, fsync)

    @classmethod
    def _adopt(
        cls, path: Path, stream_id: str, keyring: Keyring, result: ScanResult, fsync: FsyncPolicy
    ) -> Journal:
        """Open a scanned journal for appending, cutting its torn tail first."""
        tail_cut = _cut_tail(path, result) if result.tail is not None else None
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        return cls(
            path,
            stream_id,
            keyring,
            fd=fd,
            last_seq=result.last_seq,
            size=result.good_end,
            fsync=fsync,
            tail_cut=tail_cut,
        )

    @classmethod
    def reopen(
        cls,
        path: Path,
        stream_id: str,
        keyring: Keyring,
        *,
        last_seq: int,
        size: int,
        fsync: FsyncPolicy = FsyncPolicy.TURN,
    ) -> Journal:
        """Reopen a journal this process wrote and closed, without reading it again.

        Falls back to a full :meth:`open` (scan and recovery) when the file's size is not
        the ``size`` it had when closed: someone else touched it.
        """
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        if os.fstat(fd).st_size != size:
            os.close(fd)
            return cls.open(path, stream_id, keyring, fsync=fsync)
        return cls(
            path,
            stream_id,
            keyring,
            fd=fd,
            last_seq=last_seq,
            size=size,
            fsync=fsync,
            tail_cut=None,
        )

    # --- writing ---------------------------------------------------------------------

    def append(self, event: dict[str, Any]) -> int:
        """Seal and write one event; returns its sequence number."""
        return self.append_payloads([encode_payload(event)])

    def append_payloads(self, payloads: list[bytes]) -> int:
        """Seal and write several events in one write call; returns the last sequence."""
        fd = self._writable()
        first = self.last_seq + 1
        if len(payloads) == 1:  # the common case, kept cheap
            data = seal(self.keyring, self.stream_id, first, payloads[0])
        else:
            data = b"".join(
                seal(self.keyring, self.stream_id, first + i, p) for i, p in enumerate(payloads)
            )
        self._write_all(fd, data)
        self.last_seq = first + len(payloads) - 1
        self._size += len(data)
        self._dirty = True
        if self.fsync_policy is FsyncPolicy.ALWAYS:
            self._fsync(fd)
        return self.last_seq

    def sync(self) -> None:
        """Turn boundary: fsync unless the policy is ``never``."""
        if self.fsync_policy is FsyncPolicy.NEVER or not self._dirty:
            return
        self._fsync(self._writable())

    def close(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            if self._dirty and self._dead is None and self.fsync_policy is not FsyncPolicy.NEVER:
                os.fsync(fd)
        finally:
            os.close(fd)

    @property
    def name(self) -> str:
        return self.stream_id

    @property
    def size(self) -> int:
        return self._size

    def _writable(self) -> int:
        if self._dead is not None:
            raise self._dead
        if self._fd is None:
            raise ValueError(f"journal {self.path} is closed")
        return self._fd

    def _write_all(self, fd: int, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                n = os.write(fd, view)
                view = view[n:]
        except OSError as exc:
            name = errno.errorcode.get(exc.errno or 0, "EIO")
            try:
                os.ftruncate(fd, self._size)
            except OSError as exc2:
                raise self._die(exc2, "could not roll back a partial write") from exc
            raise JournalWriteError(self.path, name, exc.strerror or str(exc)) from exc

    def _fsync(self, fd: int) -> None:
        try:
            os.fsync(fd)
        except OSError as exc:
            raise self._die(exc, "fsync failed") from exc
        self._dirty = False

    def _die(self, exc: OSError, detail: str) -> JournalFatalError:
        name = errno.errorcode.get(exc.errno or 0, "EIO")
        self._dead = JournalFatalError(self.path, name, detail)
        return self._dead


def _cut_tail(path: Path, result: ScanResult) -> TailCut:
    assert result.tail is not None  # noqa: S101  # caller checked; narrows the type
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    broken = path.with_name(f"{path.name}.broken-{stamp}")
    shutil.copyfile(path, broken)
    os.chmod(broken, FILE_MODE)
    size = path.stat().st_size
    fd = os.open(broken, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    fd = os.open(path, os.O_WRONLY)
    try:
        os.ftruncate(fd, result.good_end)
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(path.parent)
    return TailCut(result.tail, broken, size - result.good_end)
