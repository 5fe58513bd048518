"""Healing on read: fold a conversation's events into turns (pure).

A turn that started but never ended (the process died) is returned as
``interrupted`` with every delta's text in its reply. The daemon makes this durable
by appending one ``turn_interrupted`` record at start; old lines are never rewritten.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from daemon.events import Event, event_type

TurnStatus = Literal["running", "completed", "failed", "interrupted", "skipped"]


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
        }


@dataclass
class ConversationView:
    turns: list[TurnView] = field(default_factory=list)
    session_id: str | None = None
    cwd: str | None = None

    @property
    def next_turn(self) -> int:
        return self.turns[-1].turn + 1 if self.turns else 1

    @property
    def open_turn(self) -> TurnView | None:
        """The last turn if it started and its end was never journaled."""
        last = self.turns[-1] if self.turns else None
        if last is not None and last.status != "skipped" and not last.journaled_end:
            return last
        return None

    @property
    def last_completed(self) -> TurnView | None:
        for t in reversed(self.turns):
            if t.status == "completed":
                return t
        return None

    @property
    def completed_turns(self) -> list[TurnView]:
        return [t for t in self.turns if t.status == "completed"]


def fold(
    events: Iterable[Event], *, open_turn_status: TurnStatus = "interrupted"
) -> ConversationView:
    """Turns in sequence order; an unfinished last turn gets ``open_turn_status``."""
    view = ConversationView()
    by_turn: dict[int, TurnView] = {}
    last_total = 0.0  # the CLI reports a running total per session; a turn costs the step
    for ev in events:
        kind = event_type(ev)
        if kind == "session_bound":
            view.session_id = ev.get("session_id")
            view.cwd = ev.get("cwd")
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
            by_turn[turn_no] = t
            view.turns.append(t)
            continue
        t_or_none = by_turn.get(turn_no)
        if t_or_none is None:
            continue
        _apply(t_or_none, kind, ev)
        total = ev.get("session_cost_usd")
        if kind == "result" and isinstance(total, int | float):
            t_or_none.cost_usd = round(max(0.0, total - last_total), 6)
            last_total = total
    for t in view.turns:
        if not t.reply and t.deltas:
            t.reply = "".join(t.deltas)
    return view


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
    elif kind == "turn_completed":
        t.status, t.ended_at, t.journaled_end = "completed", ev.get("at"), True
    elif kind == "turn_failed":
        t.status, t.ended_at, t.journaled_end = "failed", ev.get("at"), True
        t.reason, t.detail = ev.get("reason"), ev.get("detail")
    elif kind == "turn_interrupted":
        t.status, t.ended_at, t.journaled_end = "interrupted", ev.get("at"), True
        t.reason = ev.get("reason")
