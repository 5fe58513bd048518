"""Heartbeat semantics in the config: new keys load typed, bad ones name the key; reloads."""

from __future__ import annotations

import textwrap
from datetime import timedelta
from pathlib import Path

import pytest

from daemon.config.load import load_config
from daemon.config.model import Config
from daemon.config.problems import ConfigError
from daemon.runtime.job import agent_spec, schedule_key
from daemon.runtime.reload import daemon_changes, diff_jobs, reload_problems


@pytest.fixture
def agent_dir(tmp_path: Path) -> Path:
    path = tmp_path / "agent"
    path.mkdir()
    return path


def load(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "vigil.toml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return load_config(path)


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    return [str(p) for p in info.value.problems]


def job(agent_dir: Path, extra: str = "", *, name: str = "inbox", every: str = "30m") -> str:
    return (
        f'[[heartbeat]]\nname = "{name}"\nevery = "{every}"\nprompt = "Check the inbox."\n'
        f'cwd = "{agent_dir}"\n{textwrap.dedent(extra)}\n'
    )


def test_defaults_stdout_sink_quiet_token_catch_up_once(tmp_path: Path, agent_dir: Path) -> None:
    cfg = load(tmp_path, job(agent_dir)).job("inbox")
    assert cfg.catch_up == "once"
    assert (cfg.quiet_rule.token, cfg.quiet_rule.max_extra) == ("HEARTBEAT_OK", 0)
    assert cfg.hours is None and cfg.daily_budget_usd is None and cfg.max_budget_usd is None
    assert [(name, sink.type) for name, sink in cfg.sinks] == [("stdout", "stdout")]
    assert cfg.idle_backoff is None and cfg.backoff_max == timedelta(hours=4)


def test_every_new_key_loads_typed(tmp_path: Path, agent_dir: Path) -> None:
    text = job(
        agent_dir,
        f"""
        active_hours = "8:00-22:00"
        timezone = "Europe/Berlin"
        catch_up = "skip"
        quiet_token = "NOTHING_NEW"
        quiet_max_extra = 30
        max_budget_usd = 0.5
        daily_budget_usd = 3
        idle_backoff = 2
        idle_backoff_max = "2h"

        [[heartbeat.sink]]
        type = "file"
        path = "replies.jsonl"

        [[heartbeat.sink]]
        type = "command"
        command = ["notify", "--to", "ops"]
        timeout = "3s"
        retries = 0

        [[heartbeat.sink]]
        type = "webhook"
        name = "chat"
        url = "http://127.0.0.1:8080/hook"
        headers = {{ Authorization = "Bearer x" }}
        retry_delay = "1s"

        [[heartbeat.sink]]
        type = "file"
        path = "{tmp_path}/second.jsonl"
        """,
    )
    cfg = load(tmp_path, text).job("inbox")
    assert cfg.active_hours == "08:00-22:00" and cfg.timezone == "Europe/Berlin"
    assert cfg.catch_up == "skip"
    assert cfg.quiet_rule.is_quiet("NOTHING_NEW (inbox empty)")
    assert (cfg.max_budget_usd, cfg.daily_budget_usd) == (0.5, 3.0)
    assert (cfg.idle_backoff, cfg.backoff_max) == (2, timedelta(hours=2))
    names = [(name, sink.type) for name, sink in cfg.sinks]
    assert names == [
        ("file", "file"),
        ("command", "command"),
        ("chat", "webhook"),
        ("file-2", "file"),
    ]
    file_sink = cfg.sinks[0][1]
    assert file_sink.path == tmp_path / "replies.jsonl"  # relative to the config file
    command = cfg.sinks[1][1]
    assert command.command == ["notify", "--to", "ops"]
    assert (command.timeout, command.retries) == (timedelta(seconds=3), 0)
    assert cfg.sinks[2][1].headers == {"Authorization": "Bearer x"}


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ('active_hours = "8-22"', "heartbeat[inbox].active_hours: bad active_hours '8-22'"),
        ('catch_up = "all"', 'heartbeat[inbox].catch_up: expected one of "skip", "once"'),
        ("daily_budget_usd = 0", "heartbeat[inbox].daily_budget_usd: must be more than 0"),
        ('max_budget_usd = "1"', "heartbeat[inbox].max_budget_usd: expected a number"),
        ("quiet_max_extra = -1", "heartbeat[inbox].quiet_max_extra: must be at least 0"),
        ("idle_backoff = 0", "heartbeat[inbox].idle_backoff: must be at least 1"),
        ('idle_backoff_max = "1h"', "heartbeat[inbox].idle_backoff_max: needs idle_backoff"),
        (
            'idle_backoff = 2\nidle_backoff_max = "10m"',
            "heartbeat[inbox].idle_backoff_max: 10m is shorter than every (30m)",
        ),
        (
            '[[heartbeat.sink]]\ntype = "file"',
            "heartbeat[inbox].sink[#1].path: is required for a file sink",
        ),
        (
            '[[heartbeat.sink]]\ntype = "stdout"\nurl = "http://127.0.0.1/"',
            "heartbeat[inbox].sink[#1].url: does not apply to a stdout sink",
        ),
        (
            '[[heartbeat.sink]]\ntype = "webhook"\nurl = "ftp://example.com/x"',
            "heartbeat[inbox].sink[#1].url: bad url ftp://example.com/…: expected",
        ),
        (
            '[[heartbeat.sink]]\ntype = "command"\ncommand = []',
            "heartbeat[inbox].sink[#1].command: is an empty array",
        ),
        (
            '[[heartbeat.sink]]\ntype = "smtp"',
            'heartbeat[inbox].sink[#1].type: expected one of "stdout", "file", "command", '
            '"webhook"',
        ),
        (
            '[[heartbeat.sink]]\ntype = "file"\npth = "x"',
            "heartbeat[inbox].sink[#1].pth: unknown key 'pth'; did you mean 'path'?",
        ),
        (
            '[[heartbeat.sink]]\ntype = "file"\npath = "nowhere/replies.jsonl"',
            "heartbeat[inbox].sink[#1].path: directory",
        ),
        (
            '[[heartbeat.sink]]\ntype = "stdout"\nname = "a"\n'
            '[[heartbeat.sink]]\ntype = "stdout"\nname = "a"',
            "heartbeat[inbox].sink: two sinks are named 'a'",
        ),
    ],
)
def test_bad_values_name_the_key_and_say_why(
    tmp_path: Path, agent_dir: Path, extra: str, expected: str
) -> None:
    found = problems(tmp_path, job(agent_dir, extra))
    assert any(expected in p for p in found), found


