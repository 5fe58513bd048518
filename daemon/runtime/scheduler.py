"""When beats come due: a thin layer over APScheduler 3's ``AsyncIOScheduler``.

Every job is added with ``coalesce=True`` (late runs collapse into one),
``max_instances=1`` and an explicit ``misfire_grace_time`` (APScheduler's default of
one second silently drops a beat that is a little late, for example while the event
loop was busy journaling). The callback only dispatches: the supervisor decides
whether the beat runs or is skipped, and journals either way.

Cron jobs use :class:`jobs.schedule.CronSchedule` (one fire per wall-clock time on the
night clocks go back). Beats missed while vigil was down are not APScheduler's
business: its job store lives in memory, and the supervisor applies ``catch_up``.
Re-adding a job under the same name replaces it (a reload, an idle-backoff step).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta, tzinfo
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from jobs.schedule import CronSchedule, interval_trigger

DueCallback = Callable[[str], Awaitable[None]]
CRON_MISFIRE_GRACE_S = 60


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
        self._scheduler.add_job(
            self._on_due,
            interval_trigger(every, first_due=first_due, jitter=jitter),
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
            CronSchedule(expression, zone),
            args=[name],
            id=name,
            name=name,
            coalesce=True,
            max_instances=1,
            misfire_grace_time=CRON_MISFIRE_GRACE_S,
            replace_existing=True,
        )

    def remove(self, name: str) -> None:
        if self._scheduler.get_job(name) is not None:
            self._scheduler.remove_job(name)

    def has(self, name: str) -> bool:
        return self._scheduler.get_job(name) is not None

    def next_due(self, name: str) -> datetime | None:
        job = self._scheduler.get_job(name)
        when: datetime | None = getattr(job, "next_run_time", None) if job else None
        return when
