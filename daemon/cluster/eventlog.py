"""The event-log port on PostgreSQL, every append fenced on its owner's lease.

:class:`PgEventLogStore` implements :class:`daemon.ports.eventlog.EventLogStore` for
one node and passes :func:`daemon.testing.conformance.run_event_log_conformance`.
A row of ``events`` is ``(conversation, seq, key_id, line)`` where ``line`` is the
sealed line the file journal writes (without its newline): PostgreSQL sees ciphertext
and ids, and a row moved, edited or renumbered fails to authenticate on reading.

Ownership. ``open(name)`` acquires the conversation's lease (:class:`Leases`: free,
expired, or this node's; the epoch grows) or raises
:class:`~daemon.cluster.errors.LeaseHeld`. Each append is one statement,
``INSERT ... SELECT ... FROM leases WHERE conversation, node, epoch match FOR SHARE``:
the lease row is share-locked in the same transaction as the insert, so a takeover
(which updates that row) either commits before it, and the insert writes nothing and
raises :class:`~daemon.errors.OwnershipLost`, or waits until the insert committed, and
the new owner reads the record when it opens the log. After ``OwnershipLost`` every
call but ``close`` raises it again. ``close`` releases the lease.

Durability (``fsync`` as in the file journal). Under ``turn`` (the default) and
``never`` the connection runs with ``synchronous_commit = off``: an append returns
once PostgreSQL committed it into its WAL buffers, readable at once by every node, on
disk within about 600 ms. A SIGKILLed vigil loses nothing it was told was appended
(PostgreSQL has it); a crash of the database host may lose that last window, as a
crash of the host loses unsynced lines of a file journal. ``sync()`` (a turn boundary)
is a fenced, synchronous no-op update of the lease row: its commit flushes the WAL up
to itself, so every earlier append of the connection is on disk when it returns.
Under ``always`` every append commits synchronously and ``sync()`` does nothing.

Failures. A statement PostgreSQL refuses (for example its disk is full) wrote nothing:
:class:`~daemon.errors.JournalWriteError`, and the log stays usable. A connection lost
during an append leaves its outcome unknown: the log reconnects at once and looks; if
the record landed it is acknowledged, if not it is written now. If PostgreSQL cannot be
reached, the append raises ``JournalWriteError`` and the record is *in doubt*: before
anything else is written, the next call withdraws it if it did land (a fenced delete of
that exact last row), so "nothing was written" holds. After every reconnect the log
checks that the database's last record is its own ``last_seq``; records lost by a
crash of PostgreSQL with ``synchronous_commit = off`` raise
:class:`~daemon.errors.JournalFatalError` (the process must exit and heal from what
the database holds).

Cost (``bench/cluster_append.py``: PostgreSQL 15 on 127.0.0.1 with fsync on, the same
ext4 disk, 2 cores, 5,000 appends of ~200 bytes, two runs): an append is one round
trip, p50 0.10 ms and p99 5 to 8 ms under ``turn`` (the file journal: p50 0.006 ms,
p99 0.1 ms). The slow appends are spread evenly, not after a ``sync()``: most likely
waits behind PostgreSQL's own WAL flushes on this small VM (not proven). ``sync()`` p50
7 to 8 ms (the file journal's fsync: 5 to 10 ms). Under ``always`` an append is p50
4 ms, p99 20 to 25 ms (the file journal with an fsync per append: 3.2 ms, 13 to 20 ms).
The append blocks the asyncio loop for that long.
One synchronous psycopg connection per store, in autocommit mode; not thread-safe.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, LiteralString

import psycopg

from daemon.cluster.db import Connection, Database
from daemon.cluster.errors import RecordCorruptError
from daemon.cluster.leases import Lease, Leases
from daemon.errors import JournalFatalError, JournalWriteError, OwnershipLost, WrongKeyError
from daemon.journal.file import FsyncPolicy
from daemon.journal.framing import (
    FrameError,
    FrameProblem,
    check_stream_id,
    decode_payload,
    encode_payload,
    open_line,
    seal,
)
from daemon.journal.keyring import Keyring
from daemon.ports.eventlog import Event, Visitor

__all__ = ["PgEventLog", "PgEventLogStore"]

PAGE = 1000

_INSERT = (
    "INSERT INTO events (conversation, seq, key_id, line)"
    " SELECT %(c)s, %(s)s, %(k)s, %(l)s FROM leases"
    " WHERE conversation = %(c)s AND node = %(n)s AND epoch = %(e)s FOR SHARE"
)
_FENCE = "SELECT 1 FROM leases WHERE conversation = %s AND node = %s AND epoch = %s FOR SHARE"


class PgEventLog:
    """One conversation's log, open for appending by the node holding its lease."""

    def __init__(self, store: PgEventLogStore, name: str, lease: Lease, last_seq: int) -> None:
        self._store = store
        self._db = store.db
        self._name = name
        self._lease = lease
        self._last_seq = last_seq
        self._where = store.where(name)
        self._verified = store.db.connects  # the connection whose view of the tail we trust
        self._pending: tuple[int, bytes] | None = None  # an append whose outcome is unknown
        self._dirty = False
        self._closed = False
        self._dead: JournalFatalError | OwnershipLost | None = None

    @property
    def name(self) -> str:
        return self._name

    @property
    def last_seq(self) -> int:
        return self._last_seq

    @property
    def tail_cut(self) -> None:
        return None  # a transaction is never torn

    @property
    def epoch(self) -> int:
        return self._lease.epoch

    def append(self, event: Event) -> int:
        self._usable()
        self._settle(adopt=False)
        seq = self._last_seq + 1
        line = seal(self._store.keyring, self._name, seq, encode_payload(event))[:-1]
        try:
            inserted = self._insert(self._db.connection(), seq, line)
        except psycopg.Error as exc:
            if not self._db.lost(exc):
                raise self._write_error(exc) from None  # refused: nothing was written
            self._db.discard()
            self._pending = (seq, line)
            self._settle(adopt=True)  # look on a fresh connection: keep it or write it
            return self._acknowledge(seq)
        if not inserted:
            raise self._fenced()
        return self._acknowledge(seq)

    def sync(self) -> None:
        self._usable()
        self._settle(adopt=False)
        if not self._dirty or self._store.fsync is not FsyncPolicy.TURN:
            return
        try:
            conn = self._db.connection()
            with conn.transaction():
                conn.execute("SET LOCAL synchronous_commit = on")
                updated = conn.execute(
                    "UPDATE leases SET epoch = epoch"
                    " WHERE conversation = %s AND node = %s AND epoch = %s",
                    (self._name, self._lease.node, self._lease.epoch),
                ).rowcount
        except psycopg.Error as exc:
            if self._db.lost(exc):
                self._db.discard()
            raise self._write_error(exc, "the turn boundary is not confirmed durable") from None
        if not updated:
            raise self._fenced()
        self._dirty = False

    def close(self) -> None:
        if self._closed:
            return
        try:
            if self._dead is None:
                self.sync()
                self._store.leases.release(self._name)
        finally:
            self._closed = True

    # --- internals -----------------------------------------------------------------

    def _usable(self) -> None:
        if self._closed:
            raise ValueError(f"event log {self._name!r} is closed")
        if self._dead is not None:
            raise self._dead

    def _acknowledge(self, seq: int) -> int:
        self._last_seq = seq
        self._dirty = True
        return seq

    def _insert(self, conn: Connection, seq: int, line: bytes) -> bool:
        lease = self._lease
        params = {
            "c": self._name,
            "s": seq,
            "k": self._store.keyring.current_id,
            "l": line,
            "n": lease.node,
            "e": lease.epoch,
        }
        return conn.execute(_INSERT, params).rowcount == 1

    def _settle(self, *, adopt: bool) -> None:
        """After a reconnect (or with an append in doubt), make the database's tail and
        ``last_seq`` agree before anything else is written.

        ``adopt``: an in-doubt record is kept if it landed and written if not (the
        append that lost its connection is still running); otherwise it is withdrawn
        if it landed (its append already raised ``JournalWriteError``).
        """
        try:
            conn = self._db.connection()
            if self._pending is None and self._verified == self._db.connects:
                return
            with conn.transaction():
                fence = (self._name, self._lease.node, self._lease.epoch)
                if conn.execute(_FENCE, fence).rowcount == 0:
                    raise self._fenced()
                self._reconcile(conn, adopt=adopt)
        except psycopg.Error as exc:
            if self._db.lost(exc):
                self._db.discard()
            raise self._write_error(
                exc, "the connection to PostgreSQL was lost; the record was not acknowledged"
            ) from None
        self._verified = self._db.connects

    def _reconcile(self, conn: Connection, *, adopt: bool) -> None:
        row = conn.execute(
            "SELECT seq, line FROM events WHERE conversation = %s ORDER BY seq DESC LIMIT 1",
            (self._name,),
        ).fetchone()
        tail, tail_line = (int(row[0]), bytes(row[1])) if row is not None else (0, b"")
        pending, self._pending = self._pending, None
        if pending is not None:
            seq, line = pending
            if tail == seq and tail_line == line:
                if adopt:
                    self._last_seq = seq
                    return
                conn.execute(
                    "DELETE FROM events WHERE conversation = %s AND seq = %s", (self._name, seq)
                )
                tail -= 1
            elif tail == seq - 1 and adopt:
                if not self._insert(conn, seq, line):
                    raise self._fenced()
                self._last_seq = seq
                return
        if tail != self._last_seq:
            self._dead = JournalFatalError(
                self._where,
                "EIO",
                f"the database's last record is {tail}, this node acknowledged "
                f"{self._last_seq} (PostgreSQL lost acknowledged records, or another "
                "writer used this lease)",
            )
            raise self._dead

    def _fenced(self) -> OwnershipLost:
        self._dead = self._store.leases.lost(self._name, self._lease.epoch)
        return self._dead

    def _write_error(self, exc: BaseException, what: str = "") -> JournalWriteError:
        code, detail = self._db.describe(exc)
        return JournalWriteError(self._where, code, f"{what}: {detail}" if what else detail)


