"""Beats: a due beat passes its gate, waits for a turn slot, runs, and is delivered.

A due beat first passes the job's gate (``jobs.gate``: empty prompt, active hours,
daily budget), else it is journaled as skipped with the reason. One turn at a time per
conversation. A beat waits for a turn slot and a live client (:class:`ClientPool`) up
to its window, which closes shortly before the job's next beat is due; a beat that
waited past it is journaled ``no_capacity`` (and keeps its conversation's place in the
pool's fair queue; ``over_capacity`` is logged at most once a minute). A non-quiet
reply is delivered to the job's sinks behind the delivery fence.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from daemon.agent.pool import LeaseTimeout
from daemon.errors import JournalFatalError, JournalWriteError, OwnershipLost
from daemon.events import Trigger
from daemon.runtime.beats import BeatResult
from daemon.runtime.context import Runtime
from daemon.runtime.job import Job, JournalDeliveryLog, beat_policy, routes
from daemon.runtime.overload import OverloadAlarm
from daemon.runtime.scheduling import Scheduling
from daemon.runtime.status import status_line
from jobs.delivery import deliver
from jobs.gate import check_beat
from jobs.prompt import with_queued
from jobs.sinks import Reply

__all__ = ["AfterBeat", "Dispatcher", "iso_z", "wait_window"]

# Runs after each beat that ran (completed, failed or interrupted), before delivery.
AfterBeat = Callable[[Job, BeatResult], Awaitable[None]]


def iso_z(when: datetime) -> str:
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def wait_window(due: datetime, next_due: datetime | None, turn_timeout_s: float) -> float:
    """How long a beat due at ``due`` may wait for a turn slot (pure): until a little
    before the job's next beat is due, so that one finds it gone."""
    if next_due is None:
        return turn_timeout_s
    left = (next_due - due).total_seconds()
    return max(left - min(1.0, left / 10), 0.0)


