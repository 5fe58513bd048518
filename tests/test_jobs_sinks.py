"""One behaviour suite for every sink: stdout, file, command, webhook, memory."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from daemon.testing.fakes import MemorySink
from jobs.sinks import (
    CommandSink,
    FileSink,
    Reply,
    Sink,
    SinkError,
    StdoutSink,
    WebhookSink,
)
from jobs.urls import redact_url

REPLIES = [
    Reply(
        "inbox", 3, "Two urgent mails:\n- outage\n- invoice ✓", "2026-05-04T10:00:00.000Z", "s-1"
    ),
    Reply("inbox", 4, 'quotes " and \\ and ünïcode', "2026-05-04T10:30:00.000Z", None),
]


# ---------------------------------------------------------------- a local webhook server


@dataclass
class Hook:
    """A 127.0.0.1 HTTP server: answers ``statuses`` in turn (then 200), after ``delay``."""

    statuses: list[int] = field(default_factory=list)
    delay: float = 0.0
    bodies: list[dict[str, object]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    url: str = ""


@pytest.fixture
def hook() -> Iterator[Hook]:
    state = Hook()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length))
            time.sleep(state.delay)
            status = state.statuses.pop(0) if state.statuses else 200
            if status == 200:
                state.bodies.append(body)
                state.headers.append(dict(self.headers))
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


# ---------------------------------------------------------------- one fixture per sink


@dataclass
class Subject:
    sink: Sink
    received: Callable[[], list[dict[str, object]]]


def _reply_dict(reply: Reply) -> dict[str, object]:
    return reply.as_json()


def make_subject(kind: str, tmp_path: Path, hook: Hook) -> Subject:
    if kind == "memory":
        memory = MemorySink()
        return Subject(memory, lambda: [r.as_json() for r in memory.received])
    if kind == "stdout":
        shown: list[Reply] = []
        return Subject(StdoutSink(emit=shown.append), lambda: [r.as_json() for r in shown])
    if kind == "file":
        path = tmp_path / "replies.jsonl"

        def read_file() -> list[dict[str, object]]:
            lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
            return [json.loads(line) for line in lines]

        return Subject(FileSink("file", path), read_file)
    if kind == "command":
        out = tmp_path / "got"
        out.mkdir()
        script = (
            "import json, os, sys\n"
            "text = sys.stdin.read()\n"
            "n = len(os.listdir(sys.argv[1]))\n"
            "record = {k: os.environ.get('VIGIL_' + k.upper()) for k in "
            "('job', 'turn', 'at', 'session')}\n"
            "record['text'] = text\n"
            "record['leaked'] = [k for k in os.environ if k.startswith('ANTHROPIC')]\n"
            "open(os.path.join(sys.argv[1], f'{n:03d}.json'), 'w').write(json.dumps(record))\n"
        )
        sink = CommandSink(
            "command",
            [sys.executable, "-c", script, str(out)],
            timeout=20,
            environ={**os.environ, "ANTHROPIC_API_KEY": "sk-secret"},
        )

        def read_command() -> list[dict[str, object]]:
            records = [json.loads(p.read_text()) for p in sorted(out.iterdir())]
            for r in records:
                assert r.pop("leaked") == []  # the model API key never reaches a sink
                r["turn"] = int(str(r["turn"]))
                r["session_id"] = r.pop("session") or None
            return records

        return Subject(sink, read_command)
    assert kind == "webhook"
    return Subject(WebhookSink("webhook", hook.url, timeout=10), lambda: list(hook.bodies))


ALL = ["memory", "stdout", "file", "command", "webhook"]


@pytest.mark.parametrize("kind", ALL)
def test_every_reply_arrives_once_intact_and_in_order(
    kind: str, tmp_path: Path, hook: Hook
) -> None:
    subject = make_subject(kind, tmp_path, hook)

    async def send_all() -> None:
        for reply in REPLIES:
            await subject.sink.send(reply)

    asyncio.run(send_all())
    assert subject.received() == [_reply_dict(r) for r in REPLIES]


# ---------------------------------------------------------------- failures


def failing(kind: str, tmp_path: Path, hook: Hook) -> Sink:
    if kind == "memory":
        return MemorySink(fail_first=1)
    if kind == "file":
        return FileSink("file", tmp_path / "missing-dir" / "replies.jsonl")
    if kind == "command":
        script = "import sys; sys.stderr.write('mail server said no'); sys.exit(3)"
        return CommandSink("command", [sys.executable, "-c", script], timeout=20)
    hook.statuses = [503]
    return WebhookSink("webhook", hook.url, timeout=10)


@pytest.mark.parametrize("kind", ["memory", "file", "command", "webhook"])
def test_a_failed_send_raises_sink_error_naming_the_sink_and_why(
    kind: str, tmp_path: Path, hook: Hook
) -> None:
    sink = failing(kind, tmp_path, hook)
    with pytest.raises(SinkError) as info:
        asyncio.run(sink.send(REPLIES[0]))
    assert info.value.sink == sink.name
    assert str(info.value).startswith(f"sink {sink.name}: ")
    expected = {
        "memory": "failing on purpose",
        "file": "cannot append to",
        "command": "exited with status 3",
        "webhook": "answered HTTP 503",
    }[kind]
    assert expected in info.value.reason
    # What the program printed is kept apart: it may quote the reply (see daemon.logs).
    assert info.value.output == ("mail server said no" if kind == "command" else None)


def wait_for_file(path: Path, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.read_text().strip()):
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def group_gone(pgid: int, timeout: float = 5) -> bool:
    """No live (non-zombie) process is left in process group ``pgid``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                alive.append(stat.parent.name)
        if not alive:
            return True
        time.sleep(0.05)
    return False


