"""LISTEN on one channel, on a dedicated autocommit connection, in a thread.

psycopg's :meth:`~psycopg.Connection.notifies` blocks, so it runs in a daemon thread
of its own that hands every payload to ``on_notify`` (which must be thread-safe: the
runtime passes it on to its event loop with ``call_soon_threadsafe``). When the
connection breaks (PostgreSQL restarted, the network dropped) the thread reconnects
with a growing pause (up to :data:`MAX_BACKOFF_S`), and after every (re)connect it calls
``on_notify(None)``: a notification sent while nobody listened is lost, so the receiver
looks at the table itself. Notifications are a shortcut: the receivers also poll.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import psycopg
from psycopg import sql

from daemon.cluster.db import Database

__all__ = ["Listener"]

WAKE_S = 0.5  # how often the thread checks whether it should stop
MAX_BACKOFF_S = 5.0


class Listener:
    def __init__(
        self,
        db: Database,
        channel: str,
        on_notify: Callable[[str | None], None],
        *,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        """``db``: a :class:`Database` of its own (this thread is its only user)."""
        self.db = db
        self.channel = channel
        self.on_notify = on_notify
        self.on_error = on_error
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:  # never the DSN
        return f"Listener({self.db.where!r}, {self.channel!r})"

    def start(self) -> None:
        name = f"listen:{self.channel}"
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = 2 * WAKE_S) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        backoff = 0.0
        try:
            while not self._stop.is_set():
                try:
                    conn = self.db.connection()
                    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
                    backoff = 0.0
                    self.on_notify(None)  # anything sent while nobody listened
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=WAKE_S):
                            self.on_notify(note.payload)
                except psycopg.Error as exc:
                    self.db.discard()
                    if self.on_error is not None:
                        code, detail = self.db.describe(exc)
                        self.on_error(f"{code}: {detail}")
                    backoff = min(MAX_BACKOFF_S, backoff * 2 or 0.2)
                    self._stop.wait(backoff)
        finally:
            self.db.close()
