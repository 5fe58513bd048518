"""Purge and replay: the mirror rebuilt from the journals (never patched).

:func:`rebuild` replays every conversation (or the named ones), each in one
transaction. With ``workers > 1`` the journals are decrypted, parsed and folded in
that many processes while this one writes the rows: the same rows, since folding a
conversation from a fresh start needs nothing from the database (tested against the
serial path). Decrypting dominates a rebuild; workers are for ``vigil rebuild`` on a
machine with idle cores, not for the daemon, which replays while it opens each
journal anyway (see ``Mirror.replay``).
"""

from __future__ import annotations

import multiprocessing
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Mapping
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daemon.config import UnknownJobError
from daemon.conversation import conversation_names, journal_path
from daemon.errors import VigilError
from daemon.framing import Frame, decode_payload
from daemon.journal import scan
from daemon.keyring import KeyEntry, Keyring
from daemon.mirror import Feed, Mirror, Sink
from daemon.mirror_fold import ConvState, DeliveryState, ToolState, TurnState, fold_event


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

    All: the whole mirror is purged first, so conversations whose journal is gone
    disappear. A journal that cannot be read (corrupt, wrong key, newer format) is
    left out and its error listed in the result; the others are rebuilt. A torn tail
    (perhaps a record the daemon is writing right now) is not replayed. ``upto``
    limits a conversation to its records up to a sequence number (``vigil verify``
    compares with a running daemon's mirror that way). Raises ``UnknownJobError``
    for a name without a journal.
    """
    started = time.perf_counter()
    present = conversation_names(journals_dir)
    if names is None:
        chosen = present
        mirror.purge(None)
    else:
        chosen = list(dict.fromkeys(names))
        for name in chosen:
            if name not in present:
                raise UnknownJobError(name, present)
    paths = [journal_path(journals_dir, name) for name in chosen]
    sizes = [p.stat().st_size for p in paths]
    limits = [None if upto is None else upto.get(name) for name in chosen]
    stats = RebuildStats()
    done_bytes = 0
    folded = _folded_elsewhere(paths, chosen, keyring, limits, workers)
    try:
        for i, (name, path) in enumerate(zip(chosen, paths, strict=True)):
            state = next(folded) if folded is not None else None
            try:
                if state is not None:
                    stats.records += mirror.adopt(state)
                else:  # serially, or a worker failed: the error is raised here, with its type
                    feed = journal_feed(path, name, keyring, limits[i])
                    stats.records += mirror.replay(name, feed)
                stats.conversations += 1
            except VigilError as exc:
                mirror.purge(name)
                stats.errors.append(exc)
            done_bytes += sizes[i]
            if progress is not None:
                total = sum(sizes)
                progress(
                    RebuildProgress(name, i + 1, len(chosen), stats.records, done_bytes, total)
                )
    finally:
        if folded is not None:
            folded.close()  # stops the workers
    stats.seconds = time.perf_counter() - started
    return stats


def journal_feed(path: Path, name: str, keyring: Keyring, limit: int | None = None) -> Feed:
    """A ``Feed`` of a journal's records, read-only, through ``scan`` (which
    authenticates each record; a record damaged after a good one raises)."""

    def feed(sink: Sink) -> None:
        def visit(fr: Frame) -> None:
            if limit is None or fr.seq <= limit:
                sink(fr.seq, decode_payload(fr.payload))

        scan(path, name, keyring, visit)

    return feed


# ---------------------------------------------------------------- workers


def _folded_elsewhere(
    paths: list[Path],
    names: list[str],
    keyring: Keyring,
    limits: list[int | None],
    workers: int,
) -> Generator[ConvState | None, None, None] | None:
    if workers <= 1 or len(paths) < 2:
        return None
    return _pool_fold(paths, names, keyring.entries, limits, workers)


def _pool_fold(
    paths: list[Path],
    names: list[str],
    entries: list[KeyEntry],
    limits: list[int | None],
    workers: int,
) -> Generator[ConvState | None, None, None]:
    """Folded conversations in order; at most ``3 * workers`` in flight, so memory
    stays bounded when writing is slower than folding."""
    # spawn: safe in a process with threads; the workers import only what they need.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        window: deque[Future[ConvState | None]] = deque()
        jobs = iter(zip(paths, names, limits, strict=True))

        def submit() -> None:
            job = next(jobs, None)
            if job is not None:
                window.append(pool.submit(_fold_journal, *job[:2], entries, job[2]))

        for _ in range(3 * workers):
            submit()
        while window:
            done = window.popleft()
            submit()
            yield done.result()


class _NoRows:
    """A conversation folded from a fresh start has written no rows to read back."""

    def turn(self, conversation: str, turn: int) -> TurnState | None:
        return None

    def tool(self, conversation: str, tool_use_id: str) -> ToolState | None:
        return None

    def delivery(self, conversation: str, delivery: str) -> DeliveryState | None:
        return None


def _fold_journal(
    path: Path, name: str, entries: list[KeyEntry], limit: int | None
) -> ConvState | None:
    """In a worker: one journal folded from the start. None when it cannot be read
    (the caller replays it serially to report the error with its own type)."""
    keyring = Keyring(entries)
    state = ConvState(name)
    rows = _NoRows()

    def visit(fr: Frame) -> None:
        if limit is not None and fr.seq > limit:
            return
        state.last_seq = fr.seq  # scan checked the sequence: 1, 2, 3, ...
        fold_event(state, fr.seq, decode_payload(fr.payload), rows)
        state.pending += 1

    try:
        scan(path, name, keyring, visit)
    except (VigilError, ValueError):
        return None
    return state
