"""Start-up and job opening: read every journal, heal, settle fences, register jobs.

Every journal is read before any is written to: a journal that refuses the start
(corrupt, from a newer vigil, under another key) stops it before anything is
journaled (no healed turn, no fenced delivery, no new empty journal), and the derived
mirror is left as a fresh rebuild would make it.

An interrupted turn (a crash healed now, or a drain cut it off) follows the job's
``on_interrupted``: :func:`replay_of` (pure) says whether the beat runs again at once;
what the next connect drops is the conversation state's ``pending_cut`` (folded from
the journal), which the beat runner reads with the same policy.
"""

from __future__ import annotations

import threading
import time

from daemon.agent.sdk import preload_sdk
from daemon.config.model import HeartbeatConfig
from daemon.errors import VigilError
from daemon.events import Trigger
from daemon.journal.conversation import Conversation, ConversationState
from daemon.journal.logstore import FileEventLogStore
from daemon.journal.recovery_read import Folded, fold_all, worker_count
from daemon.mirror.db import Mirror
from daemon.mirror.rebuild import rebuild
from daemon.runtime.beats import BeatRunner
from daemon.runtime.context import Runtime
from daemon.runtime.job import Job, JournalDeliveryLog, agent_spec
from jobs.delivery import settle_open
from jobs.ledger import JobLedger

__all__ = ["Recovery", "Replay", "replay_of"]

EXTEND_EVERY_S = 5.0
Replay = tuple[Trigger, str]  # a beat to run again at once: its trigger and prompt


def replay_of(policy: str, state: ConversationState) -> Replay | None:
    """The beat to run again at once after an interrupted turn (pure): under
    ``replay`` and ``continue``, its prompt; under ``drop``, none."""
    interrupted = state.interrupted
    if interrupted is None or policy not in ("replay", "continue"):
        return None
    return ("replay", interrupted.prompt)


