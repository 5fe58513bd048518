"""The agent-driver port: what the runtime needs from one conversation's agent.

The one implementation that drives ``claude_agent_sdk`` is
:class:`daemon.agent.sdk.AgentSession`; tests drive the runtime in-process with
:class:`daemon.testing.fakes.FakeAgent`.

Contract of :class:`AgentDriver` (one per conversation; used from the event loop):

* ``connect(plan)`` attaches to the conversation's session: a new one
  (``plan.resume`` false, the session id assigned by the caller) or a resume, cut at
  ``plan.resume_at`` and dropping the half turn ``plan.drops_turn`` when given. It
  raises :class:`AgentFailure` (``connect_failed``, ``resume_rejected``).
* ``run_turn(prompt, prompt_uuid, turn, emit)`` sends one prompt and hands every event
  of the turn to ``emit`` *as it arrives*, in order; ``emit`` journals it (and may
  raise the journal's errors, which propagate unchanged). It returns the turn's
  :class:`TurnOutcome`, or raises :class:`AgentFailure` (``cli_died``,
  ``model_error``...). Cancellation propagates; the caller then calls ``interrupt``.
* ``disconnect()`` ends the CLI process (idempotent; never raises); ``connected``
  says whether a live client is held; ``holds_process`` also counts one still exiting.
* ``cli_exit_code()`` is the CLI's exit status if it died while connected, else None.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

__all__ = [
    "AgentDriver",
    "AgentFailure",
    "AgentSpec",
    "ConnectPlan",
    "Emit",
    "FailureReason",
    "PermissionMode",
    "TurnOutcome",
]

FailureReason = Literal[
    "connect_failed", "resume_rejected", "cli_died", "model_error", "timeout", "interrupted"
]
PermissionMode = Literal["default", "acceptEdits", "plan", "bypassPermissions"]
Emit = Callable[[dict[str, Any]], object]


class AgentFailure(Exception):
    """A turn (or a connect) did not complete. ``reason`` is a stable code."""

    def __init__(self, reason: FailureReason, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


@dataclass(frozen=True)
class AgentSpec:
    """What the SDK needs to know about a conversation, from the job's config."""

    cwd: Path
    env: dict[str, str]
    model: str | None = None
    system_prompt: str | None = None
    allowed_tools: list[str] | None = None
    permission_mode: PermissionMode = "default"
    max_turns: int | None = None
    max_budget_usd: float | None = None  # per query (beat), enforced by the CLI


@dataclass(frozen=True)
class ConnectPlan:
    """How to attach to the conversation's SDK session."""

    session_id: str
    resume: bool  # False: first connect, assign ``session_id``
    resume_at: str | None = None  # keep the transcript up to this entry
    drops_turn: str | None = None  # prompt uuid of the turn being discarded


@dataclass(frozen=True)
class TurnOutcome:
    session_id: str
    is_error: bool
    api_error_status: int | None
    errors: list[str]
    subtype: str = "success"  # e.g. "error_max_budget_usd"
    text: str | None = None  # the result's final text (the reply)


class AgentDriver(Protocol):
    spec: AgentSpec

    @property
    def connected(self) -> bool: ...

    @property
    def holds_process(self) -> bool: ...

    def cli_pid(self) -> int | None: ...

    def cli_exit_code(self) -> int | None: ...

    async def connect(self, plan: ConnectPlan) -> None: ...

    async def run_turn(
        self, prompt: str, prompt_uuid: str, turn: int, emit: Emit
    ) -> TurnOutcome: ...

    async def interrupt(self) -> None: ...

    async def disconnect(self) -> None: ...
