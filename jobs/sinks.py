"""Where a non-quiet reply goes: stdout, a file, a command, a webhook.

Contract of :class:`Sink` (every implementation, including the test kit's
:class:`daemon.testing.fakes.MemorySink`, passes the same behaviour suite in
``tests/test_jobs_sinks.py``):

* ``await sink.send(reply)`` returns once the reply was handed over, and raises
  :class:`SinkError` (with ``sink`` and ``reason``) when it was not, or not provably:
  a timeout is a failure even if the far side may have received it;
* a sink does no retrying of its own (the delivery fence retries, and journals each
  attempt), keeps no state between sends, and is bounded in time by its ``timeout``;
* cancelling ``send`` stops the attempt (a command is killed with its process group).
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import signal
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from jobs.urls import redact_url

__all__ = [
    "CommandSink",
    "FileSink",
    "Reply",
    "Sink",
    "SinkError",
    "StdoutSink",
    "WebhookSink",
]

FILE_MODE = 0o600
_PASSED_ENV = ("PATH", "LANG", "LC_ALL", "TZ")
_STDERR_TAIL = 300


@dataclass(frozen=True)
class Reply:
    """One beat's reply, as sinks receive it."""

    job: str
    turn: int
    text: str
    at: str
    session_id: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "job": self.job,
            "turn": self.turn,
            "at": self.at,
            "session_id": self.session_id,
            "text": self.text,
        }


class SinkError(Exception):
    """A delivery attempt failed; ``reason`` says why in a sentence; ``output`` is what
    the sink's own program printed, if anything (it may quote the reply)."""

    def __init__(self, sink: str, reason: str, output: str | None = None) -> None:
        self.sink = sink
        self.reason = reason
        self.output = output or None
        super().__init__(sink, reason)

    def __str__(self) -> str:
        return f"sink {self.sink}: {self.reason}"


class Sink(Protocol):
    """See the module docstring for the contract."""

    @property
    def name(self) -> str: ...

    async def send(self, reply: Reply) -> None: ...


def _json_line(reply: Reply) -> str:
    return json.dumps(reply.as_json(), ensure_ascii=False) + "\n"


def _print_json(reply: Reply) -> None:
    sys.stdout.write(json.dumps({"event": "reply", **reply.as_json()}, ensure_ascii=False) + "\n")
    sys.stdout.flush()


@dataclass
class StdoutSink:
    """Shows the reply on stdout: by default one JSON object, ``{"event": "reply", ...}``.

    The daemon passes ``emit`` to write it through its own log renderer instead.
    """

    name: str = "stdout"
    emit: Callable[[Reply], None] = _print_json

    async def send(self, reply: Reply) -> None:
        self.emit(reply)


@dataclass
class FileSink:
    """Appends one JSON line per reply to ``path`` (created 0600), fsynced."""

    name: str
    path: Path

    async def send(self, reply: Reply) -> None:
        try:
            await asyncio.to_thread(self._append, _json_line(reply).encode("utf-8"))
        except OSError as exc:
            raise SinkError(self.name, f"cannot append to {self.path}: {exc.strerror}") from exc

    def _append(self, data: bytes) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)


@dataclass
class CommandSink:
    """Runs ``argv`` with the reply text on stdin; exit status 0 within ``timeout`` is done.

    The program gets ``VIGIL_JOB``, ``VIGIL_TURN``, ``VIGIL_AT`` and ``VIGIL_SESSION``
    and only ``PATH``, ``LANG``, ``LC_ALL`` and ``TZ`` from vigil's environment (not
    the model API key). It runs in its own process group, killed on timeout.
    """

    name: str
    argv: Sequence[str]
    timeout: float
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))

    async def send(self, reply: Reply) -> None:
        env = {k: v for k, v in self.environ.items() if k in _PASSED_ENV}
        env.update(
            VIGIL_JOB=reply.job,
            VIGIL_TURN=str(reply.turn),
            VIGIL_AT=reply.at,
            VIGIL_SESSION=reply.session_id or "",
        )
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                start_new_session=True,
            )
        except OSError as exc:
            raise SinkError(self.name, f"cannot run {self.argv[0]}: {exc.strerror}") from exc
        try:
            async with asyncio.timeout(self.timeout):
                _, stderr = await proc.communicate(reply.text.encode("utf-8"))
        except TimeoutError:
            await _kill_group(proc)
            raise SinkError(
                self.name, f"{self.argv[0]} did not finish within {self.timeout:g}s; killed"
            ) from None
        except BaseException:
            await _kill_group(proc)
            raise
        if proc.returncode != 0:
            tail = stderr.decode("utf-8", "replace").strip()[-_STDERR_TAIL:]
            raise SinkError(
                self.name, f"{self.argv[0]} exited with status {proc.returncode}", output=tail
            )


async def _kill_group(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(Exception):
        await asyncio.wait_for(proc.wait(), timeout=5)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a redirect is answered as the error it is, never re-posted


@dataclass
class WebhookSink:
    """HTTP POST of the reply as JSON; any 2xx status within ``timeout`` is done."""

    name: str
    url: str = field(repr=False)  # secrets: shown only as redact_url(url)
    timeout: float = 10.0
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)

    async def send(self, reply: Reply) -> None:
        body = json.dumps(reply.as_json(), ensure_ascii=False).encode("utf-8")
        await asyncio.to_thread(self._post, body)

    def _post(self, body: bytes) -> None:
        shown = redact_url(self.url)  # the only form of the URL an error may carry
        try:
            request = urllib.request.Request(  # noqa: S310  # the scheme is checked in config
                self.url,
                data=body,
                method="POST",
                headers={"Content-Type": "application/json", "User-Agent": "vigil", **self.headers},
            )
            opener = urllib.request.build_opener(_NoRedirect)
            with opener.open(request, timeout=self.timeout) as response:
                status = int(response.status)
        except urllib.error.HTTPError as exc:
            raise SinkError(self.name, f"{shown} answered HTTP {exc.code}") from None
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            why = getattr(exc, "reason", None) or exc
            raise SinkError(
                self.name, f"POST {shown} failed: {_scrub(str(why), self.url)}"
            ) from None
        except (ValueError, http.client.HTTPException) as exc:  # InvalidURL quotes the URL
            raise SinkError(
                self.name, f"POST {shown} failed: {_scrub(str(exc), self.url)}"
            ) from None
        if not 200 <= status < 300:
            raise SinkError(self.name, f"{shown} answered HTTP {status}")


def _scrub(text: str, url: str) -> str:
    """An error text from the HTTP stack, with any piece of the URL's secrets removed."""
    parts = urllib.parse.urlsplit(url)
    for secret in (url, parts.path, parts.query, parts.password, parts.username, parts.netloc):
        if secret and len(secret) > 1 and secret in text:
            text = text.replace(secret, redact_url(url))
    return text
