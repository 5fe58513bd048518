"""Beats missed while vigil was down, and what to do about them (pure).

After a restart, the beats that came due between the journal's last handled beat
(``since``: the last ``turn_started`` or ``beat_skipped``) and ``now`` were missed.
They are journaled with their count (one ``beat_skipped``, reason
``missed_while_down``), then the job's ``catch_up`` policy decides:

* ``"once"``: one beat runs now for all of them (coalesced);
* ``"skip"``: none runs; the job waits for its next due time.

``next_fire`` is any APScheduler trigger's ``get_next_fire_time``; for fixed intervals
:func:`missed_on_grid` counts arithmetically, so a long downtime costs nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

__all__ = [
    "CatchUpPolicy",
    "Missed",
    "NextFire",
    "missed_fire_times",
    "missed_on_grid",
    "next_on_grid",
    "runs_catch_up",
]

CatchUpPolicy = Literal["skip", "once"]
NextFire = Callable[[datetime | None, datetime], datetime | None]
DEFAULT_CAP = 10_000
_TICK = timedelta(microseconds=1)


@dataclass(frozen=True)
class Missed:
    """``count`` due times from ``first`` to ``last``; ``capped``: counting stopped there."""

    count: int
    first: datetime
    last: datetime
    capped: bool = False

    def describe(self) -> str:
        many = f"more than {self.count}" if self.capped else str(self.count)
        beats = "beat" if self.count == 1 and not self.capped else "beats"
        span = (
            f"at {_iso(self.first)}"
            if self.count == 1
            else f"from {_iso(self.first)} to {_iso(self.last)}"
        )
        return f"{many} {beats} came due while vigil was down ({span})"


def _iso(when: datetime) -> str:
    return when.isoformat(timespec="seconds")


def missed_fire_times(
    next_fire: NextFire, since: datetime, now: datetime, *, cap: int = DEFAULT_CAP
) -> Missed | None:
    """Fire times ``t`` with ``since < t <= now``; None when there are none."""
    when = next_fire(None, since + _TICK)
    first: datetime | None = None
    last = when
    count = 0
    while when is not None and when <= now:
        first = first or when
        last = when
        count += 1
        if count >= cap:
            return Missed(count, first, when, capped=True)
        when = next_fire(when, when)
    if first is None or last is None:
        return None
    return Missed(count, first, last)


def missed_on_grid(since: datetime, every: timedelta, now: datetime) -> Missed | None:
    """Due times ``since + k*every`` (k >= 1) up to ``now``."""
    count = (now - since) // every if now > since else 0
    if count < 1:
        return None
    return Missed(count, since + every, since + every * count)


def next_on_grid(since: datetime, every: timedelta, now: datetime) -> datetime:
    """The first ``since + k*every`` (k >= 1) strictly after ``now``."""
    if now < since + every:
        return since + every
    return since + every * ((now - since) // every + 1)


def runs_catch_up(policy: CatchUpPolicy, missed: Missed | None) -> bool:
    """Whether one catch-up beat runs now."""
    return policy == "once" and missed is not None


def first_interval_due(
    *,
    since: datetime | None,
    every: timedelta,
    now: datetime,
    missed: Missed | None,
    runs_now: bool,
    splay: timedelta,
    first_delay: timedelta,
) -> datetime:
    """When an ``every`` job that was not running beats first.

    ``since`` is the last beat that came due (from the journal), ``runs_now`` whether a
    beat runs at once (a catch-up, or a replayed turn). A job that never beat starts
    after ``first_delay`` plus its ``splay`` (so a fleet does not fire at once); after
    a beat that runs now, the next is one interval later; with missed beats not caught
    up (``catch_up = "skip"``) the next is on the old grid; otherwise one interval after
    the last.
    """
    if since is None:
        return now + first_delay + splay
    if runs_now:
        return now + every
    if missed is not None:
        return next_on_grid(since, every, now)
    return since + every


def rescheduled_due(
    *, last: datetime | None, every: timedelta, now: datetime, first_delay: timedelta
) -> datetime:
    """A changed schedule's next beat: one (new) interval after the last beat, never in
    the past, so a change fires neither early nor twice."""
    return now + first_delay if last is None else max(now, last + every)
