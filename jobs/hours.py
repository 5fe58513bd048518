"""Active hours: the part of the day, in a job's time zone, when its beats may run.

``ActiveHours.parse("08:00-22:00")`` reads a window; ``allows(now, zone)`` says whether
an instant falls inside it. The start is inclusive, the end exclusive, so
``"08:00-22:00"`` allows 08:00 up to 21:59:59. A window whose end is before its start
crosses midnight (``"22:00-06:00"``); ``"24:00"`` is the end of the day. Pure.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, tzinfo

__all__ = ["ActiveHours"]

_WINDOW = re.compile(r"\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*")
_DAY_MINUTES = 24 * 60


def _minutes(hour: str, minute: str, text: str, *, end: bool) -> int:
    h, m = int(hour), int(minute)
    if m > 59 or h > 24 or (h == 24 and (m != 0 or not end)):
        raise ValueError(
            f"bad active_hours {text!r}: {hour}:{minute} is not a time of day "
            '(00:00 to 23:59; "24:00" only as the end)'
        )
    return h * 60 + m


@dataclass(frozen=True)
class ActiveHours:
    """A daily window ``[start, end)`` in minutes after local midnight (0 to 1440)."""

    start: int
    end: int

    @classmethod
    def parse(cls, text: str) -> ActiveHours:
        """``"HH:MM-HH:MM"``; ``ValueError`` quotes the input and says what is wrong."""
        match = _WINDOW.fullmatch(text)
        if match is None:
            raise ValueError(
                f'bad active_hours {text!r}: expected "HH:MM-HH:MM" in 24-hour time, '
                'like "08:00-22:00" (or "22:00-06:00" across midnight)'
            )
        start = _minutes(match[1], match[2], text, end=False)
        end = _minutes(match[3], match[4], text, end=True)
        if start == end % _DAY_MINUTES:
            raise ValueError(
                f"bad active_hours {text!r}: start and end are the same time; "
                "leave active_hours out to allow beats all day"
            )
        return cls(start, end)

    def contains_minute(self, minute_of_day: int) -> bool:
        if self.start < self.end:
            return self.start <= minute_of_day < self.end
        return minute_of_day >= self.start or minute_of_day < self.end

    def allows(self, now: datetime, zone: tzinfo) -> bool:
        """Whether the aware instant ``now`` is inside the window, read in ``zone``."""
        local = now.astimezone(zone)
        return self.contains_minute(local.hour * 60 + local.minute)

    def __str__(self) -> str:
        def hhmm(minutes: int) -> str:
            return f"{minutes // 60:02d}:{minutes % 60:02d}"

        return f"{hhmm(self.start)}-{hhmm(self.end)}"
