"""What a reload changes: the new config compared with the running one (pure).

A job is *added*, *removed*, *changed* or *unchanged* by name. For a changed job,
``reschedule`` says its schedule changed (otherwise its next due time stays) and
``respec`` that its agent settings changed (otherwise its live conversation stays).
:func:`reload_problems` lists what a reload cannot apply; any problem refuses the
whole new configuration.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from daemon.config.model import Config, DaemonConfig, HeartbeatConfig
from daemon.ports.agent import AgentSpec

__all__ = ["JobDiff", "daemon_changes", "diff_jobs", "reload_problems"]

SpecOf = Callable[[HeartbeatConfig], AgentSpec]
ScheduleOf = Callable[[HeartbeatConfig], tuple[object, ...]]


@dataclass(frozen=True)
class JobDiff:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    reschedule: frozenset[str] = frozenset()
    respec: frozenset[str] = frozenset()


def diff_jobs(old: Config, new: Config, *, spec: SpecOf, schedule: ScheduleOf) -> JobDiff:
    before = {j.name: j for j in old.heartbeats}
    after = {j.name: j for j in new.heartbeats}
    changed = [n for n in after if n in before and after[n] != before[n]]
    return JobDiff(
        added=[n for n in after if n not in before],
        removed=[n for n in before if n not in after],
        changed=changed,
        unchanged=[n for n in after if n in before and after[n] == before[n]],
        reschedule=frozenset(n for n in changed if schedule(after[n]) != schedule(before[n])),
        respec=frozenset(n for n in changed if spec(after[n]) != spec(before[n])),
    )


def reload_problems(old: Config, new: Config) -> list[str]:
    """Why ``new`` cannot replace ``old`` while running (empty: it can)."""
    problems = []
    before = {j.name: j for j in old.heartbeats}
    for job in new.heartbeats:
        was = before.get(job.name)
        if was is not None and was.cwd != job.cwd:
            problems.append(
                f"heartbeat[{job.name}].cwd: changed from {was.cwd} to {job.cwd}; a "
                "conversation can only be resumed from the directory it started in. Restore "
                "the old cwd, or give the job a new name to start a new conversation"
            )
    return problems


def daemon_changes(old: DaemonConfig, new: DaemonConfig) -> list[str]:
    """``[daemon]`` keys whose value differs; these take effect at the next restart."""
    return [key for key in DaemonConfig.model_fields if getattr(old, key) != getattr(new, key)]
