"""Config loading: good files load to typed values; bad ones name the key and say why."""

from __future__ import annotations

import os
import re
import shutil
import textwrap
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from apscheduler.triggers.cron import CronTrigger
from hypothesis import given
from hypothesis import strategies as st

from daemon.config.load import config_from_dict, default_config_path, load_config
from daemon.config.model import Config, DaemonConfig, HeartbeatConfig
from daemon.config.problems import ConfigError, ConfigProblem
from daemon.durations import format_duration, parse_duration
from daemon.errors import UnknownJobError, VigilError

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def agent_dir(tmp_path: Path) -> Path:
    path = tmp_path / "agent"
    path.mkdir()
    return path


def write(tmp_path: Path, text: str, name: str = "vigil.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def job(agent_dir: Path, extra: str = "", name: str = "inbox") -> str:
    """A valid [[heartbeat]] block plus ``extra`` lines."""
    return (
        f'[[heartbeat]]\nname = "{name}"\nevery = "30m"\nprompt = "Check the inbox."\n'
        f'cwd = "{agent_dir}"\n{textwrap.dedent(extra)}\n'
    )


def refused(path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value


def only_problem(path: Path) -> ConfigProblem:
    error = refused(path)
    assert len(error.problems) == 1, str(error)
    return error.problems[0]


# ---------------------------------------------------------------- good files


def test_full_config_loads_with_typed_values(tmp_path: Path, agent_dir: Path) -> None:
    (tmp_path / "HEARTBEAT.md").write_text("Look around.\nAnswer HEARTBEAT_OK.\n")
    path = write(
        tmp_path,
        f"""
        [daemon]
        state_dir = "/srv/vigil/state"
        runtime_dir = "run"
        key_file = "/etc/vigil/other.key"
        fsync = "always"
        log_format = "console"
        turn_timeout = "15m"
        drain_grace = "0s"
        model_max_retries = 0

        [[heartbeat]]
        name = "inbox"
        every = "1h30m"
        jitter = "90s"
        prompt = "Check the inbox."
        cwd = "{agent_dir}"
        on_interrupted = "drop"
        model = "claude-sonnet-4-5"
        system_prompt = "Be brief."
        allowed_tools = ["Read", "Grep"]
        permission_mode = "plan"
        max_turns = 3
        turn_timeout = "2m"

        [[heartbeat]]
        name = "digest_2"
        cron = "0 9 * * 1-5"
        timezone = "Europe/Berlin"
        prompt_file = "HEARTBEAT.md"
        cwd = "agent"
        """,
    )
    config = load_config(path)

    assert config.daemon == DaemonConfig(
        state_dir=Path("/srv/vigil/state"),
        runtime_dir=tmp_path / "run",
        key_file=Path("/etc/vigil/other.key"),
        fsync="always",
        log_format="console",
        turn_timeout=timedelta(minutes=15),
        drain_grace=timedelta(0),
        model_max_retries=0,
    )
    inbox = config.job("inbox")
    assert inbox.every == timedelta(hours=1, minutes=30)
    assert inbox.jitter == timedelta(seconds=90)
    assert inbox.cron is None
    assert inbox.prompt_text == "Check the inbox."
    assert inbox.prompt_source is None
    assert inbox.cwd == agent_dir
    assert inbox.on_interrupted == "drop"
    assert inbox.model == "claude-sonnet-4-5"
    assert inbox.system_prompt == "Be brief."
    assert inbox.allowed_tools == ["Read", "Grep"]
    assert inbox.permission_mode == "plan"
    assert inbox.max_turns == 3
    assert config.turn_timeout_for("inbox") == timedelta(minutes=2)

    digest = config.job("digest_2")
    assert digest.every is None
    assert digest.cron == "0 9 * * mon-fri"
    assert digest.zone == ZoneInfo("Europe/Berlin")
    assert digest.prompt_text == "Look around.\nAnswer HEARTBEAT_OK.\n"
    assert digest.prompt_source == tmp_path / "HEARTBEAT.md"
    assert digest.cwd == agent_dir
    assert digest.on_interrupted == "replay"
    assert digest.permission_mode == "default"
    assert digest.allowed_tools is None
    assert config.turn_timeout_for("digest_2") == timedelta(minutes=15)
    assert [j.name for j in config.heartbeats] == ["inbox", "digest_2"]


def test_config_is_frozen(tmp_path: Path, agent_dir: Path) -> None:
    config = load_config(write(tmp_path, job(agent_dir)))
    with pytest.raises(ValueError, match="frozen"):
        config.job("inbox").every = timedelta(seconds=5)


def test_load_config_matches_config_from_dict(tmp_path: Path, agent_dir: Path) -> None:
    loaded = load_config(write(tmp_path, job(agent_dir)))
    built = config_from_dict(
        {
            "heartbeat": [
                {"name": "inbox", "every": "30m", "prompt": "Check the inbox.", "cwd": "agent"}
            ]
        },
        base_dir=tmp_path,
        source=Path("<test>"),
    )
    assert built == loaded


def test_empty_file_gives_usable_daemon_defaults_and_no_jobs(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ""))
    assert config.heartbeats == []
    assert config.daemon.state_dir == Path("/var/lib/vigil")
    assert config.daemon.runtime_dir == Path("/run/vigil")
    assert config.daemon.key_file == Path("/etc/vigil/vigil.key")
    assert config.daemon.fsync == "turn"
    assert config.daemon.log_format == "json"
    assert config.daemon.turn_timeout == timedelta(minutes=10)
    assert config.daemon.drain_grace == timedelta(seconds=30)
    assert config.daemon.model_max_retries == 1


def test_relative_daemon_paths_resolve_against_the_config_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    path = write(etc, '[daemon]\nstate_dir = "state"\nruntime_dir = "../run"\nkey_file = "k"\n')
    monkeypatch.chdir(tmp_path)  # the process's own directory must not matter
    config = load_config(Path("etc/vigil.toml"))
    assert config.daemon.state_dir == etc / "state"
    assert config.daemon.runtime_dir == etc / "../run"
    assert config.daemon.key_file == etc / "k"
    assert path.exists()


def test_relative_cwd_and_prompt_file_resolve_against_the_config_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    etc = tmp_path / "etc"
    (etc / "agents" / "inbox").mkdir(parents=True)
    (etc / "prompts").mkdir()
    (etc / "prompts" / "beat.md").write_text("Beat.\n")
    write(
        etc,
        '[[heartbeat]]\nname = "inbox"\nevery = "1m"\n'
        'prompt_file = "prompts/beat.md"\ncwd = "agents/inbox"\n',
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    inbox = load_config(etc / "vigil.toml").job("inbox")
    assert inbox.cwd == etc / "agents" / "inbox"
    assert inbox.prompt_source == etc / "prompts" / "beat.md"
    assert inbox.prompt_text == "Beat.\n"


def test_standard_crontab_weekdays_keep_their_meaning(tmp_path: Path, agent_dir: Path) -> None:
    # APScheduler 3 counts weekdays from 0 = Monday; crontab from 0 = Sunday.
    path = write(
        tmp_path,
        f"""
        [[heartbeat]]
        name = "weekdays"
        cron = "0 9 * * 1-5"
        timezone = "Europe/Berlin"
        prompt = "p"
        cwd = "{agent_dir}"

        [[heartbeat]]
        name = "sundays"
        cron = "30 7 * * 7"
        prompt = "p"
        cwd = "{agent_dir}"
        """,
    )
    config = load_config(path)
    saturday = datetime(2025, 1, 4, 12, 0, tzinfo=ZoneInfo("Europe/Berlin"))
    weekdays = config.job("weekdays")
    trigger = CronTrigger.from_crontab(weekdays.cron, timezone=weekdays.zone)
    fire = trigger.get_next_fire_time(None, saturday)
    assert (fire.strftime("%A %H:%M"), fire.date().isoformat()) == ("Monday 09:00", "2025-01-06")
    sundays = config.job("sundays")
    fire = CronTrigger.from_crontab(sundays.cron, timezone=sundays.zone).get_next_fire_time(
        None, saturday
    )
    assert fire.strftime("%A %H:%M") == "Sunday 07:30"


def test_example_config_loads_and_documents_every_key(tmp_path: Path) -> None:
    example = (REPO / "config" / "vigil.example.toml").read_text(encoding="utf-8")
    # The example points at /srv/agents/...; rewrite only the cwd values to real dirs.
    rewritten, count = re.subn(
        r'^cwd = "/srv/agents/(\w+)"$',
        lambda m: f'cwd = "{tmp_path / m[1]}"',
        example,
        flags=re.MULTILINE,
    )
    assert count == 2
    for name in ("inbox", "digest"):
        (tmp_path / name).mkdir()
    shutil.copy(REPO / "config" / "HEARTBEAT.md", tmp_path / "HEARTBEAT.md")
    config = load_config(write(tmp_path, rewritten))

    assert [j.name for j in config.heartbeats] == ["inbox", "morning-digest"]
    assert config.job("inbox").every == timedelta(minutes=30)
    digest = config.job("morning-digest")
    assert digest.cron == "*/15 8-18 * * mon-fri"
    assert digest.timezone == "Europe/Berlin"
    heartbeat_md = (REPO / "config" / "HEARTBEAT.md").read_text(encoding="utf-8")
    assert digest.prompt_text == heartbeat_md
    assert "answer exactly HEARTBEAT_OK" in " ".join(heartbeat_md.split()[-20:])
    assert config.daemon == DaemonConfig()  # the example states the defaults

    for model in (DaemonConfig, HeartbeatConfig):
        for key in model.model_fields:
            assert re.search(rf"^(# )?{key} = ", example, re.MULTILINE), f"{key} undocumented"


# ---------------------------------------------------------------- unknown keys


def test_unknown_top_level_key_suggests_the_right_one(tmp_path: Path) -> None:
    problem = only_problem(write(tmp_path, "[[heartbeats]]\nname = 'x'\n"))
    assert problem.key == "heartbeats"
    assert problem.message == (
        "unknown key 'heartbeats'; did you mean 'heartbeat'? "
        "(known keys: daemon, heartbeat, cluster)"
    )


def test_unknown_daemon_key_suggests_the_right_one(tmp_path: Path) -> None:
    problem = only_problem(write(tmp_path, '[daemon]\nfsynk = "always"\n'))
    assert problem.key == "daemon.fsynk"
    assert problem.message.startswith("unknown key 'fsynk'; did you mean 'fsync'? (known keys: ")


def test_unknown_heartbeat_key_names_the_job_and_suggests(tmp_path: Path, agent_dir: Path) -> None:
    problem = only_problem(write(tmp_path, job(agent_dir, 'evry = "1h"')))
    assert problem.key == "heartbeat[inbox].evry"
    assert problem.message.startswith(
        "unknown key 'evry'; did you mean 'every'? (known keys: name, every, cron, timezone,"
    )


def test_unknown_key_without_close_match_lists_known_keys(tmp_path: Path) -> None:
    problem = only_problem(write(tmp_path, "[daemon]\ncolour = true\n"))
    assert problem.message == (
        "unknown key 'colour' (known keys: state_dir, runtime_dir, key_file, fsync, "
        "log_format, log_content, turn_timeout, drain_grace, model_max_retries, mirror_path, "
        "max_live_clients, max_concurrent_turns, client_idle_timeout, metrics)"
    )


# ---------------------------------------------------------------- wrong types and values


def test_every_as_a_bare_number_is_refused(tmp_path: Path) -> None:
    problem = only_problem(
        write(tmp_path, '[[heartbeat]]\nname = "inbox"\nevery = 5\nprompt = "p"\ncwd = "/"\n')
    )
    assert problem.key == "heartbeat[inbox].every"
    assert problem.message == (
        'expected a duration string with a unit, like "5s" or "5m", got integer 5'
    )


def test_quoted_integer_is_not_coerced(tmp_path: Path, agent_dir: Path) -> None:
    problem = only_problem(write(tmp_path, job(agent_dir, 'max_turns = "3"')))
    assert problem.key == "heartbeat[inbox].max_turns"
    assert problem.message == 'expected an integer, got string "3"; write the number without quotes'


@pytest.mark.parametrize(
    ("line", "key", "message"),
    [
        ("model = 5", "model", "expected a string, got integer 5"),
        ('allowed_tools = "Read"', "allowed_tools", 'expected an array, got string "Read"'),
        ("allowed_tools = ['Read', 3]", "allowed_tools[#2]", "expected a string, got integer 3"),
        ("max_turns = 0", "max_turns", "must be at least 1, got integer 0"),
        ("max_turns = true", "max_turns", "expected an integer, got boolean true"),
        ('prompt_file = ""', "prompt_file", "is empty; expected a path"),
    ],
)
def test_wrong_types_in_a_job(
    tmp_path: Path, agent_dir: Path, line: str, key: str, message: str
) -> None:
    text = job(agent_dir, line).replace('prompt = "Check the inbox."\n', "")
    if "prompt_file" not in line:
        text += 'prompt = "p"\n'
    problem = only_problem(write(tmp_path, text))
    assert (problem.key, problem.message) == (f"heartbeat[inbox].{key}", message)


def test_bad_duration_says_what_a_duration_looks_like(tmp_path: Path, agent_dir: Path) -> None:
    path = write(tmp_path, job(agent_dir).replace('every = "30m"', 'every = "5x"'))
    error = refused(path)
    assert str(error) == (
        f"{path}: heartbeat[inbox].every: bad duration '5x': unknown unit 'x'; "
        'expected a number followed by ms, s, m, h or d, like "30m" or "1h30m"'
    )


def test_every_below_one_second_is_refused(tmp_path: Path, agent_dir: Path) -> None:
    problem = only_problem(write(tmp_path, job(agent_dir).replace('"30m"', '"500ms"')))
    assert problem.key == "heartbeat[inbox].every"
    assert problem.message == "500ms is too short: heartbeats must be at least 1s apart"


def test_daemon_turn_timeout_of_zero_is_refused(tmp_path: Path) -> None:
    problem = only_problem(write(tmp_path, '[daemon]\nturn_timeout = "0s"\n'))
    assert (problem.key, problem.message) == (
        "daemon.turn_timeout",
        "0s is too short: a turn needs at least 1s",
    )


def test_bad_fsync_value_lists_the_choices(tmp_path: Path) -> None:
    problem = only_problem(write(tmp_path, '[daemon]\nfsync = "sometimes"\n'))
    assert problem.key == "daemon.fsync"
    assert problem.message == 'expected one of "always", "turn", "never", got string "sometimes"'


def test_bad_on_interrupted_suggests_the_closest(tmp_path: Path, agent_dir: Path) -> None:
    problem = only_problem(write(tmp_path, job(agent_dir, 'on_interrupted = "replai"')))
    assert problem.key == "heartbeat[inbox].on_interrupted"
    assert problem.message == (
        'expected one of "replay", "continue", "drop", got string "replai"; did you mean "replay"?'
    )


def test_negative_retries_refused(tmp_path: Path) -> None:
    problem = only_problem(write(tmp_path, "[daemon]\nmodel_max_retries = -1\n"))
    assert (problem.key, problem.message) == (
        "daemon.model_max_retries",
        "must be at least 0, got integer -1",
    )


@pytest.mark.parametrize(
    ("daemon", "key", "message"),
    [
        (
            'state_dir = "/x"\nruntime_dir = "/x"',
            "daemon.runtime_dir",
            "must differ from state_dir",
        ),
        ('state_dir = "/run/vigil/state"', "daemon.state_dir", "must not be inside runtime_dir"),
        ('state_dir = "~/vigil"', "daemon.state_dir", "'~' is not expanded here"),
    ],
)
def test_daemon_directories_that_would_lose_journals(
    tmp_path: Path, daemon: str, key: str, message: str
) -> None:
    problem = only_problem(write(tmp_path, f"[daemon]\n{daemon}\n"))
    assert problem.key == key
    assert message in problem.message


def test_single_bracket_heartbeat_explains_double_brackets(tmp_path: Path) -> None:
    problem = only_problem(write(tmp_path, '[heartbeat]\nname = "x"\n'))
    assert problem.key == "heartbeat"
    assert "expected [[heartbeat]] blocks" in problem.message
    assert problem.message.endswith("got a table")


# ---------------------------------------------------------------- schedules


def test_every_and_cron_together_refused(tmp_path: Path, agent_dir: Path) -> None:
    problem = only_problem(write(tmp_path, job(agent_dir, 'cron = "* * * * *"')))
    assert (problem.key, problem.message) == (
        "heartbeat[inbox]",
        "has both every and cron; set exactly one",
    )


def test_no_schedule_refused(tmp_path: Path, agent_dir: Path) -> None:
    problem = only_problem(write(tmp_path, job(agent_dir).replace('every = "30m"\n', "")))
    assert problem.key == "heartbeat[inbox]"
    assert problem.message.startswith("has no schedule; set every = ")


@pytest.mark.parametrize(
    ("cron", "detail"),
    [
        ("61 * * * *", "the last value (61) is higher than the maximum value (59)"),
        ("* * * *", "Wrong number of fields; got 4, expected 5"),
        ("*/0 * * * *", "Increment must be higher than 0"),
    ],
)
def test_bad_cron_refused_with_the_reason(
    tmp_path: Path, agent_dir: Path, cron: str, detail: str
) -> None:
    text = job(agent_dir).replace('every = "30m"', f'cron = "{cron}"')
    problem = only_problem(write(tmp_path, text))
    assert problem.key == "heartbeat[inbox].cron"
    assert problem.message.startswith(f"bad cron expression '{cron}': ")
    assert detail in problem.message
    assert problem.message.endswith('like "*/15 8-18 * * 1-5"')


def test_bad_timezone_suggests_the_closest(tmp_path: Path, agent_dir: Path) -> None:
    text = job(agent_dir, 'timezone = "Europe/Berln"').replace(
        'every = "30m"', 'cron = "0 9 * * *"'
    )
    problem = only_problem(write(tmp_path, text))
    assert problem.key == "heartbeat[inbox].timezone"
    assert problem.message == (
        'unknown time zone "Europe/Berln": expected an IANA name like "Europe/Berlin" '
        'or "UTC"; did you mean "Europe/Berlin"?'
    )


def test_timezone_with_every_and_jitter_with_cron_are_refused(
    tmp_path: Path, agent_dir: Path
) -> None:
    problem = only_problem(write(tmp_path, job(agent_dir, 'timezone = "UTC"')))
    assert problem.key == "heartbeat[inbox].timezone"
    assert problem.message == (
        "only applies to cron schedules, active_hours and daily_budget_usd; "
        "every alone ignores time zones"
    )

    text = job(agent_dir, 'jitter = "5s"').replace('every = "30m"', 'cron = "0 9 * * *"')
    problem = only_problem(write(tmp_path, text))
    assert (problem.key, problem.message) == (
        "heartbeat[inbox].jitter",
        "only applies to every schedules, not cron",
    )


def test_jitter_must_be_shorter_than_every(tmp_path: Path, agent_dir: Path) -> None:
    problem = only_problem(write(tmp_path, job(agent_dir, 'jitter = "30m"')))
    assert (problem.key, problem.message) == (
        "heartbeat[inbox].jitter",
        "30m must be shorter than every (30m)",
    )


# ---------------------------------------------------------------- names


def test_duplicate_names_name_both_positions(tmp_path: Path, agent_dir: Path) -> None:
    text = job(agent_dir) + job(agent_dir, name="other") + job(agent_dir)
    problem = only_problem(write(tmp_path, text))
    assert problem.key == "heartbeat[inbox]"
    assert problem.message == "duplicate job name 'inbox': [[heartbeat]] #1 and #3 both use it"


def test_bad_name_falls_back_to_the_position(tmp_path: Path, agent_dir: Path) -> None:
    text = job(agent_dir, name="ok") + job(agent_dir, 'max_turns = "3"', name="my job")
    error = refused(write(tmp_path, text))
    assert [(p.key, p.message) for p in error.problems] == [
        (
            "heartbeat[#2].name",
            "bad job name \"my job\": use 1 to 64 letters, digits, '_' or '-'",
        ),
        (
            "heartbeat[#2].max_turns",
            'expected an integer, got string "3"; write the number without quotes',
        ),
    ]


def test_missing_name_is_reported_by_position(tmp_path: Path, agent_dir: Path) -> None:
    text = job(agent_dir).replace('name = "inbox"\n', "")
    problem = only_problem(write(tmp_path, text))
    assert (problem.key, problem.message) == ("heartbeat[#1].name", "is required but missing")


def test_unknown_job_lookup(tmp_path: Path, agent_dir: Path) -> None:
    config = load_config(write(tmp_path, job(agent_dir)))
    with pytest.raises(UnknownJobError) as info:
        config.job("inbx")
    assert isinstance(info.value, KeyError)
    assert isinstance(info.value, VigilError)
    assert str(info.value) == "no heartbeat job named 'inbx' (jobs: inbox)"


# ---------------------------------------------------------------- prompts


def test_prompt_and_prompt_file_together_refused(tmp_path: Path, agent_dir: Path) -> None:
    (tmp_path / "p.md").write_text("x")
    problem = only_problem(write(tmp_path, job(agent_dir, 'prompt_file = "p.md"')))
    assert (problem.key, problem.message) == (
        "heartbeat[inbox]",
        "has both prompt and prompt_file; set exactly one",
    )


def test_no_prompt_refused(tmp_path: Path, agent_dir: Path) -> None:
    text = job(agent_dir).replace('prompt = "Check the inbox."\n', "")
    problem = only_problem(write(tmp_path, text))
    assert problem.key == "heartbeat[inbox]"
    assert problem.message.startswith("has no prompt; set prompt = ")


def prompt_file_job(agent_dir: Path, prompt_file: str) -> str:
    text = job(agent_dir).replace('prompt = "Check the inbox."', f'prompt_file = "{prompt_file}"')
    return text


def test_missing_prompt_file_refused(tmp_path: Path, agent_dir: Path) -> None:
    problem = only_problem(write(tmp_path, prompt_file_job(agent_dir, "HEARTBEAT.md")))
    assert problem.key == "heartbeat[inbox].prompt_file"
    assert problem.message == (
        f"prompt file {tmp_path / 'HEARTBEAT.md'} does not exist "
        "(relative paths resolve against the config file's directory)"
    )


def test_prompt_file_not_utf8_refused(tmp_path: Path, agent_dir: Path) -> None:
    (tmp_path / "beat.md").write_bytes("Check mail.\nCaf\u00e9\n".encode("latin-1"))
    problem = only_problem(write(tmp_path, prompt_file_job(agent_dir, "beat.md")))
    assert problem.key == "heartbeat[inbox].prompt_file"
    assert problem.message.startswith(
        f"prompt file {tmp_path / 'beat.md'} is not UTF-8 text (byte 0xe9 on line 2)"
    )


def test_empty_prompt_file_loads_its_beats_are_skipped_later(
    tmp_path: Path, agent_dir: Path
) -> None:
    (tmp_path / "beat.md").write_text("\n  \n<!-- nothing to do today -->\n")
    config = load_config(write(tmp_path, prompt_file_job(agent_dir, str(tmp_path / "beat.md"))))
    assert config.job("inbox").prompt_text == "\n  \n<!-- nothing to do today -->\n"


# ---------------------------------------------------------------- cwd


def test_missing_cwd_refused(tmp_path: Path, agent_dir: Path) -> None:
    text = job(agent_dir).replace(str(agent_dir), str(tmp_path / "gone"))
    problem = only_problem(write(tmp_path, text))
    assert (problem.key, problem.message) == (
        "heartbeat[inbox].cwd",
        f"directory {tmp_path / 'gone'} does not exist",
    )


def test_cwd_that_is_a_file_refused(tmp_path: Path, agent_dir: Path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    text = job(agent_dir).replace(str(agent_dir), "notes.txt")
    problem = only_problem(write(tmp_path, text))
    assert (problem.key, problem.message) == (
        "heartbeat[inbox].cwd",
        f"{tmp_path / 'notes.txt'} is not a directory "
        "(relative paths resolve against the config file's directory)",
    )


def test_relative_cwd_missing_says_where_it_looked(tmp_path: Path, agent_dir: Path) -> None:
    text = job(agent_dir).replace(str(agent_dir), "agents/inbox")
    problem = only_problem(write(tmp_path, text))
    assert problem.message == (
        f"directory {tmp_path / 'agents' / 'inbox'} does not exist "
        "(relative paths resolve against the config file's directory)"
    )


# ---------------------------------------------------------------- the file itself


def test_toml_syntax_error_gives_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, '[daemon]\nfsync = "turn"\nlog_format = json\n')
    problem = only_problem(path)
    assert (problem.key, problem.line, problem.column) == ("", 3, 14)
    assert problem.message == "TOML syntax error at line 3, column 14: Invalid value"
    assert str(refused(path)) == f"{path}: TOML syntax error at line 3, column 14: Invalid value"


def test_missing_config_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    assert str(refused(path)) == f"{path}: config file does not exist"


def test_config_path_is_a_directory(tmp_path: Path) -> None:
    assert str(refused(tmp_path)) == f"{tmp_path}: config file is a directory, not a file"


def test_config_file_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "vigil.toml"
    path.write_bytes(b'[daemon]\nfsync = "turn"\n# \xff\n')
    assert str(refused(path)) == f"{path}: config file is not UTF-8 text (byte 0xff on line 3)"


def test_unreadable_config_file(tmp_path: Path) -> None:
    path = write(tmp_path, "")
    path.chmod(0)
    # root reads anything, so as root try again in a child that gave up root.
    message = message_as_nobody(path) if os.geteuid() == 0 else str(refused(path))
    assert message.startswith(f"{path}: config file is not readable by this user (uid ")


def message_as_nobody(path: Path) -> str:
    """Fork, drop to uid/gid 65534, load ``path``; return the ConfigError text."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        status = 1
        try:
            os.close(read_end)
            os.setgid(65534)
            os.setuid(65534)
            try:
                load_config(path)
            except ConfigError as exc:
                os.write(write_end, str(exc).encode())
                status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        output = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the child raised no ConfigError"
    return output


def test_several_problems_are_reported_at_once(tmp_path: Path, agent_dir: Path) -> None:
    text = (
        '[daemon]\nfsync = "sometimes"\nlog_fromat = "json"\n\n'
        + job(agent_dir, 'cron = "*/5 * * * *"').replace('"30m"', '"30x"')
        + job(agent_dir, "max_turns = 0", name="second")
        + job(agent_dir)
    )
    path = write(tmp_path, text)
    error = refused(path)
    assert [p.key for p in error.problems] == [
        "daemon.fsync",
        "daemon.log_fromat",
        "heartbeat[inbox].every",
        "heartbeat[inbox]",
        "heartbeat[second].max_turns",
        "heartbeat[inbox]",
    ]
    assert error.problems[3].message == "has both every and cron; set exactly one"
    assert error.problems[5].message.startswith(
        "duplicate job name 'inbox': [[heartbeat]] #1 and #3"
    )
    lines = str(error).splitlines()
    assert len(lines) == 6
    assert all(line.startswith(f"{path}: ") for line in lines)


def test_config_error_is_a_vigil_error_with_structured_fields(tmp_path: Path) -> None:
    path = tmp_path / "missing.toml"
    error = refused(path)
    assert isinstance(error, VigilError)
    assert error.path == path
    assert error.problems == [ConfigProblem("", "config file does not exist")]


def test_default_config_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VIGIL_CONFIG", raising=False)
    assert default_config_path() == Path("/etc/vigil/vigil.toml")
    monkeypatch.setenv("VIGIL_CONFIG", "/srv/vigil.toml")
    assert default_config_path() == Path("/srv/vigil.toml")
    monkeypatch.setenv("VIGIL_CONFIG", "")
    assert default_config_path() == Path("/etc/vigil/vigil.toml")


def test_config_from_dict_without_files(tmp_path: Path) -> None:
    config = config_from_dict({}, base_dir=tmp_path, source=Path("<demo>"))
    assert config == Config()
    with pytest.raises(ConfigError) as info:
        config_from_dict({"daemon": {"fsync": 1}}, base_dir=tmp_path, source=Path("<demo>"))
    assert str(info.value) == (
        '<demo>: daemon.fsync: expected one of "always", "turn", "never", got integer 1'
    )


# ---------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("500ms", timedelta(milliseconds=500)),
        ("2s", timedelta(seconds=2)),
        ("5m", timedelta(minutes=5)),
        ("1h", timedelta(hours=1)),
        ("1d", timedelta(days=1)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("1h 30m", timedelta(hours=1, minutes=30)),
        ("1.5h", timedelta(hours=1, minutes=30)),
        ("0s", timedelta(0)),
        ("2d3h4m5s6ms", timedelta(days=2, hours=3, minutes=4, seconds=5, milliseconds=6)),
    ],
)
def test_parse_duration(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "it is empty"),
        ("5", "5 has no unit"),
        ("5x", "unknown unit 'x'"),
        ("5M", "unknown unit 'M'"),
        ("-5m", "must not be negative"),
        ("1m1h", "write units from largest to smallest"),
        ("1h1h", "write units from largest to smallest"),
        ("0.0000001s", "finer than a microsecond"),
        ("1000000000d", "too large"),
        ("m", 'expected a number followed by ms, s, m, h or d, like "30m"'),
    ],
)
def test_parse_duration_rejects(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=r"^bad duration ") as info:
        parse_duration(text)
    assert f"bad duration {text!r}: " in str(info.value)
    assert reason in str(info.value)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (timedelta(0), "0s"),
        (timedelta(hours=1, minutes=30), "1h30m"),
        (timedelta(seconds=1, milliseconds=500), "1s500ms"),
        (timedelta(microseconds=250), "0.00025s"),
        (timedelta(days=1, seconds=1, microseconds=5), "1d1.000005s"),
    ],
)
def test_format_duration(value: timedelta, text: str) -> None:
    assert format_duration(value) == text


def test_format_duration_rejects_negative() -> None:
    with pytest.raises(ValueError, match="negative"):
        format_duration(timedelta(seconds=-1))


@given(st.timedeltas(min_value=timedelta(0)))
def test_format_then_parse_round_trips(value: timedelta) -> None:
    assert parse_duration(format_duration(value)) == value


_UNITS = {"d": 86_400_000, "h": 3_600_000, "m": 60_000, "s": 1_000, "ms": 1}


@given(
    st.dictionaries(
        st.sampled_from(list(_UNITS)), st.integers(min_value=0, max_value=10_000), min_size=1
    ),
    st.sampled_from(["", " "]),
)
def test_parse_sums_the_parts(parts: dict[str, int], separator: str) -> None:
    ordered = [unit for unit in _UNITS if unit in parts]
    text = separator.join(f"{parts[unit]}{unit}" for unit in ordered)
    expected = timedelta(milliseconds=sum(parts[unit] * _UNITS[unit] for unit in ordered))
    assert parse_duration(text) == expected
    assert parse_duration(format_duration(expected)) == expected


@given(
    st.lists(st.sampled_from(list(_UNITS)), min_size=2, max_size=2, unique=True),
    st.integers(min_value=1, max_value=99),
)
def test_parse_refuses_units_out_of_order(units: list[str], number: int) -> None:
    order = list(_UNITS)
    small_first = sorted(units, key=order.index, reverse=True)
    with pytest.raises(ValueError, match="largest to smallest"):
        parse_duration("".join(f"{number}{unit}" for unit in small_first))


@given(st.timedeltas(min_value=timedelta(microseconds=1), max_value=timedelta(days=10_000)))
def test_negative_durations_are_refused(value: timedelta) -> None:
    with pytest.raises(ValueError, match="must not be negative"):
        parse_duration("-" + format_duration(value))


def test_mirror_path_defaults_to_the_runtime_dir_and_resolves_relative(tmp_path: Path) -> None:
    default = config_from_dict({"daemon": {}}, base_dir=tmp_path, source=tmp_path / "v.toml")
    assert default.daemon.mirror_file == default.daemon.runtime_dir / "mirror.sqlite3"
    chosen = config_from_dict(
        {"daemon": {"mirror_path": "db/mirror.sqlite3"}},
        base_dir=tmp_path,
        source=tmp_path / "v.toml",
    )
    assert chosen.daemon.mirror_file == tmp_path / "db" / "mirror.sqlite3"
