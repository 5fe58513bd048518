"""Compaction on the record and tokens per turn: the SDK's messages become journal
events, and history, tail, sessions and the mirror show them (issue 14)."""

from __future__ import annotations

import math

import pytest
from claude_agent_sdk import AssistantMessage, SystemMessage, TextBlock, UserMessage

from daemon import events as ev
from daemon.agent.sdk import context_tokens_of, translate
from daemon.config.model import HeartbeatConfig
from daemon.events import Event
from daemon.events.heal import fold
from daemon.journal.conversation import ConversationState
from daemon.mirror.db import Mirror
from daemon.ops.history import render_history, tokens_short
from jobs.context import MAX_CONTEXT_LIMIT, MIN_CONTEXT_LIMIT, compaction_env, limit_problem

AT = "2026-11-21T13:00:00.000Z"
BOUNDARY = SystemMessage(
    subtype="compact_boundary",
    data={
        "type": "system",
        "subtype": "compact_boundary",
        "uuid": "5b3569fc-0000",
        "session_id": "065fe1c2-0000",
        "compact_metadata": {
            "trigger": "auto",
            "pre_tokens": 182_340,
            "post_tokens": 9_120,
            "cumulative_dropped_tokens": 173_220,
            "duration_ms": 23,
            "preserved_segment": {"head_uuid": "a3", "anchor_uuid": "s", "tail_uuid": "p4"},
            "preserved_messages": {"anchor_uuid": "s", "uuids": ["a3", "p4"]},
        },
    },
)


def test_a_compact_boundary_becomes_a_compacted_event() -> None:
    (event,) = translate(BOUNDARY, 7)
    assert {k: v for k, v in event.items() if k != "at"} == {
        "ev": 1,
        "type": "compacted",
        "turn": 7,
        "trigger": "auto",
        "pre_tokens": 182_340,
        "post_tokens": 9_120,
        "preserved": 2,
        "boundary_uuid": "5b3569fc-0000",
        "dropped_tokens": 173_220,
        "duration_ms": 23,
    }


def test_the_summary_the_cli_sends_after_a_boundary_is_not_journaled() -> None:
    summary = UserMessage(
        content=[TextBlock("This session is being continued ... Summary: ...")], uuid="s"
    )
    assert translate(summary, 7) == []
    assert translate(SystemMessage(subtype="status", data={"status": "compacting"}), 7) == []


def test_context_tokens_are_the_last_requests_input_and_cache() -> None:
    usage = {
        "input_tokens": 900,
        "cache_read_input_tokens": 40_000,
        "cache_creation_input_tokens": 2_000,
        "output_tokens": 1,
    }
    top = AssistantMessage(content=[TextBlock("hi")], model="m", usage=usage)
    sub = AssistantMessage(content=[], model="m", usage=usage, parent_tool_use_id="toolu_1")
    assert context_tokens_of(top) == 42_900
    assert context_tokens_of(sub) is None  # a subagent's own context
    assert context_tokens_of(AssistantMessage(content=[], model="m")) is None


def compacting_turn(turn: int, *, pre: int, post: int, context: int) -> list[Event]:
    return [
        ev.turn_started(turn, f"beat {turn}", job="j", trigger="schedule", at=AT),
        ev.compacted(
            turn,
            trigger="auto",
            pre_tokens=pre,
            post_tokens=post,
            preserved=2,
            boundary_uuid=f"b{turn}",
            at=AT,
        ),
        ev.assistant(turn, "ok", uuid=f"a{turn}", model="m", at=AT),
        ev.result(
            turn,
            session_id="s",
            is_error=False,
            subtype="success",
            text="ok",
            session_cost_usd=0.1 * turn,
            duration_ms=5,
            num_turns=2,
            context_tokens=context,
            usage={
                "input_tokens": 900,
                "output_tokens": 12,
                "cache_read_input_tokens": 20_000,
                "cache_creation_input_tokens": 1_500,
            },
            at=AT,
        ),
        ev.turn_completed(turn, at=AT),
    ]


