"""Append-only, encrypted, crash-safe JSONL journals: one file per stream.

Contract of :class:`Journal`:

* ``append`` writes one complete line in one ``write`` call (looping on short writes)
  and returns the record's sequence number only once the bytes are in the kernel;
  with fsync ``always`` also only once they are on disk. Callers show an event only
  after ``append`` returned ("write before show").
* A failed write is rolled back to the last complete record (``JournalWriteError``);
  if that is impossible, or an fsync fails, the journal is dead and every later call
  raises ``JournalFatalError``: the process must exit, never retry on the descriptor.
* ``open`` recovers: a torn tail (an incomplete last line, or unparseable bytes) is
  copied aside as ``<file>.broken-<UTC timestamp>`` and cut off; damage followed by
  good records, and a complete record (with its newline) that fails to authenticate,
  raise ``JournalCorruptError`` and change nothing: a crash cannot leave them.

Reading a journal (``scan``, ``read_events``: what is a torn tail, what is damage) is
:mod:`daemon.journal.scan`; this module is the writer.
"""

from __future__ import annotations

import errno
import os
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from daemon.errors import (
    JournalFatalError,
    JournalWriteError,
)
from daemon.fsutil import FILE_MODE, fsync_dir
from daemon.journal.framing import (
    check_stream_id,
    encode_payload,
    seal,
)
from daemon.journal.heads import payload_digest
from daemon.journal.keyring import Keyring
from daemon.journal.scan import ScanResult, Tail, Visitor, scan

JOURNAL_SUFFIX = ".jsonl"


class FsyncPolicy(StrEnum):
    ALWAYS = "always"  # every append
    TURN = "turn"  # at turn boundaries (``Journal.sync``), the default
    NEVER = "never"  # leave it to the kernel


@dataclass(frozen=True)
class TailCut:
    """What ``Journal.open`` did about a torn tail."""

    tail: Tail
    broken_copy: Path
    bytes_cut: int


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
        last_digest: str = "",
    ) -> None:
        self.path = path
        self.last_digest = last_digest  # of the last record: what a head commits to
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
            last_digest=result.last_digest,
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
        last_digest: str = "",
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
            last_digest=last_digest,
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
        self.last_digest = payload_digest(payloads[-1])
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
