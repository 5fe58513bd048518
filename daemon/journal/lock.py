"""One daemon per state directory, and per runtime directory: an exclusive ``flock``
on ``.vigil.lock`` in each, held for the process's life."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable
from pathlib import Path

from daemon.errors import RuntimeDirBusyError, StateLockedError, VigilError

LOCK_NAME = ".vigil.lock"


class StateLock:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
            os.close(fd)
            raise self._refusal(f"pid {holder}" if holder else "") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        self._fd = fd

    def _refusal(self, holder: str) -> VigilError:
        return StateLockedError(self.path, holder)

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


class RuntimeLock(StateLock):
    """One daemon per runtime directory too: two daemons with their own state
    directories must not share a control socket, a mirror or the CLI's files."""

    def __init__(self, runtime_dir: Path) -> None:
        super().__init__(runtime_dir)
        self.runtime_dir = runtime_dir

    def _refusal(self, holder: str) -> VigilError:
        return RuntimeDirBusyError(self.runtime_dir, holder)


def daemon_running(state_dir: Path, locks: Callable[[], str] | None = None) -> bool:
    """Whether a process holds the state directory's lock (read from ``/proc/locks``,
    so nothing is locked by asking; elsewhere a brief shared-lock probe)."""
    lock = state_dir / LOCK_NAME
    try:
        st = lock.stat()
    except FileNotFoundError:
        return False
    try:
        text = locks() if locks is not None else Path("/proc/locks").read_text()
    except OSError:
        return _probe(lock)
    ident = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in text.splitlines():
        parts = line.split()
        if len(parts) > 5 and parts[1] == "FLOCK" and parts[5] == ident:
            return True
    return False


def _probe(lock: Path) -> bool:
    fd = os.open(lock, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
