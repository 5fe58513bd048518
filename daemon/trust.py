"""Directories and files vigil trusts, checked like PostgreSQL's data directory and
ssh's StrictModes, before anything is read from them or written to them.

* ``state_dir`` and ``runtime_dir`` (journals; the CLI's plaintext transcripts, the
  mirror, the control socket) must be owned by this user and writable by no one else.
  One that others may read or enter is tightened to 0700 (logged), not refused: what
  it holds is owner-only already, and that is the state a fresh install has.
* the key file and the config file's directory may also be owned by root (``/etc``),
  or, under systemd's ``PrivateUsers=``, by the overflow user that stands for root.
* ``runtime_dir`` inside ``state_dir`` (or a symlink into it) is refused: the runtime
  directory holds plaintext and is wiped, the state directory is kept.
* ``runtime_dir`` holds files only this daemon made: a mirror or a control socket
  that is a symlink, not a plain file/socket, or owned by someone else, is never used.

Each problem is an :class:`UntrustedPathError` (exit 2) saying what to run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from collections.abc import Iterable
from pathlib import Path

from daemon.errors import UntrustedPathError

_OTHERS_WRITE = stat.S_IWGRP | stat.S_IWOTH
_OTHERS_ANY = 0o077
_IDENTITY_MAP = ("0", "0", "4294967295")


def _overflow_uid() -> int | None:
    """The uid unmapped owners show as inside a user namespace (systemd's
    ``PrivateUsers=``); None outside one."""
    try:
        fields = Path("/proc/self/uid_map").read_text().split()
        if tuple(fields) == _IDENTITY_MAP:
            return None
        return int(Path("/proc/sys/kernel/overflowuid").read_text())
    except (OSError, ValueError):
        return None


def system_owners() -> frozenset[int]:
    """Owners accepted for configuration (the key file, the config directory)."""
    owners = {os.geteuid(), 0}
    overflow = _overflow_uid()
    if overflow is not None:
        owners.add(overflow)
    return frozenset(owners)


def _owner_problem(st: os.stat_result, owners: Iterable[int]) -> str | None:
    if st.st_uid in owners:
        return None
    return f"is owned by uid {st.st_uid}, not by this user (uid {os.geteuid()})"


def check_dir(path: Path, key: str, *, owners: Iterable[int], config: Path | None) -> None:
    """Refuse an existing directory owned by another user or writable by others."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return  # created owner-only (0700) by vigil itself
    problem = _owner_problem(st, owners)
    if problem is None and st.st_mode & _OTHERS_WRITE:
        mode = stat.S_IMODE(st.st_mode)
        problem = f"is writable by group or others (mode {mode:04o}); run `chmod go-w {path}`"
    if problem is not None:
        raise UntrustedPathError(path, key, problem, config)


def tighten(path: Path) -> int | None:
    """Make an existing directory owner-only; its old mode if it was changed."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return None
    if not mode & _OTHERS_ANY:
        return None
    os.chmod(path, mode & ~_OTHERS_ANY)
    return mode


def check_data_dirs(state_dir: Path, runtime_dir: Path, config: Path | None) -> None:
    """The checks on ``state_dir`` and ``runtime_dir`` a start makes before creating them."""
    me = (os.geteuid(),)
    check_dir(state_dir, "daemon.state_dir", owners=me, config=config)
    check_dir(runtime_dir, "daemon.runtime_dir", owners=me, config=config)
    state, runtime = state_dir.resolve(), runtime_dir.resolve()
    if runtime == state or runtime.is_relative_to(state):
        raise UntrustedPathError(
            runtime_dir,
            "daemon.runtime_dir",
            f"is inside state_dir {state_dir}"
            + (f" (it resolves to {runtime})" if runtime != runtime_dir else "")
            + ": the runtime directory holds plaintext and is wiped, the state directory "
            "is kept; use a directory of its own (/run/vigil under systemd)",
            config,
        )


def check_config_dir(config: Path) -> None:
    """The config file's directory: writable only by its owner, this user or root."""
    check_dir(config.absolute().parent, "config directory", owners=system_owners(), config=None)


def secrets_exposed(config_file: Path, holds_secrets: bool) -> str | None:
    """A warning when a config file holding webhook URLs or headers (tokens) is
    readable by group or others; None otherwise."""
    if not holds_secrets:
        return None
    try:
        mode = stat.S_IMODE(config_file.stat().st_mode)
    except OSError:
        return None
    if not mode & _OTHERS_ANY:
        return None
    return (
        f"{config_file} holds webhook URLs or headers (tokens) and is readable by group or "
        f"others (mode {mode:04o}); run `chmod 600 {config_file}`"
    )


def own_file(path: Path, kind: int) -> bool:
    """Whether ``path`` is a ``kind`` (``stat.S_IFREG``, ``S_IFSOCK``) this user owns
    and only this user can write: something vigil made, not something planted."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return False
    return (
        stat.S_IFMT(st.st_mode) == kind
        and st.st_uid == os.geteuid()
        and not st.st_mode & _OTHERS_WRITE
    )


def remove_planted(path: Path, kind: int) -> bool:
    """Remove whatever is at ``path`` unless it is our own ``kind``; whether it did."""
    if not os.path.lexists(path) or own_file(path, kind):
        return False
    with contextlib.suppress(FileNotFoundError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    return True
