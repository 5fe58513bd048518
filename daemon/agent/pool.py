"""The client pool: at most ``max_live`` conversations hold a connected CLI process.

Each connected client is a CLI subprocess of about 250 MB, so "one client per
conversation" cannot mean "one process per conversation forever". Contract:

* :meth:`ClientPool.lease` is entered around a turn. It waits (bounded by the caller's
  deadline) for one of ``max_turns`` turn slots; then, if the conversation's client is
  not live and the pool is full, it disconnects the least recently used *idle* client.
  Busy clients are never evicted. Since ``max_turns <= max_live``, a slot holder can
  always find room.
* Fair: a freed slot goes to the waiting beat whose conversation has waited longest
  (:class:`~daemon.agent.fairqueue.FairQueue`: oldest due first, a beat that waited past
  its deadline keeps its conversation's place, a live client only breaks ties).
* :meth:`reap_idle` disconnects clients idle for longer than ``idle_timeout``; the next
  beat reconnects with ``resume``.
* Disconnects happen outside any turn, so no journal record is ever cut short by them.
* A client counts against ``max_live`` until its process has exited (``holds_process``),
  not only while connected: a client being closed still holds its ~250 MB.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Protocol

from daemon.agent.fairqueue import FairQueue
from daemon.ports.clock import Clock, SystemClock

CLOSING_POLL_S = 0.05


class PooledClient(Protocol):
    @property
    def connected(self) -> bool: ...

    @property
    def holds_process(self) -> bool: ...  # connected, or closed but not yet exited

    async def disconnect(self) -> None: ...


class LeaseTimeout(Exception):
    """No turn slot became free before the beat's deadline."""

    def __init__(self, waited_s: float, busy: int) -> None:
        self.waited_s = waited_s
        self.busy = busy
        super().__init__(
            f"waited {waited_s:.1f}s for a free turn slot ({busy} turns running); "
            "raise max_concurrent_turns or lengthen the interval"
        )


class ClientPool:
    def __init__(
        self,
        *,
        max_live: int,
        max_turns: int,
        idle_timeout: float,
        clock: Clock | None = None,
    ) -> None:
        if max_turns > max_live:
            raise ValueError("max_concurrent_turns cannot exceed max_live_clients")
        self.max_live = max_live
        self.max_turns = max_turns
        self.idle_timeout = idle_timeout
        self._time = clock or SystemClock()
        self._free = max_turns  # turn slots neither held nor promised to a waiter
        self.queue = FairQueue(self._time)
        self._waiters: dict[str, tuple[asyncio.Future[None], PooledClient]] = {}
        self._recheck: asyncio.TimerHandle | None = None  # a held slot is looked at again
        self._members: OrderedDict[str, PooledClient] = OrderedDict()  # LRU first
        self._last_used: dict[str, float] = {}
        self._busy: set[str] = set()
        self.evictions = 0

    @property
    def live(self) -> int:
        return sum(1 for c in self._members.values() if c.holds_process)

    @property
    def busy(self) -> int:
        return len(self._busy)

    def _clock(self) -> float:
        return self._time.monotonic()

    @asynccontextmanager
    async def lease(
        self, key: str, client: PooledClient, *, wait_s: float, due: float | None = None
    ) -> AsyncIterator[float]:
        """Hold a turn slot for ``key``; yields how long the wait for it took.

        ``due``: when the beat came due (the clock's monotonic seconds; default now),
        its place in the queue unless its conversation is owed an older one."""
        start = self._clock()
        await self._acquire(key, client, start if due is None else due, wait_s, start)
        waited = self._clock() - start
        self._busy.add(key)
        try:
            self._members[key] = client
            self._members.move_to_end(key)
            if not client.connected:
                await self._make_room(exclude=key)
            yield waited
        finally:
            self._busy.discard(key)
            self._last_used[key] = self._clock()
            self._release()

    async def _acquire(
        self, key: str, client: PooledClient, due: float, wait_s: float, start: float
    ) -> None:
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.queue.arrive(key, due)
        self._waiters[key] = (granted, client)
        try:
            self._grant()
            if not granted.done():
                await asyncio.wait({granted}, timeout=max(wait_s, 0.0))
        except BaseException:  # cancelled while waiting: give back a slot promised to us
            self._waiters.pop(key, None)
            if granted.done():
                self._release()
            else:
                self.queue.withdraw(key)
            raise
        self._waiters.pop(key, None)
        if not granted.done():
            self.queue.gave_up(key)  # keeps the conversation's place for its next beat
            raise LeaseTimeout(self._clock() - start, self.busy)

    def _release(self) -> None:
        self._free += 1
        self._grant()

    def _grant(self) -> None:
        """Promise free slots to the waiters the fair queue picks, in its order. A slot
        the queue holds for a conversation between two beats is looked at again when
        the hold lapses."""
        while self._free > 0:
            key = self.queue.next(self._waiting_live)
            if key is None:
                self._recheck_at(self.queue.hold_ends())
                return
            self.queue.served(key)
            self._free -= 1
            self._waiters[key][0].set_result(None)

    def _recheck_at(self, when: float | None) -> None:
        if when is None or self._recheck is not None:
            return

        def recheck() -> None:
            self._recheck = None
            self._grant()

        delay = max(when - self._clock(), 0.0) + 0.001
        self._recheck = asyncio.get_running_loop().call_later(delay, recheck)

    def _waiting_live(self, key: str) -> bool:
        return self._waiters[key][1].connected

    @property
    def waiting(self) -> int:
        return len(self.queue)

    def drop_place(self, key: str) -> None:
        """``key``'s beat was skipped for a reason of its own: it is owed no place."""
        self.queue.drop(key)
        if self._waiters:
            self._grant()  # a slot held for it goes to the next in line

    async def _make_room(self, exclude: str) -> None:
        while self._live_excluding(exclude) >= self.max_live:
            victim = next(
                (
                    k
                    for k, c in self._members.items()
                    if k != exclude and k not in self._busy and c.connected
                ),
                None,
            )
            if victim is not None:
                self.evictions += 1
                await self._members[victim].disconnect()
            elif any(
                c.holds_process and not c.connected
                for k, c in self._members.items()
                if k != exclude
            ):
                await asyncio.sleep(CLOSING_POLL_S)  # one is on its way out; wait for it
            else:
                return  # every live client is busy; cannot happen while max_turns <= max_live

    def _live_excluding(self, key: str) -> int:
        """Clients holding a process, plus leased ones about to connect (a reservation:
        two leases making room at once must not both see the same free place)."""
        return sum(
            1 for k, c in self._members.items() if k != key and (c.holds_process or k in self._busy)
        )

    async def reap_idle(self) -> list[str]:
        """Disconnect clients idle longer than ``idle_timeout``; returns their keys."""
        now = self._clock()
        reaped = []
        for key, client in list(self._members.items()):
            if key in self._busy or not client.connected:
                continue
            if now - self._last_used.get(key, now) >= self.idle_timeout:
                await client.disconnect()
                reaped.append(key)
        return reaped

    def forget(self, key: str) -> None:
        self.queue.forget(key)
        if self._waiters:
            self._grant()
        self._members.pop(key, None)
        self._last_used.pop(key, None)
