"""The client pool's contract, against fake clients (no CLI processes needed)."""

from __future__ import annotations

import asyncio

import pytest

from daemon.agent.pool import ClientPool, LeaseTimeout
from daemon.testing.fakes import FakeClock


class FakeClient:
    def __init__(self) -> None:
        self.connected = False
        self.disconnects = 0

    @property
    def holds_process(self) -> bool:
        return self.connected

    def connect(self) -> None:
        self.connected = True

    async def disconnect(self) -> None:
        self.connected = False
        self.disconnects += 1


def test_full_pool_evicts_least_recently_used_idle_client() -> None:
    async def scenario() -> None:
        clock = FakeClock()
        pool = ClientPool(max_live=2, max_turns=2, idle_timeout=60, clock=clock)
        a, b, c = FakeClient(), FakeClient(), FakeClient()
        for key, client in (("a", a), ("b", b)):
            async with pool.lease(key, client, wait_s=1):
                client.connect()
            clock.advance(1)
        async with pool.lease("a", a, wait_s=1):  # a is now the most recently used
            pass
        async with pool.lease("c", c, wait_s=1):
            c.connect()
        assert (a.connected, b.connected, c.connected) == (True, False, True)
        assert pool.live == 2 and pool.evictions == 1

    asyncio.run(scenario())


def test_busy_clients_are_never_evicted_and_turns_wait_for_a_slot() -> None:
    async def scenario() -> None:
        pool = ClientPool(max_live=1, max_turns=1, idle_timeout=60)
        a, b = FakeClient(), FakeClient()
        release = asyncio.Event()

        async def long_turn() -> None:
            async with pool.lease("a", a, wait_s=1):
                a.connect()
                await release.wait()

        task = asyncio.create_task(long_turn())
        await asyncio.sleep(0.01)
        with pytest.raises(LeaseTimeout, match="waited"):
            async with pool.lease("b", b, wait_s=0.05):
                pass
        assert a.connected and a.disconnects == 0
        release.set()
        await task
        async with pool.lease("b", b, wait_s=1) as waited:
            b.connect()
        assert waited < 1
        assert not a.connected and b.connected

    asyncio.run(scenario())


def test_idle_clients_are_reaped_after_the_timeout_only() -> None:
    async def scenario() -> None:
        clock = FakeClock()
        pool = ClientPool(max_live=4, max_turns=2, idle_timeout=30, clock=clock)
        a, b = FakeClient(), FakeClient()
        async with pool.lease("a", a, wait_s=1):
            a.connect()
        clock.advance(20)
        async with pool.lease("b", b, wait_s=1):
            b.connect()
        clock.advance(15)
        assert await pool.reap_idle() == ["a"]
        assert not a.connected and b.connected

    asyncio.run(scenario())


def test_more_turn_slots_than_clients_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot exceed"):
        ClientPool(max_live=2, max_turns=3, idle_timeout=1)


class SlowClosingClient(FakeClient):
    """Its process takes a while to exit after disconnect begins."""

    def __init__(self) -> None:
        super().__init__()
        self.exiting = False

    @property
    def holds_process(self) -> bool:
        return self.connected or self.exiting

    async def disconnect(self) -> None:
        self.connected = False
        self.exiting = True
        await asyncio.sleep(0.2)
        self.exiting = False
        self.disconnects += 1


def test_a_client_still_closing_counts_until_its_process_exits() -> None:
    async def scenario() -> None:
        pool = ClientPool(max_live=1, max_turns=1, idle_timeout=0)
        a, b = SlowClosingClient(), SlowClosingClient()
        async with pool.lease("a", a, wait_s=1):
            a.connect()
        reaping = asyncio.create_task(pool.reap_idle())  # a starts closing, slowly
        await asyncio.sleep(0.05)
        assert a.holds_process and not a.connected
        async with pool.lease("b", b, wait_s=1):
            assert not a.holds_process  # b's connect waited for a's process to exit
            b.connect()
            assert pool.live == 1
        await reaping

    asyncio.run(scenario())


