"""The mirror's SQLite schema and statements (constants only; see ``daemon.mirror.db``).

Bump :data:`SCHEMA_VERSION` on any change: a mirror from another version is dropped
and rebuilt, never migrated (it is derived data).

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
  pass after a full rebuild's inserts, see :meth:`daemon.mirror.db.Mirror.bulk_load`)
"""

from __future__ import annotations

SCHEMA_VERSION = 4  # 2: conversations.forked_*; 3: conversations.paused_by, paused_until
# (vigil pause); 4: turns.context_tokens, compactions, compacted_* (compaction on the record)

SCHEMA = """
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE conversations(
    name TEXT PRIMARY KEY,
    last_seq INTEGER NOT NULL,
    session_id TEXT,
    cwd TEXT,
    session_totals TEXT NOT NULL,
    last_activity TEXT,
    forked_from TEXT,
    forked_turn INTEGER,
    forked_session TEXT,
    paused_by TEXT,
    paused_until TEXT
);
CREATE TABLE turns(
    id INTEGER PRIMARY KEY,
    conversation TEXT NOT NULL,
    turn INTEGER NOT NULL,
    status TEXT NOT NULL,
    prompt TEXT NOT NULL,
    reply TEXT NOT NULL,
    reply_from_result INTEGER NOT NULL,
    started_at TEXT,
    ended_at TEXT,
    job TEXT,
    trigger TEXT,
    session_id TEXT,
    cost_usd REAL,
    input_tokens INTEGER,
    output_tokens INTEGER,
    cache_read_tokens INTEGER,
    cache_creation_tokens INTEGER,
    is_error INTEGER NOT NULL,
    reason TEXT,
    detail TEXT,
    missed INTEGER,
    resume_at TEXT,
    deltas INTEGER NOT NULL,
    tool_calls INTEGER NOT NULL,
    first_seq INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    context_tokens INTEGER,
    compactions INTEGER NOT NULL,
    compacted_pre_tokens INTEGER,
    compacted_post_tokens INTEGER,
    UNIQUE(conversation, turn)
);
CREATE TABLE tool_calls(
    conversation TEXT NOT NULL,
    seq INTEGER NOT NULL,
    turn INTEGER,
    tool_use_id TEXT,
    name TEXT,
    input TEXT,
    started_at TEXT,
    result TEXT,
    is_error INTEGER,
    ended_at TEXT,
    result_seq INTEGER,
    PRIMARY KEY(conversation, seq)
);
CREATE TABLE skips(
    conversation TEXT NOT NULL,
    seq INTEGER NOT NULL,
    turn INTEGER,
    at TEXT,
    reason TEXT,
    detail TEXT,
    missed INTEGER,
    data TEXT NOT NULL,
    PRIMARY KEY(conversation, seq)
);
CREATE TABLE deliveries(
    conversation TEXT NOT NULL,
    delivery TEXT NOT NULL,
    turn INTEGER NOT NULL,
    sink TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    error TEXT,
    at TEXT,
    first_seq INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    PRIMARY KEY(conversation, delivery)
);
CREATE VIRTUAL TABLE turns_fts USING fts5(
    prompt, reply, content='turns', content_rowid='id'
);
"""
# Secondary indexes: a bulk load creates them after inserting (``Mirror.bulk_load``).
INDEXES = """
CREATE INDEX tool_calls_by_id ON tool_calls(conversation, tool_use_id);
"""
TABLES = ("deliveries", "skips", "tool_calls", "turns_fts", "turns", "conversations", "meta")

