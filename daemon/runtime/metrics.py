"""Prometheus metrics, fed from the journaled events so they agree with the journal.

:class:`Metrics` is a listener on every conversation (like the mirror): each event is
counted only after it was journaled. Handlers are looked up by event type
(:attr:`Metrics.handlers`), so a new event type (per-request usage, compaction) is one
more entry. Gauges that describe the present (the pool, pauses, failure streaks, spend,
the last success) are read from the runtime and the job ledgers when scraped; the
ledgers are folded from the journal, so they survive a restart.

Labels are bounded: ``heartbeat`` (the configured job names; not ``job``, which
Prometheus sets to the scrape job and would rename ours to ``exported_job``),
``outcome``, ``reason`` (vigil's reason codes), ``type`` (token kinds), ``sink_type``,
``op``. Never a session id, never text.
"""

from __future__ import annotations

import importlib.metadata
import platform
from collections.abc import Callable, Iterator
from datetime import datetime

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    Info,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from daemon.events import Event
from daemon.runtime.context import Runtime
from daemon.runtime.job import sink_type
from jobs.budget import parse_at
from jobs.cost import CostSteps

__all__ = ["Metrics"]

TOKEN_TYPES = {
    "input_tokens": "input",
    "output_tokens": "output",
    "cache_creation_input_tokens": "cache_creation",
    "cache_read_input_tokens": "cache_read",
}
CONTEXT_KEYS = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
DURATION_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800)
LAG_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 900)
JOURNAL_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1)
DELIVERY_OUTCOMES = {
    "delivery_done": "done",
    "delivery_unknown": "unknown",
}
Handler = Callable[[str, Event], None]


def _ts(at: object) -> datetime | None:
    try:
        return parse_at(at) if isinstance(at, str) and at else None
    except ValueError:
        return None


def _version() -> str:
    try:
        return importlib.metadata.version("vigil")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class _OpenTurn:
    __slots__ = ("due_at", "started_at", "streamed")

    def __init__(self, started_at: datetime | None, due_at: datetime | None) -> None:
        self.started_at = started_at
        self.due_at = due_at
        self.streamed = False


