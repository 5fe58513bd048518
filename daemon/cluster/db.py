"""One PostgreSQL connection of a cluster component, and how its failures are told.

:class:`Database` holds one synchronous psycopg connection in autocommit mode, opened
at first use and opened afresh after it broke (PostgreSQL restarted, the network
dropped). It is not thread-safe: one component, one thread (the asyncio loop).

Secrets: a DSN may carry a password. :func:`redact` gives the location an operator
may see (``postgresql://user@host:port/db``); :meth:`Database.describe` turns a psycopg
error into ``(code, detail)`` with the password scrubbed. Nothing in this package puts
a DSN itself into a log line or an error.

Timeouts: ``connect_timeout`` bounds opening a connection and ``statement_timeout_ms``
(when set) every statement, server-side: the runtime's connections set both, so a
hung PostgreSQL becomes a write error rather than a hung daemon. A server that is
frozen (SIGSTOP) cannot enforce its own timeout: only the keepalives below notice it,
and only when the network stops acknowledging.

Durability knob: ``synchronous_commit=False`` opens the session with
``synchronous_commit = off``: a commit returns once it is in PostgreSQL's WAL buffers
(visible to every reader at once), and is on disk within ``3 x wal_writer_delay``
(600 ms by default). A crash of vigil loses nothing PostgreSQL acknowledged; a crash
of PostgreSQL's host can lose that window. A later synchronous commit flushes the WAL
up to itself, so everything committed before it too.
"""

from __future__ import annotations

import contextlib
from typing import Any

import psycopg
from psycopg import conninfo

from daemon.cluster.errors import DatabaseUnavailable

__all__ = ["Connection", "Database", "redact"]

Connection = psycopg.Connection[tuple[Any, ...]]


def redact(dsn: str) -> str:
    """``postgresql://user@host:port/db`` for ``dsn``: never its password or options."""
    try:
        parts = conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "postgresql://<unparseable database URL>"
    user = parts.get("user")
    host = parts.get("host") or parts.get("hostaddr") or "localhost"
    port = parts.get("port")
    dbname = parts.get("dbname")
    return (
        "postgresql://"
        + (f"{user}@" if user else "")
        + str(host)
        + (f":{port}" if port else "")
        + (f"/{dbname}" if dbname else "")
    )


def _password(dsn: str) -> str | None:
    try:
        value = conninfo.conninfo_to_dict(dsn).get("password")
    except psycopg.ProgrammingError:
        return None
    return str(value) if value else None


class Database:
    """A lazily (re)opened autocommit connection to ``dsn``; see the module docstring."""

    def __init__(
        self,
        dsn: str,
        *,
        application_name: str = "vigil",
        connect_timeout: int = 5,
        synchronous_commit: bool = True,
        statement_timeout_ms: int | None = None,
    ) -> None:
        self._dsn = dsn
        self._secret = _password(dsn)
        self.where = redact(dsn)
        self.application_name = application_name
        self.connect_timeout = connect_timeout
        self.synchronous_commit = synchronous_commit
        self.statement_timeout_ms = statement_timeout_ms
        self._conn: Connection | None = None
        self.connects = 0  # how many connections were opened (tests, status)

    def __repr__(self) -> str:  # never the DSN
        return f"Database({self.where!r})"

    def connection(self) -> Connection:
        """The open connection, opening one if there is none or it broke.

        Raises psycopg's :class:`~psycopg.OperationalError` when PostgreSQL cannot be
        reached; callers map it (:meth:`unavailable`, or a write error of their own).
        """
        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        self.discard()
        settings = [] if self.synchronous_commit else ["-c synchronous_commit=off"]
        if self.statement_timeout_ms is not None:
            # A statement PostgreSQL cannot finish in time (a lock never granted, an
            # overloaded server) fails instead of blocking the daemon's event loop; a
            # client frozen inside a transaction (SIGSTOP) loses its session, and so
            # the row locks it held, after as long.
            timeout = int(self.statement_timeout_ms)
            settings.append(f"-c statement_timeout={timeout}")
            settings.append(f"-c idle_in_transaction_session_timeout={timeout}")
        options = " ".join(settings)
        # Keepalives: notice a dead server or link in about 15 s, not the kernel's 2 hours.
        self._conn = psycopg.connect(
            self._dsn,
            autocommit=True,
            application_name=self.application_name,
            connect_timeout=self.connect_timeout,
            options=options,
            keepalives=1,
            keepalives_idle=5,
            keepalives_interval=2,
            keepalives_count=3,
            tcp_user_timeout=15_000,
        )
        self.connects += 1
        return self._conn

    def discard(self) -> None:
        """Drop the connection (after a failure); the next :meth:`connection` opens one."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):  # already gone; nothing to release
                conn.close()

    def close(self) -> None:
        self.discard()

    def lost(self, exc: BaseException) -> bool:
        """Whether ``exc`` means the connection is gone (the outcome of a statement in
        flight is unknown), as opposed to a statement PostgreSQL refused (nothing done)."""
        if isinstance(exc, psycopg.InterfaceError):
            return True
        if not isinstance(exc, psycopg.OperationalError):
            return False
        conn = self._conn
        return conn is None or conn.closed or conn.broken

    def describe(self, exc: BaseException) -> tuple[str, str]:
        """``(code, detail)`` of an error: the SQLSTATE (or the class name) and the
        server's first line, with any password scrubbed."""
        code = getattr(exc, "sqlstate", None) or type(exc).__name__
        lines = str(exc).strip().splitlines()
        detail = lines[0] if lines else type(exc).__name__
        if self._secret:
            detail = detail.replace(self._secret, "***")
        return str(code), detail

    def unavailable(self, exc: BaseException) -> DatabaseUnavailable:
        code, detail = self.describe(exc)
        return DatabaseUnavailable(self.where, code, detail)
