"""The mirror's SQLite file: opening it, its schema version, its write transactions.

Created owner-only; opened read-only by readers (``vigil search``, ``sessions``), which
never create or change anything; recreated empty (every table dropped) when it was
written by another schema version, since it is derived and a rebuild refills it. The
tables themselves are in :mod:`daemon.mirror.schema`.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from daemon.errors import VigilError
from daemon.fsutil import FILE_MODE, ensure_private_dir
from daemon.mirror.schema import INDEXES, SCHEMA, SCHEMA_VERSION, TABLES

__all__ = [
    "BULK_WAIT_MS",
    "MirrorError",
    "begin_waiting",
    "connect",
    "create_schema",
    "is_busy",
    "recreate",
    "run_script",
]

BULK_WAIT_MS = 30_000  # how long a purge or replay waits for another writer


class MirrorError(VigilError):
    """The mirror database cannot be used (missing, from another vigil, unreadable)."""

    exit_code = 1

    def __init__(self, path: Path | str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"mirror {path}: {problem}")


def connect(path: Path | str, *, readonly: bool, busy_timeout_ms: int) -> sqlite3.Connection:
    """Open the mirror at ``path`` (``":memory:"`` too) with this vigil's schema.

    ``readonly`` raises :class:`MirrorError` for a missing file or another schema;
    otherwise the file is created owner-only, put in WAL mode, and recreated empty if
    its schema is not this vigil's. ``busy_timeout_ms`` is how long a write waits for
    another writer.
    """
    memory = str(path) == ":memory:"
    if readonly:
        if memory or not Path(path).exists():
            raise MirrorError(path, "does not exist (is the daemon running?)")
        db = sqlite3.connect(
            f"{Path(path).absolute().as_uri()}?mode=ro", uri=True, isolation_level=None
        )
    else:
        if not memory:
            try:
                _create_private(Path(path))
            except OSError as exc:
                raise MirrorError(path, f"cannot be created ({exc.strerror})") from None
        db = sqlite3.connect(str(path), isolation_level=None)
    db.row_factory = sqlite3.Row
    db.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    try:
        _prepare(db, path, readonly=readonly, memory=memory, busy_timeout_ms=busy_timeout_ms)
    except sqlite3.DatabaseError as exc:
        db.close()
        raise MirrorError(path, f"cannot be used ({exc})") from None
    except MirrorError:
        db.close()
        raise
    return db


def _prepare(
    db: sqlite3.Connection, path: Path | str, *, readonly: bool, memory: bool, busy_timeout_ms: int
) -> None:
    version = _schema_version(db)
    if readonly:
        if version != SCHEMA_VERSION:
            raise MirrorError(
                path,
                f"schema {version} is not this vigil's ({SCHEMA_VERSION}); run `vigil rebuild`",
            )
        return
    if not memory:
        db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    db.execute("PRAGMA temp_store = MEMORY")
    if version != SCHEMA_VERSION:
        recreate(db, busy_timeout_ms)


def _schema_version(db: sqlite3.Connection) -> int | None:
    try:
        row = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
    except sqlite3.OperationalError:
        return None  # no meta table: empty or not ours
    return int(row[0]) if row is not None else None


def recreate(db: sqlite3.Connection, busy_timeout_ms: int) -> None:
    """Drop every table and create the schema afresh (in one transaction)."""
    begin_waiting(db, busy_timeout_ms)
    try:
        create_schema(db)
        run_script(db, INDEXES)
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def create_schema(db: sqlite3.Connection) -> None:
    """Within a transaction: every table dropped and created empty, without the
    secondary indexes (``INDEXES``, the caller's)."""
    for table in TABLES:
        db.execute(f"DROP TABLE IF EXISTS {table}")
    run_script(db, SCHEMA)
    db.execute("INSERT INTO meta(key, value) VALUES ('schema', ?)", (str(SCHEMA_VERSION),))


def run_script(db: sqlite3.Connection, script: str) -> None:
    for statement in _statements(script):
        db.execute(statement)


def begin_waiting(db: sqlite3.Connection, busy_timeout_ms: int) -> None:
    """BEGIN IMMEDIATE, waiting up to :data:`BULK_WAIT_MS` for another writer: a purge
    or replay is explicit work, unlike a flush, which never waits."""
    db.execute(f"PRAGMA busy_timeout = {max(BULK_WAIT_MS, busy_timeout_ms)}")
    try:
        db.execute("BEGIN IMMEDIATE")
    finally:
        db.execute(f"PRAGMA busy_timeout = {busy_timeout_ms}")


def is_busy(exc: sqlite3.Error) -> bool:
    """Another writer holds the database ("locked" or "busy")."""
    text = str(exc)
    return "locked" in text or "busy" in text


def _statements(script: str) -> list[str]:
    """Split a script into statements (triggers contain ``;`` themselves)."""
    out: list[str] = []
    current = ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            out.append(current)
            current = ""
    return out


def _create_private(path: Path) -> None:
    ensure_private_dir(path.parent)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)
