"""The journal's event schema (versioned): what a conversation's records say.

Every payload is a JSON object ``{"ev": 1, "type": ..., "at": ..., ...}``. Builders
here are pure; they return plain dicts so the journal and the mirror need no classes.
Readers use :func:`event_type` and read fields with ``.get`` to stay tolerant of
fields added later within the same schema version.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

EVENT_SCHEMA = 1

EventType = Literal[
    "session_bound",
    "turn_started",
    "delta",
    "assistant",
    "tool_use",
    "tool_result",
    "result",
    "turn_completed",
    "turn_failed",
    "turn_interrupted",
    "beat_skipped",
]
TURN_END_TYPES = frozenset({"turn_completed", "turn_failed", "turn_interrupted"})

Trigger = Literal["schedule", "manual", "replay", "catch_up", "demo"]
Event = dict[str, Any]


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _event(kind: EventType, at: str | None, **fields: Any) -> Event:
    return {"ev": EVENT_SCHEMA, "type": kind, "at": at or now_iso(), **fields}


def event_type(event: Event) -> str:
    kind = event.get("type")
    return kind if isinstance(kind, str) else ""


def session_bound(
    session_id: str, cwd: str, *, mode: Literal["new", "resume"], at: str | None = None
) -> Event:
    return _event("session_bound", at, session_id=session_id, cwd=cwd, mode=mode)


def turn_started(
    turn: int, prompt: str, *, job: str, trigger: Trigger, at: str | None = None
) -> Event:
    return _event("turn_started", at, turn=turn, prompt=prompt, job=job, trigger=trigger)


def delta(turn: int, text: str, *, at: str | None = None) -> Event:
    return _event("delta", at, turn=turn, text=text)


def assistant(
    turn: int, text: str, *, uuid: str | None, model: str | None, at: str | None = None
) -> Event:
    return _event("assistant", at, turn=turn, text=text, uuid=uuid, model=model)


def tool_use(
    turn: int, tool_use_id: str, name: str, tool_input: dict[str, Any], *, at: str | None = None
) -> Event:
    return _event("tool_use", at, turn=turn, id=tool_use_id, name=name, input=tool_input)


def tool_result(
    turn: int, tool_use_id: str, content: Any, *, is_error: bool, at: str | None = None
) -> Event:
    return _event(
        "tool_result", at, turn=turn, tool_use_id=tool_use_id, content=content, is_error=is_error
    )


def result(
    turn: int,
    *,
    session_id: str,
    is_error: bool,
    subtype: str,
    text: str | None,
    session_cost_usd: float | None,
    usage: dict[str, Any] | None,
    duration_ms: int,
    num_turns: int,
    at: str | None = None,
) -> Event:
    return _event(
        "result",
        at,
        turn=turn,
        session_id=session_id,
        is_error=is_error,
        subtype=subtype,
        text=text,
        session_cost_usd=session_cost_usd,
        usage=usage,
        duration_ms=duration_ms,
        num_turns=num_turns,
    )


def turn_completed(turn: int, *, at: str | None = None) -> Event:
    return _event("turn_completed", at, turn=turn)


def turn_failed(turn: int, reason: str, detail: str, *, at: str | None = None) -> Event:
    return _event("turn_failed", at, turn=turn, reason=reason, detail=detail)


def turn_interrupted(turn: int, reason: str, *, at: str | None = None) -> Event:
    return _event("turn_interrupted", at, turn=turn, reason=reason)


def beat_skipped(turn: int, reason: str, detail: str = "", *, at: str | None = None) -> Event:
    return _event("beat_skipped", at, turn=turn, reason=reason, detail=detail)
