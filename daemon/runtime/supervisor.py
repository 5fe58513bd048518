"""The daemon's life: recover, announce READY, run beats, reload on SIGHUP, drain.

Shutdown follows uvicorn's shape: the signal handler only sets state; the main task
stops new beats, gives running turns and deliveries ``drain_grace``, then interrupts
(journaled) what is left; a second signal exits at once.

A due beat first passes the job's gate (``jobs.gate``: empty prompt, active hours,
daily budget), else it is journaled as skipped with the reason. After downtime the
missed beats are journaled with their count and ``catch_up`` decides whether one runs.
A non-quiet reply is delivered to the job's sinks behind the delivery fence.

SIGHUP re-reads the config file (:meth:`Supervisor.reload`): a bad file is refused and
logged, the running configuration stays; otherwise jobs are added, removed (after
their running work) or changed in place, and nothing that did not change is touched.
"""

from __future__ import annotations

import asyncio
import faulthandler
import os
import signal
import threading
import time
from collections.abc import Coroutine, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from daemon.agent.pool import ClientPool, LeaseTimeout
from daemon.agent.sdk import AgentSession, preload_sdk
from daemon.agent.store import JournalSessionStore
from daemon.config.load import load_config
from daemon.config.model import Config, HeartbeatConfig
from daemon.config.problems import ConfigError
from daemon.errors import DirectoryError, JournalFatalError, JournalWriteError, VigilError
from daemon.events import Trigger
from daemon.journal.conversation import Conversation
from daemon.journal.file import FsyncPolicy
from daemon.journal.keyring import Keyring
from daemon.journal.lock import StateLock
from daemon.journal.logstore import FileEventLogStore, journal_path
from daemon.layout import Layout
from daemon.logs import get_logger
from daemon.mirror.db import Mirror
from daemon.mirror.live import LiveMirror
from daemon.mirror.rebuild import rebuild
from daemon.runtime.beats import BeatResult, BeatRunner, ResumePoint
from daemon.runtime.control import SOCKET_NAME, ControlServer
from daemon.runtime.job import (
    Job,
    JournalDeliveryLog,
    agent_spec,
    beat_policy,
    routes,
    schedule_key,
)
from daemon.runtime.notify import Notifier, run_watchdog, watchdog_interval
from daemon.runtime.recovery_read import Folded, fold_all, worker_count
from daemon.runtime.reload import daemon_changes, diff_jobs, reload_problems
from daemon.runtime.scheduler import BeatScheduler
from jobs.catchup import Missed, missed_fire_times, missed_on_grid, next_on_grid, runs_catch_up
from jobs.delivery import deliver, settle_open
from jobs.gate import check_beat
from jobs.ledger import JobLedger
from jobs.schedule import CronSchedule
from jobs.sinks import Reply
from jobs.splay import first_beat_splay

EXTEND_EVERY_S = 5.0
MIRROR_FLUSH_S = 0.5
FIRST_BEAT_DELAY = timedelta(seconds=1)

__all__ = ["Job", "Supervisor"]


