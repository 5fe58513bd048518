"""A loopback stand-in for the Anthropic Messages API, for tests and demos.

The bundled Claude Code CLI, started with ``ANTHROPIC_BASE_URL=http://127.0.0.1:PORT``,
``ANTHROPIC_API_KEY=<anything>`` and ``CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1``,
only calls ``POST /v1/messages?beta=true`` with ``stream: true``. This server answers
those calls (and non-streaming ones) with a deterministic reply that shows what the
model was sent::

    seen {N} user turns; first: "{first}"; last: "{last}"

Which user messages count, and the **directives** a prompt can carry (``[reply:..]``,
``[slow:..]``, ``[fail:..]``, ``[cut]``, ``[stall:..]``, ``[tool:..]``), are described
in :mod:`daemon.testing.messages`, which plans every answer without I/O; this module is
the asyncio server around it (HTTP framing in :mod:`daemon.testing.wire`).

**Global faults**: ``POST /_control`` with ``{"fail_next": 3, "status": 529}``,
``{"slow_ms": 200}`` or ``{"reset": true}`` (clears faults *and* statistics);
``GET /_stats`` returns :class:`~daemon.testing.messages.DevModelStats` as JSON.
Unknown paths get a 404 with the API's error body.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import signal
import sys
from collections.abc import Sequence
from dataclasses import asdict
from types import TracebackType
from typing import Final

from daemon.testing.messages import (
    BadRequestError,
    DevModelStats,
    Directives,
    FaultControl,
    JsonDict,
    apply_control,
    error_body,
    fault_position,
    message_json,
    parse_directives,
    plan_reply,
    sse,
    stream_events,
)
from daemon.testing.prompts import latest_prompt, user_texts
from daemon.testing.wire import Request, read_request, status_head

DELTA: Final = "content_block_delta"


class NotLoopbackError(ValueError):
    """The dev model was asked to listen on an address that is not loopback."""

    def __init__(self, host: str) -> None:
        self.host = host
        super().__init__(
            f"dev model refuses to listen on {host!r}: only loopback IP addresses "
            "(127.0.0.0/8 or ::1) are allowed"
        )


def check_loopback(host: str) -> None:
    """Raise :class:`NotLoopbackError` unless ``host`` is a loopback IP literal."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise NotLoopbackError(host) from None
    if not address.is_loopback:
        raise NotLoopbackError(host)


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
            status_head(
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
        writer.write(status_head(status, headers) + data)
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
