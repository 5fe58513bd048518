"""``vigil demo``: the whole promise in about a minute, with no API key.

Starts the loopback model and a daemon with two heartbeat jobs in a temporary
directory, shows beats streaming, SIGKILLs the daemon in the middle of a reply, starts
it again and shows both conversations carry on with their memory; then the operator
pauses one job, talks to it (``vigil send``), queues a note for the other's next beat
and resumes it. The loopback model takes its pace from its own ``--slow-ms`` option, so
the prompts shown are the jobs' real prompts.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from daemon.config.load import load_config
from daemon.ops.history import load_history
from daemon.testing.harness import DaemonExitedError, HarnessError, Job, LoopbackModel, Site
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
    """A ``vigil run`` started by the harness; :meth:`follow` shows its log as it comes."""

    def __init__(self, site: Site) -> None:
        self.run = site.start(ready=False)
        self.proc = self.run.proc
        self.shown = 0  # log lines shown so far

    def follow(self, out: Out, until: Callable[[Line], bool], timeout: float) -> Line:
        def step(line: Line) -> bool:
            show(out, line)
            return until(line)

        try:
            index = self.run.find(step, timeout, start=self.shown)
        except DaemonExitedError as exc:
            raise RuntimeError(f"the daemon exited unexpectedly ({exc.returncode})") from None
        except HarnessError:
            raise TimeoutError("the demo did not see what it waited for in time") from None
        self.shown = index + 1
        return self.run.lines[index]

    def show_rest(self, out: Out) -> None:
        for line in self.run.lines[self.shown :]:
            show(out, line)
        self.shown = len(self.run.lines)


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
    elif event == "<not json>":
        out.say(f"  ! {str(line.get('raw')).rstrip()}")


def write_config(site: Site) -> Path:
    jobs = [Job(name, prompt, every, cwd="agents") for name, (every, prompt) in JOBS.items()]
    return site.write_config(jobs, turn_timeout="30s", drain_grace="3s")


def run_demo(*, keep: bool = False, stream: IO[str] | None = None) -> int:
    out = Out(stream or sys.stdout)
    root = Path(tempfile.mkdtemp(prefix="vigil-demo-"))
    os.chmod(root, 0o700)
    model = LoopbackModel(slow_ms=MODEL_SLOW_MS)
    try:
        site = Site(root, model, api_key="sk-vigil-demo-loopback")
        try:
            write_config(site)
            out.say(f"vigil demo: loopback model at {model.url}; state in {root}")
            out.say(
                "Two heartbeat jobs, 'inbox' every 2s and 'digest' every 3s, one conversation each."
            )
            out.say(
                "The loopback model replies with how many user turns it was sent, and the first.\n"
            )
            _first_run(out, site)
            _show_journal(out, site)
            _second_run(out, site)
            _show_memory(out, site)
            return 0
        finally:
            site.close(keep_logs=keep)
    finally:
        model.stop()
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


def _first_run(out: Out, site: Site) -> None:
    out.say("1. First run: beats stream; every event is journaled, encrypted, before it shows.")
    daemon = Daemon(site)
    daemon.follow(out, _completed_twice(), PHASE_TIMEOUT_S)
    victim = daemon.follow(
        out,
        lambda ln: ln.get("event") == "delta" and ln.get("job") == LIVE_JOB,
        PHASE_TIMEOUT_S,
    )
    daemon.run.kill()
    out.say(
        f"\n2. SIGKILL: the daemon died in the middle of {victim.get('job')}'s turn "
        f"{victim.get('turn')}. What the journals hold now:"
    )


def _show_journal(out: Out, site: Site) -> None:
    config = load_config(site.config_path)
    for name in JOBS:
        turns = load_history(config, site.keyring, name)
        last = turns[-1]
        out.say(f"  [{name}] {len(turns)} turns; the last, turn {last.turn}, is {last.status}:")
        out.say(f"           {last.reply!r}")


def _second_run(out: Out, site: Site) -> None:
    out.say("\n3. Restart: vigil heals the half turn, resumes each session and carries on.")
    daemon = Daemon(site)
    daemon.follow(out, _completed_twice(1), PHASE_TIMEOUT_S)
    _operator(out, daemon, site.config_path, site.env())
    code = daemon.run.terminate(timeout=30)
    daemon.show_rest(out)
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


def _show_memory(out: Out, site: Site) -> None:
    out.say("\n5. Memory, from the journals:")
    config = load_config(site.config_path)
    for name in JOBS:
        turns = load_history(config, site.keyring, name)
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
