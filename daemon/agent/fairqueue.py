"""Who gets the next free turn slot: the fair order of waiting beats (pure: no I/O).

:class:`~daemon.agent.pool.ClientPool` asks this queue whom to serve each time a turn
slot frees up. Contract:

* A waiting beat is served by its conversation's *place*: the due time of the
  conversation's oldest unserved beat. Oldest place first, across all conversations,
  whether or not their client is live.
* A beat that gave up waiting (journaled ``no_capacity``) keeps its conversation's
  place: the conversation's next beat is served as if it were due when the skipped one
  was, so it goes before later-due beats of other conversations. Serving a beat clears
  the place; so does :meth:`FairQueue.drop` (a beat skipped for another reason, such as
  active hours: nothing is owed to that conversation then).
* A live client only breaks ties between equal places (it saves a resume); arrival
  order breaks the rest. So a live client never starves anyone.
* It counts beats offered (arrivals), served (grants) and given up over the last
  ``window_s`` of the clock's monotonic time, for ``vigil status`` and the
  ``over_capacity`` log line.

Times are the clock's monotonic seconds (:class:`daemon.ports.clock.Clock`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from itertools import count

from daemon.ports.clock import Clock

__all__ = ["RATE_WINDOW_S", "FairQueue", "QueueLoad"]

RATE_WINDOW_S = 60.0


@dataclass(frozen=True)
class QueueLoad:
    """The queue at one instant; rates are per minute over the last ``window_s``."""

    backlog: int  # beats waiting for a turn slot now
    oldest_key: str | None  # whose waiting beat has the oldest place
    oldest_waited_s: float | None  # since that place (its first unserved beat) came due
    offered_per_min: float
    served_per_min: float
    gave_up: int  # beats that waited past their window within ``window_s``
    window_s: float

    @property
    def over_capacity(self) -> bool:
        """Beats went unserved recently: the fleet asks for more than the slots give."""
        return self.gave_up > 0


class _Events:
    """Monotonic times of one kind of event, kept for ``window_s``."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._times: deque[float] = deque()

    def add(self, when: float) -> None:
        self._times.append(when)
        self.prune(when)

    def prune(self, now: float) -> int:
        while self._times and self._times[0] <= now - self.window_s:
            self._times.popleft()
        return len(self._times)


class FairQueue:
    def __init__(self, clock: Clock, *, window_s: float = RATE_WINDOW_S) -> None:
        self._clock = clock
        self.window_s = window_s
        self._since = clock.monotonic()
        self._places: dict[str, float] = {}  # conversations owed a turn since this due time
        self._waiting: dict[str, tuple[float, int]] = {}  # key -> (place, arrival number)
        self._arrivals = count()
        self._offered = _Events(window_s)
        self._served = _Events(window_s)
        self._gave_up = _Events(window_s)

    def __len__(self) -> int:
        return len(self._waiting)

    def __contains__(self, key: object) -> bool:
        return key in self._waiting

    def arrive(self, key: str, due: float) -> float:
        """A beat of ``key`` due at ``due`` waits for a slot; returns its place."""
        if key in self._waiting:
            raise ValueError(f"a beat of {key!r} is already waiting")
        place = min(due, self._places.get(key, due))
        self._places[key] = place
        self._waiting[key] = (place, next(self._arrivals))
        self._offered.add(self._clock.monotonic())
        return place

    def next(self, live: Callable[[str], bool]) -> str | None:
        """Whom the next free slot goes to (not removed: call :meth:`served`)."""
        if not self._waiting:
            return None
        return min(
            self._waiting,
            key=lambda k: (self._waiting[k][0], not live(k), self._waiting[k][1]),
        )

    def served(self, key: str) -> None:
        """``key``'s waiting beat got its slot: it leaves the queue, its place is cleared."""
        del self._waiting[key]
        self._places.pop(key, None)
        self._served.add(self._clock.monotonic())

    def gave_up(self, key: str) -> None:
        """``key``'s beat waited past its window: it leaves, the place stays."""
        del self._waiting[key]
        self._gave_up.add(self._clock.monotonic())

    def withdraw(self, key: str) -> None:
        """``key``'s beat stopped waiting for another reason (the daemon stops)."""
        self._waiting.pop(key, None)

    def drop(self, key: str) -> None:
        """Forget ``key``'s place (its beat was skipped for a reason of its own)."""
        if key not in self._waiting:
            self._places.pop(key, None)

    def forget(self, key: str) -> None:
        self._waiting.pop(key, None)
        self._places.pop(key, None)

    def load(self) -> QueueLoad:
        now = self._clock.monotonic()
        span = max(min(self.window_s, now - self._since), 1.0)
        oldest = min(self._waiting, key=lambda k: self._waiting[k], default=None)
        return QueueLoad(
            backlog=len(self._waiting),
            oldest_key=oldest,
            oldest_waited_s=None if oldest is None else now - self._waiting[oldest][0],
            offered_per_min=self._offered.prune(now) * 60 / span,
            served_per_min=self._served.prune(now) * 60 / span,
            gave_up=self._gave_up.prune(now),
            window_s=self.window_s,
        )
