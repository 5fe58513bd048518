"""``vigil demo``: the whole promise in about a minute, with no API key.

Starts the loopback model and a daemon with two heartbeat jobs in a temporary
directory, shows beats streaming, SIGKILLs the daemon in the middle of a reply, starts
it again and shows both conversations carry on with their memory; then the operator
pauses one job, talks to it (``vigil send``), queues a note for the other's next beat
and resumes it. The loopback model takes its pace from its own ``--slow-ms`` option, so
the prompts shown are the jobs' real prompts.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from daemon.config.load import load_config
from daemon.journal.keyring import Keyring, generate_key_file
from daemon.ops.history import load_history
from jobs.prompt import QUEUED_HEADER

JOBS = {
    "inbox": ("2s", "Check the inbox."),
    "digest": ("3s", "Add a line to the digest."),
}
LIVE_JOB = "inbox"  # streamed delta by delta; the other job's replies print whole
MODEL_SLOW_MS = 40  # the loopback model's pause between streamed words
PHASE_TIMEOUT_S = 40.0
SENT = "What have you seen so far?"
NOTE = "The release moved to Friday."

Line = dict[str, Any]


class Out:
    """Terminal output: one job's reply streams live, the others print whole."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.line_job: str | None = None
        self.buffers: dict[str, str] = {}
        self.muted: str | None = None  # a job whose lines `vigil send` shows instead

    def say(self, text: str) -> None:
        self._break()
        self.stream.write(text + "\n")
        self.stream.flush()

    def delta(self, job: str, text: str) -> None:
        if job != LIVE_JOB:
            self.buffers[job] = self.buffers.get(job, "") + text
            return
        if self.line_job != job:
            self._break()
            self.stream.write(f"  [{job}] < ")
            self.line_job = job
        self.stream.write(text)
        self.stream.flush()

    def _break(self) -> None:
        if self.line_job is not None:
            self.stream.write("\n")
            self.line_job = None


