"""Small file-system primitives with the durability every caller needs."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600


def fsync_dir(path: Path) -> None:
    """fsync a directory so a file created or renamed in it survives a crash."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) as owner-only directories, whatever the umask."""
    missing: list[Path] = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        probe = probe.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            d.mkdir(mode=DIR_MODE)
        os.chmod(d, DIR_MODE)
    if missing:
        fsync_dir(missing[-1].parent)
    return path


def write_file_atomically(
    path: Path, data: bytes, *, mode: int = FILE_MODE, overwrite: bool = True, sync: bool = True
) -> None:
    """Write ``data`` to ``path`` by way of a temporary file, fsync and rename.

    The temporary file is created with ``O_EXCL | O_NOFOLLOW``: a symlink or file
    planted at its (predictable) name is removed, never written through. With
    ``overwrite=False`` an existing ``path`` (a symlink too) is never replaced:
    ``FileExistsError``.
    """
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()  # a leftover of this pid's crash, or planted: never followed
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(tmp, flags, mode)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        if sync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    os.close(fd)
    if overwrite:
        os.replace(tmp, path)
    else:
        try:
            os.link(tmp, path, follow_symlinks=False)  # EEXIST if anything is there
        finally:
            tmp.unlink()
    if sync:
        fsync_dir(path.parent)
