"""Durations as people write them in vigil's config: ``"30m"``, ``"1h30m"``, ``"500ms"``.

Grammar: one or more ``<number><unit>`` parts, largest unit first, each unit at most
once, optionally separated by spaces. Units are ``d``, ``h``, ``m``, ``s`` and ``ms``
(lower case: ``M`` could mean months). Numbers may have a fractional part
(``"1.5h"``); the result must be a whole number of microseconds (the resolution of
:class:`datetime.timedelta`). Zero is accepted; whether a value must be positive is
the caller's rule.

:func:`format_duration` writes the canonical form, which :func:`parse_duration` reads
back to the same value.
"""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal

__all__ = ["format_duration", "parse_duration"]

_MICROS: dict[str, int] = {
    "d": 86_400_000_000,
    "h": 3_600_000_000,
    "m": 60_000_000,
    "s": 1_000_000,
    "ms": 1_000,
}
_ORDER = tuple(_MICROS)  # largest first
_MAX_MICROS = (timedelta.max.days + 1) * _MICROS["d"] - 1
_EXPECTED = 'expected a number followed by ms, s, m, h or d, like "30m" or "1h30m"'
_PART = re.compile(r"(?P<number>\d+(?:\.\d+)?)(?P<unit>[^\d\s.]*)\s*")


def parse_duration(text: str) -> timedelta:
    """Parse ``text`` such as ``"1h30m"`` into a timedelta.

    Raises ``ValueError`` whose message quotes the input and says what was expected.
    """
    stripped = text.strip()
    if not stripped:
        raise ValueError(f"bad duration {text!r}: it is empty; {_EXPECTED}")
    if stripped.startswith("-"):
        raise ValueError(f"bad duration {text!r}: must not be negative")
    total = Decimal(0)
    last_unit = -1
    pos = 0
    while pos < len(stripped):
        match = _PART.match(stripped, pos)
        if match is None:
            raise ValueError(f"bad duration {text!r}: {_EXPECTED}")
        unit = match["unit"]
        if not unit:
            raise ValueError(f"bad duration {text!r}: {match['number']} has no unit; {_EXPECTED}")
        if unit not in _MICROS:
            raise ValueError(f"bad duration {text!r}: unknown unit {unit!r}; {_EXPECTED}")
        rank = _ORDER.index(unit)
        if rank <= last_unit:
            raise ValueError(
                f"bad duration {text!r}: write units from largest to smallest, "
                'each at most once, like "1h30m"'
            )
        last_unit = rank
        total += Decimal(match["number"]) * _MICROS[unit]
        pos = match.end()
    if total != total.to_integral_value():
        raise ValueError(f"bad duration {text!r}: finer than a microsecond")
    if total > _MAX_MICROS:
        raise ValueError(f"bad duration {text!r}: too large (at most {timedelta.max.days}d)")
    return timedelta(microseconds=int(total))


def format_duration(value: timedelta) -> str:
    """Write ``value`` in canonical form: ``"1h30m"``, ``"500ms"``, ``"1.00025s"``, ``"0s"``.

    Raises ``ValueError`` for negative values, which the grammar cannot express.
    """
    if value < timedelta(0):
        raise ValueError(f"cannot format negative duration {value!r}")
    micros = value // timedelta(microseconds=1)
    if micros == 0:
        return "0s"
    parts: list[str] = []
    for unit in ("d", "h", "m"):
        count, micros = divmod(micros, _MICROS[unit])
        if count:
            parts.append(f"{count}{unit}")
    seconds, sub = divmod(micros, _MICROS["s"])
    if sub % _MICROS["ms"] == 0:
        if seconds:
            parts.append(f"{seconds}s")
        if sub:
            parts.append(f"{sub // _MICROS['ms']}ms")
    else:
        fraction = f"{sub:06d}".rstrip("0")
        parts.append(f"{seconds}.{fraction}s")
    return "".join(parts)
