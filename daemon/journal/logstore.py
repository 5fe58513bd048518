"""The file backend of the event-log port: one sealed JSONL journal per conversation.

:class:`FileEventLogStore` implements :class:`daemon.ports.eventlog.EventLogStore` over
``<directory>/<name>.jsonl`` files (:class:`daemon.journal.file.Journal`). It passes
:func:`daemon.testing.conformance.run_event_log_conformance`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from daemon.journal.file import JOURNAL_SUFFIX, FsyncPolicy, Journal
from daemon.journal.framing import Frame, decode_payload
from daemon.journal.keyring import Keyring
from daemon.journal.scan import scan
from daemon.ports.eventlog import Event, Visitor

__all__ = ["FileEventLogStore", "conversation_names", "journal_path"]


def journal_path(directory: Path, name: str) -> Path:
    return directory / f"{name}{JOURNAL_SUFFIX}"


def conversation_names(directory: Path) -> list[str]:
    if not directory.is_dir():
        return []
    return sorted(p.name[: -len(JOURNAL_SUFFIX)] for p in directory.glob(f"*{JOURNAL_SUFFIX}"))


class FileEventLogStore:
    """Journals under ``directory``, sealed with ``keyring``."""

    def __init__(
        self, directory: Path, keyring: Keyring, *, fsync: FsyncPolicy = FsyncPolicy.TURN
    ) -> None:
        self.directory = directory
        self.keyring = keyring
        self.fsync = fsync

    def path(self, name: str) -> Path:
        return journal_path(self.directory, name)

    def names(self) -> list[str]:
        return conversation_names(self.directory)

    def exists(self, name: str) -> bool:
        return self.path(name).exists()

    def open(self, name: str, *, visit: Visitor | None = None) -> Journal:
        def feed(frame: Frame) -> None:
            if visit is not None:
                visit(decode_payload(frame.payload))

        return Journal.open(self.path(name), name, self.keyring, fsync=self.fsync, visit=feed)

    def read(self, name: str, after: int = 0) -> Iterator[tuple[int, Event]]:
        path = self.path(name)
        if not path.exists():
            return
        records: list[tuple[int, Event]] = []

        def keep(frame: Frame) -> None:
            if frame.seq > after:
                records.append((frame.seq, decode_payload(frame.payload)))

        scan(path, name, self.keyring, keep)
        yield from records
