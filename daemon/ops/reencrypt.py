"""``vigil key rotate --reencrypt``: rewrite every journal under the newest key.

For each journal (conversations and transcripts), one at a time, with the state lock
held so no daemon appends meanwhile:

1. open it as the daemon does (a torn tail is cut off, a copy kept aside) and read
   every record;
2. seal the same payloads, same stream and sequence numbers, under the newest key
   into ``<file>.reencrypt-tmp`` next to it, and fsync that file;
3. read the new file back and check it holds exactly the same records, all under
   the newest key;
4. ``os.replace`` it over the original and fsync the directory.

A crash at any point leaves, for each journal, either the old or the new file
complete under its name (the replace is atomic and happens only after step 3); a
leftover ``.reencrypt-tmp`` is an unfinished copy, removed by the next run and never
read by the daemon. Journals already entirely under the newest key are left alone,
so running it again after a crash finishes the job. Old keys stay in the key file:
copies of torn tails (``*.broken-*``) are not rewritten and still need them.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daemon.errors import JournalRollbackError, VigilError
from daemon.fsutil import FILE_MODE, fsync_dir
from daemon.journal.file import JOURNAL_SUFFIX, Journal
from daemon.journal.framing import Frame, seal
from daemon.journal.heads import Head, HeadsFile, stat_problems
from daemon.journal.keyring import Keyring, rotate_key_file
from daemon.journal.lock import StateLock
from daemon.journal.scan import scan
from daemon.layout import Layout

TMP_SUFFIX = ".reencrypt-tmp"
_WRITE_CHUNK = 1 << 20


class ReencryptError(VigilError):
    """A rewritten journal did not read back identical; the original was kept."""

    exit_code = 4

    def __init__(self, path: Path, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(
            f"journal {path}: the re-encrypted copy {problem}; the original is unchanged"
        )


@dataclass
class ReencryptStats:
    key_id: str = ""
    files: int = 0
    rewritten: int = 0
    already_current: int = 0
    records: int = 0
    seconds: float = 0.0
    leftovers_removed: list[str] = field(default_factory=list)
    tails_cut: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id,
            "files": self.files,
            "rewritten": self.rewritten,
            "already_current": self.already_current,
            "records": self.records,
            "seconds": round(self.seconds, 3),
            "leftovers_removed": self.leftovers_removed,
            "tails_cut": self.tails_cut,
        }


Progress = Callable[[Path, int, int], None]  # (journal, files done, files total)


def journals(layout: Layout) -> list[tuple[Path, str]]:
    """Every journal file with its stream id: conversations, then transcripts."""
    out = [(p, p.name[: -len(JOURNAL_SUFFIX)]) for p in _files(layout.conversations)]
    out += [(p, f"t:{p.name[: -len(JOURNAL_SUFFIX)]}") for p in _files(layout.transcripts)]
    return out


def _files(directory: Path) -> list[Path]:
    return sorted(directory.glob(f"*{JOURNAL_SUFFIX}")) if directory.is_dir() else []


def rotate_and_reencrypt(
    key_path: Path, layout: Layout, *, progress: Progress | None = None
) -> ReencryptStats:
    """Add a fresh key to ``key_path``, then re-encrypt every journal under it.

    Refuses (``StateLockedError``) while a daemon runs on the state directory. Every
    journal is first read with the current keyring, so a wrong key file or a damaged
    journal stops this before the key file changes.
    """
    lock = StateLock(layout.state_dir)
    lock.acquire()
    try:
        ring = Keyring.load(key_path)
        for path, stream in journals(layout):
            scan(path, stream, ring)  # raises on a wrong key or damage; changes nothing
        rotated = rotate_key_file(key_path)  # durable before any journal depends on it
        return _reencrypt_locked(layout, rotated, progress)
    finally:
        lock.release()


def reencrypt_all(
    layout: Layout, keyring: Keyring, *, progress: Progress | None = None
) -> ReencryptStats:
    """Re-encrypt every journal under ``keyring``'s newest key (takes the state lock)."""
    lock = StateLock(layout.state_dir)
    lock.acquire()
    try:
        return _reencrypt_locked(layout, keyring, progress)
    finally:
        lock.release()


