"""The model API failing, and the Claude CLI dying, under a running daemon.

**Model API faults.** Five conversations first complete a turn; then a reload
(SIGHUP) gives each a prompt that makes the loopback model fail in one way: HTTP 500,
HTTP 529 (overloaded), HTTP 401, a connection reset in the middle of the stream, a
stream that stalls past ``turn_timeout``. Each failing turn ends with a clear reason
in the journal (``model_error`` with the status or the dropped connection,
``auth_failed`` saying the key is wrong, ``timeout``); the next beats back off
(the interval doubles per failure), and a 401 pauses the job instead of retrying it
every second. Another reload brings the plain prompts back: every job completes a
turn again (the 401 job when ``vigil beat`` asks), and each reply proves the model
still sees every completed turn before it.

**CLI killed.** SIGKILL to the CLI process only, mid-reply, several times: each
turn fails with ``cli_died``, the daemon survives, and the next beat resumes the
conversation with its memory.
"""

from __future__ import annotations

import itertools
import os
import signal
import time
from datetime import datetime
from typing import Any

import pytest

from daemon.testing.harness import Daemon, Job, LogLine, Site, cmdline, descendants
from tests.e2e.conftest import parse_reply, shown
from tests.faults.conftest import Tallies

pytestmark = [pytest.mark.e2e, pytest.mark.long]

# job -> (directive that makes the model fail, expected reason, text the detail shows)
FAULTS: dict[str, tuple[str, str, str]] = {
    "http500": ("[fail:500]", "model_error", "HTTP 500"),
    "http529": ("[fail:529]", "model_error", "HTTP 529"),
    "http401": ("[fail:401]", "auth_failed", "API key"),
    "reset": ("[cut]", "model_error", "Connection"),
    "stall": ("[stall:30]", "timeout", "turn_timeout"),
}
AUTH_JOB = "http401"
FAILS = 3  # failed turns per job (each one backed off further) before the fault ends
LONG_FAILS = 5


def configure(site: Site, *, faulty: bool) -> None:
    jobs = []
    for name, (directive, _, _) in FAULTS.items():
        extra = {"turn_timeout": "6s"} if name == "stall" else {}
        prompt = f"{name} beat {directive}" if faulty else f"{name} beat"
        jobs.append(Job(name, prompt, every="1s", extra=extra))
    site.write_config(jobs)


def reload(daemon: Daemon) -> int:
    mark = daemon.count()
    os.kill(daemon.pid, signal.SIGHUP)
    daemon.wait_event("reloaded", 30, start=mark)
    return mark


def wall(line: LogLine) -> float:
    return datetime.fromisoformat(str(line["timestamp"])).timestamp()


def failures_since(daemon: Daemon, name: str, start: int) -> list[LogLine]:
    return [x for x in daemon.lines[start:] if x.get("event") == "turn_failed" and x["job"] == name]


