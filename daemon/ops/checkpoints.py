"""Start-up checkpoints for the operator's commands: ``verify`` compares each one with a
full fold of its journal, ``rebuild`` rewrites them from one.

A checkpoint is derived (:mod:`daemon.journal.checkpoint`): one that differs from the
journal is a warning with a fix (``vigil rebuild``, or delete the file: start-up then
reads that journal in full and writes a new one), never corruption. A missing one is
not reported (a new conversation, or none written yet).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from daemon.events import Event
from daemon.journal.checkpoint import (
    CHECKPOINT_SUFFIX,
    Checkpoint,
    CheckpointUnusable,
    Unusable,
    anchor_at,
    check_anchor,
    checkpoint_path,
    read_checkpoint,
    write_checkpoint,
)
from daemon.journal.conversation import ConversationState
from daemon.journal.keyring import Keyring
from daemon.journal.logstore import journal_path
from daemon.journal.recovery_read import Folded, fold_all, fold_journal
from jobs.ledger import JobLedger

__all__ = ["CheckpointCheck", "CheckpointProbe", "orphan_checkpoints", "rewrite_checkpoints"]

CheckpointStatus = Literal["matches", "differs", "unusable", "orphan"]
FIX = "fix: `vigil rebuild` rewrites it, or delete it (start-up then reads the journal in full)"


@dataclass(frozen=True)
class CheckpointCheck:
    name: str
    path: str
    seq: int | None
    status: CheckpointStatus
    detail: str = ""

    @property
    def warning(self) -> bool:
        return self.status != "matches"

    def describe(self) -> str:
        at = f" (after record {self.seq})" if self.seq is not None else ""
        return f"{self.path}{at} {self.status}: {self.detail}"

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": self.path,
            "seq": self.seq,
            "status": self.status,
            "detail": self.detail,
        }


class CheckpointProbe:
    """Rides along verify's one read of a journal: folds its events up to the sequence
    the checkpoint covers and compares that state with the checkpoint's.

    Read the checkpoint before the journal (:meth:`open`): a daemon writes a checkpoint
    only after the records it covers, so the read then reaches them.
    """

    def __init__(self, directory: Path, name: str, checkpoint: Checkpoint | None) -> None:
        self.directory = directory
        self.name = name
        self.checkpoint = checkpoint
        self.problem: CheckpointUnusable | None = None
        self._state, self._ledger = ConversationState(), JobLedger()
        self._at: tuple[dict[str, Any], dict[str, Any]] | None = None

    @classmethod
    def open(cls, directory: Path, keyring: Keyring, name: str) -> CheckpointProbe:
        try:
            return cls(directory, name, read_checkpoint(directory, keyring, name))
        except CheckpointUnusable as exc:
            probe = cls(directory, name, None)
            probe.problem = exc
            return probe

    def wants(self, seq: int) -> bool:
        return self.checkpoint is not None and seq <= self.checkpoint.anchor.seq

    def feed(self, seq: int, event: Event) -> None:
        assert self.checkpoint is not None  # noqa: S101  # callers ask wants() first
        self._state.feed(event)
        self._ledger.feed(event)
        if seq == self.checkpoint.anchor.seq:
            self._at = (_plain(self._state.to_dict()), _plain(self._ledger.to_dict()))

    def result(self, journal: Path) -> CheckpointCheck | None:
        """The finding, or None for a missing checkpoint."""
        path = str(checkpoint_path(self.directory, self.name))
        if self.problem is not None:
            if self.problem.reason is Unusable.MISSING:
                return None
            return CheckpointCheck(self.name, path, None, "unusable", f"{self.problem}; {FIX}")
        assert self.checkpoint is not None  # noqa: S101  # one of the two is set
        seq = self.checkpoint.anchor.seq
        try:
            check_anchor(journal, self.name, self.checkpoint.anchor)
        except CheckpointUnusable as exc:
            return CheckpointCheck(self.name, path, seq, "unusable", f"{exc}; {FIX}")
        if self._at is None:
            detail = f"the journal could not be read up to record {seq}; {FIX}"
            return CheckpointCheck(self.name, path, seq, "unusable", detail)
        state, ledger = self._at
        differ = [k for k in state if state[k] != self.checkpoint.state.get(k)]
        differ += [f"ledger.{k}" for k in ledger if ledger[k] != self.checkpoint.ledger.get(k)]
        if differ:
            detail = f"differs from a full fold of the journal in {', '.join(differ)}; {FIX}"
            return CheckpointCheck(self.name, path, seq, "differs", detail)
        return CheckpointCheck(self.name, path, seq, "matches")


def _plain(value: dict[str, Any]) -> dict[str, Any]:
    """As the checkpoint stores it (through JSON)."""
    plain: dict[str, Any] = json.loads(json.dumps(value))
    return plain


def orphan_checkpoints(directory: Path, names: list[str]) -> list[CheckpointCheck]:
    """Checkpoints without a journal: never used; a warning, deleting them is the fix."""
    known = set(names)
    return [
        CheckpointCheck(
            path.name[: -len(CHECKPOINT_SUFFIX)],
            str(path),
            None,
            "orphan",
            "no journal of that name: never used; delete it",
        )
        for path in sorted(directory.glob(f"*{CHECKPOINT_SUFFIX}"))
        if path.name[: -len(CHECKPOINT_SUFFIX)] not in known
    ]


def rewrite_checkpoints(
    journals: Path, directory: Path, keyring: Keyring, names: list[str], *, workers: int = 1
) -> int:
    """A fresh checkpoint of each named conversation from a full fold of its journal
    (``workers`` processes). Journals that do not read are left out (their errors are
    ``rebuild``'s to report). Returns how many were written."""
    directory.mkdir(mode=0o700, exist_ok=True)
    tasks = [(journal_path(journals, n), n) for n in names if journal_path(journals, n).exists()]
    folded = fold_all(tasks, keyring, workers)
    written = 0
    for path, name in tasks:
        try:
            one: Folded = folded.get(name) or fold_journal(path, name, keyring)
            last_seq = one.scan.last_seq
            if last_seq == 0:
                continue
            anchor = anchor_at(path, last_seq, one.scan.good_end)
            state, ledger = one.state.to_dict(), one.ledger.to_dict()
            write_checkpoint(directory, keyring, Checkpoint(name, anchor, state, ledger))
        except Exception:  # noqa: S112  # an unreadable journal: rebuild reports it
            continue
        written += 1
    return written