def _reencrypt_locked(
    layout: Layout, keyring: Keyring, progress: Progress | None
) -> ReencryptStats:
    started = time.perf_counter()
    stats = ReencryptStats(key_id=keyring.current_id)
    heads = HeadsFile(layout.state_dir, keyring)
    committed = heads.load()
    if committed is not None:  # never launder a truncated journal into a fresh commitment
        problems = stat_problems(layout.state_dir, committed)
        if problems:
            raise JournalRollbackError(heads.path, [p.describe() for p in problems])
    stats.leftovers_removed = [str(p) for p in remove_leftovers(layout)]
    files = journals(layout)
    for i, (path, stream) in enumerate(files):
        records, rewritten, cut = reencrypt_journal(path, stream, keyring)
        stats.files += 1
        stats.records += records
        stats.rewritten += rewritten
        stats.already_current += not rewritten
        if cut:
            stats.tails_cut.append(str(path))
        if progress is not None:
            progress(path, i + 1, len(files))
    # The journals' sizes changed (their records and digests did not): commit afresh.
    fresh = {}
    for path, stream in files:
        result = scan(path, stream, keyring)
        if result.records:
            key = path.relative_to(layout.state_dir).as_posix()
            fresh[key] = Head(result.last_seq, result.good_end, result.last_digest)
    heads.save(fresh)
    stats.seconds = time.perf_counter() - started
    return stats


def remove_leftovers(layout: Layout) -> list[Path]:
    """Unfinished copies a crash left behind (their originals are complete)."""
    removed = []
    for directory in (layout.conversations, layout.transcripts):
        if not directory.is_dir():
            continue
        for leftover in sorted(directory.glob(f"*{JOURNAL_SUFFIX}{TMP_SUFFIX}")):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
            removed.append(leftover)
        if removed:
            fsync_dir(directory)
    return removed


def reencrypt_journal(path: Path, stream: str, keyring: Keyring) -> tuple[int, bool, bool]:
    """Rewrite one journal under the newest key. Returns (records, rewritten, tail cut).

    The caller holds the state lock.
    """
    frames: list[Frame] = []
    journal = Journal.open(path, stream, keyring, visit=frames.append, create=False)
    cut = journal.tail_cut is not None
    journal.close()
    if all(f.key_id == keyring.current_id for f in frames):
        return len(frames), False, cut
    tmp = path.with_name(path.name + TMP_SUFFIX)
    _write_sealed(tmp, stream, keyring, frames)
    try:
        _check_copy(tmp, path, stream, keyring, frames)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    os.replace(tmp, path)
    fsync_dir(path.parent)
    return len(frames), True, cut


def _write_sealed(tmp: Path, stream: str, keyring: Keyring, frames: list[Frame]) -> None:
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
        buf: list[bytes] = []
        size = 0
        for f in frames:
            line = seal(keyring, stream, f.seq, f.payload)
            buf.append(line)
            size += len(line)
            if size >= _WRITE_CHUNK:
                _write_all(fd, b"".join(buf))
                buf, size = [], 0
        _write_all(fd, b"".join(buf))
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _check_copy(
    tmp: Path, original: Path, stream: str, keyring: Keyring, frames: list[Frame]
) -> None:
    copied: list[Frame] = []
    result = scan(tmp, stream, keyring, copied.append)
    if result.tail is not None:
        raise ReencryptError(original, f"has a damaged line {result.tail.line}")
    if len(copied) != len(frames):
        raise ReencryptError(original, f"holds {len(copied)} records, not {len(frames)}")
    for old, new in zip(frames, copied, strict=True):
        if new.seq != old.seq or new.payload != old.payload:
            raise ReencryptError(original, f"differs at sequence {old.seq}")
        if new.key_id != keyring.current_id:
            raise ReencryptError(original, f"has sequence {new.seq} under key {new.key_id!r}")
