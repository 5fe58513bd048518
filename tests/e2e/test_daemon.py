"""The daemon end to end: restarts, drains, a turn timeout, replays, a moved cwd.

Each test runs ``vigil run`` as a subprocess against the loopback model and checks
what an operator would: log lines, exit codes, ``vigil history --json`` and the
decrypted journal. The model's echo reply (``seen N user turns; first: ...; last:
...``) shows exactly which history the CLI sent it, so memory is checked by reply.

SIGKILLs of the daemon mid-stream, model API errors (HTTP 500, 529, ...) and the CLI
dying mid-turn each have one oracle, in ``tests/faults`` (``test_sigkill_loop.py``,
``test_model_faults.py``).
"""

from __future__ import annotations

import shutil
import time
from typing import Any

import pytest

from daemon.testing.harness import Daemon, Job, LogLine, Site
from tests.e2e.conftest import parse_reply, shown

pytestmark = pytest.mark.e2e

MID_STREAM_KILLS = 10  # SIGKILLs that must land while a reply streams
MAX_KILLS = 16


def _is_delta(job: str) -> Any:
    return lambda x: x.get("event") == "delta" and x.get("job") == job


def _completed_replies(site: Site, name: str) -> list[tuple[int, str, str]]:
    """(turn, prompt, reply) of each completed turn, from the journal."""
    return [(t.turn, t.prompt, t.reply) for t in site.view(name).turns if t.status == "completed"]


def _assert_memory(site: Site, name: str) -> int:
    """Every completed turn's reply shows all earlier completed turns and nothing else."""
    turns = [t for t in site.view(name).turns if t.status != "skipped"]
    assert turns, f"{name}: no turns journaled"
    first_prompt = turns[0].prompt
    completed = [t for t in turns if t.status == "completed"]
    for index, turn in enumerate(completed):
        seen = parse_reply(turn.reply)
        assert (seen.n, seen.first, seen.last) == (
            index + 1,
            shown(first_prompt),
            shown(turn.prompt),
        ), f"{name} turn {turn.turn} (completed #{index + 1}): {turn.reply!r}"
    return len(completed)


# ---------------------------------------------------------------- 1. runtime dir lost


@pytest.mark.timeout(90)
def test_resumes_after_the_runtime_directory_is_wiped(site: Site) -> None:
    site.write_config([Job("keeper", "keeper beat", every="1s")])
    first = site.start()
    first.wait_event("turn_completed", 30, job="keeper")
    first.wait_event("turn_completed", 30, job="keeper", start=first.count())
    assert first.terminate() == 0
    session = site.view("keeper").session_id
    before = len(_completed_replies(site, "keeper"))
    assert (site.runtime_dir / "claude" / "projects").is_dir()

    shutil.rmtree(site.runtime_dir)
    second = site.start()
    second.wait_event("turn_completed", 30, job="keeper")
    assert second.terminate() == 0

    bound = second.events("session_bound", job="keeper")
    assert [x["session"] for x in bound] == [session]
    completed = _completed_replies(site, "keeper")
    assert len(completed) > before
    seen = parse_reply(completed[before][2])
    assert seen.n == before + 1
    assert _assert_memory(site, "keeper") == len(completed)
    assert site.runtime_dir.is_dir()


# ---------------------------------------------------------------- 2. SIGTERM, the lock


@pytest.mark.timeout(90)
def test_sigterm_lets_a_running_turn_finish_and_a_second_daemon_is_refused(site: Site) -> None:
    # About 13 deltas 400 ms apart: the turn still streams when SIGTERM comes.
    site.write_config([Job("drainer", "drainer [slow:400]", every="1s")], drain_grace="15s")
    daemon = site.start()
    delta = daemon.wait_for(_is_delta("drainer"), 30, what="a delta")

    began = time.monotonic()
    second = site.vigil("run", "--config", str(site.config_path), timeout=30)
    assert time.monotonic() - began < 10
    assert second.returncode == 7
    assert "already running" in second.stderr
    assert daemon.running

    signalled = daemon.count()
    assert not daemon.events("turn_completed"), "the turn ended before SIGTERM"
    began = time.monotonic()
    assert daemon.terminate(30) == 0
    took = time.monotonic() - began
    after = daemon.lines[signalled:]
    assert any(x.get("event") == "draining" for x in after)
    assert not any(x.get("event") == "turn_started" for x in after)
    turns = {t["turn"]: t for t in site.history("drainer")}
    assert turns[delta["turn"]]["status"] == "completed"
    assert parse_reply(turns[delta["turn"]]["reply"]).n >= 1
    print(f"\ndrain with a running turn took {took:.2f}s")


@pytest.mark.timeout(60)
def test_sigterm_interrupts_a_stalled_turn_after_drain_grace(site: Site) -> None:
    site.write_config([Job("staller", "staller [stall:30]", every="1s")], drain_grace="1s")
    daemon = site.start()
    delta = daemon.wait_for(_is_delta("staller"), 30, what="a delta")
    began = time.monotonic()
    assert daemon.terminate(20) == 0
    took = time.monotonic() - began
    assert took < 5
    turn = {t["turn"]: t for t in site.history("staller")}[delta["turn"]]
    assert (turn["status"], turn["reason"]) == ("interrupted", "shutdown")
    assert turn["reply"].startswith(delta["text"])
    print(f"\nstalled turn interrupted; exit took {took:.2f}s")


