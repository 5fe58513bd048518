"""Small helpers of the cluster tests: a clock the test moves, nodes on one database."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from daemon.cluster.db import Database
from daemon.cluster.eventlog import PgEventLogStore
from daemon.cluster.leases import Leases
from daemon.journal.file import FsyncPolicy
from daemon.journal.keyring import Keyring

TTL = timedelta(seconds=15)


@dataclass
class ManualClock:
    """A clock that only moves when told to (``advance``)."""

    at: datetime = field(default_factory=lambda: datetime(2026, 1, 1, tzinfo=UTC))
    mono: float = 0.0

    def now(self) -> datetime:
        return self.at

    def monotonic(self) -> float:
        return self.mono

    def advance(self, delta: timedelta) -> None:
        self.at += delta
        self.mono += delta.total_seconds()


@dataclass
class Node:
    name: str
    leases: Leases
    events: PgEventLogStore

    def close(self) -> None:
        self.events.db.close()
        self.leases.db.close()


def node(
    dsn: str,
    name: str,
    keyring: Keyring,
    clock: ManualClock,
    *,
    fsync: FsyncPolicy = FsyncPolicy.TURN,
) -> Node:
    leases = Leases(Database(dsn, application_name=f"test {name}"), name, ttl=TTL, clock=clock)
    return Node(name, leases, PgEventLogStore.connect(dsn, keyring, leases, fsync=fsync))
