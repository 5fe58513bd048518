"""The cluster as an operator sees it: every node and who owns which conversation.

Read-only queries for ``vigil status`` (through a running node, or straight from the
database): :func:`cluster_view` returns plain rows; :func:`view_json` makes them
JSON-safe with ages measured from ``now``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg

from daemon.cluster.db import Database

__all__ = ["ClusterView", "LeaseRow", "NodeRow", "cluster_view", "view_json"]


@dataclass(frozen=True)
class NodeRow:
    node: str
    started_at: datetime
    heartbeat_at: datetime


@dataclass(frozen=True)
class LeaseRow:
    conversation: str
    node: str
    epoch: int
    expires_at: datetime
    acquired_at: datetime


@dataclass(frozen=True)
class ClusterView:
    nodes: list[NodeRow]
    leases: list[LeaseRow]


def cluster_view(db: Database) -> ClusterView:
    """Every node row and every lease row (raises ``DatabaseUnavailable``)."""
    try:
        conn = db.connection()
        nodes = conn.execute(
            "SELECT node, started_at, heartbeat_at FROM nodes ORDER BY node"
        ).fetchall()
        leases = conn.execute(
            "SELECT conversation, node, epoch, expires_at, acquired_at FROM leases"
            " ORDER BY conversation"
        ).fetchall()
    except psycopg.Error as exc:
        if db.lost(exc):
            db.discard()
        raise db.unavailable(exc) from None
    return ClusterView(
        [NodeRow(r[0], r[1], r[2]) for r in nodes],
        [LeaseRow(r[0], r[1], int(r[2]), r[3], r[4]) for r in leases],
    )


def _seconds(delta: timedelta) -> float:
    return round(delta.total_seconds(), 1)


def view_json(view: ClusterView, now: datetime, ttl: timedelta) -> dict[str, Any]:
    """Nodes (alive: a heartbeat within ``ttl``) and conversations (owner, epoch, how
    long the owner has held it, and whether its lease is still running)."""
    return {
        "nodes": [
            {
                "node": n.node,
                "alive": now - n.heartbeat_at < ttl,
                "heartbeat_age_s": _seconds(now - n.heartbeat_at),
                "started_at": n.started_at.isoformat(),
            }
            for n in view.nodes
        ],
        "conversations": [
            {
                "conversation": lease.conversation,
                "owner": lease.node if lease.expires_at > now else None,
                "last_owner": lease.node,
                "epoch": lease.epoch,
                "lease_age_s": _seconds(now - lease.acquired_at),
                "expires_in_s": _seconds(lease.expires_at - now),
            }
            for lease in view.leases
        ],
    }