def test_idle_backoff_is_for_every_schedules_only(tmp_path: Path, agent_dir: Path) -> None:
    text = job(agent_dir, "idle_backoff = 2").replace('every = "30m"', 'cron = "0 9 * * *"')
    found = problems(tmp_path, text)
    assert any("idle_backoff: only applies to every schedules, not cron" in p for p in found)


def test_timezone_with_every_needs_active_hours_or_a_daily_budget(
    tmp_path: Path, agent_dir: Path
) -> None:
    load(tmp_path, job(agent_dir, 'timezone = "Asia/Tokyo"\ndaily_budget_usd = 1.0'))
    load(tmp_path, job(agent_dir, 'timezone = "Asia/Tokyo"\nactive_hours = "09:00-17:00"'))
    assert problems(tmp_path, job(agent_dir, 'timezone = "Asia/Tokyo"')) != []


# ---------------------------------------------------------------- reload diff


def diff(old: Config, new: Config) -> tuple[list[str], list[str], list[str], list[str]]:
    d = diff_jobs(old, new, spec=lambda c: agent_spec(c, {}), schedule=schedule_key)
    return d.added, d.removed, d.changed, d.unchanged


def test_a_reload_sorts_jobs_into_added_removed_changed_unchanged(
    tmp_path: Path, agent_dir: Path
) -> None:
    old = load(
        tmp_path, job(agent_dir, name="a") + job(agent_dir, name="b") + job(agent_dir, name="c")
    )
    new = load(
        tmp_path,
        job(agent_dir, name="a") + job(agent_dir, name="b", every="10m") + job(agent_dir, name="d"),
    )
    assert diff(old, new) == (["d"], ["c"], ["b"], ["a"])
    d = diff_jobs(old, new, spec=lambda c: agent_spec(c, {}), schedule=schedule_key)
    assert d.reschedule == {"b"} and d.respec == frozenset()


def test_only_agent_settings_make_a_job_reconnect(tmp_path: Path, agent_dir: Path) -> None:
    old = load(tmp_path, job(agent_dir))
    prompt_only = load(tmp_path, job(agent_dir).replace("Check the inbox.", "Check twice."))
    model = load(tmp_path, job(agent_dir, 'model = "claude-haiku-4-5"'))
    budget = load(tmp_path, job(agent_dir, "max_budget_usd = 0.2"))
    for new, respec in ((prompt_only, False), (model, True), (budget, True)):
        d = diff_jobs(old, new, spec=lambda c: agent_spec(c, {}), schedule=schedule_key)
        assert d.changed == ["inbox"] and d.reschedule == frozenset()
        assert (d.respec == {"inbox"}) is respec


def test_a_changed_cwd_refuses_the_reload_and_daemon_changes_are_listed(
    tmp_path: Path, agent_dir: Path
) -> None:
    other = tmp_path / "other"
    other.mkdir()
    old = load(tmp_path, job(agent_dir))
    moved = load(tmp_path, job(other) + '[daemon]\nfsync = "always"\n')
    [problem] = reload_problems(old, moved)
    assert problem.startswith(f"heartbeat[inbox].cwd: changed from {agent_dir} to {other}")
    assert daemon_changes(old.daemon, moved.daemon) == ["fsync"]
