"""The one module that drives ``claude_agent_sdk``: clients, messages and errors.

:class:`AgentSession` holds one connected ``ClaudeSDKClient`` (one CLI subprocess) for
one conversation. It turns every SDK message into vigil events (:func:`translate`,
pure) and hands each to ``emit`` *as it arrives*; the caller journals it before
anything shows it. Failures come out as :class:`AgentFailure` with a reason code.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemon import events as ev
from daemon.agent.boundary import compacted_event, whole
from daemon.events import Event
from daemon.ports.agent import (
    AgentFailure,
    AgentSpec,
    ConnectPlan,
    Emit,
    TurnOutcome,
)
from daemon.ports.transcripts import TranscriptStore

if TYPE_CHECKING:
    from claude_agent_sdk import ClaudeAgentOptions, ClaudeSDKClient
    from claude_agent_sdk.types import SessionKey, SessionStore

# claude_agent_sdk takes about a second to import, so it is imported where it is used
# (the daemon announces READY without it; `vigil status` and friends never load it).


def preload_sdk() -> None:
    """Import the SDK now (see :func:`start_sdk_import`)."""
    import claude_agent_sdk  # noqa: F401, PLC0415


_importing: threading.Thread | None = None


def start_sdk_import() -> None:
    """Import the SDK on a thread (once): the daemon starts it while its workers read
    the journals, or else once READY is out; a connect waits for it
    (:func:`sdk_imported`), so no beat stalls the event loop with the import."""
    global _importing  # noqa: PLW0603  # one import per process
    if _importing is None:
        _importing = threading.Thread(target=preload_sdk, name="preload-sdk", daemon=True)
        _importing.start()


def join_sdk_import() -> None:
    """Block until an import :func:`start_sdk_import` started is done."""
    if _importing is not None:
        _importing.join()


async def sdk_imported() -> None:
    """Wait, without blocking the event loop, for the background import to finish."""
    if _importing is not None and _importing.is_alive():
        await asyncio.to_thread(_importing.join)


DISCONNECT_S = 20.0  # longer than the SDK's own bounded close


class TranscriptForkError(Exception):
    """The SDK could not fork a session's transcript (session or entry not stored)."""


@dataclass(frozen=True)
class ForkedTranscript:
    session_id: str  # the new SDK session
    resume_at: str  # the new uuid of the entry the source was cut at (its last entry)


async def fork_transcript(
    store: SessionStore, session_id: str, cwd: Path | str, up_to: str
) -> ForkedTranscript:
    """Copy session ``session_id``'s transcript up to entry ``up_to`` (inclusive) into a
    new session in ``store`` (the file store or PostgreSQL's), offline: the SDK's
    ``fork_session_via_store`` gives every entry a new uuid and the new ``sessionId``,
    keeps the ``parentUuid`` chain and stamps ``forkedFrom``; no CLI runs. The source
    is only read.
    """
    from claude_agent_sdk import fork_session_via_store  # noqa: PLC0415

    try:
        result = await fork_session_via_store(
            store, session_id, directory=str(cwd), up_to_message_id=up_to
        )
    except (FileNotFoundError, ValueError) as exc:
        raise TranscriptForkError(str(exc)) from exc
    key: SessionKey = {"project_key": project_key(cwd), "session_id": result.session_id}
    for entry in await store.load(key) or []:
        origin = entry.get("forkedFrom")
        if isinstance(origin, dict) and origin.get("messageUuid") == up_to:
            return ForkedTranscript(result.session_id, str(entry["uuid"]))
    await store.delete(key)
    raise TranscriptForkError(f"the fork of session {session_id} lost its entry {up_to}")


def project_key(cwd: Path | str) -> str:
    """The SDK's ``SessionStore`` project key for a working directory (as the CLI's)."""
    from claude_agent_sdk import project_key_for_directory  # noqa: PLC0415

    return project_key_for_directory(str(cwd))


