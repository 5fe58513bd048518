"""The derived mirror: a SQLite database (WAL) folded from the conversation journals.

The journal is the truth; the mirror is an index that can always be thrown away and
rebuilt (``daemon.mirror.rebuild.rebuild`` purges and replays, it never patches).
Tables:

* ``conversations``: one row per journal: last sequence applied, session, last activity;
  for a fork (``vigil fork``), the conversation, turn and session it was cut from
* ``turns``: one row per turn (and per skipped beat, status ``skipped``), keyed by
  ``(conversation, turn)``: status, prompt, reply, times, cost, tokens, session, reason
* ``tool_calls`` (keyed by the ``tool_use`` record's sequence), ``skips`` (keyed by
  the record's sequence, with the skip's extra facts), ``deliveries`` (one row per
  reply and sink, keyed by its ``delivery`` id: the fence's last word, attempts, error)
* ``turns_fts``: an FTS5 index over turns' prompts and replies (external content,
  kept in step explicitly whenever a turn row is written or deleted, and built in one
  pass after a full rebuild's inserts, see :meth:`Mirror.bulk_load`)

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
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from daemon.errors import VigilError
from daemon.events import Event
from daemon.fsutil import FILE_MODE, ensure_private_dir
from daemon.logs import get_logger
from daemon.mirror.fold import (
    BOUNDARIES,
    ConvState,
    DeliveryState,
    ToolState,
    TurnState,
    fold_event,
)
from daemon.mirror.rows import ConvRows
from daemon.mirror.schema import (
    CONVERSATION_INSERT,
    CONVERSATION_UPSERT,
    DELIVERY_INSERT,
    DUMP_COLUMNS,
    FTS_ADD_CONVERSATION,
    FTS_ADD_TURN,
    FTS_DELETE_CONVERSATION,
    FTS_DELETE_TURN,
    FTS_REBUILD,
    INDEXES,
    SCHEMA,
    SCHEMA_VERSION,
    SKIP_INSERT,
    TABLES,
    TOOL_CALL_INSERT,
    TURN_INSERT,
    TURN_UPSERT,
)
from jobs.budget import local_day_bounds

FLUSH_EVERY = 512
FLUSH_INTERVAL = 0.2  # seconds
BULK_WAIT_MS = 30_000  # how long a purge or replay waits for another writer
REBUILD_CHUNK = 20_000  # records of one conversation folded before its rows are written
_MARK = ("\x02", "\x03")  # snippet() markers, replaced by the caller's
Sink = Callable[[int, Event], None]
Feed = Callable[[Sink], object]


DayBounds = Callable[[str], tuple[datetime, datetime]]


class MirrorError(VigilError):
    """The mirror database cannot be used (missing, from another vigil, unreadable)."""

    exit_code = 1

    def __init__(self, path: Path | str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"mirror {path}: {problem}")


class SearchSyntaxError(VigilError):
    exit_code = 2

    def __init__(self, query: str, detail: str) -> None:
        self.query = query
        self.detail = detail
        super().__init__(f"search {query!r}: {detail}")


# ---------------------------------------------------------------- query results


class DumpRow(NamedTuple):
    table: str
    key: tuple[Any, ...]
    values: tuple[Any, ...]


@dataclass(frozen=True)
class Hit:
    conversation: str
    turn: int
    status: str
    started_at: str | None
    snippet: str

    def as_json(self) -> dict[str, Any]:
        return {
            "conversation": self.conversation,
            "turn": self.turn,
            "status": self.status,
            "started_at": self.started_at,
            "snippet": self.snippet,
        }


@dataclass(frozen=True)
class ConversationSummary:
    name: str
    turns: int
    last_status: str | None
    last_activity: str | None
    spend_today_usd: float
    spend_total_usd: float
    session_id: str | None
    records: int
    forked_from: str | None = None  # the source conversation of a fork
    forked_turn: int | None = None  # the source's turn it was cut at
    paused_by: str | None = None  # "operator" or "auto" while paused
    paused_until: str | None = None  # the pause's end; None: until `vigil resume`

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "turns": self.turns,
            "last_status": self.last_status,
            "last_activity": self.last_activity,
            "spend_today_usd": self.spend_today_usd,
            "spend_total_usd": self.spend_total_usd,
            "session_id": self.session_id,
            "records": self.records,
            "forked_from": self.forked_from,
            "forked_turn": self.forked_turn,
            "paused": self.paused_by is not None,
            "paused_by": self.paused_by,
            "paused_until": self.paused_until,
        }

    @property
    def origin(self) -> str | None:
        """``SOURCE@TURN`` for a fork, for tables."""
        return None if self.forked_from is None else f"{self.forked_from}@{self.forked_turn}"


# ---------------------------------------------------------------- the mirror


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
        memory = str(path) == ":memory:"
        if readonly:
            if memory or not Path(path).exists():
                raise MirrorError(path, "does not exist (is the daemon running?)")
            db = sqlite3.connect(
                f"{Path(path).absolute().as_uri()}?mode=ro", uri=True, isolation_level=None
            )
        else:
            if not memory:
                try:
                    _create_private(Path(path))
                except OSError as exc:
                    raise MirrorError(path, f"cannot be created ({exc.strerror})") from None
            db = sqlite3.connect(str(path), isolation_level=None)
        db.row_factory = sqlite3.Row
        db.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        mirror = cls(
            db, path, readonly=readonly, flush_every=flush_every, flush_interval=flush_interval
        )
        mirror.busy_timeout_ms = int(busy_timeout_ms)
        try:
            mirror._prepare(memory=memory)
        except sqlite3.DatabaseError as exc:
            db.close()
            raise MirrorError(path, f"cannot be used ({exc})") from None
        return mirror

    def _prepare(self, *, memory: bool) -> None:
        version = self._schema_version()
        if self.readonly:
            if version != SCHEMA_VERSION:
                raise MirrorError(
                    self.path,
                    f"schema {version} is not this vigil's ({SCHEMA_VERSION}); run `vigil rebuild`",
                )
            return
        if not memory:
            self.db.execute("PRAGMA journal_mode = WAL")
        self.db.execute("PRAGMA synchronous = NORMAL")
        self.db.execute("PRAGMA temp_store = MEMORY")
        if version != SCHEMA_VERSION:
            self._recreate()

    def _schema_version(self) -> int | None:
        try:
            row = self.db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        except sqlite3.OperationalError:
            return None  # no meta table: empty or not ours
        return int(row[0]) if row is not None else None

    def _recreate(self) -> None:
        """Drop every table and create the schema afresh (in one transaction)."""
        self._begin_waiting()
        try:
            self._create_schema()
            self._run_script(INDEXES)
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")
        self._forget()

    def _create_schema(self) -> None:
        """Within a transaction: every table dropped and created empty, without the
        secondary indexes (``INDEXES``, the caller's)."""
        for table in TABLES:
            self.db.execute(f"DROP TABLE IF EXISTS {table}")
        self._run_script(SCHEMA)
        self.db.execute("INSERT INTO meta(key, value) VALUES ('schema', ?)", (str(SCHEMA_VERSION),))

    def _forget(self) -> None:
        """The rows were replaced: the cache holds nothing true any more."""
        self._convs.clear()
        self._dirty.clear()
        self._pending = 0

    def _run_script(self, script: str) -> None:
        for statement in _statements(script):
            self.db.execute(statement)

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
            if not _is_busy(exc):
                self._fail(exc)
            return False
        try:
            for name in self._dirty:
                self._write(self._convs[name])
            self.db.execute("COMMIT")
        except sqlite3.Error as exc:
            self.db.execute("ROLLBACK")
            if not _is_busy(exc):
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
        self._begin_waiting()
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
        ``mirror_rebuild.journal_feed`` and :func:`events_feed`). Returns how many
        records were applied. If ``feed`` raises, the transaction rolls back: the
        conversation's rows stay as they were.
        """
        self._check_writable()
        self.flush()
        self._begin_waiting()
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
        self._begin_waiting()
        try:
            self._create_schema()
            yield BulkLoad(self.db)
            self._run_script(INDEXES)
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

    def _begin_waiting(self) -> None:
        """BEGIN IMMEDIATE, waiting up to :data:`BULK_WAIT_MS` for another writer: a purge
        or replay is explicit work, unlike a flush, which never waits."""
        self.db.execute(f"PRAGMA busy_timeout = {max(BULK_WAIT_MS, self.busy_timeout_ms)}")
        try:
            self.db.execute("BEGIN IMMEDIATE")
        finally:
            self.db.execute(f"PRAGMA busy_timeout = {self.busy_timeout_ms}")

    def _check_writable(self) -> None:
        if self.readonly:
            raise MirrorError(self.path, "opened read-only")

    # --- reading -------------------------------------------------------------------------

    def dump(self) -> list[DumpRow]:
        """Every derived row, ordered by table and key, in one read snapshot."""
        rows: list[DumpRow] = []
        self.db.execute("BEGIN")
        try:
            for table, (keys, values) in DUMP_COLUMNS.items():
                cols = ", ".join((*keys, *values))
                order = ", ".join(keys)
                n = len(keys)
                for r in self.db.execute(f"SELECT {cols} FROM {table} ORDER BY {order}"):  # noqa: S608  # constants
                    t = tuple(r)
                    rows.append(DumpRow(table, t[:n], t[n:]))
        finally:
            self.db.execute("COMMIT")
        return rows

    def search(
        self, text: str, limit: int = 20, *, mark: tuple[str, str] = ("[", "]"), raw: bool = False
    ) -> list[Hit]:
        """Turns whose prompt or reply match ``text``, best first.

        ``text`` is taken as words that must all occur (each word quoted, so no FTS5
        syntax applies); ``raw=True`` passes FTS5 query syntax through instead.
        Snippets show the matches between the ``mark`` strings.
        """
        query = text if raw else _words_query(text)
        if not query:
            return []
        try:
            rows = self.db.execute(
                "SELECT t.conversation, t.turn, t.status, t.started_at, "
                "snippet(turns_fts, -1, ?, ?, '…', 16) "
                "FROM turns_fts JOIN turns t ON t.id = turns_fts.rowid "
                "WHERE turns_fts MATCH ? ORDER BY rank, t.conversation, t.turn LIMIT ?",
                (*_MARK, query, limit),
            ).fetchall()
        except sqlite3.OperationalError as exc:
            raise SearchSyntaxError(text, str(exc)) from None
        return [
            Hit(r[0], r[1], r[2], r[3], r[4].replace(_MARK[0], mark[0]).replace(_MARK[1], mark[1]))
            for r in rows
        ]

    def conversations(self, today: DayBounds | None = None) -> list[ConversationSummary]:
        """One summary per conversation; ``today(name)`` gives the UTC instants
        ``[start, end)`` of the conversation's "today" (its job's timezone, by
        :func:`jobs.budget.local_day_bounds`; the UTC day when not given). A turn's cost
        counts on the day it ended (else started)."""
        rows = self.db.execute(
            """
            SELECT c.name, c.session_id, c.last_activity, c.last_seq,
              c.forked_from, c.forked_turn,
              CASE WHEN c.paused_until IS NULL OR c.paused_until > ? THEN c.paused_by END,
              c.paused_until,
              (SELECT count(*) FROM turns t WHERE t.conversation = c.name),
              (SELECT coalesce(
                  (SELECT status FROM turns t WHERE t.conversation = c.name
                     AND status != 'skipped' ORDER BY turn DESC LIMIT 1),
                  (SELECT status FROM turns t WHERE t.conversation = c.name
                     ORDER BY turn DESC LIMIT 1))),
              (SELECT coalesce(sum(cost_usd), 0) FROM turns t WHERE t.conversation = c.name)
            FROM conversations c ORDER BY c.name
            """,
            (_utc_now_iso(),),
        ).fetchall()
        utc_today = local_day_bounds(datetime.now(UTC).date(), UTC)
        summaries = []
        for r in rows:
            start, end = today(r[0]) if today is not None else utc_today
            (spent,) = self.db.execute(
                "SELECT coalesce(sum(cost_usd), 0) FROM turns WHERE conversation = ?"
                " AND coalesce(ended_at, started_at) >= ? AND coalesce(ended_at, started_at) < ?",
                (r[0], _iso_prefix(start), _iso_prefix(end)),
            ).fetchone()
            summaries.append(
                ConversationSummary(
                    name=r[0],
                    turns=r[8],
                    last_status=r[9],
                    last_activity=r[2],
                    spend_today_usd=round(spent, 6),
                    spend_total_usd=round(r[10], 6),
                    session_id=r[1],
                    records=r[3],
                    forked_from=r[4],
                    forked_turn=r[5],
                    paused_by=r[6],
                    paused_until=r[7] if r[6] is not None else None,
                )
            )
        return summaries


def _iso_prefix(when: datetime) -> str:
    """``when`` (UTC) as the prefix the journal's ``at`` strings sort against: every
    stamp at or after that second sorts at or after it (``...T22:00:00.123Z``)."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")