def wait_failures(daemon: Daemon, wanted: dict[str, int], start: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while any(len(failures_since(daemon, n, start)) < k for n, k in wanted.items()):
        assert daemon.running, daemon.tail()
        assert time.monotonic() < deadline, (
            f"{ {n: len(failures_since(daemon, n, start)) for n in wanted} } failures, "
            f"wanted {wanted}\n{daemon.tail()}"
        )
        time.sleep(0.2)


def memory_after_faults(
    site: Site, name: str, turn: int, *, merged: bool = False, last: str | None = None
) -> list[str]:
    """The reply of ``turn`` (completed after failed turns) shows the first prompt and
    every completed turn before it; the CLI may also show the failed prompts, merged
    into one user message with the next prompt.

    ``merged``: the failed prompts since the last completed turn must be merged into
    this turn's user message, exactly (what an HTTP error leaves: the CLI keeps the
    unanswered prompt); ``last``: how the model must quote this turn's prompt.
    """
    history = [t for t in site.history(name) if t["status"] != "skipped"]
    done = next(t for t in history if t["turn"] == turn)
    before = [t for t in history if t["turn"] < turn]
    completed = sum(1 for t in before if t["status"] == "completed")
    seen = parse_reply(done["reply"] or "")
    if seen.first != shown(history[0]["prompt"]) or not (
        completed + 1 <= seen.n <= completed + 1 + (len(before) - completed)
    ):
        return [f"{name} turn {turn}: {seen} after {completed} completed of {len(before)}"]
    if merged:
        last_completed = max((t["turn"] for t in before if t["status"] == "completed"), default=0)
        failed = [t["prompt"] for t in before if t["turn"] > last_completed]
        last = shown(" ".join([*failed, done["prompt"]]))
        if seen.n != completed + 1:
            return [f"{name} turn {turn}: {seen}: the failed prompts were not merged"]
    if last is not None and seen.last != last:
        return [f"{name} turn {turn}: the model saw last {seen.last!r}, expected {last!r}"]
    return []


@pytest.mark.timeout(900)
def test_model_api_faults_end_turns_clearly_back_off_and_the_conversation_resumes(
    site: Site, long_run: bool, tally: Tallies
) -> None:
    record = tally.new("model_api")
    began = time.monotonic()
    fails = LONG_FAILS if long_run else FAILS
    configure(site, faulty=False)
    daemon = site.start()
    for name in FAULTS:
        daemon.wait_event("turn_completed", 90, job=name)

    configure(site, faulty=True)
    faulty_from = reload(daemon)
    wanted = {name: (1 if name == AUTH_JOB else fails) for name in FAULTS}
    wait_failures(daemon, wanted, faulty_from, 60 + 2 ** (fails + 1))
    configure(site, faulty=False)
    healed_from = reload(daemon)
    for name in FAULTS:
        if name != AUTH_JOB:
            daemon.wait_event("turn_completed", 60 + 2 ** (fails + 2), job=name, start=healed_from)

    # The 401 job stayed paused all along; `vigil beat` runs it at once.
    auth_starts = [x for x in daemon.lines[faulty_from:] if x.get("event") == "turn_started"]
    auth_starts = [x for x in auth_starts if x["job"] == AUTH_JOB]
    paused_for = (
        time.monotonic()
        - (daemon.received[daemon.lines.index(failures_since(daemon, AUTH_JOB, faulty_from)[0])])
    )
    beat = site.vigil("beat", AUTH_JOB, "--config", str(site.config_path))
    assert beat.returncode == 0, beat.stdout + beat.stderr
    daemon.wait_event("turn_completed", 60, job=AUTH_JOB, start=healed_from)
    assert daemon.running
    assert daemon.terminate() == 0

    problems: list[str] = []
    by_kind: dict[str, int] = {}
    gaps_checked = 0
    for name, (_, reason, text) in FAULTS.items():
        failed = failures_since(daemon, name, faulty_from)
        by_kind[name] = len(failed)
        journaled = {t["turn"]: t for t in site.history(name)}
        for line in failed:
            turn = journaled[line["turn"]]
            if (turn["status"], turn["reason"]) != ("failed", reason) or text not in (
                turn["detail"] or ""
            ):
                problems.append(f"{name}: turn {line['turn']} journaled as {turn}")
        # Backoff: the k-th failure is followed by an interval of 2**k seconds (the
        # 401 by a pause of at least ten minutes), never by the one-second beat.
        backoff = [x for x in daemon.lines[faulty_from:] if x.get("event") == "failure_backoff"]
        intervals = [x["interval_s"] for x in backoff if x["job"] == name]
        expected = [600.0] if name == AUTH_JOB else [float(2**k) for k in range(1, len(failed) + 1)]
        if intervals[: len(expected)] != expected:
            problems.append(f"{name}: backoff intervals {intervals}, expected {expected}")
        starts = {
            x["turn"]: wall(x)
            for x in daemon.lines
            if x.get("event") == "turn_started" and x["job"] == name
        }
        times = [starts[x["turn"]] for x in failed]
        gaps_checked += max(0, len(times) - 1) + min(len(intervals), len(expected))
        for k, (a, b) in enumerate(itertools.pairwise(times), start=1):
            if b - a < 0.9 * 2**k:
                problems.append(f"{name}: failure {k + 1} came {b - a:.2f}s after failure {k}")
        completed = [x for x in daemon.lines[healed_from:] if x.get("event") == "turn_completed"]
        done = next(x for x in completed if x["job"] == name)
        # An HTTP error leaves the unanswered prompts in the session: the next request
        # merges them with the new prompt into one user message.
        merged = name in ("http500", "http529")
        problems += memory_after_faults(site, name, done["turn"], merged=merged)
    if len(auth_starts) != 1:
        problems.append(f"{AUTH_JOB}: {len(auth_starts)} turns started while its key failed")

    stats: dict[str, Any] = site.model.stats()
    record.injected = sum(by_kind.values())
    record.by_kind = by_kind
    record.checked = {
        "failed_turns_with_clear_journaled_reason": record.injected,
        "backoff_intervals_and_gaps_checked": gaps_checked,
        "conversations_resumed_with_memory": len(FAULTS),
        "model_requests": int(stats["message_requests"]),
    }
    record.lost = {"problems": len(problems)}
    record.notes.append(
        f"401 job: 1 turn, then paused {paused_for:.0f}s with no request until `vigil beat`"
    )
    record.seconds = round(time.monotonic() - began, 1)
    print(f"\nmodel faults {by_kind}; statuses {stats['by_status']}; {record.notes[-1]}")
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------- the CLI killed

CLI_KILLS = 5
LONG_CLI_KILLS = 50
PROMPT = "fragile beat [slow:100]"


@pytest.mark.timeout(1800)
def test_the_cli_killed_mid_turn_fails_that_turn_and_the_next_beat_resumes(
    site: Site, long_run: bool, tally: Tallies
) -> None:
    record = tally.new("cli_killed")
    began = time.monotonic()
    kills = LONG_CLI_KILLS if long_run else CLI_KILLS
    # About 13 deltas 100 ms apart: the kill lands while the reply streams.
    site.write_config([Job("fragile", PROMPT, every="1s")])
    daemon = site.start()
    daemon.wait_event("turn_completed", 90, job="fragile")
    killed: list[int] = []
    problems: list[str] = []
    for _ in range(kills):
        mark = daemon.count()
        delta = daemon.wait_event("delta", 60, job="fragile", start=mark)
        clis = [pid for pid in descendants(daemon.pid) if "claude" in cmdline(pid)]
        assert clis, "no CLI process under the daemon mid-turn"
        for pid in clis:
            os.kill(pid, signal.SIGKILL)
        killed.append(delta["turn"])
        failed = daemon.wait_event("turn_failed", 60, job="fragile", start=mark)
        if (failed["turn"], failed["reason"]) != (delta["turn"], "cli_died"):
            problems.append(f"turn {delta['turn']} killed; then {failed}")
        done = daemon.wait_event("turn_completed", 90, job="fragile", start=daemon.count())
        # A dead turn's prompt is never merged into the next one: the model sees the
        # new prompt last (whether the dead one reached the transcript is up to the CLI).
        problems += memory_after_faults(site, "fragile", done["turn"], last=shown(PROMPT))
        assert daemon.running, daemon.tail()
    assert daemon.terminate() == 0
    journaled = {t["turn"]: t for t in site.history("fragile")}
    problems += [
        f"killed turn {n} journaled as {journaled[n]['status']} ({journaled[n]['reason']})"
        for n in killed
        if (journaled[n]["status"], journaled[n]["reason"]) != ("failed", "cli_died")
    ]
    record.injected = kills
    record.by_kind = {"sigkill_cli_mid_reply": kills}
    record.checked = {
        "turns_failed_cli_died": sum(1 for n in killed if journaled[n]["reason"] == "cli_died"),
        "next_beat_resumed_with_memory": kills,
        "daemon_survived": kills,
    }
    record.lost = {"problems": len(problems)}
    record.seconds = round(time.monotonic() - began, 1)
    print(f"\nCLI killed {kills} times; {record.checked}")
    assert not problems, "\n".join(problems)