class Daemon:
    def __init__(self, config: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "daemon.cli.main", "run", "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        self.lines: queue.Queue[Line | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None  # noqa: S101  # Popen with PIPE
        for raw in self.proc.stdout:
            try:
                obj = json.loads(raw)
            except ValueError:
                obj = {"event": "stderr", "text": raw.rstrip()}
            self.lines.put(obj if isinstance(obj, dict) else {"event": "stderr", "text": raw})
        self.lines.put(None)

    def follow(self, out: Out, until: Callable[[Line], bool], timeout: float) -> Line:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("the demo did not see what it waited for in time")
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise RuntimeError(f"the daemon exited unexpectedly ({self.proc.wait()})")
            show(out, line)
            if until(line):
                return line


def show(out: Out, line: Line) -> None:  # noqa: PLR0912  # one branch per log event
    event, job, turn = line.get("event"), line.get("job"), line.get("turn")
    if job is not None and job == out.muted:
        return
    if event == "delta" and job:
        out.delta(str(job), str(line.get("text", "")))
    elif event == "turn_started":
        prompt, _, queued = str(line.get("prompt")).partition(QUEUED_HEADER)
        out.say(f"  [{job}] turn {turn} ({line.get('trigger')}) > {prompt.strip()}")
        if queued.strip():
            out.say(f"  [{job}]   + from the operator: {' '.join(queued.split())}")
    elif event == "turn_completed":
        buffered = out.buffers.pop(str(job), "")
        if buffered:
            out.say(f"  [{job}] < {buffered}")
        out.say(f"  [{job}] turn {turn} completed")
    elif event in ("turn_failed", "turn_interrupted", "beat_skipped"):
        if event != "beat_skipped":  # a skipped beat leaves the running turn's reply be
            out.buffers.pop(str(job), None)
        out.say(f"  [{job}] turn {turn} {event.split('_')[-1]}: {line.get('reason')}")
    elif event == "turn_healed":
        out.say(
            f"  [{job}] healed turn {turn}: interrupted after {line.get('deltas')} journaled "
            f"deltas; on_interrupted = {line.get('on_interrupted')}"
        )
    elif event == "torn_tail_cut":
        out.say(f"  [{job}] cut a torn last record off the journal (kept as {line.get('kept_as')})")
    elif event == "ready":
        out.say("  daemon READY: journals recovered")
    elif event in ("job_paused", "job_resumed", "message_queued"):
        out.say(f"  [{job}] {event.replace('_', ' ')} (journaled)")
    elif event == "stderr":
        out.say(f"  ! {line.get('text')}")


def start_model(env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "daemon.testing.devmodel",
            "--port",
            "0",
            "--slow-ms",
            str(MODEL_SLOW_MS),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    assert proc.stdout is not None  # noqa: S101  # Popen with PIPE
    first = proc.stdout.readline().strip()
    if "listening on " not in first:
        proc.kill()
        raise RuntimeError(f"the loopback model did not start: {first}")
    return proc, first.split("listening on ", 1)[1]


def write_config(root: Path) -> Path:
    (root / "agents").mkdir()
    lines = [
        "[daemon]",
        'state_dir = "state"',
        'runtime_dir = "run"',
        'key_file = "vigil.key"',
        'turn_timeout = "30s"',
        'drain_grace = "3s"',
        "",
    ]
    for name, (every, prompt) in JOBS.items():
        lines += [
            "[[heartbeat]]",
            f'name = "{name}"',
            f'every = "{every}"',
            f'prompt = "{prompt}"',
            'cwd = "agents"',
            "",
        ]
    path = root / "vigil.toml"
    path.write_text("\n".join(lines))
    return path


def run_demo(*, keep: bool = False, stream: IO[str] | None = None) -> int:
    out = Out(stream or sys.stdout)
    root = Path(tempfile.mkdtemp(prefix="vigil-demo-"))
    os.chmod(root, 0o700)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}
    model, base_url = start_model(env)
    env.update({"ANTHROPIC_BASE_URL": base_url, "ANTHROPIC_API_KEY": "sk-vigil-demo-loopback"})
    daemons: list[Daemon] = []
    try:
        config_path = write_config(root)
        generate_key_file(root / "vigil.key")
        out.say(f"vigil demo: loopback model at {base_url}; state in {root}")
        out.say(
            "Two heartbeat jobs, 'inbox' every 2s and 'digest' every 3s, one conversation each."
        )
        out.say("The loopback model replies with how many user turns it was sent, and the first.\n")
        _first_run(out, config_path, env, daemons)
        _show_journal(out, root, config_path)
        _second_run(out, config_path, env, daemons)
        _show_memory(out, root, config_path)
        return 0
    finally:
        for daemon in daemons:
            if daemon.proc.poll() is None:
                daemon.proc.kill()
                daemon.proc.wait()
        model.terminate()
        model.wait(timeout=10)
        if keep:
            out.say(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def _completed_twice(times: int = 2) -> Callable[[Line], bool]:
    done: dict[str, int] = dict.fromkeys(JOBS, 0)

    def check(line: Line) -> bool:
        if line.get("event") == "turn_completed":
            done[str(line.get("job"))] += 1
        return min(done.values()) >= times

    return check


def _first_run(out: Out, config_path: Path, env: dict[str, str], daemons: list[Daemon]) -> None:
    out.say("1. First run: beats stream; every event is journaled, encrypted, before it shows.")
    daemon = Daemon(config_path, env)
    daemons.append(daemon)
    daemon.follow(out, _completed_twice(), PHASE_TIMEOUT_S)
    victim = daemon.follow(
        out,
        lambda ln: ln.get("event") == "delta" and ln.get("job") == LIVE_JOB,
        PHASE_TIMEOUT_S,
    )
    daemon.proc.send_signal(signal.SIGKILL)
    daemon.proc.wait()
    out.say(
        f"\n2. SIGKILL: the daemon died in the middle of {victim.get('job')}'s turn "
        f"{victim.get('turn')}. What the journals hold now:"
    )


def _show_journal(out: Out, root: Path, config_path: Path) -> None:
    config = load_config(config_path)
    keyring = Keyring.load(root / "vigil.key")
    for name in JOBS:
        turns = load_history(config, keyring, name)
        last = turns[-1]
        out.say(f"  [{name}] {len(turns)} turns; the last, turn {last.turn}, is {last.status}:")
        out.say(f"           {last.reply!r}")


def _second_run(out: Out, config_path: Path, env: dict[str, str], daemons: list[Daemon]) -> None:
    out.say("\n3. Restart: vigil heals the half turn, resumes each session and carries on.")
    daemon = Daemon(config_path, env)
    daemons.append(daemon)
    daemon.follow(out, _completed_twice(1), PHASE_TIMEOUT_S)
    _operator(out, daemon, config_path, env)
    daemon.proc.send_signal(signal.SIGTERM)
    code = daemon.proc.wait(timeout=30)
    while not daemon.lines.empty():
        line = daemon.lines.get()
        if line is not None:
            show(out, line)
    out.say(f"  SIGTERM: the daemon drained and exited with status {code}")


def _operator(out: Out, daemon: Daemon, config_path: Path, env: dict[str, str]) -> None:
    """Pause inbox, talk to it, queue a note for digest's next beat, resume inbox."""
    out.say("\n4. The operator steps in (each command is journaled first):")

    def is_(event: str, job: str, **fields: object) -> Callable[[Line], bool]:
        return lambda ln: (
            ln.get("event") == event
            and ln.get("job") == job
            and all(ln.get(k) == v for k, v in fields.items())
        )

    daemon.follow(out, is_("turn_completed", "inbox"), PHASE_TIMEOUT_S)
    _vigil(out, env, config_path, "pause", "inbox")
    daemon.follow(out, is_("beat_skipped", "inbox", reason="paused"), PHASE_TIMEOUT_S)
    out.muted = "inbox"  # `vigil send` prints this turn itself, from the journal
    _vigil(out, env, config_path, "send", "inbox", SENT, reply=True)
    daemon.follow(out, is_("turn_completed", "inbox"), PHASE_TIMEOUT_S)
    out.muted = None
    _vigil(out, env, config_path, "send", "digest", "--next-beat", NOTE)
    daemon.follow(
        out,
        lambda ln: is_("turn_started", "digest")(ln) and QUEUED_HEADER in str(ln.get("prompt")),
        PHASE_TIMEOUT_S,
    )
    daemon.follow(out, is_("turn_completed", "digest"), PHASE_TIMEOUT_S)
    _vigil(out, env, config_path, "resume", "inbox")
    daemon.follow(out, is_("turn_completed", "inbox"), PHASE_TIMEOUT_S)


def _vigil(
    out: Out, env: dict[str, str], config_path: Path, *args: str, reply: bool = False
) -> None:
    """Run the real ``vigil`` command and show what it prints (a reply as it streams)."""
    shown = " ".join(f'"{a}"' if " " in a else a for a in args)
    out.say(f"  $ vigil {shown}")
    proc = subprocess.Popen(
        [sys.executable, "-m", "daemon.cli.main", *args, "--config", str(config_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )
    assert proc.stdout is not None  # noqa: S101  # Popen with PIPE
    out.stream.write("    < " if reply else "    ")
    while chunk := os.read(proc.stdout.fileno(), 4096):
        out.stream.write(chunk.decode("utf-8", "replace").rstrip("\n").replace("\n", "\n    "))
        out.stream.flush()
    out.stream.write("\n")
    if proc.wait(timeout=PHASE_TIMEOUT_S) != 0:
        raise RuntimeError(f"vigil {shown} exited with status {proc.returncode}")


def _show_memory(out: Out, root: Path, config_path: Path) -> None:
    out.say("\n5. Memory, from the journals:")
    config = load_config(config_path)
    keyring = Keyring.load(root / "vigil.key")
    for name in JOBS:
        turns = load_history(config, keyring, name)
        completed = [t for t in turns if t.status == "completed"]
        interrupted = sum(t.status == "interrupted" for t in turns)
        out.say(
            f"  [{name}] {len(completed)} completed turns, {interrupted} interrupted; last reply:"
        )
        out.say(f"           {completed[-1].reply}")
    out.say(
        "\nEach last reply counts every completed beat of its conversation, before and after "
        "the kill;\nthe half turn was replayed, not duplicated, and nothing shown was lost."
    )
