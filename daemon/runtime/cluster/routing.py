"""``vigil beat``, ``send``, ``send --next-beat``, ``pause`` and ``resume`` on a cluster
node, whichever node owns the conversation.

The control socket's target on a cluster node is :class:`RoutedControl`. A request for a
conversation this node has open goes to the supervisor, as on a single node. One for a
conversation held elsewhere (or by nobody, in the middle of a takeover) is handed to
its owner through PostgreSQL, never over a connection between nodes:

1. :meth:`RoutedControl.route` writes it, sealed, to ``routed_requests`` with a deadline
   :attr:`~daemon.config.cluster.ClusterConfig.route_wait` away, and PostgreSQL notifies
   every node (:mod:`daemon.cluster.requests`).
2. The node holding the conversation's lease hears it on its LISTEN connection
   (:mod:`daemon.cluster.listen`; at its next tick at the latest), claims it in one
   statement fenced on its lease epoch, runs it through its supervisor exactly as a
   local request and writes the answer (:mod:`.serving`). A conversation that moves in
   between is served by whoever holds the lease when it claims; a node that lost the
   lease claims nothing; only one claim ever wins.
3. The requester, woken by the answer's notification (or polling every
   :data:`POLL_S`), returns that answer to the CLI as if it were its own: ``vigil send``
   then follows the turn from PostgreSQL as on the owner. When nothing claimed the
   request by the deadline it cancels it in one statement that only succeeds while the
   request is unclaimed, so a request given up on never runs later, and the command is
   refused (exit 10) naming the owner. Had an owner claimed it just before, its answer
   is waited for (:data:`CLAIMED_GRACE_S`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from daemon.cluster.errors import DatabaseUnavailable
from daemon.cluster.requests import RequestState, RoutedRequests
from daemon.config.cluster import ROUTE_CLAIMED_GRACE
from daemon.journal.framing import FrameError
from daemon.runtime.cluster.serving import RequestServer, accepted_at

if TYPE_CHECKING:
    from daemon.runtime.cluster.node import ClusterNode
    from daemon.runtime.supervisor import Supervisor

__all__ = ["RoutedControl", "not_taken"]

POLL_S = 0.5  # the answer's notification is the fast path
CLAIMED_GRACE_S = ROUTE_CLAIMED_GRACE.total_seconds()
Answer = dict[str, Any]
COMMAND = {"queue": "send {name} --next-beat"}


def _refused(why: str) -> Answer:
    return {"ok": False, "error": why}


def not_taken(
    name: str, op: str, *, here: str, owner: str | None, ran_out_s: float, wait: timedelta
) -> str:
    """Why a routed ``op`` of ``name`` was refused when no node took it within
    ``wait``: naming ``owner`` (the lease row's node, its lease ran out ``ran_out_s``
    ago when positive), or saying nobody holds it. Nothing ran, and nothing will."""
    within = f"{wait.total_seconds():g}s"
    if owner is None:
        return (
            f"{name!r} is not held by any node right now (it is being placed or taken "
            f"over) and no node took the request within {within}; nothing was run, nor will "
            f"be. Try again in a few seconds, or see `vigil status`"
        )
    command = COMMAND.get(op, op + " {name}").format(name=name)
    state = f" (its lease ran out {ran_out_s:.0f}s ago)" if ran_out_s > 0 else ""
    return (
        f"{name!r} is owned by node {owner}, not {here}: {owner}{state} did not take the "
        f"request within {within} (stopped, or cut off from the database?); nothing was "
        f"run, nor will be. Run `vigil {command}` on {owner}, or see `vigil status`"
    )


class RoutedControl:
    """The control socket's target on a cluster node (see the module docstring)."""

    def __init__(
        self,
        sup: Supervisor,
        node: ClusterNode,
        requests: RoutedRequests,
        server: RequestServer,
        wait: timedelta,
    ) -> None:
        self.sup = sup
        self.node = node
        self.requests = requests
        self.server = server
        self.wait = wait
        self.log = node.log
        self._waiting: dict[str, asyncio.Event] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False

    def status_snapshot(self) -> dict[str, Any]:
        return self.sup.status_snapshot()

    def request_beat(self, name: str) -> tuple[bool, str] | Awaitable[tuple[bool, str]]:
        if self.here(name):
            return self.sup.request_beat(name)
        return self._beat(name)

    async def _beat(self, name: str) -> tuple[bool, str]:
        answer = await self.route(name, "beat", {"op": "beat", "job": name})
        return bool(answer.get("ok")), str(answer.get("error", ""))

    def operator_request(self, op: str, request: dict[str, Any]) -> Answer | Awaitable[Answer]:
        name = request.get("job")
        if not isinstance(name, str) or self.here(name):
            lease = self.node.backend.leases.held(name) if isinstance(name, str) else None
            answer = self.sup.operator_request(op, request)
            return accepted_at(answer, op, None if lease is None else lease.epoch)
        return self.route(name, op, request)

    def here(self, name: str) -> bool:
        """Whether the supervisor answers for ``name`` itself: it has it open, or it is
        no job of this cluster (the supervisor says so), or the daemon is starting."""
        rt = self.sup.rt
        if rt is None:
            return True
        job = rt.jobs.get(name)
        if job is not None and not job.retired:
            return True
        return all(j.name != name for j in rt.config.heartbeats)

    # --- the requester -------------------------------------------------------------

    async def route(self, name: str, op: str, request: dict[str, Any]) -> Answer:
        """Hand ``request`` to ``name``'s owner and wait for its answer (see above)."""
        if self.node.rt.draining or self._closing:
            return _refused("the daemon is stopping")
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            request_id = self.requests.submit(name, op, request, self.wait)
        except DatabaseUnavailable as exc:
            return _refused(
                f"{name!r} is not held by node {self.node.name}, and the request could not be "
                f"handed to its owner: {exc}"
            )
        woken = self._waiting[request_id] = asyncio.Event()
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        settled = False  # answered (read) or cancelled: nothing left to undo
        try:
            state = await self._answer(name, request_id, woken, started + self.wait.total_seconds())
            if state is None or state.answer is None:
                if self._cancel(request_id):
                    settled = True
                    if self._closing:
                        return _refused("the daemon is stopping; nothing was run")
                    return _refused(self._not_taken(name, op))
                grace = loop.time() + CLAIMED_GRACE_S
                state = await self._answer(name, request_id, woken, grace, claimed=True)
            if state is None or state.answer is None:
                by = state.claimed_by if state is not None else None
                return _refused(
                    f"node {by or '?'} took the {op} of {name!r} but its answer did not come "
                    f"within {self.wait.total_seconds() + CLAIMED_GRACE_S:g}s; see `vigil "
                    f"history {name}` for what it did"
                )
            settled = True
            self.log.info(
                "routed_request_answered",
                job=name,
                op=op,
                request_id=request_id,
                by=state.claimed_by,
                ok=bool(state.answer.get("ok")),
                latency_ms=round((loop.time() - started) * 1000, 1),
            )
            return state.answer
        finally:
            self._waiting.pop(request_id, None)
            if task is not None:
                self._tasks.discard(task)
            if not settled:  # cancelled (the daemon stops): never let it run later
                self._cancel(request_id)
            with contextlib.suppress(DatabaseUnavailable):  # expired by age otherwise
                self.requests.forget(request_id)

    async def _answer(
        self,
        name: str,
        request_id: str,
        woken: asyncio.Event,
        deadline: float,
        *,
        claimed: bool = False,
    ) -> RequestState | None:
        """The row once it holds an answer, or as it is at ``deadline`` (or at once
        when the daemon stops, unless an owner ``claimed`` it: its answer comes)."""
        loop = asyncio.get_running_loop()
        state = None
        while True:
            try:
                state = self.requests.state(name, request_id)
            except (DatabaseUnavailable, FrameError, ValueError) as exc:
                self.log.warning("routed_request_unreadable", job=name, error=str(exc))
            if state is not None and state.answer is not None:
                return state
            remaining = deadline - loop.time()
            if remaining <= 0 or (self._closing and not claimed):
                return state
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(woken.wait(), min(remaining, POLL_S))
            woken.clear()

    def _cancel(self, request_id: str) -> bool:
        """True when the request is cancelled (it never runs); False when it was claimed,
        or the database cannot say (its deadline still keeps it from running later)."""
        try:
            return self.requests.cancel(request_id)
        except DatabaseUnavailable as exc:
            self.log.warning("routed_cancel_failed", request_id=request_id, error=str(exc))
            return False

    def _not_taken(self, name: str, op: str) -> str:
        """The refusal when no owner took the request in time, naming the owner."""
        try:
            lease = self.node.backend.leases.owner(name)
        except DatabaseUnavailable as exc:
            lease = None
            self.log.warning("routed_owner_unknown", job=name, error=str(exc))
        if lease is None or lease.node == self.node.name:
            owner, ran_out = None, 0.0
        else:
            owner = lease.node
            ran_out = (self.node.rt.clock.now() - lease.expires_at).total_seconds()
        return not_taken(
            name, op, here=self.node.name, owner=owner, ran_out_s=ran_out, wait=self.wait
        )

    # --- notifications and shutdown ------------------------------------------------

    def notified(self, payload: str | None) -> None:
        """A notification on the requests' channel (on the event loop). ``None``: the
        listener (re)connected and may have missed some: look at everything."""
        if payload is None or payload.startswith("r:"):
            rt = self.node.rt
            if payload is None or payload[2:] in rt.jobs:
                self.server.serve()
            if payload is None:
                for each in self._waiting.values():
                    each.set()
        elif payload.startswith("a:"):
            woken = self._waiting.get(payload[2:])
            if woken is not None:
                woken.set()

    async def close(self) -> None:
        """At shutdown: every request still waiting stops waiting; an unclaimed one is
        cancelled and refused, a claimed one still gets its answer (bounded)."""
        self._closing = True
        for woken in self._waiting.values():
            woken.set()
        tasks = list(self._tasks)
        if tasks:
            await asyncio.wait(tasks, timeout=CLAIMED_GRACE_S + 1)
