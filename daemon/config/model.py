"""vigil's configuration: one TOML file, validated strictly, every problem reported at once.

``load_config(path)`` reads the file, checks it against the schema below and returns a
frozen :class:`Config`. Anything wrong raises :class:`ConfigError`, which lists each
problem with its dotted key (``heartbeat[inbox].every``; ``heartbeat[#2].every`` when
the second job has no usable name) and a message saying what was expected.

Relative paths (``state_dir``, ``runtime_dir``, ``key_file``, ``cwd``, ``prompt_file``,
a file sink's ``path``) resolve against the config file's directory. ``prompt_file`` is
read at load time (and again at each reload); an empty one (only whitespace and
comments) is valid: its beats are skipped without a model call.

Validation is strict: TOML ``5`` is not the string ``"5"``, nor ``"3"`` the integer 3.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
import tomllib
import zoneinfo
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from apscheduler.triggers.cron import CronTrigger
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    model_validator,
)
from pydantic_core import PydanticCustomError

from daemon.durations import format_duration, parse_duration
from daemon.errors import VigilError
from jobs.hours import ActiveHours
from jobs.quiet import DEFAULT_QUIET_TOKEN, QuietRule

__all__ = [
    "Config",
    "ConfigError",
    "ConfigProblem",
    "DaemonConfig",
    "HeartbeatConfig",
    "PromptFile",
    "SinkConfig",
    "UnknownJobError",
    "config_from_dict",
    "default_config_path",
    "load_config",
    "normalize_crontab",
]

DEFAULT_CONFIG_PATH = Path("/etc/vigil/vigil.toml")
JOB_NAME_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
_MIN_EVERY = timedelta(seconds=1)
_MIN_TURN_TIMEOUT = timedelta(seconds=1)


# ---------------------------------------------------------------- errors


@dataclasses.dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong with a config file.

    ``key`` is the dotted key (``daemon.fsync``, ``heartbeat[inbox].every``), or ``""``
    when the problem is the file itself; ``line``/``column`` are set for TOML syntax
    errors.
    """

    key: str
    message: str
    line: int | None = None
    column: int | None = None

    def __str__(self) -> str:
        return f"{self.key}: {self.message}" if self.key else self.message


class ConfigError(VigilError):
    """The config file at ``path`` cannot be used; ``problems`` says why, all of them."""

    exit_code = 2

    def __init__(self, path: Path, problems: Sequence[ConfigProblem]) -> None:
        self.path = path
        self.problems = list(problems)
        super().__init__(path, self.problems)

    def __str__(self) -> str:
        return "\n".join(f"{self.path}: {problem}" for problem in self.problems)


class UnknownJobError(VigilError, KeyError):
    """``Config.job(name)`` was asked for a job the config does not define."""

    exit_code = 2

    def __init__(self, name: str, known: Sequence[str]) -> None:
        self.name = name
        self.known = list(known)
        super().__init__(name, self.known)

    def __str__(self) -> str:
        known = ", ".join(self.known) if self.known else "none are configured"
        return f"no heartbeat job named {self.name!r} (jobs: {known})"


def _fail(message: str, *, loc: tuple[str | int, ...] = ()) -> PydanticCustomError:
    """A validation error whose text is ``message`` verbatim; ``loc`` extends its key."""
    return PydanticCustomError("vigil", "{message}", {"message": message, "loc": loc})


# ---------------------------------------------------------------- field types


def _describe(value: object) -> str:  # noqa: PLR0911 -- one return per TOML value type
    """How a TOML value reads to the person who wrote it."""
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        return f"number {value}"
    if isinstance(value, str):
        shown = value if len(value) <= 60 else value[:57] + "..."
        return f"string {json.dumps(shown)}"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, date | time):
        return f"date/time {value.isoformat()}"
    return type(value).__name__


def _base_dir(info: ValidationInfo) -> Path | None:
    context = info.context
    base = context.get("base_dir") if isinstance(context, Mapping) else None
    return base if isinstance(base, Path) else None


