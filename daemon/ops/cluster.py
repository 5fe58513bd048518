"""The operator's read commands against a cluster: the events come from PostgreSQL.

``vigil history``, ``tail`` (``-f`` polls every 0.2 s) and ``export`` read a
conversation's events with the key, exactly as from a journal file (every record
authenticated, the sequence checked for gaps); ``vigil sessions`` and ``search`` fold
every conversation's events into a mirror in memory (:meth:`ClusterReader.mirror`: the
same rows and queries as a node's mirror file); ``vigil status`` shows the nodes and
who owns which conversation. They work from any machine that has the configuration,
the key and access to the database, with or without a node running there.

Imported only when the configuration has ``[cluster]`` (it imports psycopg).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any, TextIO

from daemon.cluster.db import Database
from daemon.cluster.errors import DatabaseUnavailable
from daemon.cluster.eventlog import PgEventLogStore
from daemon.cluster.leases import Leases
from daemon.cluster.view import cluster_view, view_json
from daemon.config.cluster import ClusterConfig
from daemon.config.model import Config
from daemon.errors import UnknownJobError
from daemon.events import Event
from daemon.events.heal import ConversationView, fold
from daemon.journal.keyring import Keyring
from daemon.mirror.db import Mirror
from daemon.mirror.rebuild import events_feed

__all__ = ["ClusterReader", "print_cluster_status"]

STATEMENT_TIMEOUT_MS = 30_000
# `tail -f` polls (one indexed statement per poll) rather than LISTEN: a NOTIFY per
# append would make every node's commits take PostgreSQL's one notification-queue lock
# (PreCommit_Notify serializes all notifying transactions), for the sake of a reader.
FOLLOW_POLL_S = 0.2
OUTAGE_RETRY_S = 1.0


class ClusterReader:
    """Read-only access to a cluster's database for one command."""

    def __init__(self, config: Config, keyring: Keyring) -> None:
        cluster = config.cluster
        if cluster is None:
            raise ValueError("not a cluster configuration")
        self.cluster: ClusterConfig = cluster
        self.config = config
        self.db = Database(
            cluster.database_url(),
            application_name=f"vigil {cluster.node} cli"[:63],
            synchronous_commit=False,
            statement_timeout_ms=STATEMENT_TIMEOUT_MS,
        )
        # Reading takes no lease: the store is only asked to read.
        leases = Leases(self.db, cluster.node, ttl=cluster.lease)
        self.store = PgEventLogStore(self.db, keyring, leases)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> ClusterReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def check_exists(self, name: str) -> None:
        if not self.store.exists(name):
            known = set(self.store.names()) | {j.name for j in self.config.heartbeats}
            raise UnknownJobError(name, sorted(known))

    def events(self, name: str, after: int = 0) -> Iterator[tuple[int, Event]]:
        return self.store.read(name, after)

    def owned_now(self, name: str) -> bool:
        """Whether a node holds ``name``'s lease now (its last turn may be running)."""
        now = datetime.now(UTC)
        return any(
            lease.conversation == name and lease.expires_at > now
            for lease in cluster_view(self.db).leases
        )

    def conversation(self, name: str) -> ConversationView:
        """The conversation folded, as ``vigil history`` shows it."""
        self.check_exists(name)
        events = [event for _, event in self.events(name)]
        return fold(events, open_turn_status="running" if self.owned_now(name) else "interrupted")

    def mirror(self) -> Mirror:
        """Every conversation's events folded into a mirror in memory, for ``vigil
        sessions`` and ``search``: the rows a node's mirror file would hold."""
        mirror = Mirror.open(":memory:")
        try:
            for name in self.store.names():
                mirror.replay(name, events_feed(self.events(name)))
        except BaseException:
            mirror.db.close()
            raise
        return mirror

    def status(self) -> dict[str, Any]:
        return view_json(cluster_view(self.db), datetime.now(UTC), self.cluster.lease)

    def export(self, name: str, out: TextIO, encode: Callable[[Any], str]) -> None:
        self.check_exists(name)
        for seq, event in self.events(name):
            out.write(encode({"seq": seq, **event}) + "\n")

    def tail(
        self,
        name: str,
        lines: int,
        show: Callable[[int, Event], None],
        *,
        follow: bool,
    ) -> None:
        self.check_exists(name)
        events = list(self.events(name))
        for seq, event in events[-lines:] if lines > 0 else []:
            show(seq, event)
        last = events[-1][0] if events else 0
        outage: str | None = None
        while follow:
            try:
                for seq, event in self.events(name, last):
                    show(seq, event)
                    last = seq
            except DatabaseUnavailable as exc:  # a restart or fail-over: keep following
                if outage is None:
                    print(f"vigil: {exc}; still following, retrying", file=sys.stderr)
                outage = str(exc)
                time.sleep(OUTAGE_RETRY_S)
                continue
            if outage is not None:
                print(f"vigil: {self.db.where} reachable again", file=sys.stderr)
                outage = None
            sys.stdout.flush()
            time.sleep(FOLLOW_POLL_S)


def print_cluster_status(cluster: dict[str, Any], out: TextIO) -> None:
    """The cluster part of ``vigil status``, for people."""
    here = cluster.get("node")
    if here:
        print(f"cluster node {here}, lease {cluster.get('lease_s')}s", file=out)
    if cluster.get("database_error"):
        print(f"  database unreachable: {cluster['database_error']}", file=out)
    for node in cluster.get("nodes", []):
        state = "alive" if node["alive"] else "silent"
        print(
            f"  node {node['node']:20} {state:7} heartbeat {node['heartbeat_age_s']}s ago",
            file=out,
        )
    for conv in cluster.get("conversations", []):
        owner = conv["owner"] or f"nobody (was {conv['last_owner']})"
        print(
            f"  {conv['conversation']:20} owner {owner:20} epoch {conv['epoch']:<4} "
            f"held {conv['lease_age_s']}s, lease {conv['expires_in_s']}s left",
            file=out,
        )
    for name in cluster.get("without_cwd", []):
        print(f"  {name}: its cwd does not exist on this node; other nodes run it", file=out)
    for name, owner in (cluster.get("waiting_for_lease") or {}).items():
        print(f"  {name}: placed here, waiting for {owner} to hand it over", file=out)
    for name, why in (cluster.get("refused") or {}).items():
        print(f"  {name}: refused on this node: {why}", file=out)
