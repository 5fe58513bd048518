"""The fair order of waiting beats (issue 15), over a fake clock."""

from __future__ import annotations

import pytest

from daemon.agent.fairqueue import FairQueue
from daemon.testing.fakes import FakeClock


def nobody_live(key: str) -> bool:
    return False


def serve(queue: FairQueue, live: set[str] | None = None) -> str:
    key = queue.next(lambda k: k in (live or set()))
    assert key is not None
    queue.served(key)
    return key


def test_oldest_due_first_whatever_the_arrival_order() -> None:
    clock = FakeClock()
    queue = FairQueue(clock)
    t = clock.monotonic()
    queue.arrive("late", t + 2)
    queue.arrive("early", t)
    queue.arrive("middle", t + 1)
    assert [serve(queue) for _ in range(3)] == ["early", "middle", "late"]
    assert queue.next(nobody_live) is None


def test_a_live_client_breaks_ties_but_never_jumps_an_older_beat() -> None:
    clock = FakeClock()
    queue = FairQueue(clock)
    t = clock.monotonic()
    queue.arrive("cold", t)
    queue.arrive("warm", t)
    queue.arrive("hot", t + 0.001)  # live, but due a millisecond later
    assert serve(queue, live={"warm", "hot"}) == "warm"
    assert serve(queue, live={"hot"}) == "cold"
    assert serve(queue, live={"hot"}) == "hot"


def test_equal_places_without_live_clients_go_in_arrival_order() -> None:
    clock = FakeClock()
    queue = FairQueue(clock)
    for key in ("b", "a", "c"):
        queue.arrive(key, clock.monotonic())
    assert [serve(queue) for _ in range(3)] == ["b", "a", "c"]


def test_a_beat_that_gave_up_keeps_its_conversations_place() -> None:
    clock = FakeClock()
    queue = FairQueue(clock)
    t0 = clock.monotonic()
    queue.arrive("starved", t0)
    queue.gave_up("starved")  # waited past its window: skipped no_capacity
    clock.advance(2)
    queue.arrive("other", t0 + 1.5)  # due before starved's next beat
    assert queue.arrive("starved", t0 + 2) == t0  # ... but starved is owed since t0
    assert serve(queue) == "starved"
    # Once served, the place is cleared: the next beat is placed by its own due time.
    assert queue.arrive("starved", t0 + 4) == t0 + 4
    assert serve(queue) == "other"


def test_places_carry_over_several_skips_and_rotate_a_starved_fleet() -> None:
    """Four conversations due together every 2 s, one slot per round: served round
    robin, not the same first-arriving one every time."""
    clock = FakeClock()
    queue = FairQueue(clock)
    keys = ["a", "b", "c", "d"]
    served: list[str] = []
    for _ in range(8):
        for key in keys:
            queue.arrive(key, clock.monotonic())
        served.append(serve(queue))
        for key in keys:
            if key in queue:
                queue.gave_up(key)
        clock.advance(2)
    assert served == keys + keys


def test_drop_forgets_the_place_of_a_beat_skipped_for_its_own_reason() -> None:
    clock = FakeClock()
    queue = FairQueue(clock)
    t0 = clock.monotonic()
    queue.arrive("a", t0)
    queue.gave_up("a")
    queue.drop("a")  # e.g. outside its active hours for a while
    assert queue.arrive("a", t0 + 100) == t0 + 100


def test_one_waiting_beat_per_conversation() -> None:
    queue = FairQueue(FakeClock())
    queue.arrive("a", 0.0)
    with pytest.raises(ValueError, match="already waiting"):
        queue.arrive("a", 1.0)


def test_load_reports_backlog_oldest_and_rates_over_the_window() -> None:
    clock = FakeClock()
    queue = FairQueue(clock, window_s=60)
    t0 = clock.monotonic()
    empty = queue.load()
    assert (empty.backlog, empty.oldest_key, empty.oldest_waited_s) == (0, None, None)
    assert not empty.over_capacity
    for i in range(6):
        queue.arrive(f"c{i}", t0)
    clock.advance(30)
    serve(queue)
    serve(queue)
    queue.gave_up("c2")
    load = queue.load()
    assert load.backlog == 3 and load.oldest_key == "c3" and load.oldest_waited_s == 30
    assert load.offered_per_min == 12  # 6 beats in the 30 s the queue has existed
    assert load.served_per_min == 4
    assert load.gave_up == 1 and load.over_capacity
    clock.advance(61)  # all of that has left the window
    later = queue.load()
    assert later.offered_per_min == later.served_per_min == 0 and not later.over_capacity
    assert later.backlog == 3 and later.oldest_waited_s == 91


def test_forget_removes_a_conversation_entirely() -> None:
    queue = FairQueue(FakeClock())
    queue.arrive("gone", 0.0)
    queue.forget("gone")
    assert "gone" not in queue and len(queue) == 0
    assert queue.arrive("gone", 5.0) == 5.0


def test_a_free_slot_is_held_for_a_conversation_between_two_beats() -> None:
    """A beat gives up shortly before its conversation's next one is due: a slot that
    frees in between waits for that next beat instead of going to a fresher one."""
    clock = FakeClock()
    queue = FairQueue(clock, hold_s=1.5)
    t0 = clock.monotonic()
    queue.arrive("owed", t0)
    clock.advance(1.8)
    queue.gave_up("owed")
    queue.arrive("fresh", clock.monotonic())  # arrives first, while owed is away
    assert queue.next(nobody_live) is None
    assert queue.hold_ends() == clock.monotonic() + 1.5
    clock.advance(0.2)
    queue.arrive("owed", clock.monotonic())  # its next beat, with its old place
    assert queue.hold_ends() is None
    assert serve(queue) == "owed"
    assert serve(queue) == "fresh"


def test_a_hold_lapses_when_the_owed_conversation_does_not_come_back() -> None:
    clock = FakeClock()
    queue = FairQueue(clock, hold_s=1.5)
    queue.arrive("owed", clock.monotonic())
    queue.gave_up("owed")
    queue.arrive("fresh", clock.monotonic() + 1)
    assert queue.next(nobody_live) is None
    clock.advance(1.5)  # e.g. its next beat was skipped by its gate, or it backs off
    assert queue.next(nobody_live) == "fresh"
    # The place itself is still owed: its next beat goes first whenever it comes.
    queue.served("fresh")
    queue.arrive("later", clock.monotonic())
    queue.arrive("owed", clock.monotonic() + 5)
    assert serve(queue) == "owed"


def test_no_hold_for_a_conversation_owed_a_younger_place() -> None:
    clock = FakeClock()
    queue = FairQueue(clock)
    t0 = clock.monotonic()
    queue.arrive("old", t0)
    clock.advance(3)
    queue.arrive("young", clock.monotonic())
    queue.gave_up("young")
    assert queue.next(nobody_live) == "old"  # nothing older is owed: served at once
    queue.drop("young")
    assert queue.hold_ends() is None
