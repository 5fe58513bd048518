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
from typing import Any

import pytest

from daemon.testing.devmodel import (
    DevModelServer,
    Request,
    estimate_input_tokens,
    is_summary_request,
    synthetic_tokens,
)

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
