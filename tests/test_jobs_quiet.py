"""Quiet replies and empty prompts: what is judged "nothing to report"."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from jobs.gate import BeatPolicy, check_beat
from jobs.hours import ActiveHours
from jobs.prompt import is_empty_prompt
from jobs.quiet import QuietRule


@pytest.mark.parametrize(
    ("reply", "max_extra", "quiet"),
    [
        ("HEARTBEAT_OK", 0, True),
        ("  HEARTBEAT_OK\n", 0, True),
        ("**HEARTBEAT_OK**", 0, True),
        ("`HEARTBEAT_OK`", 0, True),
        ("HEARTBEAT_OK.", 0, False),
        ("HEARTBEAT_OK - inbox empty", 20, True),
        ("HEARTBEAT_OK - inbox empty, nothing new since yesterday", 20, False),
        ("Urgent: the disk is full. HEARTBEAT_OK", 100, False),  # must lead the reply
        ("heartbeat_ok", 0, False),
        ("", 0, False),
        (None, 0, False),
    ],
)
def test_the_quiet_token_alone_or_with_a_short_remainder(
    reply: str | None, max_extra: int, quiet: bool
) -> None:
    assert QuietRule("HEARTBEAT_OK", max_extra).is_quiet(reply) is quiet


def test_an_empty_token_turns_quiet_detection_off() -> None:
    assert QuietRule("", 100).is_quiet("HEARTBEAT_OK") is False


@pytest.mark.parametrize(
    ("text", "empty"),
    [
        ("", True),
        ("  \n\t\n", True),
        ("<!-- nothing today -->\n\n", True),
        ("# Heartbeat checklist\n\n## Inbox\n<!--\nmulti-line\ncomment\n-->\n", True),
        ("<!-- unterminated comment", True),
        ("# Checklist\n- read the inbox\n", False),
        ("<!-- note --> Check the inbox.", False),
    ],
)
def test_a_prompt_of_only_whitespace_and_comments_is_empty(text: str, empty: bool) -> None:
    assert is_empty_prompt(text) is empty


BERLIN = ZoneInfo("Europe/Berlin")


def test_the_gate_checks_empty_prompt_then_hours_then_budget() -> None:
    night = datetime(2026, 5, 4, 1, 0, tzinfo=UTC)  # 03:00 in Berlin
    day = datetime(2026, 5, 4, 10, 0, tzinfo=UTC)
    hours = ActiveHours.parse("08:00-22:00")
    everything = BeatPolicy("  ", BERLIN, hours, daily_budget_usd=1.0)
    skip = check_beat(everything, now=night, spent_today=5.0)
    assert skip is not None and skip.reason == "empty_prompt"

    policy = BeatPolicy("Check the inbox.", BERLIN, hours, daily_budget_usd=1.0)
    skip = check_beat(policy, now=night, spent_today=5.0)
    assert skip is not None and skip.reason == "outside_active_hours"
    assert skip.detail == "03:00 in Europe/Berlin is outside active_hours 08:00-22:00"

    skip = check_beat(policy, now=day, spent_today=1.0)
    assert skip is not None and skip.reason == "budget_exhausted"
    assert check_beat(policy, now=day, spent_today=0.99) is None


def test_a_manual_beat_ignores_active_hours_but_not_the_budget() -> None:
    night = datetime(2026, 5, 4, 1, 0, tzinfo=UTC)
    policy = BeatPolicy("Check.", BERLIN, ActiveHours.parse("08:00-22:00"), 1.0)
    assert check_beat(policy, now=night, spent_today=0.0, manual=True) is None
    skip = check_beat(policy, now=night, spent_today=2.0, manual=True)
    assert skip is not None and skip.reason == "budget_exhausted"
