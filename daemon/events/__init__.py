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
    "forked",
    "session_bound",
    "turn_started",
    "delta",
    "assistant",
    "tool_use",
    "tool_result",
    "result",
    "compacted",
    "turn_completed",
    "turn_failed",
    "turn_interrupted",
    "beat_skipped",
    "delivery_started",
    "delivery_done",
    "delivery_failed",
    "delivery_unknown",
    "job_paused",
    "job_resumed",
    "message_queued",
    "alert_raised",
]
TURN_END_TYPES = frozenset({"turn_completed", "turn_failed", "turn_interrupted"})

Trigger = Literal["schedule", "manual", "replay", "catch_up", "demo", "send"]
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


def forked(
    *,
    source: str,
    source_session_id: str,
    source_turn: int,
    source_resume_at: str,
    session_id: str,
    resume_at: str,
    cwd: str,
    at: str | None = None,
) -> Event:
    """The first record of a conversation branched off ``source`` (``vigil fork``).

    The new conversation holds the source's history up to the end of ``source_turn``
    (the transcript entry ``source_resume_at`` of session ``source_session_id``),
    copied into its own SDK session ``session_id``, whose last entry is ``resume_at``.
    Its own turns are numbered on from ``source_turn + 1``. No ``turn`` field: it
    belongs to no turn of this conversation.
    """
    return _event(
        "forked",
        at,
        source=source,
        source_session_id=source_session_id,
        source_turn=source_turn,
        source_resume_at=source_resume_at,
        session_id=session_id,
        resume_at=resume_at,
        cwd=cwd,
    )


def turn_started(
    turn: int,
    prompt: str,
    *,
    job: str,
    trigger: Trigger,
    due_at: str | None = None,
    waited_s: float | None = None,
    at: str | None = None,
) -> Event:
    """``due_at``: when the beat came due; ``waited_s``: time spent waiting for a turn slot."""
    extra: dict[str, Any] = {}
    if due_at is not None:
        extra["due_at"] = due_at
    if waited_s is not None:
        extra["waited_s"] = waited_s
    return _event("turn_started", at, turn=turn, prompt=prompt, job=job, trigger=trigger, **extra)


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
    context_tokens: int | None = None,
    at: str | None = None,
) -> Event:
    """``usage``: the turn's tokens as the CLI sums them over the turn's model requests
    (a compaction's summarisation request is not in it); ``context_tokens``: what the
    model received in the turn's last request (input + cache read + cache write), the
    conversation's context size after the turn (None when the CLI said nothing)."""
    extra: dict[str, Any] = {}
    if context_tokens is not None:
        extra["context_tokens"] = context_tokens
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
        **extra,
    )


def compacted(
    turn: int,
    *,
    trigger: str,
    pre_tokens: int | None,
    post_tokens: int | None,
    preserved: int,
    boundary_uuid: str | None,
    dropped_tokens: int | None = None,
    duration_ms: int | None = None,
    at: str | None = None,
) -> Event:
    """The CLI compacted the conversation during ``turn``: it summarised the history
    before the boundary (entry ``boundary_uuid`` of its transcript) and the model sees
    that summary from now on, plus ``preserved`` messages kept verbatim.

    ``trigger``: "auto" (the context passed the CLI's threshold, see ``context_limit``)
    or "manual" (a ``/compact``); ``pre_tokens``: the context before (the last reported
    usage); ``post_tokens``: the CLI's estimate of the summary and what it kept;
    ``dropped_tokens``: the CLI's running total of what compactions dropped from this
    session. The summary itself stays in the transcript, never journaled as a prompt.
    """
    return _event(
        "compacted",
        at,
        turn=turn,
        trigger=trigger,
        pre_tokens=pre_tokens,
        post_tokens=post_tokens,
        preserved=preserved,
        boundary_uuid=boundary_uuid,
        dropped_tokens=dropped_tokens,
        duration_ms=duration_ms,
    )


def turn_completed(turn: int, *, quiet: bool = False, at: str | None = None) -> Event:
    """``quiet``: the reply was the job's quiet token; journaled, not delivered."""
    if quiet:
        return _event("turn_completed", at, turn=turn, quiet=True)
    return _event("turn_completed", at, turn=turn)


def turn_failed(turn: int, reason: str, detail: str, *, at: str | None = None) -> Event:
    return _event("turn_failed", at, turn=turn, reason=reason, detail=detail)


