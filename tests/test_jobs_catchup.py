"""Catch-up after downtime: how many beats were missed, and whether one runs now."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from jobs.catchup import (
    missed_fire_times,
    missed_on_grid,
    next_on_grid,
    runs_catch_up,
)
from jobs.schedule import CronSchedule

T0 = datetime(2026, 5, 4, 12, 0, 0, tzinfo=UTC)
EVERY = timedelta(minutes=10)


def test_stopped_for_several_intervals_counts_each_missed_beat() -> None:
    last_beat = T0
    restart = T0 + timedelta(minutes=47)  # due at 12:10, 12:20, 12:30, 12:40
    missed = missed_on_grid(last_beat, EVERY, restart)
    assert missed is not None
    assert (missed.count, missed.first, missed.last) == (4, T0 + EVERY, T0 + 4 * EVERY)
    assert "4 beats came due while vigil was down" in missed.describe()
    # once: exactly one beat now; skip: none, the next one on the old grid at 12:50
    assert runs_catch_up("once", missed) is True
    assert runs_catch_up("skip", missed) is False
    assert next_on_grid(last_beat, EVERY, restart) == T0 + 5 * EVERY


def test_a_restart_before_the_next_due_time_missed_nothing() -> None:
    assert missed_on_grid(T0, EVERY, T0 + timedelta(minutes=9, seconds=59)) is None
    assert runs_catch_up("once", None) is False
    assert next_on_grid(T0, EVERY, T0 + timedelta(minutes=3)) == T0 + EVERY


def test_a_due_time_exactly_at_the_restart_counts_as_missed() -> None:
    missed = missed_on_grid(T0, EVERY, T0 + EVERY)
    assert missed is not None and missed.count == 1
    assert missed.describe().startswith("1 beat came due while vigil was down (at ")
    assert next_on_grid(T0, EVERY, T0 + EVERY) == T0 + 2 * EVERY


def test_cron_beats_missed_over_a_weekend_in_the_jobs_zone() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    weekdays = CronSchedule("0 9 * * mon-fri", berlin)
    friday_beat = datetime(2026, 5, 8, 9, 0, 1, tzinfo=berlin)
    tuesday_noon = datetime(2026, 5, 12, 12, 0, tzinfo=berlin)
    missed = missed_fire_times(weekdays.get_next_fire_time, friday_beat, tuesday_noon)
    assert missed is not None
    assert missed.count == 2  # Monday and Tuesday 09:00; the weekend had none
    assert missed.first == datetime(2026, 5, 11, 9, 0, tzinfo=berlin)
    assert missed.last == datetime(2026, 5, 12, 9, 0, tzinfo=berlin)


def test_counting_stops_at_a_cap_and_says_so() -> None:
    every_minute = CronSchedule("* * * * *", UTC)
    missed = missed_fire_times(
        every_minute.get_next_fire_time, T0, T0 + timedelta(days=30), cap=100
    )
    assert missed is not None and missed.capped and missed.count == 100
    assert missed.describe().startswith("more than 100 beats came due")


def test_no_cron_time_in_the_gap_means_nothing_missed() -> None:
    daily = CronSchedule("0 9 * * *", UTC)
    assert missed_fire_times(daily.get_next_fire_time, T0, T0 + timedelta(hours=20)) is None
