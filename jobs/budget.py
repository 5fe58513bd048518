"""Spend per day, from the journal's ``result`` records (pure).

A result's cost is :class:`jobs.cost.CostSteps`'s step (the one turn-cost fold).
:class:`SpendLedger` keeps those steps by instant; ``spent_on`` sums the ones whose
instant falls on a given local day (:func:`local_day`: the one "spend today" rule,
in the job's timezone), so the budget survives restarts because the journal does.
Like every reader, it counts a result only when its turn started (or was skipped)
in this journal.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Any

from jobs.cost import CostSteps, add_cost

__all__ = ["SpendLedger", "local_day", "local_day_bounds", "parse_at", "turn_cost_steps"]

# Results older than this (before the newest) cannot fall on "today" in any time zone.
_KEEP = timedelta(days=2, hours=2)


def parse_at(text: str) -> datetime:
    """An event's ``at`` (ISO 8601, ``Z`` for UTC) as an aware datetime."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def local_day(when: datetime, zone: tzinfo) -> date:
    """The day ``when`` falls on in ``zone``: the one rule for "spend today"."""
    return when.astimezone(zone).date()


def local_day_bounds(day: date, zone: tzinfo) -> tuple[datetime, datetime]:
    """The UTC instants ``[start, end)`` of ``day`` in ``zone`` (what :func:`local_day`
    maps to ``day``), for readers that select by time, such as the mirror."""
    start = datetime.combine(day, time(0), tzinfo=zone)
    end = datetime.combine(day + timedelta(days=1), time(0), tzinfo=zone)
    return start.astimezone(UTC), end.astimezone(UTC)


@dataclass
class SpendLedger:
    """Turn costs by instant; feed it every event in journal order."""

    _costs: CostSteps = field(default_factory=CostSteps)
    _steps: list[tuple[datetime, float]] = field(default_factory=list)
    _first_turn: int | None = None
    _last_turn: int = 0

    def feed(self, event: Mapping[str, Any]) -> float | None:
        """Account for ``event``; returns the result's cost step when it counts."""
        turn = event.get("turn")
        if not isinstance(turn, int):
            turn = None
        if event.get("type") in ("turn_started", "beat_skipped") and turn is not None:
            self._first_turn = turn if self._first_turn is None else self._first_turn
            self._last_turn = max(self._last_turn, turn)
        step = self._costs.feed(event)
        at = event.get("at")
        if step is None or not at or not self._known(turn):
            return None
        when = parse_at(str(at))
        self._steps.append((when, step))
        newest = max(w for w, _ in self._steps)
        self._steps = [(w, c) for w, c in self._steps if newest - w <= _KEEP]
        return step

    def _known(self, turn: int | None) -> bool:
        """Whether ``turn`` started (or was skipped) in this journal: turn numbers run
        without gaps from the first one journaled."""
        first = self._first_turn
        return turn is not None and first is not None and first <= turn <= self._last_turn

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (instants as ISO 8601 with their offset); :meth:`from_dict` inverts it."""
        return {
            "costs": self._costs.to_dict(),
            "steps": [[when.isoformat(), cost] for when, cost in self._steps],
            "first_turn": self._first_turn,
            "last_turn": self._last_turn,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SpendLedger:
        """Raises ``ValueError`` (or ``KeyError``/``TypeError``) for anything else."""
        first, last = data["first_turn"], data["last_turn"]
        if not (first is None or type(first) is int) or type(last) is not int:
            raise ValueError("spend ledger: turns are not numbers")
        steps = [(datetime.fromisoformat(when), float(cost)) for when, cost in data["steps"]]
        if any(when.tzinfo is None for when, _ in steps):
            raise ValueError("spend ledger: an instant without its offset")
        return cls(CostSteps.from_dict(data["costs"]), steps, first, last)

    def spent_on(self, day: date, zone: tzinfo) -> float:
        """Total cost of the turns whose result was journaled on ``day`` in ``zone``."""
        total = 0.0
        for when, cost in self._steps:
            if local_day(when, zone) == day:
                total = add_cost(total, cost)
        return total

    def spent_today(self, now: datetime, zone: tzinfo) -> float:
        return self.spent_on(local_day(now, zone), zone)


def turn_cost_steps(events: Iterable[Mapping[str, Any]]) -> list[float]:
    """Each ``result``'s turn cost, in order (for tests and reports)."""
    ledger = SpendLedger()
    return [cost for e in events if (cost := ledger.feed(e)) is not None]
