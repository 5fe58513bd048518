"""The daemon's shared wiring: what every part of the runtime reads and writes.

:class:`Runtime` is built once by :class:`daemon.runtime.supervisor.Supervisor` (or by a
test, with fakes) and handed to the parts that do one job each: recovery
(:mod:`.recovery`), schedules (:mod:`.scheduling`), beats (:mod:`.dispatch`), reload
(:mod:`.reloading`) and the status picture (:mod:`.status`). :class:`Health` is the one
error policy: a fatal journal error stops the daemon, a failed write degrades it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any, Protocol

from structlog.typing import FilteringBoundLogger

from daemon.agent.pool import ClientPool
from daemon.config.model import Config
from daemon.errors import JournalFatalError, JournalWriteError, OwnershipLost, VigilError
from daemon.events import Event
from daemon.journal.keyring import Keyring
from daemon.layout import Layout
from daemon.logs import get_logger
from daemon.ports.agent import AgentDriver, AgentSpec
from daemon.ports.clock import Clock
from daemon.ports.eventlog import EventLogStore
from daemon.runtime.heads import HeadsKeeper
from daemon.runtime.job import Job
from daemon.runtime.notify import Notifier

__all__ = ["AgentFactory", "Health", "MirrorSink", "Runtime", "Schedule"]

AgentFactory = Callable[[AgentSpec], AgentDriver]


class Schedule(Protocol):
    """When beats come due (:class:`daemon.runtime.scheduler.BeatScheduler`)."""

    def add_interval(
        self,
        name: str,
        every: timedelta,
        *,
        first_due: datetime,
        jitter: timedelta | None = None,
    ) -> None: ...

    def add_cron(self, name: str, expression: str, zone: tzinfo) -> None: ...

    def remove(self, name: str) -> None: ...

    def next_due(self, name: str) -> datetime | None: ...


class TranscriptIndex(Protocol):
    """What the runtime asks the transcript store (:class:`JournalSessionStore`)."""

    def has_session(self, session_id: str) -> bool: ...


class MirrorSink(Protocol):
    """The derived mirror as the runtime feeds it (:class:`daemon.mirror.live.LiveMirror`)."""

    @property
    def phase(self) -> str: ...

    def apply(self, conversation: str, seq: int, event: Event) -> None: ...


@dataclass
class Health:
    """Fatal and degraded states; ``stop_requested`` ends the main task."""

    notifier: Notifier
    log: FilteringBoundLogger
    stop_requested: asyncio.Event = field(default_factory=asyncio.Event)
    fatal: VigilError | None = None
    degraded: str | None = None
    # A cluster node retires a conversation another node took over (daemon.runtime.cluster).
    on_lost: Callable[[str, OwnershipLost], None] | None = None

    def die(self, exc: JournalFatalError) -> None:
        self.fatal = exc
        self.stop_requested.set()

    def degrade(self, name: str, exc: JournalWriteError) -> None:
        self.degraded = str(exc)
        self.log.error("journal_write_failed", job=name, error=str(exc))
        self.notifier.notify("STATUS=degraded: " + str(exc))

    def lose(self, name: str, exc: OwnershipLost) -> None:
        """Another node owns ``name`` now (cluster backends): this node stops driving it,
        writes and delivers nothing more for it; the daemon itself carries on."""
        if self.on_lost is not None:
            self.on_lost(name, exc)
        else:
            self.log.warning("ownership_lost", job=name, error=str(exc))

    @property
    def healthy(self) -> bool:
        return self.fatal is None


@dataclass
class Runtime:
    config: Config
    config_path: Path | None
    layout: Layout
    keyring: Keyring
    clock: Clock
    notifier: Notifier
    health: Health
    pool: ClientPool
    logs: EventLogStore
    transcripts: TranscriptIndex
    mirror: MirrorSink
    make_agent: AgentFactory
    schedule: Schedule
    spec_env: dict[str, str] = field(default_factory=dict)
    log: FilteringBoundLogger = field(default_factory=get_logger)
    jobs: dict[str, Job] = field(default_factory=dict)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    waiting: dict[str, asyncio.Task[None]] = field(default_factory=dict)  # beats without a slot
    draining: bool = False
    heads: HeadsKeeper | None = None  # state_dir/heads; None: not kept (tests, other backends)
    # Every conversation also tells these of each journaled event (metrics), and times
    # its journal's appends and syncs with ``timing``.
    listeners: list[Callable[[str, int, Event], None]] = field(default_factory=list)
    timing: Callable[[str, float], None] | None = None

    def live_jobs(self) -> list[Job]:
        return [j for j in self.jobs.values() if not j.retired]

    def background(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