class Metrics:
    """The daemon's registry; :meth:`feed` is the conversation listener."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        # No *_created series: scrapes stay small. (The library leaves it unannotated.)
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry()
        r = self.registry
        Info("vigil_build", "vigil's version", registry=r).info(
            {"version": _version(), "python": platform.python_version()}
        )
        self.beats = Counter(
            "vigil_beats", "Turns that ended, by outcome", ["heartbeat", "outcome"], registry=r
        )
        self.failures = Counter(
            "vigil_beat_failures", "Failed turns by reason", ["heartbeat", "reason"], registry=r
        )
        self.skips = Counter(
            "vigil_beats_skipped",
            "Due beats that did not run, by reason",
            ["heartbeat", "reason"],
            registry=r,
        )
        self.duration = Histogram(
            "vigil_beat_duration_seconds",
            "turn_started to the turn's end",
            ["heartbeat"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.lag = Histogram(
            "vigil_schedule_lag_seconds",
            "A beat's due time to its first streamed delta",
            ["heartbeat"],
            buckets=LAG_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "vigil_tokens", "Tokens the turns' results report", ["heartbeat", "type"], registry=r
        )
        self.cost = Counter("vigil_cost_usd", "Cost of the turns (USD)", ["heartbeat"], registry=r)
        self.compactions = Counter(
            "vigil_compactions", "Conversation compactions", ["heartbeat"], registry=r
        )
        self.deliveries = Counter(
            "vigil_deliveries",
            "Delivery attempts by outcome (done, failed, retry, unknown)",
            ["heartbeat", "sink_type", "outcome"],
            registry=r,
        )
        self.journal = Histogram(
            "vigil_journal_seconds",
            "Journal append and sync latency",
            ["op"],
            buckets=JOURNAL_BUCKETS,
            registry=r,
        )
        self._append = self.journal.labels(op="append")
        self._sync = self.journal.labels(op="sync")
        r.register(_RuntimeCollector(rt))
        self._open: dict[str, _OpenTurn] = {}
        self._costs: dict[str, CostSteps] = {}  # the one turn-cost fold, per job
        self._context: dict[str, float] = {}
        r.register(_ContextCollector(self._context))
        self.handlers: dict[str, Handler] = {
            "turn_started": self._turn_started,
            "delta": self._delta,
            "turn_completed": self._turn_end,
            "turn_failed": self._turn_end,
            "turn_interrupted": self._turn_end,
            "beat_skipped": self._skipped,
            "result": self._result,
            "session_bound": self._session,
            "forked": self._session,
            "delivery_done": self._delivery,
            "delivery_failed": self._delivery,
            "delivery_unknown": self._delivery,
            "compacted": self._compaction,
        }

    # --- feeding ---------------------------------------------------------------------

    def feed(self, name: str, seq: int, event: Event) -> None:
        """A conversation listener: called after ``event`` was journaled."""
        del seq
        handler = self.handlers.get(str(event.get("type")))
        if handler is None:
            return
        try:
            handler(name, event)
        except Exception as exc:  # a metrics bug must never fail a journaled turn
            self.rt.log.warning("metrics_error", job=name, error=f"{type(exc).__name__}: {exc}")

    def timing(self, op: str, seconds: float) -> None:
        """The conversation's journal timing hook (``append`` or ``sync``)."""
        (self._append if op == "append" else self._sync).observe(seconds)

    def _turn_started(self, job: str, event: Event) -> None:
        self._open[job] = _OpenTurn(_ts(event.get("at")), _ts(event.get("due_at")))

    def _delta(self, job: str, event: Event) -> None:
        open_turn = self._open.get(job)
        if open_turn is None or open_turn.streamed:
            return
        open_turn.streamed = True
        at = _ts(event.get("at"))
        if open_turn.due_at is not None and at is not None:
            lag = max(0.0, (at - open_turn.due_at).total_seconds())
            self.lag.labels(heartbeat=job).observe(lag)

    def _turn_end(self, job: str, event: Event) -> None:
        kind = event.get("type")
        outcome = {"turn_failed": "failed", "turn_interrupted": "interrupted"}.get(
            str(kind), "quiet" if event.get("quiet") else "completed"
        )
        self.beats.labels(heartbeat=job, outcome=outcome).inc()
        if kind == "turn_failed":
            self.failures.labels(heartbeat=job, reason=str(event.get("reason"))).inc()
        open_turn = self._open.pop(job, None)
        at = _ts(event.get("at"))
        if open_turn is not None and open_turn.started_at is not None and at is not None:
            seconds = max(0.0, (at - open_turn.started_at).total_seconds())
            self.duration.labels(heartbeat=job).observe(seconds)

    def _skipped(self, job: str, event: Event) -> None:
        self.skips.labels(heartbeat=job, reason=str(event.get("reason"))).inc()

    def _result(self, job: str, event: Event) -> None:
        usage = event.get("usage")
        if isinstance(usage, dict):
            for key, kind in TOKEN_TYPES.items():
                value = usage.get(key)
                if isinstance(value, int | float) and value > 0:
                    self.tokens.labels(heartbeat=job, type=kind).inc(value)
            context = [usage.get(k) for k in CONTEXT_KEYS]
            self._context[job] = float(sum(v for v in context if isinstance(v, int | float)))
        journaled = event.get("context_tokens")  # the journal's own figure, when it has one
        if isinstance(journaled, int) and not isinstance(journaled, bool):
            self._context[job] = float(journaled)
        step = self._costs.setdefault(job, CostSteps()).feed(event)
        if step:
            self.cost.labels(heartbeat=job).inc(step)

    def _session(self, job: str, event: Event) -> None:
        self._costs.setdefault(job, CostSteps()).feed(event)  # a new CLI: the total restarts

    def _delivery(self, job: str, event: Event) -> None:
        kind = str(event.get("type"))
        outcome = DELIVERY_OUTCOMES.get(kind)
        if outcome is None:
            outcome = "failed" if event.get("retry_in_s") is None else "retry"
        cfg = self.rt.jobs[job].config if job in self.rt.jobs else None
        sink = str(event.get("sink", ""))
        kind_of_sink = sink_type(cfg, sink) if cfg is not None else "unknown"
        self.deliveries.labels(heartbeat=job, sink_type=kind_of_sink, outcome=outcome).inc()

    def _compaction(self, job: str, event: Event) -> None:
        del event
        self.compactions.labels(heartbeat=job).inc()


