"""Folding journal events into mirror rows (pure; the database sits behind ``Loader``).

:func:`fold_event` updates one conversation's ``ConvState`` (the rows in memory, in
:mod:`daemon.mirror.state`): its dirty rows (``turns``, ``tools``, ``skips``,
``deliveries``) plus the little context later events need (last sequence, session,
the session's running cost, the open turn). A turn or
tool call that is not in memory is asked of the ``Loader`` (the mirror reads it back
from SQLite), so folding everything at once (a rebuild) and folding event by event
with writes in between (the live daemon) give the same rows. See ``daemon.mirror.db``
for the status rules.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from daemon.events import Event, delivery_error
from daemon.mirror.state import (
    USAGE_KEYS,
    ConvState,
    DeliveryState,
    ToolState,
    TurnState,
    encode_json,
)
from jobs.cost import add_cost

END_STATUS = {
    "turn_completed": "completed",
    "turn_failed": "failed",
    "turn_interrupted": "interrupted",
}
BOUNDARIES = frozenset({*END_STATUS, "beat_skipped"})
DELIVERY_PREFIX = "delivery_"


class Loader(Protocol):
    """Reads back rows already written. Returns None when there is no such row."""

    def turn(self, conversation: str, turn: int) -> TurnState | None: ...

    def tool(self, conversation: str, tool_use_id: str) -> ToolState | None: ...

    def delivery(self, conversation: str, delivery: str) -> DeliveryState | None: ...


def fold_event(c: ConvState, seq: int, ev: Event, loader: Loader) -> None:  # noqa: PLR0912  # one branch per event type
    """Fold the event at ``seq`` (the caller checked it is new) into ``c``."""
    kind = ev.get("type")
    at = ev.get("at")
    step = c.costs.feed(ev)  # every result moves the running total (jobs.cost)
    if isinstance(at, str):
        c.last_activity = at
    if kind in ("session_bound", "forked", "job_paused", "job_resumed"):
        (_session if kind in ("session_bound", "forked") else _pause)(c, ev)
        return
    turn_no = ev.get("turn")
    if not isinstance(turn_no, int):
        return
    if kind == "turn_started":
        _turn_started(c, seq, turn_no, ev)
        return
    if kind == "beat_skipped":
        _beat_skipped(c, seq, turn_no, ev)
        return
    t_or_none = _find_turn(c, turn_no, loader)
    if t_or_none is None:
        return  # like heal.fold: events of a turn that never started are ignored
    if isinstance(kind, str) and kind.startswith(DELIVERY_PREFIX):
        _delivery(c, seq, turn_no, ev, loader)
        return
    t = c.turns[turn_no] = t_or_none
    t.last_seq = seq
    if kind == "delta":
        t.parts.append(str(ev.get("text", "")))
        t.deltas += 1
    elif kind == "assistant":
        if ev.get("uuid"):
            t.resume_at = ev["uuid"]
    elif kind == "tool_use":
        t.tool_calls += 1
        tool_id = ev.get("id")
        tool = ToolState(seq, turn_no, tool_id, ev.get("name"), encode_json(ev.get("input")), at)
        c.tools[seq] = tool
        if isinstance(tool_id, str):
            c.tools_by_id[tool_id] = tool
    elif kind == "tool_result":
        _tool_result(c, seq, turn_no, ev, loader)
    elif kind == "result":
        _result(t, ev, step)
    elif kind == "compacted":
        _compacted(t, ev)
    elif kind in END_STATUS:
        t.status, t.ended_at = END_STATUS[kind], at
        if kind == "turn_completed" and ev.get("quiet"):
            t.status = "quiet"
        if kind == "turn_failed":
            t.reason, t.detail = ev.get("reason"), ev.get("detail")
        elif kind == "turn_interrupted":
            t.reason = ev.get("reason")
        if c.open is t:
            c.open = None


def _pause(c: ConvState, ev: Event) -> None:
    """``vigil pause`` / ``resume`` (or ``auto_pause_after``): no turn of its own."""
    if ev.get("type") == "job_paused":
        c.paused_by, c.paused_until = str(ev.get("by", "operator")), ev.get("until")
    else:
        c.paused_by = c.paused_until = None


def _session(c: ConvState, ev: Event) -> None:
    """``session_bound``, or ``forked`` (a fork's first record: also where it came from)."""
    c.session_id, c.cwd = ev.get("session_id"), ev.get("cwd")
    if ev.get("type") == "forked":
        source_turn = ev.get("source_turn")
        c.forked_from = ev.get("source")
        c.forked_turn = source_turn if isinstance(source_turn, int) else None
        c.forked_session = ev.get("source_session_id")


def _turn_started(c: ConvState, seq: int, turn_no: int, ev: Event) -> None:
    if c.open is not None and c.open.turn != turn_no:
        c.open.status = "interrupted"  # a later turn started first
        c.turns[c.open.turn] = c.open
    t = TurnState(
        turn_no,
        "running",
        seq,
        prompt=str(ev.get("prompt", "")),
        started_at=ev.get("at"),
        job=ev.get("job"),
        trigger=ev.get("trigger"),
        session_id=c.session_id,
        last_seq=seq,
    )
    c.open = c.turns[turn_no] = t


def _find_turn(c: ConvState, turn_no: int, loader: Loader) -> TurnState | None:
    t = c.turns.get(turn_no)
    if t is not None:
        return t
    if c.open is not None and c.open.turn == turn_no:
        return c.open
    return loader.turn(c.name, turn_no)


def _tool_result(c: ConvState, seq: int, turn_no: int, ev: Event, loader: Loader) -> None:
    tool_id = ev.get("tool_use_id")
    tool = None
    if isinstance(tool_id, str):
        tool = c.tools_by_id.get(tool_id) or loader.tool(c.name, tool_id)
    if tool is None:  # a result without its call: kept under its own sequence
        tool = ToolState(seq, turn_no, tool_id, None, None, None)
    if isinstance(tool_id, str):
        c.tools_by_id[tool_id] = tool
    c.tools[tool.seq] = tool
    tool.result = encode_json(ev.get("content"))
    tool.is_error = bool(ev.get("is_error"))
    tool.ended_at = ev.get("at")
    tool.result_seq = seq


def _result(t: TurnState, ev: Event, step: float | None) -> None:
    t.session_id = ev.get("session_id") or t.session_id
    t.is_error = bool(ev.get("is_error"))
    text = ev.get("text")
    if isinstance(text, str) and text:
        t.result_text = text
    if step is not None:
        t.cost_usd = add_cost(t.cost_usd, step)
    usage = ev.get("usage")
    if isinstance(usage, Mapping):
        for i, (key, _) in enumerate(USAGE_KEYS):
            n = _count(usage.get(key))
            if n is not None:
                t.tokens[i] = (t.tokens[i] or 0) + n
    context = _count(ev.get("context_tokens"))
    if context is not None:
        t.context_tokens = context


def _compacted(t: TurnState, ev: Event) -> None:
    t.compactions += 1
    if t.compacted_pre_tokens is None:
        t.compacted_pre_tokens = _count(ev.get("pre_tokens"))
    t.compacted_post_tokens = _count(ev.get("post_tokens"))


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _beat_skipped(c: ConvState, seq: int, turn_no: int, ev: Event) -> None:
    at, reason, detail = ev.get("at"), ev.get("reason"), ev.get("detail") or None
    count = ev.get("count")
    missed = count if isinstance(count, int) and not isinstance(count, bool) else None
    t = TurnState(turn_no, "skipped", seq, started_at=at, ended_at=at, last_seq=seq)
    t.reason, t.detail, t.missed = reason, detail, missed
    c.turns[turn_no] = t
    extra = {k: v for k, v in ev.items() if k not in _SKIP_FIELDS}
    c.skips.append((c.name, seq, turn_no, at, reason, detail, missed, encode_json(extra)))


_SKIP_FIELDS = frozenset({"ev", "type", "at", "turn", "reason", "detail", "count"})


def _delivery(c: ConvState, seq: int, turn_no: int, ev: Event, loader: Loader) -> None:
    """The fence's last word per delivery, as ``heal.fold`` with a running daemon: an
    attempt that started and has no outcome yet is ``in_progress``."""
    kind = ev.get("type")
    key = str(ev.get("delivery", ""))
    d = c.deliveries.get(key) or loader.delivery(c.name, key)
    if d is None:
        d = DeliveryState(key, turn_no, str(ev.get("sink", "")), "in_progress", seq)
    c.deliveries[key] = d
    d.last_seq = seq
    attempt = ev.get("attempt")
    if isinstance(attempt, int):
        d.attempts = max(d.attempts, attempt)
    d.at = ev.get("at")
    if kind == "delivery_started":
        d.status = "in_progress"
    elif kind == "delivery_done":
        d.status, d.error = "done", None
    elif kind == "delivery_failed":
        d.status = "failed" if ev.get("retry_in_s") is None else "retrying"
        d.error = delivery_error(ev)
    elif kind == "delivery_unknown":
        d.status = "unknown"
        d.error = delivery_error(ev)