class PgEventLogStore:
    """The event logs of one PostgreSQL database, written as node ``leases.node``.

    ``db`` is this store's connection: created with ``synchronous_commit`` on for
    ``fsync=always`` and off otherwise (:meth:`connect` does that). ``leases`` should
    be on a connection of its own, with synchronous commits: a lease must never be
    lost by a crash of PostgreSQL, or an epoch could be handed out twice.
    The schema must be migrated first (:func:`daemon.cluster.schema.migrate`).
    """

    def __init__(
        self,
        db: Database,
        keyring: Keyring,
        leases: Leases,
        *,
        fsync: FsyncPolicy = FsyncPolicy.TURN,
    ) -> None:
        if db.synchronous_commit != (fsync is FsyncPolicy.ALWAYS):
            raise ValueError(
                f"fsync {fsync.value!r} needs a connection with synchronous_commit "
                f"{'on' if fsync is FsyncPolicy.ALWAYS else 'off'} (see PgEventLogStore.connect)"
            )
        self.db = db
        self.keyring = keyring
        self.leases = leases
        self.fsync = fsync

    @classmethod
    def connect(
        cls,
        dsn: str,
        keyring: Keyring,
        leases: Leases,
        *,
        fsync: FsyncPolicy = FsyncPolicy.TURN,
        statement_timeout_ms: int | None = None,
    ) -> PgEventLogStore:
        """A store on a connection of its own, set up for ``fsync``."""
        db = Database(
            dsn,
            application_name=f"vigil {leases.node} events",
            synchronous_commit=fsync is FsyncPolicy.ALWAYS,
            statement_timeout_ms=statement_timeout_ms,
        )
        return cls(db, keyring, leases, fsync=fsync)

    def where(self, name: str) -> str:
        return f"{self.db.where} events/{name}"

    def names(self) -> list[str]:
        rows = self._query("SELECT conversation FROM conversations", ())
        return sorted(str(r[0]) for r in rows)

    def last_seq(self, name: str) -> int:
        """The conversation's last sequence number (0 for none), in one statement."""
        rows = self._query("SELECT max(seq) FROM events WHERE conversation = %s", (name,))
        return int(rows[0][0]) if rows and rows[0][0] is not None else 0

    def exists(self, name: str) -> bool:
        return bool(self._query("SELECT 1 FROM conversations WHERE conversation = %s", (name,)))

    def open(self, name: str, *, visit: Visitor | None = None) -> PgEventLog:
        check_stream_id(name)
        lease = self.leases.acquire(name)
        self._query(
            "INSERT INTO conversations (conversation) VALUES (%s) ON CONFLICT DO NOTHING"
            " RETURNING 1",
            (name,),
        )
        last = 0
        for seq, event in self.read(name):
            if visit is not None:
                visit(event)
            last = seq
        return PgEventLog(self, name, lease, last)

    def read(self, name: str, after: int = 0) -> Iterator[tuple[int, Event]]:
        expected = after + 1
        while True:
            rows = self._query(
                "SELECT seq, line FROM events WHERE conversation = %s AND seq > %s"
                " ORDER BY seq LIMIT %s",
                (name, expected - 1, PAGE),
            )
            for row in rows:
                seq = int(row[0])
                if seq != expected:
                    raise RecordCorruptError(self.where(name), expected, "the record is missing")
                yield seq, decode_payload(self._open_line(name, seq, bytes(row[1])))
                expected += 1
            if len(rows) < PAGE:
                return

    def _open_line(self, name: str, seq: int, line: bytes) -> bytes:
        try:
            frame = open_line(self.keyring, name, line)
        except FrameError as err:
            if err.problem is FrameProblem.UNKNOWN_KEY and err.key_id is not None:
                where = self.where(name)
                # A database location, not a file: daemon.errors should take Path | str here.
                raise WrongKeyError(where, err.key_id, self.keyring.source) from None
            raise RecordCorruptError(self.where(name), seq, str(err)) from None
        if frame.seq != seq:
            raise RecordCorruptError(
                self.where(name), seq, f"the sealed record says sequence {frame.seq}"
            )
        return frame.payload

    def _query(self, sql: LiteralString, params: tuple[object, ...]) -> list[tuple[Any, ...]]:
        """A read (or an idempotent insert): once more on a fresh connection when the
        connection was lost (PostgreSQL restarted), then ``DatabaseUnavailable``."""
        for attempt in (1, 2):
            try:
                cur = self.db.connection().execute(sql, params)
                return cur.fetchall() if cur.description is not None else []
            except psycopg.Error as exc:
                lost = self.db.lost(exc)
                if lost:
                    self.db.discard()
                if not lost or attempt == 2:
                    raise self.db.unavailable(exc) from None
        raise AssertionError("unreachable")
