"""Schedules: when each job's beats come due, after downtime, a reload or a backoff.

The arithmetic is pure (:mod:`jobs.catchup`); this module reads the job's ledger and
the clock, journals the beats missed while down, and hands due times to the
:class:`~daemon.runtime.context.Schedule`.
"""

from __future__ import annotations

from datetime import timedelta

from daemon.runtime.context import Runtime
from daemon.runtime.job import Job
from jobs.catchup import (
    Missed,
    first_interval_due,
    missed_fire_times,
    missed_on_grid,
    rescheduled_due,
    runs_catch_up,
)
from jobs.schedule import CronSchedule
from jobs.splay import first_beat_splay

__all__ = ["FIRST_BEAT_DELAY", "Scheduling"]

FIRST_BEAT_DELAY = timedelta(seconds=1)


class Scheduling:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    def schedule_new(self, name: str, *, replaying: bool) -> bool:
        """Schedule a job that was not running; journal beats it missed while down.

        Returns whether a catch-up beat should run now (``catch_up = "once"``). A beat
        being replayed counts as that one beat.
        """
        job = self.rt.jobs[name]
        cfg = job.config
        now = self.rt.clock.now()
        since = job.ledger.last_due_at
        interval = job.wanted_interval()
        missed: Missed | None = None
        if since is not None:
            if interval is not None:
                missed = missed_on_grid(since, interval, now)
            else:
                cron = CronSchedule(cfg.cron or "", cfg.zone)
                missed = missed_fire_times(cron.get_next_fire_time, since, now)
        run_now = runs_catch_up(cfg.catch_up, missed) and not replaying
        if missed is not None:
            self._journal_missed(job, missed, replaying=replaying)
        if interval is None:
            self.rt.schedule.add_cron(name, cfg.cron or "", cfg.zone)
            return run_now
        first = first_interval_due(
            since=since,
            every=interval,
            now=now,
            missed=missed,
            runs_now=replaying or run_now,
            splay=first_beat_splay(name, cfg.jitter),
            first_delay=FIRST_BEAT_DELAY,
        )
        job.interval = interval
        self.rt.schedule.add_interval(name, interval, first_due=first, jitter=cfg.jitter)
        return run_now

    def _journal_missed(self, job: Job, missed: Missed, *, replaying: bool) -> None:
        policy = job.config.catch_up
        if replaying:
            then = "the interrupted turn is replayed now and stands in for them"
        elif policy == "once":
            then = 'catch_up = "once": one beat runs now for all of them'
        else:
            then = 'catch_up = "skip": none runs; the next beat comes at its due time'
        job.runner.skip(
            "missed_while_down",
            f"{missed.describe()}; {then}",
            count=missed.count,
            first_due=missed.first.isoformat(),
            last_due=missed.last.isoformat(),
            capped=missed.capped,
            catch_up=policy,
        )

    def reschedule(self, job: Job) -> None:
        """Apply a changed schedule without firing early or twice: the next beat is one
        (new) interval after the last beat, or the cron's next fire time."""
        cfg = job.config
        interval = job.wanted_interval()
        if interval is None:
            job.interval = None
            self.rt.schedule.add_cron(job.name, cfg.cron or "", cfg.zone)
            return
        first = rescheduled_due(
            last=job.ledger.last_started_at or job.ledger.last_due_at,
            every=interval,
            now=self.rt.clock.now(),
            first_delay=FIRST_BEAT_DELAY,
        )
        job.interval = interval
        self.rt.schedule.add_interval(job.name, interval, first_due=first, jitter=cfg.jitter)

    def apply_backoff(self, job: Job) -> None:
        """After a beat: stretch or reset the interval when the quiet streak or the run
        of failed beats says so."""
        interval = job.wanted_interval()
        if job.retired or interval is None or interval == job.interval:
            return
        previous = job.interval
        self.reschedule(job)
        failures = job.ledger.failures
        self.rt.log.info(
            "failure_backoff" if failures else "idle_backoff",
            job=job.name,
            quiet_streak=job.ledger.quiet_streak,
            failures=failures,
            interval_s=interval.total_seconds(),
            previous_interval_s=previous.total_seconds() if previous else None,
        )
