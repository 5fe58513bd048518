"""A real PostgreSQL for the cluster tests: one server per session, a fresh database
per test (``CREATE DATABASE``, about 0.1 s). Missing PostgreSQL binaries fail the
tests with the install hint; they are never skipped.

The session's server runs with ``fsync=off``: the tests check vigil's logic against
real PostgreSQL semantics (transactions, locks, restarts), not the disk; a crash of
PostgreSQL itself is simulated with ``pg_ctl stop -m immediate``, which keeps the
operating system's page cache, so nothing is lost that fsync would have kept.
``bench/cluster_append.py`` measures with fsync on.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from daemon.cluster.db import Connection, Database
from daemon.cluster.schema import migrate
from daemon.journal.keyring import Keyring
from daemon.testing.harness import LoopbackModel
from daemon.testing.postgres import PostgresError, PostgresMissing, PostgresServer
from tests.cluster.fleet import LEASE_S, Fleet
from tests.e2e.conftest import dev_model  # noqa: F401  # the loopback model, a fixture

NewDatabase = Callable[[], str]


def start_server(*, fsync: bool = False) -> PostgresServer:
    try:
        return PostgresServer.start(fsync=fsync)
    except (PostgresMissing, PostgresError) as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    server = start_server()
    yield server
    server.destroy()


@pytest.fixture(scope="session")
def pg_admin(pg_server: PostgresServer) -> Iterator[Connection]:
    """A superuser connection to the server's ``postgres`` database."""
    with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
        yield conn


_DATABASES = itertools.count()


@pytest.fixture
def new_database(pg_server: PostgresServer, pg_admin: Connection) -> NewDatabase:
    """Creates an empty database on each call and returns its DSN (unmigrated)."""

    def make() -> str:
        name = f"t{next(_DATABASES)}"
        pg_admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return pg_server.dsn(name)

    return make


def migrated(dsn: str) -> str:
    db = Database(dsn)
    migrate(db.connection(), db.where)
    db.close()
    return dsn


@pytest.fixture
def pg_dsn(new_database: NewDatabase) -> str:
    """A fresh database with vigil's schema."""
    return migrated(new_database())


@pytest.fixture
def keyring() -> Keyring:
    return Keyring.generate()


def wipe(dsn: str) -> str:
    """Empty every vigil table of a migrated database (a fresh store in ~10 ms, where
    a new database takes ~0.2 s); the schema version stays."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "TRUNCATE conversations, events, transcript_streams, transcripts, leases, nodes,"
            " routed_requests"
        )
    return dsn


@pytest.fixture
def fleet(
    new_database: NewDatabase,
    dev_model: LoopbackModel,  # noqa: F811  # the fixture imported above
    tmp_path: Path,
) -> Iterator[Fleet]:
    """Real ``vigil run`` nodes (none started yet) on a fresh database, lease
    :data:`~tests.cluster.fleet.LEASE_S`; each node's log is kept in ``tmp_path``."""
    made = Fleet(new_database(), dev_model, lease=f"{LEASE_S:g}s")  # vigil migrates it
    try:
        yield made
    finally:
        made.close(keep=tmp_path)
