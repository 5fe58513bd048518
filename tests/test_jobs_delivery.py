"""The delivery fence: journaled before and after, retried with backoff, at most once."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

from daemon import events
from daemon.events.heal import fold
from daemon.testing.fakes import MemorySink
from jobs.delivery import DeliveryKey, Route, deliver, settle_open
from jobs.ledger import JobLedger
from jobs.sinks import Reply

REPLY = Reply("inbox", 7, "Two urgent mails.", "2026-05-04T10:00:00.000Z", "s-1")


class ListLog:
    """The fence's journal as a list of real event records (a fake, not a mock)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def started(self, key: DeliveryKey, attempt: int) -> None:
        self.events.append(events.delivery_started(key.turn, key.delivery, key.sink, attempt))

    def done(self, key: DeliveryKey, attempt: int) -> None:
        self.events.append(events.delivery_done(key.turn, key.delivery, key.sink, attempt))

    def failed(
        self,
        key: DeliveryKey,
        attempt: int,
        error: str,
        retry_in: timedelta | None,
        output: str | None = None,
    ) -> None:
        seconds = None if retry_in is None else retry_in.total_seconds()
        self.events.append(
            events.delivery_failed(
                key.turn,
                key.delivery,
                key.sink,
                attempt,
                error=error,
                retry_in_s=seconds,
                output=output,
            )
        )

    def unknown(self, key: DeliveryKey, attempt: int, reason: str) -> None:
        self.events.append(
            events.delivery_unknown(key.turn, key.delivery, key.sink, attempt, reason=reason)
        )

    def steps(self) -> list[tuple[str, str, int]]:
        return [(e["type"].removeprefix("delivery_"), e["sink"], e["attempt"]) for e in self.events]


class FakeSleep:
    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def history(log: ListLog) -> list[dict[str, Any]]:
    turn = [
        events.turn_started(7, "beat", job="inbox", trigger="schedule"),
        events.turn_completed(7),
    ]
    [view] = fold([*turn, *log.events]).turns
    return [d.as_json() for d in view.deliveries]


def test_started_is_journaled_before_the_sink_runs_and_done_after() -> None:
    log = ListLog()
    seen_at_send: list[list[tuple[str, str, int]]] = []

    class Watching(MemorySink):
        async def send(self, reply: Reply) -> None:
            seen_at_send.append(log.steps())
            await super().send(reply)

    sink = Watching("chat")
    [result] = asyncio.run(deliver(REPLY, [Route(sink)], log))
    assert seen_at_send == [[("started", "chat", 1)]]
    assert log.steps() == [("started", "chat", 1), ("done", "chat", 1)]
    assert result.status == "done" and sink.received == [REPLY]
    assert history(log)[0]["status"] == "done"


def test_a_failing_sink_is_retried_with_doubling_waits_then_succeeds() -> None:
    log, sleep = ListLog(), FakeSleep()
    sink = MemorySink("chat", fail_first=2)
    route = Route(sink, retries=3, retry_delay=timedelta(seconds=5))
    [result] = asyncio.run(deliver(REPLY, [route], log, sleep=sleep))
    assert sleep.waits == [5.0, 10.0]
    assert log.steps() == [
        ("started", "chat", 1),
        ("failed", "chat", 1),
        ("started", "chat", 2),
        ("failed", "chat", 2),
        ("started", "chat", 3),
        ("done", "chat", 3),
    ]
    assert (result.status, result.attempts, len(sink.received)) == ("done", 3, 1)
    assert history(log)[0] == {
        "sink": "chat",
        "status": "done",
        "attempts": 3,
        "error": None,
        "at": log.events[-1]["at"],
    }