def translate(  # noqa: PLR0911  # one return per SDK message type reads best
    message: object, turn: int, *, context_tokens: int | None = None
) -> list[Event]:
    """vigil events for one SDK message (pure; unknown messages yield nothing).

    ``context_tokens`` goes on the result (see :func:`context_tokens_of`). The user
    message carrying a compaction's summary (text blocks, after the boundary) yields
    nothing: it is the CLI's, not a prompt, and stays in the transcript.
    """
    from claude_agent_sdk import (  # noqa: PLC0415
        AssistantMessage,
        ResultMessage,
        StreamEvent,
        SystemMessage,
        TextBlock,
        ToolResultBlock,
        ToolUseBlock,
        UserMessage,
    )

    if isinstance(message, StreamEvent):
        raw = message.event
        if raw.get("type") == "content_block_delta":
            d = raw.get("delta") or {}
            if d.get("type") == "text_delta" and d.get("text"):
                return [ev.delta(turn, str(d["text"]))]
        return []
    if isinstance(message, AssistantMessage):
        out: list[Event] = []
        text = "".join(b.text for b in message.content if isinstance(b, TextBlock))
        out.append(ev.assistant(turn, text, uuid=message.uuid, model=message.model))
        for block in message.content:
            if isinstance(block, ToolUseBlock):
                out.append(ev.tool_use(turn, block.id, block.name, block.input))
        return out
    if isinstance(message, UserMessage) and isinstance(message.content, list):
        return [
            ev.tool_result(turn, b.tool_use_id, b.content, is_error=bool(b.is_error))
            for b in message.content
            if isinstance(b, ToolResultBlock)
        ]
    if isinstance(message, ResultMessage):
        return [
            ev.result(
                turn,
                session_id=message.session_id,
                is_error=message.is_error,
                subtype=message.subtype,
                text=message.result,
                session_cost_usd=message.total_cost_usd,  # running total for the session
                usage=message.usage,
                duration_ms=message.duration_ms,
                num_turns=message.num_turns,
                context_tokens=context_tokens,
            )
        ]
    if isinstance(message, SystemMessage) and message.subtype == "compact_boundary":
        return [compacted_event(turn, message.data)]
    return []


USAGE_CONTEXT_KEYS = ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")


def context_tokens_of(message: object) -> int | None:
    """What the model received in the request a top-level assistant message answers
    (input + cache read + cache write tokens), or None. A subagent's messages (with a
    ``parent_tool_use_id``) are another context and say nothing about this one."""
    from claude_agent_sdk import AssistantMessage  # noqa: PLC0415

    if not isinstance(message, AssistantMessage) or message.parent_tool_use_id:
        return None
    usage = message.usage
    if not isinstance(usage, dict):
        return None
    counts = [whole(usage.get(key)) for key in USAGE_CONTEXT_KEYS]
    if counts[0] is None:
        return None
    return sum(n or 0 for n in counts)