def _path(value: object, info: ValidationInfo) -> Path:
    if isinstance(value, Path):
        path = value
    elif isinstance(value, str):
        if not value.strip():
            raise _fail("is empty; expected a path")
        if value.startswith("~"):
            raise _fail(f"{value!r}: '~' is not expanded here; write the full path")
        path = Path(value)
    else:
        raise _fail(f"expected a path string, got {_describe(value)}")
    if path.is_absolute():
        return path
    base = _base_dir(info)
    if base is None:
        raise _fail(f"relative path {str(path)!r} has no config file to resolve against")
    return base / path


def _note(value: object) -> str:
    """Tell the reader where a relative path was looked for."""
    if isinstance(value, str) and not Path(value).is_absolute():
        return " (relative paths resolve against the config file's directory)"
    return ""


def _directory(value: object, info: ValidationInfo) -> Path:
    path = _path(value, info)
    if not path.exists():
        raise _fail(f"directory {path} does not exist{_note(value)}")
    if not path.is_dir():
        raise _fail(f"{path} is not a directory{_note(value)}")
    return path


def _creatable_directory(value: object, info: ValidationInfo) -> Path:
    """A directory the daemon creates when missing; refused when a file is in the way."""
    path = _path(value, info)
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        where = "" if probe == path else f" (so {path} cannot be created)"
        raise _fail(f"{probe} is a file, not a directory{where}")
    return path


def _duration(value: object) -> timedelta:
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise _fail(f'expected a duration string like "30m", got {_describe(value)}')
    if not isinstance(value, str):
        raise _fail(
            f"expected a duration string with a unit, like "
            f'"{value}s" or "{value}m", got {_describe(value)}'
        )
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise _fail(str(exc)) from None


def _at_least(minimum: timedelta, why: str) -> AfterValidator:
    def check(value: timedelta) -> timedelta:
        if value < minimum:
            raise _fail(f"{format_duration(value)} is too short: {why}")
        return value

    return AfterValidator(check)


def _job_name(value: str) -> str:
    if not JOB_NAME_PATTERN.fullmatch(value):
        raise _fail(f"bad job name {json.dumps(value)}: use 1 to 64 letters, digits, '_' or '-'")
    return value


def _not_blank(value: str) -> str:
    if not value.strip():
        raise _fail("is empty")
    return value


def _timezone(value: str) -> str:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        close = difflib.get_close_matches(value, zoneinfo.available_timezones(), n=1)
        hint = f"; did you mean {json.dumps(close[0])}?" if close else ""
        raise _fail(
            f'unknown time zone {json.dumps(value)}: expected an IANA name like "Europe/Berlin" '
            f'or "UTC"{hint}'
        ) from None
    return value


_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_DOW_ITEM = re.compile(r"(?:(?P<all>\*)|(?P<a>\w+)(?:-(?P<b>\w+))?)(?:/(?P<step>\d+))?")


def _weekday_number(token: str) -> int | None:
    """Standard crontab numbering: 0 or 7 is Sunday, 1 is Monday."""
    if token.isdigit():
        return int(token) if int(token) <= 7 else None
    lowered = token.lower()
    return _WEEKDAYS.index(lowered) if lowered in _WEEKDAYS else None


def _weekday_runs(days: set[int]) -> str:
    """Days (0 = Sunday) as names from Monday on, consecutive ones joined: ``mon-fri,sun``."""
    ordered = [day for day in (1, 2, 3, 4, 5, 6, 0) if day in days]
    runs: list[list[int]] = []
    for day in ordered:
        if runs and (runs[-1][-1] + 1) % 7 == day:
            runs[-1].append(day)
        else:
            runs.append([day])
    return ",".join(
        _WEEKDAYS[run[0]] if len(run) == 1 else f"{_WEEKDAYS[run[0]]}-{_WEEKDAYS[run[-1]]}"
        for run in runs
    )


def _standard_weekdays(field: str) -> str | None:
    """A crontab day-of-week field as weekday names, or None when it cannot be read."""
    days: set[int] = set()
    for item in field.split(","):
        match = _DOW_ITEM.fullmatch(item)
        step = int(match["step"] or 1) if match else 0
        if match is None or step == 0:
            return None
        first: int | None
        last: int | None
        if match["all"]:
            first, last = 0, 6
        else:
            first = _weekday_number(match["a"])
            if match["b"] is not None:
                last = _weekday_number(match["b"])
            else:
                last = 7 if match["step"] else first
            if first is None or last is None:
                return None
            if last == 0 < first:
                last = 7  # "mon-sun": Sunday as the end of the week
            if last < first:
                return None
        days.update(day % 7 for day in range(first, last + 1, step))
    return "*" if len(days) == 7 else _weekday_runs(days)


