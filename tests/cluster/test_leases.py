"""Leases (acquire, renew, release, takeover of an expired one) and membership, on a
real PostgreSQL with a clock the test moves."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import psycopg
import pytest

from daemon.cluster.db import Database
from daemon.cluster.errors import LeaseHeld
from daemon.cluster.leases import Leases, Membership
from daemon.errors import OwnershipLost
from tests.cluster.helpers import TTL, ManualClock


def _leases(dsn: str, node: str, clock: ManualClock) -> Leases:
    return Leases(Database(dsn), node, ttl=TTL, clock=clock)


def test_acquire_renew_takeover_and_release(pg_dsn: str) -> None:
    clock = ManualClock()
    a, b = _leases(pg_dsn, "node-a", clock), _leases(pg_dsn, "node-b", clock)
    first = a.acquire("inbox")
    assert (first.epoch, first.node, first.taken_from) == (1, "node-a", None)
    assert first.expires_at == clock.now() + TTL

    with pytest.raises(LeaseHeld, match="node node-a holds its lease") as held:
        b.acquire("inbox")
    assert held.value.owner == "node-a"

    clock.advance(TTL - timedelta(seconds=1))
    assert a.renew("inbox").expires_at == clock.now() + TTL
    clock.advance(TTL - timedelta(seconds=1))
    with pytest.raises(LeaseHeld):
        b.acquire("inbox")  # renewed: still live

    clock.advance(timedelta(seconds=2))  # a went silent past its lease
    taken = b.acquire("inbox")
    assert (taken.epoch, taken.node, taken.taken_from) == (2, "node-b", "node-a")
    with pytest.raises(OwnershipLost, match="node-b owns it now") as lost:
        a.renew("inbox")
    assert lost.value.epoch == 1
    assert a.held("inbox") is None

    b.release("inbox")
    again = a.acquire("inbox")  # released: free at once, and the epoch never goes back
    assert (again.epoch, again.taken_from) == (3, "node-b")


def test_acquiring_again_grows_the_epoch_and_fences_the_older_holder(pg_dsn: str) -> None:
    clock = ManualClock()
    old, new = _leases(pg_dsn, "node-a", clock), _leases(pg_dsn, "node-a", clock)
    assert old.acquire("inbox").epoch == 1
    assert new.acquire("inbox").epoch == 2  # the same node name, restarted
    with pytest.raises(OwnershipLost, match=r"node-a \(epoch 2\) owns it now"):
        old.renew("inbox")


def test_renew_all_keeps_the_live_leases_and_drops_the_lost(pg_dsn: str) -> None:
    clock = ManualClock()
    a, b = _leases(pg_dsn, "node-a", clock), _leases(pg_dsn, "node-b", clock)
    for conv in ("c1", "c2", "c3"):
        a.acquire(conv)
    clock.advance(TTL + timedelta(seconds=1))
    b.acquire("c2")
    renewed = a.renew_all()
    assert sorted(renewed) == ["c1", "c3"]
    assert all(lease.expires_at == clock.now() + TTL for lease in renewed.values())
    assert a.held("c2") is None
    owner = a.owner("c2")
    assert owner is not None
    assert owner.node == "node-b"


def test_a_takeover_waits_for_a_write_in_flight(pg_dsn: str) -> None:
    """A writer share-locks the lease row while it inserts: a takeover waits for it."""
    clock = ManualClock()
    a, b = _leases(pg_dsn, "node-a", clock), _leases(pg_dsn, "node-b", clock)
    lease = a.acquire("inbox")
    clock.advance(TTL * 2)
    done = threading.Event()
    with psycopg.connect(pg_dsn) as writer:  # a transaction, like an append in flight
        writer.execute(
            "SELECT 1 FROM leases WHERE conversation = %s AND epoch = %s FOR SHARE",
            ("inbox", lease.epoch),
        )

        def take_over() -> None:
            b.acquire("inbox")
            done.set()

        thread = threading.Thread(target=take_over)
        thread.start()
        time.sleep(0.3)
        assert not done.is_set()
        writer.commit()
    thread.join(5)
    assert done.is_set()


def test_membership_lists_nodes_alive_within_the_ttl(pg_dsn: str) -> None:
    clock = ManualClock()
    a = Membership(Database(pg_dsn), "node-a", ttl=TTL, clock=clock)
    b = Membership(Database(pg_dsn), "node-b", ttl=TTL, clock=clock)
    a.heartbeat(jobs_digest="j1", key_ids=["k1"])
    b.heartbeat(jobs_digest="j1", key_ids=["k1", "k2"])
    assert [(n.node, n.key_ids) for n in a.live_nodes()] == [
        ("node-a", ("k1",)),
        ("node-b", ("k1", "k2")),
    ]
    clock.advance(TTL - timedelta(seconds=1))
    b.heartbeat(jobs_digest="j2", key_ids=["k2"])
    clock.advance(timedelta(seconds=2))
    [live] = a.live_nodes()
    assert (live.node, live.jobs_digest, live.heartbeat_at) == (
        "node-b",
        "j2",
        clock.now() - timedelta(seconds=2),
    )
    b.leave()
    assert a.live_nodes() == []
