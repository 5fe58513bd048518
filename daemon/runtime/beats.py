"""One beat of one conversation: the turn's life from ``turn_started`` to its end.

Every step is journaled through ``Conversation.record`` before it is shown. A turn
ends exactly one way: ``turn_completed``, ``turn_failed`` (with a reason code) or
``turn_interrupted`` (drain or cancellation). The journal is synced at the boundary.

A completed turn whose reply matches the job's :class:`~jobs.quiet.QuietRule` is
journaled ``quiet`` (``turn_completed`` with ``quiet: true``); the caller does not
deliver it. The CLI counts ``max_budget_usd`` per CLI process, not per query, so a job
with a per-beat budget gets a fresh CLI process (a resume) for every beat.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

from daemon import events as ev
from daemon.errors import JournalWriteError
from daemon.events import Trigger
from daemon.journal.conversation import WRITE_FAILED, Conversation, PendingCut
from daemon.ports.agent import AgentDriver, AgentFailure, ConnectPlan, TurnOutcome
from jobs.backoff import AUTH_PAUSE
from jobs.quiet import QuietRule

Outcome = Literal["completed", "failed", "interrupted", "skipped"]
AUTH_HINT = (
    "the model API rejected the API key: check ANTHROPIC_API_KEY in vigil's environment "
    f"(this job's beats now pause for at least {AUTH_PAUSE.total_seconds() / 60:.0f} minutes, "
    "doubling, until a beat succeeds; `vigil beat` tries at once)"
)


@dataclass
class BeatResult:
    turn: int
    outcome: Outcome
    reason: str | None = None
    detail: str | None = None
    quiet: bool = False  # completed with the quiet token: journaled, not delivered
    reply: str | None = None
    session_id: str | None = None


class BeatRunner:
    """Runs beats for one conversation, one at a time."""

    def __init__(
        self,
        conversation: Conversation,
        agent: AgentDriver,
        *,
        job: str,
        cwd: str,
        turn_timeout: timedelta,
        has_transcript: Callable[[str], bool],
    ) -> None:
        self.conversation = conversation
        self.agent = agent
        self.job = job
        self.cwd = cwd
        self.turn_timeout = turn_timeout
        self.has_transcript = has_transcript
        self.on_interrupted = "replay"  # the job's policy: cut an interrupted turn or not
        self.last: BeatResult | None = None
        self._write_failure: str | None = None  # why the open turn's end is not journaled
        self.quiet_rule = QuietRule()

    @property
    def busy(self) -> bool:
        return self.conversation.busy

    def skip(self, reason: str, detail: str = "", **fields: Any) -> BeatResult:
        """Journal a due beat that does not run; ``fields`` add reason-specific facts."""
        conv = self.conversation
        turn = conv.state.next_turn
        conv.record(ev.beat_skipped(turn, reason, detail, **fields))
        conv.turn_boundary()
        self.last = BeatResult(turn, "skipped", reason, detail)
        return self.last

    async def beat(
        self,
        prompt: str,
        trigger: Trigger,
        *,
        due_at: str | None = None,
        waited_s: float | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> BeatResult:
        """Run one turn. Callers must check :attr:`busy` first (one turn at a time).

        ``due_at`` and ``waited_s`` (the wait for a turn slot) are journaled with the
        turn's start, so the delay from due to first delta can be read back; ``extra``
        adds fields to it (``request`` of ``vigil send``, ``queued`` message ids)."""
        conv = self.conversation
        if conv.busy:
            return self.skip("previous_turn_running", "a beat came due while a turn was running")
        conv.busy = True
        turn = conv.state.next_turn
        prompt_uuid = str(uuid.uuid4())
        try:
            self._close_unjournaled_turn()
            conv.record(
                {
                    **ev.turn_started(
                        turn,
                        prompt,
                        job=self.job,
                        trigger=trigger,
                        due_at=due_at,
                        waited_s=waited_s,
                    ),
                    "prompt_uuid": prompt_uuid,
                    **(extra or {}),
                }
            )
            try:
                result = await self._run(turn, prompt, prompt_uuid)
            except JournalWriteError as exc:
                # Not every event of this turn could be journaled (disk full): the
                # journal is the truth, so the next beat closes it as failed once
                # records can be written, and the connect after that resumes without it
                # (the state's pending cut).
                self._write_failure = str(exc)
                await self.agent.disconnect()
                raise
            self.last = result
            return result
        finally:
            conv.busy = False
            conv.turn_boundary()
            if self.agent.spec.max_budget_usd is not None:
                await self.agent.disconnect()  # the CLI's budget counts per process

    async def _run(self, turn: int, prompt: str, prompt_uuid: str) -> BeatResult:
        """Connect if needed, run the turn, journal how it ended."""
        try:
            async with asyncio.timeout(self.turn_timeout.total_seconds()):
                await self._ensure_connected()
                outcome = await self.agent.run_turn(
                    prompt, prompt_uuid, turn, self.conversation.record
                )
        except TimeoutError:
            await self.agent.interrupt()
            await self.agent.disconnect()
            return self._end_failed(
                turn, "timeout", f"the turn ran longer than turn_timeout ({self.turn_timeout})"
            )
        except AgentFailure as failure:
            await self.agent.disconnect()
            return self._end_failed(turn, failure.reason, failure.detail)
        except asyncio.CancelledError:
            await self.agent.interrupt()
            await self.agent.disconnect()
            self.conversation.record(ev.turn_interrupted(turn, "shutdown"))
            self.last = BeatResult(turn, "interrupted", "shutdown")
            raise
        return self._end(turn, outcome)

    def _close_unjournaled_turn(self) -> None:
        """Close a turn whose end could not be journaled (the journal failed mid-turn)."""
        dangling = self.conversation.state.open_turn
        if dangling is None:
            return
        detail = self._write_failure or "the turn's end could not be journaled"
        self.conversation.record(ev.turn_failed(dangling.turn, WRITE_FAILED, detail))
        self._write_failure = None

    def _end(self, turn: int, outcome: TurnOutcome) -> BeatResult:
        """Journal how a turn that ran to its result ended."""
        if outcome.is_error:
            status = f"HTTP {outcome.api_error_status}" if outcome.api_error_status else ""
            # The CLI's own words (e.g. "API Error: Connection dropped (ECONNRESET)").
            said = [x for x in [*outcome.errors, outcome.text or ""] if x]
            detail = "; ".join([status, *dict.fromkeys(said)] if status else said)
            detail = detail or "the model API failed"
            reason = "model_error"
            if outcome.api_error_status in (401, 403):
                reason, detail = "auth_failed", f"{AUTH_HINT}; {detail}"
            if outcome.subtype == "error_max_budget_usd":
                reason = "max_budget_exceeded"
            return self._end_failed(turn, reason, detail)
        quiet = self.quiet_rule.is_quiet(outcome.text)
        self.conversation.record(ev.turn_completed(turn, quiet=quiet))
        return BeatResult(
            turn, "completed", quiet=quiet, reply=outcome.text, session_id=outcome.session_id
        )

    def _end_failed(self, turn: int, reason: str, detail: str) -> BeatResult:
        self.conversation.record(ev.turn_failed(turn, reason, detail))
        return BeatResult(turn, "failed", reason, detail)

    def _cut(self) -> PendingCut | None:
        """The turn the next connect drops, if any: one the journal could not hold, or
        an interrupted one when ``on_interrupted`` is ``replay`` or ``drop``."""
        cut = self.conversation.state.pending_cut
        if cut is None or cut.cause == "write_failed" or self.on_interrupted != "continue":
            return cut
        return None

    async def _ensure_connected(self) -> None:
        if self.agent.connected:
            exit_code = self.agent.cli_exit_code()
            if exit_code is None:
                return
            # The CLI died between beats (OOM killer, an operator's kill): let the
            # client go (the process is already reaped) and resume in a new one.
            self.conversation.log.warning("cli_exited_between_beats", exit_code=exit_code)
            await self.agent.disconnect()
        conv = self.conversation
        session_id = conv.state.session_id
        cut = self._cut()
        if session_id is None or (cut is not None and cut.resume_at is None):
            session_id = str(uuid.uuid4())  # nothing completed to resume: start afresh
            plan = ConnectPlan(session_id, resume=False)
        elif self.has_transcript(session_id):
            plan = ConnectPlan(
                session_id,
                resume=True,
                resume_at=cut.resume_at if cut else None,
                drops_turn=cut.drops_turn if cut else None,
            )
        else:
            # The session was assigned but no transcript of it reached the store (the
            # daemon or the CLI died before the first mirror flush): nothing of it can
            # be resumed, and the CLI refuses the same id again if its own local copy
            # exists ("Session ID ... is already in use"). Start a fresh session.
            session_id = str(uuid.uuid4())
            plan = ConnectPlan(session_id, resume=False)
        try:
            await self.agent.connect(plan)
        except AgentFailure as failure:
            if failure.reason != "resume_rejected" or not plan.resume_at:
                raise
            # The CLI refused to attribute everything after resume_at to this half turn:
            # an earlier half turn lies there too (e.g. a replay killed before its prompt
            # reached the transcript). Still cut at the last completed turn, without the
            # check: a plain resume would show the model the half turns.
            plan = ConnectPlan(session_id, resume=True, resume_at=plan.resume_at)
            await self.agent.connect(plan)
        conv.record(ev.session_bound(session_id, self.cwd, mode="resume" if plan.resume else "new"))