def normalize_crontab(expression: str) -> str:
    """Return ``expression`` with its day-of-week field written as names (``mon-fri``).

    APScheduler 3's ``CronTrigger.from_crontab`` counts weekdays from 0 = Monday, so
    the standard crontab ``1-5`` (Monday to Friday) would fire Tuesday to Saturday and
    ``0``/``7`` (Sunday) would be Monday/an error. Names mean the same to both. Fields
    this cannot read are returned unchanged for APScheduler to judge.
    """
    fields = expression.split()
    if len(fields) != 5:
        return expression
    weekdays = _standard_weekdays(fields[4])
    if weekdays is None:
        return expression
    return " ".join([*fields[:4], weekdays])


_CRON_SHAPE = (
    'expected five fields (minute hour day-of-month month day-of-week), like "*/15 8-18 * * 1-5"'
)
# Any date a five-field expression can match recurs within 28 years (the calendar's
# cycle), so one that matches nothing from here on never fires.
_CRON_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


def _cron(value: str) -> str:
    fields = value.split()
    if len(fields) == 5 and _standard_weekdays(fields[4]) is None:
        raise _fail(
            f"bad cron expression {value!r}: cannot read day-of-week {fields[4]!r}; use "
            "0-7 (0 and 7 are Sunday) or sun-sat, ranges low to high, like 1-5 or mon,wed,fri"
        )
    normalized = normalize_crontab(value)
    try:
        trigger = CronTrigger.from_crontab(normalized, timezone=UTC)
    except ValueError as exc:
        raise _fail(f"bad cron expression {value!r}: {exc}; {_CRON_SHAPE}") from None
    if trigger.get_next_fire_time(None, _CRON_EPOCH) is None:
        raise _fail(
            f"cron expression {value!r} never fires: no date has that day of the month "
            "in those months"
        )
    return normalized


@dataclasses.dataclass(frozen=True)
class PromptFile:
    """A prompt file, read at load time: its resolved path and its text."""

    path: Path
    text: str