def test_two_leases_making_room_at_once_do_not_overfill_the_pool() -> None:
    async def scenario() -> None:
        pool = ClientPool(max_live=2, max_turns=2, idle_timeout=60)
        a, b, c, d = FakeClient(), FakeClient(), FakeClient(), FakeClient()
        for key, client in (("a", a), ("b", b)):
            async with pool.lease(key, client, wait_s=1):
                client.connect()
        both_in = asyncio.Barrier(2)

        async def turn(key: str, client: FakeClient) -> None:
            async with pool.lease(key, client, wait_s=1):
                await both_in.wait()  # both have made room before either connects
                await asyncio.sleep(0.01)  # connecting takes a while
                client.connect()

        await asyncio.gather(turn("c", c), turn("d", d))
        assert (a.connected, b.connected, c.connected, d.connected) == (False, False, True, True)
        assert pool.live == 2 and pool.evictions == 2

    asyncio.run(scenario())


def test_a_freed_slot_goes_to_the_oldest_due_beat_not_the_live_client() -> None:
    async def scenario() -> None:
        clock = FakeClock()
        pool = ClientPool(max_live=3, max_turns=1, idle_timeout=60, clock=clock)
        hog, cold, warm = FakeClient(), FakeClient(), FakeClient()
        warm.connect()  # holds a live client: still served after the older cold beat
        release = asyncio.Event()
        order: list[str] = []

        async def turn(key: str, client: FakeClient, due: float) -> None:
            async with pool.lease(key, client, wait_s=5, due=due):
                order.append(key)
                if key == "hog":
                    await release.wait()

        t0 = clock.monotonic()
        hog_turn = asyncio.create_task(turn("hog", hog, t0))
        await asyncio.sleep(0)
        waiting = [
            asyncio.create_task(turn("warm", warm, t0 + 2)),
            asyncio.create_task(turn("cold", cold, t0 + 1)),
        ]
        await asyncio.sleep(0.01)
        assert pool.waiting == 2
        release.set()
        await asyncio.gather(hog_turn, *waiting)
        assert order == ["hog", "cold", "warm"]

    asyncio.run(scenario())


def test_a_beat_that_timed_out_is_served_first_next_time() -> None:
    async def scenario() -> None:
        clock = FakeClock()
        pool = ClientPool(max_live=3, max_turns=1, idle_timeout=60, clock=clock)
        hog, starved, rival = FakeClient(), FakeClient(), FakeClient()
        release = asyncio.Event()
        order: list[str] = []

        async def turn(key: str, client: FakeClient, due: float, wait_s: float = 5) -> None:
            async with pool.lease(key, client, wait_s=wait_s, due=due):
                order.append(key)
                if key == "hog":
                    await release.wait()

        t0 = clock.monotonic()
        hog_turn = asyncio.create_task(turn("hog", hog, t0))
        await asyncio.sleep(0)
        with pytest.raises(LeaseTimeout):
            await turn("starved", starved, t0 + 1, wait_s=0.02)  # skipped: no_capacity
        rival_turn = asyncio.create_task(turn("rival", rival, t0 + 2))
        await asyncio.sleep(0)
        starved_turn = asyncio.create_task(turn("starved", starved, t0 + 3))
        await asyncio.sleep(0.01)
        release.set()
        await asyncio.gather(hog_turn, rival_turn, starved_turn)
        assert order == ["hog", "starved", "rival"]  # starved kept its place (t0 + 1)

    asyncio.run(scenario())


def test_a_beat_cancelled_while_waiting_leaves_the_queue_and_no_slot_is_lost() -> None:
    async def scenario() -> None:
        pool = ClientPool(max_live=2, max_turns=1, idle_timeout=60)
        a, b, c = FakeClient(), FakeClient(), FakeClient()
        release = asyncio.Event()

        async def hold() -> None:
            async with pool.lease("a", a, wait_s=1):
                await release.wait()

        holder = asyncio.create_task(hold())
        await asyncio.sleep(0)

        async def wait_b() -> None:
            async with pool.lease("b", b, wait_s=5):
                pass

        waiter = asyncio.create_task(wait_b())
        await asyncio.sleep(0.01)
        release.set()  # the slot is promised to b ...
        await asyncio.sleep(0)
        waiter.cancel()  # ... which is cancelled before it runs: the slot comes back
        with pytest.raises(asyncio.CancelledError):
            await waiter
        await holder
        assert pool.waiting == 0
        async with pool.lease("c", c, wait_s=0.05):
            assert pool.busy == 1

    asyncio.run(scenario())
