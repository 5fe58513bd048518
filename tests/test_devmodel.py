"""The loopback model: wire format, directives, fault control, stats, loopback only.

Most tests talk plain HTTP to ``python -m daemon.testing.devmodel --port 0`` started as a
subprocess (the way other suites will use it); a few drive ``DevModelServer`` in
process; one runs the real SDK and bundled CLI against it.
"""

from __future__ import annotations

import asyncio
import http.client
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from claude_agent_sdk import (
    AssistantMessage,
    ClaudeAgentOptions,
    ClaudeSDKClient,
    ResultMessage,
    StreamEvent,
    TextBlock,
)

from daemon.testing.devmodel import DevModelServer, NotLoopbackError, check_loopback, run_forever

ROOT = Path(__file__).resolve().parent.parent
Json = dict[str, Any]


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "daemon.testing.devmodel", "--port", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    prefix = "dev-model listening on "
    assert line.startswith(prefix + "http://127.0.0.1:"), line
    yield line.removeprefix(prefix)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0


@pytest.fixture
def url(server_url: str) -> str:
    status, body = call(server_url, "/_control", {"reset": True})
    assert status == 200, body
    return server_url


def send(base: str, path: str, payload: Json | None, timeout: float) -> http.client.HTTPResponse:
    """POST ``payload`` (GET without one) straight to the loopback port, no proxy."""
    where = urlsplit(base)
    assert where.hostname == "127.0.0.1"
    conn = http.client.HTTPConnection(where.hostname, where.port, timeout=timeout)
    body = None if payload is None else json.dumps(payload).encode()
    headers = {"content-type": "application/json"}
    conn.request("GET" if payload is None else "POST", path, body=body, headers=headers)
    return conn.getresponse()


def call(base: str, path: str, payload: Json | None = None) -> tuple[int, Json]:
    """The status and the JSON body of one request."""
    with send(base, path, payload, timeout=10) as resp:
        return resp.status, json.loads(resp.read())


def open_stream(base: str, messages: list[Json]) -> http.client.HTTPResponse:
    body = {"model": "claude-test", "max_tokens": 100, "stream": True, "messages": messages}
    resp = send(base, "/v1/messages?beta=true", body, timeout=20)
    assert resp.status == 200
    return resp


def read_events(resp: http.client.HTTPResponse) -> Iterator[tuple[float, Json]]:
    """Each server-sent event as it arrives, with its arrival time."""
    name = ""
    for raw in resp:
        line = raw.decode().rstrip("\n")
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            event = json.loads(line.removeprefix("data: "))
            assert event["type"] == name
            yield time.monotonic(), event


def parse_sse(data: bytes) -> list[Json]:
    return [
        json.loads(line.removeprefix("data: "))
        for line in data.decode().splitlines()
        if line.startswith("data: ")
    ]


def stream(base: str, messages: list[Json]) -> list[Json]:
    with open_stream(base, messages) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        return [event for _, event in read_events(resp)]


def text_of(events: list[Json]) -> str:
    return "".join(
        e["delta"]["text"]
        for e in events
        if e["type"] == "content_block_delta" and e["delta"]["type"] == "text_delta"
    )


def user(*texts: str) -> Json:
    return {"role": "user", "content": [{"type": "text", "text": t} for t in texts]}


def create(base: str, messages: list[Json]) -> tuple[int, Json]:
    body = {"model": "claude-test", "max_tokens": 100, "messages": messages}
    return call(base, "/v1/messages", body)


REMINDER = "<system-reminder>\nAttribution for git commits...\n</system-reminder>"


# ---------------------------------------------------------------- wire format


def test_streamed_reply_has_the_api_event_sequence_and_word_sized_deltas(url: str) -> None:
    events = stream(url, [user("hello there, model")])
    types = [e["type"] for e in events]
    deltas = types.count("content_block_delta")
    assert deltas >= 5
    assert types == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * deltas,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert text_of(events) == (
        'seen 1 user turns; first: "hello there, model"; last: "hello there, model"'
    )
    start = events[0]["message"]
    assert start["role"] == "assistant"
    assert start["model"] == "claude-test"
    assert start["usage"]["input_tokens"] > 0
    final = events[-2]
    assert final["delta"]["stop_reason"] == "end_turn"
    assert final["usage"]["output_tokens"] == len(text_of(events).split())


def test_input_tokens_grow_with_the_prompt(url: str) -> None:
    short = stream(url, [user("x")])[0]["message"]["usage"]["input_tokens"]
    long = stream(url, [user("x" * 4000)])[0]["message"]["usage"]["input_tokens"]
    assert 900 < long - short < 1100


