"""Conversation leases with fencing epochs, and node membership, in PostgreSQL.

A lease row says which node owns a conversation, under which ``epoch``, until when.

* :meth:`Leases.acquire` takes a conversation that is free, whose lease expired (a
  takeover: ``Lease.taken_from`` names the node it was taken from) or that this node
  holds already, and always grows the epoch: a second process under the same node
  name (a node restarted while its old process hangs) fences the first just as
  another node would. A live lease of another node raises
  :class:`~daemon.cluster.errors.LeaseHeld`.
* :meth:`Leases.renew` / :meth:`Leases.renew_all` push ``expires_at`` out by ``ttl``
  while the epoch is still this node's; a lease found lost raises (or is left out).
* :meth:`Leases.release` ends a lease at once (it expires now) and keeps the row: an
  epoch is never reused, since rows are never deleted.

Writes are fenced on ``(node, epoch)`` alone, never on ``expires_at``: an expired
lease nobody took over is still safe to write under (no one else writes), and only a
takeover, which grows the epoch, fences the old owner. Expiry is judged with the
injected clock (:mod:`daemon.ports.clock`), so the nodes' clocks must agree to well
within ``ttl`` (NTP); tests move a fake clock instead of sleeping.

:class:`Membership` is the ``nodes`` table: each node's heartbeat (with the digest of
its jobs and its key ids, for the join checks), and the nodes alive within ``ttl``.

Database failures raise :class:`~daemon.cluster.errors.DatabaseUnavailable`; the
connection is opened afresh on the next call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

import psycopg

from daemon.cluster.db import Connection, Database
from daemon.cluster.errors import DatabaseUnavailable, LeaseHeld
from daemon.errors import OwnershipLost
from daemon.ports.clock import Clock, SystemClock

__all__ = ["Lease", "Leases", "Membership", "NodeInfo"]

T = TypeVar("T")

_ACQUIRE = """
WITH previous AS (SELECT node FROM leases WHERE conversation = %(c)s)
INSERT INTO leases AS l (conversation, node, epoch, expires_at, acquired_at)
VALUES (%(c)s, %(n)s, 1, %(exp)s, %(now)s)
ON CONFLICT (conversation) DO UPDATE
    SET node = EXCLUDED.node, epoch = l.epoch + 1,
        expires_at = EXCLUDED.expires_at, acquired_at = EXCLUDED.acquired_at
    WHERE l.node = EXCLUDED.node OR l.expires_at <= %(now)s
