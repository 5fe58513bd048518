"""Whether a due beat runs, or is skipped and why (pure).

Checked in this order, each a reason code journaled with the skip:

* ``paused``: ``vigil pause`` (or ``auto_pause_after``) paused the job and the pause
  is still in force (manual beats are exempt: an operator asked for them);
* ``empty_prompt``: the prompt is only whitespace and comments (no model call);
* ``outside_active_hours``: now is outside the job's active hours in its time zone
  (manual beats are exempt: an operator asked for them);
* ``budget_exhausted``: the job's spend today (its time zone) reached
  ``daily_budget_usd``.

(``previous_turn_running`` is decided by the beat runner, which owns the turn.)
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Literal

from jobs.hours import ActiveHours
from jobs.pause import Pause
from jobs.prompt import is_empty_prompt

__all__ = ["BeatPolicy", "Skip", "SkipReason", "check_beat"]

SkipReason = Literal["paused", "empty_prompt", "outside_active_hours", "budget_exhausted"]


@dataclass(frozen=True)
class BeatPolicy:
    prompt: str
    zone: tzinfo
    active_hours: ActiveHours | None = None
    daily_budget_usd: float | None = None


@dataclass(frozen=True)
class Skip:
    reason: SkipReason
    detail: str


def check_beat(
    policy: BeatPolicy,
    *,
    now: datetime,
    spent_today: float,
    manual: bool = False,
    pause: Pause | None = None,
) -> Skip | None:
    """None when the beat may run, else why not."""
    if pause is not None and not manual and pause.active(now):
        return Skip("paused", pause.describe())
    if is_empty_prompt(policy.prompt):
        return Skip("empty_prompt", "the prompt holds only whitespace and comments")
    hours = policy.active_hours
    if hours is not None and not manual and not hours.allows(now, policy.zone):
        local = now.astimezone(policy.zone).strftime("%H:%M")
        return Skip(
            "outside_active_hours",
            f"{local} in {policy.zone} is outside active_hours {hours}",
        )
    budget = policy.daily_budget_usd
    if budget is not None and spent_today >= budget:
        return Skip(
            "budget_exhausted",
            f"spent ${spent_today:.4f} of daily_budget_usd ${budget:.4f} today ({policy.zone})",
        )
    return None
