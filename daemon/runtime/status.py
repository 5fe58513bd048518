"""The daemon's picture of itself: ``STATUS=`` lines for systemd and ``vigil status``."""

from __future__ import annotations

import os
from datetime import UTC
from typing import Any

from daemon.runtime.context import Runtime
from daemon.runtime.job import Job
from daemon.runtime.overload import load_json

__all__ = ["status_line", "status_snapshot"]


def status_snapshot(rt: Runtime) -> dict[str, Any]:
    """A JSON-safe picture: jobs, next beats, last outcomes, spend, the pool."""
    now = rt.clock.now()
    jobs = []
    for name, job in sorted(rt.jobs.items()):
        if job.retired:
            continue
        last = job.runner.last
        due = rt.schedule.next_due(name)
        pause = job.ledger.paused(now)
        jobs.append(
            {
                "name": name,
                "running": job.runner.busy,
                "next_beat": due.astimezone(UTC).isoformat() if due else None,
                # This process's last beat, else the last one journaled (after a restart).
                "last_turn": last.turn if last else job.ledger.last_turn,
                "last_outcome": last.outcome if last else job.ledger.last_outcome,
                "last_reason": last.reason if last else job.ledger.last_reason,
                "spend_today_usd": round(job.ledger.spend.spent_today(now, job.config.zone), 6),
                "session_id": job.runner.conversation.state.session_id,
                "client_connected": job.runner.agent.connected,
                "cli_pid": job.runner.agent.cli_pid(),
                "paused": pause is not None,
                "paused_until": pause.until.astimezone(UTC).isoformat()
                if pause is not None and pause.until is not None
                else None,
                "paused_by": pause.by if pause is not None else None,
                "failure_streak": job.ledger.failure_streak,
                "alerting": job.ledger.alerting,
                "queued_messages": len(job.ledger.queued),
                **_context(job),
            }
        )
    pool = rt.pool
    return {
        "pid": os.getpid(),
        "status": status_line(rt),
        "state_dir": str(rt.layout.state_dir),
        "live_clients": sum(1 for j in jobs if j["client_connected"]),
        "pool": {
            "max_live_clients": pool.max_live,
            "max_concurrent_turns": pool.max_turns,
            "client_idle_timeout_s": pool.idle_timeout,
            "turns_running": pool.busy,
            "beats_waiting": len(rt.waiting),
            "evictions": pool.evictions,
        },
        "overload": load_json(pool.queue.load()),
        "degraded": rt.health.degraded,
        "mirror": rt.mirror.phase,
        "jobs": jobs,
    }


def _context(job: Job) -> dict[str, Any]:
    """The conversation's context after its last turn, its limit, and its compactions."""
    state = job.runner.conversation.state
    return {
        "context_tokens": state.context_tokens,
        "context_limit": job.config.context_limit,
        "compactions": state.compactions,
    }


def status_line(rt: Runtime) -> str:
    """One line for systemd's ``STATUS=``: jobs, running, waiting, clients, failing."""
    live = rt.live_jobs()
    running = sum(1 for j in live if j.runner.busy)
    parts = [f"{len(live)} jobs", f"{running} running"]
    if rt.waiting:
        parts.append(f"{len(rt.waiting)} waiting")
    parts.append(f"{rt.pool.live}/{rt.pool.max_live} clients")
    if rt.pool.queue.load().over_capacity:
        parts.append("over capacity")
    lasts = [j.runner.last for j in live if j.runner.last is not None]
    if lasts:
        failed = sum(1 for r in lasts if r is not None and r.outcome == "failed")
        parts.append(f"{failed} failing")
    paused = sum(1 for j in live if j.ledger.paused(rt.clock.now()) is not None)
    if paused:
        parts.append(f"{paused} paused")
    if rt.health.degraded:
        parts.insert(0, "degraded")
    if rt.draining:
        parts.insert(0, "stopping")
    return "; ".join(parts)
