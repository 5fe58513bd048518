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
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from typing import Any, Literal

from jobs.backoff import BACKOFF_REASONS
from jobs.budget import SpendLedger, parse_at
from jobs.pause import Pause

__all__ = ["Failure", "JobLedger", "OpenDelivery", "QueuedMessage"]


def _when(event: Mapping[str, Any]) -> datetime | None:
    at = event.get("at")
    return parse_at(at) if isinstance(at, str) and at else None


def _iso(when: datetime | None) -> str | None:
    return None if when is None else when.isoformat()


def _from_iso(text: object) -> datetime | None:
    if text is None:
        return None
    when = datetime.fromisoformat(str(text))
    if when.tzinfo is None:
        raise ValueError("job ledger: an instant without its offset")
    return when


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

    # --- a plain-dict form, for start-up checkpoints (daemon.journal.checkpoint) ------

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; :meth:`from_dict` inverts it exactly."""
        pause = self.pause
        return {
            "spend": self.spend.to_dict(),
            "quiet_streak": self.quiet_streak,
            "last_due_at": _iso(self.last_due_at),
            "last_started_at": _iso(self.last_started_at),
            "open_deliveries": [
                [d.delivery, d.turn, d.sink, d.attempt, d.state]
                for d in self.open_deliveries.values()
            ],
            "last_turn": self.last_turn,
            "last_outcome": self.last_outcome,
            "last_reason": self.last_reason,
            "failures": self.failures,
            "last_failure_reason": self.last_failure_reason,
            "failure_streak": self.failure_streak,
            "ended_streak": self.ended_streak,
            "last_failure": None if self.last_failure is None else asdict(self.last_failure),
            "last_completed_at": _iso(self.last_completed_at),
            "alerting": self.alerting,
            "pause": None
            if pause is None
            else [_iso(pause.since), _iso(pause.until), pause.by, pause.detail],
            "queued": [asdict(m) for m in self.queued.values()],  # in journal order
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JobLedger:
        """Raises ``ValueError`` (or ``KeyError``/``TypeError``) for anything but what
        :meth:`to_dict` writes; every key must be there, and no other."""
        if set(data) != _LEDGER_KEYS:
            raise ValueError(f"job ledger fields differ: {sorted(set(data) ^ _LEDGER_KEYS)}")
        deliveries: dict[str, OpenDelivery] = {}
        for delivery, turn, sink, attempt, state in data["open_deliveries"]:
            if state not in ("started", "retry_pending"):
                raise ValueError(f"job ledger: delivery state {state!r}")
            deliveries[str(delivery)] = OpenDelivery(
                str(delivery), int(turn), str(sink), int(attempt), state
            )
        reason, failure, pause = data["last_failure_reason"], data["last_failure"], data["pause"]
        since = None if pause is None else _from_iso(pause[0])
        if pause is not None and since is None:
            raise ValueError("job ledger: a pause without its start")
        messages = [QueuedMessage(**m) for m in data["queued"]]
        return cls(
            spend=SpendLedger.from_dict(data["spend"]),
            quiet_streak=int(data["quiet_streak"]),
            last_due_at=_from_iso(data["last_due_at"]),
            last_started_at=_from_iso(data["last_started_at"]),
            open_deliveries=deliveries,
            last_turn=None if data["last_turn"] is None else int(data["last_turn"]),
            last_outcome=None if data["last_outcome"] is None else str(data["last_outcome"]),
            last_reason=None if data["last_reason"] is None else str(data["last_reason"]),
            failures=int(data["failures"]),
            last_failure_reason=None if reason is None else str(reason),
            failure_streak=int(data["failure_streak"]),
            ended_streak=int(data["ended_streak"]),
            last_failure=None if failure is None else Failure(**failure),
            last_completed_at=_from_iso(data["last_completed_at"]),
            alerting=bool(data["alerting"]),
            pause=None
            if pause is None or since is None
            else Pause(since, _from_iso(pause[1]), str(pause[2]), str(pause[3])),
            queued={m.id: m for m in messages},
        )

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


_LEDGER_KEYS = frozenset(f.name for f in fields(JobLedger))
