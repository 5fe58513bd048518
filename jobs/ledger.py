"""What a job's journal says about its beats, folded incrementally (pure).

:class:`JobLedger` is fed every event of one conversation in journal order, at start
(from the journal) and live (as events are recorded). It answers what the beat policy
needs without re-reading the journal: the spend per day (:class:`SpendLedger`), the
run of quiet replies, the run of failed beats (failure backoff), when the last beat came
due, and deliveries whose outcome the journal does not know yet (the delivery fence).

It reads the raw event dicts (``type``, ``at``, ...) of vigil's journal schema.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any, Literal

from jobs.backoff import BACKOFF_REASONS
from jobs.budget import SpendLedger, parse_at

__all__ = ["JobLedger", "OpenDelivery"]


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


@dataclass
class JobLedger:
    spend: SpendLedger = field(default_factory=SpendLedger)
    quiet_streak: int = 0
    last_due_at: datetime | None = None  # last turn_started or beat_skipped
    last_started_at: datetime | None = None  # last turn_started
    open_deliveries: dict[str, OpenDelivery] = field(default_factory=dict)
    # Failed beats in a row (``BACKOFF_REASONS``; a completed beat resets it) and the
    # last one's reason: failure backoff survives a restart, so a crash loop under
    # ``Restart=always`` does not hammer a failing API.
    failures: int = 0
    last_failure_reason: str | None = None

    def feed(self, event: Mapping[str, Any]) -> None:
        kind = event.get("type")
        if kind == "delta":  # most events; nothing here needs them
            return
        self.spend.feed(event)  # turn numbers, restarts of the cost total, results
        if kind == "turn_started":
            when = _when(event)
            self.last_started_at = when or self.last_started_at
            self.last_due_at = when or self.last_due_at
        elif kind == "beat_skipped":
            self.last_due_at = _when(event) or self.last_due_at
        elif kind == "turn_completed":
            self.quiet_streak = self.quiet_streak + 1 if event.get("quiet") else 0
            self.failures = 0
            self.last_failure_reason = None
        elif kind == "turn_failed" and event.get("reason") in BACKOFF_REASONS:
            self.failures += 1
            self.last_failure_reason = str(event.get("reason"))
        elif isinstance(kind, str) and kind.startswith("delivery_"):
            self._delivery(kind, event)

    # --- a plain-dict form, for start-up checkpoints (daemon.journal.checkpoint) ------

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; :meth:`from_dict` inverts it exactly."""
        return {
            "spend": self.spend.to_dict(),
            "quiet_streak": self.quiet_streak,
            "last_due_at": _iso(self.last_due_at),
            "last_started_at": _iso(self.last_started_at),
            "open_deliveries": [
                [d.delivery, d.turn, d.sink, d.attempt, d.state]
                for d in self.open_deliveries.values()
            ],
            "failures": self.failures,
            "last_failure_reason": self.last_failure_reason,
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
        reason = data["last_failure_reason"]
        return cls(
            SpendLedger.from_dict(data["spend"]),
            int(data["quiet_streak"]),
            _from_iso(data["last_due_at"]),
            _from_iso(data["last_started_at"]),
            deliveries,
            int(data["failures"]),
            None if reason is None else str(reason),
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
