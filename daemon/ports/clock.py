"""The clock port: wall time and monotonic time, so time-driven logic can be tested
with a fake clock (:class:`daemon.testing.fakes.FakeClock`)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Protocol

__all__ = ["Clock", "SystemClock"]


class Clock(Protocol):
    """Contract: ``now`` is timezone-aware UTC; ``monotonic`` never goes back."""

    def now(self) -> datetime: ...

    def monotonic(self) -> float: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()
