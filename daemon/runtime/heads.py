"""The daemon's side of ``state_dir/heads`` (see :mod:`daemon.journal.heads`): checked
at start before any journal is opened or created, checked again for each journal once
opened, and committed after each turn boundary (the journal synced first)."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

from structlog.typing import FilteringBoundLogger

from daemon.errors import HeadsError, JournalRollbackError
from daemon.journal.file import JOURNAL_SUFFIX, FsyncPolicy, Journal
from daemon.journal.heads import Head, HeadProblem, HeadsFile, stat_problems
from daemon.journal.keyring import Keyring
from daemon.ports.eventlog import EventLog

__all__ = ["HeadsKeeper"]


@runtime_checkable
class TranscriptHeads(Protocol):
    """A transcript store that knows its streams' heads (the file store does)."""

    def heads(self) -> dict[str, tuple[int, int, str]]: ...


def conversation_key(name: str) -> str:
    return f"conversations/{name}{JOURNAL_SUFFIX}"


class HeadsKeeper:
    def __init__(
        self, state_dir: Path, keyring: Keyring, fsync: FsyncPolicy, log: FilteringBoundLogger
    ) -> None:
        self.file = HeadsFile(state_dir, keyring)
        self.state_dir = state_dir
        self.enabled = fsync is not FsyncPolicy.NEVER
        self.log = log
        self.heads: dict[str, Head] = {}
        self.created = False
        self.deferred: HeadsError | None = None

    def check_at_start(self) -> None:
        """Refuse journals shorter than committed, or gone (reads no journal)."""
        try:
            committed = self.file.load()
        except HeadsError as exc:
            if exc.key_id is None or exc.key_id in self.file.keyring.key_ids:
                raise
            # Sealed with a key this keyring lacks: most likely the wrong key file,
            # which opening the journals reports better (exit 3, naming a journal).
            self.deferred = exc
            return
        if committed is None:
            self.created = True
            return
        self._refuse(stat_problems(self.state_dir, committed))
        self.heads = dict(committed)

    def check_deferred(self) -> None:
        """The journals opened with this keyring, the heads file did not: refuse."""
        if self.deferred is not None:
            raise self.deferred

    def check_opened(self, name: str, journal: EventLog) -> None:
        """A journal just opened (and read): not behind its head, and its last record
        the committed one when it reaches exactly that far."""
        if not isinstance(journal, Journal):
            return
        key = conversation_key(name)
        head = self.heads.get(key)
        if head is None:
            return
        found = Head(journal.last_seq, journal.size, journal.last_digest)
        if found.seq < head.seq or found.size < head.size:
            self._refuse([HeadProblem(key, head, found, "truncated")])
        if found.seq == head.seq and found.digest != head.digest:
            self._refuse([HeadProblem(key, head, found, "replaced")])

    def _refuse(self, problems: list[HeadProblem]) -> None:
        if problems:
            raise JournalRollbackError(self.file.path, [p.describe() for p in problems])

    def note(self, name: str, journal: EventLog, transcripts: object) -> None:
        if isinstance(journal, Journal) and journal.last_seq:
            key = conversation_key(name)
            self.heads[key] = Head(journal.last_seq, journal.size, journal.last_digest)
        if not isinstance(transcripts, TranscriptHeads):
            return  # another backend: its own fences
        for file_name, (seq, size, digest) in transcripts.heads().items():
            self.heads[f"transcripts/{file_name}"] = Head(seq, size, digest)

    def commit(self) -> None:
        """Write the heads (after the journals they name were synced). A failure keeps
        the previous commitment, which is behind, never ahead: it is logged, not fatal."""
        if not self.enabled:
            return
        try:
            self.file.save(self.heads)
        except OSError as exc:
            self.log.warning("heads_commit_failed", path=str(self.file.path), error=str(exc))
            return
        if self.created:
            self.created = False
            self.log.warning(
                "heads_created",
                path=str(self.file.path),
                detail="no commitment to the journals' heads was found; committed to them "
                "as they are now",
            )
