"""The daemon's life: recover, announce READY, run beats, drain on SIGTERM.

Shutdown follows uvicorn's shape: the signal handler only sets state; the main task
stops new beats, gives running turns ``drain_grace``, then interrupts (journaled) what
is left; a second signal exits at once.
"""

from __future__ import annotations

import asyncio
import faulthandler
import os
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from daemon.agent import AgentSession, AgentSpec
from daemon.beats import BeatResult, BeatRunner, ResumePoint
from daemon.config import Config, HeartbeatConfig
from daemon.conversation import Conversation
from daemon.errors import JournalFatalError, JournalWriteError, VigilError
from daemon.events import Trigger
from daemon.journal import FsyncPolicy
from daemon.keyring import Keyring
from daemon.layout import Layout
from daemon.lock import StateLock
from daemon.logs import get_logger
from daemon.notify import Notifier, run_watchdog, watchdog_interval
from daemon.scheduler import BeatScheduler
from daemon.store import JournalSessionStore

EXTEND_EVERY_S = 5.0
FIRST_BEAT_DELAY = timedelta(seconds=1)


@dataclass
class Job:
    config: HeartbeatConfig
    runner: BeatRunner


class Supervisor:
    def __init__(
        self,
        config: Config,
        keyring: Keyring,
        notifier: Notifier,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config
        self.keyring = keyring
        self.notifier = notifier
        self.environ = dict(os.environ if environ is None else environ)
        self.layout = Layout(config.daemon.state_dir, config.daemon.runtime_dir)
        self.fsync = FsyncPolicy(config.daemon.fsync)
        self.log = get_logger()
        self.jobs: dict[str, Job] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.stop_requested = asyncio.Event()
        self.draining = False
        self.fatal: VigilError | None = None
        self.degraded: str | None = None
        self._signals = 0
        self._lock = StateLock(self.layout.state_dir)
        self._scheduler = BeatScheduler(self._on_due)

    # --- lifecycle -------------------------------------------------------------------

    async def run(self) -> int:
        faulthandler.enable()
        self.layout.create()
        self._lock.acquire()
        try:
            return await self._run_locked()
        finally:
            self._lock.release()

    async def _run_locked(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_signal, signum)
        self.layout.adopt_tmpdir()
        for leftover in self.layout.remove_resume_leftovers():
            self.log.info("removed_resume_leftover", path=str(leftover))
        self.store = JournalSessionStore(self.layout.transcripts, self.keyring, fsync=self.fsync)
        replays = self._recover()
        self.notifier.notify("READY=1\nSTATUS=" + self.status_line())
        self.log.info("ready", jobs=sorted(self.jobs), state_dir=str(self.layout.state_dir))
        watchdog = self._start_watchdog()
        self._schedule_all(replaying={name for name, _, _ in replays})
        self._scheduler.start()
        for name, trigger, prompt in replays:
            self._spawn(name, prompt, trigger)
        await self.stop_requested.wait()
        await self._drain()
        if watchdog is not None:
            watchdog.cancel()
        if self.fatal is not None:
            self.log.error("fatal", error=str(self.fatal))
            return self.fatal.exit_code
        self.log.info("stopped")
        return 0

    def _recover(self) -> list[tuple[str, Trigger, str]]:
        """Open, heal and preflight every job's conversation; returns beats to rerun."""
        started = last_extend = time.monotonic()
        replays: list[tuple[str, Trigger, str]] = []
        spec_env = self.layout.cli_env(
            self.environ, max_retries=self.config.daemon.model_max_retries
        )
        for job_cfg in self.config.heartbeats:
            if time.monotonic() - last_extend > EXTEND_EVERY_S:
                self.notifier.notify(f"EXTEND_TIMEOUT_USEC={int(EXTEND_EVERY_S * 4 * 1e6)}")
                last_extend = time.monotonic()
            conv = Conversation.open(
                self.layout.conversations, job_cfg.name, self.keyring, fsync=self.fsync
            )
            log = self.log.bind(job=job_cfg.name)
            if conv.tail_cut is not None:
                cut = conv.tail_cut
                log.warning(
                    "torn_tail_cut",
                    line=cut.tail.line,
                    reason=cut.tail.reason,
                    bytes_cut=cut.bytes_cut,
                    kept_as=str(cut.broken_copy),
                )
            remembered = conv.state.cwd
            if remembered is not None and remembered != str(job_cfg.cwd):
                log.error(
                    "cwd_changed",
                    error=f"job {job_cfg.name!r}: its conversation was started in {remembered}, "
                    f"but the configuration now says cwd = {job_cfg.cwd}. The CLI can only "
                    "resume a session from the same directory, so vigil refuses this job "
                    "rather than silently starting a new conversation. Restore the old cwd, "
                    "or give the job a new name to start afresh.",
                )
                conv.close()
                continue
            agent = AgentSession(
                AgentSpec(
                    cwd=job_cfg.cwd,
                    env=spec_env,
                    model=job_cfg.model,
                    system_prompt=job_cfg.system_prompt,
                    allowed_tools=job_cfg.allowed_tools,
                    permission_mode=job_cfg.permission_mode,
                    max_turns=job_cfg.max_turns,
                ),
                self.store,
            )
            runner = BeatRunner(
                conv,
                agent,
                job=job_cfg.name,
                cwd=str(job_cfg.cwd),
                turn_timeout=self.config.turn_timeout_for(job_cfg.name),
                has_transcript=self.store.has_session,
            )
            self.jobs[job_cfg.name] = Job(job_cfg, runner)
            healed = conv.heal()
            if healed is None:
                continue
            policy = job_cfg.on_interrupted
            log.warning(
                "turn_healed", turn=healed.turn, deltas=healed.deltas, on_interrupted=policy
            )
            if policy in ("replay", "drop"):
                runner.resume_point = ResumePoint(
                    resume_at=conv.state.resume_at,
                    drops_turn=healed.prompt_uuid,
                    fresh_session=conv.state.resume_at is None,
                )
            if policy in ("replay", "continue"):
                replays.append((job_cfg.name, "replay", healed.prompt))
        self.log.info(
            "recovered", jobs=len(self.jobs), seconds=round(time.monotonic() - started, 3)
        )
        return replays

    def _schedule_all(self, replaying: set[str]) -> None:
        """First due time: one interval after the last beat (a replay counts as a beat)."""
        now = datetime.now(UTC)
        for name, job in self.jobs.items():
            every = job.config.every
            if every is None:
                self._scheduler.add_cron(name, job.config.cron or "", job.config.zone)
                continue
            first = now + FIRST_BEAT_DELAY
            last = job.runner.conversation.state.last_beat_at
            if name in replaying:
                first = now + every
            elif last:
                due = _parse_iso(last) + every
                first = max(first, due)
            self._scheduler.add_interval(name, every, first_due=first, jitter=job.config.jitter)

    def _start_watchdog(self) -> asyncio.Task[None] | None:
        interval = watchdog_interval(self.environ)
        if interval is None:
            return None
        return asyncio.create_task(run_watchdog(self.notifier, interval, self.healthy))

    def healthy(self) -> bool:
        return self.fatal is None

    # --- beats -----------------------------------------------------------------------

    async def _on_due(self, name: str) -> None:
        job = self.jobs.get(name)
        if job is None or self.draining:
            return
        if job.runner.busy:
            job.runner.skip("previous_turn_running", "the previous turn was still running")
            return
        self._spawn(name, job.config.prompt_text, "schedule")

    def trigger_beat(self, name: str, trigger: Trigger = "manual") -> bool:
        job = self.jobs[name]
        if job.runner.busy or self.draining:
            return False
        self._spawn(name, job.config.prompt_text, trigger)
        return True

    def _spawn(self, name: str, prompt: str, trigger: Trigger) -> None:
        task = asyncio.create_task(self._beat(name, prompt, trigger), name=f"beat:{name}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _beat(self, name: str, prompt: str, trigger: Trigger) -> None:
        runner = self.jobs[name].runner
        try:
            result = await runner.beat(prompt, trigger)
        except JournalFatalError as exc:
            self.fatal = exc
            self.stop_requested.set()
            await runner.agent.disconnect()
            return
        except JournalWriteError as exc:
            self.degraded = str(exc)
            self.log.error("journal_write_failed", job=name, error=str(exc))
            await runner.agent.disconnect()
            self.notifier.notify("STATUS=degraded: " + str(exc))
            return
        if self.degraded is not None:
            self.degraded = None
        self._report(name, result)

    def _report(self, name: str, result: BeatResult) -> None:
        self.notifier.notify("STATUS=" + self.status_line())
        if result.outcome == "failed":
            self.log.warning(
                "beat_failed",
                job=name,
                turn=result.turn,
                reason=result.reason,
                detail=result.detail,
            )

    def status_line(self) -> str:
        running = sum(1 for j in self.jobs.values() if j.runner.busy)
        parts = [f"{len(self.jobs)} jobs", f"{running} running"]
        lasts = [(n, j.runner.last) for n, j in self.jobs.items() if j.runner.last is not None]
        if lasts:
            failed = sum(1 for _, r in lasts if r is not None and r.outcome == "failed")
            parts.append(f"{failed} failing")
        if self.degraded:
            parts.insert(0, "degraded")
        if self.draining:
            parts.insert(0, "stopping")
        return "; ".join(parts)

    # --- shutdown --------------------------------------------------------------------

    def _on_signal(self, signum: int) -> None:
        self._signals += 1
        if self._signals > 1:
            os.write(2, b"vigil: second signal, exiting at once\n")
            os._exit(128 + signum)
        self.stop_requested.set()

    async def _drain(self) -> None:
        self.draining = True
        self.notifier.notify("STOPPING=1\nSTATUS=" + self.status_line())
        self._scheduler.shutdown()
        running = [t for t in self.tasks if not t.done()]
        grace = self.config.daemon.drain_grace.total_seconds()
        if running and self.fatal is None:
            self.log.info("draining", running_turns=len(running), grace_s=grace)
            _, pending = await asyncio.wait(running, timeout=grace)
        else:
            pending = set(running)
        for task in pending:
            self.log.warning("interrupting_turn", task=task.get_name())
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        for job in self.jobs.values():
            await job.runner.agent.disconnect()
            job.runner.conversation.close()


def _parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))