def test_history_marks_the_compacted_turn_and_shows_tokens_per_turn() -> None:
    events = compacting_turn(1, pre=182_340, post=9_120, context=22_400)
    view = fold(events)
    text = render_history("inbox", view.turns)
    assert "compacted 182k → 9.12k tokens (auto, 2 messages kept verbatim)" in text
    assert "tokens: input 900, output 12, cache_read 20k, cache_write 1.5k" in text
    assert "context after 22.4k" in text
    data = view.turns[0].as_json()
    assert data["compactions"] == [
        {"trigger": "auto", "pre_tokens": 182_340, "post_tokens": 9_120, "preserved": 2, "at": AT}
    ]
    assert data["tokens"] == {
        "input": 900,
        "output": 12,
        "cache_read": 20_000,
        "cache_write": 1_500,
    }
    assert data["context_tokens"] == 22_400


def test_the_daemon_state_and_the_mirror_count_compactions_and_keep_the_context() -> None:
    events = [
        ev.session_bound("s", "/srv", mode="new", at=AT),
        *compacting_turn(1, pre=100_000, post=2_000, context=22_000),
        *compacting_turn(2, pre=104_000, post=2_100, context=23_000),
    ]
    state = ConversationState()
    for event in events:
        state.feed(event)
    assert (state.compactions, state.context_tokens) == (2, 23_000)
    mirror = Mirror.open(":memory:")
    for seq, event in enumerate(events, start=1):
        mirror.apply("inbox", seq, event)
    mirror.flush()
    (summary,) = mirror.conversations()
    assert (summary.compactions, summary.context_tokens) == (2, 23_000)
    row = mirror.db.execute(
        "SELECT compactions, compacted_pre_tokens, compacted_post_tokens, context_tokens "
        "FROM turns WHERE turn = 2"
    ).fetchone()
    assert tuple(row) == (1, 104_000, 2_100, 23_000)


def test_tokens_read_short() -> None:
    assert [tokens_short(n) for n in (None, 12, 9_400, 182_000, 1_250_000)] == [
        "?",
        "12",
        "9.4k",
        "182k",
        "1.25M",
    ]


def cli_threshold(env: dict[str, str], window: int = 1_000_000, max_output: int = 128_000) -> int:
    """The bundled CLI's auto-compact threshold for an environment (its minified ``wS``,
    ``ene``, ``wY``, ``twt``, transcribed in issue 14's findings)."""
    w = int(env.get("CLAUDE_CODE_AUTO_COMPACT_WINDOW", window))
    effective = min(max(w, 100_000), window) - min(max_output, 20_000)
    pct = env.get("CLAUDE_AUTOCOMPACT_PCT_OVERRIDE")
    if pct is not None and 0 < float(pct) <= 100:
        return min(math.floor(effective * float(pct) / 100), effective - 13_000)
    return effective - 13_000


@pytest.mark.parametrize(
    "limit",
    [
        MIN_CONTEXT_LIMIT,
        20_001,
        30_000,
        49_999,
        66_999,
        67_000,
        100_000,
        500_001,
        MAX_CONTEXT_LIMIT,
    ],
)
def test_the_cli_compacts_exactly_at_the_context_limit(limit: int) -> None:
    assert cli_threshold(compaction_env(limit)) == limit
    assert cli_threshold(compaction_env(limit), window=1_000_000, max_output=64_000) == limit


def test_limits_the_cli_cannot_honour_are_refused_with_the_reason() -> None:
    assert limit_problem(MIN_CONTEXT_LIMIT) is None
    assert "compacted at every beat" in str(limit_problem(MIN_CONTEXT_LIMIT - 1))
    assert "1M tokens" in str(limit_problem(MAX_CONTEXT_LIMIT + 1))
    with pytest.raises(ValueError, match="context_limit is a number of tokens, 20000 to 967000"):
        HeartbeatConfig.model_validate(
            {"name": "j", "every": "1m", "prompt": "p", "cwd": "/tmp", "context_limit": 5000}
        )
