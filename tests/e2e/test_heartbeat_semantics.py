"""Heartbeat semantics end to end: quiet replies, delivery, budgets, backoff, catch-up,
reload and the delivery fence.

Each test runs ``vigil run`` against the loopback model and checks what an operator
would: log lines, ``vigil history --json``, the model's request counters, what the
sinks received and which CLI processes ran. Timing-sensitive logic (DST, active hours,
budgets by day) is unit-tested with explicit clocks in ``tests/test_jobs_*.py``; here
real seconds pass, so intervals are 1-2 s and assertions allow scheduling slack.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from daemon.testing.harness import Daemon, LogLine, Site, descendants

pytestmark = pytest.mark.e2e

SLACK_S = 0.35  # how early a beat may seem to fire, measured between journal stamps


# ---------------------------------------------------------------- helpers


def write_config(site: Site, jobs: str, **daemon: str | bool) -> None:
    """The [daemon] table the e2e site uses, then ``jobs`` (TOML text) as given."""
    settings: dict[str, str | bool] = {
        "state_dir": "state",
        "runtime_dir": "run",
        "key_file": "vigil.key",
        "drain_grace": "5s",
        "log_content": True,  # these tests read replies from the log lines
        **daemon,
    }
    head = "\n".join(["[daemon]", *(f"{k} = {json.dumps(v)}" for k, v in settings.items())])
    site.config_path.write_text(head + "\n\n" + jobs.strip() + "\n")


def job(name: str, *, every: str = "1s", prompt: str | None = None, extra: str = "") -> str:
    """One [[heartbeat]] with its own working directory ``work-<name>``."""
    lines = ["[[heartbeat]]", f'name = "{name}"', f'every = "{every}"', f'cwd = "work-{name}"']
    if prompt is not None:
        lines.append(f"prompt = {json.dumps(prompt)}")
    return "\n".join(lines) + "\n" + extra.strip() + "\n\n"


def workdirs(site: Site, *names: str) -> None:
    for name in names:
        site.workdir(f"work-{name}")


def is_event(event: str, job: str | None, **fields: Any) -> Any:
    """A log-line predicate; ``job=None`` for daemon-wide lines (which carry no job)."""

    def check(line: LogLine) -> bool:
        return (
            line.get("event") == event
            and line.get("job") == job
            and all(line.get(k) == v for k, v in fields.items())
        )

    return check


def wait_count(daemon: Daemon, event: str, job: str, n: int, timeout: float = 30, **f: Any) -> None:
    deadline = time.monotonic() + timeout
    while len([x for x in daemon.events(event, job=job) if is_event(event, job, **f)(x)]) < n:
        assert time.monotonic() < deadline, f"fewer than {n} {event} of {job}\n{daemon.tail()}"
        time.sleep(0.05)


def stamp(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def started(turns: list[dict[str, Any]], *, after: float = 0.0) -> list[dict[str, Any]]:
    """Turns that ran (not skipped), started after the epoch second ``after``."""
    return [t for t in turns if t["status"] != "skipped" and stamp(t["started_at"]) > after]


def gaps(turns: list[dict[str, Any]]) -> list[float]:
    times = [stamp(t["started_at"]) for t in turns]
    return [round(b - a, 2) for a, b in itertools.pairwise(times)]


def cli_pids(daemon: Daemon) -> dict[str, int]:
    """Each live CLI child of the daemon by job, told apart by its working directory."""
    found: dict[str, int] = {}
    for pid in descendants(daemon.pid):
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            continue
        name = Path(cwd).name
        if name.startswith("work-") and "claude" in Path(f"/proc/{pid}/cmdline").read_text():
            found.setdefault(name.removeprefix("work-"), pid)
    return found


def model_prompts(site: Site) -> list[str]:
    prompts: list[str] = site.model.stats()["last_prompts"]
    return prompts


def since_before(turns: list[dict[str, Any]], record: dict[str, Any]) -> float:
    """When the last beat before ``record`` came due (ran or was skipped)."""
    return max(stamp(t["started_at"]) for t in turns if t["turn"] < record["turn"])


# ---------------------------------------------------------------- a local webhook


@dataclass
class Hook:
    """An HTTP server on 127.0.0.1: answers ``fail_first`` requests with 503, then 200."""

    fail_first: int = 0
    received: list[dict[str, Any]] = field(default_factory=list)
    requests: int = 0
    url: str = ""


@pytest.fixture
def hook() -> Iterator[Hook]:
    state = Hook()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
            with lock:
                state.requests += 1
                ok = state.requests > state.fail_first
                if ok:
                    state.received.append(body)
            self.send_response(200 if ok else 503)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.url = f"http://127.0.0.1:{server.server_address[1]}/vigil"
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield state
    server.shutdown()
    server.server_close()


# ---------------------------------------------------------------- quiet replies and delivery


@pytest.mark.timeout(90)
def test_quiet_replies_are_journaled_not_delivered_and_others_reach_every_sink(
    site: Site, hook: Hook
) -> None:
    hook.fail_first = 1  # the first webhook attempt fails: retried with backoff
    workdirs(site, "quiet", "loud")
    write_config(
        site,
        job(
            "quiet",
            prompt="Anything new? [reply:HEARTBEAT_OK]",
            extra='[[heartbeat.sink]]\ntype = "file"\npath = "quiet.jsonl"',
        )
        + job(
            "loud",
            prompt="Anything new? [reply:Two new mails from ops]",
            extra=f"""
            [[heartbeat.sink]]
            type = "file"
            path = "loud.jsonl"

            [[heartbeat.sink]]
            type = "webhook"
            name = "chat"
            url = "{hook.url}"
            retries = 2
            retry_delay = "300ms"
            """.replace("\n            ", "\n"),
        ),
    )
    daemon = site.start()
    wait_count(daemon, "turn_completed", "quiet", 3)
    wait_count(daemon, "delivery_done", "loud", 4)  # two turns, two sinks each
    assert daemon.terminate() == 0

    quiet = [t for t in site.history("quiet") if t["status"] != "skipped"]
    assert len(quiet) >= 3
    assert {t["status"] for t in quiet} == {"quiet"}
    assert all(t["reply"] == "HEARTBEAT_OK" and t["deliveries"] == [] for t in quiet)
    assert not (site.root / "quiet.jsonl").exists()  # nothing was delivered
    assert daemon.events("delivery_started", job="quiet") == []

    loud = [t for t in site.history("loud") if t["status"] != "skipped"]
    delivered = [t for t in loud if t["deliveries"]]
    assert len(delivered) >= 2 and all(t["status"] == "completed" for t in loud)
    first = {d["sink"]: d for d in delivered[0]["deliveries"]}
    assert first["file"]["status"] == "done" and first["file"]["attempts"] == 1
    assert first["chat"]["status"] == "done" and first["chat"]["attempts"] == 2
    lines = [json.loads(x) for x in (site.root / "loud.jsonl").read_text().splitlines()]
    file_status = {
        t["turn"]: d["status"] for t in loud for d in t["deliveries"] if d["sink"] == "file"
    }
    assert len(lines) == len({x["turn"] for x in lines})  # each turn once
    # in the file: every delivery journaled done (and perhaps one cut off by the stop)
    assert {t for t, status in file_status.items() if status == "done"} <= {
        x["turn"] for x in lines
    }
    assert {x["turn"] for x in lines} <= {t for t, s in file_status.items() if s != "failed"}
    assert all(x["job"] == "loud" and x["text"] == "Two new mails from ops" for x in lines)
    hooked = [x["turn"] for x in hook.received]  # retries may reorder turns: never repeat
    assert len(hooked) == len(set(hooked)) >= 2
    assert hook.requests == len(hook.received) + 1  # one failed attempt, nothing twice


@pytest.mark.timeout(60)
def test_an_empty_prompt_file_skips_beats_without_a_model_request_until_reloaded(
    site: Site,
) -> None:
    workdirs(site, "notes")
    prompt = site.root / "HEARTBEAT.md"
    prompt.write_text("# Heartbeat\n\n<!-- nothing to check today -->\n\n")
    write_config(site, job("notes", extra='prompt_file = "HEARTBEAT.md"'))
    daemon = site.start()
    wait_count(daemon, "beat_skipped", "notes", 3, reason="empty_prompt")
    assert site.model.stats()["message_requests"] == 0
    assert daemon.events("turn_started", job="notes") == []

    prompt.write_text("# Heartbeat\n\nSay hello. [reply:hello]\n")
    mark = daemon.count()
    os.kill(daemon.pid, signal.SIGHUP)  # the prompt file is re-read on reload
    daemon.wait_for(is_event("reloaded", None), 10, start=mark)
    daemon.wait_for(is_event("turn_completed", "notes"), 30, start=mark)
    assert daemon.terminate() == 0
    assert site.model.stats()["message_requests"] >= 1
    turns = site.history("notes")
    ran = [i for i, t in enumerate(turns) if t["status"] != "skipped"]
    assert ran and turns[ran[0]]["status"] == "completed"
    before = turns[: ran[0]]  # every beat before the reload was skipped as empty
    assert len(before) >= 3 and {t["reason"] for t in before} == {"empty_prompt"}


# ---------------------------------------------------------------- budgets


@pytest.mark.timeout(90)
def test_the_daily_budget_stops_beats_and_still_does_after_a_restart(site: Site) -> None:
    # One dev-model turn costs about $0.0107: two turns exhaust $0.015.
    workdirs(site, "spender", "capped")
    write_config(
        site,
        job("spender", prompt="Spend. [reply:spent]", extra="daily_budget_usd = 0.015")
        + job("capped", every="2s", prompt="Capped beat.", extra="max_budget_usd = 0.005"),
    )
    daemon = site.start()
    daemon.wait_for(is_event("beat_skipped", "spender", reason="budget_exhausted"), 30)
    wait_count(daemon, "turn_failed", "capped", 2, reason="max_budget_exceeded")
    assert daemon.terminate() == 0
    spent = [t for t in site.history("spender") if t["status"] == "completed"]
    assert len(spent) == 2
    assert sum(t["cost_usd"] for t in spent) >= 0.015
    requests_before = site.model.stats()["message_requests"]
    capped_before = sum("Capped beat." in p for p in model_prompts(site))

    # max_budget_usd is per beat: every capped beat reached the model (a fresh CLI
    # process each time), instead of the first overrun failing all later ones unasked.
    capped = [t for t in site.history("capped") if t["status"] != "skipped"]
    assert len(capped) >= 2 and {t["reason"] for t in capped} == {"max_budget_exceeded"}
    assert capped_before >= 2

    write_config(
        site, job("spender", prompt="Spend. [reply:spent]", extra="daily_budget_usd = 0.015")
    )
    again = site.start()
    wait_count(again, "beat_skipped", "spender", 2, reason="budget_exhausted")
    line = again.events("beat_skipped", job="spender")[-1]
    assert "of daily_budget_usd $0.0150 today" in line["detail"]
    assert again.terminate() == 0
    assert site.model.stats()["message_requests"] == requests_before
    assert again.events("turn_started", job="spender") == []


# ---------------------------------------------------------------- idle backoff


@pytest.mark.timeout(90)
def test_idle_backoff_doubles_the_interval_and_a_real_reply_resets_it(site: Site) -> None:
    workdirs(site, "idle")
    prompt = site.root / "idle.md"
    prompt.write_text("Anything? [reply:HEARTBEAT_OK]\n")
    write_config(
        site,
        job(
            "idle",
            extra='prompt_file = "idle.md"\nidle_backoff = 1\nidle_backoff_max = "4s"',
        ),
    )
    daemon = site.start()
    wait_count(daemon, "turn_completed", "idle", 3)
    prompt.write_text("Anything? [reply:The disk is full]\n")
    os.kill(daemon.pid, signal.SIGHUP)
    daemon.wait_for(is_event("turn_completed", "idle"), 15, start=daemon.count())
    wait_count(daemon, "turn_completed", "idle", 5, timeout=20)
    assert daemon.terminate() == 0

    turns = started(site.history("idle"))
    statuses = [t["status"] for t in turns]
    reset = statuses.index("completed")  # the first reply that was not quiet
    assert statuses[:reset] == ["quiet"] * reset and reset >= 3
    stretched = gaps(turns[: reset + 1])
    # after 1 quiet beat: 2s, after 2: 4s (the maximum), then 4s again
    assert stretched[0] == pytest.approx(2, abs=SLACK_S)
    assert all(g == pytest.approx(4, abs=SLACK_S) for g in stretched[1:])
    assert gaps(turns[reset : reset + 2])[0] == pytest.approx(1, abs=SLACK_S)
    steps = [x["interval_s"] for x in daemon.events("idle_backoff", job="idle")]
    assert steps[:2] == [2.0, 4.0] and steps[-1] == 1.0


# ---------------------------------------------------------------- catch-up


@pytest.mark.timeout(90)
def test_catch_up_once_runs_one_beat_for_the_missed_ones_and_skip_runs_none_early(
    site: Site,
) -> None:
    workdirs(site, "once", "skip")
    write_config(
        site,
        job("once", every="2s", prompt="Once. [reply:ok]", extra='catch_up = "once"')
        + job("skip", every="2s", prompt="Skip. [reply:ok]", extra='catch_up = "skip"'),
    )
    daemon = site.start()
    wait_count(daemon, "turn_completed", "once", 1)
    wait_count(daemon, "turn_completed", "skip", 1)
    assert daemon.terminate() == 0
    time.sleep(4.5)  # down for more than two intervals (and the restart takes a while)

    again = site.start()
    restarted = time.time()
    wait_count(again, "turn_completed", "once", 2, timeout=30)
    wait_count(again, "turn_completed", "skip", 1, timeout=30)
    assert again.terminate() == 0

    since: dict[str, float] = {}
    for name in ("once", "skip"):
        turns = site.history(name)
        [missed] = [t for t in turns if t["reason"] == "missed_while_down"]
        since[name] = since_before(turns, missed)
        count = missed["missed"]
        assert count == int((stamp(missed["started_at"]) - since[name]) // 2), name
        assert count >= 2 and f"{count} beats came due while vigil was down" in missed["detail"]
        since[name] += (count + 1) * 2  # the next due time on the old grid

    records = [t for t in site.history("once") if stamp(t["started_at"]) > restarted - 1]
    once = started(records)
    assert [t["trigger"] for t in once[:2]] == ["catch_up", "schedule"]  # one, not several
    assert stamp(once[0]["started_at"]) - restarted < 1.5  # right after the start
    # The next beat came due one interval after the catch-up beat (it runs, or is
    # skipped if the catch-up turn is still running on a slow machine).
    index = records.index(once[0])
    assert gaps(records[index : index + 2])[0] == pytest.approx(2, abs=SLACK_S)
    assert {t["reason"] for t in records[index + 1 : records.index(once[1])]} <= {
        "previous_turn_running"
    }

    skip = started(site.history("skip"), after=restarted - 1)
    assert skip[0]["trigger"] == "schedule"
    assert stamp(skip[0]["started_at"]) == pytest.approx(since["skip"], abs=SLACK_S)


# ---------------------------------------------------------------- reload


@pytest.mark.timeout(120)
def test_sighup_adds_removes_and_changes_jobs_without_double_beats_or_restarts(
    site: Site,
) -> None:
    workdirs(site, "keep", "change", "drop", "new")
    keep = job("keep", prompt="Keep. [reply:k]")
    write_config(
        site,
        keep + job("change", prompt="Change. [reply:c]") + job("drop", prompt="Drop. [reply:d]"),
    )
    daemon = site.start()
    for name in ("keep", "change", "drop"):
        wait_count(daemon, "turn_completed", name, 2)
    pids = cli_pids(daemon)
    assert set(pids) == {"keep", "change", "drop"}

    write_config(
        site,
        keep
        + job(
            "change",
            every="2s",
            prompt="Changed. [reply:c2]",
            extra='system_prompt = "You are terse."',
        )
        + job("new", prompt="New. [reply:n]"),
    )
    mark = daemon.count()
    os.kill(daemon.pid, signal.SIGHUP)
    reloaded = daemon.wait_for(is_event("reloaded", None), 10, start=mark)
    assert (reloaded["added"], reloaded["removed"]) == (["new"], ["drop"])
    assert (reloaded["changed"], reloaded["unchanged"]) == (["change"], ["keep"])
    reload_at = stamp(reloaded["timestamp"])
    daemon.wait_for(is_event("job_removed", "drop"), 15, start=mark)
    for name, n in (("new", 2), ("change", 2), ("keep", 3)):
        daemon.wait_for(is_event("turn_completed", name), 20, start=mark)
        wait_count(daemon, "turn_completed", name, n, timeout=20)
    after = cli_pids(daemon)

    # A bad file is refused, logged, and the running jobs carry on.
    good = site.config_path.read_text()
    site.config_path.write_text(good + '\n[[heartbeat]]\nname = "x"\n')
    mark = daemon.count()
    os.kill(daemon.pid, signal.SIGHUP)
    refused = daemon.wait_for(is_event("reload_refused", None), 10, start=mark)
    assert "heartbeat[x]" in refused["error"] and "cwd: is required" in refused["error"]
    for name in ("keep", "change", "new"):
        daemon.wait_for(is_event("turn_completed", name), 20, start=daemon.count())
    assert daemon.terminate() == 0
    site.config_path.write_text(good)  # `vigil history` reads the config too

    assert after["keep"] == pids["keep"]  # untouched: the same CLI process throughout
    assert after["change"] != pids["change"]  # new agent settings: reconnected (resumed)
    assert "drop" not in after and "new" in after
    keep_binds = [t for t in site.view("keep").turns if t.status != "skipped"]
    assert len({t.session_id for t in keep_binds}) == 1
    frames = site.frames("keep").values()
    assert [f["mode"] for f in frames if f["type"] == "session_bound"] == ["new"]
    change_binds = [
        f["mode"] for f in site.frames("change").values() if f["type"] == "session_bound"
    ]
    assert change_binds == ["new", "resume"]

    drop = site.history("drop")
    assert all(stamp(t["started_at"]) < reload_at for t in drop)
    for name, every in (("keep", 1.0), ("change", 2.0), ("new", 1.0)):
        turns = started(site.history(name))
        before = [t for t in turns if stamp(t["started_at"]) < reload_at][-1:]
        ran = before + started(turns, after=reload_at)
        assert all(g >= every - SLACK_S for g in gaps(ran)), (name, gaps(ran))
    change_turns = started(site.history("change"))
    assert change_turns[-1]["prompt"] == "Changed. [reply:c2]"


# ---------------------------------------------------------------- the delivery fence


@pytest.mark.timeout(90)
def test_a_kill_mid_delivery_leaves_it_unknown_and_it_is_never_sent_again(site: Site) -> None:
    workdirs(site, "alert")
    got, pids, slow = site.root / "got", site.root / "pids", site.root / "slow"
    slow.touch()
    script = (
        f'echo $$ >> "{pids}"; echo "$VIGIL_TURN" >> "{got}"; if [ -e "{slow}" ]; then sleep 30; fi'
    )
    write_config(
        site,
        job(
            "alert",
            every="2s",
            prompt="Alert! [reply:disk full]",
            extra=f"""
            [[heartbeat.sink]]
            type = "command"
            command = ["sh", "-c", {json.dumps(script)}]
            timeout = "60s"
            retries = 0
            """.replace("\n            ", "\n"),
        ),
    )
    daemon = site.start()
    line = daemon.wait_for(is_event("delivery_started", "alert"), 30)
    fenced_turn = line["turn"]
    deadline = time.monotonic() + 10
    while not (got.exists() and str(fenced_turn) in got.read_text().split()):
        assert time.monotonic() < deadline, "the command sink never ran"
        time.sleep(0.02)
    daemon.kill()  # between delivery_started and the sink's completion
    for pid in {int(p) for p in pids.read_text().split()}:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)  # the sinks this test's daemon left sleeping
    slow.unlink()
    in_flight = {int(x["turn"]) for x in daemon.events("delivery_started", job="alert")} - {
        int(x["turn"]) for x in daemon.events("delivery_done", job="alert")
    }
    assert fenced_turn in in_flight

    again = site.start()
    for turn in in_flight:
        again.wait_for(is_event("delivery_unknown", "alert", turn=turn), 10)
    again.wait_for(is_event("delivery_done", "alert"), 30)
    assert again.terminate() == 0

    by_turn = {t["turn"]: t for t in site.history("alert")}
    for turn in in_flight:
        [delivery] = by_turn[turn]["deliveries"]
        assert delivery["status"] == "unknown" and delivery["attempts"] == 1
        assert "not sent again" in delivery["error"]
    runs = [int(x) for x in got.read_text().split()]
    assert sorted(runs) == sorted(set(runs))  # no turn was handed to the sink twice
    assert set(in_flight) <= set(runs)
    later = [t for t in by_turn.values() if t["turn"] not in in_flight and t["deliveries"]]
    assert later and all(t["deliveries"][0]["status"] == "done" for t in later)
    resent = {int(x["turn"]) for x in again.events("delivery_started", job="alert")}
    assert not resent & in_flight
