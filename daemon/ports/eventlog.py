"""The event-log port: one conversation's sealed, append-only log, and the store of them.

Every backend stores the same sealed bytes (AES-256-GCM, the associated data binding
format version, conversation, sequence number and key id); it sees ciphertext and the
ids needed to index it, nothing else. Implementations: the file journal
(:class:`daemon.journal.logstore.FileEventLogStore`) and the in-memory log of
:mod:`daemon.testing.memlog`; :func:`daemon.testing.conformance.run_event_log_conformance`
is the behaviour suite every implementation passes.

Contract of :class:`EventLog` (one writer; not thread-safe):

* ``append(event)`` gives the event the next sequence number (``last_seq + 1``; the
  first record is 1), makes it readable by :meth:`EventLogStore.read`, and returns the
  number. It returns only once the record is written (and, under fsync ``always``,
  durable). A caller shows an event only after ``append`` returned (write before show).
* ``append`` errors: :class:`~daemon.errors.JournalWriteError` means nothing was
  written and the log stays usable (disk full: retry later);
  :class:`~daemon.errors.JournalFatalError` means durability is unknown and every later
  call raises it again: the process must exit; :class:`~daemon.errors.OwnershipLost`
  (cluster backends) means another node owns the conversation now: nothing was
  written, and the caller must stop driving the conversation (no more appends, no
  deliveries).
* ``sync()`` makes every appended record durable (a turn boundary). Idempotent.
* ``close()`` syncs and releases; idempotent; no call but ``close`` after it.

Contract of :class:`EventLogStore`:

* ``names()``: every conversation with a log, sorted. ``exists(name)``.
* ``open(name, visit=...)`` opens the log for appending, creating an empty one when
  there is none. Before returning it reads the log once, in order, handing each event
  to ``visit``; a torn tail (a crash mid-append) is cut off and reported in
  ``tail_cut`` (the original kept aside); damage before the tail raises
  :class:`~daemon.errors.JournalCorruptError` and changes nothing.
* ``read(name, after=0)`` yields ``(seq, event)`` for every record with
  ``seq > after``, in order, without changing anything; safe while another process
  appends (a record still being written is not yielded). Unknown name: nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol

__all__ = ["EventLog", "EventLogStore", "Visitor"]

Event = dict[str, Any]
Visitor = Callable[[Event], None]


class EventLog(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def last_seq(self) -> int: ...

    @property
    def tail_cut(self) -> Any: ...  # None, or what the backend cut on open

    def append(self, event: Event) -> int: ...

    def sync(self) -> None: ...

    def close(self) -> None: ...


class EventLogStore(Protocol):
    def names(self) -> list[str]: ...

    def exists(self, name: str) -> bool: ...

    def open(self, name: str, *, visit: Visitor | None = None) -> EventLog: ...

    def read(self, name: str, after: int = 0) -> Iterator[tuple[int, Event]]: ...
