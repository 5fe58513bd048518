"""A cluster node's life: connect and migrate, join, announce READY, place, drain.

The same shape as the single node's (:class:`daemon.runtime.supervisor.Supervisor`),
with PostgreSQL stores and no start-up recovery of every job: a node opens only the
conversations placed on it, one by one, as the placement loop finds them (the first
placement runs before the first beat can come due).

The derived SQLite mirror is not kept on a cluster node (``mirror: off`` in status):
the events live in PostgreSQL, readable by every node.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from daemon.agent.sdk import preload_sdk
from daemon.cluster.listen import Listener
from daemon.cluster.requests import CHANNEL
from daemon.config.cluster import ClusterConfig
from daemon.events import Event
from daemon.runtime.cluster.backend import ClusterBackend
from daemon.runtime.cluster.node import ClusterNode
from daemon.runtime.cluster.routing import RoutedControl
from daemon.runtime.cluster.serving import RequestServer
from daemon.runtime.control import SOCKET_NAME, ControlServer
from daemon.runtime.reloading import Reloader
from daemon.runtime.status import status_line

if TYPE_CHECKING:
    from daemon.config.model import Config, HeartbeatConfig
    from daemon.runtime.supervisor import Supervisor

__all__ = ["ClusterRun"]

T = TypeVar("T")


class NoMirror:
    """A cluster node keeps no SQLite mirror (the events are in PostgreSQL)."""

    phase = "off"

    def apply(self, conversation: str, seq: int, event: Event) -> None:
        return None


class ClusterReloader(Reloader):
    """SIGHUP on a cluster node: jobs change in place and removed ones close (their
    leases released) as on one node; an added job is opened by placement, on whichever
    node it lands."""

    node: ClusterNode | None = None

    def apply(self, new: Config | str) -> bool:
        # ``apply``, where both reload paths (``reload`` and ``reload_off_loop``) end.
        applied = super().apply(new)
        if applied and self.node is not None:
            self.node.reconfigured()
        return applied

    def _add(self, cfg: HeartbeatConfig) -> bool:
        existing = self.rt.jobs.get(cfg.name)
        if existing is not None:  # removed earlier, still finishing: take it back
            return super()._add(cfg)
        return True


class ClusterRun:
    def __init__(self, sup: Supervisor, cluster: ClusterConfig) -> None:
        self.sup = sup
        self.cluster = cluster
        self.node: ClusterNode | None = None

    def _conversation_of(self, session_id: str) -> str | None:
        return None if self.node is None else self.node.conversation_of(session_id)

    async def run(self) -> int:
        sup = self.sup
        backend = ClusterBackend.open(
            self.cluster.database_url(sup.environ),
            self.cluster,
            sup.keyring,
            fsync=sup.fsync,
            clock=sup.clock,
            conversation_of=self._conversation_of,
        )
        try:
            return await self._run(backend)
        finally:
            backend.close()

    async def _run(self, backend: ClusterBackend) -> int:
        sup = self.sup
        rt = sup.rt = sup.assemble(
            logs=backend.events,
            transcripts=backend.index,
            mirror=NoMirror(),
            store=backend.transcripts,
        )
        reloader = ClusterReloader(rt, sup.recovery, sup.scheduling, sup.dispatch)
        sup.reloader = reloader
        node = self.node = reloader.node = ClusterNode(
            rt,
            backend=backend,
            cluster=self.cluster,
            recovery=sup.recovery,
            scheduling=sup.scheduling,
            dispatch=sup.dispatch,
        )
        node.join()
        preload_sdk()  # before READY: no beat stalls the loop importing it
        server = RequestServer(sup, node, backend.requests)
        routed = RoutedControl(sup, node, backend.requests, server, self.cluster.route_wait)
        node.after_tick = server.tick
        control = ControlServer(sup.layout.runtime_dir / SOCKET_NAME, routed)
        await control.start()
        event_loop = asyncio.get_running_loop()
        listener = Listener(
            backend.listen,
            CHANNEL,
            _on_loop(event_loop, routed.notified),
            on_error=_on_loop(
                event_loop, lambda error: node.log.warning("listen_failed", error=error)
            ),
        )
        listener.start()
        metrics = await sup._start_metrics()
        sup.status_extra = node.status
        sup.notifier.notify("READY=1\nSTATUS=" + status_line(rt))
        sup.log.info("ready", node=node.name, jobs=sorted(j.name for j in rt.config.heartbeats))
        watchdog = sup._start_watchdog()
        sup._scheduler.start()
        node.tick()
        loops = [
            asyncio.create_task(node.run(), name="cluster"),
            asyncio.create_task(sup._reload_loop(), name="reload"),
            asyncio.create_task(sup._reap_loop(rt), name="reaper"),
        ]
        await sup.stop_requested.wait()
        for loop in loops:
            loop.cancel()
        await routed.close()  # a request still waiting is cancelled: it never runs
        await sup._drain(rt)  # closes every conversation: their leases are released
        node.leave()
        await control.stop()
        await asyncio.to_thread(listener.stop)
        if metrics is not None:
            await metrics.stop()
        if watchdog is not None:
            watchdog.cancel()
        if sup.health.fatal is not None:
            sup.log.error("fatal", error=str(sup.health.fatal))
            return sup.health.fatal.exit_code
        sup.log.info("stopped")
        return 0


def _on_loop(loop: asyncio.AbstractEventLoop, call: Callable[[T], None]) -> Callable[[T], None]:
    """``call`` run on ``loop`` from another thread (the listener's); dropped once the
    loop is closed (the daemon is exiting)."""

    def hand(value: T) -> None:
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(call, value)

    return hand