def test_usage_directive_adds_its_tokens_for_every_user_turn_still_sent(url: str) -> None:
    def tokens(messages: list[Json]) -> int:
        return int(stream(url, messages)[0]["message"]["usage"]["input_tokens"])

    plain = tokens([user("a"), {"role": "assistant", "content": "ok"}, user("b")])
    one = tokens([user("a [usage:300000]"), {"role": "assistant", "content": "ok"}, user("b")])
    two = tokens(
        [user("a [usage:300000]"), {"role": "assistant", "content": "ok"}, user("b [usage:300000]")]
    )
    assert 300000 <= one - plain < 300010
    assert 600000 <= two - plain < 600020


def test_summary_request_gets_a_directive_free_summary_that_counts_through_earlier_ones(
    url: str,
) -> None:
    instructions = (
        "CRITICAL: ... Your task is to create a detailed summary of the conversation so far"
    )
    first = [user("beat 1 [usage:20000]"), {"role": "assistant", "content": "ok"}]
    first += [user("beat 2 [usage:20000]"), {"role": "assistant", "content": "ok"}]
    summary = text_of(stream(url, [*first, user(instructions)]))
    assert (
        summary
        == '<summary>dev-model summary of 2 user turns; first: "beat 1"; last: "beat 2"</summary>'
    )
    continued = "This session is being continued...\nSummary:\n" + summary[9:-10]
    second = [user(continued), {"role": "assistant", "content": "ok"}, user("beat 3 [usage:20000]")]
    second += [{"role": "assistant", "content": "ok"}, user(instructions)]
    assert text_of(stream(url, second)) == (
        '<summary>dev-model summary of 3 user turns; first: "beat 1"; last: "beat 3"</summary>'
    )


def test_non_streaming_request_gets_one_json_message(url: str) -> None:
    status, body = create(url, [user("plain please")])
    assert status == 200
    assert body["type"] == "message"
    assert body["stop_reason"] == "end_turn"
    assert body["content"] == [
        {"type": "text", "text": 'seen 1 user turns; first: "plain please"; last: "plain please"'}
    ]
    assert body["usage"]["output_tokens"] > 0


def test_counts_only_real_user_text_as_shaped_by_the_cli(url: str) -> None:
    long_first = "first   prompt\nspans lines and is longer than sixty characters, by a lot"
    messages = [
        user(REMINDER, long_first),
        {"role": "system", "content": "# Environment\n - Primary working directory: /x"},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "t1", "name": "Bash", "input": {}}],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "t1", "content": "ok"},
                {"type": "text", "text": "<system-reminder>tool output noted</system-reminder>"},
            ],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "partial"}]},
        user("[Request interrupted by user]\n"),
        {"role": "user", "content": "second prompt as a plain string"},
        {"role": "assistant", "content": "fine"},
        user("third"),
    ]
    assert text_of(stream(url, messages)) == (
        'seen 3 user turns; first: "first prompt spans lines and is longer than sixty '
        'characters"; last: "third"'
    )


def test_count_tokens_answers_and_unknown_paths_get_the_api_404_body(url: str) -> None:
    status, body = call(url, "/v1/messages/count_tokens", {"messages": [user("hi")]})
    assert status == 200
    assert body["input_tokens"] > 0
    status, body = call(url, "/v1/models")
    assert status == 404
    assert body["type"] == "error"
    assert body["error"]["type"] == "not_found_error"


def test_malformed_message_request_is_a_400_with_the_api_error_body(url: str) -> None:
    status, body = call(url, "/v1/messages", {"model": "m"})
    assert status == 400
    assert body["error"]["type"] == "invalid_request_error"


# ---------------------------------------------------------------- directives


def test_reply_directive_replies_exactly(url: str) -> None:
    assert text_of(stream(url, [user("beat [reply:HEARTBEAT_OK]")])) == "HEARTBEAT_OK"
    _, body = create(url, [user("[reply:all quiet here]")])
    assert body["content"][0]["text"] == "all quiet here"


def test_slow_directive_spaces_the_deltas(url: str) -> None:
    with open_stream(url, [user("[reply:one two three four] [slow:150]")]) as resp:
        times = [t for t, e in read_events(resp) if e["type"] == "content_block_delta"]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(gaps) == 3
    assert min(gaps) >= 0.12


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (500, "api_error"),
        (529, "overloaded_error"),
        (401, "authentication_error"),
        (400, "invalid_request_error"),
    ],
)
def test_fail_directive_answers_the_status_with_the_api_error_body(
    url: str, code: int, kind: str
) -> None:
    status, body = create(url, [user(f"hello [fail:{code}]")])
    assert status == code
    assert body["type"] == "error"
    assert body["error"]["type"] == kind
    _, stats = call(url, "/_stats")
    assert stats["failed"] == 1
    assert stats["by_status"][str(code)] == 1


