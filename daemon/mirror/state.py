"""The mirror's rows in memory: what :func:`daemon.mirror.fold.fold_event` updates and
the writer (:mod:`daemon.mirror.db`) writes, each with its SQL row and its reading back."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from jobs.cost import CostSteps

__all__ = ["USAGE_KEYS", "ConvState", "DeliveryState", "ToolState", "TurnState", "encode_json"]

USAGE_KEYS = (
    ("input_tokens", "input_tokens"),
    ("output_tokens", "output_tokens"),
    ("cache_read_input_tokens", "cache_read_tokens"),
    ("cache_creation_input_tokens", "cache_creation_tokens"),
)
encode_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, sort_keys=True).encode


@dataclass(slots=True)
class TurnState:
    turn: int
    status: str
    first_seq: int
    prompt: str = ""
    parts: list[str] = field(default_factory=list)  # streamed text, in order
    result_text: str | None = None  # the last non-empty result text wins over deltas
    started_at: str | None = None
    ended_at: str | None = None
    job: str | None = None
    trigger: str | None = None
    session_id: str | None = None
    cost_usd: float | None = None
    tokens: list[int | None] = field(default_factory=lambda: [None, None, None, None])
    is_error: bool = False
    reason: str | None = None
    detail: str | None = None
    missed: int | None = None  # beats missed while down, for a skip that counts them
    resume_at: str | None = None
    deltas: int = 0
    tool_calls: int = 0
    last_seq: int = 0
    context_tokens: int | None = None  # the context after the turn (its last request)
    compactions: int = 0
    compacted_pre_tokens: int | None = None  # the turn's first compaction: before
    compacted_post_tokens: int | None = None  # its last: after

    def row(self, conversation: str) -> tuple[Any, ...]:
        """The ``turns`` row, in ``mirror_schema.TURN_COLUMNS`` order."""
        from_result = self.result_text is not None
        reply = self.result_text if self.result_text is not None else "".join(self.parts)
        return (
            conversation,
            self.turn,
            self.status,
            self.prompt,
            reply,
            int(from_result),
            self.started_at,
            self.ended_at,
            self.job,
            self.trigger,
            self.session_id,
            self.cost_usd,
            *self.tokens,
            int(self.is_error),
            self.reason,
            self.detail,
            self.missed,
            self.resume_at,
            self.deltas,
            self.tool_calls,
            self.first_seq,
            self.last_seq,
            self.context_tokens,
            self.compactions,
            self.compacted_pre_tokens,
            self.compacted_post_tokens,
        )

    @classmethod
    def from_row(cls, r: Mapping[str, Any]) -> TurnState:
        """The inverse of :meth:`row` (lossless)."""
        from_result = bool(r["reply_from_result"])
        return cls(
            turn=r["turn"],
            status=r["status"],
            first_seq=r["first_seq"],
            prompt=r["prompt"],
            parts=[] if from_result else [r["reply"]],
            result_text=r["reply"] if from_result else None,
            started_at=r["started_at"],
            ended_at=r["ended_at"],
            job=r["job"],
            trigger=r["trigger"],
            session_id=r["session_id"],
            cost_usd=r["cost_usd"],
            tokens=[r[col] for _, col in USAGE_KEYS],
            is_error=bool(r["is_error"]),
            reason=r["reason"],
            detail=r["detail"],
            missed=r["missed"],
            resume_at=r["resume_at"],
            deltas=r["deltas"],
            tool_calls=r["tool_calls"],
            last_seq=r["last_seq"],
            context_tokens=r["context_tokens"],
            compactions=r["compactions"],
            compacted_pre_tokens=r["compacted_pre_tokens"],
            compacted_post_tokens=r["compacted_post_tokens"],
        )


@dataclass(slots=True)
class ToolState:
    seq: int
    turn: int | None
    tool_use_id: str | None
    name: str | None
    input: str | None
    started_at: str | None
    result: str | None = None
    is_error: bool | None = None
    ended_at: str | None = None
    result_seq: int | None = None

    def row(self, conversation: str) -> tuple[Any, ...]:
        is_error = None if self.is_error is None else int(self.is_error)
        return (
            conversation,
            self.seq,
            self.turn,
            self.tool_use_id,
            self.name,
            self.input,
            self.started_at,
            self.result,
            is_error,
            self.ended_at,
            self.result_seq,
        )

    @classmethod
    def from_row(cls, r: Mapping[str, Any]) -> ToolState:
        return cls(
            r["seq"],
            r["turn"],
            r["tool_use_id"],
            r["name"],
            r["input"],
            r["started_at"],
            r["result"],
            None if r["is_error"] is None else bool(r["is_error"]),
            r["ended_at"],
            r["result_seq"],
        )


@dataclass(slots=True)
class DeliveryState:
    """One reply's delivery to one sink, over all its attempts (see ``heal.fold``)."""

    delivery: str
    turn: int
    sink: str
    status: str
    first_seq: int
    attempts: int = 0
    error: str | None = None
    at: str | None = None
    last_seq: int = 0

    def row(self, conversation: str) -> tuple[Any, ...]:
        return (
            conversation,
            self.delivery,
            self.turn,
            self.sink,
            self.status,
            self.attempts,
            self.error,
            self.at,
            self.first_seq,
            self.last_seq,
        )

    @classmethod
    def from_row(cls, r: Mapping[str, Any]) -> DeliveryState:
        return cls(
            delivery=r["delivery"],
            turn=r["turn"],
            sink=r["sink"],
            status=r["status"],
            first_seq=r["first_seq"],
            attempts=r["attempts"],
            error=r["error"],
            at=r["at"],
            last_seq=r["last_seq"],
        )


@dataclass(slots=True)
class ConvState:
    """One conversation's context; ``turns``/``tools``/``skips``/``deliveries`` are
    the rows changed since they were last written."""

    name: str
    last_seq: int = 0
    session_id: str | None = None
    cwd: str | None = None
    costs: CostSteps = field(default_factory=CostSteps)  # running cost per session
    last_activity: str | None = None
    forked_from: str | None = None  # a fork's source conversation, turn and session
    forked_turn: int | None = None
    forked_session: str | None = None
    paused_by: str | None = None  # "operator" or "auto" while a pause is journaled
    paused_until: str | None = None  # its end (UTC ISO), None: until resumed
    open: TurnState | None = None  # started, not ended; kept across writes
    turns: dict[int, TurnState] = field(default_factory=dict)
    tools: dict[int, ToolState] = field(default_factory=dict)
    tools_by_id: dict[str, ToolState] = field(default_factory=dict)
    skips: list[tuple[Any, ...]] = field(default_factory=list)
    deliveries: dict[str, DeliveryState] = field(default_factory=dict)
    pending: int = 0  # events folded since the rows were last written

    def clean(self) -> None:
        """The rows were written: forget them (the context stays)."""
        self.turns.clear()
        self.tools.clear()
        self.tools_by_id.clear()
        self.skips.clear()
        self.deliveries.clear()
        self.pending = 0

    def row(self) -> tuple[Any, ...]:
        return (
            self.name,
            self.last_seq,
            self.session_id,
            self.cwd,
            encode_json(self.costs.totals),
            self.last_activity,
            self.forked_from,
            self.forked_turn,
            self.forked_session,
            self.paused_by,
            self.paused_until,
        )
