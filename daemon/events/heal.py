"""Healing on read: fold a conversation's events into turns (pure).

A turn that started but never ended (the process died) is returned as
``interrupted`` with every delta's text in its reply. The daemon makes this durable
by appending one ``turn_interrupted`` record at start; old lines are never rewritten.

A completed turn whose reply was the job's quiet token has status ``quiet``. A turn's
``deliveries`` list each sink its reply went to, with the fence's last word:
``done``, ``failed``, ``retrying``, ``unknown`` (the process died mid-attempt; never
sent again), or, for an attempt still open, ``in_progress`` while the daemon runs
(``open_turn_status="running"``) and ``unknown`` otherwise.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from daemon.events import Event, delivery_error, event_type
from jobs.cost import RESTARTS_COST_TOTAL, CostSteps, add_cost

TurnStatus = Literal["running", "completed", "quiet", "failed", "interrupted", "skipped"]
DeliveryStatus = Literal["in_progress", "done", "failed", "retrying", "unknown"]
_ANSWERED = ("completed", "quiet")


@dataclass
class DeliveryView:
    delivery: str
    sink: str
    status: DeliveryStatus
    attempts: int = 0
    error: str | None = None
    at: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "sink": self.sink,
            "status": self.status,
            "attempts": self.attempts,
            "error": self.error,
            "at": self.at,
        }


# The ``usage`` keys of a ``result`` that count tokens, and their short names here.
TOKEN_KEYS = (
    ("input_tokens", "input"),
    ("output_tokens", "output"),
    ("cache_read_input_tokens", "cache_read"),
    ("cache_creation_input_tokens", "cache_write"),
)


@dataclass(frozen=True)
class CompactionView:
    """A ``compacted`` record: the CLI summarised the history during this turn."""

    trigger: str
    pre_tokens: int | None
    post_tokens: int | None
    preserved: int
    at: str | None

    def as_json(self) -> dict[str, Any]:
        return {
            "trigger": self.trigger,
            "pre_tokens": self.pre_tokens,
            "post_tokens": self.post_tokens,
            "preserved": self.preserved,
            "at": self.at,
        }


@dataclass
class TurnView:
    turn: int
    status: TurnStatus
    prompt: str = ""
    reply: str = ""
    started_at: str | None = None
    ended_at: str | None = None
    session_id: str | None = None
    job: str | None = None
    trigger: str | None = None
    reason: str | None = None
    detail: str | None = None
    cost_usd: float | None = None
    is_error: bool = False
    resume_at: str | None = None  # uuid of the turn's last assistant message
    deltas: list[str] = field(default_factory=list)
    tools: list[str] = field(default_factory=list)
    journaled_end: bool = False
    missed: int | None = None  # beats missed while down (reason missed_while_down)
    deliveries: list[DeliveryView] = field(default_factory=list)
    tokens: dict[str, int] | None = None  # TOKEN_KEYS' short names, summed over results
    context_tokens: int | None = None  # the context after the turn (its last request)
    compactions: list[CompactionView] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "turn": self.turn,
            "status": self.status,
            "prompt": self.prompt,
            "reply": self.reply,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "session_id": self.session_id,
            "job": self.job,
            "trigger": self.trigger,
            "reason": self.reason,
            "detail": self.detail,
            "cost_usd": self.cost_usd,
            "tools": self.tools,
            "missed": self.missed,
            "deliveries": [d.as_json() for d in self.deliveries],
            "tokens": self.tokens,
            "context_tokens": self.context_tokens,
            "compactions": [c.as_json() for c in self.compactions],
        }


@dataclass(frozen=True)
class ForkOrigin:
    """Where a forked conversation came from (its ``forked`` record)."""

    source: str
    source_turn: int
    source_session_id: str | None
    at: str | None

    def describe(self) -> str:
        return f"forked from {self.source} at turn {self.source_turn}"


@dataclass
class ConversationView:
    turns: list[TurnView] = field(default_factory=list)
    session_id: str | None = None
    cwd: str | None = None
    forked_from: ForkOrigin | None = None

    @property
    def next_turn(self) -> int:
        if self.turns:
            return self.turns[-1].turn + 1
        return self.forked_from.source_turn + 1 if self.forked_from else 1

    @property
    def open_turn(self) -> TurnView | None:
        """The last turn if it started and its end was never journaled."""
        last = self.turns[-1] if self.turns else None
        if last is not None and last.status != "skipped" and not last.journaled_end:
            return last
        return None

    @property
    def last_completed(self) -> TurnView | None:
        """The last turn the model answered (``completed`` or ``quiet``)."""
        for t in reversed(self.turns):
            if t.status in _ANSWERED:
                return t
        return None

    @property
    def completed_turns(self) -> list[TurnView]:
        return [t for t in self.turns if t.status in _ANSWERED]


def fold(
    events: Iterable[Event], *, open_turn_status: TurnStatus = "interrupted"
) -> ConversationView:
    """Turns in sequence order; an unfinished last turn gets ``open_turn_status``."""
    view = ConversationView()
    by_turn: dict[int, TurnView] = {}
    costs = CostSteps()  # the one turn-cost fold (jobs.cost)
    open_delivery: DeliveryStatus = "in_progress" if open_turn_status == "running" else "unknown"
    for ev in events:
        kind = event_type(ev)
        step = costs.feed(ev)
        if kind in RESTARTS_COST_TOTAL:
            _bind_session(view, ev)
            continue
        turn_no = ev.get("turn")
        if not isinstance(turn_no, int):
            continue
        if kind == "turn_started":
            t = TurnView(
                turn=turn_no,
                status=open_turn_status,
                prompt=str(ev.get("prompt", "")),
                started_at=ev.get("at"),
                session_id=view.session_id,
                job=ev.get("job"),
                trigger=ev.get("trigger"),
            )
            by_turn[turn_no] = t
            view.turns.append(t)
            continue
        if kind == "beat_skipped":
            t = TurnView(
                turn=turn_no,
                status="skipped",
                started_at=ev.get("at"),
                ended_at=ev.get("at"),
                reason=ev.get("reason"),
                detail=ev.get("detail") or None,
                journaled_end=True,
            )
            count = ev.get("count")
            if isinstance(count, int) and not isinstance(count, bool):
                t.missed = count
            by_turn[turn_no] = t
            view.turns.append(t)
            continue
        t_or_none = by_turn.get(turn_no)
        if t_or_none is None:
            continue
        if kind.startswith("delivery_"):
            _delivery(t_or_none, kind, ev, open_delivery)
            continue
        _apply(t_or_none, kind, ev)
        if step is not None:
            t_or_none.cost_usd = add_cost(t_or_none.cost_usd, step)
    for t in view.turns:
        if not t.reply and t.deltas:
            t.reply = "".join(t.deltas)
    return view


def _bind_session(view: ConversationView, ev: Event) -> None:
    """``session_bound``, or ``forked`` (a fork's first record: also where it came from)."""
    view.session_id = ev.get("session_id")
    view.cwd = ev.get("cwd")
    if event_type(ev) == "forked":
        source_turn = ev.get("source_turn")
        view.forked_from = ForkOrigin(
            str(ev.get("source", "")),
            source_turn if isinstance(source_turn, int) else 0,
            ev.get("source_session_id"),
            ev.get("at"),
        )


def _apply(t: TurnView, kind: str, ev: Event) -> None:
    if kind == "delta":
        t.deltas.append(str(ev.get("text", "")))
    elif kind == "assistant":
        if ev.get("uuid"):
            t.resume_at = ev["uuid"]
    elif kind == "tool_use":
        t.tools.append(str(ev.get("name", "")))
    elif kind == "result":
        t.session_id = ev.get("session_id") or t.session_id
        t.is_error = bool(ev.get("is_error"))
        text = ev.get("text")
        if isinstance(text, str) and text:
            t.reply = text
        _tokens(t, ev)
    elif kind == "compacted":
        t.compactions.append(
            CompactionView(
                str(ev.get("trigger") or "auto"),
                _count(ev.get("pre_tokens")),
                _count(ev.get("post_tokens")),
                _count(ev.get("preserved")) or 0,
                ev.get("at"),
            )
        )
    elif kind == "turn_completed":
        t.status = "quiet" if ev.get("quiet") else "completed"
        t.ended_at, t.journaled_end = ev.get("at"), True
    elif kind == "turn_failed":
        t.status, t.ended_at, t.journaled_end = "failed", ev.get("at"), True
        t.reason, t.detail = ev.get("reason"), ev.get("detail")
    elif kind == "turn_interrupted":
        t.status, t.ended_at, t.journaled_end = "interrupted", ev.get("at"), True
        t.reason = ev.get("reason")


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _tokens(t: TurnView, ev: Event) -> None:
    """A result's token counts, added to the turn's (a turn may hold several results)."""
    usage = ev.get("usage")
    if isinstance(usage, dict):
        for key, short in TOKEN_KEYS:
            n = _count(usage.get(key))
            if n is not None:
                t.tokens = t.tokens or {}
                t.tokens[short] = t.tokens.get(short, 0) + n
    context = _count(ev.get("context_tokens"))
    if context is not None:
        t.context_tokens = context


def _delivery(t: TurnView, kind: str, ev: Event, open_status: DeliveryStatus) -> None:
    delivery = str(ev.get("delivery", ""))
    view = next((d for d in t.deliveries if d.delivery == delivery), None)
    if view is None:
        view = DeliveryView(delivery, str(ev.get("sink", "")), open_status)
        t.deliveries.append(view)
    attempt = ev.get("attempt")
    if isinstance(attempt, int):
        view.attempts = max(view.attempts, attempt)
    view.at = ev.get("at")
    if kind == "delivery_started":
        view.status = open_status
    elif kind == "delivery_done":
        view.status, view.error = "done", None
    elif kind == "delivery_failed":
        view.status = "failed" if ev.get("retry_in_s") is None else "retrying"
        view.error = delivery_error(ev)
    elif kind == "delivery_unknown":
        view.status = "unknown"
        view.error = delivery_error(ev)
