"""A job that keeps failing says so: alerts, recovery messages, auto-pause.

After each beat that ran, :meth:`Alerts.after_beat` reads the job's ledger (the failure
streak and whether an alert is out are folded from the journal, so both survive a
restart) and the pure rules of :mod:`jobs.alerts`. An alert is journaled
(``alert_raised``) and then delivered to the job's ``[[heartbeat.alert]]`` sinks behind
the same delivery fence as replies (``delivery_started`` before each attempt, at most
once). ``auto_pause_after`` pauses the job (``job_paused``, ``by = "auto"``).
"""

from __future__ import annotations

from daemon import events as ev
from daemon.runtime.beats import BeatResult
from daemon.runtime.context import Runtime
from daemon.runtime.dispatch import iso_z
from daemon.runtime.job import Job, JournalDeliveryLog, alert_routes
from jobs.alerts import AlertPolicy, alert_due, alert_text, auto_pause_due
from jobs.delivery import deliver
from jobs.sinks import Reply

__all__ = ["Alerts"]


class Alerts:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    async def after_beat(self, job: Job, result: BeatResult) -> None:
        if result.outcome not in ("completed", "failed"):
            return
        cfg, ledger, conv = job.config, job.ledger, job.runner.conversation
        policy = AlertPolicy(cfg.alert_after, cfg.auto_pause_after)
        now = self.rt.clock.now()
        completed = result.outcome == "completed"
        streak = ledger.failure_streak
        pausing = not completed and auto_pause_due(
            policy, streak=streak, paused=ledger.paused(now) is not None
        )
        if pausing:
            last = ledger.last_failure
            conv.record(
                ev.job_paused(
                    by="auto",
                    until=None,
                    detail=f"auto_pause_after = {policy.auto_pause_after}: {streak} failed "
                    f"beats in a row, the last with reason {last.reason if last else '?'}",
                )
            )
            conv.turn_boundary()
            self.rt.log.warning("job_auto_paused", job=job.name, failures=streak)
        kind = alert_due(policy, completed=completed, streak=streak, alerting=ledger.alerting)
        if kind is None and pausing and not ledger.alerting:
            kind = "failing"  # paused before alert_after: the operator still hears of it
        if kind is None:
            return
        failures = ledger.ended_streak if kind == "recovered" else streak
        failure = ledger.last_failure
        reason = failure.reason if failure is not None else result.reason
        detail = failure.detail if failure is not None else result.detail
        conv.record(
            ev.alert_raised(result.turn, kind, failures=failures, reason=reason, detail=detail)
        )
        conv.turn_boundary()
        text = alert_text(
            job.name, kind, failures=failures, turn=result.turn, reason=reason, detail=detail
        )
        if pausing:
            text += f"; the job is paused until `vigil resume {job.name}`"
        reply = Reply(job.name, result.turn, text, iso_z(now), conv.state.session_id)
        await deliver(reply, alert_routes(cfg, emit=self._show), JournalDeliveryLog(conv))

    def _show(self, alert: Reply) -> None:
        self.rt.log.warning("alert", job=alert.job, turn=alert.turn, text=alert.text)
