"""Fixtures for the end-to-end tests: a loopback model, a vigil site, daemon processes.

Everything runs for real through the shipped harness (:mod:`daemon.testing.harness`):
``python -m daemon.cli.main run`` as a subprocess, the SDK and its bundled CLI inside
it, and the loopback model on 127.0.0.1. Tests read what an operator reads: the
daemon's JSON log lines on stdout, its exit code, ``vigil history --json``, and the
journal itself (decrypted with the key). Every process a test starts is ended by PID
in the fixture's teardown, and so are CLI processes a SIGKILLed daemon left orphaned.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from daemon.testing.harness import LoopbackModel, Site
from daemon.testing.prompts import preview

REPLY = re.compile(r'^seen (\d+) user turns; first: "(.*)"; last: "(.*)"$')


@dataclass(frozen=True)
class Seen:
    """The loopback model's reply: how many user turns it was sent, first and last."""

    n: int
    first: str
    last: str


def parse_reply(text: str) -> Seen:
    match = REPLY.match(text)
    assert match, f"not a dev-model echo reply: {text!r}"
    return Seen(int(match.group(1)), match.group(2), match.group(3))


def shown(prompt: str) -> str:
    """How the model quotes a prompt in its reply."""
    return preview(prompt)


@pytest.fixture
def dev_model() -> Iterator[LoopbackModel]:
    model = LoopbackModel()
    try:
        yield model
    finally:
        model.stop()


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short temporary directory (AF_UNIX socket paths must stay under 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="vigil-e2e-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def site(tmp_path: Path, dev_model: LoopbackModel) -> Iterator[Site]:
    made = Site(tmp_path, dev_model, api_key="e2e-dev-model-key")
    try:
        yield made
    finally:
        made.close()
