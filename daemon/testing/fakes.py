"""Fakes for driving the runtime in-process: a clock, a schedule, an agent, a mirror
and a transcript store, plus :func:`make_runtime` that wires them over an in-memory
event-log store. Fakes over mocks: each behaves like the real part within its port's
contract, and records what a test wants to check.

Also the doubles of two small interfaces: :class:`MemorySink` (a
:class:`jobs.sinks.Sink` that keeps replies and can fail its first sends; the sink
suite in ``tests/test_jobs_sinks.py`` runs on it) and :class:`RecordingNotifier` (a
:class:`daemon.runtime.notify.Notifier` that keeps every sd_notify message).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path

from daemon import events as ev
from daemon.agent.pool import ClientPool
from daemon.config.model import Config
from daemon.events import Event
from daemon.journal.keyring import Keyring
from daemon.layout import Layout
from daemon.logs import get_logger
from daemon.ports.agent import AgentFailure, AgentSpec, ConnectPlan, Emit, TurnOutcome
from daemon.ports.eventlog import EventLogStore
from daemon.runtime.context import Health, Runtime
from daemon.testing.memlog import MemoryEventLogStore
from jobs import sinks

__all__ = [
    "FakeAgent",
    "FakeClock",
    "FakeMirror",
    "FakeSchedule",
    "FakeTranscripts",
    "MemorySink",
    "RecordingNotifier",
    "make_runtime",
]


@dataclass
class MemorySink:
    """Keeps replies in a list; fails the first ``fail_first`` sends (tests, demos)."""

    name: str = "memory"
    fail_first: int = 0
    received: list[sinks.Reply] = field(default_factory=list)
    attempts: int = 0

    async def send(self, reply: sinks.Reply) -> None:
        self.attempts += 1
        if self.attempts <= self.fail_first:
            raise sinks.SinkError(self.name, f"failing on purpose (attempt {self.attempts})")
        self.received.append(reply)


class RecordingNotifier:
    """Keeps every ``KEY=VALUE`` message, in order, in :attr:`messages`; never raises."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def notify(self, message: str) -> None:
        self.messages.append(message)


class FakeClock:
    """Wall and monotonic time that move only when told to."""

    def __init__(self, start: datetime | None = None) -> None:
        # Journaled ``at`` stamps come from the wall clock, so by default the fake
        # starts there (a test that needs a time of day passes ``start``).
        self._now = start or datetime.now(UTC).replace(microsecond=0)
        self._mono = 1000.0

    def now(self) -> datetime:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def advance(self, by: timedelta | float) -> None:
        seconds = by.total_seconds() if isinstance(by, timedelta) else by
        self._now += timedelta(seconds=seconds)
        self._mono += seconds


@dataclass
class ScheduledJob:
    every: timedelta | None
    first_due: datetime | None
    jitter: timedelta | None = None
    cron: str | None = None
    zone: tzinfo | None = None