def _read_text(path: Path, what: str) -> str:
    """Read UTF-8 text (a BOM is dropped); ``ValueError`` says why not, naming ``what``."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"{what} does not exist") from None
    except IsADirectoryError:
        raise ValueError(f"{what} is a directory, not a file") from None
    except PermissionError:
        raise ValueError(f"{what} is not readable by this user (uid {os.geteuid()})") from None
    except OSError as exc:
        raise ValueError(f"cannot read {what}: {exc.strerror}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ValueError(
            f"{what} is not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line})"
        ) from None


def _prompt_file(value: object, info: ValidationInfo) -> object:
    if isinstance(value, PromptFile):
        return value
    path = _path(value, info)
    try:
        text = _read_text(path, f"prompt file {path}")
    except ValueError as exc:
        note = "" if path.exists() else _note(value)  # where it was looked for, if missing
        raise _fail(f"{exc}{note}") from None
    return PromptFile(path, text)  # empty is fine: the beat is skipped (empty_prompt)


def _active_hours(value: str) -> str:
    try:
        return str(ActiveHours.parse(value))
    except ValueError as exc:
        raise _fail(str(exc)) from None


def _url(value: str) -> str:
    scheme, _, rest = value.partition("://")
    if scheme not in ("http", "https") or not rest.split("/")[0]:
        raise _fail(f"bad url {value!r}: expected http://host[:port]/path or https://...")
    return value


def _file_sink_path(value: object, info: ValidationInfo) -> Path:
    path = _path(value, info)
    if not path.parent.is_dir():
        raise _fail(f"directory {path.parent} does not exist{_note(value)}")
    if path.is_dir():
        raise _fail(f"{path} is a directory; expected a file to append to")
    return path


def _sink_name(value: str) -> str:
    if not JOB_NAME_PATTERN.fullmatch(value):
        raise _fail(f"bad sink name {json.dumps(value)}: use 1 to 64 letters, digits, '_' or '-'")
    return value


ConfigPath = Annotated[Path, BeforeValidator(_path)]
DataDirectory = Annotated[Path, BeforeValidator(_creatable_directory)]
Directory = Annotated[Path, BeforeValidator(_directory)]
Duration = Annotated[timedelta, BeforeValidator(_duration)]
Text = Annotated[str, AfterValidator(_not_blank)]
Interval = Annotated[Duration, _at_least(_MIN_EVERY, "heartbeats must be at least 1s apart")]
Timeout = Annotated[Duration, _at_least(_MIN_TURN_TIMEOUT, "a turn needs at least 1s")]
FsyncPolicy = Literal["always", "turn", "never"]
LogFormat = Literal["json", "console"]
InterruptedPolicy = Literal["replay", "continue", "drop"]
CatchUpPolicy = Literal["skip", "once"]
SinkType = Literal["stdout", "file", "command", "webhook"]
Money = Annotated[float, Field(gt=0)]
PermissionMode = Literal["default", "acceptEdits", "plan", "bypassPermissions"]

_MODEL_CONFIG = ConfigDict(extra="forbid", strict=True, frozen=True)


# ---------------------------------------------------------------- models


class DaemonConfig(BaseModel):
    """The ``[daemon]`` table. Every key has a usable default."""

    model_config = _MODEL_CONFIG

    state_dir: DataDirectory = Path("/var/lib/vigil")
    runtime_dir: DataDirectory = Path("/run/vigil")
    key_file: ConfigPath = Path("/etc/vigil/vigil.key")
    fsync: FsyncPolicy = "turn"
    log_format: LogFormat = "json"
    turn_timeout: Timeout = timedelta(minutes=10)
    drain_grace: Duration = timedelta(seconds=30)
    model_max_retries: Annotated[int, Field(ge=0)] = 1
    mirror_path: ConfigPath | None = None
    # The client pool: each connected client is a CLI process of about 250 MB. Eight
    # live clients (~2 GB) and four turns at once suit a 2-core, 24 GB machine.
    max_live_clients: Annotated[int, Field(ge=1)] = 8
    max_concurrent_turns: Annotated[int, Field(ge=1)] = 4
    client_idle_timeout: Annotated[
        Duration, _at_least(timedelta(seconds=1), "a client needs at least 1s to be useful")
    ] = timedelta(minutes=5)

    @property
    def mirror_file(self) -> Path:
        """The derived SQLite mirror: ``mirror_path``, else ``runtime_dir/mirror.sqlite3``."""
        return self.mirror_path or self.runtime_dir / "mirror.sqlite3"

    @model_validator(mode="after")
    def _separate_dirs(self) -> DaemonConfig:
        if self.state_dir == self.runtime_dir:
            raise _fail(
                "must differ from state_dir: the runtime directory is wiped at reboot",
                loc=("runtime_dir",),
            )
        if self.state_dir.is_relative_to(self.runtime_dir):
            raise _fail(
                f"must not be inside runtime_dir {self.runtime_dir}, which is wiped at "
                "reboot; journals would be lost",
                loc=("state_dir",),
            )
        if self.max_concurrent_turns > self.max_live_clients:
            raise _fail(
                f"{self.max_concurrent_turns} is more than max_live_clients "
                f"({self.max_live_clients}): every running turn needs a live client",
                loc=("max_concurrent_turns",),
            )
        return self


_SINK_KEYS: dict[str, tuple[set[str], set[str]]] = {
    # type: (required keys, allowed keys besides the common ones)
    "stdout": (set(), set()),
    "file": ({"path"}, {"path"}),
    "command": ({"command"}, {"command", "timeout"}),
    "webhook": ({"url"}, {"url", "headers", "timeout"}),
}
_SINK_COMMON = {"type", "name", "retries", "retry_delay"}
_DEFAULT_SINK_TIMEOUT = timedelta(seconds=10)


class SinkConfig(BaseModel):
    """One ``[[heartbeat.sink]]``: where a job's non-quiet replies are delivered."""

    model_config = _MODEL_CONFIG

    type: SinkType
    name: Annotated[str, AfterValidator(_sink_name)] | None = None
    path: Annotated[Path, BeforeValidator(_file_sink_path)] | None = None
    command: Annotated[list[Text], Field(min_length=1)] | None = None
    url: Annotated[str, AfterValidator(_url)] | None = None
    headers: dict[str, str] | None = None
    timeout: Annotated[Duration, _at_least(timedelta(milliseconds=1), "must be positive")] = (
        _DEFAULT_SINK_TIMEOUT
    )
    retries: Annotated[int, Field(ge=0)] = 3
    retry_delay: Duration = timedelta(seconds=5)

    @model_validator(mode="after")
    def _keys_for_type(self) -> SinkConfig:
        required, allowed = _SINK_KEYS[self.type]
        present = {k for k in self.model_fields_set if getattr(self, k) is not None}
        for key in sorted(required - present):
            raise _fail(f"is required for a {self.type} sink", loc=(key,))
        for key in sorted(present - allowed - _SINK_COMMON):
            raise _fail(f"does not apply to a {self.type} sink", loc=(key,))
        return self