# Columns of each table as dumped: (key columns, value columns). ``turns.id`` is left
# out: row ids depend on the order conversations were written in.
DUMP_COLUMNS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "conversations": (
        ("name",),
        (
            "last_seq",
            "session_id",
            "cwd",
            "session_totals",
            "last_activity",
            "forked_from",
            "forked_turn",
            "forked_session",
            "paused_by",
            "paused_until",
        ),
    ),
    "turns": (
        ("conversation", "turn"),
        (
            "status",
            "prompt",
            "reply",
            "reply_from_result",
            "started_at",
            "ended_at",
            "job",
            "trigger",
            "session_id",
            "cost_usd",
            "input_tokens",
            "output_tokens",
            "cache_read_tokens",
            "cache_creation_tokens",
            "is_error",
            "reason",
            "detail",
            "missed",
            "resume_at",
            "deltas",
            "tool_calls",
            "first_seq",
            "last_seq",
            "context_tokens",
            "compactions",
            "compacted_pre_tokens",
            "compacted_post_tokens",
        ),
    ),
    "tool_calls": (
        ("conversation", "seq"),
        (
            "turn",
            "tool_use_id",
            "name",
            "input",
            "started_at",
            "result",
            "is_error",
            "ended_at",
            "result_seq",
        ),
    ),
    "skips": (("conversation", "seq"), ("turn", "at", "reason", "detail", "missed", "data")),
    "deliveries": (
        ("conversation", "delivery"),
        ("turn", "sink", "status", "attempts", "error", "at", "first_seq", "last_seq"),
    ),
}
TURN_COLUMNS = ("conversation", "turn", *DUMP_COLUMNS["turns"][1])
_COLS = ", ".join(TURN_COLUMNS)
_SLOTS = ", ".join("?" * len(TURN_COLUMNS))
_SET = ", ".join(f"{c} = excluded.{c}" for c in TURN_COLUMNS[2:])
TURN_UPSERT = (
    f"INSERT INTO turns({_COLS}) VALUES ({_SLOTS}) "  # noqa: S608  # column names are constants
    f"ON CONFLICT(conversation, turn) DO UPDATE SET {_SET}"
)
CONVERSATION_COLUMNS = ("name", *DUMP_COLUMNS["conversations"][1])
CONVERSATION_UPSERT = (
    f"INSERT INTO conversations({', '.join(CONVERSATION_COLUMNS)}) "  # noqa: S608  # constants
    f"VALUES ({', '.join('?' * len(CONVERSATION_COLUMNS))}) ON CONFLICT(name) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in CONVERSATION_COLUMNS[1:])
)
# The index is kept in step explicitly (cheaper than triggers): a row's entry is
# deleted with its exact old values before the row changes, and added after.
FTS_DELETE_TURN = (
    "INSERT INTO turns_fts(turns_fts, rowid, prompt, reply) "
    "SELECT 'delete', id, prompt, reply FROM turns WHERE conversation = ? AND turn = ?"
)
FTS_ADD_TURN = (
    "INSERT INTO turns_fts(rowid, prompt, reply) "
    "SELECT id, prompt, reply FROM turns WHERE conversation = ? AND turn = ?"
)
FTS_DELETE_CONVERSATION = (
    "INSERT INTO turns_fts(turns_fts, rowid, prompt, reply) "
    "SELECT 'delete', id, prompt, reply FROM turns WHERE conversation = ?"
)
FTS_ADD_CONVERSATION = (
    "INSERT INTO turns_fts(rowid, prompt, reply) "
    "SELECT id, prompt, reply FROM turns WHERE conversation = ?"
)
# A bulk load inserts into fresh tables, then indexes every turn at once.
TURN_INSERT = f"INSERT INTO turns({_COLS}) VALUES ({_SLOTS})"  # noqa: S608  # constants
CONVERSATION_INSERT = (
    f"INSERT INTO conversations({', '.join(CONVERSATION_COLUMNS)}) "  # noqa: S608  # constants
    f"VALUES ({', '.join('?' * len(CONVERSATION_COLUMNS))})"
)
FTS_REBUILD = "INSERT INTO turns_fts(turns_fts) VALUES ('rebuild')"
TOOL_CALL_INSERT = "INSERT OR REPLACE INTO tool_calls VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
SKIP_INSERT = "INSERT OR REPLACE INTO skips VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
DELIVERY_INSERT = "INSERT OR REPLACE INTO deliveries VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
