"""What a job's journal says about its beats, folded incrementally (pure).

:class:`JobLedger` is fed every event of one conversation in journal order, at start
(from the journal) and live (as events are recorded). It answers what the beat policy
needs without re-reading the journal: the spend per day (:class:`SpendLedger`), the
run of quiet replies, when the last beat came due, and deliveries whose outcome the
journal does not know yet (the delivery fence).

It reads the raw event dicts (``type``, ``at``, ...) of vigil's journal schema.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from jobs.budget import SpendLedger, parse_at

__all__ = ["JobLedger", "OpenDelivery"]


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

    def feed(self, event: Mapping[str, Any]) -> None:
        kind = event.get("type")
        if kind == "delta":  # most events; nothing here needs them
            return
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
        elif kind == "beat_skipped":
            self.last_due_at = _when(event) or self.last_due_at
        elif kind == "turn_completed":
            self.quiet_streak = self.quiet_streak + 1 if event.get("quiet") else 0
        elif kind == "result":
            self.spend.feed(event)
        elif isinstance(kind, str) and kind.startswith("delivery_"):
            self._delivery(kind, event)

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