def _shape_problems(present: set[str]) -> list[tuple[str, str]]:
    """Rules about which keys a job may combine: (key suffix or "", message) pairs."""
    problems: list[tuple[str, str]] = []
    if "every" in present and "cron" in present:
        problems.append(("", "has both every and cron; set exactly one"))
    elif "every" not in present and "cron" not in present:
        problems.append(("", 'has no schedule; set every = "30m" or cron = "*/15 * * * *"'))
    if "jitter" in present and "every" not in present:
        problems.append(("jitter", "only applies to every schedules, not cron"))
    if "timezone" in present and not present & {"cron", "active_hours", "daily_budget_usd"}:
        problems.append(
            (
                "timezone",
                "only applies to cron schedules, active_hours and daily_budget_usd; "
                "every alone ignores time zones",
            )
        )
    if "idle_backoff" in present and "every" not in present:
        problems.append(("idle_backoff", "only applies to every schedules, not cron"))
    if "idle_backoff_max" in present and "idle_backoff" not in present:
        problems.append(("idle_backoff_max", "needs idle_backoff (after how many quiet beats)"))
    if "prompt" in present and "prompt_file" in present:
        problems.append(("", "has both prompt and prompt_file; set exactly one"))
    elif "prompt" not in present and "prompt_file" not in present:
        problems.append(("", 'has no prompt; set prompt = "..." or prompt_file = "HEARTBEAT.md"'))
    return problems


