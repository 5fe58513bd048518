"""The process harness: the loopback model, a vigil site, ``vigil run`` processes.

One harness for the end-to-end and fault tests (``tests/e2e/conftest.py`` wraps it in
pytest fixtures), the benchmarks (``bench/fleet.py``) and ``vigil demo``::

    model = LoopbackModel()                      # python -m daemon.testing.devmodel
    site = Site(Path(tmp), model)                # a key, state and runtime dirs
    site.write_config([Job("inbox", "Check the inbox.", every="2s")])
    daemon = site.start()                        # vigil run; waits for READY
    daemon.wait_event("turn_completed", job="inbox")
    daemon.terminate()
    site.close(); model.stop()

Everything runs for real: the daemon, the SDK and its bundled CLI inside it, and the
model on 127.0.0.1. Every process started here is ended by its PID (see
:mod:`daemon.testing.proctree`), including CLI processes a SIGKILLed daemon left
orphaned. Nothing here needs pytest.
"""

from __future__ import annotations

import json
import os
import queue
import re
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daemon.config.load import load_config
from daemon.events.heal import ConversationView, fold
from daemon.journal.framing import decode_payload
from daemon.journal.keyring import Keyring, generate_key_file
from daemon.journal.scan import read_events, scan
from daemon.ops.history import load_history
from daemon.testing.process import Daemon, DaemonExitedError, HarnessError, LogLine, Predicate
from daemon.testing.proctree import Orphan, OrphanWatch, cmdline, descendants, stop_process

__all__ = [
    "Daemon",
    "DaemonExitedError",
    "HarnessError",
    "Job",
    "LogLine",
    "LoopbackModel",
    "Orphan",
    "OrphanWatch",
    "Predicate",
    "Site",
    "cmdline",
    "daemon_env",
    "descendants",
    "toml_value",
    "vigil_argv",
]

MODEL_KEY = "harness-loopback-key"  # the loopback model accepts any key
# What the daemon must not inherit from the caller: systemd's sockets, another config,
# a real API endpoint or key, proxies (the model is on 127.0.0.1).
DROPPED_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "VIGIL_CONFIG", "TMPDIR")
DROPPED_PREFIXES = ("ANTHROPIC_", "CLAUDE_", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy")
_BANNER = re.compile(r"dev-model listening on (http://127\.0\.0\.1:\d+)\s*")


def vigil_argv(*args: str) -> list[str]:
    """``vigil ARGS`` run by this interpreter (the project's venv)."""
    return [sys.executable, "-m", "daemon.cli.main", *args]


def daemon_env(
    model_url: str, *, api_key: str = MODEL_KEY, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """This process's environment without :data:`DROPPED_ENV` and
    :data:`DROPPED_PREFIXES`, pointed at the loopback model."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in DROPPED_ENV and not k.startswith(DROPPED_PREFIXES)
    }
    env.update(
        {
            "ANTHROPIC_BASE_URL": model_url,
            "ANTHROPIC_API_KEY": api_key,
            "NO_PROXY": "127.0.0.1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra or {})
    return env


class LoopbackModel:
    """The loopback model as a subprocess, with its control and stats endpoints.

    Started as ``python -m daemon.testing.devmodel`` (what ``vigil dev-model`` runs,
    without importing the SDK: 0.1 s instead of 1.7 s of CPU). ``slow_ms``: its pause
    between streamed deltas (``--slow-ms``)."""

    def __init__(self, *, slow_ms: int = 0, start_timeout: float = 30.0) -> None:
        argv = [sys.executable, "-m", "daemon.testing.devmodel", "--port", "0"]
        self.proc = subprocess.Popen(
            [*argv, "--slow-ms", str(slow_ms)] if slow_ms else argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        self.stderr: list[str] = []
        first: queue.Queue[str] = queue.Queue()
        stdout, stderr = self.proc.stdout, self.proc.stderr
        if stdout is None or stderr is None:
            raise RuntimeError("Popen without pipes")  # never: both are PIPE
        threading.Thread(target=lambda: first.put(stdout.readline()), daemon=True).start()
        threading.Thread(target=lambda: self.stderr.extend(stderr), daemon=True).start()
        try:
            line = first.get(timeout=start_timeout)
        except queue.Empty:
            line = f"<nothing within {start_timeout}s>"
        match = _BANNER.fullmatch(line)
        if match is None:
            self.stop()
            raise HarnessError(f"dev-model banner {line!r}; stderr: {''.join(self.stderr)}")
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
        """``POST /_control``: ``fail_next``, ``status``, ``slow_ms``, ``reset``."""
        return self._call("/_control", dict(command))

    def stats(self) -> dict[str, Any]:
        """``GET /_stats``: request counters and the last prompts."""
        return self._call("/_stats")

    def stop(self) -> None:
        stop_process(self.proc, timeout=5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


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
    """A config, a key and state/runtime directories under ``root``, for one model."""

    def __init__(self, root: Path, model: LoopbackModel, *, api_key: str = MODEL_KEY) -> None:
        self.root = root
        self.model = model
        self.api_key = api_key
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
        """The config file: a ``[daemon]`` table (``daemon`` adds or overrides keys) and
        one ``[[heartbeat]]`` per job, each job's ``cwd`` created under ``root``.

        A harness daemon opts in to ``log_content``: tests and the demo read prompts,
        deltas and replies from its log lines (a real daemon logs sizes only unless the
        operator opts in; ``tests/e2e/test_at_rest.py`` checks that default)."""
        settings: dict[str, str | int | bool] = {
            "log_content": True,
            "state_dir": "state",
            "runtime_dir": "run",
            "key_file": "vigil.key",
            "drain_grace": "5s",
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
        return daemon_env(self.model.url, api_key=self.api_key, extra=extra)

    def start(
        self,
        *,
        extra_env: Mapping[str, str] | None = None,
        ready: bool = True,
        ready_timeout: float = 60.0,
        log_path: Path | None = None,
        keep: Predicate | None = None,
    ) -> Daemon:
        """``vigil run`` on this site's config; waits for READY unless ``ready=False``."""
        daemon = Daemon(
            vigil_argv("run", "--config", str(self.config_path)),
            self.env(extra_env),
            self.root,
            self.orphans,
            log_path=log_path,
            keep=keep,
        )
        self.daemons.append(daemon)
        if ready:
            daemon.wait_ready(ready_timeout)
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
        if done.returncode != 0:
            raise HarnessError(f"vigil history {name} exited {done.returncode}: {done.stderr}")
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

    def events(self, name: str) -> list[dict[str, Any]]:
        """Every journaled event of a conversation, in order (decrypted)."""
        return list(read_events(self.journal_path(name), name, self.keyring))

    def view(self, name: str) -> ConversationView:
        return fold(self.events(name))

    def close(self, *, keep_logs: bool = True) -> list[Orphan]:
        """End every daemon (keeping each one's log as ``daemon-NN.log`` for a failure's
        autopsy) and the orphans still alive; returns those orphans."""
        for number, daemon in enumerate(self.daemons):
            daemon.close()
            if keep_logs:
                log = [json.dumps(x) for x in daemon.lines] + ["# stderr:", *daemon.stderr]
                (self.root / f"daemon-{number:02d}.log").write_text("\n".join(log) + "\n")
        return self.orphans.close()
