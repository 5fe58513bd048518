"""The fleet benchmark's numbers, from journal events (bench/fleet_stats.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from bench.fleet_stats import (
    beats_of,
    best_jain_index,
    completed_per_job,
    jain_index,
    percentile,
    window_stats,
)

T0 = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


def at(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def turn(due: float, start: float, delta: float, end: float, turn: int = 1) -> list[dict[str, Any]]:
    return [
        {"type": "turn_started", "at": at(start), "turn": turn, "trigger": "schedule",
         "due_at": at(due), "waited_s": start - due},
        {"type": "session_bound", "at": at(start + 0.5), "mode": "new"},
        {"type": "delta", "at": at(delta), "turn": turn, "text": "seen"},
        {"type": "delta", "at": at(delta + 0.1), "turn": turn, "text": " 1"},
        {"type": "turn_completed", "at": at(end), "turn": turn},
    ]  # fmt: skip


def test_a_turn_and_a_skip_become_beats_with_their_due_times() -> None:
    events = [
        *turn(due=10, start=12, delta=13, end=14),
        {"type": "beat_skipped", "at": at(50), "turn": 2, "reason": "no_capacity",
         "waited_s": 30.0},
    ]  # fmt: skip
    done, skipped = beats_of("a", events)
    assert (done.outcome, done.due, done.started, done.first_delta) == (
        "completed",
        T0 + timedelta(seconds=10),
        T0 + timedelta(seconds=12),
        T0 + timedelta(seconds=13),
    )
    assert done.waited_s == 2 and done.connected is not None and done.resumed is False
    assert (skipped.outcome, skipped.reason, skipped.due) == (
        "skipped",
        "no_capacity",
        T0 + timedelta(seconds=20),  # journaled when its 30 s wait ended
    )


def test_window_counts_rates_latency_and_a_growing_backlog() -> None:
    # one beat due every 2 s for a minute; one served every 4 s, each served at once
    # when it is the first in line: half the beats pile up
    beats = []
    served = 0.0
    for i in range(30):
        due = 2.0 * i
        start = max(due, served)
        served = start + 4
        beats += beats_of(f"j{i}", turn(due, start, start + 1, start + 3))
    stats = window_stats(beats, T0, T0 + timedelta(minutes=1))
    assert stats.offered == 30 and stats.offered_per_min == 30
    assert stats.completed == stats.started == 15  # started at 0, 4, ..., 56 s
    assert stats.due_to_first_delta.p50 is not None and stats.due_to_first_delta.p50 > 1
    assert stats.backlog_start == 0 and stats.backlog_end > 10
    assert 10 < stats.backlog_slope < 20  # 30 due, 15 served per minute
    assert not stats.kept_up(max_turns=4)
    assert stats.skipped == {} and stats.connects == stats.started


def test_a_queue_that_drains_kept_up() -> None:
    # one beat due every 3 s, each served within 2 s: the backlog never exceeds one
    beats = []
    for i in range(40):
        due = 3.0 * i
        beats += beats_of(f"j{i}", turn(due, due + 1, due + 1.5, due + 2))
    stats = window_stats(beats, T0 + timedelta(seconds=10), T0 + timedelta(seconds=100))
    assert stats.offered == 30 and stats.completed == 30
    assert stats.backlog_max == 1 and abs(stats.backlog_slope) < 1
    assert stats.kept_up(max_turns=4)
    assert stats.due_to_first_delta.p50 == 1.5 and stats.waited.p99 == 1


def test_percentiles_interpolate_between_ranks() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.5
    assert percentile(values, 99) == 99.01
    assert percentile([], 50) is None


def test_jain_index_is_one_when_equal_and_one_over_n_when_one_takes_all() -> None:
    assert jain_index([3, 3, 3, 3]) == 1.0
    assert jain_index([8, 0, 0, 0]) == 0.25
    assert jain_index([2, 3, 2, 3]) == 100 / 104
    assert jain_index([]) is None and jain_index([0, 0]) is None


def test_completed_per_job_counts_turns_ended_in_the_window_and_starved_jobs() -> None:
    beats = {
        "busy": beats_of(
            "busy",
            [*turn(due=1, start=1, delta=2, end=3), *turn(due=5, start=5, delta=6, end=7, turn=2)],
        ),
        "late": beats_of("late", turn(due=8, start=9, delta=10, end=12)),
        "starved": beats_of("starved", [{"type": "beat_skipped", "at": at(4), "reason": "x"}]),
    }
    got = completed_per_job(beats, T0 + timedelta(seconds=2), T0 + timedelta(seconds=10))
    assert got == {"busy": 2, "late": 0, "starved": 0}


def test_best_jain_index_is_what_whole_beats_allow() -> None:
    assert best_jain_index(12, 10) == 0.9
    assert best_jain_index(40, 10) == 1.0
    assert best_jain_index(0, 10) is None
    assert best_jain_index(5, 10) == 0.5
