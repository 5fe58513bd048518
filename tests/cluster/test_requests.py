"""Routed operator requests on a real PostgreSQL: sealed, claimed exactly once and only
by the conversation's lease holder at its epoch, cancelled or claimed but never both,
never claimed past their deadline; notified on insert and on answer."""

from __future__ import annotations

import queue
import threading
import time
from datetime import timedelta

import psycopg

from daemon.cluster.db import Database
from daemon.cluster.leases import Leases
from daemon.cluster.listen import Listener
from daemon.cluster.requests import CHANNEL, RoutedRequests
from daemon.journal.keyring import Keyring
from tests.cluster.helpers import TTL, ManualClock

WAIT = timedelta(seconds=30)
PLAINTEXT = "the launch code is 0000"


def _requests(dsn: str, node: str, keyring: Keyring) -> RoutedRequests:
    return RoutedRequests(Database(dsn, application_name=f"test {node}"), keyring, node)


def _leases(dsn: str, node: str, clock: ManualClock) -> Leases:
    return Leases(Database(dsn), node, ttl=TTL, clock=clock)


def test_a_request_is_sealed_claimed_once_by_the_holder_and_answered(
    pg_dsn: str, keyring: Keyring
) -> None:
    clock = ManualClock()
    lease = _leases(pg_dsn, "node-b", clock).acquire("inbox")
    asker, owner = _requests(pg_dsn, "node-a", keyring), _requests(pg_dsn, "node-b", keyring)
    request = {"op": "send", "job": "inbox", "text": PLAINTEXT}
    rid = asker.submit("inbox", "send", request, WAIT)

    with psycopg.connect(pg_dsn) as conn:  # PostgreSQL sees ciphertext only
        body = conn.execute("SELECT body FROM routed_requests WHERE id = %s", (rid,)).fetchone()
    assert body is not None and b"launch" not in bytes(body[0])

    state = asker.state("inbox", rid)
    assert state is not None and (state.claimed_by, state.answer) == (None, None)
    claimed = owner.claim({"inbox": lease.epoch})
    assert [(c.id, c.op, c.requested_by, c.request, c.epoch) for c in claimed] == [
        (rid, "send", "node-a", request, lease.epoch)
    ]
    assert owner.claim({"inbox": lease.epoch}) == []  # exactly once
    assert not asker.cancel(rid)  # claimed: too late to cancel

    assert owner.answer(claimed[0], {"ok": True, "request": "r1", "echo": PLAINTEXT})
    state = asker.state("inbox", rid)
    assert state is not None and state.claimed_by == "node-b"
    assert state.answer == {"ok": True, "request": "r1", "echo": PLAINTEXT}
    with psycopg.connect(pg_dsn) as conn:
        row = conn.execute("SELECT answer FROM routed_requests WHERE id = %s", (rid,)).fetchone()
    assert row is not None and b"launch" not in bytes(row[0])
    asker.forget(rid)
    assert asker.state("inbox", rid) is None


def test_only_the_lease_holder_at_its_epoch_claims(pg_dsn: str, keyring: Keyring) -> None:
    clock = ManualClock()
    leases_a, leases_b = _leases(pg_dsn, "node-a", clock), _leases(pg_dsn, "node-b", clock)
    a, b = _requests(pg_dsn, "node-a", keyring), _requests(pg_dsn, "node-b", keyring)
    old = leases_a.acquire("inbox")
    rid = b.submit("inbox", "beat", {"op": "beat", "job": "inbox"}, WAIT)

    assert b.claim({"inbox": old.epoch}) == []  # node-b holds no lease of it
    assert b.claim({"inbox": old.epoch + 1}) == []  # nor any epoch of it

    clock.advance(TTL + timedelta(seconds=1))  # node-a went silent: node-b takes over
    new = leases_b.acquire("inbox")
    assert a.claim({"inbox": old.epoch}) == []  # the old owner is fenced
    assert [c.id for c in b.claim({"inbox": new.epoch})] == [rid]


