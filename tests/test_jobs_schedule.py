"""Cron in a time zone across DST changes, computed with an explicit ``now``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from daemon.config.cron import normalize_crontab
from jobs.schedule import CronSchedule, interval_trigger

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


def fires(schedule: CronSchedule, start: datetime, count: int) -> list[datetime]:
    out: list[datetime] = []
    previous = None
    now = start
    for _ in range(count):
        nxt = schedule.get_next_fire_time(previous, now)
        assert nxt is not None
        out.append(nxt)
        previous = now = nxt
    return out


def utc(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%m-%d %H:%M")


def local(when: datetime) -> str:
    return when.astimezone(BERLIN).strftime("%m-%d %H:%M %Z")


def test_a_daily_job_keeps_its_local_time_when_clocks_go_forward() -> None:
    times = fires(CronSchedule("0 9 * * *", BERLIN), datetime(2026, 3, 27, tzinfo=UTC), 4)
    assert [local(t) for t in times] == [
        "03-27 09:00 CET",
        "03-28 09:00 CET",
        "03-29 09:00 CEST",
        "03-30 09:00 CEST",
    ]
    assert [utc(t) for t in times] == ["03-27 08:00", "03-28 08:00", "03-29 07:00", "03-30 07:00"]


def test_a_daily_job_at_a_repeated_hour_fires_once_when_clocks_go_back() -> None:
    # 25 October 2026: 02:00-03:00 happens twice in Berlin. Plain APScheduler 3 fires
    # "30 2 * * *" at 02:30 CEST and again at 02:30 CET; vigil fires once, like cron.
    times = fires(CronSchedule("30 2 * * *", BERLIN), datetime(2026, 10, 24, tzinfo=UTC), 3)
    assert [local(t) for t in times] == [
        "10-24 02:30 CEST",
        "10-25 02:30 CEST",
        "10-26 02:30 CET",
    ]


def test_the_repeated_hour_fires_once_by_the_wall_clock_for_hourly_jobs_too() -> None:
    start = datetime(2026, 10, 25, 0, 0, tzinfo=UTC)  # 02:00 CEST
    times = fires(CronSchedule("30 * * * *", BERLIN), start, 3)
    assert [local(t) for t in times] == ["10-25 02:30 CEST", "10-25 03:30 CET", "10-25 04:30 CET"]
    assert times[1] - times[0] == timedelta(hours=2)  # 02:30 CET already fired as CEST


def test_a_time_skipped_by_the_spring_change_fires_once_that_day() -> None:
    # 29 March 2026: 02:00-03:00 does not exist in Berlin.
    times = fires(CronSchedule("30 2 * * *", BERLIN), datetime(2026, 3, 28, tzinfo=UTC), 3)
    assert [utc(t) for t in times] == ["03-28 01:30", "03-29 01:30", "03-30 00:30"]
    assert local(times[1]) == "03-29 03:30 CEST"  # an hour later by the wall clock, once


def test_weekdays_mean_monday_to_friday_across_a_dst_change_in_new_york() -> None:
    schedule = CronSchedule(normalize_crontab("0 8 * * 1-5"), NEW_YORK)
    times = fires(schedule, datetime(2026, 3, 6, tzinfo=UTC), 5)  # Friday 6 March
    assert [t.astimezone(NEW_YORK).strftime("%a %d %H:%M") for t in times] == [
        "Fri 06 08:00",
        "Mon 09 08:00",  # New York switched to EDT on Sunday 8 March
        "Tue 10 08:00",
        "Wed 11 08:00",
        "Thu 12 08:00",
    ]
    assert times[0].astimezone(UTC).hour == 13 and times[1].astimezone(UTC).hour == 12


def test_an_interval_fires_at_its_first_due_time_then_every_interval() -> None:
    first = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    trigger = interval_trigger(timedelta(minutes=30), first_due=first)
    assert trigger.get_next_fire_time(None, first - timedelta(hours=1)) == first
    assert trigger.get_next_fire_time(first, first) == first + timedelta(minutes=30)


ZONES = ["Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "America/Santiago", "UTC"]


@pytest.mark.parametrize("zone_name", ZONES)
def test_over_two_years_daily_jobs_fire_once_a_day_and_no_wall_time_twice(zone_name: str) -> None:
    zone = ZoneInfo(zone_name)
    for expression in ("30 2 * * *", "0 0 * * *", "*/20 * * * *", "15 1-3 * * *"):
        times = fires(CronSchedule(expression, zone), datetime(2025, 1, 1, tzinfo=UTC), 800)
        if expression.startswith("*/20"):
            # March 1 to mid-April: the spring or autumn change in every zone listed
            times = fires(CronSchedule(expression, zone), datetime(2025, 3, 1, tzinfo=UTC), 3_200)
        instants = [t.astimezone(UTC) for t in times]
        assert instants == sorted(set(instants)), expression  # strictly increasing
        walls = [t.astimezone(zone).replace(tzinfo=None) for t in times]
        assert len(set(walls)) == len(walls), expression
        if expression in ("30 2 * * *", "0 0 * * *"):
            days = [t.astimezone(zone).date() for t in times]
            assert len(set(days)) == len(days) == 800, expression
            assert (days[-1] - days[0]).days == 799, expression  # no day left out
