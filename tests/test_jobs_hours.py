"""Active hours: which instants a job's window allows, in its own time zone."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from jobs.hours import ActiveHours

BERLIN = ZoneInfo("Europe/Berlin")


def at(text: str, zone: ZoneInfo = BERLIN) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=zone)


def test_a_day_window_includes_its_start_and_excludes_its_end() -> None:
    hours = ActiveHours.parse("08:00-22:00")
    assert not hours.allows(at("2026-03-02T07:59"), BERLIN)
    assert hours.allows(at("2026-03-02T08:00"), BERLIN)
    assert hours.allows(at("2026-03-02T21:59"), BERLIN)
    assert not hours.allows(at("2026-03-02T22:00"), BERLIN)


def test_a_window_across_midnight() -> None:
    hours = ActiveHours.parse("22:00-06:00")
    assert hours.allows(at("2026-03-02T23:30"), BERLIN)
    assert hours.allows(at("2026-03-03T05:59"), BERLIN)
    assert not hours.allows(at("2026-03-03T06:00"), BERLIN)
    assert not hours.allows(at("2026-03-03T12:00"), BERLIN)


def test_the_window_is_read_in_the_jobs_zone_not_utc() -> None:
    hours = ActiveHours.parse("08:00-22:00")
    # 06:30 UTC is 08:30 in Berlin in summer (UTC+2) and 07:30 in winter (UTC+1).
    summer = datetime(2026, 7, 1, 6, 30, tzinfo=UTC)
    winter = datetime(2026, 1, 15, 6, 30, tzinfo=UTC)
    assert hours.allows(summer, BERLIN)
    assert not hours.allows(winter, BERLIN)
    assert not hours.allows(summer, UTC)


def test_24_00_ends_the_day_and_the_text_form_is_canonical() -> None:
    hours = ActiveHours.parse(" 9:05 - 24:00 ")
    assert str(hours) == "09:05-24:00"
    assert hours.allows(at("2026-03-02T23:59"), BERLIN)
    assert not hours.allows(at("2026-03-02T00:00"), BERLIN)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("8-22", 'expected "HH:MM-HH:MM"'),
        ("08:00", 'expected "HH:MM-HH:MM"'),
        ("08:60-22:00", "08:60 is not a time of day"),
        ("24:00-06:00", "24:00 is not a time of day"),
        ("25:00-06:00", "25:00 is not a time of day"),
        ("08:00-08:00", "start and end are the same time"),
        ("00:00-24:00", "start and end are the same time"),
    ],
)
def test_bad_windows_say_what_is_wrong(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why) as info:
        ActiveHours.parse(text)
    assert repr(text) in str(info.value)
