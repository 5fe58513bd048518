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

import zoneinfo
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Annotated

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    Field,
    model_validator,
)

from daemon.config.cluster import ClusterConfig
from daemon.config.cron import _cron
from daemon.config.fields import (
    _MODEL_CONFIG,
    CatchUpPolicy,
    ConfigPath,
    DataDirectory,
    Directory,
    Duration,
    FsyncPolicy,
    InterruptedPolicy,
    Interval,
    LogFormat,
    Metrics,
    Money,
    PermissionMode,
    PromptFile,
    SinkType,
    Text,
    Timeout,
    _active_hours,
    _at_least,
    _fail,
    _file_sink_path,
    _headers,
    _job_name,
    _prompt_file,
    _sink_name,
    _timezone,
    _url,
    prompt_size_problem,
)
from daemon.durations import format_duration
from daemon.errors import UnknownJobError
from jobs.context import MAX_CONTEXT_LIMIT, MIN_CONTEXT_LIMIT, limit_problem
from jobs.hours import ActiveHours
from jobs.quiet import DEFAULT_QUIET_TOKEN, QuietRule

# ---------------------------------------------------------------- models


class DaemonConfig(BaseModel):
    """The ``[daemon]`` table. Every key has a usable default."""

    model_config = _MODEL_CONFIG

    state_dir: DataDirectory = Path("/var/lib/vigil")
    runtime_dir: DataDirectory = Path("/run/vigil")
    key_file: ConfigPath = Path("/etc/vigil/vigil.key")
    fsync: FsyncPolicy = "turn"
    log_format: LogFormat = "json"
    # Conversation text (prompts, deltas, replies) in the log lines: off, because under
    # systemd the log is journald, on disk in plaintext. `vigil tail -f` shows it.
    log_content: bool = False
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
    # Prometheus metrics on a loopback address or a Unix socket; off when unset.
    metrics: Metrics | None = None

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
        if self.runtime_dir.is_relative_to(self.state_dir):
            raise _fail(
                f"must not be inside state_dir {self.state_dir}: the runtime directory holds "
                "plaintext and is wiped, the state directory is kept",
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
    headers: Annotated[dict[str, str], AfterValidator(_headers)] | None = None
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


def _context_limit(value: int) -> int:
    problem = limit_problem(value)
    if problem is not None:
        raise _fail(
            f"{problem} (context_limit is a number of tokens, "
            f"{MIN_CONTEXT_LIMIT} to {MAX_CONTEXT_LIMIT})"
        )
    return value


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
    context_limit: Annotated[int, AfterValidator(_context_limit)] | None = None
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
    # After this many failed beats in a row the alert sinks hear of it, once.
    alert_after: Annotated[int, Field(ge=1)] = 5
    auto_pause_after: Annotated[int, Field(ge=1)] | None = None
    alert: list[SinkConfig] | None = None

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
        text = self.prompt_file.text if self.prompt_file is not None else self.prompt
        too_big = prompt_size_problem(text or "")
        if too_big is not None:
            problems.append(("prompt_file" if self.prompt_file is not None else "prompt", too_big))
        alerts = [name for name, _ in self.alert_sinks]
        for name in sorted({n for n in alerts if alerts.count(n) > 1}):
            problems.append(
                ("alert", f"two alert sinks are named {name!r}; give each its own name")
            )
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
        return _named(self.sink)

    @property
    def alert_sinks(self) -> list[tuple[str, SinkConfig]]:
        """The ``[[heartbeat.alert]]`` sinks, named like :attr:`sinks`; none configured
        means one ``stdout`` sink (an ``alert`` log line)."""
        return _named(self.alert)


def _named(sinks: list[SinkConfig] | None) -> list[tuple[str, SinkConfig]]:
    configured = sinks or [SinkConfig(type="stdout")]
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
    # Several nodes sharing one PostgreSQL (daemon.config.cluster); None: one node, files.
    cluster: ClusterConfig | None = None

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
