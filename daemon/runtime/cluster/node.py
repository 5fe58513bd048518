"""One node of the cluster: joining, leases, placement, hand-over and loss.

Every third of ``lease`` (:meth:`ClusterNode.tick`), and just after another node's
last heartbeat runs out (a node that died: its conversations move at once):

1. **Renew** every lease this node holds in one statement, and its membership row.
   A conversation whose lease was not renewed was taken over by another node (this
   node was frozen, or cut off from the database, past its lease): :meth:`lose`.
2. **Place**: rendezvous hashing over the live nodes (``daemon.cluster.placement``)
   names each job's owner among the nodes that may take it (they run the job and its
   ``cwd`` exists there). A job placed here and not open yet is opened: its lease is
   acquired (free, or expired: a takeover) and the conversation is recovered as at a
   start (heal the interrupted turn, settle the delivery fence, ``on_interrupted``),
   then scheduled. A job placed elsewhere is handed over between turns: closed (its
   lease released), never mid-turn or mid-delivery.

Loss (:meth:`lose`, from the renewal or from any fenced write raising
``OwnershipLost``): the job leaves this node at once, its CLI is killed, its running
beat is cancelled; nothing more is written or delivered for it (every write is fenced
on the lease epoch anyway).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from daemon.cluster.errors import DatabaseUnavailable, LeaseHeld
from daemon.cluster.join import NodeCard, join_refusal
from daemon.cluster.leases import NodeInfo
from daemon.cluster.placement import next_tick_in, owner_of
from daemon.cluster.view import cluster_view, view_json
from daemon.config.cluster import ClusterConfig
from daemon.config.model import HeartbeatConfig
from daemon.errors import JournalWriteError, OwnershipLost, VigilError
from daemon.runtime.cluster.backend import ClusterBackend
from daemon.runtime.context import Runtime
from daemon.runtime.dispatch import Dispatcher
from daemon.runtime.job import Job
from daemon.runtime.recovery import Recovery
from daemon.runtime.scheduling import Scheduling

__all__ = ["ClusterNode"]


class ClusterNode:
    def __init__(
        self,
        rt: Runtime,
        *,
        backend: ClusterBackend,
        cluster: ClusterConfig,
        recovery: Recovery,
        scheduling: Scheduling,
        dispatch: Dispatcher,
    ) -> None:
        self.rt = rt
        self.backend = backend
        self.cluster = cluster
        self.name = cluster.node
        self.recovery = recovery
        self.scheduling = scheduling
        self.dispatch = dispatch
        self.log = rt.log.bind(node=cluster.node)
        self.card = NodeCard.of(rt.config.heartbeats)
        self.nodes: list[NodeInfo] = []
        self.waiting_for: dict[str, str] = {}  # placed here, another node's lease runs
        self.refused: dict[str, str] = {}  # could not be opened here (until a reload)
        # Left this node, its client still closing: not opened again until it is
        # gone (a closing client may still flush transcript lines for its session).
        self.finishing: set[str] = set()
        self.database_error: str | None = None
        # Called at the end of every tick that reached the database (routed requests).
        self.after_tick: Callable[[], None] | None = None
        rt.health.on_lost = self.lose

    # --- membership ------------------------------------------------------------------

    def join(self) -> None:
        """Check this node against the live ones, then say it is alive. Raises
        :class:`~daemon.cluster.join.JoinRefused` (nothing written) when its jobs or key
        ids differ, ``DatabaseUnavailable`` when the database cannot be reached."""
        live = self.backend.membership.live_nodes()
        others = [(n.node, NodeCard.from_json(n.jobs_digest), n.key_ids) for n in live]
        refusal = join_refusal(self.name, self.card, self.rt.keyring.key_ids, others)
        if refusal is not None:
            raise refusal
        self._heartbeat()
        self.nodes = self.backend.membership.live_nodes()
        self.log.info(
            "cluster_joined",
            nodes=[n.node for n in self.nodes],
            database=self.backend.where,
            schema_version=self.backend.schema_version,
            lease_s=self.cluster.lease.total_seconds(),
            without_cwd=sorted(self.card.without_cwd),
        )
        for name in sorted(self.card.without_cwd):
            cwd = self.rt.config.job(name).cwd
            self.log.warning(
                "job_cwd_missing",
                job=name,
                cwd=str(cwd),
                detail="this node never takes this job; nodes where the directory exists do",
            )

    def _heartbeat(self) -> None:
        self.backend.membership.heartbeat(
            jobs_digest=self.card.to_json(), key_ids=self.rt.keyring.key_ids
        )

    def reconfigured(self) -> None:
        """After a reload: publish the new jobs, retry the ones refused before."""
        self.card = NodeCard.of(self.rt.config.heartbeats)
        self.refused.clear()
        with contextlib.suppress(DatabaseUnavailable):  # the next tick says it
            self._heartbeat()

    def leave(self) -> None:
        """A clean shutdown, after the conversations were closed (leases released)."""
        try:
            self.backend.membership.leave()
        except DatabaseUnavailable as exc:
            self.log.warning("cluster_leave_failed", error=str(exc))
        else:
            self.log.info("cluster_left")

    # --- the loop --------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.next_tick_in().total_seconds())
            try:
                self.tick()
            except Exception as exc:  # a bug: say so, and renew and place at the next tick
                self.log.exception("cluster_tick_failed", error=repr(exc))

    def tick(self) -> None:
        """Renew, notice losses, place (see the module docstring)."""
        rt = self.rt
        try:
            held = self.backend.leases.renew_all()
            self._heartbeat()
            self.nodes = self.backend.membership.live_nodes()
        except DatabaseUnavailable as exc:
            if self.database_error is None:
                self.log.error("cluster_database_unavailable", error=str(exc))
            self.database_error = str(exc)
            return
        if self.database_error is not None:
            self.log.info("cluster_database_reachable")
            self.database_error = None
        for name, job in list(rt.jobs.items()):
            if not job.retired and name not in held:
                self.lose(name, None)
        if not rt.draining:
            self.place()
            if self.after_tick is not None:
                self.after_tick()

    def next_tick_in(self) -> timedelta:
        """A third of the lease, or just past another node's last heartbeat's end."""
        beats = [n.heartbeat_at for n in self.nodes if n.node != self.name]
        cluster = self.cluster
        return next_tick_in(self.rt.clock.now(), cluster.renew_every, cluster.lease, beats)

    def place(self) -> None:
        rt = self.rt
        cards = {n.node: NodeCard.from_json(n.jobs_digest) for n in self.nodes}
        cards[self.name] = self.card

        def eligible(node: str, conversation: str) -> bool:
            card = cards.get(node)
            return card is not None and card.may_own(conversation)

        names = sorted(cards)
        for cfg in rt.config.heartbeats:
            target = owner_of(cfg.name, names, eligible)
            job = rt.jobs.get(cfg.name)
            if target == self.name:
                if job is None and cfg.name not in self.refused and cfg.name not in self.finishing:
                    self.adopt(cfg)
            else:
                self.waiting_for.pop(cfg.name, None)
                if job is not None and not job.retired and target is not None:
                    self.hand_over(job, target)
            if target == self.name and job is not None:
                job.handing_over = False  # placed back here before it left

    # --- opening, handing over, losing ---------------------------------------------------

    def adopt(self, cfg: HeartbeatConfig) -> None:
        """Open a conversation placed here: recovery of that one conversation, then its
        schedule (a replay or a catch-up beat at once, as after a restart)."""
        rt, name = self.rt, cfg.name
        try:
            replay = self.recovery.open_job(cfg)
            if name not in rt.jobs:  # refused inside (its cwd changed), already logged
                self.refused[name] = "its conversation was started in another cwd"
                return
            lease = self.backend.leases.held(name)
            self.log.info(
                "conversation_acquired",
                job=name,
                epoch=lease.epoch if lease else None,
                taken_from=lease.taken_from if lease else None,
            )
            self.waiting_for.pop(name, None)
            catch_up = self.scheduling.schedule_new(name, replaying=replay is not None)
        except LeaseHeld as exc:
            if self.waiting_for.get(name) != exc.owner:
                self.log.info(
                    "conversation_lease_held",
                    job=name,
                    owner=exc.owner,
                    expires_at=exc.expires_at.isoformat(),
                )
            self.waiting_for[name] = exc.owner
            return
        except OwnershipLost as exc:
            self._discard(name)
            self.log.warning("conversation_not_opened", job=name, error=str(exc))
            return
        except (DatabaseUnavailable, JournalWriteError) as exc:
            self._discard(name)  # the next tick tries again
            self.log.warning("conversation_not_opened", job=name, error=str(exc))
            return
        except VigilError as exc:  # corrupt, another key: not retried until a reload
            self._discard(name)
            self.refused[name] = str(exc)
            self.log.error("job_refused", job=name, error=str(exc))
            return
        if replay is not None:
            self.dispatch.spawn(name, replay[1], replay[0])
        elif catch_up:
            self.dispatch.due(name, "catch_up")

    def hand_over(self, job: Job, target: str) -> bool:
        """Close a conversation placed on another node, between turns only."""
        rt = self.rt
        if job.runner.busy or job.name in rt.waiting or job.tasks:
            job.handing_over = True  # no new beat starts; the next owner catches up
            return False  # a turn or a delivery is running: at a later tick
        self._detach(job)
        self.finishing.add(job.name)
        rt.background(self._finish_handover(job, target), f"handover:{job.name}")
        return True

    async def _finish_handover(self, job: Job, target: str) -> None:
        """The client goes first (its last transcript lines reach the store under this
        node's lease), then the lease is released: the next owner resumes all of it."""
        try:
            await job.runner.agent.disconnect()
            try:
                job.runner.conversation.close()  # synced, lease released
            except VigilError as exc:  # lost meanwhile, or the database is gone: expires
                self.log.warning("conversation_close_failed", job=job.name, error=str(exc))
            else:
                self.log.info("conversation_handed_over", job=job.name, to=target)
        finally:
            self.finishing.discard(job.name)

    def lose(self, name: str, exc: OwnershipLost | None) -> None:
        """Another node owns ``name`` now: stop its CLI at once, cancel its beat."""
        rt = self.rt
        job = rt.jobs.get(name)
        if job is None or job.retired:
            return  # (a late report of a job that already left)
        epoch = getattr(job.runner.conversation.journal, "epoch", None)
        if exc is not None and exc.epoch not in (epoch, 0):
            return  # a write of an earlier lease of this conversation, already left
        self._detach(job)
        self.finishing.add(name)
        self.log.warning(
            "ownership_lost",
            job=name,
            running=job.runner.busy,
            owner=exc.owner if exc is not None else None,
            epoch=exc.epoch if exc is not None else None,
            found_by="write" if exc is not None else "lease_renewal",
        )
        pid = job.runner.agent.cli_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)  # our own child; its output is fenced anyway
        current = asyncio.current_task()
        pending = [t for t in job.tasks if t is not current and not t.done()]
        for task in pending:
            task.cancel()
        rt.background(self._finish_lost(job, pending), f"lost:{name}")

    async def _finish_lost(self, job: Job, pending: list[asyncio.Task[None]]) -> None:
        try:
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
            await job.runner.agent.disconnect()
            with contextlib.suppress(VigilError):  # fenced: nothing to sync or release
                job.runner.conversation.close()
        finally:
            self.finishing.discard(job.name)

    def _detach(self, job: Job) -> None:
        """The job leaves this node's runtime: no schedule, no pool slot."""
        rt = self.rt
        job.retired = True
        rt.schedule.remove(job.name)
        if rt.jobs.get(job.name) is job:
            del rt.jobs[job.name]
        rt.pool.forget(job.name)

    def _discard(self, name: str) -> None:
        """Undo a half-opened conversation (opened, then a write failed)."""
        job = self.rt.jobs.get(name)
        if job is not None:
            self._detach(job)
            with contextlib.suppress(VigilError):
                job.runner.conversation.close()
            return
        with contextlib.suppress(DatabaseUnavailable):
            self.backend.leases.release(name)

    # --- status ------------------------------------------------------------------------

    def conversation_of(self, session_id: str) -> str | None:
        """The conversation a CLI session belongs to (the transcript store's fence)."""
        for job in self.rt.jobs.values():
            runner = job.runner
            if session_id in (runner.conversation.state.session_id, _session_of(runner.agent)):
                return job.name
        return None

    def status(self) -> dict[str, Any]:
        """This node's view: the nodes, who owns which conversation, what waits."""
        now = self.rt.clock.now()
        leases = self.backend.leases
        picture: dict[str, Any] = {
            "node": self.name,
            "database": self.backend.where,
            "database_error": self.database_error,
            "lease_s": self.cluster.lease.total_seconds(),
            "owned": sorted(self.rt.jobs),
            "waiting_for_lease": dict(sorted(self.waiting_for.items())),
            "without_cwd": sorted(self.card.without_cwd),
            "refused": dict(sorted(self.refused.items())),
        }
        try:
            picture.update(view_json(cluster_view(self.backend.control), now, leases.ttl))
        except DatabaseUnavailable as exc:
            picture["view_error"] = str(exc)
        return picture


def _session_of(agent: object) -> str | None:
    session = getattr(agent, "session_id", None)
    return session if isinstance(session, str) else None
