"""Reading the mirror: a dump for ``vigil verify``, full-text search, conversation
summaries. Plain functions over a connection; nothing here writes.

:class:`daemon.mirror.db.Mirror` exposes them as methods (``mirror.search(...)``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

from daemon.errors import VigilError
from daemon.mirror.schema import DUMP_COLUMNS
from jobs.budget import local_day_bounds

__all__ = [
    "ConversationSummary",
    "DayBounds",
    "DumpRow",
    "Hit",
    "SearchSyntaxError",
    "conversations",
    "dump",
    "search",
]

DayBounds = Callable[[str], tuple[datetime, datetime]]
_MARK = ("\x02", "\x03")  # snippet() markers, replaced by the caller's


class SearchSyntaxError(VigilError):
    exit_code = 2

    def __init__(self, query: str, detail: str) -> None:
        self.query = query
        self.detail = detail
        super().__init__(f"search {query!r}: {detail}")


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
    compactions: int = 0  # times the CLI summarised the history
    context_tokens: int | None = None  # the context after the last turn that reported it

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
            "compactions": self.compactions,
            "context_tokens": self.context_tokens,
        }

    @property
    def origin(self) -> str | None:
        """``SOURCE@TURN`` for a fork, for tables."""
        return None if self.forked_from is None else f"{self.forked_from}@{self.forked_turn}"


def dump(db: sqlite3.Connection) -> list[DumpRow]:
    """Every derived row, ordered by table and key, in one read snapshot."""
    rows: list[DumpRow] = []
    db.execute("BEGIN")
    try:
        for table, (keys, values) in DUMP_COLUMNS.items():
            cols = ", ".join((*keys, *values))
            order = ", ".join(keys)
            n = len(keys)
            for r in db.execute(f"SELECT {cols} FROM {table} ORDER BY {order}"):  # noqa: S608  # constants
                t = tuple(r)
                rows.append(DumpRow(table, t[:n], t[n:]))
    finally:
        db.execute("COMMIT")
    return rows


def search(
    db: sqlite3.Connection,
    text: str,
    limit: int = 20,
    *,
    mark: tuple[str, str] = ("[", "]"),
    raw: bool = False,
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
        rows = db.execute(
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


def conversations(
    db: sqlite3.Connection, today: DayBounds | None = None
) -> list[ConversationSummary]:
    """One summary per conversation; ``today(name)`` gives the UTC instants
    ``[start, end)`` of the conversation's "today" (its job's timezone, by
    :func:`jobs.budget.local_day_bounds`; the UTC day when not given). A turn's cost
    counts on the day it ended (else started)."""
    rows = db.execute(
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
          (SELECT coalesce(sum(cost_usd), 0) FROM turns t WHERE t.conversation = c.name),
          (SELECT coalesce(sum(compactions), 0) FROM turns t WHERE t.conversation = c.name),
          (SELECT context_tokens FROM turns t WHERE t.conversation = c.name
             AND context_tokens IS NOT NULL ORDER BY turn DESC LIMIT 1)
        FROM conversations c ORDER BY c.name
        """,
        (_utc_now_iso(),),
    ).fetchall()
    utc_today = local_day_bounds(datetime.now(UTC).date(), UTC)
    summaries = []
    for r in rows:
        start, end = today(r[0]) if today is not None else utc_today
        (spent,) = db.execute(
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
                compactions=r[11],
                context_tokens=r[12],
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


def _words_query(text: str) -> str:
    return " ".join('"' + word.replace('"', '""') + '"' for word in text.split())
