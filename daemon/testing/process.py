"""One ``vigil run`` process, its JSON log read line by line as it comes.

A reader thread parses each stdout line (one JSON object; anything else is kept as
``{"event": "<not json>", "raw": ...}``) and wakes whoever waits for a line. Waiting is
by predicate, from a position in the log, with a timeout; the daemon can be SIGKILLed
from the reader thread itself the moment a line matches (:meth:`Daemon.kill_on`), with
no wake-up latency of the caller's thread. Its CLI children are noted before any
SIGKILL, as orphans for :class:`~daemon.testing.proctree.OrphanWatch`.

Errors are :class:`HarnessError`, an ``AssertionError``: in a test they read as a
failed check, with the last log lines attached.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from daemon.testing.proctree import Orphan, OrphanWatch, descendants

__all__ = ["Daemon", "DaemonExitedError", "HarnessError", "LogLine", "Predicate"]

LogLine = dict[str, Any]
Predicate = Callable[[LogLine], bool]


class HarnessError(AssertionError):
    """A process did not do what the harness waited for."""


class DaemonExitedError(HarnessError):
    def __init__(self, what: str, returncode: int | None, tail: str) -> None:
        self.returncode = returncode
        super().__init__(f"daemon exited (rc={returncode}) before {what}\n{tail}")


class Daemon:
    """One ``vigil run`` subprocess (in its own session, so terminal signals never reach
    it). ``log_path``: every stdout line is also written there as it came; ``keep``:
    only lines it accepts are kept in :attr:`lines` (a long benchmark keeps little)."""

    def __init__(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        cwd: Path,
        orphans: OrphanWatch,
        *,
        log_path: Path | None = None,
        keep: Predicate | None = None,
    ) -> None:
        self.orphans = orphans
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            list(argv),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env=dict(env),
            cwd=cwd,
            text=True,
            bufsize=1,
            start_new_session=True,
        )
        self.pid = self.proc.pid
        self.lines: list[LogLine] = []
        self.received: list[float] = []  # monotonic arrival time of each line
        self.stderr: list[str] = []
        self.killed_orphans: list[Orphan] = []
        self._keep = keep
        self._log = log_path.open("w", encoding="utf-8") if log_path is not None else None
        self._cond = threading.Condition()
        self._eof = False
        self._kill_on: Predicate | None = None
        self._kill: tuple[LogLine, list[int], float] | None = None
        if self.proc.stdout is None or self.proc.stderr is None:
            raise RuntimeError("Popen without pipes")  # never: both are PIPE
        self._readers = [
            threading.Thread(target=self._read_stdout, args=(self.proc.stdout,), daemon=True),
            threading.Thread(target=self._read_stderr, args=(self.proc.stderr,), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read_stdout(self, stream: IO[str]) -> None:
        for raw in stream:
            if self._log is not None:
                self._log.write(raw)
            try:
                parsed = json.loads(raw)
            except ValueError:
                parsed = None
            line: LogLine = (
                parsed if isinstance(parsed, dict) else {"event": "<not json>", "raw": raw}
            )
            with self._cond:
                if self._kill_on is not None and self._kill_on(line):
                    self._kill_on = None
                    kids = descendants(self.pid)
                    os.kill(self.pid, signal.SIGKILL)
                    self._kill = (line, kids, time.monotonic())
                if self._keep is None or self._keep(line):
                    self.lines.append(line)
                    self.received.append(time.monotonic())
                self._cond.notify_all()
        if self._log is not None:
            self._log.close()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def _read_stderr(self, stream: IO[str]) -> None:
        for raw in stream:
            self.stderr.append(raw.rstrip("\n"))

    # --- reading the log ---------------------------------------------------------------

    def tail(self, count: int = 25) -> str:
        with self._cond:
            lines = [json.dumps(x)[:300] for x in self.lines[-count:]]
        return "\n".join(["-- last log lines:", *lines, "-- stderr:", *self.stderr[-15:]])

    def find(
        self, predicate: Predicate, timeout: float = 30.0, *, start: int = 0, what: str = ""
    ) -> int:
        """The index of the first log line from ``start`` on that satisfies ``predicate``
        (which sees every line in order, once), waiting up to ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        index = start
        with self._cond:
            while True:
                while index < len(self.lines):
                    index += 1
                    if predicate(self.lines[index - 1]):
                        return index - 1
                if self._eof:
                    raise DaemonExitedError(what or "the awaited line", self.proc.poll(), "")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
        raise HarnessError(f"no log line for {what or predicate} within {timeout}s\n{self.tail()}")

    def wait_for(
        self, predicate: Predicate, timeout: float = 30.0, *, start: int = 0, what: str = ""
    ) -> LogLine:
        """The first log line from index ``start`` on that satisfies ``predicate``."""
        return self.lines[self.find(predicate, timeout, start=start, what=what)]

    def wait_event(
        self, event: str, timeout: float = 30.0, *, job: str | None = None, start: int = 0
    ) -> LogLine:
        return self.wait_for(
            lambda x: x.get("event") == event and (job is None or x.get("job") == job),
            timeout,
            start=start,
            what=f"event {event!r}" + (f" of job {job!r}" if job else ""),
        )

    def wait_ready(self, timeout: float = 60.0) -> LogLine:
        return self.wait_event("ready", timeout)

    def count(self) -> int:
        with self._cond:
            return len(self.lines)

    def events(self, event: str | None = None, *, job: str | None = None) -> list[LogLine]:
        with self._cond:
            lines = list(self.lines)
        return [
            x
            for x in lines
            if (event is None or x.get("event") == event) and (job is None or x.get("job") == job)
        ]

    # --- ending it ---------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> int:
        """SIGKILL the daemon alone; its CLI children are noted (before the kill) as orphans."""
        kids = descendants(self.pid)
        os.kill(self.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        returncode = self.proc.wait(timeout=10)
        self.killed_orphans = self.orphans.track(kids, killed_at)
        self._join()
        return returncode

    def kill_on(self, predicate: Predicate, timeout: float = 30.0, *, what: str = "") -> LogLine:
        """SIGKILL the daemon from the reader thread the moment a log line read from now
        on satisfies ``predicate`` (no wake-up latency of the caller's thread); returns it."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._kill, self._kill_on = None, predicate
            while self._kill is None:
                remaining = deadline - time.monotonic()
                if self._eof or remaining <= 0:
                    self._kill_on = None
                    raise HarnessError(
                        f"no log line for {what or predicate} within {timeout}s\n{self.tail()}"
                    )
                self._cond.wait(remaining)
            line, kids, killed_at = self._kill
        returncode = self.proc.wait(timeout=10)
        if returncode != -signal.SIGKILL:
            raise HarnessError(f"the daemon exited with {returncode}, not by the SIGKILL")
        self.killed_orphans = self.orphans.track(kids, killed_at)
        self._join()
        return line

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM the daemon (as systemd's KillMode=mixed does) and wait for its exit."""
        os.kill(self.pid, signal.SIGTERM)
        return self.wait(timeout)

    def wait(self, timeout: float) -> int:
        try:
            returncode = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise HarnessError(f"daemon still running after {timeout}s\n{self.tail()}") from None
        self._join()
        return returncode

    def _join(self) -> None:
        for reader in self._readers:
            reader.join(timeout=5)

    def close(self) -> None:
        if self.running:
            self.kill()
        self._join()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
