"""Backoff arithmetic (pure): idle beats stretch the interval; failed deliveries wait.

``idle_interval``: after ``after`` quiet beats in a row the interval doubles, and
doubles again with each further quiet beat, up to ``maximum``; a streak shorter than
``after`` (a non-quiet reply resets it to 0) gives the base interval.

``retry_delay``: the wait before retry ``n`` (1-based) of a failed delivery: ``base``,
then doubling, never more than ``cap``.
"""

from __future__ import annotations

from datetime import timedelta

__all__ = ["idle_interval", "retry_delay"]

_MAX_DOUBLINGS = 40  # 2**40 intervals: far beyond any maximum; keeps the numbers finite


def idle_interval(
    every: timedelta, quiet_streak: int, *, after: int | None, maximum: timedelta
) -> timedelta:
    if after is None or quiet_streak < after:
        return every
    doublings = min(quiet_streak - after + 1, _MAX_DOUBLINGS)
    return max(every, min(every * (1 << doublings), maximum))


def retry_delay(
    retry: int, base: timedelta, *, cap: timedelta = timedelta(minutes=10)
) -> timedelta:
    if retry < 1:
        raise ValueError(f"retry numbers start at 1, got {retry}")
    return min(base * (1 << min(retry - 1, _MAX_DOUBLINGS)), cap)
