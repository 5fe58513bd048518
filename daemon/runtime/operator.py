"""The operator's word to a running daemon: send, queue for the next beat, pause, resume.

Reached over the control socket (:mod:`.control`). Everything is journaled in the job's
own conversation before it is answered, so it survives a restart:

* ``send``: a turn now with the operator's text as its prompt (trigger ``send``), one
  turn at a time: refused while a turn of that conversation runs or a beat waits for a
  slot. The answer carries a ``request`` id that the turn's ``turn_started`` (or its
  skip) repeats, so ``vigil send`` can follow that turn in the journal.
* ``queue``: ``message_queued``; the next beat adds it to its prompt and its
  ``turn_started`` lists it under ``queued`` (consumed).
* ``pause`` / ``resume``: ``job_paused`` / ``job_resumed``; due beats are skipped with
  reason ``paused`` while the pause lasts (``jobs.gate``).
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from daemon import events as ev
from daemon.errors import JournalFatalError, JournalWriteError
from daemon.runtime.context import Runtime
from daemon.runtime.dispatch import Dispatcher, iso_z
from daemon.runtime.job import Job, beat_policy
from jobs.gate import check_beat

__all__ = ["Operator"]

MAX_TEXT = 32 * 1024
MAX_QUEUED = 20
Answer = dict[str, Any]


def _refused(why: str) -> Answer:
    return {"ok": False, "error": why}


class Operator:
    def __init__(self, rt: Runtime, dispatch: Dispatcher) -> None:
        self.rt = rt
        self.dispatch = dispatch

    def handle(self, op: str, request: dict[str, Any]) -> Answer:
        """One control-socket request (``op`` in :data:`OPERATOR_OPS`)."""
        name = request.get("job")
        if not isinstance(name, str):
            return _refused(f"{op} needs a job name")
        job = self.rt.jobs.get(name)
        if job is None or job.retired:
            return _refused(f"no job named {name!r} (jobs: {', '.join(sorted(self.rt.jobs))})")
        if self.rt.draining:
            return _refused("the daemon is stopping")
        handlers: dict[str, Callable[[Job, dict[str, Any]], Answer]] = {
            "send": self._send,
            "queue": self._queue,
            "pause": self._pause,
            "resume": self._resume,
        }
        try:
            return handlers[op](job, request)
        except JournalFatalError as exc:
            self.rt.health.die(exc)
            return _refused(f"the journal failed: {exc}")
        except JournalWriteError as exc:
            self.rt.health.degrade(name, exc)
            return _refused(f"could not journal it: {exc}")

    def _text(self, request: dict[str, Any]) -> str | None:
        text = request.get("text")
        if not isinstance(text, str) or not text.strip() or len(text) > MAX_TEXT:
            return None
        return text

    def _send(self, job: Job, request: dict[str, Any]) -> Answer:
        text = self._text(request)
        if text is None:
            return _refused(f"send needs a text of 1 to {MAX_TEXT} characters")
        name = job.name
        if job.runner.busy:
            return _refused(f"a turn of {name!r} is running; one turn at a time per conversation")
        if name in self.rt.waiting:
            return _refused(f"a beat of {name!r} is waiting for a free turn slot")
        now = self.rt.clock.now()
        policy = dataclasses.replace(beat_policy(job.config), prompt=text)
        skip = check_beat(
            policy,
            now=now,
            spent_today=job.ledger.spend.spent_today(now, job.config.zone),
            manual=True,
        )
        if skip is not None:
            return _refused(f"{skip.reason}: {skip.detail}")
        request_id = uuid.uuid4().hex[:16]
        self.dispatch.spawn(name, text, "send", {"request": request_id})
        self.rt.log.info("send_started", job=name, request=request_id)
        return {"ok": True, "request": request_id}

    def _queue(self, job: Job, request: dict[str, Any]) -> Answer:
        text = self._text(request)
        if text is None:
            return _refused(f"a queued message needs a text of 1 to {MAX_TEXT} characters")
        if len(job.ledger.queued) >= MAX_QUEUED:
            return _refused(f"{MAX_QUEUED} messages already wait for the next beat of {job.name!r}")
        message_id = uuid.uuid4().hex[:16]
        conv = job.runner.conversation
        conv.record(ev.message_queued(message_id, text))
        conv.turn_boundary()
        return {"ok": True, "id": message_id, "queued": len(job.ledger.queued)}

    def _pause(self, job: Job, request: dict[str, Any]) -> Answer:
        seconds = request.get("for_s")
        if seconds is not None and (
            isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds <= 0
        ):
            return _refused("pause for_s must be a positive number of seconds")
        until = None
        if seconds is not None:
            until = iso_z(self.rt.clock.now() + timedelta(seconds=float(seconds)))
        conv = job.runner.conversation
        conv.record(ev.job_paused(by="operator", until=until))
        conv.turn_boundary()
        return {"ok": True, "paused": True, "until": until}

    def _resume(self, job: Job, request: dict[str, Any]) -> Answer:
        del request
        if job.ledger.paused(self.rt.clock.now()) is None:
            return {"ok": True, "paused": False, "was_paused": False}
        conv = job.runner.conversation
        conv.record(ev.job_resumed())
        conv.turn_boundary()
        return {"ok": True, "paused": False, "was_paused": True}
