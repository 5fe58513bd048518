"""Issue 7: the client pool against the real daemon, CLI and loopback model.

At most ``max_live_clients`` CLI processes live at once, evicted and idle clients are
let go (and reaped: no zombies), a dead CLI is replaced with a resume, and a beat that
waits past its window for a turn slot is journaled as skipped with the reason.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

import pytest

from daemon.runtime.control import call
from daemon.testing.harness import Daemon, Job, Site, cmdline, descendants
from daemon.testing.proctree import proc_stat
from tests.e2e.conftest import parse_reply, shown

pytestmark = pytest.mark.e2e


def control(site: Site, op: str, **fields: str) -> dict[str, Any]:
    return call(site.runtime_dir / "control.sock", {"op": op, **fields}, timeout=30)


def status(site: Site) -> dict[str, Any]:
    answer = control(site, "status")
    assert answer["ok"], answer
    snapshot: dict[str, Any] = answer["status"]
    return snapshot


def children(pid: int) -> tuple[list[int], list[int]]:
    """(the daemon's live CLI children, zombies among all its descendants).

    A CLI runs helpers of its own (``git ls-files ... .claude/settings.local.json``);
    those are not clients, so only direct children running the CLI binary count."""
    live, zombies = [], []
    for child in descendants(pid):
        stat = proc_stat(child)
        if stat is None:
            continue
        if stat.state == "Z":
            zombies.append(child)
        elif stat.ppid == pid and cmdline(child).split(" ", 1)[0].endswith("/claude"):
            live.append(child)
    return live, zombies


class ChildSampler:
    """Samples the daemon's CLI children every 50 ms; remembers the most seen at once."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.most_live = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            live, _ = children(self.pid)
            self.most_live = max(self.most_live, len(live))
            self.samples += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def completed(daemon: Daemon) -> int:
    return len(daemon.events("turn_completed"))


def wait_completed(daemon: Daemon, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while completed(daemon) < count:
        assert daemon.running, daemon.tail()
        assert time.monotonic() < deadline, f"{completed(daemon)}/{count} turns; {daemon.tail()}"
        time.sleep(0.2)


@pytest.mark.timeout(900)
def test_hundred_beats_across_fifty_conversations_with_a_pool_of_four(site: Site) -> None:
    names = [f"c{i:02d}" for i in range(50)]
    site.write_config(
        [Job(name, f"{name} checks in", every="1h") for name in names],
        max_live_clients=4,
        max_concurrent_turns=2,
    )
    daemon = site.start()
    sampler = ChildSampler(daemon.pid)
    try:
        wait_completed(daemon, 50, timeout=400)  # every job's first beat, 1s after start
        for name in names:
            answer = control(site, "beat", job=name)
            assert answer == {"ok": True}, (name, answer)
        wait_completed(daemon, 100, timeout=400)
    finally:
        sampler.stop()

    live, zombies = children(daemon.pid)
    assert zombies == [], [cmdline(z) for z in zombies]
    assert len(live) <= 4, [cmdline(c)[:60] for c in live]
    assert sampler.samples > 100
    assert 1 <= sampler.most_live <= 4, sampler.most_live
    snapshot = status(site)
    assert snapshot["live_clients"] <= 4
    assert snapshot["pool"]["evictions"] >= 40  # 50 conversations cannot stay connected
    assert not daemon.events("beat_skipped")
    # Every conversation resumed after its client was evicted: the model saw both turns.
    for name in names:
        turns = site.history(name)
        assert [t["status"] for t in turns] == ["completed", "completed"], (name, turns)
        seen = parse_reply(turns[1]["reply"])
        assert seen.n == 2 and seen.first == shown(f"{name} checks in"), (name, seen)

    assert daemon.terminate() == 0
    assert children(daemon.pid) == ([], [])


@pytest.mark.timeout(300)
def test_a_dead_cli_is_replaced_with_resume_and_idle_clients_are_let_go(site: Site) -> None:
    site.write_config(
        [Job("victim", "victim checks in", every="1h"), Job("idler", "idler checks", every="1h")],
        client_idle_timeout="3s",
    )
    daemon = site.start()
    wait_completed(daemon, 2, timeout=120)
    jobs = {j["name"]: j for j in status(site)["jobs"]}
    pid = jobs["victim"]["cli_pid"]
    assert isinstance(pid, int) and jobs["victim"]["client_connected"]
    os.kill(pid, signal.SIGKILL)

    # Within the reaper's period (idle timeout / 4) the dead client is noticed and let go,
    # its process reaped: no zombie stays behind.
    daemon.wait_event("client_lost", 30, job="victim")
    assert proc_stat(pid) is None
    assert control(site, "beat", job="victim") == {"ok": True}
    wait_completed(daemon, 3, timeout=120)
    turns = site.history("victim")
    assert [t["status"] for t in turns] == ["completed", "completed"]
    assert parse_reply(turns[1]["reply"]).n == 2  # resumed with its memory

    # Idle for client_idle_timeout: disconnected cleanly, the next beat resumes.
    daemon.wait_event("client_idle_disconnected", 30, job="idler")
    deadline = time.monotonic() + 30
    while status(site)["live_clients"] > 0:
        assert time.monotonic() < deadline, status(site)
        time.sleep(0.2)
    # A let-go client's CLI finishes its orderly exit on its own time (the pool counts
    # it until then); it must be gone, reaped, within the SDK's bounded close.
    while (found := children(daemon.pid)) != ([], []):
        assert time.monotonic() < deadline + 20, found
        time.sleep(0.2)
    assert control(site, "beat", job="idler") == {"ok": True}
    wait_completed(daemon, 4, timeout=120)
    assert parse_reply(site.history("idler")[1]["reply"]).n == 2
    assert daemon.terminate() == 0


@pytest.mark.timeout(300)
def test_a_beat_that_waits_past_its_window_is_journaled_as_skipped(site: Site) -> None:
    site.write_config(
        [
            Job("hog", "hog [slow:900]", every="1h"),
            Job("small", "small beat", every="3s"),
        ],
        max_live_clients=1,
        max_concurrent_turns=1,
    )
    daemon = site.start()
    # The hog's turn holds the only slot for about 9 s; the small job's 3 s beats cannot
    # wait that long.
    found = daemon.wait_for(
        lambda line: line.get("event") == "beat_skipped" and line.get("reason") == "no_capacity",
        90,
        what="a beat skipped for lack of capacity",
    )
    assert found["job"] == "small"
    assert "waited" in found["detail"] and "max_concurrent_turns" in found["detail"]
    daemon.wait_event("turn_completed", 90, job="hog")
    daemon.wait_event("turn_completed", 90, job="small")  # a slot frees, beats run again
    assert daemon.terminate() == 0

    skipped = [e for e in site.frames("small").values() if e["type"] == "beat_skipped"]
    assert any(
        e["reason"] == "no_capacity" and e["max_concurrent_turns"] == 1 and e["waited_s"] > 1
        for e in skipped
    ), skipped
    started = [e for e in site.frames("small").values() if e["type"] == "turn_started"]
    assert started and all("due_at" in e for e in started)