@dataclass
class FakeSchedule:
    """Records what the runtime schedules; never fires on its own (tests call due).
    ``next_due`` is the first due time on the job's grid not before the clock's now."""

    clock: FakeClock
    jobs: dict[str, ScheduledJob] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)

    def add_interval(
        self,
        name: str,
        every: timedelta,
        *,
        first_due: datetime,
        jitter: timedelta | None = None,
    ) -> None:
        self.jobs[name] = ScheduledJob(every, first_due, jitter)

    def add_cron(self, name: str, expression: str, zone: tzinfo) -> None:
        self.jobs[name] = ScheduledJob(None, None, cron=expression, zone=zone)

    def remove(self, name: str) -> None:
        self.jobs.pop(name, None)
        self.removed.append(name)

    def next_due(self, name: str) -> datetime | None:
        job = self.jobs.get(name)
        if job is None or job.first_due is None:
            return None
        due, now = job.first_due, self.clock.now()
        if due <= now and job.every:
            due += job.every * ((now - due) // job.every + 1)
        return due


Reply = Callable[[str, int], str]


class FakeAgent:
    """An agent that answers each prompt with ``reply(prompt, turn)``, streamed as two
    deltas, and reports a running cost of ``cost_per_turn`` per turn. ``fail_next``
    makes the next turn raise :class:`AgentFailure` with that reason; ``gate`` (an
    Event) holds a turn mid-stream until it is set."""

    _ids = itertools.count(1)

    def __init__(
        self,
        spec: AgentSpec,
        *,
        reply: Reply | None = None,
        cost_per_turn: float = 0.01,
    ) -> None:
        self.spec = spec
        self.reply = reply or (lambda prompt, turn: f"reply {turn} to {prompt}")
        self.cost_per_turn = cost_per_turn
        self.plans: list[ConnectPlan] = []
        self.prompts: list[str] = []
        self.fail_next: str | None = None
        self.gate: asyncio.Event | None = None
        self.at_gate = asyncio.Event()  # set while a turn waits at ``gate``
        self._connected = False
        self._session = ""
        self._total = 0.0

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def holds_process(self) -> bool:
        return self._connected

    def cli_pid(self) -> int | None:
        return None

    def cli_exit_code(self) -> int | None:
        return None

    async def connect(self, plan: ConnectPlan) -> None:
        self.plans.append(plan)
        self._connected = True
        self._session = plan.session_id
        self._total = 0.0  # a new CLI process: its running cost total restarts

    async def run_turn(self, prompt: str, prompt_uuid: str, turn: int, emit: Emit) -> TurnOutcome:
        self.prompts.append(prompt)
        if self.fail_next is not None:
            reason, self.fail_next = self.fail_next, None
            raise AgentFailure("model_error" if reason == "model_error" else "cli_died", reason)
        text = self.reply(prompt, turn)
        half = len(text) // 2
        emit(ev.delta(turn, text[:half]))
        if self.gate is not None:
            self.at_gate.set()
            await self.gate.wait()
            self.at_gate.clear()
        emit(ev.delta(turn, text[half:]))
        emit(ev.assistant(turn, text, uuid=f"a-{next(self._ids)}", model="fake"))
        self._total = round(self._total + self.cost_per_turn, 6)
        emit(
            ev.result(
                turn,
                session_id=self._session,
                is_error=False,
                subtype="success",
                text=text,
                session_cost_usd=self._total,
                usage={"input_tokens": 10, "output_tokens": 5},
                duration_ms=1,
                num_turns=1,
            )
        )
        return TurnOutcome(self._session, False, None, [], text=text)

    async def interrupt(self) -> None:
        return None

    async def disconnect(self) -> None:
        self._connected = False


class FakeMirror:
    phase = "live"

    def __init__(self) -> None:
        self.applied: list[tuple[str, int, Event]] = []

    def apply(self, conversation: str, seq: int, event: Event) -> None:
        self.applied.append((conversation, seq, event))


class FakeTranscripts:
    """The transcript store as the runtime asks it: which sessions it holds."""

    def __init__(self) -> None:
        self.sessions: set[str] = set()

    def has_session(self, session_id: str) -> bool:
        return session_id in self.sessions


@dataclass
class InProcess:
    """A runtime over fakes, and the fakes, for assertions."""

    rt: Runtime
    clock: FakeClock
    schedule: FakeSchedule
    logs: EventLogStore
    notifier: RecordingNotifier
    agents: dict[str, FakeAgent]


def make_runtime(
    config: Config,
    *,
    keyring: Keyring | None = None,
    clock: FakeClock | None = None,
    logs: EventLogStore | None = None,
    reply: Reply | None = None,
    config_path: Path | None = None,
) -> InProcess:
    """Wire a :class:`Runtime` over fakes (memory event logs unless ``logs`` is given);
    one :class:`FakeAgent` per job, kept in ``agents`` by the job's cwd name."""
    keyring = keyring or Keyring.generate()
    clock = clock or FakeClock()
    logs = logs if logs is not None else MemoryEventLogStore(keyring)
    schedule = FakeSchedule(clock)
    notifier = RecordingNotifier()
    agents: dict[str, FakeAgent] = {}
    transcripts = FakeTranscripts()

    def make_agent(spec: AgentSpec) -> FakeAgent:
        agent = FakeAgent(spec, reply=reply)
        agents[spec.cwd.name] = agent
        return agent

    daemon = config.daemon
    rt = Runtime(
        config=config,
        config_path=config_path,
        layout=Layout(daemon.state_dir, daemon.runtime_dir),
        keyring=keyring,
        clock=clock,
        notifier=notifier,
        health=Health(notifier, get_logger()),
        pool=ClientPool(
            max_live=daemon.max_live_clients,
            max_turns=daemon.max_concurrent_turns,
            idle_timeout=daemon.client_idle_timeout.total_seconds(),
            clock=clock,
        ),
        logs=logs,
        transcripts=transcripts,
        mirror=FakeMirror(),
        make_agent=make_agent,
        schedule=schedule,
    )
    return InProcess(rt, clock, schedule, logs, notifier, agents)
