"""Processes seen through /proc: a daemon's descendants, and the orphans it leaves.

A SIGKILLed daemon's CLI children are reparented to init and should exit on their own
shortly after; :class:`OrphanWatch` notes when each one does, and at the end kills (by
PID, after checking the start time against PID reuse) those still alive. Linux only.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "Orphan",
    "OrphanWatch",
    "ProcStat",
    "cmdline",
    "descendants",
    "proc_stat",
    "stop_process",
]


@dataclass(frozen=True)
class ProcStat:
    state: str
    ppid: int
    start_ticks: int


def proc_stat(pid: int) -> ProcStat | None:
    """State, parent and start time (clock ticks after boot) of ``pid``; None once gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return ProcStat(fields[0], int(fields[1]), int(fields[19]))


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (from each thread's /proc ``children`` list)."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                kids = Path(f"/proc/{parent}/task/{task}/children").read_text().split()
            except OSError:
                continue
            found += map(int, kids)
            todo += map(int, kids)
    return found


def cmdline(pid: int) -> str:
    """The command line of ``pid``, arguments joined by spaces ("" once gone)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode("utf-8", "replace").strip()


def stop_process(proc: subprocess.Popen[str] | subprocess.Popen[bytes], timeout: float) -> int:
    """SIGTERM ``proc`` (by its PID) and wait; SIGKILL it if it is still there after
    ``timeout`` seconds. Returns its exit status."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
    return proc.wait(timeout=timeout)


@dataclass
class Orphan:
    """A process a SIGKILLed daemon left behind (reparented to init)."""

    pid: int
    start_ticks: int
    command: str
    parent_killed_at: float
    exited_at: float | None = None

    def alive(self) -> bool:
        stat = proc_stat(self.pid)
        return stat is not None and stat.start_ticks == self.start_ticks and stat.state != "Z"

    @property
    def lifetime(self) -> float | None:
        return None if self.exited_at is None else self.exited_at - self.parent_killed_at


class OrphanWatch:
    """Polls the orphans of killed daemons every 50 ms and notes when each one exits."""

    def __init__(self) -> None:
        self.orphans: list[Orphan] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="orphan-watch", daemon=True)
        self._thread.start()

    def track(self, pids: Sequence[int], killed_at: float) -> list[Orphan]:
        new = []
        for pid in pids:
            stat = proc_stat(pid)
            if stat is not None and stat.state != "Z":
                new.append(Orphan(pid, stat.start_ticks, cmdline(pid), killed_at))
        with self._lock:
            self.orphans += new
        return new

    def _poll(self) -> None:
        while not self._stop.wait(0.05):
            self.living()

    def living(self) -> list[Orphan]:
        with self._lock:
            for orphan in self.orphans:
                if orphan.exited_at is None and not orphan.alive():
                    orphan.exited_at = time.monotonic()
            return [o for o in self.orphans if o.exited_at is None]

    def wait_all_gone(self, timeout: float) -> list[Orphan]:
        """Wait until every orphan exited on its own; returns those still alive."""
        deadline = time.monotonic() + timeout
        while self.living() and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.living()

    def close(self) -> list[Orphan]:
        """Stop watching; SIGKILL (by PID) the orphans still alive; return them."""
        survivors = self.living()
        for orphan in survivors:
            if orphan.alive():  # the start time check guards against PID reuse
                os.kill(orphan.pid, signal.SIGKILL)
        self._stop.set()
        self._thread.join(timeout=2)
        return survivors
