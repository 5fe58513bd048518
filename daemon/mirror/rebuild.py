"""Purge and replay: the mirror rebuilt from the journals (never patched).

:func:`rebuild` of everything replaces all rows in one transaction
(``Mirror.bulk_load``): each journal is read with ``journal_bulk`` (every record
authenticated) and folded into rows by ``mirror_rows.fold_journal``, in ``workers``
processes (``rebuild_workers``) or in this one, while this process inserts them; the
secondary and full-text indexes are built once at the end. Those rows are the ones
the incremental path writes (tested row by row). A rebuild of named conversations
takes that incremental path: each one purged and replayed in its own transaction
(``Mirror.replay``), as the daemon does while it opens each journal at start.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import repeat
from pathlib import Path
from typing import Any

from daemon.errors import UnknownJobError, VigilError
from daemon.events import Event
from daemon.journal.bulk import NotPlain, read_payloads
from daemon.journal.framing import Frame, decode_payload
from daemon.journal.keyring import Keyring
from daemon.journal.logstore import conversation_names, journal_path
from daemon.journal.scan import scan
from daemon.mirror.db import Feed, Mirror, Sink
from daemon.mirror.rows import ConvRows, fold_journal
from daemon.mirror.workers import Job, WorkerPool

AHEAD_PER_WORKER = 4  # conversations folded ahead of the inserts, per worker


@dataclass(frozen=True)
class RebuildProgress:
    conversation: str
    conversations_done: int
    conversations_total: int
    records: int
    bytes_done: int
    bytes_total: int


@dataclass
class RebuildStats:
    records: int = 0
    conversations: int = 0
    seconds: float = 0.0
    errors: list[VigilError] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "conversations": self.conversations,
            "seconds": round(self.seconds, 3),
            "records_per_second": round(self.rate),
            "errors": [str(e) for e in self.errors],
        }


Progress = Callable[[RebuildProgress], None]


def rebuild(
    mirror: Mirror,
    journals_dir: Path,
    keyring: Keyring,
    names: Iterable[str] | None = None,
    progress: Progress | None = None,
    *,
    upto: Mapping[str, int] | None = None,
    workers: int = 1,
) -> RebuildStats:
    """Purge and replay from the journals: all conversations, or those in ``names``.

    All: every row is replaced in one transaction, so conversations whose journal is
    gone disappear; ``workers`` processes fold the journals (1: this process does).
    A journal that cannot be read (corrupt, wrong key, newer format) is left out and
    its error listed in the result; the others are rebuilt. A torn tail (perhaps a
    record the daemon is writing right now) is not replayed. ``upto`` limits a
    conversation to its records up to a sequence number. Raises ``UnknownJobError``
    for a name without a journal.
    """
    started = time.perf_counter()
    present = conversation_names(journals_dir)
    chosen = present if names is None else list(dict.fromkeys(names))
    known = set(present)
    for name in chosen:
        if name not in known:
            raise UnknownJobError(name, present)
    jobs: list[Job] = [
        (journal_path(journals_dir, name), name, None if upto is None else upto.get(name))
        for name in chosen
    ]
    if names is None:
        stats = _rebuild_all(mirror, jobs, keyring, progress, workers=workers)
    else:
        stats = _rebuild_each(mirror, jobs, keyring, progress)
    stats.seconds = time.perf_counter() - started
    return stats


def _rebuild_all(
    mirror: Mirror, jobs: list[Job], keyring: Keyring, progress: Progress | None, *, workers: int
) -> RebuildStats:
    report = _Reporter(progress, [path for path, _, _ in jobs])
    stats = RebuildStats()
    workers = min(workers, len(jobs))
    pool = WorkerPool(keyring.entries, workers) if workers > 1 else None
    try:
        with mirror.bulk_load() as load:  # the journals are read after it took the lock
            folded: Iterator[ConvRows | None] = (
                pool.fold(jobs, AHEAD_PER_WORKER * workers) if pool is not None else repeat(None)
            )
            for (path, name, limit), folded_rows in zip(jobs, folded, strict=False):
                try:
                    rows = folded_rows
                    if rows is None:  # in this process, or a worker failed: raise it here
                        rows = fold_journal(path, name, keyring, limit)
                    load.add(rows)
                    stats.records += rows.records
                    stats.conversations += 1
                except VigilError as exc:
                    stats.errors.append(exc)
                report(name, stats.records)
    finally:
        if pool is not None:
            pool.close()
    return stats


def _rebuild_each(
    mirror: Mirror, jobs: list[Job], keyring: Keyring, progress: Progress | None
) -> RebuildStats:
    report = _Reporter(progress, [path for path, _, _ in jobs])
    stats = RebuildStats()
    for path, name, limit in jobs:
        try:
            stats.records += mirror.replay(name, journal_feed(path, name, keyring, limit))
            stats.conversations += 1
        except VigilError as exc:
            mirror.purge(name)
            stats.errors.append(exc)
        report(name, stats.records)
    return stats


class _Reporter:
    """Progress after each conversation, by bytes of journal."""

    def __init__(self, progress: Progress | None, paths: list[Path]) -> None:
        self._progress = progress
        self._sizes = [p.stat().st_size for p in paths] if progress is not None else []
        self._total = sum(self._sizes)
        self._done = 0
        self._bytes = 0

    def __call__(self, name: str, records: int) -> None:
        if self._progress is None:
            return
        self._bytes += self._sizes[self._done]
        self._done += 1
        self._progress(
            RebuildProgress(name, self._done, len(self._sizes), records, self._bytes, self._total)
        )


def events_feed(records: Iterable[tuple[int, Event]]) -> Feed:
    """A :data:`Feed` of ``(seq, event)`` pairs already in memory."""

    def feed(sink: Sink) -> None:
        for seq, event in records:
            sink(seq, event)

    return feed


def journal_feed(path: Path, name: str, keyring: Keyring, limit: int | None = None) -> Feed:
    """A ``Feed`` of a journal's records, read-only; every record is authenticated
    (``journal_bulk``, and ``journal.scan`` where the file is not plain records: a
    torn tail is left out, damage after a good record raises)."""

    def feed(sink: Sink) -> None:
        seq = 0
        try:
            for chunk in read_payloads(path, name, keyring):
                for payload in chunk:
                    seq += 1
                    if limit is None or seq <= limit:
                        sink(seq, decode_payload(payload))
        except NotPlain:
            # Read again from the start: the records sent already are the same ones,
            # each authenticated, and a replay ignores sequences it has applied.
            def visit(fr: Frame) -> None:
                if fr.seq > seq and (limit is None or fr.seq <= limit):
                    sink(fr.seq, decode_payload(fr.payload))

            scan(path, name, keyring, visit)

    return feed
