"""PostgreSQL restarting or going away under an open log: the next append succeeds on
a fresh connection or fails with a clear JournalWriteError; nothing acknowledged is
lost, nothing unacknowledged stays, and no password shows in any message."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import psycopg
import pytest

from daemon.cluster.db import Database
from daemon.cluster.errors import DatabaseUnavailable
from daemon.errors import JournalFatalError, JournalWriteError
from daemon.journal.keyring import Keyring
from daemon.testing.postgres import PostgresServer
from tests.cluster.conftest import migrated, start_server
from tests.cluster.helpers import ManualClock, node


@pytest.fixture(scope="module")
def own_server() -> Iterator[PostgresServer]:
    """A server of this module's own, so stopping it disturbs no other test."""
    server = start_server()
    yield server
    server.destroy()


_NAMES = itertools.count()


@pytest.fixture
def dsn(own_server: PostgresServer) -> str:
    if not own_server.running:
        own_server.start_again()
    return migrated(own_server.create_database(f"r{next(_NAMES)}"))


def _texts(dsn: str, keyring: Keyring) -> list[tuple[int, str]]:
    reader = node(dsn, "reader", keyring, ManualClock())
    texts = [(s, e["text"]) for s, e in reader.events.read("inbox")]
    reader.close()
    return texts


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_an_append_after_a_restart_succeeds_on_a_fresh_connection(
    own_server: PostgresServer, dsn: str, keyring: Keyring, mode: str
) -> None:
    a = node(dsn, "node-a", keyring, ManualClock())
    log = a.events.open("inbox")
    log.append({"text": "before"})
    log.sync()
    own_server.restart(mode)
    assert log.append({"text": "after"}) == 2
    log.sync()
    assert a.events.db.connects == 2
    assert _texts(dsn, keyring) == [(1, "before"), (2, "after")]
    log.close()
    a.close()


def test_while_postgres_is_down_appends_fail_clearly_and_nothing_is_lost(
    own_server: PostgresServer, dsn: str, keyring: Keyring
) -> None:
    a = node(dsn, "node-a", keyring, ManualClock())
    log = a.events.open("inbox")
    log.append({"text": "one"})
    log.sync()
    own_server.stop("fast")
    with pytest.raises(JournalWriteError) as failed:
        log.append({"text": "lost with the connection"})
    assert a.events.db.where in str(failed.value)
    assert "not acknowledged" in str(failed.value)
    with pytest.raises(JournalWriteError):
        log.append({"text": "still down"})
    assert log.last_seq == 1
    own_server.start_again()
    assert log.append({"text": "two"}) == 2
    log.close()
    assert _texts(dsn, keyring) == [(1, "one"), (2, "two")]
    a.close()


def test_a_record_in_doubt_that_landed_is_withdrawn_before_the_next_write(
    dsn: str, keyring: Keyring
) -> None:
    """The connection died after PostgreSQL committed but before the ack arrived, and
    the append could not look (PostgreSQL was down): it raised JournalWriteError. Once
    back, the record that did land is withdrawn, so "nothing was written" holds."""
    a = node(dsn, "node-a", keyring, ManualClock())
    log = a.events.open("inbox")
    log.append({"text": "one"})
    log.append({"text": "in doubt"})
    # What the failed append leaves behind: seq 2 pending, last_seq still 1.
    with psycopg.connect(dsn) as conn:
        line = conn.execute("SELECT line FROM events WHERE seq = 2").fetchone()
    assert line is not None
    log._pending, log._last_seq = (2, bytes(line[0])), 1
    a.events.db.discard()
    assert log.append({"text": "two"}) == 2
    log.close()
    assert _texts(dsn, keyring) == [(1, "one"), (2, "two")]
    a.close()


def test_records_postgres_lost_after_acknowledging_them_are_fatal(
    dsn: str, keyring: Keyring
) -> None:
    """With synchronous_commit off, a crash of PostgreSQL's host can lose the last
    acknowledged appends: the log notices at its next write and refuses to go on."""
    a = node(dsn, "node-a", keyring, ManualClock())
    log = a.events.open("inbox")
    for text in ("one", "two", "three"):
        log.append({"text": text})
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM events WHERE seq = 3")  # what the crash took
    a.events.db.discard()  # the crash took the connection too
    with pytest.raises(JournalFatalError, match="last record is 2, this node acknowledged 3"):
        log.append({"text": "four"})
    with pytest.raises(JournalFatalError):
        log.sync()
    log.close()
    a.close()


def test_no_password_in_any_message(own_server: PostgresServer, keyring: Keyring) -> None:
    secret = "s3cret-Pw-9"  # noqa: S105  # a made-up password that must never show
    dsn = f"postgresql://vigil:{secret}@127.0.0.1:{own_server.port}/nosuchdb"
    db = Database(dsn)
    assert secret not in repr(db) and secret not in db.where
    with pytest.raises(psycopg.OperationalError) as raw:
        db.connection()
    error = db.unavailable(raw.value)
    assert isinstance(error, DatabaseUnavailable)
    assert "nosuchdb" in str(error) and secret not in str(error)
    clock = ManualClock()
    a = node(dsn, "node-a", keyring, clock)
    with pytest.raises(DatabaseUnavailable) as caught:
        a.events.open("inbox")
    assert secret not in str(caught.value) and secret not in repr(caught.value)
    a.close()