def test_directives_come_from_the_newest_text_block_only(url: str) -> None:
    # After a failed turn the CLI merges the unanswered prompt and the next one.
    merged = [user(REMINDER, "[fail:500] hi\n", "second try")]
    assert text_of(stream(url, merged)) == (
        'seen 1 user turns; first: "[fail:500] hi second try"; last: "[fail:500] hi second try"'
    )


def test_cut_drops_the_stream_after_a_couple_of_deltas(url: str) -> None:
    with (
        open_stream(url, [user("[cut] a b c d e")]) as resp,
        pytest.raises(http.client.IncompleteRead) as cut,
    ):
        resp.read()
    assert [e["type"] for e in parse_sse(cut.value.partial)] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
    ]
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
        create(url, [user("[cut] the fallback")])
    _, stats = call(url, "/_stats")
    assert stats["cut"] == 2


def test_stall_goes_silent_after_a_couple_of_deltas_then_finishes(url: str) -> None:
    with open_stream(url, [user("[stall:1.2] a b c d e")]) as resp:
        arrivals = [(t, e) for t, e in read_events(resp)]
    deltas = [t for t, e in arrivals if e["type"] == "content_block_delta"]
    assert deltas[1] - deltas[0] < 0.5
    assert deltas[2] - deltas[1] >= 1.1
    assert arrivals[-1][1]["type"] == "message_stop"


def test_tool_directive_calls_bash_then_answers_the_tool_result_with_text(url: str) -> None:
    prompt = user("[tool:echo hi > out.txt] [reply:done]")
    events = stream(url, [prompt])
    block = events[1]["content_block"]
    assert block["type"] == "tool_use"
    assert block["name"] == "Bash"
    partial = "".join(
        e["delta"]["partial_json"] for e in events if e["type"] == "content_block_delta"
    )
    assert json.loads(partial)["command"] == "echo hi > out.txt"
    assert events[-2]["delta"]["stop_reason"] == "tool_use"

    follow_up = [
        prompt,
        {"role": "assistant", "content": [{**block, "input": json.loads(partial)}]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": block["id"], "content": ""}],
        },
    ]
    events = stream(url, follow_up)
    assert events[1]["content_block"]["type"] == "text"
    assert text_of(events) == "done"
    assert events[-2]["delta"]["stop_reason"] == "end_turn"


# ---------------------------------------------------------------- control and stats


def test_control_fail_next_fails_that_many_calls_then_recovers(url: str) -> None:
    status, body = call(url, "/_control", {"fail_next": 2, "status": 529})
    assert (status, body["control"]["fail_next"]) == (200, 2)
    assert [create(url, [user("hi")])[0] for _ in range(3)] == [529, 529, 200]
    _, stats = call(url, "/_stats")
    assert stats["message_requests"] == 3
    assert stats["failed"] == 2
    assert stats["by_status"]["529"] == 2


def test_control_slow_ms_slows_every_stream_until_reset(url: str) -> None:
    call(url, "/_control", {"slow_ms": 120})
    began = time.monotonic()
    stream(url, [user("[reply:a b c d]")])
    assert time.monotonic() - began >= 0.3
    call(url, "/_control", {"reset": True})
    began = time.monotonic()
    stream(url, [user("[reply:a b c d]")])
    assert time.monotonic() - began < 0.3


def test_control_rejects_unknown_keys_and_bad_values(url: str) -> None:
    assert call(url, "/_control", {"fail_nxt": 1})[0] == 400
    assert call(url, "/_control", {"fail_next": "3"})[0] == 400
    assert create(url, [user("hi")])[0] == 200


def test_stats_count_calls_and_keep_the_last_twenty_prompts(url: str) -> None:
    for n in range(23):
        create(url, [user("earlier"), {"role": "assistant", "content": "ok"}, user(f"prompt {n}")])
    stream(url, [user("streamed one")])
    _, stats = call(url, "/_stats")
    assert stats["message_requests"] == 24
    assert stats["streamed"] == 1
    assert stats["failed"] == 0
    assert stats["requests"] == 26  # the reset, 24 model calls, this request
    assert stats["last_prompts"] == [f"prompt {n}" for n in range(4, 23)] + ["streamed one"]


def test_reset_clears_statistics(url: str) -> None:
    create(url, [user("hi")])
    call(url, "/_control", {"reset": True})
    _, stats = call(url, "/_stats")
    assert (stats["message_requests"], stats["last_prompts"]) == (0, [])


# ---------------------------------------------------------------- loopback only


NOT_LOOPBACK = ["0.0.0.0", "10.1.2.3", "::", "localhost", "example.com"]  # noqa: S104 - all refused


