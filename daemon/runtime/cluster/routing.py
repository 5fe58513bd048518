"""``vigil beat`` and ``vigil send`` on a cluster node that does not own the conversation.

The design: no forwarding. A node that is asked for a beat, a send, a queued note, a
pause or a resume of a conversation it does not hold answers at once with the node
that does (from the lease row in PostgreSQL) and what to run there; the CLI exits 10
(refused) with that message. Forwarding through the database (a request table the
owner polls, or NOTIFY) would add a second delivery path whose failure modes (the owner
changing between the request and its turn, a request surviving its sender) need their
own fencing; an answer naming the owner cannot run anything twice and costs one
statement. Scripts read the owner from ``vigil status --json`` (``conversations``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from daemon.cluster.errors import DatabaseUnavailable

if TYPE_CHECKING:
    from daemon.runtime.cluster.node import ClusterNode
    from daemon.runtime.supervisor import Supervisor

__all__ = ["RoutedControl"]


class RoutedControl:
    """The control socket's target on a cluster node: the supervisor's, for the
    conversations this node holds; a refusal naming the owner for the others."""

    def __init__(self, sup: Supervisor, node: ClusterNode) -> None:
        self.sup = sup
        self.node = node

    def status_snapshot(self) -> dict[str, Any]:
        return self.sup.status_snapshot()

    def request_beat(self, name: str) -> tuple[bool, str]:
        elsewhere = self.elsewhere(name, "beat")
        if elsewhere is not None:
            return False, elsewhere
        return self.sup.request_beat(name)

    def operator_request(self, op: str, request: dict[str, Any]) -> dict[str, Any]:
        name = request.get("job")
        elsewhere = self.elsewhere(name, op) if isinstance(name, str) else None
        if elsewhere is not None:
            return {"ok": False, "error": elsewhere}
        return self.sup.operator_request(op, request)

    def elsewhere(self, name: str, op: str) -> str | None:
        """Why ``op`` on ``name`` is not this node's to run, naming the owner; None
        when it is (or when ``name`` is no job: the supervisor says so)."""
        rt = self.node.rt
        job = rt.jobs.get(name)
        if job is not None and not job.retired:
            return None
        if all(j.name != name for j in rt.config.heartbeats):
            return None
        here = self.node.name
        try:
            lease = self.node.backend.leases.owner(name)
        except DatabaseUnavailable as exc:
            return f"{name!r} is not held by node {here}, and its owner is unknown: {exc}"
        now = rt.clock.now()
        if lease is None or lease.expires_at <= now or lease.node == here:
            return (
                f"{name!r} is not held by any node right now (it is being placed or taken "
                f"over); try again in a few seconds, or see `vigil status`"
            )
        return (
            f"{name!r} is owned by node {lease.node}, not {here}: run `vigil {op} {name}` "
            f"on {lease.node}"
        )
