"""``vigil fork NAME NEW_NAME [--at TURN]`` against a cluster: the same fork, in PostgreSQL.

The guarantees are the file fork's (:mod:`daemon.ops.fork`, whose pure parts it
reuses: :func:`~daemon.ops.fork.fork_point`, :func:`~daemon.ops.fork.check_target_cwd`,
the transcript copy and the ``forked`` record); offline (no CLI runs, no model is
called), so safe while the nodes run:

1. NAME's events are read from PostgreSQL (every record authenticated, the sequence
   checked for gaps) and the cut is chosen.
2. NEW_NAME's lease is taken as the node :data:`FORK_NODE` (a live node holding it
   refuses the fork), and NEW_NAME must have no events: checked before the lease is
   taken (so a refusal writes nothing) and again under it.
3. The SDK copies NAME's transcript up to the cut into a new session in the
   PostgreSQL transcript store, sealed, each write fenced on that lease: the new
   session is bound to NEW_NAME for the fence, and NAME's session to nothing (it is
   only read; a write to it would be refused).
4. NEW_NAME's event log is opened under the lease and the ``forked`` record written as
   its sequence 1, committed synchronously; then the lease is released at once.
   If the record cannot be written, the copied transcript is deleted (under the same
   lease) and the fork fails: all or nothing. (One corner: a fork slower than
   ``lease`` may see a node with a job NEW_NAME take the name over meanwhile; the
   fence then refuses the fork's writes, and a copy already made stays behind, filed
   under NEW_NAME.)

A cluster node with a job NEW_NAME (same ``cwd``) then acquires it like any
conversation and resumes the new session at its next beat, numbered on from TURN + 1.

Imported only when the configuration has ``[cluster]`` (it imports psycopg).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping

import psycopg

from daemon.agent.sdk import ForkedTranscript, preload_sdk
from daemon.cluster.db import Database
from daemon.cluster.errors import DatabaseUnavailable, LeaseHeld
from daemon.cluster.eventlog import PgEventLogStore
from daemon.cluster.leases import Leases
from daemon.cluster.schema import current_version, migrate
from daemon.cluster.transcripts import PgTranscriptStore
from daemon.config.model import Config
from daemon.errors import ForkRefusedError, JournalWriteError, UnknownJobError, VigilError
from daemon.events.heal import fold
from daemon.journal.file import FsyncPolicy
from daemon.journal.keyring import Keyring
from daemon.ops.fork import (
    ForkPoint,
    ForkResult,
    check_target_cwd,
    copy_transcript,
    discard_transcript,
    fork_point,
    fork_record,
)

__all__ = ["FORK_NODE", "fork_in_cluster"]

FORK_NODE = "vigil-fork"
STATEMENT_TIMEOUT_MS = 30_000


async def fork_in_cluster(
    config: Config,
    keyring: Keyring,
    source: str,
    name: str,
    at: int | None,
    *,
    configured_cwd: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> ForkResult:
    """Fork ``source`` into ``name`` in the cluster's database (see the module
    docstring). ``UnknownJobError`` when ``source`` has no events there,
    ``ForkRefusedError`` (nothing written) when the fork cannot be made."""
    cluster = config.cluster
    if cluster is None:
        raise ValueError("not a cluster configuration")
    db = Database(
        cluster.database_url(dict(os.environ) if environ is None else environ),
        application_name="vigil fork",
        statement_timeout_ms=STATEMENT_TIMEOUT_MS,
    )
    try:
        _check_schema(db, source, config)
        leases = Leases(db, FORK_NODE, ttl=cluster.lease)
        # One connection, synchronous commits: the record is durable when this returns.
        events = PgEventLogStore(db, keyring, leases, fsync=FsyncPolicy.ALWAYS)
        if not events.exists(source):
            known = set(events.names()) | {j.name for j in config.heartbeats}
            raise UnknownJobError(source, sorted(known))
        view = fold((e for _, e in events.read(source)), open_turn_status="running")
        point = fork_point(source, view, at)
        check_target_cwd(name, configured_cwd, point)
        _refuse_if_started(events, name)  # before the lease: a refusal writes nothing
        preload_sdk()  # the copy imports it: not while the lease runs
        return await _fork_under_lease(events, keyring, point, name)
    finally:
        db.close()


async def _fork_under_lease(
    events: PgEventLogStore, keyring: Keyring, point: ForkPoint, name: str
) -> ForkResult:
    leases = events.leases
    try:
        leases.acquire(name)
        try:
            _refuse_if_started(events, name)  # again, now that no node can start it

            def conversation_of(session_id: str) -> str | None:
                # The copy writes only the new session; the source's is only read.
                return None if session_id == point.session_id else name

            store = PgTranscriptStore(events.db, keyring, leases, conversation_of)
            copied = await copy_transcript(store, point)
            await _publish(events, store, point, copied, name)
            return ForkResult(name, point, copied.session_id, events.where(name))
        finally:
            with contextlib.suppress(DatabaseUnavailable):  # it expires after the ttl anyway
                leases.release(name)
    except LeaseHeld as held:  # a live node runs a job of that name
        raise ForkRefusedError(
            f"node {held.owner} holds {name}'s lease until {held.expires_at.isoformat()} "
            f"(a job named {name} runs there); fork into a name no node runs yet"
        ) from None


async def _publish(
    events: PgEventLogStore,
    store: PgTranscriptStore,
    point: ForkPoint,
    copied: ForkedTranscript,
    name: str,
) -> None:
    """Write ``name``'s ``forked`` record as its sequence 1 under the lease; when it is
    not written, delete the copied transcript (under the lease still held), unless the
    record may have landed after all (then the transcript is what it needs)."""
    in_doubt = False
    try:
        log = events.open(name)  # this node's lease again (its epoch grows)
        if log.last_seq != 0:
            raise _started(events, name)
        try:
            log.append(fork_record(point, copied))
        except JournalWriteError:
            in_doubt = True
            log.sync()  # settles an append whose outcome was unknown: withdrawn if it landed
            in_doubt = False
            raise
    except BaseException:
        if not in_doubt:
            # Fenced off (a node took the name over) or unreachable: then the copy stays
            # behind, filed under the name, and the error below says why.
            with contextlib.suppress(VigilError):
                await discard_transcript(store, point, copied)
        raise
    log.close()  # the record committed synchronously; this releases the lease


def _check_schema(db: Database, source: str, config: Config) -> None:
    """A database with vigil's schema as this build writes it (migrated as a node's
    start would; one of a newer vigil is refused, nothing changed)."""
    try:
        conn = db.connection()
        if current_version(conn) == 0:  # no node ever started on it: no conversation
            raise UnknownJobError(source, sorted(j.name for j in config.heartbeats))
        migrate(conn, db.where)
    except psycopg.Error as exc:
        db.discard()
        raise db.unavailable(exc) from None


def _refuse_if_started(events: PgEventLogStore, name: str) -> None:
    if next(iter(events.read(name)), None) is not None:
        raise _started(events, name)


def _started(events: PgEventLogStore, name: str) -> VigilError:
    return ForkRefusedError(
        f"{name} already has events ({events.where(name)}); a fork needs a new name "
        f"(`vigil history {name}` shows what it holds)"
    )
