"""Triggers for APScheduler 3: fixed intervals, and cron on a time zone's wall clock.

APScheduler 3.11's ``CronTrigger`` mishandles DST in zones that have it (measured in
Europe/Berlin): a fixed-hour job fires twice on the night clocks go back (``30 2 * *
*`` at 02:30 CEST and again at 02:30 CET), a midnight job is skipped the day after
clocks go forward, and fed UTC instants it can return one fire time forever.

:class:`CronSchedule` therefore uses APScheduler's cron fields on *wall-clock* time
only (a fixed zone, no DST) and maps each matching wall time to an instant itself:

* every wall-clock time that matches fires exactly once;
* on the night clocks go back, the repeated hour's times fire at their first
  occurrence only (so an hourly job has one two-hour gap that night);
* a wall time that does not exist (clocks go forward) fires at the instant after the
  jump (02:30 becomes 03:30), once.

Both triggers answer ``get_next_fire_time(previous, now)`` like any APScheduler
trigger, so fire times can be computed with an explicit ``now`` (tests, catch-up).
``CronSchedule`` returns aware UTC datetimes.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, tzinfo

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

__all__ = ["CronSchedule", "interval_trigger"]

_TICK = timedelta(microseconds=1)
_SECOND = timedelta(seconds=1)
_MAX_STEPS = 10_000  # candidates skipped in a row; only a repeated hour causes any


class CronSchedule(BaseTrigger):  # type: ignore[misc]  # APScheduler ships no type hints
    """A five-field cron expression (weekdays as names, see config) in ``zone``."""

    def __init__(self, expression: str, zone: tzinfo) -> None:
        self.expression = expression
        self.zone = zone
        # Wall-clock arithmetic: the fields evaluated on naive local times posing as UTC.
        self._wall = CronTrigger.from_crontab(expression, timezone=UTC)

    def get_next_fire_time(
        self, previous_fire_time: datetime | None, now: datetime
    ) -> datetime | None:
        # After the previous fire if there is one (as APScheduler's own triggers do),
        # else from ``now``; the result is the first fire time >= start.
        if previous_fire_time is not None:
            start = previous_fire_time.astimezone(UTC) + _TICK
        else:
            start = now.astimezone(UTC)
        wall = start.astimezone(self.zone).replace(tzinfo=None)
        for _ in range(_MAX_STEPS):
            candidate = self._wall.get_next_fire_time(None, wall.replace(tzinfo=UTC))
            if candidate is None:
                return None
            local = candidate.replace(tzinfo=None)
            # fold=0: the first occurrence of a repeated time; for a time that does not
            # exist, the offset before the jump, i.e. the instant just after it.
            when: datetime = local.replace(tzinfo=self.zone, fold=0).astimezone(UTC)
            if when >= start:
                return when
            wall = local + _SECOND  # already fired at its first occurrence
        return None

    def __str__(self) -> str:
        return f"cron[{self.expression!r}, {self.zone}]"

    def __repr__(self) -> str:
        return f"<CronSchedule {self.expression!r} zone={self.zone}>"


def interval_trigger(
    every: timedelta, *, first_due: datetime, jitter: timedelta | None = None
) -> IntervalTrigger:
    """Fire at ``first_due`` and every ``every`` after it (plus up to ``jitter``)."""
    return IntervalTrigger(
        seconds=every.total_seconds(),
        start_date=first_due,
        timezone="UTC",
        jitter=jitter.total_seconds() if jitter else None,
    )
