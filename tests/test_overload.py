"""The over_capacity alarm's rate limit and the status JSON of the queue's load."""

from __future__ import annotations

from daemon.agent.fairqueue import FairQueue
from daemon.runtime.overload import OverloadAlarm, load_json
from daemon.testing.fakes import FakeClock


def test_the_alarm_rings_at_most_once_a_minute() -> None:
    clock = FakeClock()
    alarm = OverloadAlarm(clock, every_s=60)
    rang = []
    for _ in range(25):  # a no_capacity skip every 10 s for 4 minutes
        rang.append(alarm.ready())
        clock.advance(10)
    assert rang == [True, *([False] * 5 + [True]) * 4]


def test_status_json_of_an_overloaded_queue() -> None:
    clock = FakeClock()
    queue = FairQueue(clock)
    queue.arrive("a", clock.monotonic())
    queue.arrive("b", clock.monotonic())
    clock.advance(12.34)
    queue.gave_up("a")
    assert load_json(queue.load()) == {
        "over_capacity": True,
        "backlog": 1,
        "oldest_waiting": {"job": "b", "waited_s": 12.3},
        "offered_per_min": 9.7,
        "served_per_min": 0.0,
        "no_capacity_skips": 1,
        "window_s": 60.0,
    }
    queue.served("b")
    assert load_json(queue.load())["oldest_waiting"] is None
