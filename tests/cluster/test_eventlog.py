"""The PostgreSQL event log passes the port's behaviour suite, under each fsync policy."""

from __future__ import annotations

import pytest

from daemon.journal.file import FsyncPolicy
from daemon.journal.keyring import Keyring
from daemon.ports.eventlog import EventLogStore
from daemon.testing.conformance import run_event_log_conformance
from tests.cluster.conftest import wipe
from tests.cluster.helpers import ManualClock, Node, node


@pytest.mark.parametrize("fsync", [FsyncPolicy.TURN, FsyncPolicy.ALWAYS, FsyncPolicy.NEVER])
def test_pg_event_log_passes_the_conformance_suite(
    pg_dsn: str, keyring: Keyring, fsync: FsyncPolicy
) -> None:
    clock = ManualClock()
    opened: list[Node] = []

    def make() -> EventLogStore:
        for n in opened:
            n.close()
        wipe(pg_dsn)
        opened.append(node(pg_dsn, "node-a", keyring, clock, fsync=fsync))
        return opened[-1].events

    def reopen(store: EventLogStore) -> EventLogStore:
        # Another process of the same node (a restart), on connections of its own.
        opened.append(node(pg_dsn, "node-a", keyring, clock, fsync=fsync))
        return opened[-1].events

    try:
        run_event_log_conformance(make, reopen)
    finally:
        for n in opened:
            n.close()