@pytest.mark.timeout(180)
def test_a_turn_interrupted_by_drain_is_replayed_without_its_half(site: Site) -> None:
    # About 13 deltas 400 ms apart: drain_grace (1s) runs out mid-stream.
    prompt = "drained [slow:400]"
    site.write_config([Job("drained", prompt, every="1h")], drain_grace="1s")
    first = site.start()
    first.wait_event("turn_completed", 60, job="drained")
    assert first.terminate() == 0
    second = site.start()  # no interrupted turn: no replay, the next beat is in an hour
    assert second.events("interrupted_turn_pending") == []
    answer = site.vigil("beat", "drained", "--config", str(site.config_path))
    assert answer.returncode == 0, answer.stderr
    second.wait_for(_is_delta("drained"), 30, start=second.count(), what="a delta of turn 2")
    assert second.terminate(20) == 0
    turns = site.history("drained")
    assert [(t["status"], t["reason"]) for t in turns] == [
        ("completed", None),
        ("interrupted", "shutdown"),
    ]

    third = site.start()
    pending = third.wait_event("interrupted_turn_pending", 30, job="drained")
    assert (pending["turn"], pending["on_interrupted"]) == (2, "replay")
    done = third.wait_event("turn_completed", 60, job="drained")
    assert third.terminate() == 0
    replay = {t["turn"]: t for t in site.history("drained")}[done["turn"]]
    assert replay["trigger"] == "replay"
    # The model saw turn 1 and the replayed prompt once: not the drained half turn.
    seen = parse_reply(replay["reply"])
    assert (seen.n, seen.first, seen.last) == (2, shown(prompt), shown(prompt))


# ---------------------------------------------------------------- 3. a turn timeout


def _completed_before(turns: dict[int, dict[str, Any]], turn: int) -> int:
    return sum(1 for t in turns.values() if t["status"] == "completed" and t["turn"] < turn)


def _next_completed(daemon: Daemon, job: str, start: int) -> LogLine:
    return daemon.wait_event("turn_completed", 40, job=job, start=start)


@pytest.mark.timeout(120)
def test_a_turn_beyond_turn_timeout_fails_and_the_next_remembers(site: Site) -> None:
    site.write_config([Job("slowpoke", "slowpoke beat", every="1s", extra={"turn_timeout": "3s"})])
    daemon = site.start()
    _next_completed(daemon, "slowpoke", 0)
    mark = daemon.count()
    site.model.control(slow_ms=1000)
    failed = daemon.wait_event("turn_failed", 40, job="slowpoke", start=mark)
    site.model.control(slow_ms=0)
    assert failed["reason"] == "timeout"
    done = _next_completed(daemon, "slowpoke", daemon.count())
    assert daemon.terminate() == 0
    turns = {t["turn"]: t for t in site.history("slowpoke")}
    print(f"\nafter timeout: {turns[done['turn']]['reply']}")
    seen = parse_reply(turns[done["turn"]]["reply"])
    assert seen.first == shown("slowpoke beat")
    # The timed-out prompt stays in the session (the CLI was interrupted, not killed):
    # the model sees every completed turn, that prompt, and the new one.
    assert (seen.n, seen.last) == (_completed_before(turns, done["turn"]) + 2, "slowpoke beat")


# ---------------------------------------------------------------- 4. replay of a replay


@pytest.mark.timeout(90)
def test_a_replay_killed_before_its_prompt_was_sent_still_hides_every_half_turn(
    site: Site,
) -> None:
    """Kill mid-reply, then kill the replay right after it connected (its prompt not yet
    in the CLI's transcript): the second replay must still show the model only the
    completed turn, not the first half turn."""
    site.write_config([Job("solo", "solo beat [slow:30]", every="1s")])
    daemon = site.start()
    daemon.wait_event("turn_completed", 30, job="solo")
    half = daemon.kill_on(_is_delta("solo"), 30, what="a delta")

    daemon = site.start(ready=False)
    daemon.kill_on(lambda x: x.get("event") == "session_bound", 60, what="the replay's connect")

    daemon = site.start()
    done = daemon.wait_event("turn_completed", 30, job="solo")
    assert daemon.terminate() == 0
    turns = {t["turn"]: t for t in site.history("solo")}
    assert turns[half["turn"]]["status"] == "interrupted"
    replays = [t for t in turns.values() if t["trigger"] == "replay"]
    assert [t["status"] for t in replays] == ["interrupted", "completed"]
    assert replays[-1]["turn"] == done["turn"]
    assert parse_reply(replays[-1]["reply"]).n == 2
    assert _assert_memory(site, "solo") == 2


# ---------------------------------------------------------------- 5. cwd preflight


@pytest.mark.timeout(90)
def test_a_job_whose_cwd_changed_is_refused_and_the_others_run(site: Site) -> None:
    def configure(mover_cwd: str) -> None:
        site.write_config(
            [
                Job("mover", "mover beat", every="1s", cwd=mover_cwd),
                Job("stayer", "stayer beat", every="1s", cwd="stay"),
            ]
        )

    configure("place-a")
    first = site.start()
    first.wait_event("turn_completed", 30, job="mover")
    first.wait_event("turn_completed", 30, job="stayer")
    assert first.terminate() == 0
    journaled = site.frames("mover")

    configure("place-b")
    second = site.start()
    refused = second.events("cwd_changed")
    assert [(x["job"], x["level"]) for x in refused] == [("mover", "error")]
    assert str(site.root / "place-a") in refused[0]["error"]
    assert str(site.root / "place-b") in refused[0]["error"]
    assert second.events("ready")[0]["jobs"] == ["stayer"]
    for _ in range(2):  # two more stayer turns: mover had time for beats of its own
        second.wait_event("turn_completed", 30, job="stayer", start=second.count())
    assert second.terminate() == 0
    assert not second.events("turn_started", job="mover")
    assert site.frames("mover") == journaled
    assert _assert_memory(site, "stayer") >= 3
