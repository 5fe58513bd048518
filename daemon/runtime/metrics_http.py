"""``GET /metrics`` on a loopback address or a Unix socket, served on the event loop.

A minimal HTTP/1.1 responder (one request per connection, then close): the registry is
read on the loop, where the runtime's state lives, so a scrape needs no locks. Only
loopback addresses are accepted (the config refuses others), so nothing is exposed to
the network; put a proxy in front to scrape from elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import os

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from daemon.config.fields import MetricsEndpoint

__all__ = ["MetricsServer"]

MAX_HEAD = 8 * 1024
READ_TIMEOUT_S = 5.0
SOCKET_MODE = 0o660  # the owner and its group (a scraper's proxy), never others


class MetricsServer:
    def __init__(self, endpoint: MetricsEndpoint, registry: CollectorRegistry) -> None:
        self.endpoint = endpoint
        self.registry = registry
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        """Listen; raises ``OSError`` (address in use, bad path) for the caller to report."""
        path = self.endpoint.path
        if path is not None:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # a stale socket of a killed daemon; we hold the state lock
            self._server = await asyncio.start_unix_server(self._serve, path=str(path))
            os.chmod(path, SOCKET_MODE)
        else:
            self._server = await asyncio.start_server(
                self._serve, self.endpoint.host, self.endpoint.port
            )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        if self.endpoint.path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.endpoint.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT_S)
            status, body, kind = self._answer(head)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            status, body, kind = "400 Bad Request", b"bad request\n", "text/plain"
        except ConnectionError:
            writer.close()
            return
        head_out = (
            f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        try:
            writer.write(head_out.encode("latin-1") + body)
            await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    def _answer(self, head: bytes) -> tuple[str, bytes, str]:
        if len(head) > MAX_HEAD:
            return "431 Request Header Fields Too Large", b"", "text/plain"
        parts = head.split(b"\r\n", 1)[0].split(b" ")
        if len(parts) != 3 or parts[0] not in (b"GET", b"HEAD"):
            return "405 Method Not Allowed", b"GET /metrics\n", "text/plain"
        path = parts[1].split(b"?", 1)[0]
        if path == b"/metrics":
            body = generate_latest(self.registry)
            # The classic text format (0.0.4): every Prometheus version reads it, and
            # vigil's metric names need none of 1.0.0's escaping.
            return "200 OK", body if parts[0] == b"GET" else b"", CONTENT_TYPE_PLAIN_0_0_4
        if path == b"/":
            return "200 OK", b"vigil: metrics at /metrics\n", "text/plain"
        return "404 Not Found", b"not found; try /metrics\n", "text/plain"
