"""Fixtures for the end-to-end tests: a loopback model, a vigil site, daemon processes.

Everything runs for real: ``python -m daemon.cli.main run`` as a subprocess, the SDK and
its bundled CLI inside it, and ``python -m daemon.cli.main dev-model`` as the model on
127.0.0.1. Tests read what an operator reads: the daemon's JSON log lines on stdout,
its exit code, ``vigil history --json``, and the journal itself (decrypted with the
key). Every process a test starts is ended by PID in the fixture's teardown, and so
are CLI processes a SIGKILLed daemon left orphaned (see :class:`OrphanWatch`).
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest

from daemon.config.load import load_config
from daemon.events.heal import ConversationView, fold
from daemon.journal.file import read_events, scan
from daemon.journal.framing import decode_payload
from daemon.journal.keyring import Keyring, generate_key_file
from daemon.ops.history import load_history
from daemon.testing.devmodel import preview

LogLine = dict[str, Any]
Predicate = Callable[[LogLine], bool]

REPLY = re.compile(r'^seen (\d+) user turns; first: "(.*)"; last: "(.*)"$')
MODEL_KEY = "e2e-dev-model-key"
DROPPED_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "VIGIL_CONFIG", "TMPDIR")
DROPPED_PREFIXES = ("ANTHROPIC_", "CLAUDE_", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy")


def vigil_argv(*args: str) -> list[str]:
    """``vigil ARGS`` with the interpreter running the tests (the project's venv)."""
    return [sys.executable, "-m", "daemon.cli.main", *args]


# ---------------------------------------------------------------- replies


@dataclass(frozen=True)
class Seen:
    """The loopback model's reply: how many user turns it was sent, first and last."""

    n: int
    first: str
    last: str


def parse_reply(text: str) -> Seen:
    match = REPLY.match(text)
    assert match, f"not a dev-model echo reply: {text!r}"
    return Seen(int(match.group(1)), match.group(2), match.group(3))


def shown(prompt: str) -> str:
    """How the model quotes a prompt in its reply."""
    return preview(prompt)


# ---------------------------------------------------------------- processes


@dataclass(frozen=True)
class ProcStat:
    state: str
    ppid: int
    start_ticks: int


def proc_stat(pid: int) -> ProcStat | None:
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
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode("utf-8", "replace").strip()


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


class DaemonExitedError(AssertionError):
    def __init__(self, what: str, returncode: int | None, tail: str) -> None:
        self.returncode = returncode
        super().__init__(f"daemon exited (rc={returncode}) before {what}\n{tail}")


class Daemon:
    """One ``vigil run`` subprocess, its stdout parsed line by line by a reader thread."""

    def __init__(
        self, argv: Sequence[str], env: Mapping[str, str], cwd: Path, orphans: OrphanWatch
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
            start_new_session=True,  # signals from the terminal or pytest never reach it
        )
        self.pid = self.proc.pid
        self.lines: list[LogLine] = []
        self.received: list[float] = []  # monotonic arrival time of each line
        self.stderr: list[str] = []
        self.killed_orphans: list[Orphan] = []
        self._cond = threading.Condition()
        self._eof = False
        self._kill_on: Predicate | None = None
        self._kill: tuple[LogLine, list[int], float] | None = None
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._readers = [
            threading.Thread(target=self._read_stdout, args=(self.proc.stdout,), daemon=True),
            threading.Thread(target=self._read_stderr, args=(self.proc.stderr,), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read_stdout(self, stream: IO[str]) -> None:
        for raw in stream:
            try:
                parsed = json.loads(raw)
            except ValueError:
                parsed = None
            line: LogLine = (
                parsed if isinstance(parsed, dict) else {"event": "<not json>", "raw": raw}
            )
            with self._cond:
                self.lines.append(line)
                self.received.append(time.monotonic())
                if self._kill_on is not None and self._kill_on(line):
                    self._kill_on = None
                    kids = descendants(self.pid)
                    os.kill(self.pid, signal.SIGKILL)
                    self._kill = (line, kids, time.monotonic())
                self._cond.notify_all()
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

    def wait_for(
        self, predicate: Predicate, timeout: float = 30.0, *, start: int = 0, what: str = ""
    ) -> LogLine:
        """The first log line from index ``start`` on that satisfies ``predicate``."""
        deadline = time.monotonic() + timeout
        index = start
        with self._cond:
            while True:
                while index < len(self.lines):
                    line = self.lines[index]
                    index += 1
                    if predicate(line):
                        return line
                if self._eof:
                    raise DaemonExitedError(what or "the awaited line", self.proc.poll(), "")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
        raise AssertionError(
            f"no log line for {what or predicate} within {timeout}s\n{self.tail()}"
        )

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
        on satisfies ``predicate`` (no wake-up latency of the test's thread); returns it."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._kill, self._kill_on = None, predicate
            while self._kill is None:
                remaining = deadline - time.monotonic()
                if self._eof or remaining <= 0:
                    self._kill_on = None
                    raise AssertionError(
                        f"no log line for {what or predicate} within {timeout}s\n{self.tail()}"
                    )
                self._cond.wait(remaining)
            line, kids, killed_at = self._kill
        returncode = self.proc.wait(timeout=10)
        assert returncode == -signal.SIGKILL, returncode
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
            raise AssertionError(f"daemon still running after {timeout}s\n{self.tail()}") from None
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


# ---------------------------------------------------------------- the model


class DevModel:
    """The loopback model as a subprocess, with its control and stats endpoints.

    Started as ``python -m daemon.testing.devmodel`` (what ``vigil dev-model`` runs, without
    importing the SDK: 0.1 s instead of 1.7 s of CPU per test)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "daemon.testing.devmodel", "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        self.stderr: list[str] = []
        first: queue.Queue[str] = queue.Queue()
        assert self.proc.stdout is not None and self.proc.stderr is not None
        stdout, stderr = self.proc.stdout, self.proc.stderr
        threading.Thread(target=lambda: first.put(stdout.readline()), daemon=True).start()
        threading.Thread(target=lambda: self.stderr.extend(stderr), daemon=True).start()
        try:
            line = first.get(timeout=30)
        except queue.Empty:
            line = "<nothing within 30s>"
        match = re.fullmatch(r"dev-model listening on (http://127\.0\.0\.1:\d+)\s*", line)
        if match is None:
            self.stop()
            time.sleep(0.2)
            raise AssertionError(f"dev-model banner {line!r}; stderr: {''.join(self.stderr)}")
        self.url = match.group(1)
        self._http = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def _call(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(  # noqa: S310 -- a fixed http://127.0.0.1 URL
            self.url + path, data=data, headers={"Content-Type": "application/json"}
        )
        with self._http.open(request, timeout=10) as response:
            answer: dict[str, Any] = json.loads(response.read())
        return answer

    def control(self, **command: int | bool) -> dict[str, Any]:
        return self._call("/_control", dict(command))

    def stats(self) -> dict[str, Any]:
        return self._call("/_stats")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


# ---------------------------------------------------------------- a vigil site


@dataclass
class Job:
    """One ``[[heartbeat]]`` table; ``extra`` holds any other keys (durations, policies)."""

    name: str
    prompt: str
    every: str = "1s"
    cwd: str = "work"
    extra: dict[str, str] = field(default_factory=dict)


def toml_value(value: str | int | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return json.dumps(value)  # a TOML basic string: JSON's escapes are valid TOML escapes


class Site:
    """A config, a key and state/runtime directories in a temporary directory."""

    def __init__(self, root: Path, model: DevModel) -> None:
        self.root = root
        self.model = model
        self.config_path = root / "vigil.toml"
        self.key_path = root / "vigil.key"
        self.state_dir = root / "state"
        self.runtime_dir = root / "run"
        self.daemons: list[Daemon] = []
        self.orphans = OrphanWatch()
        generate_key_file(self.key_path)
        self.keyring = Keyring.load(self.key_path)

    def workdir(self, name: str = "work") -> Path:
        path = self.root / name
        path.mkdir(exist_ok=True)
        return path

    def write_config(self, jobs: Sequence[Job], **daemon: str | int | bool) -> Path:
        settings: dict[str, str | int | bool] = {
            "state_dir": "state",
            "runtime_dir": "run",
            "key_file": "vigil.key",
            "drain_grace": "5s",
            # The tests read prompts, deltas and replies from the log lines; a daemon
            # logs them only when the operator opts in (test_at_rest checks the default).
            "log_content": True,
            **daemon,
        }
        out = ["[daemon]", *(f"{k} = {toml_value(v)}" for k, v in settings.items())]
        for job in jobs:
            self.workdir(job.cwd)
            keys: dict[str, str] = {
                "name": job.name,
                "every": job.every,
                "prompt": job.prompt,
                "cwd": job.cwd,
                **job.extra,
            }
            out += ["", "[[heartbeat]]", *(f"{k} = {toml_value(v)}" for k, v in keys.items())]
        self.config_path.write_text("\n".join(out) + "\n")
        return self.config_path

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in DROPPED_ENV and not k.startswith(DROPPED_PREFIXES)
        }
        env.update(
            {
                "ANTHROPIC_BASE_URL": self.model.url,
                "ANTHROPIC_API_KEY": MODEL_KEY,
                "NO_PROXY": "127.0.0.1",
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(extra or {})
        return env

    def start(self, *, extra_env: Mapping[str, str] | None = None, ready: bool = True) -> Daemon:
        daemon = Daemon(
            vigil_argv("run", "--config", str(self.config_path)),
            self.env(extra_env),
            self.root,
            self.orphans,
        )
        self.daemons.append(daemon)
        if ready:
            daemon.wait_ready()
        return daemon

    def vigil(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            vigil_argv(*args),
            capture_output=True,
            text=True,
            env=self.env(),
            cwd=self.root,
            timeout=timeout,
            check=False,
        )

    def history(self, name: str, *, cli: bool = False) -> list[dict[str, Any]]:
        """What ``vigil history NAME --json`` prints: by running it (``cli=True``), or
        through the same functions in this process (it saves a 1.5 s interpreter start)."""
        if not cli:
            config = load_config(self.config_path)
            return [t.as_json() for t in load_history(config, self.keyring, name)]
        done = self.vigil("history", name, "--config", str(self.config_path), "--json")
        assert done.returncode == 0, done.stderr
        turns: list[dict[str, Any]] = json.loads(done.stdout)
        return turns

    def journal_path(self, name: str) -> Path:
        return self.state_dir / "conversations" / f"{name}.jsonl"

    def frames(self, name: str) -> dict[int, dict[str, Any]]:
        """Every journaled event of a conversation by sequence number (decrypted)."""
        found: dict[int, dict[str, Any]] = {}

        def visit(frame: Any) -> None:
            found[frame.seq] = decode_payload(frame.payload)

        scan(self.journal_path(name), name, self.keyring, visit)
        return found

    def view(self, name: str) -> ConversationView:
        return fold(read_events(self.journal_path(name), name, self.keyring))

    def close(self) -> list[Orphan]:
        """End every daemon; keep each one's log as ``daemon-N.log`` for a failure's autopsy."""
        for number, daemon in enumerate(self.daemons):
            daemon.close()
            log = [json.dumps(x) for x in daemon.lines] + ["# stderr:", *daemon.stderr]
            (self.root / f"daemon-{number:02d}.log").write_text("\n".join(log) + "\n")
        return self.orphans.close()


@pytest.fixture
def dev_model() -> Iterator[DevModel]:
    model = DevModel()
    try:
        yield model
    finally:
        model.stop()


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short temporary directory (AF_UNIX socket paths must stay under 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="vigil-e2e-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def site(tmp_path: Path, dev_model: DevModel) -> Iterator[Site]:
    made = Site(tmp_path, dev_model)
    try:
        yield made
    finally:
        made.close()
