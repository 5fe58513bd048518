"""A new job with ``jitter`` gets its first beat at a fixed offset within the jitter.

Without jitter the first beat comes one second after start (unchanged); with it the
offset is a hash of the job's name, the same at every start until the job has beaten.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest

from daemon.runtime.control import call
from daemon.testing.harness import Daemon, Job, Site
from jobs.splay import first_beat_splay

pytestmark = pytest.mark.e2e

JITTER = timedelta(minutes=50)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def next_beats(site: Site) -> dict[str, datetime]:
    answer: dict[str, Any] = call(site.runtime_dir / "control.sock", {"op": "status"}, timeout=30)
    assert answer["ok"], answer
    return {job["name"]: at(job["next_beat"]) for job in answer["status"]["jobs"]}


def ready_at(daemon: Daemon) -> datetime:
    return at(daemon.wait_ready()["timestamp"])


@pytest.mark.timeout(180)
def test_a_jittered_new_job_waits_for_its_splay_and_a_plain_one_beats_at_once(
    site: Site,
) -> None:
    offset = first_beat_splay("splayed", JITTER)
    assert timedelta(minutes=2) < offset < JITTER  # the name makes this test meaningful
    site.write_config(
        [
            Job("plain", "plain checks in", every="1h"),
            Job("splayed", "splayed checks in", every="1h", extra={"jitter": "50m"}),
        ]
    )
    for start in range(2):
        daemon = site.start()
        ready = ready_at(daemon)
        if start == 0:
            daemon.wait_event("turn_completed", 60, job="plain")
        due = next_beats(site)
        # scheduled right after READY: one second, plus the splay for the jittered job
        expected = ready + timedelta(seconds=1) + offset
        assert abs(due["splayed"] - expected) < timedelta(seconds=5), (due, expected)
        assert daemon.events("turn_started", job="splayed") == []
        assert daemon.terminate() == 0
    # the plain job beat once, 1 s after the first start; the restart resumed its
    # schedule (an hour on) instead of beating again; the splayed one never beat
    assert site.history("splayed") == []
    assert [t["status"] for t in site.history("plain")] == ["completed"]
