"""The loopback model in this process, keeping every ``/v1/messages`` body it receives.

A test reads what the model was really sent (its messages, system prompt and tools)
and how many input tokens it would report for each request. It serves on 127.0.0.1 from
a thread with its own event loop; ``url`` is what ``Site`` needs of a model.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon.runtime.control import SOCKET_NAME, call
from daemon.testing.devmodel import DevModelServer
from daemon.testing.harness import Site
from daemon.testing.messages import estimate_input_tokens
from daemon.testing.process import Daemon
from daemon.testing.prompts import is_summary_request, synthetic_tokens
from daemon.testing.wire import Request

Body = dict[str, Any]


class _Recorder(DevModelServer):
    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[Body] = []

    async def _messages(self, request: Request, writer: asyncio.StreamWriter) -> bool:
        try:
            body = json.loads(request.body)
        except ValueError:
            body = None
        if isinstance(body, dict):
            self.bodies.append(body)
        return await super()._messages(request, writer)


class RecordingModel:
    """The dev model on a thread; ``bodies`` holds every request body, oldest first."""

    def __init__(self) -> None:
        self._server = _Recorder()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._server.start(), self._loop).result(10)
        self.url = self._server.base_url

    @property
    def bodies(self) -> list[Body]:
        return list(self._server.bodies)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._server.stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()


def input_tokens(body: Body) -> int:
    """The ``input_tokens`` the dev model reports for a request (its estimate plus every
    ``[usage:N]`` still in the request)."""
    return estimate_input_tokens(body) + synthetic_tokens(body["messages"])


def is_summary(body: Body) -> bool:
    return is_summary_request(body["messages"])


@pytest.fixture
def recording_model() -> Iterator[RecordingModel]:
    model = RecordingModel()
    try:
        yield model
    finally:
        model.stop()


# ---------------------------------------------------------------- long conversations


@pytest.fixture
def long_site(short_tmp: Path, recording_model: RecordingModel) -> Iterator[Site]:
    site = Site(short_tmp, recording_model)  # type: ignore[arg-type]  # Site only reads .url
    try:
        yield site
    finally:
        site.close()


def write_config(site: Site, name: str, prompt: str, *, extra: str = "", **daemon: str) -> None:
    """One job ``name`` (beats only when asked: every 1h) with ``prompt`` and ``extra``."""
    site.workdir("work")
    settings = {"state_dir": "state", "runtime_dir": "run", "key_file": "vigil.key", **daemon}
    lines = ["[daemon]", *(f"{k} = {json.dumps(v)}" for k, v in settings.items()), ""]
    lines += ["[[heartbeat]]", f'name = "{name}"', 'every = "1h"', 'cwd = "work"']
    lines += [f"prompt = {json.dumps(prompt)}", extra]
    site.config_path.write_text("\n".join(lines) + "\n")


def run_beats(site: Site, daemon: Daemon, name: str, beats: int, *, first: bool = True) -> None:
    """``beats`` turns back to back: (``first``) the one after the first start, then one
    ``vigil beat`` (over the control socket) as soon as the previous turn ended."""
    socket = site.runtime_dir / SOCKET_NAME
    if first:
        daemon.wait_event("turn_completed", 60, job=name)
    for _ in range(beats - 1 if first else beats):
        mark = daemon.count()
        answer = call(socket, {"op": "beat", "job": name})
        assert answer.get("ok"), answer
        daemon.wait_for(
            lambda x: x.get("job") == name and x.get("event") in ("turn_completed", "turn_failed"),
            60,
            start=mark,
            what=f"the end of a beat of {name}",
        )
