"""Behaviour suites for the ports, run against every implementation.

``run_event_log_conformance(make_store)`` checks the contract written in
:mod:`daemon.ports.eventlog`; a backend is done when it passes. ``make_store`` returns
a fresh, empty store each time it is called; ``reopen`` (optional) returns a second
store over the same data, as another process or a restart would see it.
"""

from __future__ import annotations

from collections.abc import Callable

from daemon.ports.eventlog import Event, EventLogStore

__all__ = ["run_event_log_conformance"]

MakeStore = Callable[[], EventLogStore]
Reopen = Callable[[EventLogStore], EventLogStore]


def _events(n: int, start: int = 1) -> list[Event]:
    return [{"type": "delta", "turn": 1, "text": f"word {i} é✓"} for i in range(start, start + n)]


def _check(condition: bool, what: str) -> None:
    if not condition:
        raise AssertionError(f"event log contract: {what}")


def run_event_log_conformance(make_store: MakeStore, reopen: Reopen | None = None) -> None:
    """Raise :class:`AssertionError` naming the first clause a store breaks."""
    _empty(make_store())
    _append_and_read(make_store())
    _read_after(make_store())
    _visit_on_open(make_store(), reopen)
    _isolation(make_store())
    _names(make_store())


def _empty(store: EventLogStore) -> None:
    _check(store.names() == [], "a new store has no logs")
    _check(not store.exists("alpha"), "exists() is False before open")
    _check(list(store.read("alpha")) == [], "read() of an unknown log yields nothing")
    log = store.open("alpha")
    _check(log.last_seq == 0, "a new log's last_seq is 0")
    _check(log.name == "alpha", "the log knows its name")
    _check(store.exists("alpha"), "open() creates the log")
    log.close()


def _append_and_read(store: EventLogStore) -> None:
    log = store.open("alpha")
    events = _events(5)
    seqs = [log.append(e) for e in events]
    _check(seqs == [1, 2, 3, 4, 5], f"sequence numbers start at 1 and grow by one: {seqs}")
    _check(log.last_seq == 5, "last_seq is the last append's number")
    _check(
        list(store.read("alpha")) == list(zip(seqs, events, strict=True)),
        "read() yields every appended event, in order, unchanged, before sync",
    )
    log.sync()
    log.sync()  # idempotent
    log.close()
    log.close()  # idempotent
    _check(len(list(store.read("alpha"))) == 5, "close() keeps every record")


def _read_after(store: EventLogStore) -> None:
    log = store.open("alpha")
    for e in _events(10):
        log.append(e)
    tail = list(store.read("alpha", after=7))
    _check([s for s, _ in tail] == [8, 9, 10], "read(after=N) starts at N + 1")
    _check(list(store.read("alpha", after=10)) == [], "read(after=last) yields nothing")
    log.close()


def _visit_on_open(store: EventLogStore, reopen: Reopen | None) -> None:
    log = store.open("alpha")
    events = _events(4)
    for e in events:
        log.append(e)
    log.close()
    again = reopen(store) if reopen is not None else store
    seen: list[Event] = []
    log = again.open("alpha", visit=seen.append)
    _check(seen == events, "open(visit=...) hands every event to visit, in order")
    _check(log.last_seq == 4, "a reopened log carries on from its last sequence number")
    _check(log.append({"type": "delta", "turn": 2, "text": "more"}) == 5, "next seq after reopen")
    log.close()
    _check(len(list(again.read("alpha"))) == 5, "appends after a reopen are read back")


def _isolation(store: EventLogStore) -> None:
    a, b = store.open("alpha"), store.open("bravo")
    a.append({"type": "delta", "text": "a"})
    b.append({"type": "delta", "text": "b1"})
    b.append({"type": "delta", "text": "b2"})
    _check([e["text"] for _, e in store.read("alpha")] == ["a"], "logs do not share records")
    _check(b.last_seq == 2 and a.last_seq == 1, "each log numbers its own records")
    a.close()
    b.close()


def _names(store: EventLogStore) -> None:
    for name in ("charlie", "alpha", "bravo-2"):
        store.open(name).close()
    _check(store.names() == ["alpha", "bravo-2", "charlie"], "names() is sorted")