def _utc_now_iso() -> str:
    """Now as the journal writes instants (``...Z``), comparable as text with them."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _is_busy(exc: sqlite3.Error) -> bool:
    text = str(exc)
    return "locked" in text or "busy" in text


def _statements(script: str) -> list[str]:
    """Split a script into statements (triggers contain ``;`` themselves)."""
    out: list[str] = []
    current = ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            out.append(current)
            current = ""
    return out


def _words_query(text: str) -> str:
    return " ".join('"' + word.replace('"', '""') + '"' for word in text.split())


def _create_private(path: Path) -> None:
    ensure_private_dir(path.parent)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)


class BulkLoad:
    """Inserts a whole conversation's rows at a time (see :meth:`Mirror.bulk_load`)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def add(self, rows: ConvRows) -> None:
        """Insert one conversation's rows: it must not have been added before."""
        if rows.conversation is None:
            return  # an empty journal has no rows
        db = self._db
        db.execute(CONVERSATION_INSERT, rows.conversation)
        db.executemany(TURN_INSERT, rows.turns)
        if rows.tool_calls:
            db.executemany(TOOL_CALL_INSERT, rows.tool_calls)
        if rows.skips:
            db.executemany(SKIP_INSERT, rows.skips)
        if rows.deliveries:
            db.executemany(DELIVERY_INSERT, rows.deliveries)


def events_feed(records: Iterable[tuple[int, Event]]) -> Feed:
    """A :data:`Feed` of ``(seq, event)`` pairs already in memory."""

    def feed(sink: Sink) -> None:
        for seq, event in records:
            sink(seq, event)

    return feed
