"""Spend per day from the journal's results: per-session steps, local days, restarts."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from daemon import events
from daemon.journal.conversation import Conversation
from daemon.journal.file import FsyncPolicy
from daemon.journal.keyring import Keyring
from daemon.journal.logstore import FileEventLogStore
from jobs.budget import SpendLedger, turn_cost_steps
from jobs.gate import BeatPolicy, check_beat
from jobs.ledger import JobLedger

UTC_ZONE = UTC


def result(at: str, total: float, session: str = "s1") -> dict[str, Any]:
    return events.result(
        1,
        session_id=session,
        is_error=False,
        subtype="success",
        text="ok",
        session_cost_usd=total,
        usage=None,
        duration_ms=10,
        num_turns=1,
        at=at,
    )


STARTED = events.turn_started(1, "beat", job="inbox", trigger="schedule", at="2026-05-04T07:00:00Z")


def test_a_turn_costs_the_step_in_its_own_sessions_running_total() -> None:
    steps = turn_cost_steps(
        [
            STARTED,
            result("2026-05-04T10:00:00Z", 0.01, "s1"),
            result("2026-05-04T10:01:00Z", 0.03, "s1"),
            result("2026-05-04T10:02:00Z", 0.005, "s2"),  # a new session starts at 0
            result("2026-05-04T10:03:00Z", 0.045, "s1"),  # s1 carries on from 0.03
            events.turn_completed(1, at="2026-05-04T10:03:00Z"),
        ]
    )
    assert [round(s, 6) for s in steps] == [0.01, 0.02, 0.005, 0.015]


def test_today_is_the_jobs_local_day() -> None:
    ledger = SpendLedger()
    ledger.feed(STARTED)
    ledger.feed(result("2026-05-04T21:30:00Z", 0.10))  # 23:30 in Berlin, May 4
    ledger.feed(result("2026-05-04T22:30:00Z", 0.25))  # 00:30 in Berlin, May 5
    berlin = ZoneInfo("Europe/Berlin")
    now = datetime(2026, 5, 4, 23, 0, tzinfo=UTC)
    assert round(ledger.spent_today(now, berlin), 6) == 0.15  # only the May 5 step
    assert round(ledger.spent_today(now, UTC_ZONE), 6) == 0.25  # both on May 4 in UTC


def test_budget_exhausted_once_today_reaches_the_limit_then_a_new_day_resumes() -> None:
    ledger = JobLedger()
    ledger.feed(STARTED)
    policy = BeatPolicy(prompt="check", zone=UTC, daily_budget_usd=0.02)
    for at, total in [("2026-05-04T08:00:00Z", 0.011), ("2026-05-04T09:00:00Z", 0.022)]:
        ledger.feed(result(at, total))
    noon = datetime(2026, 5, 4, 12, 0, tzinfo=UTC)
    skip = check_beat(policy, now=noon, spent_today=ledger.spend.spent_today(noon, UTC))
    assert skip is not None and skip.reason == "budget_exhausted"
    assert "spent $0.0220 of daily_budget_usd $0.0200" in skip.detail
    tomorrow = datetime(2026, 5, 5, 0, 1, tzinfo=UTC)
    spent = ledger.spend.spent_today(tomorrow, UTC)
    assert spent == 0 and check_beat(policy, now=tomorrow, spent_today=spent) is None


def test_spend_survives_a_restart_because_it_is_read_back_from_the_journal(
    tmp_path: Path,
) -> None:
    keyring = Keyring.generate()
    conv = Conversation.open(FileEventLogStore(tmp_path, keyring, fsync=FsyncPolicy.NEVER), "inbox")
    now = datetime.now(UTC)
    stamp = now.isoformat().replace("+00:00", "Z")
    conv.record(events.turn_started(1, "beat", job="inbox", trigger="schedule", at=stamp))
    conv.record(result(stamp, 0.0107))
    conv.record(events.turn_completed(1, quiet=True, at=stamp))
    conv.close()

    ledger = JobLedger()
    reopened = Conversation.open(
        FileEventLogStore(tmp_path, keyring, fsync=FsyncPolicy.NEVER), "inbox", visit=ledger.feed
    )
    reopened.close()
    assert round(ledger.spend.spent_today(now, UTC), 6) == 0.0107
    assert ledger.quiet_streak == 1
    assert ledger.last_started_at is not None


def test_the_running_total_restarts_with_each_cli_process() -> None:
    # With a session store, a resumed CLI process reports its total from zero again:
    # the first result after a reconnect (session_bound) costs its whole total.
    session = "s-1"
    events: list[dict[str, Any]] = [
        {"type": "session_bound", "session_id": session, "at": "2026-01-01T10:00:00Z"},
        {"type": "turn_started", "turn": 1, "at": "2026-01-01T10:00:00Z"},
        {
            "type": "result",
            "turn": 1,
            "session_id": session,
            "session_cost_usd": 0.01,
            "at": "2026-01-01T10:00:01Z",
        },
        {
            "type": "result",
            "turn": 1,
            "session_id": session,
            "session_cost_usd": 0.03,
            "at": "2026-01-01T10:01:00Z",
        },
        {"type": "session_bound", "session_id": session, "at": "2026-01-01T11:00:00Z"},
        {
            "type": "result",
            "turn": 1,
            "session_id": session,
            "session_cost_usd": 0.011,
            "at": "2026-01-01T11:00:01Z",
        },
    ]
    assert turn_cost_steps(events) == pytest.approx([0.01, 0.02, 0.011])
