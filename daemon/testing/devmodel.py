"""A loopback stand-in for the Anthropic Messages API, for tests and demos.

The bundled Claude Code CLI, started with ``ANTHROPIC_BASE_URL=http://127.0.0.1:PORT``,
``ANTHROPIC_API_KEY=<anything>`` and ``CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1``,
only calls ``POST /v1/messages?beta=true`` with ``stream: true``. This server answers
those calls (and non-streaming ones) with a deterministic reply that shows what the
model was sent::

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

**Global faults**: ``POST /_control`` with ``{"fail_next": 3, "status": 529}``,
``{"slow_ms": 200}`` or ``{"reset": true}`` (clears faults *and* statistics);
``GET /_stats`` returns :class:`DevModelStats` as JSON. Unknown paths get a 404 with
the API's error body.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import re
import signal
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from http import HTTPStatus
from types import TracebackType
from typing import Any, Final

JsonDict = dict[str, Any]

MAX_BODY_BYTES: Final = 256 * 1024 * 1024
KEEP_PROMPTS: Final = 20
PREVIEW_CHARS: Final = 60
DELTA: Final = "content_block_delta"
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
_INTERRUPT_MARKER = "[Request interrupted by user"
_REMINDER = "<system-reminder>"


class NotLoopbackError(ValueError):
    """The dev model was asked to listen on an address that is not loopback."""

    def __init__(self, host: str) -> None:
        self.host = host
        super().__init__(
            f"dev model refuses to listen on {host!r}: only loopback IP addresses "
            "(127.0.0.0/8 or ::1) are allowed"
        )


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


def message_user_blocks(message: JsonDict) -> list[str]:
    """The user's own text blocks in one API message (none for other roles)."""
    if message.get("role") != "user":
        return []
    content = message.get("content")
    if isinstance(content, str):
        return [content] if _is_user_text(content) else []
    if not isinstance(content, list):
        return []
    return [
        block["text"]
        for block in content
        if isinstance(block, dict)
        and block.get("type") == "text"
        and isinstance(block.get("text"), str)
        and _is_user_text(block["text"])
    ]


def _is_user_text(text: str) -> bool:
    stripped = text.lstrip()
    return bool(stripped) and not stripped.startswith((_REMINDER, _INTERRUPT_MARKER))


def user_texts(messages: Sequence[JsonDict]) -> list[str]:
    """The user's own text of every user turn, oldest first (blocks joined by a space)."""
    return [" ".join(b) for b in (message_user_blocks(m) for m in messages) if b]


def latest_prompt(messages: Sequence[JsonDict]) -> str:
    """The newest user text block: where directives are read.

    After a failed turn the CLI merges the unanswered prompt and the next one into a
    single user message, so reading only the last block keeps a stale directive from
    firing again.
    """
    for message in reversed(messages):
        blocks = message_user_blocks(message)
        if blocks:
            return blocks[-1]
    return ""


def ends_with_user_text(messages: Sequence[JsonDict]) -> bool:
    """True when the newest non-system message is a user turn (not a tool result)."""
    for message in reversed(messages):
        if message.get("role") != "system":
            return bool(message_user_blocks(message))
    return False


def preview(text: str) -> str:
    return " ".join(text.split())[:PREVIEW_CHARS]


def echo_reply(texts: Sequence[str]) -> str:
    """The deterministic reply: how many user turns the model saw, first and last."""
    first = preview(texts[0]) if texts else ""
    last = preview(texts[-1]) if texts else ""
    return f'seen {len(texts)} user turns; first: "{first}"; last: "{last}"'


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
    input_tokens = estimate_input_tokens(request)
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


