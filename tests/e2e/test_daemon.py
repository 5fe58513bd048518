"""The daemon end to end: crashes, restarts, drains, model faults, a moved cwd.

Each test runs ``vigil run`` as a subprocess against the loopback model and checks
what an operator would: log lines, exit codes, ``vigil history --json`` and the
decrypted journal. The model's echo reply (``seen N user turns; first: ...; last:
...``) shows exactly which history the CLI sent it, so memory is checked by reply.
"""

from __future__ import annotations

import itertools
import os
import random
import shutil
import signal
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import pytest

from tests.e2e.conftest import Daemon, Job, LogLine, Site, descendants, parse_reply, shown

pytestmark = pytest.mark.e2e

MID_STREAM_KILLS = 10  # SIGKILLs that must land while a reply streams
MAX_KILLS = 16


def _is_delta(job: str) -> Any:
    return lambda x: x.get("event") == "delta" and x.get("job") == job


def _nth_delta_of_a_turn(job: str, n: int) -> Callable[[LogLine], bool]:
    """A predicate true at the ``n``-th delta of one of ``job``'s turns."""
    turn: list[int] = [-1, 0]  # the turn being counted, deltas seen of it

    def nth(line: LogLine) -> bool:
        if not _is_delta(job)(line):
            return False
        if line["turn"] != turn[0]:
            turn[:] = [line["turn"], 0]
        turn[1] += 1
        return turn[1] >= n

    return nth


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


def _assert_logged_deltas_journaled(site: Site, name: str, runs: list[Daemon]) -> int:
    """Every delta any run logged is in the journal at its sequence number; the count."""
    frames = site.frames(name)
    logged = 0
    for daemon in runs:
        for line in daemon.events("delta", job=name):
            event = frames.get(line["seq"])
            assert event is not None, f"{name}: logged delta seq {line['seq']} not journaled"
            assert (event["type"], event["turn"], event["text"]) == (
                "delta",
                line["turn"],
                line["text"],
            )
            logged += 1
    return logged


def _assert_killed_turns_interrupted_and_replayed(
    site: Site, name: str, runs: list[Daemon], killed: dict[int, bool]
) -> None:
    """Turns are unique and in order; each turn killed mid-stream is interrupted, keeps
    the text it streamed, and is replayed (same prompt) right after; nothing else is
    replayed. ``killed``: turn number -> whether its end was not journaled at the kill."""
    history = site.history(name, cli=True)
    numbers = [t["turn"] for t in history]
    assert numbers == sorted(set(numbers)), f"{name}: turn numbers {numbers}"
    assert {t["status"] for t in history} <= {"completed", "interrupted", "skipped"}
    ran = [t for t in history if t["status"] != "skipped"]
    for before, after in itertools.pairwise(ran):
        if before["status"] == "interrupted":
            assert before["reason"] == "daemon_stopped_mid_turn", before
            assert (after["trigger"], after["prompt"]) == ("replay", before["prompt"]), after
        elif after["trigger"] == "replay":
            raise AssertionError(f"{name}: turn {after['turn']} replays a finished turn")
    assert ran[-1]["status"] == "completed"
    streamed: dict[int, str] = defaultdict(str)
    for daemon in runs:
        for line in daemon.events("delta", job=name):
            streamed[line["turn"]] += line["text"]
    by_turn = {t["turn"]: t for t in history}
    for number, mid_stream in killed.items():
        turn = by_turn[number]
        if not mid_stream:  # the whole turn was journaled before the kill landed
            assert turn["status"] == "completed", turn
            continue
        assert turn["status"] == "interrupted", turn
        assert turn["reply"] and turn["reply"].startswith(streamed[number]), turn


# ---------------------------------------------------------------- 1. SIGKILL storm


