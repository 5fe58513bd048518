"""A turn's cost, from the journal's ``result`` records (pure): the one fold every
reader uses (history, the mirror, budgets, status, sessions).

The CLI reports ``total_cost_usd`` as a running total, and vigil journals it as
``session_cost_usd``. With a session store every resume runs the CLI on a transcript
materialized from the store, and the total restarts there (docs/sdk-notes.md): the
running total belongs to one CLI *process*. So a result's cost is the step from the
previous total of the same session since the last event that restarts the total
(``session_bound``: every connect journals one; ``forked``); the first result after a
connect costs its whole total. A turn with several results costs the sum of its steps.

Amounts are rounded to micro-dollars at each step and each sum, so every reader shows
the same number. A ``session_cost_usd`` that is not a finite, non-negative number
(a malformed record) is ignored: it neither costs nor moves the running total.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["RESTARTS_COST_TOTAL", "CostSteps", "add_cost", "money"]

# Events after which the CLI's running cost total starts again from zero.
RESTARTS_COST_TOTAL = frozenset({"session_bound", "forked"})
_PLACES = 6


def money(value: object) -> float | None:
    """``value`` as an amount of dollars, or None when it is not a usable one."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    amount = float(value)
    return amount if math.isfinite(amount) and amount >= 0 else None


def add_cost(total: float | None, step: float) -> float:
    return round((total or 0.0) + step, _PLACES)


@dataclass
class CostSteps:
    """Feed every event of one conversation in journal order; ``feed`` returns the
    cost step of each usable ``result`` (None for everything else)."""

    #: The running total of each session since the last restart (kept by the mirror).
    totals: dict[str, float] = field(default_factory=dict)

    def feed(self, event: Mapping[str, Any]) -> float | None:
        kind = event.get("type")
        if kind in RESTARTS_COST_TOTAL:
            self.totals.clear()  # a new CLI process: its running total starts at zero
            return None
        if kind != "result":
            return None
        total = money(event.get("session_cost_usd"))
        if total is None:
            return None
        session = str(event.get("session_id") or "")
        step = round(max(0.0, total - self.totals.get(session, 0.0)), _PLACES)
        self.totals[session] = total
        return step

    def to_dict(self) -> dict[str, Any]:
        return {"totals": dict(self.totals)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CostSteps:
        totals = data["totals"]
        if not isinstance(totals, dict) or not all(
            isinstance(k, str) and money(v) is not None for k, v in totals.items()
        ):
            raise ValueError("cost totals: not a map of session to amount")
        return cls({k: float(v) for k, v in totals.items()})
