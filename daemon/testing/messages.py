"""The Messages API as the loopback model speaks it: pure functions, no I/O.

What one ``POST /v1/messages`` asks for and what the model answers, apart from the
asyncio server (:mod:`daemon.testing.devmodel`) that moves the bytes. The answer is
deterministic and shows what the model was sent::

    seen {N} user turns; first: "{first}"; last: "{last}"

**Which user messages count.** The CLI sends each prompt as a ``user`` message whose
content is a list of text blocks; the first one also carries CLI-injected
``<system-reminder>`` blocks, and the environment description travels as a separate
``system``-role message inside ``messages``. Tool results come back as ``user``
messages holding only ``tool_result`` blocks, and after an interrupt the CLI adds a
``[Request interrupted by user...]`` text. A user message counts as a user turn when
it holds at least one text block (or string content) that is not blank, does not
start with ``<system-reminder>`` and is not such an interrupt marker; its text is
those blocks joined by a space. ``first``/``last`` have their whitespace collapsed
and are cut to 60 characters, so the reply is always one line.

**Directives** in the newest user text block script a single request:
``[reply:TEXT]`` reply exactly TEXT; ``[slow:MS]`` sleep MS ms between deltas;
``[fail:CODE]`` answer HTTP CODE with the API's JSON error body; ``[cut]`` send a
couple of deltas, then drop the connection (a non-streaming request, which the CLI
sends as a fallback after a broken stream, is dropped unanswered); ``[stall:S]``
send a couple of deltas, go silent for S seconds, then finish; ``[tool:CMD]``
answer a fresh prompt with a ``tool_use`` block running CMD in the Bash tool (the
follow-up request carrying the tool result gets a normal text reply). Arguments
cannot contain ``]``. Only the newest block is read because after a failed turn
the CLI merges the unanswered prompt with the next one into one user message.
The exception is ``[usage:N]``: it is read from *every* user turn still in the
request, each one adding N to the reported ``input_tokens``, so a conversation whose
prompts carry it grows by N tokens a turn until the CLI compacts it away.

**Compaction.** The CLI's summarisation request (its newest user text holds "create a
detailed summary of the conversation so far") is answered with
``<summary>dev-model summary of N user turns; first: "..."; last: "..."</summary>``,
directives removed; N and ``first`` carry over from an earlier dev-model summary, so
the memory that survives compactions is visible in the reply after them.

**Global faults** (:class:`FaultControl`) and the counters (:class:`DevModelStats`)
are set and read over HTTP: see :mod:`daemon.testing.devmodel`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Final

from daemon.testing.prompts import (
    echo_reply,
    ends_with_user_text,
    is_summary_request,
    summary_reply,
    synthetic_tokens,
    user_texts,
)

JsonDict = dict[str, Any]

KEEP_PROMPTS: Final = 20
STREAMED_BEFORE_FAULT: Final = 2  # text deltas sent before [cut] or [stall]

ERROR_TYPES: Final[dict[int, str]] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}

_DIRECTIVE = re.compile(r"\[(reply|slow|fail|stall|tool):([^\]]*)\]|\[(cut)\]")


class BadRequestError(Exception):
    """A request could not be parsed; answered with HTTP 400."""

    def __init__(self, problem: str) -> None:
        self.problem = problem
        super().__init__(f"bad request: {problem}")


# ---------------------------------------------------------------- pure logic


@dataclass(frozen=True)
class Directives:
    """Per-request behaviour scripted by markers in the newest user text block."""

    reply: str | None = None
    slow_ms: int | None = None
    fail: int | None = None
    cut: bool = False
    stall_s: float | None = None
    tool: str | None = None


def parse_directives(text: str) -> Directives:
    """Read ``[reply:..]``, ``[slow:..]``, ``[fail:..]``, ``[cut]``, ``[stall:..]``,
    ``[tool:..]`` from ``text``; malformed numbers are ignored."""
    found: dict[str, str] = {}
    for match in _DIRECTIVE.finditer(text):
        if match.group(3):
            found["cut"] = ""
        else:
            found[match.group(1)] = match.group(2)
    return Directives(
        reply=found.get("reply"),
        slow_ms=_as_int(found.get("slow")),
        fail=_as_int(found.get("fail")),
        cut="cut" in found,
        stall_s=_as_float(found.get("stall")),
        tool=found.get("tool") or None,
    )


def _as_int(value: str | None) -> int | None:
    if value is None or not value.strip().isdigit():
        return None
    return int(value)


def _as_float(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None


def chunk_words(text: str) -> list[str]:
    """Split into word-sized pieces whose concatenation is ``text``."""
    return re.findall(r"\S+\s*|\s+", text) or [text]


def error_body(status: int, message: str, request_id: str) -> JsonDict:
    kind = ERROR_TYPES.get(status, "api_error")
    return {"type": "error", "error": {"type": kind, "message": message}, "request_id": request_id}


def sse(event: JsonDict) -> bytes:
    return f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode()


@dataclass(frozen=True)
class Reply:
    """What one model call answers: text, or a Bash ``tool_use``."""

    text: str | None
    tool_command: str | None
    input_tokens: int
    output_tokens: int

    @property
    def stop_reason(self) -> str:
        return "tool_use" if self.tool_command is not None else "end_turn"


def estimate_input_tokens(request: JsonDict) -> int:
    """About four characters a token, over the system prompt and the messages."""
    chars = len(json.dumps(request.get("system", ""))) + len(json.dumps(request["messages"]))
    return max(1, chars // 4)


def plan_reply(request: JsonDict, directives: Directives) -> Reply:
    messages = request["messages"]
    input_tokens = estimate_input_tokens(request) + synthetic_tokens(messages)
    if is_summary_request(messages):
        text = summary_reply(messages)
        return Reply(text, None, input_tokens, max(1, len(text.split())))
    if directives.tool is not None and ends_with_user_text(messages):
        return Reply(None, directives.tool, input_tokens, 8)
    text = directives.reply if directives.reply is not None else echo_reply(user_texts(messages))
    return Reply(text, None, input_tokens, max(1, len(text.split())))


def tool_input(command: str) -> JsonDict:
    return {"command": command, "description": "dev-model tool call"}


def message_json(reply: Reply, model: str, message_id: str, tool_id: str) -> JsonDict:
    """A complete non-streaming Messages API response."""
    content: list[JsonDict] = []
    if reply.tool_command is not None:
        content.append(
            {
                "type": "tool_use",
                "id": tool_id,
                "name": "Bash",
                "input": tool_input(reply.tool_command),
            }
        )
    else:
        content.append({"type": "text", "text": reply.text or ""})
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": reply.stop_reason,
        "stop_sequence": None,
        "usage": {
            "input_tokens": reply.input_tokens,
            "output_tokens": reply.output_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
    }


def stream_events(reply: Reply, model: str, message_id: str, tool_id: str) -> list[JsonDict]:
    """The server-sent events of one streamed response, in order."""
    start = message_json(reply, model, message_id, tool_id)
    start.update(content=[], stop_reason=None)
    start["usage"] = dict(start["usage"], output_tokens=1)
    events: list[JsonDict] = [{"type": "message_start", "message": start}]
    if reply.tool_command is not None:
        block: JsonDict = {"type": "tool_use", "id": tool_id, "name": "Bash", "input": {}}
        raw = json.dumps(tool_input(reply.tool_command))
        half = len(raw) // 2
        deltas = [{"type": "input_json_delta", "partial_json": p} for p in (raw[:half], raw[half:])]
    else:
        block = {"type": "text", "text": ""}
        deltas = [{"type": "text_delta", "text": w} for w in chunk_words(reply.text or "")]
    events.append({"type": "content_block_start", "index": 0, "content_block": block})
    events += [{"type": "content_block_delta", "index": 0, "delta": d} for d in deltas]
    events.append({"type": "content_block_stop", "index": 0})
    events.append(
        {
            "type": "message_delta",
            "delta": {"stop_reason": reply.stop_reason, "stop_sequence": None},
            "usage": {"output_tokens": reply.output_tokens},
        }
    )
    events.append({"type": "message_stop"})
    return events


def fault_position(events: Sequence[JsonDict]) -> int:
    """Index of the event before which [cut] or [stall] strikes: after a couple of
    deltas, or at the end of the block if it has fewer."""
    deltas = 0
    for position, event in enumerate(events):
        if event["type"] == "content_block_stop":
            return position
        if event["type"] == "content_block_delta":
            if deltas == STREAMED_BEFORE_FAULT:
                return position
            deltas += 1
    return len(events)


# ---------------------------------------------------------------- state


@dataclass
class DevModelStats:
    """Counters a test reads to know how often the model was called.

    ``requests`` counts every HTTP request (including ``/_stats`` itself);
    ``message_requests`` the calls to ``/v1/messages``; ``streamed`` those answered
    with an event stream (cut ones included); ``cut`` those cut off by ``[cut]``;
    ``failed`` those answered with an error status; ``last_prompts`` the last user
    text of the last 20 message calls, oldest first; ``last_seen`` every user turn's
    text (whitespace collapsed) of the newest message call: what the model remembered.
    """

    requests: int = 0
    message_requests: int = 0
    streamed: int = 0
    failed: int = 0
    cut: int = 0
    by_status: dict[int, int] = field(default_factory=dict)
    last_prompts: list[str] = field(default_factory=list)
    last_seen: list[str] = field(default_factory=list)

    def to_json(self) -> JsonDict:
        data = asdict(self)
        data["by_status"] = {str(k): v for k, v in sorted(self.by_status.items())}
        return data

    def reset(self) -> None:
        fresh = DevModelStats()
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(fresh, name))

    def record_prompt(self, text: str) -> None:
        self.last_prompts.append(text)
        del self.last_prompts[:-KEEP_PROMPTS]


@dataclass
class FaultControl:
    """Global faults set through ``POST /_control``."""

    fail_next: int = 0
    status: int = 500
    slow_ms: int = 0


def apply_control(control: FaultControl, command: JsonDict, default_slow_ms: int) -> bool:
    """Update ``control`` from a ``/_control`` body; True when it asked for a reset.

    Raises :class:`BadRequestError` for unknown keys or non-integer values.
    """
    unknown = set(command) - {"fail_next", "status", "slow_ms", "reset"}
    if unknown:
        raise BadRequestError(f"unknown control keys {sorted(unknown)}")
    for key in ("fail_next", "status", "slow_ms"):
        if key in command and (type(command[key]) is not int or command[key] < 0):
            raise BadRequestError(f"{key} must be a non-negative integer")
    reset = command.get("reset") is True
    if reset:
        control.fail_next, control.status, control.slow_ms = 0, 500, default_slow_ms
    control.fail_next = command.get("fail_next", control.fail_next)
    control.status = command.get("status", control.status)
    control.slow_ms = command.get("slow_ms", control.slow_ms)
    return reset
