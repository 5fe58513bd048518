"""The daemon's mirror: rebuilt from the journals in the background after ``READY=1``.

The mirror is derived, so start-up does not wait for it: recovery reads what the
daemon needs (conversation state, ledgers), announces READY, and then the mirror is
rebuilt from every journal (``mirror_rebuild.rebuild``, in worker processes) on a
thread of its own, with its own SQLite connection. Events journaled meanwhile wait in
a backlog, in order; once the rebuild is in, the backlog is applied through
``Mirror.apply``, which ignores what the rebuild already holds (sequence numbers), so
every record lands exactly once. Readers (``vigil search``, ``sessions``) see the
previous contents until the rebuild commits.

If the rebuild fails, the mirror stays stale and ``error`` says why; the journals are
untouched and ``vigil rebuild`` (or the next start) puts it right.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Literal

from daemon.errors import VigilError
from daemon.events import Event
from daemon.journal.keyring import Keyring
from daemon.logs import get_logger
from daemon.mirror.db import Mirror
from daemon.mirror.rebuild import RebuildStats, rebuild

MirrorPhase = Literal["rebuilding", "ready", "failed"]
MAX_BACKLOG = 1_000_000  # events; beyond this the mirror gives up until the next rebuild


class LiveMirror:
    """Use from the event loop's thread (the rebuild runs on a worker thread)."""

    def __init__(self, path: Path, journals: Path, keyring: Keyring) -> None:
        self.path = path
        self.journals = journals
        self.keyring = keyring
        self.phase: MirrorPhase = "rebuilding"
        self.error: Exception | None = None
        self.stats: RebuildStats | None = None
        self._mirror: Mirror | None = None
        self._backlog: list[tuple[str, int, Event]] = []
        self._log = get_logger(component="mirror")

    def apply(self, conversation: str, seq: int, event: Event) -> None:
        """A listener for :meth:`Conversation.record`: after the record is journaled."""
        if self._mirror is not None:
            self._mirror.apply(conversation, seq, event)
        elif self.phase == "rebuilding":
            if len(self._backlog) >= MAX_BACKLOG:
                self._give_up(RuntimeError(f"more than {MAX_BACKLOG} events during the rebuild"))
                return
            self._backlog.append((conversation, seq, event))

    async def build(self, workers: int) -> None:
        """Rebuild on a thread, then switch to applying events as they come."""
        started = time.monotonic()
        try:
            self.stats = await asyncio.to_thread(self._rebuild, workers)
            mirror = Mirror.open(self.path)
        except (VigilError, sqlite3.Error, OSError) as exc:
            self._give_up(exc)
            return
        if self.phase == "failed":
            mirror.close()
            return
        backlog, self._backlog = self._backlog, []
        for conversation, seq, event in backlog:
            mirror.apply(conversation, seq, event)
        self._mirror = mirror
        self.phase = "ready"
        self._log.info(
            "mirror_ready",
            records=self.stats.records,
            conversations=self.stats.conversations,
            left_out=[str(e) for e in self.stats.errors],
            backlog=len(backlog),
            seconds=round(time.monotonic() - started, 3),
        )

    def _rebuild(self, workers: int) -> RebuildStats:
        mirror = Mirror.open(self.path)
        try:
            return rebuild(mirror, self.journals, self.keyring, workers=workers)
        finally:
            mirror.close()

    def _give_up(self, exc: Exception) -> None:
        self.phase = "failed"
        self.error = exc
        self._backlog = []
        self._log.error(
            "mirror_failed",
            error=str(exc),
            fix="the journals are intact; `vigil rebuild` or a restart rebuilds it",
        )

    def flush(self) -> None:
        if self._mirror is not None:
            self._mirror.flush()
            if self._mirror.error is not None and self.error is None:
                self.error = self._mirror.error
                self.phase = "failed"
                self._log.error(
                    "mirror_failed",
                    error=str(self.error),
                    fix="the journals are intact; `vigil rebuild` or a restart rebuilds it",
                )

    def close(self) -> None:
        if self._mirror is not None:
            self._mirror.close()
            self._mirror = None
