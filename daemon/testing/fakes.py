"""Test doubles of vigil's small interfaces: fakes that keep what they were given.

Each one implements the same interface as its production counterpart and passes the
same behaviour suite where there is one, so a test swaps it in instead of mocking:

* :class:`MemorySink` — a :class:`jobs.sinks.Sink` that keeps replies in a list and
  can fail its first sends (``tests/test_jobs_sinks.py`` runs the sink suite on it);
* :class:`RecordingNotifier` — a :class:`daemon.runtime.notify.Notifier` that keeps
  every sd_notify message instead of sending it.

The in-memory event log lives in :mod:`daemon.testing.memlog`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from jobs.sinks import Reply, SinkError

__all__ = ["MemorySink", "RecordingNotifier"]


@dataclass
class MemorySink:
    """Keeps replies in a list; fails the first ``fail_first`` sends (tests, demos)."""

    name: str = "memory"
    fail_first: int = 0
    received: list[Reply] = field(default_factory=list)
    attempts: int = 0

    async def send(self, reply: Reply) -> None:
        self.attempts += 1
        if self.attempts <= self.fail_first:
            raise SinkError(self.name, f"failing on purpose (attempt {self.attempts})")
        self.received.append(reply)


class RecordingNotifier:
    """Keeps every ``KEY=VALUE`` message, in order, in :attr:`messages`; never raises."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def notify(self, message: str) -> None:
        self.messages.append(message)
