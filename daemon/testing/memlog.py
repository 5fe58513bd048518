"""An in-memory event-log store: the reference implementation of the port.

It keeps sealed records (the same bytes the file journal writes, per the framing), so
reading authenticates exactly as the other backends do, and it can simulate what a
test needs: a write failure (:meth:`MemoryEventLogStore.fail_next_append`), a lost
owner (:meth:`MemoryEventLogStore.revoke`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from daemon.errors import JournalFatalError, JournalWriteError, OwnershipLost
from daemon.journal.framing import decode_payload, encode_payload, open_line, seal
from daemon.journal.keyring import Keyring
from daemon.ports.eventlog import Event, Visitor

__all__ = ["MemoryEventLog", "MemoryEventLogStore"]


@dataclass
class _Stream:
    lines: list[bytes] = field(default_factory=list)
    synced: int = 0
    revoked_by: str | None = None


class MemoryEventLog:
    def __init__(self, store: MemoryEventLogStore, name: str, stream: _Stream) -> None:
        self._store = store
        self._name = name
        self._stream = stream
        self._closed = False
        self._dead: JournalFatalError | None = None

    @property
    def name(self) -> str:
        return self._name

    @property
    def last_seq(self) -> int:
        return len(self._stream.lines)

    @property
    def tail_cut(self) -> None:
        return None

    def append(self, event: Event) -> int:
        if self._closed:
            raise ValueError(f"event log {self._name!r} is closed")
        if self._dead is not None:
            raise self._dead
        if self._stream.revoked_by is not None:
            raise OwnershipLost(self._name, "memory", 0, self._stream.revoked_by)
        failure = self._store.take_failure()
        if failure == "write":
            raise JournalWriteError(self._store.where(self._name), "ENOSPC", "simulated")
        if failure == "fatal":
            self._dead = JournalFatalError(
                self._store.where(self._name), "EIO", "fsync failed (simulated)"
            )
            raise self._dead
        seq = self.last_seq + 1
        self._stream.lines.append(seal(self._store.keyring, self._name, seq, encode_payload(event)))
        return seq

    def sync(self) -> None:
        if self._dead is not None:
            raise self._dead
        self._stream.synced = len(self._stream.lines)

    def close(self) -> None:
        if not self._closed and self._dead is None:
            self.sync()
        self._closed = True


class MemoryEventLogStore:
    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring
        self._streams: dict[str, _Stream] = {}
        self._failures: list[str] = []

    def where(self, name: str) -> str:
        return f"memory:{name}"

    def names(self) -> list[str]:
        return sorted(self._streams)

    def exists(self, name: str) -> bool:
        return name in self._streams

    def open(self, name: str, *, visit: Visitor | None = None) -> MemoryEventLog:
        stream = self._streams.setdefault(name, _Stream())
        stream.revoked_by = None
        if visit is not None:
            for _, event in self.read(name):
                visit(event)
        return MemoryEventLog(self, name, stream)

    def read(self, name: str, after: int = 0) -> Iterator[tuple[int, Event]]:
        stream = self._streams.get(name)
        if stream is None:
            return
        for line in list(stream.lines[after:]):
            frame = open_line(self.keyring, name, line)
            yield frame.seq, decode_payload(frame.payload)

    # --- what tests simulate ---------------------------------------------------------

    def fail_next_append(self, kind: str = "write") -> None:
        """The next append fails: ``write`` (nothing written) or ``fatal``."""
        self._failures.append(kind)

    def take_failure(self) -> str | None:
        return self._failures.pop(0) if self._failures else None

    def revoke(self, name: str, new_owner: str = "another node") -> None:
        """Another owner took ``name`` over: the open log's appends are fenced."""
        self._streams.setdefault(name, _Stream()).revoked_by = new_owner
