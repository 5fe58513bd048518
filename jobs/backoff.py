"""Backoff arithmetic (pure): idle and failing beats stretch the interval; failed
deliveries wait.

``idle_interval``: after ``after`` quiet beats in a row the interval doubles, and
doubles again with each further quiet beat, up to ``maximum``; a streak shorter than
``after`` (a non-quiet reply resets it to 0) gives the base interval.

``failure_interval``: after ``failures`` failed beats in a row (the model API, the CLI
or the connection failing) the interval doubles per failure, up to
``FAILURE_BACKOFF_MAX`` (never below ``every``). A rejected API key does not fix
itself, so an authentication failure waits at least ``AUTH_PAUSE`` and doubles from
there up to ``AUTH_PAUSE_MAX``: no tight loop of 401s.

``retry_delay``: the wait before retry ``n`` (1-based) of a failed delivery: ``base``,
then doubling, never more than ``cap``.
"""

from __future__ import annotations

from datetime import timedelta

__all__ = [
    "AUTH_PAUSE",
    "AUTH_PAUSE_MAX",
    "BACKOFF_REASONS",
    "FAILURE_BACKOFF_MAX",
    "failure_interval",
    "idle_interval",
    "retry_delay",
]

# Failures of the model API, the CLI or the connection: the next beats back off.
# (``max_budget_exceeded`` is the job's own per-beat cap working, not a fault.)
BACKOFF_REASONS = frozenset(
    {"model_error", "auth_failed", "timeout", "cli_died", "connect_failed", "resume_rejected"}
)
_MAX_DOUBLINGS = 40  # 2**40 intervals: far beyond any maximum; keeps the numbers finite
FAILURE_BACKOFF_MAX = timedelta(minutes=30)
AUTH_PAUSE = timedelta(minutes=10)
AUTH_PAUSE_MAX = timedelta(hours=2)


def idle_interval(
    every: timedelta, quiet_streak: int, *, after: int | None, maximum: timedelta
) -> timedelta:
    if after is None or quiet_streak < after:
        return every
    return max(every, _doubled(every, quiet_streak - after + 1, maximum))


def failure_interval(every: timedelta, failures: int, *, auth: bool = False) -> timedelta:
    if failures < 1:
        return every
    if auth:
        base = max(every, AUTH_PAUSE)
        return _doubled(base, failures - 1, max(base, AUTH_PAUSE_MAX))
    return max(every, _doubled(every, failures, FAILURE_BACKOFF_MAX))


def _doubled(base: timedelta, doublings: int, cap: timedelta) -> timedelta:
    """``base`` doubled ``doublings`` times, but never past ``cap`` (nor overflowing)."""
    value = base
    for _ in range(min(doublings, _MAX_DOUBLINGS)):
        if value >= cap:
            break
        value *= 2
    return min(value, cap)


def retry_delay(
    retry: int, base: timedelta, *, cap: timedelta = timedelta(minutes=10)
) -> timedelta:
    if retry < 1:
        raise ValueError(f"retry numbers start at 1, got {retry}")
    return min(base * (1 << min(retry - 1, _MAX_DOUBLINGS)), cap)