def test_concurrent_claims_take_a_request_exactly_once(pg_dsn: str, keyring: Keyring) -> None:
    clock = ManualClock()
    epoch = _leases(pg_dsn, "node-b", clock).acquire("inbox").epoch
    asker = _requests(pg_dsn, "node-a", keyring)
    claimers = [_requests(pg_dsn, "node-b", keyring) for _ in range(4)]
    ids = {asker.submit("inbox", "beat", {"job": "inbox"}, WAIT) for _ in range(20)}
    got: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(len(claimers))

    def claim(requests: RoutedRequests) -> None:
        start.wait()
        for _ in range(5):
            taken = requests.claim({"inbox": epoch})
            with lock:
                got.extend(c.id for c in taken)

    threads = [threading.Thread(target=claim, args=(r,)) for r in claimers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == sorted(ids)  # every one, none twice


def test_cancel_and_claim_race_one_wins(pg_dsn: str, keyring: Keyring) -> None:
    clock = ManualClock()
    epoch = _leases(pg_dsn, "node-b", clock).acquire("inbox").epoch
    asker, owner = _requests(pg_dsn, "node-a", keyring), _requests(pg_dsn, "node-b", keyring)

    rid = asker.submit("inbox", "beat", {"job": "inbox"}, WAIT)
    assert asker.cancel(rid)
    assert not asker.cancel(rid)  # once
    assert owner.claim({"inbox": epoch}) == []  # cancelled: it never runs

    outcomes = [_race(asker, owner, epoch) for _ in range(15)]
    for cancelled, claimed in outcomes:
        assert cancelled != claimed, outcomes  # exactly one of the two
    assert owner.claim({"inbox": epoch}) == []


def _race(asker: RoutedRequests, owner: RoutedRequests, epoch: int) -> tuple[bool, bool]:
    """A cancel and a claim of one request at once: (cancelled, claimed)."""
    rid = asker.submit("inbox", "beat", {"job": "inbox"}, WAIT)
    results: dict[str, bool] = {}
    start = threading.Barrier(2)

    def cancel() -> None:
        start.wait()
        results["cancelled"] = asker.cancel(rid)

    def claim() -> None:
        start.wait()
        results["claimed"] = [c.id for c in owner.claim({"inbox": epoch})] == [rid]

    threads = [threading.Thread(target=cancel), threading.Thread(target=claim)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results["cancelled"], results["claimed"]


def test_a_request_past_its_deadline_is_never_claimed_and_expires(
    pg_dsn: str, keyring: Keyring
) -> None:
    clock = ManualClock()
    epoch = _leases(pg_dsn, "node-b", clock).acquire("inbox").epoch
    asker, owner = _requests(pg_dsn, "node-a", keyring), _requests(pg_dsn, "node-b", keyring)
    late = asker.submit("inbox", "beat", {"job": "inbox"}, timedelta(milliseconds=100))
    fresh = asker.submit("inbox", "beat", {"job": "inbox"}, WAIT)
    time.sleep(0.2)  # the requester died: nobody cancels it
    assert [c.id for c in owner.claim({"inbox": epoch})] == [fresh]
    assert owner.expire(timedelta(seconds=60)) == 0  # not old enough yet
    assert owner.expire(timedelta(0)) == 1
    assert asker.state("inbox", late) is None
    assert asker.state("inbox", fresh) is not None


def test_a_body_moved_to_another_request_does_not_open(pg_dsn: str, keyring: Keyring) -> None:
    clock = ManualClock()
    epoch = _leases(pg_dsn, "node-b", clock).acquire("inbox").epoch
    asker, owner = _requests(pg_dsn, "node-a", keyring), _requests(pg_dsn, "node-b", keyring)
    first = asker.submit("inbox", "send", {"job": "inbox", "text": "one"}, WAIT)
    second = asker.submit("inbox", "send", {"job": "inbox", "text": "two"}, WAIT)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(
            "UPDATE routed_requests SET body = (SELECT body FROM routed_requests WHERE id = %s)"
            " WHERE id = %s",
            (first, second),
        )
    claimed = {c.id: c for c in owner.claim({"inbox": epoch})}
    assert claimed[first].request == {"job": "inbox", "text": "one"}
    assert claimed[first].problem is None
    assert "record belongs to another" in str(claimed[second].problem)  # answered refused


def test_a_changed_op_or_an_old_row_put_back_is_not_run(pg_dsn: str, keyring: Keyring) -> None:
    clock = ManualClock()
    epoch = _leases(pg_dsn, "node-b", clock).acquire("inbox").epoch
    asker, owner = _requests(pg_dsn, "node-a", keyring), _requests(pg_dsn, "node-b", keyring)
    changed = asker.submit("inbox", "resume", {"job": "inbox"}, WAIT)
    old = asker.submit("inbox", "beat", {"job": "inbox"}, timedelta(seconds=-40))
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("UPDATE routed_requests SET op = 'pause' WHERE id = %s", (changed,))
        conn.execute(  # sealed 40 s in the past, put back with a fresh row deadline
            "UPDATE routed_requests SET deadline = now() + interval '1 hour' WHERE id = %s", (old,)
        )
    claimed = {c.id: c.problem for c in owner.claim({"inbox": epoch})}
    assert "the sealed request 'resume'" in str(claimed[changed])
    assert "deadline" in str(claimed[old])


def test_insert_and_answer_are_notified(pg_dsn: str, keyring: Keyring) -> None:
    clock = ManualClock()
    epoch = _leases(pg_dsn, "node-b", clock).acquire("inbox").epoch
    heard: queue.Queue[str | None] = queue.Queue()
    errors: list[str] = []
    listen_db = Database(pg_dsn, application_name="test listen")
    listener = Listener(listen_db, CHANNEL, heard.put, on_error=errors.append)
    listener.start()
    try:
        assert heard.get(timeout=5) is None  # connected: look at the table
        asker, owner = _requests(pg_dsn, "node-a", keyring), _requests(pg_dsn, "node-b", keyring)
        rid = asker.submit("inbox", "beat", {"job": "inbox"}, WAIT)
        assert heard.get(timeout=5) == "r:inbox"
        (claimed,) = owner.claim({"inbox": epoch})
        owner.answer(claimed, {"ok": True})
        assert heard.get(timeout=5) == f"a:{rid}"

        with psycopg.connect(pg_dsn, autocommit=True) as conn:  # the connection is cut
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = 'test listen'"
            )
        assert heard.get(timeout=10) is None  # reconnected: look at the table again
        assert len(errors) == 1
        asker.submit("inbox", "beat", {"job": "inbox"}, WAIT)
        assert heard.get(timeout=5) == "r:inbox"
    finally:
        listener.stop()
    assert not listener.alive