@pytest.mark.parametrize("host", NOT_LOOPBACK)
def test_refuses_to_listen_anywhere_but_loopback(host: str) -> None:
    with pytest.raises(ValueError, match="loopback"):
        DevModelServer(host, 0)
    with pytest.raises(NotLoopbackError):
        run_forever(host, 0)


def test_loopback_addresses_are_accepted() -> None:
    for host in ("127.0.0.1", "127.0.0.2", "::1"):
        check_loopback(host)


def test_command_line_refuses_a_public_host_with_a_clear_error() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "daemon.testing.devmodel", "--host", NOT_LOOPBACK[0], "--port", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert "only loopback" in done.stderr


# ---------------------------------------------------------------- in process


def test_in_process_server_counts_calls_and_stops_with_a_stalled_stream_open() -> None:
    async def scenario() -> None:
        async with DevModelServer(port=0) as srv:
            assert srv.base_url == f"http://127.0.0.1:{srv.port}"
            events = await asyncio.to_thread(stream, srv.base_url, [user("in process")])
            assert text_of(events).startswith("seen 1 user turns")
            assert (srv.stats.message_requests, srv.stats.streamed) == (1, 1)
            first_delta = threading.Event()
            seen: list[str] = []

            def read_stalled() -> None:
                with open_stream(srv.base_url, [user("[stall:30] a b c")]) as resp:
                    for _, event in read_events(resp):
                        seen.append(event["type"])
                        first_delta.set()

            stalled = asyncio.create_task(asyncio.to_thread(read_stalled))
            assert await asyncio.to_thread(first_delta.wait, 10)
            began = time.monotonic()
        assert time.monotonic() - began < 2
        await asyncio.wait_for(stalled, 5)  # the reader saw the connection end
        assert "content_block_delta" in seen
        assert "message_stop" not in seen

    asyncio.run(scenario())


# ---------------------------------------------------------------- end to end


@pytest.mark.e2e
@pytest.mark.timeout(60)
def test_real_cli_streams_a_reply_and_a_resumed_session_remembers(tmp_path: Path) -> None:
    for name in ("config", "home", "tmp", "work"):
        (tmp_path / name).mkdir()

    def options(
        srv: DevModelServer, *, session_id: str | None = None, resume: str | None = None
    ) -> ClaudeAgentOptions:
        env = {
            "ANTHROPIC_BASE_URL": srv.base_url,
            "ANTHROPIC_API_KEY": "dev-model-key",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "CLAUDE_CODE_MAX_RETRIES": "1",
            "CLAUDE_CONFIG_DIR": str(tmp_path / "config"),
            "HOME": str(tmp_path / "home"),
            "TMPDIR": str(tmp_path / "tmp"),
            "NO_PROXY": "127.0.0.1",
        }
        return ClaudeAgentOptions(
            env=env,
            cwd=tmp_path / "work",
            setting_sources=[],
            include_partial_messages=True,
            session_id=session_id,
            resume=resume,
        )

    async def one_turn(client: ClaudeSDKClient, prompt: str) -> tuple[str, str, ResultMessage]:
        await client.query(prompt)
        streamed, final = "", ""
        async for message in client.receive_response():
            if isinstance(message, StreamEvent) and message.event["type"] == "content_block_delta":
                streamed += message.event["delta"].get("text", "")
            elif isinstance(message, AssistantMessage):
                final += "".join(b.text for b in message.content if isinstance(b, TextBlock))
            elif isinstance(message, ResultMessage):
                return streamed, final, message
        raise AssertionError("the turn ended without a ResultMessage")

    async def scenario() -> None:
        session = str(uuid.uuid4())
        async with DevModelServer(port=0) as srv:
            async with ClaudeSDKClient(options(srv, session_id=session)) as first:
                streamed, final, result = await one_turn(first, "remember the word apricot")
            expected = (
                'seen 1 user turns; first: "remember the word apricot"; '
                'last: "remember the word apricot"'
            )
            assert (streamed, final) == (expected, expected)
            assert (result.is_error, result.session_id) == (False, session)
            assert result.total_cost_usd is not None and result.total_cost_usd > 0

            async with ClaudeSDKClient(options(srv, resume=session)) as second:
                _, final, result = await one_turn(second, "what was the word?")
            assert final == (
                'seen 2 user turns; first: "remember the word apricot"; last: "what was the word?"'
            )
            assert (result.is_error, result.session_id) == (False, session)
            assert srv.stats.streamed == 2
            assert srv.stats.last_prompts == ["remember the word apricot", "what was the word?"]

    began = time.monotonic()
    asyncio.run(scenario())
    assert time.monotonic() - began < 15
    assert os.listdir(tmp_path / "config" / "projects")
