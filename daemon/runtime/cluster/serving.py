"""The owner's side of a routed operator request: claim it, run it, answer.

:meth:`RequestServer.serve` runs on the event loop when the LISTEN thread hears of a
request for a conversation this node holds, and at every tick of the node (the
fallback: a notification lost while the listener reconnected). It claims every open
request of the conversations this node has open, fenced on the lease epochs it holds
(:meth:`daemon.cluster.requests.RoutedRequests.claim`), runs each through the
supervisor exactly as a request from its own control socket
(``Supervisor.request_beat`` / ``Supervisor.operator_request``: one path to a turn, the
journal first), and writes the answer the local path returns. A node that is stopping
claims nothing: the next owner will.

Every ``EXPIRE_EVERY`` it deletes requests whose deadline passed ``EXPIRE_AFTER`` ago
(their requester died before reading the answer or cancelling; nothing claims them).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from daemon.cluster.errors import DatabaseUnavailable
from daemon.cluster.requests import Claimed, RoutedRequests
from daemon.runtime.control import OPERATOR_OPS

if TYPE_CHECKING:
    from daemon.runtime.cluster.node import ClusterNode
    from daemon.runtime.supervisor import Supervisor

__all__ = ["EXPIRE_AFTER", "RequestServer", "accepted_at", "run_request"]

EXPIRE_EVERY_S = 60.0
EXPIRE_AFTER = timedelta(minutes=10)
Answer = dict[str, Any]


def run_request(sup: Supervisor, claimed: Claimed) -> Answer:
    """A claimed request through the supervisor's own door; the answer the control
    socket would give. The job is the row's conversation, whatever the body says (the
    body is sealed to it anyway)."""
    conversation, op, request = claimed.conversation, claimed.op, claimed.request
    if claimed.problem is not None:
        return {"ok": False, "error": f"the request could not be read: {claimed.problem}"}
    if op == "beat":
        ok, why = sup.request_beat(conversation)
        return {"ok": True} if ok else {"ok": False, "error": why}
    if op in OPERATOR_OPS:
        answer = sup.operator_request(op, {**request, "op": op, "job": conversation})
        return accepted_at(answer, op, claimed.epoch)
    return {"ok": False, "error": f"unknown op {op!r}"}


def accepted_at(answer: Answer, op: str, epoch: int | None) -> Answer:
    """A send's answer names the lease epoch it was accepted under: a ``vigil send``
    following its turn gives up when the conversation moves on before that turn began
    (the node that accepted it lost it: the turn will never start)."""
    if op == "send" and answer.get("ok") and epoch is not None:
        return {**answer, "epoch": epoch}
    return answer


class RequestServer:
    def __init__(self, sup: Supervisor, node: ClusterNode, requests: RoutedRequests) -> None:
        self.sup = sup
        self.node = node
        self.requests = requests
        self.log = node.log
        self.served = 0
        self._expired_at = time.monotonic()
        self._failing: str | None = None

    def held(self) -> dict[str, int]:
        """The conversations open here, with the lease epoch this node holds for each."""
        rt, leases = self.node.rt, self.node.backend.leases
        held = {}
        for name, job in rt.jobs.items():
            lease = leases.held(name)
            if not job.retired and lease is not None:
                held[name] = lease.epoch
        return held

    def serve(self) -> int:
        """Claim, run and answer every open request of this node's conversations."""
        if self.node.rt.draining:
            return 0
        try:
            claimed = self.requests.claim(self.held())
        except DatabaseUnavailable as exc:
            if self._failing is None:
                self.log.warning("routed_claim_failed", error=str(exc))
            self._failing = str(exc)
            return 0
        self._failing = None
        for request in claimed:
            self._serve_one(request)
        return len(claimed)

    def _serve_one(self, claimed: Claimed) -> None:
        try:
            answer = run_request(self.sup, claimed)
        except Exception as exc:  # a bug: answer it, so the requester is not left waiting
            self.log.exception("routed_request_failed", job=claimed.conversation, op=claimed.op)
            answer = {"ok": False, "error": f"node {self.node.name} failed to run it: {exc!r}"}
        try:
            stored = self.requests.answer(claimed, answer)
        except DatabaseUnavailable as exc:  # the requester gives up at its deadline
            stored = False
            self.log.warning("routed_answer_failed", job=claimed.conversation, error=str(exc))
        self.served += 1
        waited = datetime.now(UTC) - claimed.created_at
        self.log.info(
            "routed_request_served",
            job=claimed.conversation,
            op=claimed.op,
            request_id=claimed.id,
            requested_by=claimed.requested_by,
            epoch=claimed.epoch,
            ok=bool(answer.get("ok")),
            answered=stored,
            since_request_ms=round(waited.total_seconds() * 1000, 1),
        )

    def tick(self) -> None:
        """At the node's tick: serve what no notification announced; expire by age."""
        self.serve()
        if time.monotonic() - self._expired_at < EXPIRE_EVERY_S:
            return
        self._expired_at = time.monotonic()
        try:
            gone = self.requests.expire(EXPIRE_AFTER)
        except DatabaseUnavailable:
            return  # the claim above said so
        if gone:
            self.log.info("routed_requests_expired", count=gone)
