"""Start-up checkpoints in the daemon: read them at start, write them at cheap moments.

Reading (:func:`fold_from_checkpoint`, :func:`load_checkpoints`): a journal with a
usable checkpoint (:mod:`daemon.journal.checkpoint`) is folded from the checkpoint's
state plus the records after it, so start-up reads O(conversations), not O(records).
Anything wrong with a checkpoint (missing, unreadable, foreign, another version, not
matching the journal, or the records after it not reading cleanly) sends that journal
to the ordinary full read, which is the authority on the journal's own errors: a
checkpoint never fails a start. Each unusable one is logged once, as a warning; a
missing one only counts in the summary (new conversations, the first start).

Writing (:class:`Checkpointer`), never on the path of an event: a snapshot of a
conversation's state and ledger is taken on the event loop when a turn ends and at
least ``every`` records were journaled since its last checkpoint; after READY for every
conversation start-up had to read in full (or far past its checkpoint); and at clean
shutdown for every conversation with new records. The sealing and the crash-safe write
(temporary file, fsync, rename) run on one background thread, in order. A failed write
is logged (once) and changes nothing else: checkpoints are derived.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from structlog.typing import FilteringBoundLogger

from daemon.events import TURN_END_TYPES, Event, event_type
from daemon.journal.checkpoint import (
    Checkpoint,
    CheckpointUnusable,
    Unusable,
    anchor_at,
    check_anchor,
    read_checkpoint,
    write_checkpoint,
)
from daemon.journal.file import Journal
from daemon.journal.framing import Frame, decode_payload
from daemon.journal.keyring import Keyring
from daemon.journal.recovery_read import Folded
from daemon.journal.scan import scan
from daemon.runtime.job import Job

__all__ = ["Checkpointer", "fold_from_checkpoint", "load_checkpoints"]

#: Default ``checkpoint_every``: records journaled since a conversation's checkpoint
#: before the end of a turn writes a new one. A restart after a crash reads about this
#: many records per conversation beyond its checkpoint.
CHECKPOINT_EVERY = 200


def fold_from_checkpoint(path: Path, name: str, keyring: Keyring, directory: Path) -> Folded:
    """The journal at ``path`` folded from its checkpoint on; raises
    :class:`CheckpointUnusable` when the checkpoint cannot stand for the records it covers."""
    checkpoint = read_checkpoint(directory, keyring, name)
    anchor = checkpoint.anchor
    check_anchor(path, name, anchor)
    try:
        state, ledger = checkpoint.conversation_state(), checkpoint.job_ledger()
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointUnusable(name, Unusable.UNREADABLE, f"state: {exc}") from None

    def visit(frame: Frame) -> None:
        event = decode_payload(frame.payload)
        state.feed(event)
        ledger.feed(event)

    try:
        size = path.stat().st_size
        result = scan(path, name, keyring, visit, after=(anchor.offset, anchor.seq))
    except Exception as exc:  # the full read reports it with its own type and message
        raise CheckpointUnusable(
            name, Unusable.STALE, f"the records after it do not read cleanly ({exc})"
        ) from None
    return Folded(result, size, state, ledger, after_checkpoint=result.records - anchor.seq)


@dataclass
class CheckpointSummary:
    """What start-up's checkpoint read found, for its one log line."""

    used: int = 0
    records_after: int = 0
    most_after: int = 0
    missing: int = 0
    unusable: Counter[str] | None = None

    def as_log(self) -> dict[str, Any]:
        return {
            "used": self.used,
            "records_after_checkpoints": self.records_after,
            "most_after_one": self.most_after,
            "missing": self.missing,
            "unusable": dict(self.unusable or {}),
        }


def load_checkpoints(
    journals: Iterable[tuple[Path, str]],
    keyring: Keyring,
    directory: Path,
    log: FilteringBoundLogger,
) -> tuple[dict[str, Folded], CheckpointSummary]:
    """Each journal folded from its checkpoint, where it has a usable one; the rest are
    left out (for the full read). Logs each unusable checkpoint once."""
    folded: dict[str, Folded] = {}
    summary = CheckpointSummary(unusable=Counter())
    for path, name in journals:
        try:
            one = fold_from_checkpoint(path, name, keyring, directory)
        except CheckpointUnusable as exc:
            if exc.reason is Unusable.MISSING:
                summary.missing += 1
            else:
                assert summary.unusable is not None  # noqa: S101  # set above; narrows the type
                summary.unusable[exc.reason.value] += 1
                log.warning(
                    "checkpoint_unused",
                    job=name,
                    reason=exc.reason.value,
                    detail=exc.detail,
                    fix="none needed: the journal is read in full and a new checkpoint written",
                )
            continue
        folded[name] = one
        after = one.after_checkpoint or 0
        summary.used += 1
        summary.records_after += after
        summary.most_after = max(summary.most_after, after)
    return folded, summary


