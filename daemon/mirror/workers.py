"""Worker processes that fold journals into mirror rows for a full rebuild.

Each worker is a fresh interpreter (``python -I -c``, the parent's ``sys.path``) that
imports only ``daemon.mirror.rows`` and what it needs: not the parent's ``__main__``,
which ``multiprocessing``'s spawn would import again in every worker (for the ``vigil``
CLI that is the whole daemon, seconds of start-up), and no fork of a process that may
run threads. A worker gets the keyring once, then jobs ``(index, path, name, limit)``
over a socket pair, and answers each with ``(index, ConvRows)``, or ``(index, None)``
when the journal could not be folded: the parent then folds that one itself, to raise
the error with its own type. Results come back in job order; at most ``ahead`` jobs
are out at once, so memory stays bounded when inserting is slower than folding.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass
from multiprocessing import Pipe
from multiprocessing.connection import Connection, wait
from pathlib import Path
from types import TracebackType

from daemon.errors import VigilError
from daemon.journal.keyring import KeyEntry, Keyring
from daemon.mirror.rows import ConvRows, fold_journal

Job = tuple[Path, str, int | None]  # journal, conversation, last sequence to fold
PER_WORKER = 2  # jobs queued at a worker, so it never waits for the next one
_BOOT = (
    "import sys; sys.path[:] = sys.argv[2:]; "
    "import daemon.mirror.workers as w; w.serve(int(sys.argv[1]))"
)
_STOP_WAIT_S = 10.0


class RebuildWorkerError(VigilError):
    """A rebuild worker process died (killed, out of memory)."""

    def __init__(self, pid: int, code: int | None) -> None:
        self.pid = pid
        self.code = code
        super().__init__(
            f"rebuild worker {pid} exited unexpectedly (code {code}); the mirror was not "
            "changed; run `vigil rebuild` again, or with --workers 1"
        )


@dataclass
class _Worker:
    process: subprocess.Popen[bytes]
    conn: Connection
    queued: int = 0


class WorkerPool:
    """``workers`` processes holding ``entries``; use as a context manager."""

    def __init__(self, entries: list[KeyEntry], workers: int) -> None:
        self._workers: list[_Worker] = []
        try:
            for _ in range(workers):
                self._workers.append(_start(entries))
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def pids(self) -> list[int]:
        return [w.process.pid for w in self._workers]

    def fold(self, jobs: Sequence[Job], ahead: int) -> Iterator[ConvRows | None]:
        """Each job's rows in job order (None: the worker could not fold it). Every
        worker is kept busy while the caller uses a result, up to ``ahead`` jobs past
        the one it waits for."""
        done: dict[int, ConvRows | None] = {}
        sent = 0
        for index in range(len(jobs)):
            while True:
                self._receive(done, 0)  # frees queue slots
                while sent < min(len(jobs), index + max(ahead, 1)):
                    w = min(self._workers, key=lambda w: w.queued)
                    if w.queued >= PER_WORKER:
                        break
                    path, name, limit = jobs[sent]
                    try:
                        w.conn.send((sent, str(path), name, limit))
                    except OSError:  # BrokenPipeError, ConnectionResetError
                        raise _died(w) from None
                    w.queued += 1
                    sent += 1
                if index in done:
                    break
                self._receive(done, None)
            yield done.pop(index)

    def _receive(self, done: dict[int, ConvRows | None], timeout: float | None) -> None:
        """The results that are ready (with ``timeout`` None: at least one)."""
        busy = {w.conn: w for w in self._workers if w.queued}
        for conn in wait(list(busy), timeout) if busy else []:
            assert isinstance(conn, Connection)  # noqa: S101  # narrows wait()'s type
            w = busy[conn]
            try:
                index, rows = conn.recv()
            except (EOFError, OSError):
                raise _died(w) from None
            w.queued -= 1
            done[index] = rows

    def close(self) -> None:
        """Stop every worker: asked to when idle, terminated when it still has jobs (the
        caller gave up: an error, Ctrl-C). They also stop when the parent goes away."""
        for w in self._workers:
            if w.queued:
                w.process.terminate()
            else:
                with suppress(OSError):  # already gone
                    w.conn.send(None)
            w.conn.close()
        for w in self._workers:
            try:
                w.process.wait(_STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                w.process.kill()
                w.process.wait()
        self._workers.clear()


def _died(w: _Worker) -> RebuildWorkerError:
    try:
        code = w.process.wait(_STOP_WAIT_S)
    except subprocess.TimeoutExpired:
        code = None
    return RebuildWorkerError(w.process.pid, code)


def _start(entries: list[KeyEntry]) -> _Worker:
    mine, theirs = Pipe()
    try:
        process = subprocess.Popen(  # our own interpreter and code
            [sys.executable, "-I", "-c", _BOOT, str(theirs.fileno()), *sys.path],
            pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )
    except BaseException:
        mine.close()
        raise
    finally:
        theirs.close()
    mine.send(entries)
    return _Worker(process, mine)


def serve(fd: int) -> None:
    """A worker's life: the keyring, then jobs until ``None`` or the parent is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    conn = Connection(fd)
    try:
        keyring = Keyring(conn.recv())
        while (job := conn.recv()) is not None:
            index, path, name, limit = job
            try:
                rows: ConvRows | None = fold_journal(Path(path), name, keyring, limit)
            except Exception:  # the parent folds it again and raises it
                rows = None
            conn.send((index, rows))
    except (EOFError, BrokenPipeError):
        pass  # the parent went away
    finally:
        conn.close()