def test_retries_stop_at_the_limit_and_the_last_failure_is_final() -> None:
    log, sleep = ListLog(), FakeSleep()
    route = Route(MemorySink("chat", fail_first=99), retries=2, retry_delay=timedelta(seconds=1))
    [result] = asyncio.run(deliver(REPLY, [route], log, sleep=sleep))
    assert result.status == "failed" and result.attempts == 3
    assert sleep.waits == [1.0, 2.0]
    retry_in = [e.get("retry_in_s") for e in log.events if e["type"] == "delivery_failed"]
    assert retry_in == [1.0, 2.0, None]
    [view] = history(log)
    assert view["status"] == "failed" and "failing on purpose" in view["error"]


def test_each_sink_is_fenced_on_its_own() -> None:
    log = ListLog()
    good, bad = MemorySink("chat"), MemorySink("pager", fail_first=99)
    results = asyncio.run(
        deliver(REPLY, [Route(good), Route(bad, retries=0)], log, sleep=FakeSleep())
    )
    assert [(r.key.sink, r.status) for r in results] == [("chat", "done"), ("pager", "failed")]
    assert {d["sink"]: d["status"] for d in history(log)} == {"chat": "done", "pager": "failed"}


def test_cancelled_mid_attempt_is_unknown_and_mid_wait_is_given_up() -> None:
    class Hanging(MemorySink):
        async def send(self, reply: Reply) -> None:
            await asyncio.sleep(60)

    async def cancel(route: Route, log: ListLog) -> None:
        task = asyncio.create_task(deliver(REPLY, [route], log))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    mid_attempt = ListLog()
    asyncio.run(cancel(Route(Hanging("chat")), mid_attempt))
    assert mid_attempt.steps() == [("started", "chat", 1), ("unknown", "chat", 1)]

    mid_wait = ListLog()
    slow_retry = Route(MemorySink("chat", fail_first=1), retry_delay=timedelta(seconds=60))
    asyncio.run(cancel(slow_retry, mid_wait))
    assert mid_wait.steps() == [
        ("started", "chat", 1),
        ("failed", "chat", 1),
        ("failed", "chat", 1),
    ]
    assert mid_wait.events[-1]["retry_in_s"] is None  # final: not retried after a restart


def test_after_a_crash_open_deliveries_are_settled_without_sending_anything() -> None:
    # What the previous process journaled before it was killed:
    crashed = ListLog()
    crashed.started(DeliveryKey(7, "chat"), 1)  # sink running when the process died
    crashed.started(DeliveryKey(7, "pager"), 1)
    crashed.failed(DeliveryKey(7, "pager"), 1, "HTTP 503", timedelta(seconds=5))
    crashed.started(DeliveryKey(7, "mail"), 1)
    crashed.done(DeliveryKey(7, "mail"), 1)
    ledger = JobLedger()
    for event in crashed.events:
        ledger.feed(event)
    assert sorted(ledger.open_deliveries) == ["7/chat", "7/pager"]

    restart = ListLog()
    settled = settle_open(list(ledger.open_deliveries.values()), restart)
    assert sorted(k.delivery for k in settled) == ["7/chat", "7/pager"]
    assert sorted(restart.steps()) == [("failed", "pager", 1), ("unknown", "chat", 1)]
    for event in restart.events:
        ledger.feed(event)
    assert ledger.open_deliveries == {}

    crashed.events += restart.events
    views = {d["sink"]: d for d in history(crashed)}
    assert views["chat"]["status"] == "unknown"
    assert "not sent again" in views["chat"]["error"]
    assert views["pager"]["status"] == "failed" and views["mail"]["status"] == "done"


def test_an_open_delivery_reads_in_progress_while_the_daemon_runs() -> None:
    log = ListLog()
    log.started(DeliveryKey(7, "chat"), 1)
    turn = [
        events.turn_started(7, "beat", job="inbox", trigger="schedule"),
        events.turn_completed(7),
    ]
    running = fold([*turn, *log.events], open_turn_status="running").turns[0]
    healed = fold([*turn, *log.events]).turns[0]
    assert running.deliveries[0].status == "in_progress"
    assert healed.deliveries[0].status == "unknown"
