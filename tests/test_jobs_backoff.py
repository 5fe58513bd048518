"""Idle backoff doubles after quiet beats and resets; delivery retries back off."""

from __future__ import annotations

from datetime import timedelta

import pytest

from daemon import events
from jobs.backoff import (
    AUTH_PAUSE,
    AUTH_PAUSE_MAX,
    FAILURE_BACKOFF_MAX,
    failure_interval,
    idle_interval,
    retry_delay,
)
from jobs.ledger import JobLedger

EVERY = timedelta(minutes=5)
MAX = timedelta(minutes=30)


def interval_after(replies: list[str]) -> list[timedelta]:
    """Feed beats into a ledger as the journal would; the interval after each one."""
    ledger = JobLedger()
    out = []
    for turn, kind in enumerate(replies, start=1):
        at = f"2026-05-04T10:{turn:02d}:00Z"
        ledger.feed(events.turn_started(turn, "beat", job="j", trigger="schedule", at=at))
        if kind == "skipped":
            ledger.feed(events.beat_skipped(turn, "outside_active_hours", at=at))
        elif kind == "failed":
            ledger.feed(events.turn_failed(turn, "model_error", "HTTP 529", at=at))
        else:
            ledger.feed(events.turn_completed(turn, quiet=kind == "quiet", at=at))
        out.append(idle_interval(EVERY, ledger.quiet_streak, after=2, maximum=MAX))
    return out


def test_the_interval_doubles_after_n_quiet_beats_up_to_the_maximum() -> None:
    minutes = [i.total_seconds() / 60 for i in interval_after(["quiet"] * 6)]
    assert minutes == [5, 10, 20, 30, 30, 30]


def test_a_reply_that_is_not_quiet_resets_the_interval() -> None:
    minutes = [
        i.total_seconds() / 60
        for i in interval_after(["quiet", "quiet", "quiet", "reply", "quiet", "quiet"])
    ]
    assert minutes == [5, 10, 20, 5, 5, 10]


def test_failed_and_skipped_beats_neither_extend_nor_reset_the_streak() -> None:
    minutes = [
        i.total_seconds() / 60 for i in interval_after(["quiet", "failed", "skipped", "quiet"])
    ]
    assert minutes == [5, 5, 5, 10]


def test_without_idle_backoff_the_interval_never_changes() -> None:
    assert idle_interval(EVERY, 100, after=None, maximum=MAX) == EVERY


def test_a_maximum_below_every_never_shortens_the_interval() -> None:
    assert idle_interval(EVERY, 10, after=1, maximum=timedelta(minutes=1)) == EVERY


def test_retry_delays_double_and_are_capped() -> None:
    base = timedelta(seconds=5)
    delays = [retry_delay(n, base, cap=timedelta(seconds=30)).total_seconds() for n in range(1, 6)]
    assert delays == [5, 10, 20, 30, 30]
    with pytest.raises(ValueError, match="start at 1"):
        retry_delay(0, base)


def test_failed_beats_double_the_interval_up_to_the_failure_maximum() -> None:
    every = timedelta(seconds=1)
    waits = [failure_interval(every, n) for n in range(5)]
    assert waits == [every, every * 2, every * 4, every * 8, every * 16]
    assert failure_interval(every, 200) == FAILURE_BACKOFF_MAX
    # A job slower than the maximum keeps its own interval.
    assert failure_interval(timedelta(hours=1), 3) == timedelta(hours=1)


def test_a_rejected_key_pauses_long_and_doubles_up_to_its_own_maximum() -> None:
    every = timedelta(seconds=1)
    waits = [failure_interval(every, n, auth=True) for n in range(1, 5)]
    assert waits == [AUTH_PAUSE, AUTH_PAUSE * 2, AUTH_PAUSE * 4, AUTH_PAUSE * 8]
    assert failure_interval(every, 200, auth=True) == AUTH_PAUSE_MAX
    assert failure_interval(timedelta(days=1), 1, auth=True) == timedelta(days=1)


def test_a_very_long_quiet_streak_stays_at_the_maximum() -> None:
    # 2**40 hours would overflow timedelta: the doubling stops at the maximum.
    hour = timedelta(hours=1)
    assert idle_interval(hour, 500, after=1, maximum=timedelta(days=2)) == timedelta(days=2)