class HeartbeatConfig(BaseModel):
    """One ``[[heartbeat]]`` job: a schedule, a prompt, and how to run the agent.

    ``cron`` holds the expression with its day-of-week field rewritten as names (see
    :func:`normalize_crontab`), ready for ``CronTrigger.from_crontab(cron, timezone=...)``.
    ``None`` for model/system_prompt/allowed_tools/max_turns means the CLI's default.
    """

    model_config = _MODEL_CONFIG

    name: Annotated[str, AfterValidator(_job_name)]
    every: Interval | None = None
    cron: Annotated[str, AfterValidator(_cron)] | None = None
    timezone: Annotated[str, AfterValidator(_timezone)] = "UTC"
    jitter: Duration | None = None
    prompt: Text | None = None
    prompt_file: Annotated[PromptFile, BeforeValidator(_prompt_file)] | None = None
    cwd: Directory
    on_interrupted: InterruptedPolicy = "replay"
    model: Text | None = None
    system_prompt: Text | None = None
    allowed_tools: list[Text] | None = None
    permission_mode: PermissionMode = "default"
    max_turns: Annotated[int, Field(ge=1)] | None = None
    turn_timeout: Timeout | None = None
    active_hours: Annotated[str, AfterValidator(_active_hours)] | None = None
    catch_up: CatchUpPolicy = "once"
    quiet_token: str = DEFAULT_QUIET_TOKEN
    quiet_max_extra: Annotated[int, Field(ge=0)] = 0
    max_budget_usd: Money | None = None
    daily_budget_usd: Money | None = None
    idle_backoff: Annotated[int, Field(ge=1)] | None = None
    idle_backoff_max: Interval | None = None
    sink: list[SinkConfig] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> HeartbeatConfig:
        present = {key for key in self.model_fields_set if getattr(self, key) is not None}
        problems = _shape_problems(present)
        maximum, every = self.idle_backoff_max, self.every
        if maximum is not None and every is not None and maximum < every:
            problems.append(
                (
                    "idle_backoff_max",
                    f"{format_duration(maximum)} is shorter than every ({format_duration(every)})",
                )
            )
        names = [name for name, _ in self.sinks]
        for name in sorted({n for n in names if names.count(n) > 1}):
            problems.append(("sink", f"two sinks are named {name!r}; give each its own name"))
        if self.jitter is not None and self.every is not None and self.jitter >= self.every:
            problems.append(
                (
                    "jitter",
                    f"{format_duration(self.jitter)} must be shorter than every "
                    f"({format_duration(self.every)})",
                )
            )
        if problems:
            suffix, message = problems[0]
            raise _fail(message, loc=(suffix,) if suffix else ())
        return self

    @property
    def prompt_text(self) -> str:
        """The text each beat sends: ``prompt``, or the contents of ``prompt_file``."""
        if self.prompt_file is not None:
            return self.prompt_file.text
        assert self.prompt is not None  # noqa: S101 -- guaranteed by _consistent
        return self.prompt

    @property
    def prompt_source(self) -> Path | None:
        """The prompt file's resolved path, or None for an inline ``prompt``."""
        return None if self.prompt_file is None else self.prompt_file.path

    @property
    def zone(self) -> zoneinfo.ZoneInfo:
        """``timezone`` as a tzinfo."""
        return zoneinfo.ZoneInfo(self.timezone)

    @property
    def hours(self) -> ActiveHours | None:
        """``active_hours`` parsed (read in :attr:`zone`), or None: all day."""
        return None if self.active_hours is None else ActiveHours.parse(self.active_hours)

    @property
    def quiet_rule(self) -> QuietRule:
        return QuietRule(self.quiet_token, self.quiet_max_extra)

    @property
    def backoff_max(self) -> timedelta:
        """``idle_backoff_max``, else eight times ``every`` (cron jobs: never used)."""
        if self.idle_backoff_max is not None:
            return self.idle_backoff_max
        return (self.every or timedelta(0)) * 8

    @property
    def sinks(self) -> list[tuple[str, SinkConfig]]:
        """(name, sink) pairs; no sink configured means one ``stdout`` sink.

        A sink without ``name`` is named after its type; repeats get ``-2``, ``-3``.
        """
        configured = self.sink or [SinkConfig(type="stdout")]
        named: list[tuple[str, SinkConfig]] = []
        seen: dict[str, int] = {}
        for sink in configured:
            if sink.name is not None:
                named.append((sink.name, sink))
                continue
            seen[sink.type] = seen.get(sink.type, 0) + 1
            count = seen[sink.type]
            named.append((sink.type if count == 1 else f"{sink.type}-{count}", sink))
        return named


def _duplicate_problems(names: Sequence[tuple[int, str]]) -> list[tuple[str, str]]:
    """(name, message) for each name used by more than one job; positions are 1-based."""
    positions: dict[str, list[int]] = {}
    for index, name in names:
        positions.setdefault(name, []).append(index + 1)
    problems = []
    for name, where in positions.items():
        if len(where) > 1:
            listed = ", ".join(f"#{n}" for n in where[:-1]) + f" and #{where[-1]}"
            problems.append(
                (name, f"duplicate job name {name!r}: [[heartbeat]] {listed} both use it")
            )
    return problems


class Config(BaseModel):
    """The whole file: ``[daemon]`` and the ``[[heartbeat]]`` jobs (none is valid: idle)."""

    model_config = _MODEL_CONFIG

    daemon: DaemonConfig = Field(default_factory=DaemonConfig)
    heartbeats: list[HeartbeatConfig] = Field(default_factory=list, alias="heartbeat")

    @model_validator(mode="after")
    def _unique_names(self) -> Config:
        duplicates = _duplicate_problems([(i, job.name) for i, job in enumerate(self.heartbeats)])
        if duplicates:
            name, message = duplicates[0]
            raise _fail(message, loc=("heartbeat", name))
        return self

    def job(self, name: str) -> HeartbeatConfig:
        """The job called ``name``; raises :class:`UnknownJobError` if there is none."""
        for job in self.heartbeats:
            if job.name == name:
                return job
        raise UnknownJobError(name, [job.name for job in self.heartbeats])

    def turn_timeout_for(self, name: str) -> timedelta:
        """The job's own ``turn_timeout``, else ``daemon.turn_timeout``."""
        return self.job(name).turn_timeout or self.daemon.turn_timeout


