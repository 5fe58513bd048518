"""The control socket: how ``vigil status`` and ``vigil beat`` reach a running daemon.

A Unix stream socket at ``runtime_dir/control.sock``, owner-only (0600), speaking one
JSON object per line: the client sends a request, the daemon answers one object and
closes. Requests::

    {"op": "status"}               -> {"ok": true, "status": {...}}
    {"op": "beat", "job": "inbox"} -> {"ok": true} | {"ok": false, "error": "..."}
    {"op": "send", "job": "inbox", "text": "..."}   -> {"ok": true, "request": "<id>"}
    {"op": "queue", "job": "inbox", "text": "..."}  -> {"ok": true, "id": "<id>", "queued": N}
    {"op": "pause", "job": "inbox", "for_s": 3600}  -> {"ok": true, "until": "..." | null}
    {"op": "resume", "job": "inbox"}                -> {"ok": true, "was_paused": true}

(``send``, ``queue``, ``pause`` and ``resume``: :mod:`daemon.runtime.operator`.)

Errors never crash the daemon; a malformed request gets ``{"ok": false, "error": ...}``.
A target may answer ``beat`` and the operator requests later (an awaitable): a cluster
node waits for the conversation's owner that way (:mod:`daemon.runtime.cluster.routing`),
each connection in its own task, so the socket keeps answering meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, Protocol

SOCKET_NAME = "control.sock"
MAX_REQUEST = 64 * 1024
OPERATOR_OPS = frozenset({"send", "queue", "pause", "resume"})


class ControlTarget(Protocol):
    def status_snapshot(self) -> dict[str, Any]:
        """A JSON-safe picture of the daemon: jobs, next beats, last outcomes, clients."""

    def request_beat(self, name: str) -> tuple[bool, str] | Awaitable[tuple[bool, str]]:
        """Start a beat of ``name`` now; (False, why) when refused."""

    def operator_request(
        self, op: str, request: dict[str, Any]
    ) -> dict[str, Any] | Awaitable[dict[str, Any]]:
        """``send``, ``queue``, ``pause`` or ``resume``: the answer to send back."""


class ControlServer:
    def __init__(self, path: Path, target: ControlTarget) -> None:
        self.path = path
        self.target = target
        self._server: asyncio.Server | None = None
        self._inode: tuple[int, int] | None = None

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            # A stale socket from a killed daemon (or anything planted there): never
            # used; we hold the state and runtime directory locks.
            self.path.unlink()
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))
        os.chmod(self.path, 0o600)
        st = self.path.lstat()
        self._inode = (st.st_dev, st.st_ino)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            st = self.path.lstat()
            if (st.st_dev, st.st_ino) == self._inode:  # only the socket this daemon bound
                self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), timeout=5)
            answer = await self._answer(line)
        except (TimeoutError, ValueError) as exc:
            answer = {"ok": False, "error": f"bad request: {exc}"}
        except RecursionError:  # json.loads of "[[[[...": nested too deep to parse
            answer = {"ok": False, "error": "bad request: JSON nested too deeply"}
        try:
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def _answer(self, line: bytes) -> dict[str, Any]:  # noqa: PLR0911  # one answer per op
        if len(line) > MAX_REQUEST:
            return {"ok": False, "error": "request too large"}
        request = json.loads(line)
        if not isinstance(request, dict):
            return {"ok": False, "error": "a request is a JSON object"}
        op = request.get("op")
        if op == "status":
            return {"ok": True, "status": self.target.status_snapshot()}
        if op == "beat":
            name = request.get("job")
            if not isinstance(name, str):
                return {"ok": False, "error": "beat needs a job name"}
            beat = self.target.request_beat(name)
            ok, why = beat if isinstance(beat, tuple) else await beat
            return {"ok": ok} if ok else {"ok": False, "error": why}
        if op in OPERATOR_OPS:
            answer = self.target.operator_request(str(op), request)
            return answer if isinstance(answer, dict) else await answer
        return {"ok": False, "error": f"unknown op {op!r}"}


class DaemonNotRunning(Exception):
    def __init__(self, path: Path, why: str) -> None:
        self.path = path
        super().__init__(f"no vigil daemon answers on {path} ({why})")


def call(path: Path, request: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    """Send one request to a running daemon (blocking; for the CLI)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise DaemonNotRunning(path, exc.strerror or type(exc).__name__) from None
        sock.sendall(json.dumps(request).encode() + b"\n")
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        sock.close()
    answer = json.loads(b"".join(chunks))
    if not isinstance(answer, dict):
        raise ValueError("the daemon sent a malformed answer")
    return answer