def turn_interrupted(turn: int, reason: str, *, at: str | None = None) -> Event:
    return _event("turn_interrupted", at, turn=turn, reason=reason)


def beat_skipped(
    turn: int, reason: str, detail: str = "", *, at: str | None = None, **fields: Any
) -> Event:
    """A due beat that did not run; ``fields`` add reason-specific facts."""
    return _event("beat_skipped", at, turn=turn, reason=reason, detail=detail, **fields)


def beats_missed(
    turn: int,
    *,
    count: int,
    first_due: str,
    last_due: str,
    capped: bool,
    catch_up: str,
    detail: str,
    at: str | None = None,
) -> Event:
    """Beats that came due while vigil was down: one skip record with their count."""
    return beat_skipped(
        turn,
        "missed_while_down",
        detail,
        at=at,
        count=count,
        first_due=first_due,
        last_due=last_due,
        capped=capped,
        catch_up=catch_up,
    )


# A reply's delivery to one sink: ``delivery`` ("<turn>/<sink>") is shared by every
# attempt. started → done | failed (retry_in_s set: another attempt follows) | unknown
# (the process died or stopped mid-attempt: never sent again).


def delivery_started(
    turn: int, delivery: str, sink: str, attempt: int, *, at: str | None = None
) -> Event:
    return _event("delivery_started", at, turn=turn, delivery=delivery, sink=sink, attempt=attempt)


def delivery_done(
    turn: int, delivery: str, sink: str, attempt: int, *, at: str | None = None
) -> Event:
    return _event("delivery_done", at, turn=turn, delivery=delivery, sink=sink, attempt=attempt)


def delivery_failed(
    turn: int,
    delivery: str,
    sink: str,
    attempt: int,
    *,
    error: str,
    retry_in_s: float | None,
    output: str | None = None,
    at: str | None = None,
) -> Event:
    """``error`` says why in vigil's words; ``output`` is what the sink's program
    printed (a command sink's stderr tail), which may quote the reply: it is journaled,
    and logged only as its size unless the operator opted in to logging content."""
    extra = {"output": output} if output else {}
    return _event(
        "delivery_failed",
        at,
        turn=turn,
        delivery=delivery,
        sink=sink,
        attempt=attempt,
        error=error,
        retry_in_s=retry_in_s,
        **extra,
    )


def delivery_error(event: Event) -> str | None:
    """What ``history`` and the mirror say about a failed or unknown delivery."""
    kind = event_type(event)
    if kind == "delivery_unknown":
        return f"outcome unknown ({event.get('reason')}); not sent again"
    if kind != "delivery_failed":
        return None
    error, output = event.get("error"), event.get("output")
    if not isinstance(error, str):
        return None
    return f"{error}: {output}" if isinstance(output, str) and output else error


def delivery_unknown(
    turn: int, delivery: str, sink: str, attempt: int, *, reason: str, at: str | None = None
) -> Event:
    return _event(
        "delivery_unknown",
        at,
        turn=turn,
        delivery=delivery,
        sink=sink,
        attempt=attempt,
        reason=reason,
    )


# The operator's word (``vigil pause``/``resume``/``send --next-beat``) and the job's
# alerts. None of these belongs to a turn (no ``turn`` field), except an alert, which
# names the turn that raised it.


def job_paused(
    *, by: Literal["operator", "auto"], until: str | None, detail: str = "", at: str | None = None
) -> Event:
    """Due beats are skipped (``paused``) until ``until`` (UTC ISO) or ``job_resumed``."""
    return _event("job_paused", at, by=by, until=until, detail=detail)


def job_resumed(*, by: Literal["operator"] = "operator", at: str | None = None) -> Event:
    return _event("job_resumed", at, by=by)


def message_queued(message_id: str, text: str, *, at: str | None = None) -> Event:
    """Text for the next beat's prompt; the ``turn_started`` carrying ``queued`` ids
    with this id consumes it."""
    return _event("message_queued", at, id=message_id, text=text)


def alert_raised(
    turn: int,
    kind: Literal["failing", "recovered"],
    *,
    failures: int,
    reason: str | None,
    detail: str | None,
    at: str | None = None,
) -> Event:
    """The job's alert sinks are told (behind the delivery fence) that it is failing
    (``failures`` beats in a row, the last one's ``reason`` and ``detail``) or that it
    recovered (turn ``turn`` completed after ``failures`` failed beats)."""
    return _event(
        "alert_raised", at, turn=turn, alert=kind, failures=failures, reason=reason, detail=detail
    )