# ---------------------------------------------------------------- pydantic errors → problems

_TYPE_NAMES = {
    "string_type": "a string",
    "int_type": "an integer",
    "bool_type": "true or false",
    "float_type": "a number",
    "list_type": "an array",
    "dict_type": "a table",
    "model_type": "a table",
    "dataclass_type": "a table",
}


def _model_at(loc: tuple[str | int, ...]) -> type[BaseModel] | None:
    shapes: dict[tuple[str | int, ...], type[BaseModel]] = {(): Config, ("daemon",): DaemonConfig}
    if len(loc) == 2 and loc[0] == "heartbeat" and isinstance(loc[1], int):
        return HeartbeatConfig
    if len(loc) == 4 and loc[0] == "heartbeat" and loc[2] == "sink" and isinstance(loc[3], int):
        return SinkConfig
    return shapes.get(loc)


def _keys_of(model: type[BaseModel]) -> list[str]:
    return [field.alias or name for name, field in model.model_fields.items()]


def _choices(model: type[BaseModel] | None, key: str | int) -> list[str]:
    """The strings a Literal field (possibly optional) accepts, in declaration order."""
    if model is None or not isinstance(key, str) or key not in model.model_fields:
        return []

    def walk(annotation: Any) -> list[str]:
        if isinstance(annotation, str):
            return [annotation]
        return [choice for arg in get_args(annotation) for choice in walk(arg)]

    return walk(model.model_fields[key].annotation)


def _suggest(word: str, options: Sequence[str], *, value: bool = False) -> str:
    """``; did you mean ...?`` for a close match; values are quoted as TOML strings."""
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    if not close:
        return ""
    return f"; did you mean {json.dumps(close[0]) if value else repr(close[0])}?"


def _message(error: Mapping[str, Any]) -> str:  # noqa: PLR0911 -- one return per error kind
    kind: str = error["type"]
    loc: tuple[str | int, ...] = tuple(error["loc"])
    value = error.get("input")
    ctx: Mapping[str, Any] = error.get("ctx") or {}
    parent = _model_at(loc[:-1])
    if kind == "vigil":
        return str(ctx["message"])
    if kind == "extra_forbidden":
        known = _keys_of(parent) if parent else []
        return (
            f"unknown key {str(loc[-1])!r}{_suggest(str(loc[-1]), known)} "
            f"(known keys: {', '.join(known)})"
        )
    if kind == "missing":
        return "is required but missing"
    if kind == "literal_error":
        choices = _choices(parent, loc[-1])
        expected = ", ".join(json.dumps(c) for c in choices) if choices else ctx["expected"]
        hint = _suggest(value, choices, value=True) if isinstance(value, str) else ""
        return f"expected one of {expected}, got {_describe(value)}{hint}"
    if kind == "list_type" and loc == ("heartbeat",):
        return (
            "expected [[heartbeat]] blocks (an array of tables, with double brackets), "
            f"got {_describe(value)}"
        )
    if kind in _TYPE_NAMES:
        hint = ""
        if kind == "int_type" and isinstance(value, str) and value.strip().isdigit():
            hint = "; write the number without quotes"
        return f"expected {_TYPE_NAMES[kind]}, got {_describe(value)}{hint}"
    if kind == "greater_than_equal":
        return f"must be at least {ctx['ge']}, got {_describe(value)}"
    if kind == "greater_than":
        return f"must be more than {ctx['gt']}, got {_describe(value)}"
    if kind == "too_short" and isinstance(value, list):
        return "is an empty array; expected at least one item"
    return str(error["msg"])


