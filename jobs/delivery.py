"""Delivery with a fence: each attempt is journaled before and after, at most once.

For every sink of a non-quiet reply, :func:`deliver` journals ``started`` before the
attempt and ``done`` or ``failed`` after it. A failed attempt is retried after
``retry_delay`` (doubling) up to ``retries`` times; the last failure is final. If the
process dies between ``started`` and its end, nobody knows whether the sink got the
reply, so at the next start :func:`settle_open` journals it ``unknown`` and it is
**not sent again** (at-most-once). A retry still waiting when vigil stops is given up
(journaled as a final failure), also at-most-once.

The journal side is the :class:`DeliveryLog` protocol; the daemon implements it on the
conversation's journal, tests with a list.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal, Protocol

from jobs.backoff import retry_delay
from jobs.ledger import OpenDelivery
from jobs.sinks import Reply, Sink, SinkError

__all__ = [
    "DeliveryKey",
    "DeliveryLog",
    "DeliveryResult",
    "Route",
    "deliver",
    "settle_open",
]

Sleep = Callable[[float], Awaitable[None]]
DeliveryStatus = Literal["done", "failed", "unknown"]
STOPPED_BEFORE_RETRY = "vigil stopped before the retry; not retried (at-most-once)"
STOPPED_MID_DELIVERY = "daemon_stopped_mid_delivery"


@dataclass(frozen=True)
class DeliveryKey:
    turn: int
    sink: str

    @property
    def delivery(self) -> str:
        """Stable id of one reply's delivery to one sink, shared by all its attempts."""
        return f"{self.turn}/{self.sink}"


class DeliveryLog(Protocol):
    """Journals the fence. Each call must be durable-in-order before it returns
    (``started`` before the sink is touched); errors propagate and stop the delivery."""

    def started(self, key: DeliveryKey, attempt: int) -> None: ...

    def done(self, key: DeliveryKey, attempt: int) -> None: ...

    def failed(
        self,
        key: DeliveryKey,
        attempt: int,
        error: str,
        retry_in: timedelta | None,
        output: str | None = None,
    ) -> None: ...

    def unknown(self, key: DeliveryKey, attempt: int, reason: str) -> None: ...


@dataclass(frozen=True)
class Route:
    """A sink and how hard to try it."""

    sink: Sink
    retries: int = 3
    retry_delay: timedelta = timedelta(seconds=5)


@dataclass(frozen=True)
class DeliveryResult:
    key: DeliveryKey
    status: DeliveryStatus
    attempts: int
    error: str | None = None


async def deliver_one(
    reply: Reply, route: Route, log: DeliveryLog, *, sleep: Sleep = asyncio.sleep
) -> DeliveryResult:
    key = DeliveryKey(reply.turn, route.sink.name)
    attempt = 1
    while True:
        log.started(key, attempt)
        try:
            await route.sink.send(reply)
        except asyncio.CancelledError:
            log.unknown(key, attempt, "shutdown")
            raise
        except Exception as exc:  # a sink bug must not look like a delivery
            error = exc.reason if isinstance(exc, SinkError) else f"{type(exc).__name__}: {exc}"
            output = exc.output if isinstance(exc, SinkError) else None
            retry_in = retry_delay(attempt, route.retry_delay) if attempt <= route.retries else None
            log.failed(key, attempt, error, retry_in, output)
            if retry_in is None:
                return DeliveryResult(key, "failed", attempt, error)
            try:
                await sleep(retry_in.total_seconds())
            except asyncio.CancelledError:
                log.failed(key, attempt, STOPPED_BEFORE_RETRY, None)
                raise
            attempt += 1
            continue
        log.done(key, attempt)
        return DeliveryResult(key, "done", attempt)


async def deliver(
    reply: Reply, routes: Sequence[Route], log: DeliveryLog, *, sleep: Sleep = asyncio.sleep
) -> list[DeliveryResult]:
    """Deliver ``reply`` to every route concurrently; one result per route, in order."""
    return list(await asyncio.gather(*(deliver_one(reply, r, log, sleep=sleep) for r in routes)))


def settle_open(open_deliveries: Iterable[OpenDelivery], log: DeliveryLog) -> list[DeliveryKey]:
    """At start: close what the previous process left open, without sending anything."""
    settled = []
    for item in open_deliveries:
        key = DeliveryKey(item.turn, item.sink)
        if item.state == "started":
            log.unknown(key, item.attempt, STOPPED_MID_DELIVERY)
        else:
            log.failed(key, item.attempt, STOPPED_BEFORE_RETRY, None)
        settled.append(key)
    return settled