def test_a_command_that_does_not_finish_in_time_is_killed_with_its_children(
    tmp_path: Path,
) -> None:
    pidfile = tmp_path / "pid"
    script = f"echo $$ > {pidfile}; sleep 30 & wait"
    sink = CommandSink("slow", ["sh", "-c", script], timeout=0.5)
    started = time.monotonic()
    with pytest.raises(SinkError, match=r"did not finish within 0\.5s; killed"):
        asyncio.run(sink.send(REPLIES[0]))
    assert time.monotonic() - started < 5
    assert group_gone(int(pidfile.read_text()))  # the sleep included, not only the shell


def test_cancelling_a_command_send_kills_it(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    sink = CommandSink("slow", ["sh", "-c", f"echo $$ > {pidfile}; exec sleep 30"], timeout=60)

    async def cancel_soon() -> None:
        task = asyncio.create_task(sink.send(REPLIES[0]))
        await asyncio.to_thread(wait_for_file, pidfile)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancel_soon())
    assert group_gone(int(pidfile.read_text()))


def test_a_webhook_slower_than_its_timeout_fails(hook: Hook) -> None:
    hook.delay = 2.0
    with pytest.raises(SinkError, match="failed"):
        asyncio.run(WebhookSink("webhook", hook.url, timeout=0.3).send(REPLIES[0]))


def test_a_webhook_sends_json_with_the_configured_headers(hook: Hook) -> None:
    sink = WebhookSink("webhook", hook.url, timeout=5, headers={"Authorization": "Bearer t"})
    asyncio.run(sink.send(REPLIES[0]))
    assert hook.headers[0]["Content-Type"] == "application/json"
    assert hook.headers[0]["Authorization"] == "Bearer t"


def test_a_missing_program_is_a_sink_error() -> None:
    sink = CommandSink("nope", ["/nonexistent/notify"], timeout=5)
    with pytest.raises(SinkError, match="cannot run /nonexistent/notify"):
        asyncio.run(sink.send(REPLIES[0]))


def test_the_file_sink_creates_an_owner_only_file(tmp_path: Path) -> None:
    path = tmp_path / "replies.jsonl"
    asyncio.run(FileSink("file", path).send(REPLIES[0]))
    assert path.stat().st_mode & 0o777 == 0o600


# ---------------------------------------------------------------- secrets in webhook URLs

SECRET = "T0CANARY/B0CANARY/xoxbCANARYTOKEN"  # noqa: S105  # a canary, not a credential


@pytest.mark.parametrize("why", ["http-error", "refused", "timeout", "bad-url"])
def test_a_webhook_error_names_the_sink_and_a_redacted_url_never_the_secret(
    hook: Hook, why: str
) -> None:
    """Slack and Discord put the token in the path: every delivery error (which is
    logged, journaled, shown by history/export and kept in the mirror) carries
    ``scheme://host[:port]/…`` and the sink's name, and no piece of the path or query."""
    port = hook.url.split(":")[2].split("/")[0]
    url = f"http://127.0.0.1:{port}/services/{SECRET}?token=q{SECRET}"
    timeout = 10.0
    if why == "http-error":
        hook.statuses = [403]
    elif why == "refused":
        with socket.socket() as probe:  # a port nothing listens on
            probe.bind(("127.0.0.1", 0))
            port = str(probe.getsockname()[1])
        url = f"http://127.0.0.1:{port}/services/{SECRET}"
    elif why == "timeout":
        hook.delay, timeout = 2.0, 0.3
    else:
        url = f"http://127.0.0.1:{port}/services/{SECRET} with space\n"
    sink = WebhookSink("slack", url, timeout=timeout)
    with pytest.raises(SinkError) as info:
        asyncio.run(sink.send(REPLIES[0]))
    text = str(info.value)
    assert text.startswith("sink slack: "), text
    assert f"http://127.0.0.1:{port}/…" in text, text
    assert "CANARY" not in text and "services" not in text, text
    assert "CANARY" not in repr(sink)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://hooks.slack.com/services/T/B/X", "https://hooks.slack.com/…"),
        ("https://user:pw@example.org:8443/a?b#c", "https://example.org:8443/…"),
        ("http://[::1]:8080/x", "http://[::1]:8080/…"),
        ("http://example.org", "http://example.org"),
        ("http://example.org?token=x", "http://example.org/…"),
        ("not a url", "<url>"),
    ],
)
def test_redact_url_keeps_scheme_host_and_port_only(url: str, shown: str) -> None:
    assert redact_url(url) == shown
