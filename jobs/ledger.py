"""What a job's journal says about its beats, folded incrementally (pure).

:class:`JobLedger` is fed every event of one conversation in journal order, at start
(from the journal) and live (as events are recorded). It answers what the beat policy
needs without re-reading the journal: the spend per day (:class:`SpendLedger`), the
run of quiet replies, the run of failed beats (failure backoff), when the last beat came
due, and deliveries whose outcome the journal does not know yet (the delivery fence);
and the operator's side: the failure streak of any reason and whether an alert is out
(:mod:`jobs.alerts`), a pause (:mod:`jobs.pause`) and the messages queued for the next
beat (``vigil send --next-beat``).

It reads the raw event dicts (``type``, ``at``, ...) of vigil's journal schema.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from jobs.backoff import BACKOFF_REASONS
from jobs.budget import SpendLedger, parse_at
from jobs.pause import Pause

__all__ = ["Failure", "JobLedger", "OpenDelivery", "QueuedMessage"]


def _when(event: Mapping[str, Any]) -> datetime | None:
    at = event.get("at")
    return parse_at(at) if isinstance(at, str) and at else None


@dataclass(frozen=True)
class OpenDelivery:
    """A delivery whose last journaled step is ``started`` or a failure with a retry due."""

    delivery: str
    turn: int
    sink: str
    attempt: int
    state: Literal["started", "retry_pending"]


_OUTCOMES = {
    "turn_completed": "completed",
    "turn_failed": "failed",
    "turn_interrupted": "interrupted",
    "beat_skipped": "skipped",
}


@dataclass(frozen=True)
class Failure:
    turn: int
    reason: str
    detail: str


@dataclass(frozen=True)
class QueuedMessage:
    id: str
    text: str
    at: str


@dataclass
class JobLedger:
    spend: SpendLedger = field(default_factory=SpendLedger)
    quiet_streak: int = 0
    last_due_at: datetime | None = None  # last turn_started or beat_skipped
    last_started_at: datetime | None = None  # last turn_started
    open_deliveries: dict[str, OpenDelivery] = field(default_factory=dict)
    # The last beat's end as journaled (``vigil status`` after a restart).
    last_turn: int | None = None
    last_outcome: str | None = None  # completed, failed, interrupted, skipped
    last_reason: str | None = None
    # Failed beats in a row (``BACKOFF_REASONS``; a completed beat resets it) and the
    # last one's reason: failure backoff survives a restart, so a crash loop under
    # ``Restart=always`` does not hammer a failing API.
    failures: int = 0
    last_failure_reason: str | None = None
    failure_streak: int = 0  # beats in a row that ended turn_failed (any reason)
    ended_streak: int = 0  # the streak the last completed beat ended
    last_failure: Failure | None = None
    last_completed_at: datetime | None = None
    alerting: bool = False  # a "failing" alert is out, no "recovered" since
    pause: Pause | None = None
    queued: dict[str, QueuedMessage] = field(default_factory=dict)  # in journal order

    def feed(self, event: Mapping[str, Any]) -> None:
        kind = event.get("type")
        if kind == "delta":  # most events; nothing here needs them
            return
        self.spend.feed(event)  # turn numbers, restarts of the cost total, results
        if kind in _OUTCOMES:
            turn = event.get("turn")
            self.last_turn = turn if isinstance(turn, int) else self.last_turn
            self.last_outcome = _OUTCOMES[kind]
            reason = event.get("reason")
            self.last_reason = reason if isinstance(reason, str) else None
        if kind == "turn_started":
            when = _when(event)
            self.last_started_at = when or self.last_started_at
            self.last_due_at = when or self.last_due_at
            for consumed in event.get("queued") or ():
                self.queued.pop(str(consumed), None)
        elif kind == "beat_skipped":
            self.last_due_at = _when(event) or self.last_due_at
        elif kind == "turn_completed":
            self.quiet_streak = self.quiet_streak + 1 if event.get("quiet") else 0
            self.failures = 0
            self.last_failure_reason = None
            self.ended_streak, self.failure_streak = self.failure_streak, 0
            self.last_completed_at = _when(event) or self.last_completed_at
        elif kind == "turn_failed":
            self._failed(event)
        elif isinstance(kind, str) and kind.startswith("delivery_"):
            self._delivery(kind, event)
        else:
            self._operator(kind, event)

    def _failed(self, event: Mapping[str, Any]) -> None:
        reason = str(event.get("reason", ""))
        if reason in BACKOFF_REASONS:
            self.failures += 1
            self.last_failure_reason = reason
        self.failure_streak += 1
        turn = event.get("turn")
        self.last_failure = Failure(
            turn if isinstance(turn, int) else 0, reason, str(event.get("detail", ""))
        )

    def _operator(self, kind: object, event: Mapping[str, Any]) -> None:
        if kind == "alert_raised":
            self.alerting = event.get("alert") == "failing"
        elif kind == "job_paused":
            until = event.get("until")
            self.pause = Pause(
                _when(event) or parse_at("1970-01-01T00:00:00Z"),
                parse_at(until) if isinstance(until, str) and until else None,
                str(event.get("by", "operator")),
                str(event.get("detail", "")),
            )
        elif kind == "job_resumed":
            self.pause = None
        elif kind == "message_queued":
            message_id = str(event.get("id", ""))
            self.queued[message_id] = QueuedMessage(
                message_id, str(event.get("text", "")), str(event.get("at", ""))
            )

    def paused(self, now: datetime) -> Pause | None:
        """The pause in force at ``now``, if any."""
        pause = self.pause
        return pause if pause is not None and pause.active(now) else None

    def _delivery(self, kind: str, event: Mapping[str, Any]) -> None:
        delivery = str(event.get("delivery", ""))
        if kind in ("delivery_done", "delivery_unknown"):
            self.open_deliveries.pop(delivery, None)
            return
        turn = event.get("turn")
        attempt = event.get("attempt")
        entry = OpenDelivery(
            delivery,
            turn if isinstance(turn, int) else 0,
            str(event.get("sink", "")),
            attempt if isinstance(attempt, int) else 1,
            "started",
        )
        if kind == "delivery_started":
            self.open_deliveries[delivery] = entry
        elif kind == "delivery_failed":
            if event.get("retry_in_s") is None:
                self.open_deliveries.pop(delivery, None)
            else:
                self.open_deliveries[delivery] = OpenDelivery(
                    entry.delivery, entry.turn, entry.sink, entry.attempt, "retry_pending"
                )
