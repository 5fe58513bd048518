"""vigil creates and migrates its own schema, and refuses one newer than it knows."""

from __future__ import annotations

import threading

import psycopg
import pytest

from daemon.cluster.db import Database
from daemon.cluster.errors import SchemaVersionError
from daemon.cluster.schema import LATEST, MIGRATIONS, Migration, current_version, migrate
from tests.cluster.conftest import NewDatabase

TABLES = [
    "conversations",
    "events",
    "leases",
    "nodes",
    "routed_requests",
    "transcript_streams",
    "transcripts",
]


def _tables(db: Database) -> list[str]:
    rows = db.connection().execute(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
    )
    return [r[0] for r in rows]


def test_migrates_an_empty_database_once(new_database: NewDatabase) -> None:
    db = Database(new_database())
    assert current_version(db.connection()) == 0
    assert migrate(db.connection(), db.where) == LATEST
    assert _tables(db) == [*TABLES, "vigil_schema"]
    assert migrate(db.connection(), db.where) == LATEST  # idempotent
    rows = db.connection().execute("SELECT version, description FROM vigil_schema").fetchall()
    assert rows == [(m.version, m.description) for m in MIGRATIONS]
    db.close()


def test_a_newer_schema_is_refused_and_nothing_is_changed(new_database: NewDatabase) -> None:
    db = Database(new_database())
    conn = db.connection()
    conn.execute("CREATE TABLE vigil_schema (version integer PRIMARY KEY, description text)")
    conn.execute("INSERT INTO vigil_schema VALUES (%s, 'from the future')", (LATEST + 1,))
    with pytest.raises(SchemaVersionError) as caught:
        migrate(conn, db.where)
    assert caught.value.found == LATEST + 1
    assert f"knows versions up to {LATEST}" in str(caught.value)
    assert db.where in str(caught.value)
    assert _tables(db) == ["vigil_schema"]
    db.close()


def test_a_failing_step_leaves_nothing_half_done(new_database: NewDatabase) -> None:
    db = Database(new_database())
    broken = (
        *MIGRATIONS,
        Migration(LATEST + 1, "broken", ("CREATE TABLE extra (x int)", "SELECT no_such_fn()")),
    )
    with pytest.raises(psycopg.errors.UndefinedFunction):
        migrate(db.connection(), db.where, broken)
    assert current_version(db.connection()) == LATEST  # the earlier steps stay applied
    assert "extra" not in _tables(db)
    db.close()


def test_nodes_migrating_together_apply_each_step_once(new_database: NewDatabase) -> None:
    dsn = new_database()
    errors: list[BaseException] = []

    def run() -> None:
        db = Database(dsn)
        try:
            migrate(db.connection(), db.where)
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            db.close()

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    db = Database(dsn)
    assert db.connection().execute("SELECT count(*) FROM vigil_schema").fetchone() == (LATEST,)
    db.close()


def test_migrations_must_be_numbered_in_order(new_database: NewDatabase) -> None:
    db = Database(new_database())
    with pytest.raises(ValueError, match="numbered"):
        migrate(db.connection(), db.where, (Migration(2, "skips 1", ("SELECT 1",)),))
    db.close()


def test_a_version_1_database_gains_the_routed_requests(new_database: NewDatabase) -> None:
    db = Database(new_database())
    assert migrate(db.connection(), db.where, MIGRATIONS[:1]) == 1
    assert "routed_requests" not in _tables(db)
    assert migrate(db.connection(), db.where) == LATEST == 2
    assert "routed_requests" in _tables(db)
    db.close()
