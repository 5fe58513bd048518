"""The operator's side of a job, pure: failure streak, alerts, pause, queued messages,
folded from journal events; the pause gate; the prompt with queued messages."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from daemon import events
from daemon.config.load import load_config
from daemon.config.problems import ConfigError
from jobs.alerts import AlertPolicy, alert_due, alert_text, auto_pause_due
from jobs.gate import BeatPolicy, check_beat
from jobs.ledger import JobLedger
from jobs.pause import Pause
from jobs.prompt import QUEUED_HEADER, with_queued

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def at(seconds: float) -> str:
    when = T0 + timedelta(seconds=seconds)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def fed(*evs: dict[str, Any]) -> JobLedger:
    ledger = JobLedger()
    for e in evs:
        ledger.feed(e)
    return ledger


def test_the_failure_streak_counts_failed_turns_in_a_row_and_a_completed_one_ends_it() -> None:
    ledger = fed(
        events.turn_failed(1, "model_error", "HTTP 500", at=at(1)),
        events.beat_skipped(2, "paused", at=at(2)),  # a skip neither counts nor resets
        events.turn_interrupted(3, "shutdown", at=at(3)),
        events.turn_failed(4, "timeout", "too long", at=at(4)),
    )
    assert ledger.failure_streak == 2
    assert ledger.last_failure is not None
    assert (ledger.last_failure.turn, ledger.last_failure.reason) == (4, "timeout")
    ledger.feed(events.turn_completed(5, at=at(5)))
    assert (ledger.failure_streak, ledger.ended_streak) == (0, 2)
    assert ledger.last_completed_at == T0 + timedelta(seconds=5)


def test_an_alert_out_and_its_recovery_are_folded_from_the_journal() -> None:
    failing = events.alert_raised(3, "failing", failures=3, reason="model_error", detail="x")
    ledger = fed(failing)
    assert ledger.alerting is True
    ledger.feed(events.alert_raised(4, "recovered", failures=3, reason=None, detail=None))
    assert ledger.alerting is False


def test_pause_and_resume_fold_and_a_timed_pause_ends_by_itself() -> None:
    ledger = fed(events.job_paused(by="operator", until=at(60), at=at(0)))
    assert ledger.paused(T0 + timedelta(seconds=30)) is not None
    assert ledger.paused(T0 + timedelta(seconds=60)) is None  # over: nothing journaled
    ledger.feed(events.job_paused(by="auto", until=None, detail="3 failed", at=at(70)))
    pause = ledger.paused(T0 + timedelta(days=30))
    assert pause is not None and pause.by == "auto" and pause.until is None
    ledger.feed(events.job_resumed(at=at(80)))
    assert ledger.paused(T0 + timedelta(seconds=81)) is None


def test_queued_messages_wait_in_order_until_a_turn_started_names_them() -> None:
    ledger = fed(
        events.message_queued("a", "first", at=at(1)),
        events.message_queued("b", "second", at=at(2)),
    )
    assert [q.text for q in ledger.queued.values()] == ["first", "second"]
    started = {**events.turn_started(1, "p", job="j", trigger="schedule"), "queued": ["a"]}
    ledger.feed(started)
    assert list(ledger.queued) == ["b"]
    ledger.feed(events.turn_started(2, "p", job="j", trigger="send"))  # names none
    assert list(ledger.queued) == ["b"]


def test_with_queued_adds_the_messages_after_the_prompt() -> None:
    assert with_queued("Check in.", []) == "Check in."
    prompt = with_queued("Check in.\n", ["one", " two "])
    assert prompt == f"Check in.\n\n{QUEUED_HEADER}\n\none\n\ntwo"


def test_a_paused_job_skips_due_beats_but_not_manual_ones() -> None:
    policy = BeatPolicy(prompt="p", zone=UTC)
    pause = Pause(T0, T0 + timedelta(hours=1), "operator")
    skip = check_beat(policy, now=T0, spent_today=0.0, pause=pause)
    assert skip is not None and skip.reason == "paused" and "vigil resume" in skip.detail
    assert check_beat(policy, now=T0, spent_today=0.0, pause=pause, manual=True) is None
    later = T0 + timedelta(hours=1)
    assert check_beat(policy, now=later, spent_today=0.0, pause=pause) is None


@pytest.mark.parametrize(
    ("completed", "streak", "alerting", "expected"),
    [
        (False, 1, False, None),
        (False, 2, False, "failing"),
        (False, 3, True, None),  # once per run of failures
        (True, 0, True, "recovered"),
        (True, 0, False, None),
    ],
)
def test_alert_due(completed: bool, streak: int, alerting: bool, expected: str | None) -> None:
    policy = AlertPolicy(alert_after=2)
    assert alert_due(policy, completed=completed, streak=streak, alerting=alerting) == expected


def test_auto_pause_after_a_long_streak_unless_paused_already() -> None:
    policy = AlertPolicy(auto_pause_after=3)
    assert not auto_pause_due(policy, streak=2, paused=False)
    assert auto_pause_due(policy, streak=3, paused=False)
    assert not auto_pause_due(policy, streak=4, paused=True)
    assert not auto_pause_due(AlertPolicy(), streak=100, paused=False)


def test_alert_text_names_the_job_the_reason_and_the_last_error() -> None:
    text = alert_text(
        "inbox", "failing", failures=5, turn=9, reason="model_error", detail="HTTP 500\n  boom"
    )
    assert text == (
        "vigil: job 'inbox' is failing: 5 failed beats in a row, the last (turn 9) with "
        "reason model_error: HTTP 500 boom"
    )
    assert "recovered" in alert_text(
        "inbox", "recovered", failures=5, turn=10, reason=None, detail=None
    )
    long = alert_text("j", "failing", failures=1, turn=1, reason="x", detail="y" * 2000)
    assert len(long) < 700


# ---------------------------------------------------------------- config


def test_alert_keys_load_with_defaults_and_alert_sinks_are_validated_like_sinks(
    tmp_path: Path,
) -> None:
    (tmp_path / "a").mkdir()
    base = '[[heartbeat]]\nname = "j"\nevery = "1m"\nprompt = "p"\ncwd = "a"\n'
    path = tmp_path / "vigil.toml"
    path.write_text(base)
    cfg = load_config(path).job("j")
    assert (cfg.alert_after, cfg.auto_pause_after) == (5, None)
    assert [(n, s.type) for n, s in cfg.alert_sinks] == [("stdout", "stdout")]
    path.write_text(
        base + 'alert_after = 2\nauto_pause_after = 4\n[[heartbeat.alert]]\ntype = "command"\n'
        'command = ["/bin/true"]\n[[heartbeat.alert]]\ntype = "webhook"\n'
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert [str(p) for p in info.value.problems] == [
        "heartbeat[j].alert[#2].url: is required for a webhook sink"
    ]
    path.write_text(
        base + 'alert_after = 0\n[[heartbeat.alert]]\ntype = "command"\ncommand = ["/bin/true"]\n'
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "alert_after" in str(info.value.problems[0])


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("127.0.0.1:9464", "127.0.0.1:9464"),
        ("[::1]:9464", "[::1]:9464"),
        ("localhost:9", "127.0.0.1:9"),
    ],
)
def test_metrics_on_loopback(tmp_path: Path, value: str, shown: str) -> None:
    path = tmp_path / "vigil.toml"
    path.write_text(f'[daemon]\nmetrics = "{value}"\n')
    assert str(load_config(path).daemon.metrics) == shown


def test_metrics_on_a_unix_socket_resolve_against_the_config_directory(tmp_path: Path) -> None:
    path = tmp_path / "vigil.toml"
    path.write_text('[daemon]\nmetrics = "run/metrics.sock"\n')
    endpoint = load_config(path).daemon.metrics
    assert endpoint is not None and endpoint.path == tmp_path / "run/metrics.sock"


@pytest.mark.parametrize("value", ["0.0.0.0:9464", "10.1.2.3:80", "example.com:80", "9464"])
def test_metrics_off_loopback_or_malformed_is_refused_at_load(tmp_path: Path, value: str) -> None:
    path = tmp_path / "vigil.toml"
    path.write_text(f'[daemon]\nmetrics = "{value}"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "daemon.metrics" in str(info.value.problems[0])
