"""What the operator's commands share: the site's layout and keyring from the config,
the check that a command writing vigil's files runs as their owner, JSON output."""

from __future__ import annotations

import json
import os
import pwd
import sys
from pathlib import Path
from typing import Any

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
