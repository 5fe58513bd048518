"""The daemon's life: recover, announce READY, run beats, reload on SIGHUP, drain.

Shutdown follows uvicorn's shape: the signal handler only sets state; the main task
stops new beats, gives running turns and deliveries ``drain_grace``, then interrupts
(journaled) what is left; a second signal exits at once.

The work itself is done by parts that share one :class:`~daemon.runtime.context.Runtime`:
:class:`~daemon.runtime.recovery.Recovery` (start-up), :class:`~.scheduling.Scheduling`,
:class:`~.dispatch.Dispatcher` (beats and deliveries), :class:`~.reloading.Reloader`
(SIGHUP) and :mod:`~.status`. This module wires them and owns the loops.
"""

from __future__ import annotations

import asyncio
import faulthandler
import os
import signal
import stat
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from daemon.agent.pool import ClientPool
from daemon.agent.sdk import AgentSession, start_sdk_import
from daemon.agent.store import JournalSessionStore
from daemon.config.model import Config
from daemon.errors import DirectoryError, VigilError
from daemon.journal.file import FsyncPolicy
from daemon.journal.keyring import Keyring
from daemon.journal.lock import RuntimeLock, StateLock
from daemon.journal.logstore import FileEventLogStore
from daemon.layout import Layout
from daemon.logs import get_logger
from daemon.mirror.live import LiveMirror
from daemon.ports.agent import AgentDriver, AgentSpec
from daemon.ports.clock import Clock, SystemClock
from daemon.ports.eventlog import EventLogStore
from daemon.ports.transcripts import TranscriptStore
from daemon.runtime.alerts import Alerts
from daemon.runtime.context import AgentFactory, Health, MirrorSink, Runtime, TranscriptIndex
from daemon.runtime.control import SOCKET_NAME, ControlServer
from daemon.runtime.dispatch import Dispatcher
from daemon.runtime.heads import HeadsKeeper
from daemon.runtime.metrics import Metrics
from daemon.runtime.metrics_http import MetricsServer
from daemon.runtime.notify import Notifier, run_watchdog, watchdog_interval
from daemon.runtime.operator import Operator
from daemon.runtime.recovery import Recovery
from daemon.runtime.reloading import Reloader
from daemon.runtime.scheduler import BeatScheduler
from daemon.runtime.scheduling import Scheduling
from daemon.runtime.sentinel import Sentinel
from daemon.runtime.status import status_line, status_snapshot
from daemon.signals import take_sighup
from daemon.trust import check_data_dirs, remove_planted, tighten

MIRROR_FLUSH_S = 0.5

__all__ = ["Supervisor"]


