"""Pure numbers for ``bench/fleet.py``: beats read back from the journals, per window.

A *beat* is one due beat of one job: a turn (``turn_started`` ... its end) or a
``beat_skipped`` record. Its due time is the turn's ``due_at`` (when the scheduler
dispatched it), or for a skip ``at - waited_s`` (a ``no_capacity`` skip is journaled
when its wait ends), else the skip's ``at``.

Within a measured window ``[start, end)``:

* *offered*: beats that came due in the window; *completed*: ``turn_completed``
  records written in it (beats per minute is completed / minutes);
* *due -> first delta*: the first streamed ``delta`` of a turn minus its ``due_at``,
  over the turns that came due in the window (slot wait + client connect + model);
* *backlog(t)*: beats due at ``t`` that had not started (nor been skipped) by ``t``;
  the daemon kept up if it ended the window no more than one round of turns above
  where it started and its least-squares slope stayed small.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

BACKLOG_STEP = timedelta(seconds=1)
GROWTH_TOLERANCE = 0.10  # of the offered rate: backlog growth still counted as keeping up


def parse_at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@dataclass
class Beat:
    job: str
    due: datetime
    outcome: str  # completed, failed, interrupted, running, skipped
    reason: str | None = None  # the skip's or the failure's reason
    trigger: str | None = None
    started: datetime | None = None
    connected: datetime | None = None  # session_bound: this turn started a CLI process
    resumed: bool | None = None  # that CLI resumed the session (False: a new session)
    first_delta: datetime | None = None
    ended: datetime | None = None
    waited_s: float = 0.0

    @property
    def left_queue(self) -> datetime | None:
        """When the beat stopped waiting: its turn started, or it was skipped."""
        return self.started if self.outcome != "skipped" else self.ended


def beats_of(job: str, events: Iterable[Mapping[str, Any]]) -> list[Beat]:
    """The beats of one conversation, from its journal's events in order."""
    beats: list[Beat] = []
    current: Beat | None = None
    for event in events:
        kind = event.get("type")
        at = parse_at(str(event["at"]))
        if kind == "turn_started":
            due = event.get("due_at")
            current = Beat(
                job,
                parse_at(due) if isinstance(due, str) else at,
                "running",
                trigger=event.get("trigger"),
                started=at,
                waited_s=float(event.get("waited_s") or 0.0),
            )
            beats.append(current)
        elif kind == "beat_skipped":
            waited = float(event.get("waited_s") or 0.0)
            beats.append(
                Beat(
                    job,
                    at - timedelta(seconds=waited),
                    "skipped",
                    reason=str(event.get("reason")),
                    ended=at,
                    waited_s=waited,
                )
            )
        elif current is None:
            continue
        elif kind == "session_bound":
            current.connected = at
            current.resumed = event.get("mode") == "resume"
        elif kind == "delta" and current.first_delta is None:
            current.first_delta = at
        elif kind in ("turn_completed", "turn_failed", "turn_interrupted"):
            current.outcome = str(kind).removeprefix("turn_")
            current.reason = event.get("reason")
            current.ended = at
            current = None
    return beats


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100), linear between the closest ranks."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def backlog_at(beats: Sequence[Beat], when: datetime) -> int:
    return sum(1 for b in beats if b.due <= when and (b.left_queue is None or b.left_queue > when))


def slope_per_minute(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) points, per minute."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    sxx = sum((x - mean_x) ** 2 for x, _ in points)
    sxy = sum((x - mean_x) * (y - mean_y) for x, y in points)
    return 60 * sxy / sxx if sxx else 0.0


@dataclass
class Quantiles:
    n: int
    p50: float | None
    p99: float | None
    max: float | None

    @classmethod
    def of(cls, values: Sequence[float]) -> Quantiles:
        top = max(values) if values else None
        return cls(len(values), percentile(values, 50), percentile(values, 99), top)


