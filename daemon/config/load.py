"""Loading: TOML syntax, pydantic's errors turned into :class:`ConfigProblem` lines with
dotted keys and suggestions, and the default path."""

from __future__ import annotations

import difflib
import json
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, get_args

from pydantic import (
    BaseModel,
    ValidationError,
)

from daemon.config.cluster import ClusterConfig
from daemon.config.fields import DEFAULT_CONFIG_PATH, JOB_NAME_PATTERN, _describe, _read_text
from daemon.config.model import (
    Config,
    DaemonConfig,
    HeartbeatConfig,
    SinkConfig,
    _duplicate_problems,
    _shape_problems,
)
from daemon.config.problems import ConfigError, ConfigProblem

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
    shapes: dict[tuple[str | int, ...], type[BaseModel]] = {
        (): Config,
        ("daemon",): DaemonConfig,
        ("cluster",): ClusterConfig,
    }
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
        context = {
            "base_dir": base_dir.absolute(),
            # In a cluster a job's cwd may exist on some nodes only: those take it.
            "cwd_may_be_absent": isinstance(data.get("cluster"), Mapping),
        }
        return Config.model_validate(data, context=context)
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