class Supervisor:
    def __init__(
        self,
        config: Config,
        keyring: Keyring,
        notifier: Notifier,
        environ: Mapping[str, str] | None = None,
        *,
        config_path: Path | None = None,
        clock: Clock | None = None,
        make_agent: AgentFactory | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.keyring = keyring
        self.notifier = notifier
        self.environ = dict(os.environ if environ is None else environ)
        self.clock = clock or SystemClock()
        self.layout = Layout(config.daemon.state_dir, config.daemon.runtime_dir)
        self.fsync = FsyncPolicy(config.daemon.fsync)
        self.log = get_logger()
        self.health = Health(notifier, self.log)
        self.reload_requested = asyncio.Event()
        self._make_agent = make_agent
        self._signals = 0
        self._lock = StateLock(self.layout.state_dir)
        self._runtime_lock = RuntimeLock(self.layout.runtime_dir)
        self._scheduler = BeatScheduler(self._on_due)
        self.rt: Runtime | None = None
        self.status_extra: Callable[[], dict[str, Any]] | None = None  # a cluster node's

    @property
    def stop_requested(self) -> asyncio.Event:
        return self.health.stop_requested

    # --- lifecycle -------------------------------------------------------------------

    async def run(self) -> int:
        faulthandler.enable()
        # Owner-only for everything this process and its CLI children create, whatever
        # umask we were started with (conversation text must not be group-readable).
        os.umask(0o077)
        layout = self.layout
        check_data_dirs(layout.state_dir, layout.runtime_dir, self.config_path)
        try:
            layout.create()
            self._lock.acquire()
        except OSError as exc:
            raise self._directory_error(exc) from None
        try:
            self._runtime_lock.acquire()  # after the state lock: its refusal names a pid
        except OSError as exc:
            self._lock.release()
            raise self._directory_error(exc) from None
        except BaseException:
            self._lock.release()
            raise
        try:
            for path in (layout.state_dir, layout.runtime_dir):
                was = tighten(path)
                if was is not None:
                    self.log.warning("directory_tightened", path=str(path), mode=f"{was:04o}")
            sentinel = Sentinel()  # ends the CLIs promptly if this process is SIGKILLed
            sentinel.start()
            try:
                return await self._run_locked()
            finally:
                sentinel.stop()
        finally:
            self._runtime_lock.release()
            self._lock.release()

    def _directory_error(self, exc: OSError) -> DirectoryError:
        where = Path(exc.filename) if exc.filename else self.layout.state_dir
        state = self.layout.state_dir
        # The directory itself, one inside it, or a missing parent created on its way.
        ours = where.is_relative_to(state) or state.is_relative_to(where)
        key = "daemon.state_dir" if ours else "daemon.runtime_dir"
        return DirectoryError(where, key, exc.strerror or str(exc), self.config_path)

    def _wire(self) -> Runtime:
        """Build the shared runtime: stores, the mirror, the pool, the parts."""
        layout, daemon_cfg = self.layout, self.config.daemon
        transcripts = JournalSessionStore(
            layout.transcripts, self.keyring, fsync=self.fsync, resume_view=True
        )
        self.mirror = LiveMirror(daemon_cfg.mirror_file, layout.conversations, self.keyring)
        return self.assemble(
            logs=FileEventLogStore(layout.conversations, self.keyring, fsync=self.fsync),
            transcripts=transcripts,
            # The mirror is derived: rebuilt from the journals at every start, in the
            # background once READY is out (purge and replay, never patch).
            mirror=self.mirror,
            store=transcripts,
        )

    def assemble(
        self,
        *,
        logs: EventLogStore,
        transcripts: TranscriptIndex,
        mirror: MirrorSink,
        store: TranscriptStore,
    ) -> Runtime:
        """The runtime and its parts over the given stores (files, or a cluster's)."""
        layout, daemon_cfg = self.layout, self.config.daemon

        def sdk_agent(spec: AgentSpec) -> AgentDriver:
            return AgentSession(spec, store)

        rt = Runtime(
            config=self.config,
            config_path=self.config_path,
            layout=layout,
            keyring=self.keyring,
            clock=self.clock,
            notifier=self.notifier,
            health=self.health,
            pool=ClientPool(
                max_live=daemon_cfg.max_live_clients,
                max_turns=daemon_cfg.max_concurrent_turns,
                idle_timeout=daemon_cfg.client_idle_timeout.total_seconds(),
                clock=self.clock,
            ),
            logs=logs,
            transcripts=transcripts,
            mirror=mirror,
            make_agent=self._make_agent or sdk_agent,
            schedule=self._scheduler,
            spec_env=layout.cli_env(self.environ, max_retries=daemon_cfg.model_max_retries),
            log=self.log,
            heads=HeadsKeeper(layout.state_dir, self.keyring, self.fsync, self.log),
        )
        self.recovery = Recovery(rt)
        self.scheduling = Scheduling(rt)
        self.dispatch = Dispatcher(rt, self.scheduling)
        self.reloader = Reloader(rt, self.recovery, self.scheduling, self.dispatch)
        self.operator = Operator(rt, self.dispatch)
        self.dispatch.after_beat.append(Alerts(rt).after_beat)
        self.metrics: Metrics | None = None
        if daemon_cfg.metrics is not None:
            self.metrics = Metrics(rt)
            rt.listeners.append(self.metrics.feed)
            rt.timing = self.metrics.timing
        return rt

    async def _run_locked(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_signal, signum)
        loop.add_signal_handler(signal.SIGHUP, self.reload_requested.set)
        if take_sighup():  # one came while `vigil run` was starting
            self.reload_requested.set()
        self.layout.adopt_tmpdir()
        for leftover in self.layout.remove_resume_leftovers():
            self.log.info("removed_resume_leftover", path=str(leftover))
        if self.config.cluster is not None:
            # Several nodes on one PostgreSQL; psycopg is only imported here.
            from daemon.runtime.cluster.run import ClusterRun  # noqa: PLC0415

            return await ClusterRun(self, self.config.cluster).run()
        mirror_file = self.config.daemon.mirror_file
        for path in (mirror_file, *(Path(f"{mirror_file}{x}") for x in ("-wal", "-shm"))):
            if remove_planted(path, stat.S_IFREG):  # never open what someone else put there
                self.log.warning("removed_planted_file", path=str(path))
        rt = self.rt = self._wire()
        mirror = self.mirror
        replays = self.recovery.recover()
        control = ControlServer(self.layout.runtime_dir / SOCKET_NAME, self)
        await control.start()
        metrics = await self._start_metrics()
        self.notifier.notify("READY=1\nSTATUS=" + status_line(rt))
        start_sdk_import()  # unless the workers' read overlapped it; connects wait for it
        self.log.info("ready", jobs=sorted(rt.jobs), state_dir=str(self.layout.state_dir))
        workers = self.recovery.mirror_workers
        mirroring = asyncio.create_task(mirror.build(workers), name="mirror")
        # Checkpoints for the conversations start-up had to read in full (or far past
        # their checkpoint), on the checkpoint thread: the next start reads less.
        self.recovery.checkpoints.catch_up(rt.jobs.values())
        watchdog = self._start_watchdog()
        catch_ups = [
            n for n in list(rt.jobs) if self.scheduling.schedule_new(n, replaying=n in replays)
        ]
        self._scheduler.start()
        for name, (trigger, prompt) in replays.items():
            self.dispatch.spawn(name, prompt, trigger)
        for name in catch_ups:
            self.dispatch.due(name, "catch_up")
        reloader = asyncio.create_task(self._reload_loop(), name="reload")
        flusher = asyncio.create_task(self._flush_mirror_loop(mirror), name="mirror")
        reaper = asyncio.create_task(self._reap_loop(rt), name="reaper")
        await self.stop_requested.wait()
        reloader.cancel()
        reaper.cancel()
        await self._drain(rt)
        # Every conversation is closed: a checkpoint of each one with new records.
        await asyncio.to_thread(self.recovery.checkpoints.close, list(rt.jobs.values()))
        await mirroring  # a rebuild in progress finishes: the mirror is left complete
        flusher.cancel()
        await control.stop()
        if metrics is not None:
            await metrics.stop()
        mirror.flush()
        mirror.close()
        if watchdog is not None:
            watchdog.cancel()
        if self.health.fatal is not None:
            self.log.error("fatal", error=str(self.health.fatal))
            return self.health.fatal.exit_code
        self.log.info("stopped")
        return 0

    async def _start_metrics(self) -> MetricsServer | None:
        """Serve ``/metrics`` when ``[daemon] metrics`` is set; a busy address is logged
        (beats matter more than their metrics) and the daemon runs on without them."""
        endpoint = self.config.daemon.metrics
        if endpoint is None or self.metrics is None:
            return None
        server = MetricsServer(endpoint, self.metrics.registry)
        try:
            await server.start()
        except OSError as exc:
            self.log.error("metrics_not_served", address=str(endpoint), error=str(exc))
            return None
        self.log.info("metrics_serving", address=str(endpoint))
        return server

    async def _flush_mirror_loop(self, mirror: LiveMirror) -> None:
        while True:
            await asyncio.sleep(MIRROR_FLUSH_S)
            mirror.flush()  # a failure is logged once, by the mirror

    async def _reap_loop(self, rt: Runtime) -> None:
        """Let go of clients whose CLI died, and of clients idle past the timeout."""
        every = min(max(rt.pool.idle_timeout / 4, 0.25), 30.0)
        while True:
            await asyncio.sleep(every)
            for job in list(rt.jobs.values()):
                agent = job.runner.agent
                if job.runner.busy or job.name in rt.waiting:
                    continue
                exit_code = agent.cli_exit_code() if agent.connected else None
                if exit_code is not None:
                    self.log.warning("client_lost", job=job.name, exit_code=exit_code)
                    await agent.disconnect()
            for name in await rt.pool.reap_idle():
                self.log.info("client_idle_disconnected", job=name, idle_s=rt.pool.idle_timeout)

    def _start_watchdog(self) -> asyncio.Task[None] | None:
        interval = watchdog_interval(self.environ)
        if interval is None:
            return None
        return asyncio.create_task(run_watchdog(self.notifier, interval, self.healthy))

    def healthy(self) -> bool:
        return self.health.healthy

    async def _on_due(self, name: str) -> None:
        if self.rt is not None:
            self.dispatch.due(name, "schedule")

    # --- the control socket ------------------------------------------------------------

    def status_snapshot(self) -> dict[str, Any]:
        if self.rt is None:
            return {"pid": os.getpid(), "status": "starting", "jobs": []}
        snapshot = status_snapshot(self.rt)
        if self.status_extra is not None:
            snapshot["cluster"] = self.status_extra()
        return snapshot

    def request_beat(self, name: str) -> tuple[bool, str]:
        if self.rt is None:
            return False, "the daemon is starting"
        return self.dispatch.request_beat(name)

    def operator_request(self, op: str, request: dict[str, Any]) -> dict[str, Any]:
        if self.rt is None:
            return {"ok": False, "error": "the daemon is starting"}
        return self.operator.handle(op, request)

    def status_line(self) -> str:
        return status_line(self.rt) if self.rt is not None else "starting"

    # --- reload ----------------------------------------------------------------------

    async def _reload_loop(self) -> None:
        while True:
            await self.reload_requested.wait()
            self.reload_requested.clear()
            if self.rt is not None and not self.rt.draining:
                await self.reloader.reload_off_loop()

    def reload(self) -> bool:
        return self.reloader.reload()

    # --- shutdown --------------------------------------------------------------------

    def _on_signal(self, signum: int) -> None:
        self._signals += 1
        if self._signals > 1:
            os.write(2, b"vigil: second signal, exiting at once\n")
            os._exit(128 + signum)
        self.stop_requested.set()

    async def _drain(self, rt: Runtime) -> None:
        rt.draining = True
        self.notifier.notify("STOPPING=1\nSTATUS=" + status_line(rt))
        self._scheduler.shutdown()
        for waiting in list(rt.waiting.values()):
            waiting.cancel()  # no new turn starts while draining
        running = [t for t in rt.tasks if not t.done()]
        grace = self.config.daemon.drain_grace.total_seconds()
        if running and self.health.fatal is None:
            self.log.info("draining", running_turns=len(running), grace_s=grace)
            _, pending = await asyncio.wait(running, timeout=grace)
        else:
            pending = set(running)
        for task in pending:
            self.log.warning("interrupting_turn", task=task.get_name())
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        for job in list(rt.jobs.values()):
            await job.runner.agent.disconnect()
            try:
                job.runner.conversation.close()
            except VigilError as exc:  # e.g. the database is gone: the next start heals
                self.log.error("conversation_close_failed", job=job.name, error=str(exc))
