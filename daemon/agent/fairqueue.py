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
* The gap after giving up: a beat gives up shortly before its conversation's next beat
  is due, so for a moment that conversation is owed a place but has no beat waiting.
  A slot that frees then is *held* for it (up to ``hold_s`` after it gave up) rather
  than handed to a fresher beat that happens to arrive first; otherwise conversations
  due together are served in the same arrival order at every round, and the ones
  arriving first win again and again. :meth:`FairQueue.hold_ends` says when to look
  again.
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
HOLD_S = 1.5  # the wait window ends up to 1 s before the next beat, plus dispatch lag


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
    def __init__(
        self, clock: Clock, *, window_s: float = RATE_WINDOW_S, hold_s: float = HOLD_S
    ) -> None:
        self._clock = clock
        self.window_s = window_s
        self.hold_s = hold_s
        self._gave_up_at: dict[str, float] = {}  # owed conversations between two beats
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
        self._gave_up_at.pop(key, None)
        self._waiting[key] = (place, next(self._arrivals))
        self._offered.add(self._clock.monotonic())
        return place

    def next(self, live: Callable[[str], bool]) -> str | None:
        """Whom the next free slot goes to (not removed: call :meth:`served`); None when
        nobody waits, or the slot is held for an owed conversation between two beats."""
        if not self._waiting:
            return None
        best = min(
            self._waiting,
            key=lambda k: (self._waiting[k][0], not live(k), self._waiting[k][1]),
        )
        held = self._held_for(self._waiting[best][0])
        return None if held else best

    def hold_ends(self) -> float | None:
        """When the current hold on a free slot lapses (monotonic), if there is one."""
        if not self._waiting:
            return None
        best = min(place for place, _ in self._waiting.values())
        held = self._held_for(best)
        return min(self._gave_up_at[k] + self.hold_s for k in held) if held else None

    def _held_for(self, place: float) -> list[str]:
        """Owed conversations between two beats whose place is older than ``place``."""
        now = self._clock.monotonic()
        for key, at in list(self._gave_up_at.items()):
            if now - at >= self.hold_s:
                del self._gave_up_at[key]  # its next beat did not come: no longer held
        return [k for k in self._gave_up_at if self._places.get(k, place) < place]

    def served(self, key: str) -> None:
        """``key``'s waiting beat got its slot: it leaves the queue, its place is cleared."""
        del self._waiting[key]
        self._places.pop(key, None)
        self._served.add(self._clock.monotonic())

    def gave_up(self, key: str) -> None:
        """``key``'s beat waited past its window: it leaves, the place stays."""
        del self._waiting[key]
        now = self._clock.monotonic()
        self._gave_up.add(now)
        self._gave_up_at[key] = now

    def withdraw(self, key: str) -> None:
        """``key``'s beat stopped waiting for another reason (the daemon stops)."""
        self._waiting.pop(key, None)

    def drop(self, key: str) -> None:
        """Forget ``key``'s place (its beat was skipped for a reason of its own)."""
        if key not in self._waiting:
            self._places.pop(key, None)
            self._gave_up_at.pop(key, None)

    def forget(self, key: str) -> None:
        self._waiting.pop(key, None)
        self._places.pop(key, None)
        self._gave_up_at.pop(key, None)

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
