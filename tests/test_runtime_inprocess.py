"""The runtime driven in-process over fakes and a fake clock: beat dispatch, failure
backoff across a restart, recovery planning and reload diffs, in milliseconds.

The end-to-end suite runs the same paths with the real SDK and CLI; these tests pin
the decisions (what is journaled, what is scheduled when, what the next connect
drops) without a subprocess.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from daemon import events as ev
from daemon.config.load import config_from_dict, load_config
from daemon.config.model import Config
from daemon.events import Event
from daemon.events.heal import fold
from daemon.journal.keyring import Keyring
from daemon.ports.eventlog import EventLogStore
from daemon.runtime.dispatch import Dispatcher
from daemon.runtime.recovery import Recovery
from daemon.runtime.reloading import Reloader
from daemon.runtime.scheduling import FIRST_BEAT_DELAY, Scheduling
from daemon.testing.fakes import FakeClock, InProcess, make_runtime
from daemon.testing.memlog import MemoryEventLogStore
from jobs.backoff import FAILURE_BACKOFF_MAX

EVERY = timedelta(minutes=10)


def config(tmp_path: Path, *jobs: dict[str, Any]) -> Config:
    for job in jobs:
        (tmp_path / "work" / job["name"]).mkdir(parents=True, exist_ok=True)
    data = {
        "daemon": {"state_dir": str(tmp_path / "state"), "runtime_dir": str(tmp_path / "run")},
        "heartbeat": [
            {"every": "10m", "prompt": "check", "cwd": f"work/{job['name']}", **job} for job in jobs
        ],
    }
    return config_from_dict(data, base_dir=tmp_path, source=tmp_path / "vigil.toml")


class Daemon:
    """One in-process 'start' of the daemon over shared stores (a restart is another)."""

    def __init__(self, cfg: Config, logs: EventLogStore, clock: FakeClock, keyring: Keyring):
        self.ip: InProcess = make_runtime(cfg, keyring=keyring, clock=clock, logs=logs)
        self.rt = self.ip.rt
        self.recovery = Recovery(self.rt)
        self.scheduling = Scheduling(self.rt)
        self.dispatch = Dispatcher(self.rt, self.scheduling)

    def start(self) -> dict[str, Any]:
        replays = self.recovery.recover()
        for name in list(self.rt.jobs):
            self.scheduling.schedule_new(name, replaying=name in replays)
        return replays

    async def beat(self, name: str, trigger: Any = "schedule") -> None:
        assert self.dispatch.due(name, trigger)
        await self.settle()

    async def settle(self) -> None:
        while pending := [t for t in self.rt.tasks if not t.done()]:
            await asyncio.gather(*pending)

    def stop(self) -> None:
        for job in self.rt.jobs.values():
            job.runner.conversation.close()


@pytest.fixture
def keyring() -> Keyring:
    return Keyring.generate()


@pytest.fixture
def logs(keyring: Keyring) -> MemoryEventLogStore:
    return MemoryEventLogStore(keyring)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def events_of(logs: EventLogStore, name: str) -> list[Event]:
    return [e for _, e in logs.read(name)]


def kinds(logs: EventLogStore, name: str) -> list[str]:
    return [str(e["type"]) for e in events_of(logs, name) if e["type"] != "delta"]


@pytest.fixture
def run() -> Iterator[Any]:
    loop = asyncio.new_event_loop()
    yield loop.run_until_complete
    loop.close()


def test_a_due_beat_is_journaled_answered_and_delivered(
    tmp_path: Path, logs: MemoryEventLogStore, clock: FakeClock, keyring: Keyring, run: Any
) -> None:
    d = Daemon(config(tmp_path, {"name": "inbox"}), logs, clock, keyring)
    d.start()
    run(d.beat("inbox"))
    assert kinds(logs, "inbox") == [
        "turn_started",
        "session_bound",  # the client connects inside the first turn
        "assistant",
        "result",
        "turn_completed",
        "delivery_started",
        "delivery_done",
    ]
    (turn,) = fold(events_of(logs, "inbox")).turns
    assert (turn.status, turn.prompt, turn.reply, turn.cost_usd) == (
        "completed",
        "check",
        "reply 1 to check",
        0.01,
    )
    assert [d.sink for d in turn.deliveries] == ["stdout"]
    started = next(e for e in events_of(logs, "inbox") if e["type"] == "turn_started")
    assert started["due_at"] == clock.now().strftime("%Y-%m-%dT%H:%M:%S.000Z")


def test_one_turn_at_a_time_a_beat_due_meanwhile_is_skipped_with_its_reason(
    tmp_path: Path, logs: MemoryEventLogStore, clock: FakeClock, keyring: Keyring, run: Any
) -> None:
    d = Daemon(config(tmp_path, {"name": "inbox"}), logs, clock, keyring)
    d.start()
    agent = d.ip.agents["inbox"]
    agent.gate = asyncio.Event()

    async def scenario() -> None:
        assert d.dispatch.due("inbox", "schedule")
        await agent.at_gate.wait()  # the turn is mid-stream
        assert not d.dispatch.due("inbox", "schedule")
        ok, why = d.dispatch.request_beat("inbox")
        assert not ok and "one turn at a time" in why
        agent.gate.set()  # type: ignore[union-attr]
        await d.settle()

    run(scenario())
    turns = fold(events_of(logs, "inbox")).turns
    assert [(t.turn, t.status, t.reason) for t in turns] == [
        (1, "completed", None),
        (2, "skipped", "previous_turn_running"),
    ]


def test_the_gate_skips_outside_active_hours_by_the_fake_clock(
    tmp_path: Path, logs: MemoryEventLogStore, keyring: Keyring, run: Any
) -> None:
    clock = FakeClock(datetime(2026, 6, 1, 12, 0, tzinfo=UTC))
    cfg = config(tmp_path, {"name": "inbox", "active_hours": "08:00-10:00", "timezone": "UTC"})
    d = Daemon(cfg, logs, clock, keyring)
    d.start()
    assert not d.dispatch.due("inbox", "schedule")  # 12:00 UTC
    clock.advance(timedelta(hours=21))  # 09:00 the next day
    run(d.beat("inbox"))
    assert [(t.status, t.reason) for t in fold(events_of(logs, "inbox")).turns] == [
        ("skipped", "outside_active_hours"),
        ("completed", None),
    ]


def test_failure_backoff_is_read_back_from_the_journal_after_a_restart(
    tmp_path: Path, logs: MemoryEventLogStore, clock: FakeClock, keyring: Keyring, run: Any
) -> None:
    cfg = config(tmp_path, {"name": "inbox"})
    first = Daemon(cfg, logs, clock, keyring)
    first.start()
    for _ in range(3):
        first.ip.agents["inbox"].fail_next = "model_error"
        run(first.beat("inbox"))
        clock.advance(timedelta(seconds=5))
    # doubled per failure: 20m, 40m, capped at 30m
    assert first.ip.schedule.jobs["inbox"].every == FAILURE_BACKOFF_MAX
    first.stop()

    again = Daemon(cfg, logs, clock, keyring)  # a restart over the same journal
    again.start()
    assert again.rt.jobs["inbox"].ledger.failures == 3
    assert again.ip.schedule.jobs["inbox"].every == FAILURE_BACKOFF_MAX
    run(again.beat("inbox", "manual"))  # a completed beat resets it
    assert again.ip.schedule.jobs["inbox"].every == EVERY


def _crash_mid_turn(logs: EventLogStore, name: str, cwd: Path) -> str:
    """A journal left by a daemon killed mid-reply, after one completed turn."""
    log = logs.open(name)
    for event in [
        ev.session_bound("s-1", str(cwd), mode="new"),
        {**ev.turn_started(1, "one", job=name, trigger="schedule"), "prompt_uuid": "p-1"},
        ev.assistant(1, "first", uuid="a-1", model="m"),
        ev.turn_completed(1),
        {**ev.turn_started(2, "two", job=name, trigger="schedule"), "prompt_uuid": "p-2"},
        ev.delta(2, "half a rep"),
    ]:
        log.append(event)
    log.close()
    return "p-2"


@pytest.mark.parametrize(
    ("policy", "replayed", "drops"),
    [("replay", "two", "p-2"), ("continue", "two", None), ("drop", None, "p-2")],
)
def test_recovery_heals_the_half_turn_and_plans_by_on_interrupted(
    *,
    tmp_path: Path,
    logs: MemoryEventLogStore,
    clock: FakeClock,
    keyring: Keyring,
    run: Any,
    policy: str,
    replayed: str | None,
    drops: str | None,
) -> None:
    cfg = config(tmp_path, {"name": "inbox", "on_interrupted": policy})
    _crash_mid_turn(logs, "inbox", cfg.job("inbox").cwd)
    d = Daemon(cfg, logs, clock, keyring)
    d.ip.rt.transcripts.sessions.add("s-1")  # type: ignore[attr-defined]
    replays = d.start()
    healed = fold(events_of(logs, "inbox")).turns[1]
    assert (healed.status, healed.reply) == ("interrupted", "half a rep")
    assert replays.get("inbox") == (("replay", replayed) if replayed else None)
    run(d.beat("inbox", "manual"))
    (plan,) = d.ip.agents["inbox"].plans
    assert (plan.resume, plan.resume_at, plan.drops_turn) == (
        True,
        "a-1" if drops else None,
        drops,
    )
    # The cut is made once: the next connect is a plain resume.
    run(d.ip.agents["inbox"].disconnect())
    run(d.beat("inbox", "manual"))
    assert d.ip.agents["inbox"].plans[-1].drops_turn is None


def test_beats_missed_while_down_are_journaled_and_caught_up_once(
    tmp_path: Path, logs: MemoryEventLogStore, clock: FakeClock, keyring: Keyring, run: Any
) -> None:
    cfg = config(tmp_path, {"name": "inbox", "catch_up": "once"})
    first = Daemon(cfg, logs, clock, keyring)
    first.start()
    run(first.beat("inbox"))
    first.stop()
    clock.advance(EVERY * 5 + timedelta(minutes=3))  # down for five beats and a bit
    again = Daemon(cfg, logs, clock, keyring)
    again.recovery.recover()
    assert again.scheduling.schedule_new("inbox", replaying=False)  # catch up now
    missed = fold(events_of(logs, "inbox")).turns[-1]
    assert (missed.status, missed.reason, missed.missed) == ("skipped", "missed_while_down", 5)
    assert again.ip.schedule.jobs["inbox"].first_due == clock.now() + EVERY


def test_a_new_job_beats_first_after_the_delay_and_its_splay(
    tmp_path: Path, logs: MemoryEventLogStore, clock: FakeClock, keyring: Keyring
) -> None:
    cfg = config(tmp_path, {"name": "inbox", "jitter": "2m"})
    d = Daemon(cfg, logs, clock, keyring)
    d.start()
    first = d.ip.schedule.jobs["inbox"].first_due
    assert first is not None
    delay = first - clock.now()
    assert FIRST_BEAT_DELAY <= delay < FIRST_BEAT_DELAY + timedelta(minutes=2)


def test_reload_adds_removes_and_reschedules_only_what_changed(
    tmp_path: Path, logs: MemoryEventLogStore, clock: FakeClock, keyring: Keyring, run: Any
) -> None:
    path = tmp_path / "vigil.toml"
    for name in ("alpha", "bravo", "charlie"):
        (tmp_path / "work" / name).mkdir(parents=True)

    def write(jobs: str) -> None:
        path.write_text(
            f'[daemon]\nstate_dir = "state"\nruntime_dir = "run"\n{jobs}', encoding="utf-8"
        )

    def job(name: str, every: str = "10m") -> str:
        return (
            f'[[heartbeat]]\nname = "{name}"\nevery = "{every}"\nprompt = "p"\n'
            f'cwd = "work/{name}"\n'
        )

    write(job("alpha") + job("bravo"))
    cfg = load_config(path)
    ip = make_runtime(cfg, keyring=keyring, clock=clock, logs=logs, config_path=path)
    recovery, scheduling = Recovery(ip.rt), Scheduling(ip.rt)
    dispatch = Dispatcher(ip.rt, scheduling)
    recovery.recover()
    for name in ip.rt.jobs:
        scheduling.schedule_new(name, replaying=False)
    alpha_due = ip.schedule.jobs["alpha"].first_due
    run(_beat(dispatch, "bravo"))
    clock.advance(timedelta(minutes=1))

    reloader = Reloader(ip.rt, recovery, scheduling, dispatch)

    async def reload() -> bool:
        done = reloader.reload()
        await asyncio.sleep(0)  # retired jobs close in the background
        return done

    write(job("alpha") + job("bravo", every="30m") + job("charlie"))
    assert run(reload())
    assert ip.schedule.jobs["alpha"].first_due == alpha_due  # unchanged: untouched
    bravo = ip.schedule.jobs["bravo"]
    last_start = ip.rt.jobs["bravo"].ledger.last_started_at
    assert last_start is not None
    thirty = timedelta(minutes=30)
    assert (bravo.every, bravo.first_due) == (thirty, last_start + thirty)
    assert "charlie" in ip.schedule.jobs and "charlie" in ip.rt.jobs

    write(job("charlie"))
    assert run(reload())
    assert sorted(ip.schedule.removed) == ["alpha", "bravo"]
    assert sorted(ip.rt.jobs) == ["charlie"]

    write(job("charlie") + job("charlie"))  # a bad file is refused as a whole
    assert not run(reload())
    assert sorted(ip.rt.jobs) == ["charlie"]


async def _beat(dispatch: Dispatcher, name: str) -> None:
    assert dispatch.due(name, "schedule")
    while pending := [t for t in dispatch.rt.tasks if not t.done()]:
        await asyncio.gather(*pending)
