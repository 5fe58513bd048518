"""Configuration problems: each with its dotted key, all reported at once."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from daemon.errors import VigilError

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
