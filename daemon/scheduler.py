"""When beats come due: a thin layer over APScheduler 3's ``AsyncIOScheduler``.

Every job is added with ``coalesce=True`` (late runs collapse into one),
``max_instances=1`` and an explicit ``misfire_grace_time`` (APScheduler's default of
one second silently drops a beat that is a little late, for example while the event
loop was busy journaling). The callback only dispatches: the supervisor decides
whether the beat runs or is skipped, and journals either way.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta, tzinfo
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

DueCallback = Callable[[str], Awaitable[None]]


class BeatScheduler:
    def __init__(self, on_due: DueCallback) -> None:
        self._on_due = on_due
        self._scheduler: Any = AsyncIOScheduler(timezone="UTC")

    def start(self) -> None:
        self._scheduler.start()

    def shutdown(self) -> None:
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)

    def pause(self) -> None:
        self._scheduler.pause()

    def add_interval(
        self,
        name: str,
        every: timedelta,
        *,
        first_due: datetime,
        jitter: timedelta | None = None,
    ) -> None:
        trigger = IntervalTrigger(
            seconds=every.total_seconds(),
            start_date=first_due,
            timezone="UTC",
            jitter=jitter.total_seconds() if jitter else None,
        )
        self._scheduler.add_job(
            self._on_due,
            trigger,
            args=[name],
            id=name,
            name=name,
            coalesce=True,
            max_instances=1,
            misfire_grace_time=max(1, int(every.total_seconds())),
            next_run_time=first_due,
            replace_existing=True,
        )

    def add_cron(self, name: str, expression: str, zone: tzinfo) -> None:
        """``expression``: five fields, weekdays already normalized (see config)."""
        self._scheduler.add_job(
            self._on_due,
            _cron_trigger(expression, zone),
            args=[name],
            id=name,
            name=name,
            coalesce=True,
            max_instances=1,
            misfire_grace_time=60,
            replace_existing=True,
        )

    def remove(self, name: str) -> None:
        if self._scheduler.get_job(name) is not None:
            self._scheduler.remove_job(name)

    def next_due(self, name: str) -> datetime | None:
        job = self._scheduler.get_job(name)
        when: datetime | None = getattr(job, "next_run_time", None) if job else None
        return when


def _cron_trigger(expression: str, zone: tzinfo) -> Any:
    return CronTrigger.from_crontab(expression, timezone=zone)
