"""Overload made visible: the turn-slot queue's load for ``vigil status``, and an
``over_capacity`` log line at most once a minute while beats go unserved.

The fleet is *over capacity* while beats wait past their window for a turn slot
(journaled ``no_capacity``): the jobs ask for more turns than ``max_concurrent_turns``
slots give. The pool still serves the conversations fairly (oldest due first), but each
conversation then beats less often than its schedule says.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from daemon.agent.fairqueue import QueueLoad
from daemon.ports.clock import Clock

if TYPE_CHECKING:
    from daemon.runtime.context import Runtime

__all__ = ["OVER_CAPACITY_EVERY_S", "OverloadAlarm", "load_json"]

OVER_CAPACITY_EVERY_S = 60.0
HINT = (
    "beats wait past their window for a turn slot: raise max_concurrent_turns and "
    "max_live_clients if the machine has CPU and memory to spare, or lengthen intervals "
    "(README: sizing the pool)"
)


def load_json(load: QueueLoad) -> dict[str, Any]:
    """The ``overload`` part of ``vigil status --json`` (keys are stable)."""
    oldest = None
    if load.oldest_key is not None and load.oldest_waited_s is not None:
        oldest = {"job": load.oldest_key, "waited_s": round(load.oldest_waited_s, 1)}
    return {
        "over_capacity": load.over_capacity,
        "backlog": load.backlog,
        "oldest_waiting": oldest,
        "offered_per_min": round(load.offered_per_min, 1),
        "served_per_min": round(load.served_per_min, 1),
        "no_capacity_skips": load.gave_up,
        "window_s": load.window_s,
    }


class OverloadAlarm:
    """Says when an ``over_capacity`` line is due: at most once per ``every_s``."""

    def __init__(self, clock: Clock, every_s: float = OVER_CAPACITY_EVERY_S) -> None:
        self._clock = clock
        self.every_s = every_s
        self._last: float | None = None

    def ready(self) -> bool:
        now = self._clock.monotonic()
        if self._last is not None and now - self._last < self.every_s:
            return False
        self._last = now
        return True

    def beat_unserved(self, rt: Runtime, job: str, waited_s: float) -> None:
        """A beat of ``job`` was skipped ``no_capacity``: log the overload, rate-limited."""
        if not self.ready():
            return
        pool = rt.pool
        load = pool.queue.load()
        oldest_s = load.oldest_waited_s
        rt.log.warning(
            "over_capacity",
            job=job,
            waited_s=round(waited_s, 1),
            backlog=load.backlog,
            oldest_job=load.oldest_key,
            oldest_waited_s=None if oldest_s is None else round(oldest_s, 1),
            offered_per_min=round(load.offered_per_min, 1),
            served_per_min=round(load.served_per_min, 1),
            no_capacity_skips=load.gave_up,
            window_s=load.window_s,
            max_concurrent_turns=pool.max_turns,
            max_live_clients=pool.max_live,
            hint=HINT,
        )
