"""vigil's schema in PostgreSQL, created and migrated by vigil itself.

``vigil_schema(version, description, applied_at)`` records every migration applied.
:data:`MIGRATIONS` is the ordered list this build knows; :func:`migrate` applies the
missing ones, each in one transaction together with its version row, under a
transaction-scoped advisory lock, so nodes starting together apply each step once and
a failed step leaves nothing half done. Re-running is a no-op (idempotent). A database
whose version is newer than this build knows is refused with
:class:`~daemon.cluster.errors.SchemaVersionError`, and nothing is changed.

What PostgreSQL holds (version 1):

* ``conversations``: every conversation with an event log (so an empty log exists).
* ``events(conversation, seq, key_id, line)``: the event log. ``line`` is the sealed
  line the file journal writes for that record, without its newline
  (:func:`daemon.journal.framing.seal`); ``key_id`` repeats the key id it names so a
  key rotation can find what still needs the old key.
* ``transcript_streams`` / ``transcripts(stream, seq, key_id, line)``: the SDK session
  store; ``stream`` is a digest of the SDK key, as :mod:`daemon.agent.store` names its
  files, and the key itself is the stream's first sealed record. ``project`` and
  ``session`` (digests of the project key and the session id) and ``main_stream``
  index the listings; ``conversation`` is the conversation whose lease fences the
  stream's writes; ``summary_seq`` points at the SDK's latest folded summary.
* ``leases(conversation, node, epoch, expires_at, acquired_at)``: one owner per
  conversation; ``epoch`` grows at every acquisition and is never reset (a lease row
  is never deleted), so a stale owner can always be told apart.
* ``nodes(node, started_at, heartbeat_at, jobs_digest, key_ids)``: cluster membership.

Version 2:

* ``routed_requests``: an operator command (``beat``, ``send``, ``queue``, ``pause``,
  ``resume``) a node that does not own the conversation hands to its owner
  (:mod:`daemon.cluster.requests`). ``body`` and ``answer`` are sealed lines (the
  request and the answer as JSON, stream ``rq:<conversation>:<id>``, sequence 1 and 2);
  ``deadline`` (the database's clock) is when the requester stops waiting: no node
  claims a request after it, nor one ``cancelled_at`` is set on. ``claimed_by`` /
  ``claimed_epoch`` say which owner, at which lease epoch, ran it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import LiteralString

from daemon.cluster.db import Connection
from daemon.cluster.errors import SchemaVersionError

__all__ = ["LATEST", "MIGRATIONS", "Migration", "current_version", "migrate"]

# pg_advisory_xact_lock key: "vigil" in ASCII, so unrelated applications do not collide.
_LOCK_KEY = 0x766967696C


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    steps: tuple[LiteralString, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "event log, transcripts, leases, nodes",
        (
            """CREATE TABLE conversations (
                conversation text PRIMARY KEY,
                created_at timestamptz NOT NULL DEFAULT now()
            )""",
            """CREATE TABLE events (
                conversation text NOT NULL,
                seq bigint NOT NULL CHECK (seq > 0),
                key_id text NOT NULL,
                line bytea NOT NULL,
                PRIMARY KEY (conversation, seq)
            )""",
            """CREATE TABLE transcript_streams (
                stream text PRIMARY KEY,
                main_stream text NOT NULL,
                project text NOT NULL,
                session text NOT NULL,
                is_main boolean NOT NULL,
                conversation text NOT NULL,
                summary_seq bigint,
                created_at timestamptz NOT NULL DEFAULT now(),
                updated_at timestamptz NOT NULL DEFAULT now()
            )""",
            "CREATE INDEX transcript_streams_project ON transcript_streams (project, is_main)",
            "CREATE INDEX transcript_streams_main ON transcript_streams (main_stream)",
            "CREATE INDEX transcript_streams_session ON transcript_streams (session, is_main)",
            """CREATE TABLE transcripts (
                stream text NOT NULL REFERENCES transcript_streams ON DELETE CASCADE,
                seq bigint NOT NULL CHECK (seq > 0),
                key_id text NOT NULL,
                line bytea NOT NULL,
                PRIMARY KEY (stream, seq)
            )""",
            """CREATE TABLE leases (
                conversation text PRIMARY KEY,
                node text NOT NULL,
                epoch bigint NOT NULL CHECK (epoch > 0),
                expires_at timestamptz NOT NULL,
                acquired_at timestamptz NOT NULL
            )""",
            "CREATE INDEX leases_node ON leases (node)",
            """CREATE TABLE nodes (
                node text PRIMARY KEY,
                started_at timestamptz NOT NULL,
                heartbeat_at timestamptz NOT NULL,
                jobs_digest text NOT NULL,
                key_ids text[] NOT NULL
            )""",
        ),
    ),
    Migration(
        2,
        "operator requests routed to a conversation's owner",
        (
            """CREATE TABLE routed_requests (
                id text PRIMARY KEY,
                conversation text NOT NULL,
                op text NOT NULL,
                requested_by text NOT NULL,
                key_id text NOT NULL,
                body bytea NOT NULL,
                created_at timestamptz NOT NULL DEFAULT now(),
                deadline timestamptz NOT NULL,
                cancelled_at timestamptz,
                claimed_by text,
                claimed_epoch bigint,
                claimed_at timestamptz,
                answer bytea,
                answered_at timestamptz
            )""",
            "CREATE INDEX routed_requests_open ON routed_requests (conversation)"
            " WHERE claimed_by IS NULL AND cancelled_at IS NULL",
            "CREATE INDEX routed_requests_deadline ON routed_requests (deadline)",
        ),
    ),
)

LATEST = MIGRATIONS[-1].version

_CREATE_VERSION_TABLE = """CREATE TABLE IF NOT EXISTS vigil_schema (
    version integer PRIMARY KEY,
    description text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)"""


def current_version(conn: Connection) -> int:
    """The highest applied migration; 0 for a database vigil never touched."""
    row = conn.execute("SELECT to_regclass('vigil_schema') IS NOT NULL").fetchone()
    if row is None or not row[0]:
        return 0
    row = conn.execute("SELECT coalesce(max(version), 0) FROM vigil_schema").fetchone()
    return int(row[0]) if row is not None else 0


def migrate(conn: Connection, where: str, migrations: tuple[Migration, ...] = MIGRATIONS) -> int:
    """Bring the schema to the last of ``migrations``; return the version it is at.

    ``conn`` is in autocommit mode; each migration runs in its own transaction.
    Raises :class:`SchemaVersionError` (changing nothing) when the database is newer.
    ``where`` is the redacted location named in errors.
    """
    known = migrations[-1].version if migrations else 0
    _check_order(migrations)
    for migration in migrations:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
            conn.execute(_CREATE_VERSION_TABLE)
            version = current_version(conn)
            if version > known:
                raise SchemaVersionError(where, version, known)
            if version >= migration.version:
                continue
            for step in migration.steps:
                conn.execute(step)
            conn.execute(
                "INSERT INTO vigil_schema (version, description) VALUES (%s, %s)",
                (migration.version, migration.description),
            )
    version = current_version(conn)
    if version > known:
        raise SchemaVersionError(where, version, known)
    return version


def _check_order(migrations: tuple[Migration, ...]) -> None:
    versions = [m.version for m in migrations]
    if versions != list(range(1, len(versions) + 1)):
        raise ValueError(f"migrations must be numbered 1, 2, 3, ... in order: {versions}")