class Supervisor:
    def __init__(
        self,
        config: Config,
        keyring: Keyring,
        notifier: Notifier,
        environ: Mapping[str, str] | None = None,
        *,
        config_path: Path | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.keyring = keyring
        self.notifier = notifier
        self.environ = dict(os.environ if environ is None else environ)
        self.layout = Layout(config.daemon.state_dir, config.daemon.runtime_dir)
        self.fsync = FsyncPolicy(config.daemon.fsync)
        self.log = get_logger()
        self.jobs: dict[str, Job] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.stop_requested = asyncio.Event()
        self.reload_requested = asyncio.Event()
        self.draining = False
        self.fatal: VigilError | None = None
        self.degraded: str | None = None
        self._signals = 0
        self._lock = StateLock(self.layout.state_dir)
        self._scheduler = BeatScheduler(self._on_due)
        self._spec_env: dict[str, str] = {}
        self._read_workers = 1
        daemon_cfg = config.daemon
        self.pool = ClientPool(
            max_live=daemon_cfg.max_live_clients,
            max_turns=daemon_cfg.max_concurrent_turns,
            idle_timeout=daemon_cfg.client_idle_timeout.total_seconds(),
        )
        self._waiting: dict[str, asyncio.Task[None]] = {}  # beats waiting for a turn slot
        self._last_extend = 0.0

    # --- lifecycle -------------------------------------------------------------------

    async def run(self) -> int:
        faulthandler.enable()
        # Owner-only for everything this process and its CLI children create, whatever
        # umask we were started with (conversation text must not be group-readable).
        os.umask(0o077)
        try:
            self.layout.create()
            self._lock.acquire()
        except OSError as exc:
            raise self._directory_error(exc) from None
        try:
            return await self._run_locked()
        finally:
            self._lock.release()

    def _directory_error(self, exc: OSError) -> DirectoryError:
        where = Path(exc.filename) if exc.filename else self.layout.state_dir
        state = self.layout.state_dir
        # The directory itself, one inside it, or a missing parent created on its way.
        ours = where.is_relative_to(state) or state.is_relative_to(where)
        key = "daemon.state_dir" if ours else "daemon.runtime_dir"
        return DirectoryError(where, key, exc.strerror or str(exc), self.config_path)

    async def _run_locked(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_signal, signum)
        loop.add_signal_handler(signal.SIGHUP, self.reload_requested.set)
        self.layout.adopt_tmpdir()
        for leftover in self.layout.remove_resume_leftovers():
            self.log.info("removed_resume_leftover", path=str(leftover))
        self.logs = FileEventLogStore(self.layout.conversations, self.keyring, fsync=self.fsync)
        self.store = JournalSessionStore(self.layout.transcripts, self.keyring, fsync=self.fsync)
        self._spec_env = self.layout.cli_env(
            self.environ, max_retries=self.config.daemon.model_max_retries
        )
        # The mirror is derived: rebuilt from the journals at every start, in the
        # background once READY is out (purge and replay, never patch).
        self.mirror = LiveMirror(
            self.config.daemon.mirror_file, self.layout.conversations, self.keyring
        )
        replays = self._recover()
        control = ControlServer(self.layout.runtime_dir / SOCKET_NAME, self)
        await control.start()
        self.notifier.notify("READY=1\nSTATUS=" + self.status_line())
        self.log.info("ready", jobs=sorted(self.jobs), state_dir=str(self.layout.state_dir))
        mirroring = asyncio.create_task(self.mirror.build(self._read_workers), name="mirror")
        watchdog = self._start_watchdog()
        catch_ups = [n for n in list(self.jobs) if self._schedule_new(n, replaying=n in replays)]
        self._scheduler.start()
        for name, (trigger, prompt) in replays.items():
            self._spawn(name, prompt, trigger)
        for name in catch_ups:
            self._due(name, "catch_up")
        reloader = asyncio.create_task(self._reload_loop(), name="reload")
        flusher = asyncio.create_task(self._flush_mirror_loop(), name="mirror")
        reaper = asyncio.create_task(self._reap_loop(), name="reaper")
        await self.stop_requested.wait()
        reloader.cancel()
        reaper.cancel()
        await self._drain()
        await mirroring  # a rebuild in progress finishes: the mirror is left complete
        flusher.cancel()
        await control.stop()
        self.mirror.flush()
        self.mirror.close()
        if watchdog is not None:
            watchdog.cancel()
        if self.fatal is not None:
            self.log.error("fatal", error=str(self.fatal))
            return self.fatal.exit_code
        self.log.info("stopped")
        return 0

    def _recover(self) -> dict[str, tuple[Trigger, str]]:
        """Open, heal and preflight every job's conversation; returns beats to rerun.

        Every journal is read before any is written to: a journal that refuses the
        start (corrupt, from a newer vigil, under another key) stops it before anything
        is journaled (no healed turn, no fenced delivery, no new empty journal), and
        the derived mirror is left as a fresh rebuild would make it.
        """
        started = time.monotonic()
        self._last_extend = started
        opened: dict[str, tuple[Conversation, JobLedger]] = {}
        # Existing journals first, so a new job's empty journal is created only once
        # every existing one has been read.
        order = sorted(self.config.heartbeats, key=lambda cfg: not self._has_journal(cfg.name))
        existing = [
            (path, cfg.name)
            for cfg in order
            if (path := journal_path(self.layout.conversations, cfg.name)).exists()
        ]
        self._read_workers = worker_count(path for path, _ in existing)
        # The SDK's import (about a second) overlaps the workers' read; without
        # workers it runs here. Either way it is done before READY, so no beat stalls
        # the event loop importing it.
        preload = threading.Thread(target=preload_sdk, name="preload-sdk", daemon=True)
        try:
            folded = fold_all(existing, self.keyring, self._read_workers, meanwhile=preload.start)
            for job_cfg in order:
                self._extend_start_timeout()
                opened[job_cfg.name] = self._open_conversation(job_cfg, folded.get(job_cfg.name))
        except Exception:
            for conv, _ in opened.values():
                conv.close()
            self._restore_mirror()
            raise
        if preload.ident is None:
            preload_sdk()
        else:
            preload.join()
        replays: dict[str, tuple[Trigger, str]] = {}
        for job_cfg in self.config.heartbeats:
            self._extend_start_timeout()
            conv, ledger = opened[job_cfg.name]
            replay = self._register_job(job_cfg, conv, ledger)
            if replay is not None:
                replays[job_cfg.name] = replay
        self.log.info(
            "recovered",
            jobs=len(self.jobs),
            workers=self._read_workers,
            seconds=round(time.monotonic() - started, 3),
        )
        return replays

    def _extend_start_timeout(self) -> None:
        if time.monotonic() - self._last_extend > EXTEND_EVERY_S:
            self.notifier.notify(f"EXTEND_TIMEOUT_USEC={int(EXTEND_EVERY_S * 4 * 1e6)}")
            self._last_extend = time.monotonic()

    def _has_journal(self, name: str) -> bool:
        return journal_path(self.layout.conversations, name).exists()

    def _restore_mirror(self) -> None:
        """After a refused start: the mirror as ``vigil rebuild`` would leave it (the
        journals that cannot be read left out), not half purged, so ``vigil verify``,
        ``search`` and ``sessions`` agree with the journals until the next start."""
        try:
            mirror = Mirror.open(self.config.daemon.mirror_file)
            try:
                rebuild(mirror, self.layout.conversations, self.keyring)
            finally:
                mirror.close()
        except Exception as exc:  # the refusal's own error is the one to report
            self.log.warning("mirror_not_rebuilt", error=str(exc), detail="run `vigil rebuild`")

    def _open_job(self, job_cfg: HeartbeatConfig) -> tuple[Trigger, str] | None:
        """Open and heal one job's conversation, settle its delivery fence, register it.

        Returns the beat to rerun at once (an interrupted turn), if any.
        """
        conv, ledger = self._open_conversation(job_cfg, None)
        return self._register_job(job_cfg, conv, ledger)

    def _open_conversation(
        self, job_cfg: HeartbeatConfig, folded: Folded | None
    ) -> tuple[Conversation, JobLedger]:
        """Open one job's journal (cutting a torn tail), with its state and ledger:
        from ``folded`` (read by a worker) without reading it again, else by reading it.

        Creates the journal when there is none; journals nothing.
        """
        name = job_cfg.name
        if folded is not None:
            conv = Conversation.open_folded(self.logs, name, folded)
            if conv is not None:
                return self._log_tail_cut(conv), folded.ledger
        ledger = JobLedger()  # not read yet, or changed since the worker read it
        conv = Conversation.open(self.logs, name, visit=ledger.feed)
        return self._log_tail_cut(conv), ledger

    def _log_tail_cut(self, conv: Conversation) -> Conversation:
        """Say at once that a torn tail was cut (its copy is kept beside the journal)."""
        cut = conv.tail_cut
        if cut is not None:
            self.log.warning(
                "torn_tail_cut",
                job=conv.name,
                line=cut.tail.line,
                reason=cut.tail.reason,
                bytes_cut=cut.bytes_cut,
                kept_as=str(cut.broken_copy),
            )
        return conv

    def _register_job(
        self, job_cfg: HeartbeatConfig, conv: Conversation, ledger: JobLedger
    ) -> tuple[Trigger, str] | None:
        """Settle the delivery fence, heal an interrupted turn and register the job.

        Returns the beat to rerun at once (an interrupted turn), if any.
        """
        conv.listeners.append(lambda _name, _seq, event: ledger.feed(event))
        conv.listeners.append(self.mirror.apply)
        log = self.log.bind(job=job_cfg.name)
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
            return None
        runner = BeatRunner(
            conv,
            AgentSession(agent_spec(job_cfg, self._spec_env), self.store),
            job=job_cfg.name,
            cwd=str(job_cfg.cwd),
            turn_timeout=self.config.turn_timeout_for(job_cfg.name),
            has_transcript=self.store.has_session,
        )
        runner.quiet_rule = job_cfg.quiet_rule
        self.jobs[job_cfg.name] = Job(job_cfg, runner, ledger)
        for key in settle_open(list(ledger.open_deliveries.values()), JournalDeliveryLog(conv)):
            log.warning("delivery_fenced", turn=key.turn, sink=key.sink)
        policy = job_cfg.on_interrupted
        healed = conv.heal()
        # A turn cut off by a crash (healed just now) or by the last drain: the same
        # policy decides what follows, until the next turn starts.
        interrupted = conv.state.interrupted
        if interrupted is None:
            return None
        policy = job_cfg.on_interrupted
        log.warning(
            "turn_healed" if healed is not None else "interrupted_turn_pending",
            turn=interrupted.turn,
            deltas=interrupted.deltas,
            on_interrupted=policy,
        )
        if policy in ("replay", "drop"):
            runner.resume_point = ResumePoint(
                resume_at=conv.state.resume_at,
                drops_turn=interrupted.prompt_uuid,
                fresh_session=conv.state.resume_at is None,
            )
        if policy in ("replay", "continue"):
            return ("replay", interrupted.prompt)
        return None

    # --- scheduling ------------------------------------------------------------------

    def _schedule_new(self, name: str, *, replaying: bool) -> bool:
        """Schedule a job that was not running; journal beats it missed while down.

        Returns whether a catch-up beat should run now (``catch_up = "once"``). A beat
        being replayed counts as that one beat.
        """
        job = self.jobs[name]
        cfg = job.config
        now = datetime.now(UTC)
        since = job.ledger.last_due_at
        interval = job.wanted_interval()
        missed: Missed | None = None
        if since is not None:
            if interval is not None:
                missed = missed_on_grid(since, interval, now)
            else:
                cron = CronSchedule(cfg.cron or "", cfg.zone)
                missed = missed_fire_times(cron.get_next_fire_time, since, now)
        run_now = runs_catch_up(cfg.catch_up, missed) and not replaying
        if missed is not None:
            self._journal_missed(job, missed, replaying=replaying)
        if interval is None:
            self._scheduler.add_cron(name, cfg.cron or "", cfg.zone)
            return run_now
        if since is None:  # spread over the jitter, so a fleet does not fire at once
            first = now + FIRST_BEAT_DELAY + first_beat_splay(name, cfg.jitter)
        elif replaying or run_now:
            first = now + interval
        elif missed is not None:
            first = next_on_grid(since, interval, now)  # catch_up = "skip"
        else:
            first = since + interval
        job.interval = interval
        self._scheduler.add_interval(name, interval, first_due=first, jitter=cfg.jitter)
        return run_now

    def _journal_missed(self, job: Job, missed: Missed, *, replaying: bool) -> None:
        policy = job.config.catch_up
        if replaying:
            then = "the interrupted turn is replayed now and stands in for them"
        elif policy == "once":
            then = 'catch_up = "once": one beat runs now for all of them'
        else:
            then = 'catch_up = "skip": none runs; the next beat comes at its due time'
        job.runner.skip(
            "missed_while_down",
            f"{missed.describe()}; {then}",
            count=missed.count,
            first_due=missed.first.isoformat(),
            last_due=missed.last.isoformat(),
            capped=missed.capped,
            catch_up=policy,
        )

    def _reschedule(self, job: Job) -> None:
        """Apply a changed schedule without firing early or twice: the next beat is one
        (new) interval after the last beat, or the cron's next fire time."""
        cfg = job.config
        interval = job.wanted_interval()
        if interval is None:
            job.interval = None
            self._scheduler.add_cron(job.name, cfg.cron or "", cfg.zone)
            return
        now = datetime.now(UTC)
        last = job.ledger.last_started_at or job.ledger.last_due_at
        first = now + FIRST_BEAT_DELAY if last is None else max(now, last + interval)
        job.interval = interval
        self._scheduler.add_interval(job.name, interval, first_due=first, jitter=cfg.jitter)

    def _apply_idle_backoff(self, job: Job) -> None:
        """After a beat: stretch or reset the interval when the quiet streak or the run
        of failed beats says so."""
        interval = job.wanted_interval()
        if job.retired or interval is None or interval == job.interval:
            return
        previous = job.interval
        self._reschedule(job)
        failures = job.runner.failures
        self.log.info(
            "failure_backoff" if failures else "idle_backoff",
            job=job.name,
            quiet_streak=job.ledger.quiet_streak,
            failures=failures,
            interval_s=interval.total_seconds(),
            previous_interval_s=previous.total_seconds() if previous else None,
        )

    async def _flush_mirror_loop(self) -> None:
        while True:
            await asyncio.sleep(MIRROR_FLUSH_S)
            self.mirror.flush()  # a failure is logged once, by the mirror

    async def _reap_loop(self) -> None:
        """Let go of clients whose CLI died, and of clients idle past the timeout."""
        every = min(max(self.pool.idle_timeout / 4, 0.25), 30.0)
        while True:
            await asyncio.sleep(every)
            for job in list(self.jobs.values()):
                agent = job.runner.agent
                if job.runner.busy or job.name in self._waiting:
                    continue
                exit_code = agent.cli_exit_code() if agent.connected else None
                if exit_code is not None:
                    self.log.warning("client_lost", job=job.name, exit_code=exit_code)
                    await agent.disconnect()
            for name in await self.pool.reap_idle():
                self.log.info("client_idle_disconnected", job=name, idle_s=self.pool.idle_timeout)

    def _start_watchdog(self) -> asyncio.Task[None] | None:
        interval = watchdog_interval(self.environ)
        if interval is None:
            return None
        return asyncio.create_task(run_watchdog(self.notifier, interval, self.healthy))

    def healthy(self) -> bool:
        return self.fatal is None

    # --- beats -----------------------------------------------------------------------

    async def _on_due(self, name: str) -> None:
        self._due(name, "schedule")

    def _due(self, name: str, trigger: Trigger) -> bool:
        """A beat came due: run it, or journal why not. Returns whether it runs."""
        job = self.jobs.get(name)
        if job is None or job.retired or self.draining:
            return False
        try:
            blocked = self._blocked(job)
            if blocked is not None:
                job.runner.skip(*blocked)
                return False
            now = datetime.now(UTC)
            skip = check_beat(
                beat_policy(job.config),
                now=now,
                spent_today=job.ledger.spend.spent_today(now, job.config.zone),
                manual=trigger == "manual",
            )
            if skip is not None:
                job.runner.skip(skip.reason, skip.detail)
                return False
        except JournalFatalError as exc:
            self._die(exc)
            return False
        except JournalWriteError as exc:
            self._degrade(name, exc)
            return False
        self._spawn(name, job.config.prompt_text, trigger)
        return True

    def _blocked(self, job: Job) -> tuple[str, str] | None:
        """Why a new beat of ``job`` cannot start now: one beat at a time per job."""
        if job.runner.busy:
            return "previous_turn_running", "the previous turn was still running"
        if job.name in self._waiting:
            return (
                "previous_beat_waiting",
                "the previous beat was still waiting for a free turn slot",
            )
        return None

    # --- the control socket ------------------------------------------------------------

    def status_snapshot(self) -> dict[str, Any]:
        now = datetime.now(UTC)
        jobs = []
        for name, job in sorted(self.jobs.items()):
            if job.retired:
                continue
            last = job.runner.last
            due = self._scheduler.next_due(name)
            jobs.append(
                {
                    "name": name,
                    "running": job.runner.busy,
                    "next_beat": due.astimezone(UTC).isoformat() if due else None,
                    "last_turn": last.turn if last else None,
                    "last_outcome": last.outcome if last else None,
                    "last_reason": last.reason if last else None,
                    "spend_today_usd": round(job.ledger.spend.spent_today(now, job.config.zone), 6),
                    "session_id": job.runner.conversation.state.session_id,
                    "client_connected": job.runner.agent.connected,
                    "cli_pid": job.runner.agent.cli_pid(),
                }
            )
        return {
            "pid": os.getpid(),
            "status": self.status_line(),
            "state_dir": str(self.layout.state_dir),
            "live_clients": sum(1 for j in jobs if j["client_connected"]),
            "pool": {
                "max_live_clients": self.pool.max_live,
                "max_concurrent_turns": self.pool.max_turns,
                "client_idle_timeout_s": self.pool.idle_timeout,
                "turns_running": self.pool.busy,
                "beats_waiting": len(self._waiting),
                "evictions": self.pool.evictions,
            },
            "degraded": self.degraded,
            "mirror": self.mirror.phase,
            "jobs": jobs,
        }

    def request_beat(self, name: str) -> tuple[bool, str]:
        job = self.jobs.get(name)
        if job is None or job.retired:
            return False, f"no job named {name!r} (jobs: {', '.join(sorted(self.jobs))})"
        if self.draining:
            return False, "the daemon is stopping"
        if job.runner.busy:
            return False, f"a turn of {name!r} is running; one turn at a time per conversation"
        if name in self._waiting:
            return False, f"a beat of {name!r} is waiting for a free turn slot"
        if not self.trigger_beat(name):
            return False, f"the beat of {name!r} was skipped; `vigil history {name}` says why"
        return True, ""

    def trigger_beat(self, name: str, trigger: Trigger = "manual") -> bool:
        """Run a beat now (active hours do not apply to manual beats)."""
        return self._due(name, trigger)

    def _spawn(self, name: str, prompt: str, trigger: Trigger) -> None:
        job = self.jobs[name]
        task = asyncio.create_task(
            self._beat(job, prompt, trigger, datetime.now(UTC)), name=f"beat:{name}"
        )
        self.tasks.add(task)
        job.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        task.add_done_callback(lambda done: self._beat_done(job, done))
        self._waiting[name] = task  # until it holds a turn slot

    def _beat_done(self, job: Job, task: asyncio.Task[None]) -> None:
        """A job removed by a reload closes once its last beat is over, whichever of the
        two happened first (checked here, when the task is really finished)."""
        job.tasks.discard(task)
        if job.retired and not job.tasks and not self.draining:
            self._background(self._close_job(job), f"close:{job.name}")

    async def _beat(self, job: Job, prompt: str, trigger: Trigger, due: datetime) -> None:
        runner = job.runner
        try:
            result = await self._leased_beat(job, prompt, trigger, due)
        except JournalFatalError as exc:
            self._die(exc)
            await runner.agent.disconnect()
            return
        except JournalWriteError as exc:
            self._degrade(job.name, exc)
            await runner.agent.disconnect()
            return
        if self.degraded is not None:
            self.degraded = None
        self._report(job.name, result)
        if result.outcome == "skipped":
            return
        if job.reconnect_after_turn:
            job.reconnect_after_turn = False
            await runner.agent.disconnect()
        self._apply_idle_backoff(job)
        if result.outcome == "completed" and not result.quiet and result.reply:
            await self._deliver(job, result)

    async def _leased_beat(
        self, job: Job, prompt: str, trigger: Trigger, due: datetime
    ) -> BeatResult:
        """Wait (up to the beat's window) for a turn slot and a live client, then run.

        The window closes shortly before the job's next beat is due (``turn_timeout``
        when none is scheduled): a beat that waited past it is journaled as skipped.
        """
        runner = job.runner
        task = self._waiting.get(job.name)
        try:
            async with self.pool.lease(
                job.name, runner.agent, wait_s=self._wait_window(job, due)
            ) as waited:
                del self._waiting[job.name]
                if self.draining:
                    return runner.skip("daemon_stopping", "the daemon is stopping")
                return await runner.beat(
                    prompt,
                    trigger,
                    due_at=due.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                    waited_s=round(waited, 3) if waited >= 0.001 else None,
                )
        except LeaseTimeout as exc:
            return runner.skip(
                "no_capacity",
                str(exc),
                waited_s=round(exc.waited_s, 3),
                max_concurrent_turns=self.pool.max_turns,
            )
        except asyncio.CancelledError:
            if self._waiting.get(job.name) is task:
                runner.skip("daemon_stopping", "the daemon stopped while the beat waited")
            raise
        finally:
            if self._waiting.get(job.name) is task:
                del self._waiting[job.name]

    def _wait_window(self, job: Job, due: datetime) -> float:
        nxt = self._scheduler.next_due(job.name)
        if nxt is None:
            return job.runner.turn_timeout.total_seconds()
        left = (nxt - due).total_seconds()
        # Give up a little before the next beat comes due, so that one finds us gone.
        return max(left - min(1.0, left / 10), 0.0)

    async def _deliver(self, job: Job, result: BeatResult) -> None:
        reply = Reply(
            job.name,
            result.turn,
            result.reply or "",
            datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            result.session_id,
        )
        try:
            await deliver(
                reply,
                routes(job.config, emit=self._show_reply),
                JournalDeliveryLog(job.runner.conversation),
            )
        except JournalFatalError as exc:
            self._die(exc)
        except JournalWriteError as exc:
            self._degrade(job.name, exc)

    def _show_reply(self, reply: Reply) -> None:
        self.log.info(
            "reply", job=reply.job, turn=reply.turn, session=reply.session_id, text=reply.text
        )

    def _die(self, exc: JournalFatalError) -> None:
        self.fatal = exc
        self.stop_requested.set()

    def _degrade(self, name: str, exc: JournalWriteError) -> None:
        self.degraded = str(exc)
        self.log.error("journal_write_failed", job=name, error=str(exc))
        self.notifier.notify("STATUS=degraded: " + str(exc))

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
        live = [j for j in self.jobs.values() if not j.retired]
        running = sum(1 for j in live if j.runner.busy)
        parts = [f"{len(live)} jobs", f"{running} running"]
        if self._waiting:
            parts.append(f"{len(self._waiting)} waiting")
        parts.append(f"{self.pool.live}/{self.pool.max_live} clients")
        lasts = [j.runner.last for j in live if j.runner.last is not None]
        if lasts:
            failed = sum(1 for r in lasts if r is not None and r.outcome == "failed")
            parts.append(f"{failed} failing")
        if self.degraded:
            parts.insert(0, "degraded")
        if self.draining:
            parts.insert(0, "stopping")
        return "; ".join(parts)

    # --- reload ----------------------------------------------------------------------

    async def _reload_loop(self) -> None:
        while True:
            await self.reload_requested.wait()
            self.reload_requested.clear()
            if not self.draining:
                self.reload()

    def reload(self) -> bool:
        """Re-read the config file and apply it; False (logged) when it was refused."""
        if self.config_path is None:
            self.log.error("reload_refused", error="vigil was started without a config path")
            return False
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            self.log.error("reload_refused", path=str(self.config_path), error=str(exc))
            return False
        problems = reload_problems(self.config, new)
        if problems:
            self.log.error("reload_refused", path=str(self.config_path), error="; ".join(problems))
            return False
        ignored = daemon_changes(self.config.daemon, new.daemon)
        if ignored:
            self.log.warning(
                "reload_daemon_settings_need_restart",
                keys=ignored,
                detail="[daemon] settings take effect at the next restart",
            )
        new = new.model_copy(update={"daemon": self.config.daemon})
        diff = diff_jobs(
            self.config,
            new,
            spec=lambda cfg: agent_spec(cfg, self._spec_env),
            schedule=schedule_key,
        )
        self.config = new
        for name in diff.removed:
            if name in self.jobs:
                self._retire(self.jobs[name])
        for name in diff.changed:
            if name in self.jobs:
                self._change(
                    self.jobs[name],
                    new.job(name),
                    reschedule=name in diff.reschedule,
                    respec=name in diff.respec,
                )
        refused: list[str] = []
        for name in diff.added:
            if not self._add(new.job(name)):
                refused.append(name)
        self.log.info(
            "reloaded",
            added=diff.added,
            removed=diff.removed,
            changed=diff.changed,
            unchanged=diff.unchanged,
            refused=refused,
        )
        self.notifier.notify("STATUS=" + self.status_line())
        return True

    def _change(self, job: Job, cfg: HeartbeatConfig, *, reschedule: bool, respec: bool) -> None:
        job.config = cfg
        runner = job.runner
        runner.quiet_rule = cfg.quiet_rule
        runner.turn_timeout = self.config.turn_timeout_for(cfg.name)
        if respec:
            runner.agent.spec = agent_spec(cfg, self._spec_env)
            if runner.busy:
                job.reconnect_after_turn = True
            elif runner.agent.connected:
                self._background(runner.agent.disconnect(), f"reconnect:{job.name}")
        if reschedule:
            self._reschedule(job)

    def _add(self, cfg: HeartbeatConfig) -> bool:
        existing = self.jobs.get(cfg.name)
        if existing is not None:  # removed earlier, still finishing: take it back
            existing.retired = False
            self._change(existing, cfg, reschedule=True, respec=True)
            return True
        try:
            replay = self._open_job(cfg)
        except VigilError as exc:
            self.log.error("job_refused", job=cfg.name, error=str(exc))
            return False
        if cfg.name not in self.jobs:
            return False  # refused inside (cwd changed), already logged
        catch_up = self._schedule_new(cfg.name, replaying=replay is not None)
        if replay is not None:
            self._spawn(cfg.name, replay[1], replay[0])
        elif catch_up:
            self._due(cfg.name, "catch_up")
        return True

    def _retire(self, job: Job) -> None:
        job.retired = True
        self._scheduler.remove(job.name)
        if not job.tasks:
            self._background(self._close_job(job), f"close:{job.name}")

    async def _close_job(self, job: Job) -> None:
        if not job.retired or self.jobs.get(job.name) is not job:
            return
        del self.jobs[job.name]
        self.pool.forget(job.name)
        job.runner.conversation.close()
        self.log.info("job_removed", job=job.name)
        # Its client goes last: the CLI's orderly exit can take seconds (up to ~15 s
        # when it must be terminated), and the job is gone already.
        await job.runner.agent.disconnect()

    def _background(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

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
        for waiting in list(self._waiting.values()):
            waiting.cancel()  # no new turn starts while draining
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
