"""Append latency: the event log on PostgreSQL against the file journal, in one run.

Run: ``.venv/bin/python bench/cluster_append.py [--appends N] [--turn N]``. Not part
of the test run. It starts a throwaway PostgreSQL 15 (:mod:`daemon.testing.postgres`,
loopback, ``fsync=on``: real durability) and appends N delta-like events (about 200
bytes of JSON) to one conversation through each backend, with ``sync()`` every
``--turn`` appends (a turn boundary), timing every call:

(a) ``FileEventLogStore``, fsync ``turn`` (write per append, fsync per turn)
(b) ``PgEventLogStore``, fsync ``turn`` (asynchronous commit per append, one fenced
    synchronous commit per turn)
(c) ``PgEventLogStore``, fsync ``always`` (a synchronous commit per append)
(d) ``FileEventLogStore``, fsync ``always`` (an fsync per append), the file journal's
    counterpart of (c)

It prints p50/p99 (and max) of ``append`` and of ``sync`` per case, in milliseconds.
Both the journal directory and the database live on the same disk (``$TMPDIR``).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from bench.journal import make_events
from daemon.cluster.db import Database
from daemon.cluster.eventlog import PgEventLogStore
from daemon.cluster.leases import Leases
from daemon.cluster.schema import migrate
from daemon.journal.file import FsyncPolicy
from daemon.journal.keyring import Keyring
from daemon.journal.logstore import FileEventLogStore
from daemon.ports.eventlog import EventLogStore
from daemon.testing.postgres import PostgresServer


def _pct(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def run_case(
    store: EventLogStore, name: str, events: list[dict[str, Any]], turn: int
) -> tuple[list[float], list[float]]:
    """(append latencies, sync latencies) in milliseconds."""
    log = store.open(name)
    appends: list[float] = []
    syncs: list[float] = []
    clock = time.perf_counter
    for i, event in enumerate(events, start=1):
        t0 = clock()
        log.append(event)
        appends.append((clock() - t0) * 1000)
        if i % turn == 0:
            t0 = clock()
            log.sync()
            syncs.append((clock() - t0) * 1000)
    log.close()
    assert sum(1 for _ in store.read(name)) == len(events)
    return appends, syncs


def _row(label: str, samples: list[float]) -> str:
    if not samples:
        return f"  {label:<8} -"
    return (
        f"  {label:<8} p50 {_pct(samples, 50):7.3f}  p99 {_pct(samples, 99):7.3f}"
        f"  max {max(samples):8.3f}  mean {statistics.fmean(samples):7.3f}  (n={len(samples)})"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--appends", type=int, default=5000)
    parser.add_argument("--turn", type=int, default=50, help="appends per sync()")
    args = parser.parse_args(argv)
    events = make_events(args.appends)
    keyring = Keyring.generate()
    server = PostgresServer.start(fsync=True)
    closers: list[Callable[[], None]] = [server.destroy]
    try:
        dsn = server.dsn()
        admin = Database(dsn)
        migrate(admin.connection(), admin.where)
        closers.append(admin.close)
        leases = Leases(Database(dsn), "bench-node", ttl=timedelta(minutes=5))
        closers.append(leases.db.close)
        tmp = Path(tempfile.mkdtemp(prefix="vigil-bench-"))
        closers.append(lambda: shutil.rmtree(tmp, ignore_errors=True))

        def pg(policy: FsyncPolicy) -> EventLogStore:
            store = PgEventLogStore.connect(dsn, keyring, leases, fsync=policy)
            closers.append(store.db.close)
            return store

        def files(policy: FsyncPolicy) -> EventLogStore:
            directory = tmp / policy.value
            directory.mkdir()
            return FileEventLogStore(directory, keyring, fsync=policy)

        cases: list[tuple[str, EventLogStore, str]] = [
            ("(a) file journal, fsync turn", files(FsyncPolicy.TURN), "a"),
            ("(b) PostgreSQL, fsync turn", pg(FsyncPolicy.TURN), "b"),
            ("(c) PostgreSQL, fsync always", pg(FsyncPolicy.ALWAYS), "c"),
            ("(d) file journal, fsync always", files(FsyncPolicy.ALWAYS), "d"),
        ]
        print(
            f"{args.appends} appends of ~200-byte events, sync() every {args.turn}; "
            "latency in ms (PostgreSQL 15 on 127.0.0.1, fsync on)"
        )
        for label, store, conv in cases:
            appends, syncs = run_case(store, f"bench-{conv}", events, args.turn)
            print(label)
            print(_row("append", appends))
            print(_row("sync", syncs))
        return 0
    finally:
        for close in reversed(closers):
            close()


if __name__ == "__main__":
    sys.exit(main())