class _ContextCollector(Collector):
    """The context size the last result of each job reported (input + cache tokens)."""

    def __init__(self, context: dict[str, float]) -> None:
        self.context = context

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily(
            "vigil_context_tokens", "Input and cache tokens of the last turn", labels=["heartbeat"]
        )
        for job, tokens in sorted(self.context.items()):
            gauge.add_metric([job], tokens)
        yield gauge


def _gauge(name: str, doc: str, labels: list[str] | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=labels)


class _RuntimeCollector(Collector):
    """Read when scraped: liveness, the pool, and each job's state from its ledger."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    def collect(self) -> Iterator[Metric]:
        rt = self.rt
        yield _single("vigil_up", "1 while the daemon runs", 1)
        yield _single(
            "vigil_degraded", "1 while journal writes fail", int(bool(rt.health.degraded))
        )
        yield _single("vigil_draining", "1 while the daemon stops", int(rt.draining))
        pool = rt.pool
        yield _single("vigil_pool_live_clients", "Connected CLI processes", pool.live)
        yield _single("vigil_pool_max_live_clients", "max_live_clients", pool.max_live)
        yield _single("vigil_turns_running", "Turn slots in use", pool.busy)
        yield _single("vigil_turn_slots", "max_concurrent_turns", pool.max_turns)
        yield _single("vigil_beats_waiting", "Beats waiting for a turn slot", len(rt.waiting))
        evictions = CounterMetricFamily("vigil_pool_evictions", "Idle clients evicted")
        evictions.add_metric([], pool.evictions)
        yield evictions
        yield from self._jobs()

    def _jobs(self) -> Iterator[Metric]:
        rt = self.rt
        now = rt.clock.now()
        families: dict[str, GaugeMetricFamily] = {
            name: _gauge(name, doc, ["heartbeat"])
            for name, doc in (
                ("vigil_last_success_timestamp_seconds", "When the job's last turn completed"),
                ("vigil_job_paused", "1 while the job is paused"),
                ("vigil_job_failure_streak", "Failed beats in a row"),
                ("vigil_job_alerting", "1 while a failing alert is out"),
                ("vigil_job_queued_messages", "Messages queued for the next beat"),
                ("vigil_job_running", "1 while a turn runs"),
                ("vigil_spend_today_usd", "Spend today in the job's time zone"),
                ("vigil_daily_budget_usd", "daily_budget_usd, for jobs that set it"),
                ("vigil_next_beat_timestamp_seconds", "When the next beat is due"),
            )
        }

        def put(name: str, job: str, value: float) -> None:
            families[name].add_metric([job], value)

        for job in sorted(rt.live_jobs(), key=lambda j: j.name):
            ledger, name = job.ledger, job.name
            if ledger.last_completed_at is not None:
                put(
                    "vigil_last_success_timestamp_seconds",
                    name,
                    ledger.last_completed_at.timestamp(),
                )
            put("vigil_job_paused", name, int(ledger.paused(now) is not None))
            put("vigil_job_failure_streak", name, ledger.failure_streak)
            put("vigil_job_alerting", name, int(ledger.alerting))
            put("vigil_job_queued_messages", name, len(ledger.queued))
            put("vigil_job_running", name, int(job.runner.busy))
            put("vigil_spend_today_usd", name, ledger.spend.spent_today(now, job.config.zone))
            if job.config.daily_budget_usd is not None:
                put("vigil_daily_budget_usd", name, job.config.daily_budget_usd)
            due = rt.schedule.next_due(name)
            if due is not None:
                put("vigil_next_beat_timestamp_seconds", name, due.timestamp())
        yield from families.values()


def _single(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)