def _render_key(loc: Sequence[str | int], raw: Mapping[str, Any]) -> str:
    """Dotted key for ``loc``; a job index becomes its name when the raw name is usable."""
    text = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            name = _raw_job_name(raw, part) if tuple(loc[:i]) == ("heartbeat",) else None
            text += f"[{name}]" if name else f"[#{part + 1}]"
        elif i == 1 and loc[0] == "heartbeat":
            text += f"[{part}]"  # a job addressed by name (duplicates)
        else:
            bare = re.fullmatch(r"[A-Za-z0-9_-]+", part)
            text += ("." if text else "") + (part if bare else json.dumps(part))
    return text


def _raw_jobs(raw: Mapping[str, Any]) -> list[Any]:
    jobs = raw.get("heartbeat")
    return jobs if isinstance(jobs, list) else []


def _raw_job_name(raw: Mapping[str, Any], index: int) -> str | None:
    jobs = _raw_jobs(raw)
    job = jobs[index] if index < len(jobs) else None
    name = job.get("name") if isinstance(job, Mapping) else None
    if isinstance(name, str) and JOB_NAME_PATTERN.fullmatch(name):
        return name
    return None


def _problems(exc: ValidationError, raw: Mapping[str, Any]) -> list[ConfigProblem]:
    """Translate pydantic's errors, then add the cross-key rules it could not reach.

    Cross-key rules run in pydantic only once every single key is valid, and stop at the
    first failure; re-checking them on the raw data reports everything in one go.
    """
    found: list[tuple[tuple[int, int], ConfigProblem]] = []

    def add(loc: tuple[str | int, ...], message: str) -> None:
        job = loc[1] if len(loc) >= 2 and loc[0] == "heartbeat" else None
        # Sections first, then jobs in file order, then duplicate names.
        order = (1, job) if isinstance(job, int) else (2, 0) if job else (0, 0)
        found.append((order, ConfigProblem(_render_key(loc, raw), message)))

    for error in exc.errors():
        add(tuple(error["loc"]) + tuple((error.get("ctx") or {}).get("loc", ())), _message(error))
    jobs = _raw_jobs(raw)
    failed = sorted({order[1] for order, _ in found if order[0] == 1})
    for index in failed:
        if index < len(jobs) and isinstance(jobs[index], Mapping):
            for suffix, message in _shape_problems(set(jobs[index])):
                add(("heartbeat", index, suffix) if suffix else ("heartbeat", index), message)
    named = [(i, _raw_job_name(raw, i)) for i in range(len(jobs))]
    for name, message in _duplicate_problems([(i, n) for i, n in named if n is not None]):
        add(("heartbeat", name), message)
    found.sort(key=lambda item: item[0])
    return list(dict.fromkeys(problem for _, problem in found))  # drop repeats, keep order


# ---------------------------------------------------------------- loading


def config_from_dict(data: Mapping[str, Any], *, base_dir: Path, source: Path) -> Config:
    """Validate already-parsed TOML ``data``; relative paths resolve against ``base_dir``.

    ``source`` only names the file in a :class:`ConfigError`.
    """
    try:
        return Config.model_validate(data, context={"base_dir": base_dir.absolute()})
    except ValidationError as exc:
        raise ConfigError(source, _problems(exc, data)) from None


_TOML_POSITION = re.compile(r"\s*\(at line (?P<line>\d+), column (?P<column>\d+)\)$")


def _syntax_problem(exc: tomllib.TOMLDecodeError) -> ConfigProblem:
    text = str(exc)
    match = _TOML_POSITION.search(text)
    if match is None:
        return ConfigProblem("", f"TOML syntax error: {text}")
    line, column = int(match["line"]), int(match["column"])
    reason = text[: match.start()]
    return ConfigProblem(
        "", f"TOML syntax error at line {line}, column {column}: {reason}", line, column
    )


def load_config(path: Path) -> Config:
    """Read and validate the config file at ``path``; raises :class:`ConfigError`."""
    try:
        text = _read_text(path, "config file")
    except ValueError as exc:
        raise ConfigError(path, [ConfigProblem("", str(exc))]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, [_syntax_problem(exc)]) from None
    return config_from_dict(data, base_dir=path.absolute().parent, source=path)


def default_config_path() -> Path:
    """``$VIGIL_CONFIG`` when set and not empty, else ``/etc/vigil/vigil.toml``."""
    configured = os.environ.get("VIGIL_CONFIG")
    return Path(configured) if configured else DEFAULT_CONFIG_PATH