RETURNING l.epoch, l.expires_at, (SELECT node FROM previous)
"""


@dataclass(frozen=True)
class Lease:
    conversation: str
    node: str
    epoch: int
    expires_at: datetime
    taken_from: str | None = None  # another node whose expired lease this replaced


@dataclass(frozen=True)
class NodeInfo:
    node: str
    started_at: datetime
    heartbeat_at: datetime
    jobs_digest: str
    key_ids: tuple[str, ...]


def _run(db: Database, work: Callable[[Connection], T]) -> T:
    """``work`` on the connection; once more on a fresh one if the connection was lost
    (PostgreSQL restarted). Every statement here may run twice: renew and release are
    idempotent, and an acquire that ran twice only skipped an epoch."""
    for attempt in (1, 2):
        try:
            return work(db.connection())
        except psycopg.Error as exc:
            lost = db.lost(exc)
            if lost:
                db.discard()
            if not lost or attempt == 2:
                raise db.unavailable(exc) from None
    raise AssertionError("unreachable")


class Leases:
    """This node's leases (see the module docstring); remembers the ones it holds."""

    def __init__(
        self, db: Database, node: str, *, ttl: timedelta, clock: Clock | None = None
    ) -> None:
        if ttl <= timedelta(0):
            raise ValueError(f"lease ttl must be positive, not {ttl}")
        self.db = db
        self.node = node
        self.ttl = ttl
        self.clock: Clock = clock or SystemClock()
        self._held: dict[str, Lease] = {}

    def held(self, conversation: str) -> Lease | None:
        """The lease this node acquired for ``conversation`` (no database call); it may
        have been lost since: every fenced write finds out."""
        return self._held.get(conversation)

    def acquire(self, conversation: str) -> Lease:
        now = self.clock.now()
        params = {"c": conversation, "n": self.node, "exp": now + self.ttl, "now": now}
        row = _run(self.db, lambda conn: conn.execute(_ACQUIRE, params).fetchone())
        if row is None:
            owner = self.owner(conversation)
            if owner is None:  # released and deleted in between: cannot happen, rows stay
                raise LeaseHeld(conversation, self.node, "<unknown>", now)
            raise LeaseHeld(conversation, self.node, owner.node, owner.expires_at)
        previous = row[2] if row[2] != self.node else None
        lease = Lease(conversation, self.node, int(row[0]), row[1], previous)
        self._held[conversation] = lease
        return lease

    def renew(self, conversation: str) -> Lease:
        """Extend this node's lease by ``ttl``; :class:`OwnershipLost` if it is gone."""
        lease = self._held.get(conversation)
        if lease is None:
            raise self.lost(conversation, 0)
        epoch = lease.epoch
        expires = self.clock.now() + self.ttl
        row = _run(
            self.db,
            lambda conn: conn.execute(
                "UPDATE leases SET expires_at = %s"
                " WHERE conversation = %s AND node = %s AND epoch = %s RETURNING expires_at",
                (expires, conversation, self.node, epoch),
            ).fetchone(),
        )
        if row is None:
            raise self.lost(conversation, epoch)
        renewed = Lease(conversation, self.node, epoch, row[0])
        self._held[conversation] = renewed
        return renewed

    def renew_all(self) -> dict[str, Lease]:
        """Renew every lease this node holds in one statement; those that were lost
        (another node took them over) are dropped and left out of the result."""
        if not self._held:
            return {}
        expires = self.clock.now() + self.ttl
        convs = list(self._held)
        epochs = [self._held[c].epoch for c in convs]
        rows = _run(
            self.db,
            lambda conn: conn.execute(
                "UPDATE leases l SET expires_at = %s"
                " FROM unnest(%s::text[], %s::bigint[]) AS mine(conversation, epoch)"
                " WHERE l.conversation = mine.conversation AND l.epoch = mine.epoch"
                " AND l.node = %s RETURNING l.conversation, l.epoch, l.expires_at",
                (expires, convs, epochs, self.node),
            ).fetchall(),
        )
        renewed = {r[0]: Lease(r[0], self.node, int(r[1]), r[2]) for r in rows}
        self._held = renewed
        return dict(renewed)

    def release(self, conversation: str) -> None:
        """End this node's lease now (between turns, or at shutdown); idempotent."""
        lease = self._held.pop(conversation, None)
        if lease is None:
            return
        now = self.clock.now()
        _run(
            self.db,
            lambda conn: conn.execute(
                "UPDATE leases SET expires_at = %s"
                " WHERE conversation = %s AND node = %s AND epoch = %s",
                (now, conversation, self.node, lease.epoch),
            ),
        )

    def owner(self, conversation: str) -> Lease | None:
        """The current lease row of ``conversation`` (whoever holds it), if any."""
        row = _run(
            self.db,
            lambda conn: conn.execute(
                "SELECT node, epoch, expires_at FROM leases WHERE conversation = %s",
                (conversation,),
            ).fetchone(),
        )
        return None if row is None else Lease(conversation, row[0], int(row[1]), row[2])

    def lost(self, conversation: str, epoch: int) -> OwnershipLost:
        """The error for a write refused at ``epoch``, naming the owner now (best effort:
        the database may be unreachable by then)."""
        self._held.pop(conversation, None)
        try:
            owner = self.owner(conversation)
        except DatabaseUnavailable:  # the error names the owner only when it can
            owner = None
        who = None
        if owner is not None:
            who = owner.node if owner.node != self.node else f"{owner.node} (epoch {owner.epoch})"
        return OwnershipLost(conversation, self.node, epoch, who)


class Membership:
    """The ``nodes`` table for one node: heartbeat, the live nodes, leaving."""

    def __init__(
        self, db: Database, node: str, *, ttl: timedelta, clock: Clock | None = None
    ) -> None:
        self.db = db
        self.node = node
        self.ttl = ttl
        self.clock: Clock = clock or SystemClock()
        self.started_at = self.clock.now()

    def heartbeat(self, *, jobs_digest: str, key_ids: Sequence[str]) -> None:
        """Say this node is alive now (insert or refresh its row)."""
        params: dict[str, Any] = {
            "n": self.node,
            "s": self.started_at,
            "h": self.clock.now(),
            "j": jobs_digest,
            "k": list(key_ids),
        }
        _run(
            self.db,
            lambda conn: conn.execute(
                "INSERT INTO nodes (node, started_at, heartbeat_at, jobs_digest, key_ids)"
                " VALUES (%(n)s, %(s)s, %(h)s, %(j)s, %(k)s)"
                " ON CONFLICT (node) DO UPDATE SET started_at = EXCLUDED.started_at,"
                " heartbeat_at = EXCLUDED.heartbeat_at, jobs_digest = EXCLUDED.jobs_digest,"
                " key_ids = EXCLUDED.key_ids",
                params,
            ),
        )

    def live_nodes(self) -> list[NodeInfo]:
        """Nodes whose last heartbeat is less than ``ttl`` old, by name."""
        since = self.clock.now() - self.ttl
        rows = _run(
            self.db,
            lambda conn: conn.execute(
                "SELECT node, started_at, heartbeat_at, jobs_digest, key_ids FROM nodes"
                " WHERE heartbeat_at > %s",
                (since,),
            ).fetchall(),
        )
        infos = [NodeInfo(r[0], r[1], r[2], r[3], tuple(r[4])) for r in rows]
        return sorted(infos, key=lambda n: n.node)

    def leave(self) -> None:
        """Remove this node (a clean shutdown, after releasing its leases)."""
        _run(
            self.db,
            lambda conn: conn.execute("DELETE FROM nodes WHERE node = %s", (self.node,)),
        )