class Dispatcher:
    def __init__(self, rt: Runtime, scheduling: Scheduling) -> None:
        self.rt = rt
        self.scheduling = scheduling
        self.after_beat: list[AfterBeat] = []
        self.overload = OverloadAlarm(rt.clock)

    async def on_due(self, name: str) -> None:
        self.due(name, "schedule")

    def due(self, name: str, trigger: Trigger) -> bool:
        """A beat came due: run it, or journal why not. Returns whether it runs."""
        rt = self.rt
        job = rt.jobs.get(name)
        if job is None or job.retired or job.handing_over or rt.draining:
            return False  # (handed over: the next owner runs the beats it missed)
        try:
            blocked = self.blocked(job)
            if blocked is not None:
                job.runner.skip(*blocked)
                return False
            now = rt.clock.now()
            skip = check_beat(
                beat_policy(job.config),
                now=now,
                spent_today=job.ledger.spend.spent_today(now, job.config.zone),
                manual=trigger == "manual",
                pause=job.ledger.pause,
            )
            if skip is not None:
                rt.pool.drop_place(name)  # not owed a turn: no place kept in the queue
                job.runner.skip(skip.reason, skip.detail)
                return False
        except JournalFatalError as exc:
            rt.health.die(exc)
            return False
        except (JournalWriteError, OwnershipLost) as exc:
            if isinstance(exc, OwnershipLost):
                rt.health.lose(name, exc)
            else:
                rt.health.degrade(name, exc)
            return False
        # Messages queued with `vigil send --next-beat` join this beat's prompt; its
        # turn_started names them, which consumes them.
        queued = list(job.ledger.queued.values())
        prompt = with_queued(job.config.prompt_text, [q.text for q in queued])
        self.spawn(name, prompt, trigger, {"queued": [q.id for q in queued]} if queued else None)
        return True

    def request_beat(self, name: str) -> tuple[bool, str]:
        """``vigil beat NAME``: run a beat now (active hours do not apply)."""
        rt = self.rt
        job = rt.jobs.get(name)
        if job is None or job.retired:
            return False, f"no job named {name!r} (jobs: {', '.join(sorted(rt.jobs))})"
        if rt.draining:
            return False, "the daemon is stopping"
        if job.runner.busy:
            return False, f"a turn of {name!r} is running; one turn at a time per conversation"
        if name in rt.waiting:
            return False, f"a beat of {name!r} is waiting for a free turn slot"
        if not self.due(name, "manual"):
            return False, f"the beat of {name!r} was skipped; `vigil history {name}` says why"
        return True, ""

    def blocked(self, job: Job) -> tuple[str, str] | None:
        """Why a new beat of ``job`` cannot start now: one beat at a time per job."""
        if job.runner.busy:
            return "previous_turn_running", "the previous turn was still running"
        if job.name in self.rt.waiting:
            return (
                "previous_beat_waiting",
                "the previous beat was still waiting for a free turn slot",
            )
        return None

    def spawn(
        self, name: str, prompt: str, trigger: Trigger, extra: dict[str, Any] | None = None
    ) -> None:
        """Start a beat; ``extra`` fields are journaled with its turn_started (or its skip)."""
        rt = self.rt
        job = rt.jobs[name]
        task = asyncio.create_task(
            self._beat(job, prompt, trigger, rt.clock.now(), extra), name=f"beat:{name}"
        )
        rt.tasks.add(task)
        job.tasks.add(task)
        task.add_done_callback(rt.tasks.discard)
        task.add_done_callback(lambda done: self._beat_done(job, done))
        rt.waiting[name] = task  # until it holds a turn slot

    def _beat_done(self, job: Job, task: asyncio.Task[None]) -> None:
        """A job removed by a reload closes once its last beat is over, whichever of the
        two happened first (checked here, when the task is really finished)."""
        job.tasks.discard(task)
        if job.retired and not job.tasks and not self.rt.draining:
            self.rt.background(close_job(self.rt, job), f"close:{job.name}")

    async def _beat(
        self,
        job: Job,
        prompt: str,
        trigger: Trigger,
        due: datetime,
        extra: dict[str, Any] | None = None,
    ) -> None:
        rt = self.rt
        runner = job.runner
        try:
            result = await self._leased_beat(job, prompt, trigger, due, extra or {})
        except JournalFatalError as exc:
            rt.health.die(exc)
            await runner.agent.disconnect()
            return
        except JournalWriteError as exc:
            rt.health.degrade(job.name, exc)
            await runner.agent.disconnect()
            return
        except OwnershipLost as exc:  # another node took the conversation over
            rt.health.lose(job.name, exc)
            return
        if rt.health.degraded is not None:
            rt.health.degraded = None
        self._report(job.name, result)
        if result.outcome == "skipped":
            return
        if job.reconnect_after_turn:
            job.reconnect_after_turn = False
            await runner.agent.disconnect()
        self.scheduling.apply_backoff(job)
        for hook in self.after_beat:
            try:
                await hook(job, result)
            except JournalFatalError as exc:
                rt.health.die(exc)
            except JournalWriteError as exc:
                rt.health.degrade(job.name, exc)
        if result.outcome == "completed" and not result.quiet and result.reply:
            await self._deliver(job, result)

    async def _leased_beat(
        self, job: Job, prompt: str, trigger: Trigger, due: datetime, extra: dict[str, Any]
    ) -> BeatResult:
        """Wait (up to the beat's window) for a turn slot and a live client, then run."""
        rt = self.rt
        runner = job.runner
        task = rt.waiting.get(job.name)
        # A skipped `vigil send` names its request, so the waiting CLI learns of it.
        request = {"request": extra["request"]} if "request" in extra else {}
        window = wait_window(
            due, rt.schedule.next_due(job.name), runner.turn_timeout.total_seconds()
        )
        # Its place among waiting beats: when it came due, on the monotonic clock.
        due_mono = rt.clock.monotonic() - max((rt.clock.now() - due).total_seconds(), 0.0)
        try:
            async with rt.pool.lease(job.name, runner.agent, wait_s=window, due=due_mono) as waited:
                del rt.waiting[job.name]
                if rt.draining:
                    return runner.skip("daemon_stopping", "the daemon is stopping", **request)
                return await runner.beat(
                    prompt,
                    trigger,
                    due_at=iso_z(due),
                    waited_s=round(waited, 3) if waited >= 0.001 else None,
                    extra=extra,
                )
        except LeaseTimeout as exc:
            skipped = runner.skip(
                "no_capacity",
                str(exc),
                waited_s=round(exc.waited_s, 3),
                max_concurrent_turns=rt.pool.max_turns,
                **request,
            )
            self.overload.beat_unserved(rt, job.name, exc.waited_s)
            return skipped
        except asyncio.CancelledError:
            if rt.waiting.get(job.name) is task:
                runner.skip(
                    "daemon_stopping", "the daemon stopped while the beat waited", **request
                )
            raise
        finally:
            if rt.waiting.get(job.name) is task:
                del rt.waiting[job.name]

    async def _deliver(self, job: Job, result: BeatResult) -> None:
        rt = self.rt
        reply = Reply(
            job.name, result.turn, result.reply or "", iso_z(rt.clock.now()), result.session_id
        )
        try:
            await deliver(
                reply,
                routes(job.config, emit=self._show_reply),
                JournalDeliveryLog(job.runner.conversation),
            )
        except JournalFatalError as exc:
            rt.health.die(exc)
        except JournalWriteError as exc:
            rt.health.degrade(job.name, exc)
        except OwnershipLost as exc:  # fenced before the send: the new owner settles it
            rt.health.lose(job.name, exc)

    def _show_reply(self, reply: Reply) -> None:
        self.rt.log.info(
            "reply", job=reply.job, turn=reply.turn, session=reply.session_id, text=reply.text
        )

    def _report(self, name: str, result: BeatResult) -> None:
        self.rt.notifier.notify("STATUS=" + status_line(self.rt))
        if result.outcome == "failed":
            self.rt.log.warning(
                "beat_failed",
                job=name,
                turn=result.turn,
                reason=result.reason,
                detail=result.detail,
            )


async def close_job(rt: Runtime, job: Job) -> None:
    """Forget a job a reload removed, once its work is done; its client goes last."""
    if not job.retired or rt.jobs.get(job.name) is not job:
        return
    del rt.jobs[job.name]
    rt.pool.forget(job.name)
    job.runner.conversation.close()
    rt.log.info("job_removed", job=job.name)
    # Its client goes last: the CLI's orderly exit can take seconds (up to ~15 s
    # when it must be terminated), and the job is gone already.
    await job.runner.agent.disconnect()
