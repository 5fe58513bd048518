"""A node's PostgreSQL stores: the schema migrated, then one connection per component.

Five connections: leases and membership (synchronous commits: an epoch must never
be handed out twice), the event log (asynchronous commits under fsync ``turn``, a
synchronous one at each turn boundary), the transcript store, the routed operator
requests (:mod:`daemon.cluster.requests`) and, in a thread of its own, the LISTEN
connection that hears of them (:mod:`daemon.cluster.listen`). Every connection
has a connect timeout and a statement timeout, so a hung PostgreSQL turns into a
write error (a failed turn, a lease not renewed) rather than a hung daemon.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import psycopg

from daemon.cluster.db import Database
from daemon.cluster.errors import DatabaseUnavailable
from daemon.cluster.eventlog import PgEventLogStore
from daemon.cluster.leases import Leases, Membership
from daemon.cluster.requests import RoutedRequests
from daemon.cluster.schema import migrate
from daemon.cluster.transcripts import PgTranscriptStore
from daemon.config.cluster import ClusterConfig
from daemon.journal.file import FsyncPolicy
from daemon.journal.keyring import Keyring
from daemon.ports.agent import AgentFailure
from daemon.ports.clock import Clock

__all__ = ["CONNECT_TIMEOUT_S", "STATEMENT_TIMEOUT_MS", "ClusterBackend"]

CONNECT_TIMEOUT_S = 5
STATEMENT_TIMEOUT_MS = 5_000


class _TranscriptIndex:
    """``has_session`` for the beat runner: an unreachable database fails the connect
    (the turn fails with a reason) instead of escaping the turn."""

    def __init__(self, store: PgTranscriptStore) -> None:
        self.store = store

    def has_session(self, session_id: str) -> bool:
        try:
            return self.store.has_session(session_id)
        except DatabaseUnavailable as exc:
            raise AgentFailure("connect_failed", str(exc)) from None


@dataclass
class ClusterBackend:
    control: Database
    leases: Leases
    membership: Membership
    events: PgEventLogStore
    transcripts: PgTranscriptStore
    index: _TranscriptIndex
    schema_version: int
    requests: RoutedRequests
    listen: Database  # for :class:`daemon.cluster.listen.Listener` (its thread closes it)

    @classmethod
    def open(
        cls,
        dsn: str,
        cluster: ClusterConfig,
        keyring: Keyring,
        *,
        fsync: FsyncPolicy,
        clock: Clock,
        conversation_of: Callable[[str], str | None],
    ) -> ClusterBackend:
        """Connect, migrate the schema (raises ``DatabaseUnavailable`` or
        ``SchemaVersionError``, with the password never in the message)."""
        node = cluster.node

        def database(role: str, *, synchronous: bool = True) -> Database:
            return Database(
                dsn,
                application_name=f"vigil {node} {role}"[:63],
                connect_timeout=CONNECT_TIMEOUT_S,
                synchronous_commit=synchronous,
                statement_timeout_ms=STATEMENT_TIMEOUT_MS,
            )

        control = database("leases")
        try:
            version = migrate(control.connection(), control.where)
        except psycopg.Error as exc:
            control.discard()
            raise control.unavailable(exc) from None
        leases = Leases(control, node, ttl=cluster.lease, clock=clock)
        membership = Membership(control, node, ttl=cluster.lease, clock=clock)
        events = PgEventLogStore(
            database("events", synchronous=fsync is FsyncPolicy.ALWAYS),
            keyring,
            leases,
            fsync=fsync,
        )
        transcripts = PgTranscriptStore(database("transcripts"), keyring, leases, conversation_of)
        return cls(
            control,
            leases,
            membership,
            events,
            transcripts,
            _TranscriptIndex(transcripts),
            version,
            RoutedRequests(database("requests"), keyring, node),
            database("listen"),
        )

    @property
    def where(self) -> str:
        """The database's location without its password."""
        return self.control.where

    def close(self) -> None:
        for db in (self.events.db, self.transcripts.db, self.requests.db, self.control):
            db.close()
