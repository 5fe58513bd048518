"""One owner per conversation: every append is fenced on the lease epoch, in the same
transaction; a node that lost a conversation writes nothing more for it."""

from __future__ import annotations

from datetime import timedelta

import psycopg
import pytest

from daemon.cluster.errors import LeaseHeld, RecordCorruptError
from daemon.errors import JournalCorruptError, OwnershipLost
from daemon.journal.keyring import Keyring
from daemon.ports.eventlog import Event
from tests.cluster.helpers import TTL, ManualClock, node


def _delta(text: str) -> Event:
    return {"type": "delta", "turn": 1, "text": text}


def test_a_takeover_fences_the_old_owner_and_the_new_one_carries_on(
    pg_dsn: str, keyring: Keyring
) -> None:
    clock = ManualClock()
    a, b = node(pg_dsn, "node-a", keyring, clock), node(pg_dsn, "node-b", keyring, clock)
    log_a = a.events.open("inbox")
    assert [log_a.append(_delta(f"a{i}")) for i in range(3)] == [1, 2, 3]

    with pytest.raises(LeaseHeld):
        b.events.open("inbox")  # a is alive: b may not take it
    clock.advance(TTL + timedelta(seconds=1))  # a went silent (SIGSTOP, partition, ...)
    seen: list[Event] = []
    log_b = b.events.open("inbox", visit=seen.append)
    assert [e["text"] for e in seen] == ["a0", "a1", "a2"]
    assert (log_b.last_seq, log_b.epoch) == (3, 2)

    with pytest.raises(OwnershipLost, match="node-b owns it now") as lost:
        log_a.append(_delta("a3, too late"))
    assert (lost.value.node, lost.value.epoch) == ("node-a", 1)
    with pytest.raises(OwnershipLost):
        log_a.append(_delta("a4"))  # it stays fenced without asking again
    with pytest.raises(OwnershipLost):
        log_a.sync()
    log_a.close()  # allowed, writes nothing, releases nothing

    assert log_b.append(_delta("b0")) == 4
    log_b.sync()
    assert [(s, e["text"]) for s, e in b.events.read("inbox")] == [
        (1, "a0"),
        (2, "a1"),
        (3, "a2"),
        (4, "b0"),
    ]
    log_b.close()
    a.close()
    b.close()


def test_a_second_open_of_the_same_node_fences_the_first(pg_dsn: str, keyring: Keyring) -> None:
    clock = ManualClock()
    old, new = node(pg_dsn, "node-a", keyring, clock), node(pg_dsn, "node-a", keyring, clock)
    log_old = old.events.open("inbox")
    log_old.append(_delta("old"))
    log_new = new.events.open("inbox")  # a restarted process under the same node name
    with pytest.raises(OwnershipLost, match=r"node-a \(epoch 2\) owns it now"):
        log_old.append(_delta("stale"))
    assert log_new.append(_delta("new")) == 2
    assert [e["text"] for _, e in new.events.read("inbox")] == ["old", "new"]
    old.close()
    new.close()


def test_close_releases_the_lease_for_a_handover_between_turns(
    pg_dsn: str, keyring: Keyring
) -> None:
    clock = ManualClock()
    a, b = node(pg_dsn, "node-a", keyring, clock), node(pg_dsn, "node-b", keyring, clock)
    log = a.events.open("inbox")
    log.append(_delta("turn 1"))
    log.close()
    log_b = b.events.open("inbox")  # no waiting for the lease to expire
    assert log_b.last_seq == 1
    log_b.close()
    a.close()
    b.close()


def test_postgres_holds_only_ciphertext_and_reading_checks_every_row(
    pg_dsn: str, keyring: Keyring
) -> None:
    clock = ManualClock()
    a = node(pg_dsn, "node-a", keyring, clock)
    log = a.events.open("inbox")
    for i in range(3):
        log.append(_delta(f"canary-{i}"))
    log.close()
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        rows = conn.execute("SELECT seq, key_id, line FROM events ORDER BY seq").fetchall()
        assert [r[0] for r in rows] == [1, 2, 3]
        assert {r[1] for r in rows} == {keyring.current_id}
        assert all(b"canary" not in bytes(r[2]) for r in rows)
        assert bytes(rows[0][2]).startswith(b'{"v":1,"c":"inbox","s":1,')  # the file's line

        conn.execute("UPDATE events SET line = %s WHERE seq = 2", (rows[0][2],))  # swapped in
        with pytest.raises(JournalCorruptError, match=r"sequence 2: .*says sequence 1"):
            list(a.events.read("inbox"))
        conn.execute("DELETE FROM events WHERE seq = 2")
        with pytest.raises(RecordCorruptError, match="sequence 2: the record is missing"):
            a.events.open("inbox")
    a.close()
