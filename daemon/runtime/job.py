"""One heartbeat job as the supervisor drives it: config, runner, ledger, delivery.

Glue between the config, the beat runner and the pure logic in ``jobs/``: what the
job's agent looks like (:func:`agent_spec`), whether a due beat runs
(:func:`beat_policy`), where replies go (:func:`routes`), and the delivery fence's
journal (:class:`JournalDeliveryLog`, on the job's own conversation).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

from daemon import events as ev
from daemon.config.model import HeartbeatConfig, SinkConfig
from daemon.journal.conversation import Conversation
from daemon.ports.agent import AgentSpec
from daemon.runtime.beats import BeatRunner
from jobs.backoff import failure_interval, idle_interval
from jobs.context import apply_compaction_env
from jobs.delivery import DeliveryKey, Route
from jobs.gate import BeatPolicy
from jobs.ledger import JobLedger
from jobs.sinks import CommandSink, FileSink, Reply, Sink, StdoutSink, WebhookSink

__all__ = [
    "ALERT_PREFIX",
    "Job",
    "JournalDeliveryLog",
    "agent_spec",
    "alert_routes",
    "beat_policy",
    "routes",
    "schedule_key",
    "sink_type",
]


@dataclass
class Job:
    """A running job. ``retired``: removed by a reload, closing once its work is done."""

    config: HeartbeatConfig
    runner: BeatRunner
    ledger: JobLedger
    retired: bool = False
    reconnect_after_turn: bool = False  # agent settings changed while a turn ran
    handing_over: bool = False  # a cluster node gives it away: no new beat starts here
    interval: timedelta | None = None  # the interval scheduled now (idle backoff)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def name(self) -> str:
        return self.config.name

    def wanted_interval(self) -> timedelta | None:
        """``every`` stretched by idle backoff for the current run of quiet replies, or
        by failure backoff for the current run of failed beats, whichever is longer."""
        cfg = self.config
        if cfg.every is None:
            return None
        idle = idle_interval(
            cfg.every, self.ledger.quiet_streak, after=cfg.idle_backoff, maximum=cfg.backoff_max
        )
        ledger = self.ledger
        if ledger.failures == 0:
            return idle
        auth = ledger.last_failure_reason == "auth_failed"
        return max(idle, failure_interval(cfg.every, ledger.failures, auth=auth))


def agent_spec(cfg: HeartbeatConfig, env: dict[str, str]) -> AgentSpec:
    """``env``: the CLI's environment, with the job's ``context_limit`` settings added."""
    return AgentSpec(
        cwd=cfg.cwd,
        env=apply_compaction_env(env, cfg.context_limit),
        model=cfg.model,
        system_prompt=cfg.system_prompt,
        allowed_tools=cfg.allowed_tools,
        permission_mode=cfg.permission_mode,
        max_turns=cfg.max_turns,
        max_budget_usd=cfg.max_budget_usd,
    )


def schedule_key(cfg: HeartbeatConfig) -> tuple[object, ...]:
    """What decides when a job's beats come due; equal keys keep the schedule as is."""
    return (
        cfg.every,
        cfg.cron,
        cfg.timezone if cfg.cron else None,
        cfg.jitter,
        cfg.idle_backoff,
        cfg.backoff_max if cfg.idle_backoff else None,
    )


def beat_policy(cfg: HeartbeatConfig) -> BeatPolicy:
    return BeatPolicy(
        prompt=cfg.prompt_text,
        zone=cfg.zone,
        active_hours=cfg.hours,
        daily_budget_usd=cfg.daily_budget_usd,
    )


def _sink(name: str, sink: SinkConfig, emit: Callable[[Reply], None]) -> Sink:
    timeout = sink.timeout.total_seconds()
    if sink.type == "file" and sink.path is not None:
        return FileSink(name, sink.path)
    if sink.type == "command" and sink.command is not None:
        return CommandSink(name, list(sink.command), timeout)
    if sink.type == "webhook" and sink.url is not None:
        return WebhookSink(name, sink.url, timeout, dict(sink.headers or {}))
    return StdoutSink(name, emit)


def routes(cfg: HeartbeatConfig, *, emit: Callable[[Reply], None]) -> list[Route]:
    """The job's sinks with their retry policy; ``emit`` shows stdout replies."""
    return [
        Route(_sink(name, sink, emit), retries=sink.retries, retry_delay=sink.retry_delay)
        for name, sink in cfg.sinks
    ]


ALERT_PREFIX = "alert:"  # alert sinks' names in the delivery fence: "<turn>/alert:<name>"


def alert_routes(cfg: HeartbeatConfig, *, emit: Callable[[Reply], None]) -> list[Route]:
    """The job's ``[[heartbeat.alert]]`` sinks; ``emit`` shows stdout alerts."""
    return [
        Route(
            _sink(ALERT_PREFIX + name, sink, emit),
            retries=sink.retries,
            retry_delay=sink.retry_delay,
        )
        for name, sink in cfg.alert_sinks
    ]


def sink_type(cfg: HeartbeatConfig, sink: str) -> str:
    """The type of the sink (reply or alert) a delivery names; "unknown" if gone."""
    if sink.startswith(ALERT_PREFIX):
        found = dict(cfg.alert_sinks).get(sink[len(ALERT_PREFIX) :])
    else:
        found = dict(cfg.sinks).get(sink)
    return found.type if found is not None else "unknown"


class JournalDeliveryLog:
    """The delivery fence on the job's conversation journal (write before send)."""

    def __init__(self, conversation: Conversation) -> None:
        self.conversation = conversation

    def _record(self, event: ev.Event) -> None:
        self.conversation.record(event)
        self.conversation.turn_boundary()  # a fence record is only a fence once on disk

    def started(self, key: DeliveryKey, attempt: int) -> None:
        self._record(ev.delivery_started(key.turn, key.delivery, key.sink, attempt))

    def done(self, key: DeliveryKey, attempt: int) -> None:
        self._record(ev.delivery_done(key.turn, key.delivery, key.sink, attempt))

    def failed(
        self,
        key: DeliveryKey,
        attempt: int,
        error: str,
        retry_in: timedelta | None,
        output: str | None = None,
    ) -> None:
        retry_in_s = None if retry_in is None else retry_in.total_seconds()
        self._record(
            ev.delivery_failed(
                key.turn,
                key.delivery,
                key.sink,
                attempt,
                error=error,
                retry_in_s=retry_in_s,
                output=output,
            )
        )

    def unknown(self, key: DeliveryKey, attempt: int, reason: str) -> None:
        self._record(ev.delivery_unknown(key.turn, key.delivery, key.sink, attempt, reason=reason))
