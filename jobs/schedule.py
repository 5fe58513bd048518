"""Triggers for APScheduler 3: fixed intervals and cron in a time zone, DST-safe.

APScheduler 3's ``CronTrigger`` fires a fixed-hour job twice on the night clocks go
back (``30 2 * * *`` in Europe/Berlin fires at 02:30 CEST and again at 02:30 CET).
:class:`CronSchedule` follows cron(8) instead: when the hour field is fixed (not ``*``
or ``*/n``), the second occurrence of a repeated wall-clock time is skipped, so a
daily job runs once that day. Hourly jobs (``*`` hours) still fire in both hours:
those are different instants an hour apart. On the night clocks go forward, a time
that does not exist fires once, an hour later by the wall clock (APScheduler's rule).

Both triggers answer ``get_next_fire_time(previous, now)`` like any APScheduler
trigger, so fire times can be computed with an explicit ``now`` (tests, catch-up).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, tzinfo

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

__all__ = ["CronSchedule", "interval_trigger"]


def _is_repeated_wall_time(when: datetime, zone: tzinfo) -> bool:
    """True for the second occurrence of an ambiguous local time (clocks went back)."""
    local = when.astimezone(zone)
    if local.fold != 1:
        return False
    first = local.replace(fold=0)
    return first.utcoffset() != local.utcoffset()


class CronSchedule(BaseTrigger):  # type: ignore[misc]  # APScheduler ships no type hints
    """A five-field cron expression (weekdays as names, see config) in ``zone``."""

    def __init__(self, expression: str, zone: tzinfo) -> None:
        self.expression = expression
        self.zone = zone
        self._cron = CronTrigger.from_crontab(expression, timezone=zone)
        hour = expression.split()[1]
        self._fixed_hour = not hour.startswith("*")

    def get_next_fire_time(
        self, previous_fire_time: datetime | None, now: datetime
    ) -> datetime | None:
        when: datetime | None = self._cron.get_next_fire_time(previous_fire_time, now)
        while when is not None and self._fixed_hour and _is_repeated_wall_time(when, self.zone):
            when = self._cron.get_next_fire_time(when, when)
        # APScheduler can hand back a non-existent wall time (spring forward); name the
        # instant it means in its proper local form.
        return None if when is None else when.astimezone(UTC).astimezone(self.zone)

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