def check_loopback(host: str) -> None:
    """Raise :class:`NotLoopbackError` unless ``host`` is a loopback IP literal."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise NotLoopbackError(host) from None
    if not address.is_loopback:
        raise NotLoopbackError(host)


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


# ---------------------------------------------------------------- HTTP I/O


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


async def read_request(reader: asyncio.StreamReader) -> Request | None:
    """One HTTP/1.1 request, or None when the client closed between requests."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial.strip():
            raise BadRequestError("connection closed inside the request head") from None
        return None
    except asyncio.LimitOverrunError:
        raise BadRequestError("request head too large") from None
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        raise BadRequestError(f"malformed request line {lines[0]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = await _read_chunked(reader)
    else:
        length = int(headers.get("content-length", "0") or "0")
        if length > MAX_BODY_BYTES:
            raise BadRequestError(f"body of {length} bytes is too large")
        body = await reader.readexactly(length)
    return Request(parts[0].upper(), parts[1].split("?", 1)[0], headers, body)


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while True:
        size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
        if size == 0:
            while (await reader.readline()).strip():
                pass  # trailers
            return bytes(body)
        if len(body) + size > MAX_BODY_BYTES:
            raise BadRequestError("chunked body too large")
        body += await reader.readexactly(size)
        await reader.readline()


def _head(status: int, headers: dict[str, str]) -> bytes:
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Overloaded" if status == 529 else "Status"
    lines = [f"HTTP/1.1 {status} {reason}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class DevModelServer:
    """The loopback model; ``async with DevModelServer(port=0) as srv: srv.base_url``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, slow_ms: int = 0) -> None:
        check_loopback(host)
        self.host = host
        self._requested_port = port
        self._default_slow_ms = slow_ms
        self.control = FaultControl(slow_ms=slow_ms)
        self.stats = DevModelStats()
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._counter = 0

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("dev model is not started")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._on_connection, self.host, self._requested_port
        )

    async def stop(self) -> None:
        """Stop listening, cut every open connection and wait for their handlers."""
        if self._server is None:
            return
        self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    async def __aenter__(self) -> DevModelServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def _next_id(self, prefix: str) -> str:
        self._counter += 1
        return f"{prefix}_dev{self._counter:08d}"

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        if task is None:  # start_server always runs this callback in a task
            raise RuntimeError("dev model connection handler outside a task")
        self._connections.add(task)
        try:
            while True:
                try:
                    request = await read_request(reader)
                except BadRequestError as exc:
                    self.stats.requests += 1
                    await self._send_error(writer, 400, exc.problem, keep_alive=False)
                    break
                if request is None:
                    break
                keep_alive = await self._dispatch(request, writer)
                if not keep_alive or request.headers.get("connection", "").lower() == "close":
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away; nothing to answer
        except asyncio.CancelledError:
            # Only stop() cancels these tasks. Returning normally keeps asyncio's
            # start_server callback from logging the cancellation as an error.
            writer.transport.abort()
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()

    async def _dispatch(self, request: Request, writer: asyncio.StreamWriter) -> bool:
        self.stats.requests += 1
        route = (request.method, request.path)
        if route == ("POST", "/v1/messages"):
            return await self._messages(request, writer)
        if route == ("POST", "/v1/messages/count_tokens"):
            await self._send_json(writer, 200, {"input_tokens": max(1, len(request.body) // 4)})
        elif route == ("GET", "/_stats"):
            await self._send_json(writer, 200, self.stats.to_json())
        elif route == ("POST", "/_control"):
            await self._control(request, writer)
        else:
            message = f"no route for {request.method} {request.path}"
            await self._send_error(writer, 404, message)
        return True

    async def _control(self, request: Request, writer: asyncio.StreamWriter) -> None:
        try:
            command = json.loads(request.body or b"{}")
            if not isinstance(command, dict):
                raise BadRequestError("control body must be a JSON object")
            if apply_control(self.control, command, self._default_slow_ms):
                self.stats.reset()
                self.stats.requests = 1  # this request opens the fresh count
        except (ValueError, BadRequestError) as exc:
            await self._send_error(writer, 400, str(exc))
            return
        await self._send_json(writer, 200, {"ok": True, "control": asdict(self.control)})

    async def _messages(self, request: Request, writer: asyncio.StreamWriter) -> bool:
        self.stats.message_requests += 1
        try:
            body = json.loads(request.body)
            if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
                raise BadRequestError("messages: field required")
        except (ValueError, BadRequestError) as exc:
            self.stats.failed += 1
            await self._send_error(writer, 400, str(exc))
            return True
        last = latest_prompt(body["messages"])
        self.stats.record_prompt(last)
        self.stats.last_seen = [" ".join(t.split()) for t in user_texts(body["messages"])]
        directives = parse_directives(last)
        if self.control.fail_next > 0:
            self.control.fail_next -= 1
            return await self._fail(writer, self.control.status, "injected by /_control")
        if directives.fail is not None:
            return await self._fail(writer, directives.fail, "injected by [fail]")
        reply = plan_reply(body, directives)
        model = str(body.get("model") or "dev-model")
        message_id, tool_id = self._next_id("msg"), self._next_id("toolu")
        if not body.get("stream"):
            if directives.cut:  # no answer at all: the non-streaming fallback fails too
                self.stats.cut += 1
                writer.transport.abort()
                return False
            if directives.stall_s is not None:
                await asyncio.sleep(directives.stall_s)
            await self._send_json(writer, 200, message_json(reply, model, message_id, tool_id))
            return True
        self.stats.streamed += 1
        slow_ms = directives.slow_ms if directives.slow_ms is not None else self.control.slow_ms
        events = stream_events(reply, model, message_id, tool_id)
        return await self._stream(writer, events, directives, slow_ms / 1000)

    async def _fail(self, writer: asyncio.StreamWriter, status: int, why: str) -> bool:
        self.stats.failed += 1
        await self._send_error(writer, status, f"dev model: HTTP {status} {why}")
        return True

    async def _stream(
        self,
        writer: asyncio.StreamWriter,
        events: list[JsonDict],
        directives: Directives,
        delay_s: float,
    ) -> bool:
        """Send ``events`` as chunked SSE; False when the connection was cut."""
        self._count_status(200)
        writer.write(
            _head(
                200,
                {
                    "Content-Type": "text/event-stream; charset=utf-8",
                    "Cache-Control": "no-cache",
                    "Transfer-Encoding": "chunked",
                    "request-id": self._next_id("req"),
                },
            )
        )
        fault_at = fault_position(events)
        for position, event in enumerate(events):
            if position == fault_at and directives.cut:
                await writer.drain()
                self.stats.cut += 1
                writer.transport.abort()
                return False
            if position == fault_at and directives.stall_s is not None:
                await writer.drain()
                await asyncio.sleep(directives.stall_s)
            elif delay_s > 0 and event["type"] == events[position - 1]["type"] == DELTA:
                await writer.drain()
                await asyncio.sleep(delay_s)
            data = sse(event)
            writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True

    def _count_status(self, status: int) -> None:
        self.stats.by_status[status] = self.stats.by_status.get(status, 0) + 1

    async def _send_json(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        payload: JsonDict,
        *,
        keep_alive: bool = True,
    ) -> None:
        self._count_status(status)
        data = json.dumps(payload).encode()
        headers = {
            "Content-Type": "application/json",
            "Content-Length": str(len(data)),
            "request-id": self._next_id("req"),
        }
        if not keep_alive:
            headers["Connection"] = "close"
        writer.write(_head(status, headers) + data)
        await writer.drain()

    async def _send_error(
        self, writer: asyncio.StreamWriter, status: int, message: str, *, keep_alive: bool = True
    ) -> None:
        body = error_body(status, message, self._next_id("req"))
        await self._send_json(writer, status, body, keep_alive=keep_alive)


# ---------------------------------------------------------------- entry points


async def _serve(host: str, port: int, slow_ms: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with DevModelServer(host, port, slow_ms=slow_ms) as server:
        print(f"dev-model listening on {server.base_url}", flush=True)
        await stop.wait()


def run_forever(host: str, port: int, *, slow_ms: int = 0) -> None:
    """Serve on ``host:port`` (0 picks a free port) until SIGINT or SIGTERM.

    Prints ``dev-model listening on http://HOST:PORT`` once listening. Raises
    :class:`NotLoopbackError` before binding if ``host`` is not loopback.
    """
    check_loopback(host)
    asyncio.run(_serve(host, port, slow_ms))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m daemon.testing.devmodel",
        description="Loopback stand-in for the Anthropic Messages API (tests and demos).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="loopback address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port; 0 picks a free one (default)")
    parser.add_argument("--slow-ms", type=int, default=0, help="delay between streamed deltas")
    args = parser.parse_args(argv)
    try:
        run_forever(args.host, args.port, slow_ms=args.slow_ms)
    except NotLoopbackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
