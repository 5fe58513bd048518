"""Issue 15 in-process: the dispatcher over fakes serves waiting beats by their
conversation's place, a no_capacity skip keeps that place, and the overload shows in
the status snapshot and an over_capacity log line (rate-limited)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, cast

from structlog.testing import CapturingLogger
from structlog.typing import FilteringBoundLogger

from daemon.config.load import config_from_dict
from daemon.journal.keyring import Keyring
from daemon.runtime.dispatch import Dispatcher
from daemon.runtime.recovery import Recovery
from daemon.runtime.scheduling import Scheduling
from daemon.runtime.status import status_line, status_snapshot
from daemon.testing.fakes import make_runtime


def test_a_skipped_beat_keeps_its_place_and_the_overload_is_shown(tmp_path: Path) -> None:
    names = ["hog", "starved", "rival"]
    for name in names:
        (tmp_path / "work" / name).mkdir(parents=True)
    cfg = config_from_dict(
        {
            "daemon": {
                "state_dir": str(tmp_path / "state"),
                "runtime_dir": str(tmp_path / "run"),
                "max_live_clients": 3,
                "max_concurrent_turns": 1,
            },
            "heartbeat": [
                {"name": n, "every": "1m", "prompt": "check", "cwd": f"work/{n}"} for n in names
            ],
        },
        base_dir=tmp_path,
        source=tmp_path / "vigil.toml",
    )
    ip = make_runtime(cfg, keyring=Keyring.generate())
    rt, clock = ip.rt, ip.clock
    log = CapturingLogger()
    rt.log = cast(FilteringBoundLogger, log)
    scheduling = Scheduling(rt)
    dispatch = Dispatcher(rt, scheduling)
    Recovery(rt).recover()
    for name in names:
        scheduling.schedule_new(name, replaying=False)
    started: list[str] = []
    for job in rt.jobs.values():
        job.runner.conversation.listeners.append(
            lambda name, _seq, event: (
                started.append(name) if event["type"] == "turn_started" else None
            )
        )
    hog = ip.agents["hog"]
    hog.gate = asyncio.Event()

    async def scenario() -> dict[str, Any]:
        assert dispatch.due("hog", "schedule")
        await hog.at_gate.wait()  # the only turn slot is taken
        # starved's beat waits out its window (its next beat is due 1 s from now).
        assert dispatch.due("starved", "schedule")
        await rt.waiting["starved"]  # the beat task ends with the skip
        clock.advance(1)
        assert dispatch.due("rival", "schedule")  # due before starved's next beat ...
        clock.advance(0.5)
        assert dispatch.due("starved", "schedule")  # ... but starved is owed since t0
        await asyncio.sleep(0)
        snapshot = status_snapshot(rt)
        line = status_line(rt)
        hog.gate.set()  # type: ignore[union-attr]
        while pending := [t for t in rt.tasks if not t.done()]:
            await asyncio.gather(*pending)
        return {"snapshot": snapshot, "line": line}

    loop = asyncio.new_event_loop()
    try:
        seen = loop.run_until_complete(scenario())
    finally:
        loop.close()

    assert started == ["hog", "starved", "rival"]
    overload = seen["snapshot"]["overload"]
    assert overload["over_capacity"] and overload["no_capacity_skips"] == 1
    assert overload["backlog"] == 2
    assert overload["oldest_waiting"] == {"job": "starved", "waited_s": 1.5}
    assert "over capacity" in seen["line"]
    alarms = [c for c in log.calls if c.args == ("over_capacity",)]
    assert len(alarms) == 1, log.calls
    assert alarms[0].kwargs["job"] == "starved"  # whose beat went unserved
    assert alarms[0].kwargs["max_concurrent_turns"] == 1