@pytest.mark.timeout(180)
def test_sigkill_mid_stream_loses_nothing_and_replays_without_the_half_turn(site: Site) -> None:
    rng = random.Random(20261121)
    names = ("alpha", "beta")

    def configure(run: int) -> None:
        site.write_config(
            [
                Job("alpha", f"alpha r{run:02d} [slow:30]", every="1s"),
                Job("beta", f"beta r{run:02d} [slow:30]", every="1.5s"),
            ],
            drain_grace="10s",
        )

    runs: list[Daemon] = []
    kills: list[tuple[str, int, bool]] = []  # (job, turn streaming, it had not ended)
    mid_stream = 0
    began = time.monotonic()
    while mid_stream < MID_STREAM_KILLS:
        assert len(kills) < MAX_KILLS, f"only {mid_stream} of {len(kills)} kills mid-stream"
        configure(len(kills))
        daemon = site.start()
        runs.append(daemon)
        target = names[len(kills) % 2]
        # Sometimes let a turn complete first; then kill a few deltas into a reply
        # (before its last third, so the kill lands mid-stream unless the machine is
        # so slow that the rest of the reply was journaled before the kill).
        for _ in range(rng.choice([0, 0, 1])):
            daemon.wait_event("turn_completed", 30, job=target, start=daemon.count())
        n = rng.randint(1, 8)
        line = daemon.kill_on(_nth_delta_of_a_turn(target, n), 30, what=f"delta #{n}")
        killed = {t.turn: t for t in site.view(target).turns}[line["turn"]]
        kills.append((target, line["turn"], not killed.journaled_end))
        mid_stream += not killed.journaled_end
    kill_phase = time.monotonic() - began

    configure(len(kills))
    final = site.start()
    runs.append(final)
    for name in names:
        for _ in range(2):
            final.wait_event("turn_completed", 30, job=name, start=final.count())
    assert final.terminate() == 0
    assert final.events("stopped")

    logged = sum(_assert_logged_deltas_journaled(site, name, runs) for name in names)
    assert logged > 100
    for name in names:
        _assert_killed_turns_interrupted_and_replayed(
            site, name, runs, {turn: mid for job, turn, mid in kills if job == name}
        )
        assert _assert_memory(site, name) >= 3

    # Orphans: the daemon's CLI children outlive a SIGKILL only briefly.
    orphans = site.orphans.orphans
    assert orphans, "a SIGKILLed daemon had no CLI child at all"
    assert not site.orphans.wait_all_gone(15), "orphaned CLI processes still running"
    lifetimes = [o.lifetime for o in orphans if o.lifetime is not None]
    print(
        f"\nkill phase {kill_phase:.1f}s for {len(kills)} kills ({mid_stream} mid-stream); "
        f"{logged} deltas checked; "
        f"{len(orphans)} orphaned CLIs, lifetime max {max(lifetimes):.2f}s "
        f"min {min(lifetimes):.2f}s"
    )


# ---------------------------------------------------------------- 2. runtime dir lost


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


# ---------------------------------------------------------------- 3. SIGTERM, the lock


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


# ---------------------------------------------------------------- 4. model faults


def _completed_before(turns: dict[int, dict[str, Any]], turn: int) -> int:
    return sum(1 for t in turns.values() if t["status"] == "completed" and t["turn"] < turn)


def _next_completed(daemon: Daemon, job: str, start: int) -> LogLine:
    return daemon.wait_event("turn_completed", 40, job=job, start=start)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("status", [529, 500])
def test_a_failing_model_call_fails_one_turn_and_the_next_remembers(
    site: Site, status: int
) -> None:
    site.write_config([Job("probe", "probe beat", every="1s")])
    daemon = site.start()
    _next_completed(daemon, "probe", 0)
    mark = daemon.count()
    site.model.control(fail_next=2, status=status)  # the CLI tries twice (max_retries=1)
    failed = daemon.wait_event("turn_failed", 40, job="probe", start=mark)
    assert failed["reason"] == "model_error"
    assert str(status) in failed["detail"]
    done = _next_completed(daemon, "probe", daemon.count())
    assert daemon.running
    assert daemon.terminate() == 0
    turns = {t["turn"]: t for t in site.history("probe")}
    assert turns[failed["turn"]]["status"] == "failed"
    seen = parse_reply(turns[done["turn"]]["reply"])
    print(f"\nafter HTTP {status}: {turns[done['turn']]['reply']}")
    completed_before = _completed_before(turns, done["turn"])
    # The CLI keeps the unanswered prompt and merges it with the next one into one
    # user message: the model sees every completed turn plus the failed prompt.
    assert (seen.n, seen.first, seen.last) == (
        completed_before + 1,
        shown("probe beat"),
        shown("probe beat probe beat"),
    )


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


@pytest.mark.timeout(120)
def test_the_cli_dying_mid_turn_fails_that_turn_only(site: Site) -> None:
    # About 13 deltas 200 ms apart: the CLI dies well before the reply could finish.
    site.write_config([Job("fragile", "fragile beat [slow:200]", every="1s")])
    daemon = site.start()
    _next_completed(daemon, "fragile", 0)
    delta = daemon.wait_for(_is_delta("fragile"), 30, start=daemon.count(), what="a delta")
    clis = descendants(daemon.pid)
    assert len(clis) >= 1
    for pid in clis:
        os.kill(pid, signal.SIGKILL)
    failed = daemon.wait_event("turn_failed", 30, job="fragile")
    assert failed["turn"] == delta["turn"]
    assert failed["reason"] == "cli_died"
    done = _next_completed(daemon, "fragile", daemon.count())
    assert daemon.terminate() == 0
    turns = {t["turn"]: t for t in site.history("fragile")}
    print(f"\nafter CLI death: {turns[done['turn']]['reply']}")
    seen = parse_reply(turns[done["turn"]]["reply"])
    assert (seen.first, seen.last) == (shown("fragile beat [slow:200]"),) * 2
    # Whether the dead turn's prompt reached the transcript store before the kill is
    # up to the CLI's mirroring; every completed turn is there either way.
    assert seen.n - _completed_before(turns, done["turn"]) in (1, 2)


# ---------------------------------------------------------------- replay of a replay


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
