"""The derived mirror: a SQLite database (WAL) folded from the conversation journals.

The journal is the truth; the mirror is an index that can always be thrown away and
rebuilt (``daemon.mirror.rebuild.rebuild`` purges and replays, it never patches).
The tables are described in :mod:`daemon.mirror.schema`; opening the file and its
schema version in :mod:`daemon.mirror.database`; reading (dump, search, summaries) in
:mod:`daemon.mirror.queries`. This module is the writer.

Contract of :meth:`Mirror.apply` (the daemon calls it as a ``Conversation`` listener,
after each journal append):

* Idempotent per ``(conversation, seq)``: a sequence at or below the conversation's
  last applied one is ignored. Gaps are applied anyway and counted in ``gaps``;
  ``vigil verify`` then reports the difference and ``vigil rebuild`` repairs it.
* Cheap: events fold into an in-memory write-back cache; rows reach SQLite at turn
  boundaries, every ``flush_every`` events or ``flush_interval`` seconds (checked when
  an event arrives), and on :meth:`Mirror.flush`. Commits do not fsync
  (``synchronous=NORMAL``): the mirror is derived, a crash loses nothing true.
* Never raises into the caller on a database error: the error is kept in
  ``Mirror.error`` and the mirror stops applying (a rebuild fixes it). "Database is
  locked" (a concurrent ``vigil rebuild``) only postpones the flush.

Turn statuses follow :func:`daemon.events.heal.fold`, with one difference for a turn that has
started and not ended: it is ``running`` here (live and rebuilt alike), and becomes
``interrupted`` only when the journal says so (the daemon appends ``turn_interrupted``
when it heals at start) or when a later turn starts first. So a rebuild of a journal
equals the live mirror after the same records, which is what ``vigil verify`` checks.
A turn's cost is the step of the session's running total (``session_cost_usd``) since
the previous result, summed over the turn's results; tokens are summed from ``usage``.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from daemon.events import Event
from daemon.logs import get_logger
from daemon.mirror import queries
from daemon.mirror.database import (
    MirrorError,
    begin_waiting,
    connect,
    create_schema,
    is_busy,
    recreate,
    run_script,
)
from daemon.mirror.fold import BOUNDARIES, fold_event
from daemon.mirror.queries import ConversationSummary, DayBounds, DumpRow, Hit
from daemon.mirror.rows import BulkLoad
from daemon.mirror.schema import (
    CONVERSATION_UPSERT,
    DELIVERY_INSERT,
    FTS_ADD_CONVERSATION,
    FTS_ADD_TURN,
    FTS_DELETE_CONVERSATION,
    FTS_DELETE_TURN,
    FTS_REBUILD,
    INDEXES,
    SKIP_INSERT,
    TOOL_CALL_INSERT,
    TURN_UPSERT,
)
from daemon.mirror.state import ConvState, DeliveryState, ToolState, TurnState

__all__ = ["Feed", "Mirror", "Sink"]

FLUSH_EVERY = 512
FLUSH_INTERVAL = 0.2  # seconds
REBUILD_CHUNK = 20_000  # records of one conversation folded before its rows are written
Sink = Callable[[int, Event], None]
Feed = Callable[[Sink], object]


class Mirror:
    """The mirror database and its write-back cache. Use from one thread."""

    def __init__(
        self,
        db: sqlite3.Connection,
        path: Path | str,
        *,
        readonly: bool,
        flush_every: int = FLUSH_EVERY,
        flush_interval: float = FLUSH_INTERVAL,
    ) -> None:
        self.db = db
        self.path = path
        self.readonly = readonly
        self.flush_every = flush_every
        self.flush_interval = flush_interval
        self.gaps = 0
        self.busy_timeout_ms = 0
        self.error: sqlite3.Error | None = None
        self._convs: dict[str, ConvState] = {}
        self._dirty: set[str] = set()
        self._pending = 0
        self._last_flush = time.monotonic()
        self._log = get_logger(component="mirror")

    @classmethod
    def open(
        cls,
        path: Path | str,
        *,
        readonly: bool = False,
        busy_timeout_ms: int = 0,
        flush_every: int = FLUSH_EVERY,
        flush_interval: float = FLUSH_INTERVAL,
    ) -> Mirror:
        """Open (creating it owner-only, or recreating it if from another schema).

        ``path`` may be ``":memory:"``. ``readonly`` never creates or changes anything
        and raises :class:`MirrorError` for a missing or foreign file.
        ``busy_timeout_ms`` is how long a write waits for another writer; the daemon
        keeps it 0 so a concurrent ``vigil rebuild`` only postpones its flush.
        """
        db = connect(path, readonly=readonly, busy_timeout_ms=busy_timeout_ms)
        mirror = cls(
            db, path, readonly=readonly, flush_every=flush_every, flush_interval=flush_interval
        )
        mirror.busy_timeout_ms = int(busy_timeout_ms)
        return mirror

    def _recreate(self) -> None:
        """Drop every table and create the schema afresh (in one transaction)."""
        recreate(self.db, self.busy_timeout_ms)
        self._forget()

    def _forget(self) -> None:
        """The rows were replaced: the cache holds nothing true any more."""
        self._convs.clear()
        self._dirty.clear()
        self._pending = 0

    def close(self) -> None:
        if not self.readonly:
            self.flush()
        self.db.close()

    # --- applying events ---------------------------------------------------------------

    def apply(self, conversation: str, seq: int, event: Event) -> None:
        """Fold one journaled event in (see the module docstring for the contract)."""
        if self.error is not None:
            return
        try:
            c = self._convs.get(conversation) or self._load_conv(conversation)
            if seq <= c.last_seq:
                return
            if seq != c.last_seq + 1:
                self.gaps += 1
            c.last_seq = seq
            fold_event(c, seq, event, self)
            c.pending += 1
            self._dirty.add(conversation)
            self._pending += 1
            if (
                event.get("type") in BOUNDARIES
                or self._pending >= self.flush_every
                or time.monotonic() - self._last_flush >= self.flush_interval
            ):
                self.flush()
        except sqlite3.Error as exc:
            self._fail(exc)

    # Loader: rows already written, read back when the cache misses.

    def turn(self, conversation: str, turn: int) -> TurnState | None:
        row = self.db.execute(
            "SELECT * FROM turns WHERE conversation = ? AND turn = ?", (conversation, turn)
        ).fetchone()
        return None if row is None else TurnState.from_row(row)

    def tool(self, conversation: str, tool_use_id: str) -> ToolState | None:
        row = self.db.execute(
            "SELECT * FROM tool_calls WHERE conversation = ? AND tool_use_id = ? "
            "ORDER BY seq DESC LIMIT 1",
            (conversation, tool_use_id),
        ).fetchone()
        return None if row is None else ToolState.from_row(row)

    def delivery(self, conversation: str, delivery: str) -> DeliveryState | None:
        row = self.db.execute(
            "SELECT * FROM deliveries WHERE conversation = ? AND delivery = ?",
            (conversation, delivery),
        ).fetchone()
        return None if row is None else DeliveryState.from_row(row)

    def _load_conv(self, name: str) -> ConvState:
        c = ConvState(name)
        row = self.db.execute("SELECT * FROM conversations WHERE name = ?", (name,)).fetchone()
        if row is not None:
            c.last_seq, c.session_id, c.cwd = row["last_seq"], row["session_id"], row["cwd"]
            c.costs.totals = json.loads(row["session_totals"])
            c.last_activity = row["last_activity"]
            c.forked_from, c.forked_turn = row["forked_from"], row["forked_turn"]
            c.forked_session = row["forked_session"]
            c.paused_by, c.paused_until = row["paused_by"], row["paused_until"]
            open_row = self.db.execute(
                "SELECT * FROM turns WHERE conversation = ? AND status = 'running' "
                "ORDER BY turn DESC LIMIT 1",
                (name,),
            ).fetchone()
            c.open = TurnState.from_row(open_row) if open_row is not None else None
        self._convs[name] = c
        return c

    # --- writing -------------------------------------------------------------------------

    def flush(self) -> bool:
        """Write every cached change in one transaction. False if another writer holds
        the database (the changes stay cached for the next flush) or the mirror failed."""
        self._last_flush = time.monotonic()
        if self.error is not None:
            return False
        if not self._dirty:
            return True
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if not is_busy(exc):
                self._fail(exc)
            return False
        try:
            for name in self._dirty:
                self._write(self._convs[name])
            self.db.execute("COMMIT")
        except sqlite3.Error as exc:
            self.db.execute("ROLLBACK")
            if not is_busy(exc):
                self._fail(exc)
            return False
        for name in self._dirty:
            self._convs[name].clean()
        self._dirty.clear()
        self._pending = 0
        return True

    def _write(self, c: ConvState, *, index: bool = True) -> None:
        """Write ``c``'s changed rows; ``index=False`` leaves the turns' FTS entries to
        the caller (a replay indexes the whole conversation once, at its end)."""
        db = self.db
        db.execute(CONVERSATION_UPSERT, c.row())
        if c.turns:
            keys = [(c.name, n) for n in c.turns]
            if index:
                db.executemany(FTS_DELETE_TURN, keys)
            db.executemany(TURN_UPSERT, [t.row(c.name) for t in c.turns.values()])
            if index:
                db.executemany(FTS_ADD_TURN, keys)
        if c.tools:
            db.executemany(TOOL_CALL_INSERT, [tool.row(c.name) for tool in c.tools.values()])
        if c.skips:
            db.executemany(SKIP_INSERT, c.skips)
        if c.deliveries:
            db.executemany(DELIVERY_INSERT, [d.row(c.name) for d in c.deliveries.values()])

    def _fail(self, exc: sqlite3.Error) -> None:
        if self.error is None:
            self.error = exc
            self._log.warning(
                "mirror_failed",
                path=str(self.path),
                error=str(exc),
                detail="the mirror stops updating until it is rebuilt; journals are unaffected",
            )

    def purge(self, conversation: str | None = None) -> None:
        """Delete the derived rows of one conversation, or of all (the whole schema)."""
        self._check_writable()
        if conversation is None:
            self._recreate()
            self.error = None
            self.gaps = 0
            return
        self.flush()
        begin_waiting(self.db, self.busy_timeout_ms)
        try:
            self._delete_rows(conversation)
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def _delete_rows(self, conversation: str) -> None:
        self.db.execute(FTS_DELETE_CONVERSATION, (conversation,))
        for table in ("deliveries", "skips", "tool_calls", "turns"):
            self.db.execute(f"DELETE FROM {table} WHERE conversation = ?", (conversation,))  # noqa: S608  # table names are constants
        self.db.execute("DELETE FROM conversations WHERE name = ?", (conversation,))
        self._convs.pop(conversation, None)
        self._dirty.discard(conversation)

    def replay(self, conversation: str, feed: Feed) -> int:
        """Purge one conversation and fold in what ``feed`` sends, in one transaction.

        ``feed(sink)`` calls ``sink(seq, event)`` for each record in order (see
        :mod:`daemon.mirror.rebuild`: ``journal_feed`` and ``events_feed``). Returns how many
        records were applied. If ``feed`` raises, the transaction rolls back: the
        conversation's rows stay as they were.
        """
        self._check_writable()
        self.flush()
        begin_waiting(self.db, self.busy_timeout_ms)
        count = 0
        try:
            self._delete_rows(conversation)
            c = self._load_conv(conversation)

            def sink(seq: int, event: Event) -> None:
                nonlocal count
                if seq <= c.last_seq:
                    return
                if seq != c.last_seq + 1:
                    self.gaps += 1
                c.last_seq = seq
                fold_event(c, seq, event, self)
                count += 1
                c.pending += 1
                if c.pending >= REBUILD_CHUNK:
                    self._write(c, index=False)
                    c.clean()

            feed(sink)
            if c.last_seq:  # an empty journal has no rows, live or rebuilt
                self._write(c, index=False)
                self.db.execute(FTS_ADD_CONVERSATION, (conversation,))
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            self._convs.pop(conversation, None)
            raise
        c.clean()
        return count

    @contextmanager
    def bulk_load(self) -> Iterator[BulkLoad]:
        """Replace every row with those added to the :class:`BulkLoad`, in one transaction.

        A full rebuild: the tables are dropped and created afresh, rows are inserted
        without their secondary indexes and full-text index, which are then built once
        from all of them. The write lock is taken first (waiting like a purge) and held
        to the end, so the caller should read the journals inside the ``with``: a
        running daemon's flushes wait meanwhile, and whatever it journals after the
        read is still in its cache, to be written after. Readers see the old rows until
        the commit. If the body raises, nothing changes.
        """
        self._check_writable()
        begin_waiting(self.db, self.busy_timeout_ms)
        try:
            create_schema(self.db)
            yield BulkLoad(self.db)
            run_script(self.db, INDEXES)
            self.db.execute(FTS_REBUILD)
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")
        self._forget()
        self.error = None
        self.gaps = 0
        # The WAL now holds about the whole database (copied into it at the commit):
        # give the space back now rather than at the last close. Best effort.
        with suppress(sqlite3.OperationalError):
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def _check_writable(self) -> None:
        if self.readonly:
            raise MirrorError(self.path, "opened read-only")

    # --- reading (daemon.mirror.queries) --------------------------------------------------

    def dump(self) -> list[DumpRow]:
        """Every derived row, ordered by table and key, in one read snapshot."""
        return queries.dump(self.db)

    def search(
        self, text: str, limit: int = 20, *, mark: tuple[str, str] = ("[", "]"), raw: bool = False
    ) -> list[Hit]:
        """Turns whose prompt or reply match ``text``, best first (see :func:`queries.search`)."""
        return queries.search(self.db, text, limit, mark=mark, raw=raw)

    def conversations(self, today: DayBounds | None = None) -> list[ConversationSummary]:
        """One summary per conversation (see :func:`queries.conversations`)."""
        return queries.conversations(self.db, today)
