"""Spend per day, from the journal's ``result`` records (pure).

The CLI reports ``total_cost_usd`` as a running total, and vigil journals it as
``session_cost_usd``. With a session store every resume runs the CLI on a transcript
materialized from the store, and the total restarts there (docs/sdk-notes.md): so the
running total belongs to one CLI *process*. A turn's cost is the step from the
previous total of the same session since the last ``session_bound`` (each connect
journals one); the first result after a connect costs its whole total.
:class:`SpendLedger` folds those steps by instant; ``spent_on`` sums the ones whose
instant falls on a given local day, so the budget survives restarts because the
journal does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, tzinfo
from typing import Any

__all__ = ["RESTARTS_COST_TOTAL", "SpendLedger", "parse_at", "turn_cost_steps"]

# Events after which the CLI's running cost total starts again from zero.
RESTARTS_COST_TOTAL = frozenset({"session_bound", "forked"})

# Results older than this (before the newest) cannot fall on "today" in any time zone.
_KEEP = timedelta(days=2, hours=2)


def parse_at(text: str) -> datetime:
    """An event's ``at`` (ISO 8601, ``Z`` for UTC) as an aware datetime."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@dataclass
class SpendLedger:
    """Turn costs by instant; feed it every event in journal order."""

    _totals: dict[str, float] = field(default_factory=dict)
    _steps: list[tuple[datetime, float]] = field(default_factory=list)

    def feed(self, event: Mapping[str, Any]) -> float | None:
        """Account for ``event``; returns the turn's cost when it is a ``result``."""
        if event.get("type") in RESTARTS_COST_TOTAL:
            self._totals.clear()  # a new CLI process: its running total starts at zero
            return None
        if event.get("type") != "result":
            return None
        total = event.get("session_cost_usd")
        at = event.get("at")
        if not isinstance(total, int | float) or isinstance(total, bool) or not at:
            return None
        session = str(event.get("session_id") or "")
        step = max(0.0, float(total) - self._totals.get(session, 0.0))
        self._totals[session] = float(total)
        when = parse_at(str(at))
        self._steps.append((when, step))
        newest = max(w for w, _ in self._steps)
        self._steps = [(w, c) for w, c in self._steps if newest - w <= _KEEP]
        return step

    def spent_on(self, day: date, zone: tzinfo) -> float:
        """Total cost of the turns whose result was journaled on ``day`` in ``zone``."""
        return sum(c for w, c in self._steps if w.astimezone(zone).date() == day)

    def spent_today(self, now: datetime, zone: tzinfo) -> float:
        return self.spent_on(now.astimezone(zone).date(), zone)


def turn_cost_steps(events: Iterable[Mapping[str, Any]]) -> list[float]:
    """Each ``result``'s turn cost, in order (for tests and reports)."""
    ledger = SpendLedger()
    return [cost for e in events if (cost := ledger.feed(e)) is not None]
