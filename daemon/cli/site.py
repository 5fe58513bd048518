"""What the operator's commands share: the site's layout and keyring from the config,
the check that a command writing vigil's files runs as their owner, JSON output."""

from __future__ import annotations

import json
import os
import pwd
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from daemon.config.model import Config
from daemon.errors import VigilError
from daemon.journal.keyring import Keyring, resolve_key_path
from daemon.layout import Layout


class WrongUserError(VigilError):
    """A command that writes vigil's files runs as another user than their owner."""

    exit_code = 2

    def __init__(self, path: Path, owner: int, me: int) -> None:
        self.path = path
        self.owner = owner
        self.me = me
        name = user_name(owner)
        super().__init__(
            f"{path} belongs to {name} (uid {owner}) but this runs as uid {me}; files it "
            f"creates would lock the daemon out. Run it as that user: sudo -u {name} vigil ..."
        )


def layout_of(config: Config) -> Layout:
    return Layout(config.daemon.state_dir, config.daemon.runtime_dir)


def keyring_of(config: Config) -> Keyring:
    return Keyring.load(resolve_key_path(config.daemon.key_file))


def check_owner(path: Path) -> None:
    try:
        owner = path.stat().st_uid
    except FileNotFoundError:
        return
    me = os.geteuid()
    if owner != me:
        raise WrongUserError(path, owner, me)


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")


P = TypeVar("P")


@contextmanager
def progress_bar(
    description: str, fields: Callable[[P], tuple[int, int, int, str]], *, enabled: bool
) -> Iterator[Callable[[P], None] | None]:
    """A transient progress bar on stderr for long work (rebuild, migrate): ``fields``
    turns a progress report into (total, done, records, description). None when off."""
    if not enabled:
        yield None
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[records]:,} records"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=None, records=0)

        def update(progress: P) -> None:
            total, done, records, now = fields(progress)
            bar.update(task, total=max(total, 1), completed=done, records=records, description=now)

        yield update