@dataclass(frozen=True)
class _Snapshot:
    name: str
    journal: Path
    seq: int
    size: int
    state: dict[str, Any]
    ledger: dict[str, Any]


class Checkpointer:
    """Writes each job's checkpoint off the event path (see the module docstring)."""

    def __init__(
        self, directory: Path, keyring: Keyring, log: FilteringBoundLogger, *, every: int
    ) -> None:
        self.directory = directory
        self.keyring = keyring
        self.log = log
        self.every = every
        #: The last sequence each conversation's checkpoint covers (written or queued);
        #: absent: none usable.
        self.covered: dict[str, int] = {}
        self.written = 0
        self._failed = False
        self._thread: ThreadPoolExecutor | None = None
        self._pending: set[Future[None]] = set()

    def attach(self, job: Job) -> None:
        """Watch ``job``'s conversation: a turn's end may write its checkpoint."""

        def on_event(_name: str, seq: int, event: Event) -> None:
            if event_type(event) in TURN_END_TYPES and seq - self.covered.get(job.name, 0) >= (
                self.every
            ):
                self.submit(job)

        if self.every > 0:
            job.runner.conversation.listeners.append(on_event)

    def catch_up(self, jobs: Iterable[Job]) -> int:
        """After READY: a checkpoint for each conversation without a usable one, or
        with ``every`` records or more after it. Returns how many were queued."""
        queued = 0
        for job in jobs:
            seq = _last_seq(job)
            covered = self.covered.get(job.name)
            if seq > 0 and (covered is None or seq - covered >= max(self.every, 1)):
                queued += self.submit(job)
        return queued

    def submit(self, job: Job) -> bool:
        """Snapshot ``job`` now (on the loop) and queue the write; False if nothing to do."""
        snapshot = self._snapshot(job)
        if snapshot is None:
            return False
        self.covered[job.name] = snapshot.seq
        if self._thread is None:
            self._thread = ThreadPoolExecutor(1, thread_name_prefix="checkpoint")
        future = self._thread.submit(self._write, snapshot)
        self._pending.add(future)
        future.add_done_callback(self._pending.discard)
        return True

    def close(self, jobs: Iterable[Job]) -> None:
        """At clean shutdown, once every conversation is closed: write what is new,
        and wait for every queued write."""
        for job in jobs:
            if _last_seq(job) > self.covered.get(job.name, 0):
                self.submit(job)
        if self._thread is not None:
            self._thread.shutdown(wait=True)
            self._thread = None

    def _snapshot(self, job: Job) -> _Snapshot | None:
        journal = job.runner.conversation.journal
        if not isinstance(journal, Journal) or journal.last_seq == 0:
            return None  # another event-log backend, or nothing to cover
        return _Snapshot(
            job.name,
            journal.path,
            journal.last_seq,
            journal.size,
            job.runner.conversation.state.to_dict(),
            job.ledger.to_dict(),
        )

    def _write(self, s: _Snapshot) -> None:
        """On the checkpoint thread."""
        try:
            anchor = anchor_at(s.journal, s.seq, s.size)
            write_checkpoint(
                self.directory, self.keyring, Checkpoint(s.name, anchor, s.state, s.ledger)
            )
        except Exception as exc:  # derived data: say it once, carry on
            if not self._failed:
                self._failed = True
                self.log.warning(
                    "checkpoint_write_failed",
                    job=s.name,
                    error=f"{type(exc).__name__}: {exc}",
                    detail="start-up reads more of the journals until one is written",
                )
            return
        self.written += 1


def _last_seq(job: Job) -> int:
    journal = job.runner.conversation.journal
    return journal.last_seq if isinstance(journal, Journal) else 0