class Recovery:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.read_workers = 1
        self._last_extend = 0.0

    def recover(self) -> dict[str, Replay]:
        """Open, heal and preflight every job's conversation; returns beats to rerun."""
        rt = self.rt
        started = time.monotonic()
        self._last_extend = started
        if rt.heads is not None:
            # Truncated or deleted journals are refused before any is opened or created.
            rt.heads.check_at_start()
        opened: dict[str, tuple[Conversation, JobLedger]] = {}
        # Existing journals first, so a new job's empty journal is created only once
        # every existing one has been read.
        order = sorted(rt.config.heartbeats, key=lambda cfg: not rt.logs.exists(cfg.name))
        # Journal files are read in parallel by worker processes (other backends: by
        # opening each log in turn).
        files = rt.logs if isinstance(rt.logs, FileEventLogStore) else None
        existing = [
            (files.path(cfg.name), cfg.name)
            for cfg in order
            if files is not None and files.exists(cfg.name)
        ]
        self.read_workers = worker_count(path for path, _ in existing)
        # The SDK's import (about a second) overlaps the workers' read; without
        # workers it runs here. Either way it is done before READY, so no beat stalls
        # the event loop importing it.
        preload = threading.Thread(target=preload_sdk, name="preload-sdk", daemon=True)
        try:
            folded = fold_all(existing, rt.keyring, self.read_workers, meanwhile=preload.start)
            for job_cfg in order:
                self._extend_start_timeout()
                opened[job_cfg.name] = self.open_conversation(job_cfg, folded.get(job_cfg.name))
            if rt.heads is not None:
                rt.heads.check_deferred()
        except Exception:
            for conv, _ in opened.values():
                conv.close()
            self.restore_mirror()
            raise
        if preload.ident is None:
            preload_sdk()
        else:
            preload.join()
        replays: dict[str, Replay] = {}
        for job_cfg in rt.config.heartbeats:
            self._extend_start_timeout()
            conv, ledger = opened[job_cfg.name]
            replay = self.register_job(job_cfg, conv, ledger)
            if replay is not None:
                replays[job_cfg.name] = replay
        if rt.heads is not None:  # healing synced what it wrote: commit from here on
            for name, job in rt.jobs.items():
                rt.heads.note(name, job.runner.conversation.journal, rt.transcripts)
            rt.heads.commit()
        rt.log.info(
            "recovered",
            jobs=len(rt.jobs),
            workers=self.read_workers,
            seconds=round(time.monotonic() - started, 3),
        )
        return replays

    def _extend_start_timeout(self) -> None:
        if time.monotonic() - self._last_extend > EXTEND_EVERY_S:
            self.rt.notifier.notify(f"EXTEND_TIMEOUT_USEC={int(EXTEND_EVERY_S * 4 * 1e6)}")
            self._last_extend = time.monotonic()

    def restore_mirror(self) -> None:
        """After a refused start: the mirror as ``vigil rebuild`` would leave it (the
        journals that cannot be read left out), not half purged, so ``vigil verify``,
        ``search`` and ``sessions`` agree with the journals until the next start."""
        rt = self.rt
        try:
            mirror = Mirror.open(rt.config.daemon.mirror_file)
            try:
                rebuild(mirror, rt.layout.conversations, rt.keyring)
            finally:
                mirror.close()
        except Exception as exc:  # the refusal's own error is the one to report
            rt.log.warning("mirror_not_rebuilt", error=str(exc), detail="run `vigil rebuild`")

    def open_job(self, job_cfg: HeartbeatConfig) -> Replay | None:
        """Open and heal one job's conversation, settle its delivery fence, register it.

        Returns the beat to rerun at once (an interrupted turn), if any.
        """
        conv, ledger = self.open_conversation(job_cfg, None)
        return self.register_job(job_cfg, conv, ledger)

    def open_conversation(
        self, job_cfg: HeartbeatConfig, folded: Folded | None
    ) -> tuple[Conversation, JobLedger]:
        """Open one job's journal (cutting a torn tail), with its state and ledger:
        from ``folded`` (read by a worker) without reading it again, else by reading it.

        Creates the journal when there is none; journals nothing.
        """
        name = job_cfg.name
        logs = self.rt.logs
        ledger = JobLedger()
        conv: Conversation | None = None
        if folded is not None and isinstance(logs, FileEventLogStore):
            conv = Conversation.open_folded(logs, name, folded)
            ledger = folded.ledger
        if conv is None:
            ledger = JobLedger()  # not read yet, or changed since the worker read it
            conv = Conversation.open(logs, name, visit=ledger.feed)
        if self.rt.heads is not None:
            try:
                self.rt.heads.check_opened(name, conv.journal)
            except VigilError:
                conv.close()
                raise
        return self._log_tail_cut(conv), ledger

    def _log_tail_cut(self, conv: Conversation) -> Conversation:
        """Say at once that a torn tail was cut (its copy is kept beside the journal)."""
        cut = conv.tail_cut
        if cut is not None:
            self.rt.log.warning(
                "torn_tail_cut",
                job=conv.name,
                line=cut.tail.line,
                reason=cut.tail.reason,
                bytes_cut=cut.bytes_cut,
                kept_as=str(cut.broken_copy),
            )
        return conv

    def register_job(
        self, job_cfg: HeartbeatConfig, conv: Conversation, ledger: JobLedger
    ) -> Replay | None:
        """Settle the delivery fence, heal an interrupted turn and register the job.

        Returns the beat to rerun at once (an interrupted turn), if any.
        """
        rt = self.rt
        conv.listeners.append(lambda _name, _seq, event: ledger.feed(event))
        conv.listeners.append(rt.mirror.apply)
        heads = rt.heads
        if heads is not None:

            def commit_head(synced: Conversation) -> None:
                heads.note(synced.name, synced.journal, rt.transcripts)
                heads.commit()

            conv.synced.append(commit_head)
        conv.listeners.extend(rt.listeners)
        conv.timing = rt.timing
        log = rt.log.bind(job=job_cfg.name)
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
            rt.make_agent(agent_spec(job_cfg, rt.spec_env)),
            job=job_cfg.name,
            cwd=str(job_cfg.cwd),
            turn_timeout=rt.config.turn_timeout_for(job_cfg.name),
            has_transcript=rt.transcripts.has_session,
        )
        runner.quiet_rule = job_cfg.quiet_rule
        runner.on_interrupted = job_cfg.on_interrupted
        rt.jobs[job_cfg.name] = Job(job_cfg, runner, ledger)
        for key in settle_open(list(ledger.open_deliveries.values()), JournalDeliveryLog(conv)):
            log.warning("delivery_fenced", turn=key.turn, sink=key.sink)
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
        return replay_of(policy, conv.state)