@dataclass
class WindowStats:
    minutes: float
    offered: int
    started: int
    completed: int
    failed: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    interrupted: int = 0
    connects: int = 0
    resumes: int = 0
    due_to_first_delta: Quantiles = field(default_factory=lambda: Quantiles.of([]))
    waited: Quantiles = field(default_factory=lambda: Quantiles.of([]))
    connect: Quantiles = field(default_factory=lambda: Quantiles.of([]))
    backlog_start: int = 0
    backlog_end: int = 0
    backlog_max: int = 0
    backlog_slope: float = 0.0  # beats per minute

    @property
    def offered_per_min(self) -> float:
        return self.offered / self.minutes

    @property
    def completed_per_min(self) -> float:
        return self.completed / self.minutes

    @property
    def no_capacity(self) -> int:
        return self.skipped["no_capacity"]

    def kept_up(self, max_turns: int) -> bool:
        """No beat skipped for lack of capacity, and the backlog did not grow: it ended
        at most ``max_turns`` above where it started (one round of turns drains that)
        and its slope stayed within 10% of the offered rate."""
        grew = self.backlog_end - self.backlog_start > max_turns
        growing = self.backlog_slope > GROWTH_TOLERANCE * self.offered_per_min
        return self.no_capacity == 0 and not grew and not growing

    def as_json(self) -> dict[str, Any]:
        return {
            "minutes": round(self.minutes, 3),
            "offered": self.offered,
            "offered_per_min": round(self.offered_per_min, 2),
            "started": self.started,
            "completed": self.completed,
            "completed_per_min": round(self.completed_per_min, 2),
            "failed": dict(self.failed),
            "skipped": dict(self.skipped),
            "interrupted": self.interrupted,
            "cli_connects": self.connects,
            "cli_resumes": self.resumes,
            "due_to_first_delta_s": vars(self.due_to_first_delta),
            "waited_s": vars(self.waited),
            "connect_s": vars(self.connect),
            "backlog": {
                "start": self.backlog_start,
                "end": self.backlog_end,
                "max": self.backlog_max,
                "slope_per_min": round(self.backlog_slope, 2),
            },
        }


def _inside(when: datetime | None, start: datetime, end: datetime) -> bool:
    return when is not None and start <= when < end


def window_stats(beats: Sequence[Beat], start: datetime, end: datetime) -> WindowStats:
    due_here = [b for b in beats if _inside(b.due, start, end)]
    turns_due = [b for b in due_here if b.outcome != "skipped"]
    started = [b for b in beats if b.outcome != "skipped" and _inside(b.started, start, end)]
    ended = [b for b in beats if _inside(b.ended, start, end)]
    stats = WindowStats(
        minutes=(end - start).total_seconds() / 60,
        offered=len(due_here),
        started=len(started),
        completed=sum(1 for b in ended if b.outcome == "completed"),
        failed=Counter(str(b.reason) for b in ended if b.outcome == "failed"),
        skipped=Counter(str(b.reason) for b in ended if b.outcome == "skipped"),
        interrupted=sum(1 for b in ended if b.outcome == "interrupted"),
        connects=sum(1 for b in started if b.connected is not None),
        resumes=sum(1 for b in started if b.resumed),
        due_to_first_delta=Quantiles.of(
            [(b.first_delta - b.due).total_seconds() for b in turns_due if b.first_delta]
        ),
        waited=Quantiles.of([b.waited_s for b in turns_due]),
        connect=Quantiles.of(
            [
                (b.connected - b.started).total_seconds()
                for b in started
                if b.connected and b.started
            ]
        ),
    )
    series: list[tuple[float, float]] = []
    when = start
    while when <= end:
        series.append(((when - start).total_seconds(), backlog_at(beats, when)))
        when += BACKLOG_STEP
    stats.backlog_start = int(series[0][1])
    stats.backlog_end = int(series[-1][1])
    stats.backlog_max = int(max(y for _, y in series))
    stats.backlog_slope = slope_per_minute(series)
    return stats


# ---------------------------------------------------------------- fairness


def completed_per_job(
    beats: Mapping[str, Sequence[Beat]], start: datetime, end: datetime
) -> dict[str, int]:
    """Turns each conversation completed in ``[start, end)`` (0 for a starved one)."""
    return {
        job: sum(1 for b in found if b.outcome == "completed" and _inside(b.ended, start, end))
        for job, found in beats.items()
    }


def jain_index(values: Sequence[float]) -> float | None:
    """Jain's fairness index, ``(sum x)^2 / (n * sum x^2)``: 1.0 when every share is
    equal, ``1/n`` when one conversation got everything; None without any share."""
    squares = sum(x * x for x in values)
    if not values or squares == 0:
        return None
    return sum(values) ** 2 / (len(values) * squares)


def best_jain_index(total: int, conversations: int) -> float | None:
    """The highest Jain's index ``total`` whole beats over ``conversations`` can reach
    (as even as integers allow): with few beats per conversation, 1.0 is out of reach
    (12 beats over 10 conversations: at best 0.9)."""
    if total <= 0 or conversations <= 0:
        return None
    share, extra = divmod(total, conversations)
    squares = extra * (share + 1) ** 2 + (conversations - extra) * share**2
    return total**2 / (conversations * squares)
