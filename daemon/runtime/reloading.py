"""SIGHUP: re-read the config file and apply it to the running daemon.

A bad file is refused and logged, the running configuration stays; otherwise jobs are
added, removed (after their running work) or changed in place, and nothing that did
not change is touched. What changes is decided by :mod:`daemon.runtime.reload` (pure).
"""

from __future__ import annotations

import asyncio

from daemon.config.load import load_config
from daemon.config.model import Config, HeartbeatConfig
from daemon.config.problems import ConfigError
from daemon.errors import VigilError
from daemon.runtime.context import Runtime
from daemon.runtime.dispatch import Dispatcher, close_job
from daemon.runtime.job import Job, agent_spec, schedule_key
from daemon.runtime.recovery import Recovery
from daemon.runtime.reload import daemon_changes, diff_jobs, reload_problems
from daemon.runtime.scheduling import Scheduling
from daemon.runtime.status import status_line

__all__ = ["Reloader"]


class Reloader:
    def __init__(
        self, rt: Runtime, recovery: Recovery, scheduling: Scheduling, dispatch: Dispatcher
    ) -> None:
        self.rt = rt
        self.recovery = recovery
        self.scheduling = scheduling
        self.dispatch = dispatch

    def reload(self) -> bool:
        """Re-read the config file and apply it; False (logged) when it was refused."""
        return self.apply(self.read())

    async def reload_off_loop(self) -> bool:
        """:meth:`reload`, with the file and the prompt files read on a worker thread
        (a slow disk or a huge file never stalls the event loop)."""
        loaded = await asyncio.to_thread(self.read)
        if self.rt.draining:
            return False
        return self.apply(loaded)

    def read(self) -> Config | str:
        """The new configuration, or why it cannot be read (touches no state)."""
        if self.rt.config_path is None:
            return "vigil was started without a config path"
        try:
            return load_config(self.rt.config_path)
        except ConfigError as exc:
            return str(exc)

    def apply(self, new: Config | str) -> bool:
        """Apply a configuration :meth:`read` returned; False (logged) when refused."""
        rt = self.rt
        if isinstance(new, str):
            rt.log.error("reload_refused", path=str(rt.config_path), error=new)
            return False
        problems = reload_problems(rt.config, new)
        if problems:
            rt.log.error("reload_refused", path=str(rt.config_path), error="; ".join(problems))
            return False
        ignored = daemon_changes(rt.config.daemon, new.daemon)
        if ignored:
            rt.log.warning(
                "reload_daemon_settings_need_restart",
                keys=ignored,
                detail="[daemon] settings take effect at the next restart",
            )
        new = new.model_copy(update={"daemon": rt.config.daemon})
        diff = diff_jobs(
            rt.config,
            new,
            spec=lambda cfg: agent_spec(cfg, rt.spec_env),
            schedule=schedule_key,
        )
        rt.config = new
        for name in diff.removed:
            if name in rt.jobs:
                self._retire(rt.jobs[name])
        for name in diff.changed:
            if name in rt.jobs:
                self._change(
                    rt.jobs[name],
                    new.job(name),
                    reschedule=name in diff.reschedule,
                    respec=name in diff.respec,
                )
        refused: list[str] = []
        for name in diff.added:
            if not self._add(new.job(name)):
                refused.append(name)
        rt.log.info(
            "reloaded",
            added=diff.added,
            removed=diff.removed,
            changed=diff.changed,
            unchanged=diff.unchanged,
            refused=refused,
        )
        rt.notifier.notify("STATUS=" + status_line(rt))
        return True

    def _change(self, job: Job, cfg: HeartbeatConfig, *, reschedule: bool, respec: bool) -> None:
        rt = self.rt
        job.config = cfg
        runner = job.runner
        runner.quiet_rule = cfg.quiet_rule
        runner.on_interrupted = cfg.on_interrupted
        runner.turn_timeout = rt.config.turn_timeout_for(cfg.name)
        if respec:
            runner.agent.spec = agent_spec(cfg, rt.spec_env)
            if runner.busy:
                job.reconnect_after_turn = True
            elif runner.agent.connected:
                rt.background(runner.agent.disconnect(), f"reconnect:{job.name}")
        if reschedule:
            self.scheduling.reschedule(job)

    def _add(self, cfg: HeartbeatConfig) -> bool:
        rt = self.rt
        existing = rt.jobs.get(cfg.name)
        if existing is not None:  # removed earlier, still finishing: take it back
            existing.retired = False
            self._change(existing, cfg, reschedule=True, respec=True)
            return True
        try:
            replay = self.recovery.open_job(cfg)
        except VigilError as exc:
            rt.log.error("job_refused", job=cfg.name, error=str(exc))
            return False
        if cfg.name not in rt.jobs:
            return False  # refused inside (cwd changed), already logged
        catch_up = self.scheduling.schedule_new(cfg.name, replaying=replay is not None)
        if replay is not None:
            self.dispatch.spawn(cfg.name, replay[1], replay[0])
        elif catch_up:
            self.dispatch.due(cfg.name, "catch_up")
        return True

    def _retire(self, job: Job) -> None:
        job.retired = True
        self.rt.schedule.remove(job.name)
        if not job.tasks:
            self.rt.background(close_job(self.rt, job), f"close:{job.name}")
