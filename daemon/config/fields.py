"""Field types of the configuration: pydantic validators that say what was expected.

Relative paths resolve against the config file's directory (the validation context's
``base_dir``). Every failure is a :func:`_fail` whose text is shown to the operator.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import json
import os
import re
import stat
import zoneinfo
from collections.abc import Mapping
from datetime import date, time, timedelta
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
)
from pydantic_core import PydanticCustomError

from daemon.durations import format_duration, parse_duration
from jobs.hours import ActiveHours
from jobs.urls import check_header_name, check_header_value, check_url

DEFAULT_CONFIG_PATH = Path("/etc/vigil/vigil.toml")
JOB_NAME_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: A config or prompt file larger than this is refused unread.
MAX_TEXT_FILE_BYTES = 4 * 1024 * 1024
#: The Agent SDK reads the CLI's messages through a 1 MiB buffer, and the CLI echoes a
#: prompt back: a prompt over it (JSON-encoded, as it is sent) fails every beat.
SDK_MESSAGE_BUFFER = 1024 * 1024
MAX_PROMPT_JSON_BYTES = SDK_MESSAGE_BUFFER - 64 * 1024  # room for the message around it
_MIN_EVERY = timedelta(seconds=1)
#: Schedules beyond this overflow the scheduler's date arithmetic (and mean nothing).
MAX_INTERVAL = timedelta(days=366)
_MIN_TURN_TIMEOUT = timedelta(seconds=1)


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
        context = info.context
        if isinstance(context, Mapping) and context.get("cwd_may_be_absent"):
            return path  # a cluster: only nodes where it exists take the job
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


def _at_most(maximum: timedelta, why: str) -> AfterValidator:
    def check(value: timedelta) -> timedelta:
        if value > maximum:
            raise _fail(f"{format_duration(value)} is too long: {why}")
        return value

    return AfterValidator(check)


def prompt_size_problem(text: str) -> str | None:
    """Why a prompt cannot be sent through the SDK, or None."""
    size = len(json.dumps(text))
    if size <= MAX_PROMPT_JSON_BYTES:
        return None
    return (
        f"the prompt is {size} bytes as sent (JSON); the Agent SDK's message buffer is "
        f"{SDK_MESSAGE_BUFFER} bytes, so at most {MAX_PROMPT_JSON_BYTES} fit"
    )


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


@dataclasses.dataclass(frozen=True)
class PromptFile:
    """A prompt file, read at load time: its resolved path and its text."""

    path: Path
    text: str


def _read_text(path: Path, what: str, limit: int = MAX_TEXT_FILE_BYTES) -> str:
    """Read UTF-8 text (a BOM is dropped) from a regular file of at most ``limit``
    bytes; ``ValueError`` says why not, naming ``what``. A FIFO or a device is never
    opened (a read could block forever, or never end)."""
    try:
        st = path.stat()
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(path)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{what} is not a regular file (a FIFO, socket or device)")
        if st.st_size > limit:
            raise ValueError(f"{what} is {st.st_size} bytes; at most {limit} are read")
        with path.open("rb") as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise ValueError(f"{what} is over {limit} bytes; at most {limit} are read")
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
    problem = check_url(value)  # names the URL redacted: its path may hold a token
    if problem is not None:
        raise _fail(problem)
    return value


def _headers(value: dict[str, str]) -> dict[str, str]:
    for name, text in value.items():
        problem = check_header_name(name)
        if problem is not None:
            raise _fail(problem)
        problem = check_header_value(text)  # never quotes a value: it may be a token
        if problem is not None:
            raise _fail(problem, loc=(name,))
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


@dataclasses.dataclass(frozen=True)
class MetricsEndpoint:
    """Where ``/metrics`` is served: a loopback ``host``:``port``, or a Unix socket."""

    host: str | None = None
    port: int | None = None
    path: Path | None = None

    def __str__(self) -> str:
        if self.path is not None:
            return str(self.path)
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"{host}:{self.port}"


def _loopback_host(host: str) -> str:
    if host == "localhost":
        return "127.0.0.1"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise _fail(
            f"metrics host {host!r} is not an IP address; use 127.0.0.1, [::1] or a socket path"
        ) from None
    if not address.is_loopback:
        raise _fail(
            f"metrics address {host} is not loopback: vigil serves metrics only on "
            "127.0.0.0/8, ::1 or a Unix socket (put a proxy in front to expose them)"
        )
    return host


def _metrics(value: object, info: ValidationInfo) -> MetricsEndpoint:
    if isinstance(value, MetricsEndpoint):
        return value
    if not isinstance(value, str):
        raise _fail(f'expected "127.0.0.1:9464" or a socket path, got {_describe(value)}')
    if "/" in value:
        return MetricsEndpoint(path=_path(value, info))
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise _fail(
            f'bad metrics address {value!r}: expected HOST:PORT like "127.0.0.1:9464" '
            "or a Unix socket path"
        )
    return MetricsEndpoint(host=_loopback_host(host.strip("[]")), port=int(port))


ConfigPath = Annotated[Path, BeforeValidator(_path)]
Metrics = Annotated[MetricsEndpoint, BeforeValidator(_metrics)]
DataDirectory = Annotated[Path, BeforeValidator(_creatable_directory)]
Directory = Annotated[Path, BeforeValidator(_directory)]
Duration = Annotated[timedelta, BeforeValidator(_duration)]
Text = Annotated[str, AfterValidator(_not_blank)]
Interval = Annotated[
    Duration,
    _at_least(_MIN_EVERY, "heartbeats must be at least 1s apart"),
    _at_most(MAX_INTERVAL, "heartbeats must be at most 366d apart"),
]
Timeout = Annotated[Duration, _at_least(_MIN_TURN_TIMEOUT, "a turn needs at least 1s")]
FsyncPolicy = Literal["always", "turn", "never"]
LogFormat = Literal["json", "console"]
InterruptedPolicy = Literal["replay", "continue", "drop"]
CatchUpPolicy = Literal["skip", "once"]
SinkType = Literal["stdout", "file", "command", "webhook"]
Money = Annotated[float, Field(gt=0)]
PermissionMode = Literal["default", "acceptEdits", "plan", "bypassPermissions"]

_MODEL_CONFIG = ConfigDict(extra="forbid", strict=True, frozen=True)