class AgentSession:
    """One conversation's SDK client. Use from one task at a time."""

    def __init__(self, spec: AgentSpec, store: TranscriptStore) -> None:
        self.spec = spec
        self.store = store
        self._client: ClaudeSDKClient | None = None
        self._stderr: deque[str] = deque(maxlen=20)
        self.session_id: str | None = None
        self._closing = 0

    @property
    def connected(self) -> bool:
        return self._client is not None

    @property
    def holds_process(self) -> bool:
        """Connected, or disconnecting and its CLI process has not exited yet."""
        return self._client is not None or self._closing > 0

    def cli_pid(self) -> int | None:
        """PID of the CLI subprocess, when connected (for operators and tests)."""
        pid = getattr(self._process(), "pid", None)
        return pid if isinstance(pid, int) else None

    def cli_exit_code(self) -> int | None:
        """The CLI's exit status if it died while connected (asyncio reaps it), else None."""
        code = getattr(self._process(), "returncode", None)
        return code if isinstance(code, int) else None

    def _process(self) -> object:
        return _process_of(self._client)

    async def connect(self, plan: ConnectPlan) -> None:
        await sdk_imported()
        from claude_agent_sdk import ClaudeSDKClient  # noqa: PLC0415

        options = self._options(plan)
        if plan.resume and plan.resume_at:
            self.store.load_whole_next(plan.session_id)  # the cut may lie before a compaction
        client = ClaudeSDKClient(options)
        # Known before the CLI starts: a transcript store fenced per conversation
        # (PostgreSQL) asks which conversation a session's first writes belong to.
        self.session_id = plan.session_id
        try:
            await client.connect()
        except Exception as exc:  # the SDK raises several types here; all mean "no client"
            with contextlib.suppress(Exception):
                await client.disconnect()
            text = f"{type(exc).__name__}: {exc}"
            if "Resume rejected" in text:
                raise AgentFailure("resume_rejected", text) from exc
            raise AgentFailure("connect_failed", self._with_stderr(text)) from exc
        self._client = client
        self.session_id = plan.session_id

    async def run_turn(self, prompt: str, prompt_uuid: str, turn: int, emit: Emit) -> TurnOutcome:
        """Send ``prompt``; emit every event as it arrives; return the result."""
        from claude_agent_sdk import ClaudeSDKError, ResultMessage  # noqa: PLC0415

        client = self._client
        if client is None:
            raise AgentFailure("connect_failed", "not connected")
        outcome: TurnOutcome | None = None
        try:
            await client.query(_prompt_stream(prompt, prompt_uuid))
            context: int | None = None  # of the turn's last model request
            async for message in client.receive_response():
                self._raise_store_failure()
                context = context_tokens_of(message) or context
                for event in translate(message, turn, context_tokens=context):
                    emit(event)
                if isinstance(message, ResultMessage):
                    self.session_id = message.session_id
                    outcome = TurnOutcome(
                        message.session_id,
                        message.is_error,
                        message.api_error_status,
                        [str(e) for e in (message.errors or [])],
                        message.subtype,
                        message.result,
                    )
        except ClaudeSDKError as exc:
            await self.disconnect()
            raise AgentFailure(
                "cli_died", self._with_stderr(f"{type(exc).__name__}: {exc}")
            ) from exc
        if outcome is None:
            await self.disconnect()
            raise AgentFailure(
                "cli_died", self._with_stderr("the CLI ended the turn without a result")
            )
        return outcome

    def _raise_store_failure(self) -> None:
        """The transcript store could not take this session's entries (disk full, fsync
        failed): raise its error, so nothing more of the turn is journaled as if the
        model's memory of it were safe."""
        failure = self.store.take_failure(self.session_id) if self.session_id else None
        if failure is not None:
            raise failure

    async def interrupt(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._client.interrupt(), timeout=5)

    async def disconnect(self) -> None:
        """Close the client and make sure its CLI process is gone (never leaked).

        The SDK bounds its own close (stdin EOF, then SIGTERM, then SIGKILL; about 15 s
        at worst) and needs it to run to the end: cancelling it half way leaves the
        process running. So it runs shielded; if it fails or we are cancelled, the
        process is killed by its PID before we return.
        """
        client, self._client = self._client, None
        if client is None:
            return
        process = _process_of(client)
        self._closing += 1
        try:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(client.disconnect()), DISCONNECT_S)
        finally:
            self._closing -= 1
            _kill_if_running(process)

    def _options(self, plan: ConnectPlan) -> ClaudeAgentOptions:
        from claude_agent_sdk import ClaudeAgentOptions  # noqa: PLC0415

        spec = self.spec
        kwargs: dict[str, Any] = {
            "cwd": str(spec.cwd),
            "env": spec.env,
            "include_partial_messages": True,
            "setting_sources": [],
            "session_store": self.store,
            "session_store_flush": "eager",
            "permission_mode": spec.permission_mode,
            "stderr": self._stderr.append,
        }
        if plan.resume:
            kwargs["resume"] = plan.session_id
            if plan.resume_at:
                kwargs["resume_session_at"] = plan.resume_at
                if plan.drops_turn:
                    kwargs["resume_drops_turn"] = plan.drops_turn
        else:
            kwargs["session_id"] = plan.session_id
        if spec.model:
            kwargs["model"] = spec.model
        if spec.system_prompt:
            kwargs["system_prompt"] = spec.system_prompt
        if spec.allowed_tools is not None:
            kwargs["allowed_tools"] = spec.allowed_tools
        if spec.max_turns is not None:
            kwargs["max_turns"] = spec.max_turns
        if spec.max_budget_usd is not None:
            kwargs["max_budget_usd"] = spec.max_budget_usd
        return ClaudeAgentOptions(**kwargs)

    def _with_stderr(self, text: str) -> str:
        tail = " | ".join(line.strip() for line in self._stderr if line.strip())
        return f"{text} (CLI stderr: {tail[-600:]})" if tail else text


def _process_of(client: ClaudeSDKClient | None) -> object:
    """The CLI subprocess behind a client (the SDK keeps it on its transport)."""
    transport = getattr(client, "_transport", None)
    return getattr(transport, "_process", None)


def _kill_if_running(process: object) -> None:
    pid = getattr(process, "pid", None)
    if isinstance(pid, int) and getattr(process, "returncode", 0) is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)  # asyncio's child watcher reaps it


async def _prompt_stream(prompt: str, prompt_uuid: str) -> AsyncIterator[dict[str, Any]]:
    """The prompt as a streamed user message carrying our uuid (for replay later)."""
    yield {
        "type": "user",
        "message": {"role": "user", "content": prompt},
        "parent_tool_use_id": None,
        "uuid": prompt_uuid,
    }
