"""Cron expressions: crontab weekday numbers normalised for APScheduler, and checked
that they ever fire."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from apscheduler.triggers.cron import CronTrigger

from daemon.config.fields import _fail

_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_DOW_ITEM = re.compile(r"(?:(?P<all>\*)|(?P<a>\w+)(?:-(?P<b>\w+))?)(?:/(?P<step>\d+))?")


def _weekday_number(token: str) -> int | None:
    """Standard crontab numbering: 0 or 7 is Sunday, 1 is Monday."""
    if token.isdigit():
        return int(token) if int(token) <= 7 else None
    lowered = token.lower()
    return _WEEKDAYS.index(lowered) if lowered in _WEEKDAYS else None


def _weekday_runs(days: set[int]) -> str:
    """Days (0 = Sunday) as names from Monday on, consecutive ones joined: ``mon-fri,sun``."""
    ordered = [day for day in (1, 2, 3, 4, 5, 6, 0) if day in days]
    runs: list[list[int]] = []
    for day in ordered:
        if runs and (runs[-1][-1] + 1) % 7 == day:
            runs[-1].append(day)
        else:
            runs.append([day])
    return ",".join(
        _WEEKDAYS[run[0]] if len(run) == 1 else f"{_WEEKDAYS[run[0]]}-{_WEEKDAYS[run[-1]]}"
        for run in runs
    )


def _standard_weekdays(field: str) -> str | None:
    """A crontab day-of-week field as weekday names, or None when it cannot be read."""
    days: set[int] = set()
    for item in field.split(","):
        match = _DOW_ITEM.fullmatch(item)
        step = int(match["step"] or 1) if match else 0
        if match is None or step == 0:
            return None
        first: int | None
        last: int | None
        if match["all"]:
            first, last = 0, 6
        else:
            first = _weekday_number(match["a"])
            if match["b"] is not None:
                last = _weekday_number(match["b"])
            else:
                last = 7 if match["step"] else first
            if first is None or last is None:
                return None
            if last == 0 < first:
                last = 7  # "mon-sun": Sunday as the end of the week
            if last < first:
                return None
        days.update(day % 7 for day in range(first, last + 1, step))
    return "*" if len(days) == 7 else _weekday_runs(days)


def normalize_crontab(expression: str) -> str:
    """Return ``expression`` with its day-of-week field written as names (``mon-fri``).

    APScheduler 3's ``CronTrigger.from_crontab`` counts weekdays from 0 = Monday, so
    the standard crontab ``1-5`` (Monday to Friday) would fire Tuesday to Saturday and
    ``0``/``7`` (Sunday) would be Monday/an error. Names mean the same to both. Fields
    this cannot read are returned unchanged for APScheduler to judge.
    """
    fields = expression.split()
    if len(fields) != 5:
        return expression
    weekdays = _standard_weekdays(fields[4])
    if weekdays is None:
        return expression
    return " ".join([*fields[:4], weekdays])


_CRON_SHAPE = (
    'expected five fields (minute hour day-of-month month day-of-week), like "*/15 8-18 * * 1-5"'
)
# Any date a five-field expression can match recurs within 28 years (the calendar's
# cycle), so one that matches nothing from here on never fires.
_CRON_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


def _cron(value: str) -> str:
    fields = value.split()
    if len(fields) == 5 and _standard_weekdays(fields[4]) is None:
        raise _fail(
            f"bad cron expression {value!r}: cannot read day-of-week {fields[4]!r}; use "
            "0-7 (0 and 7 are Sunday) or sun-sat, ranges low to high, like 1-5 or mon,wed,fri"
        )
    normalized = normalize_crontab(value)
    try:
        trigger = CronTrigger.from_crontab(normalized, timezone=UTC)
    except ValueError as exc:
        raise _fail(f"bad cron expression {value!r}: {exc}; {_CRON_SHAPE}") from None
    if trigger.get_next_fire_time(None, _CRON_EPOCH) is None:
        raise _fail(
            f"cron expression {value!r} never fires: no date has that day of the month "
            "in those months"
        )
    return normalized
