"""Issue 17: talk to a running agent (send), pause it, hear when it fails (alerts), watch
the fleet (metrics). Real daemon, real SDK and CLI, the loopback model; the operator's
view: the ``vigil`` commands, ``vigil history --json``, the sinks, the model's stats.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request
from datetime import datetime
from typing import Any

import pytest

from daemon.testing.harness import Job, Site, vigil_argv
from tests.e2e.conftest import parse_reply

pytestmark = pytest.mark.e2e

SENT = "Remember the word pelican."


def vigil(site: Site, *args: str) -> subprocess.CompletedProcess[str]:
    return site.vigil(*args, "--config", str(site.config_path))


def turns_where(site: Site, name: str, **fields: Any) -> list[dict[str, Any]]:
    return [t for t in site.history(name) if all(t.get(k) == v for k, v in fields.items())]


def eventually(check: Any, timeout: float = 30.0, what: str = "") -> Any:
    """Poll ``check`` until it returns something truthy (state that settles, not speed)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"never happened: {what or check}"
        time.sleep(0.2)


def append_toml(site: Site, text: str) -> None:
    with site.config_path.open("a") as f:
        f.write(text)


@pytest.mark.timeout(240)
def test_send_streams_the_reply_is_one_turn_at_a_time_and_the_next_beat_remembers(
    site: Site,
) -> None:
    site.write_config([Job("chat", "Check in.", every="1h")])
    down = vigil(site, "send", "chat", SENT)
    assert down.returncode == 9, down.stderr  # no daemon: nothing to talk to
    daemon = site.start()
    daemon.wait_event("turn_completed", 60, job="chat")  # the first beat after start

    slow = f"{SENT} [slow:300]"
    sender = subprocess.Popen(
        vigil_argv("send", "chat", slow, "--config", str(site.config_path)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=site.env(),
    )
    try:
        assert sender.stdout is not None
        first = os.read(sender.stdout.fileno(), 4096)  # the first delta, as it is journaled
        assert first
        started = daemon.wait_for(
            lambda x: x.get("event") == "turn_started" and x.get("trigger") == "send", 10
        )
        # It streamed: the turn was still running when the first words arrived ...
        assert not [
            x for x in daemon.events("turn_completed", job="chat") if x["turn"] == started["turn"]
        ]
        # ... and a second turn of the same conversation is refused meanwhile.
        refused = vigil(site, "send", "chat", "Are you there?")
        assert refused.returncode == 10
        assert "one turn at a time" in refused.stderr
        rest, err = sender.communicate(timeout=60)
    finally:
        if sender.poll() is None:
            sender.kill()
            sender.wait()
    assert sender.returncode == 0, err
    printed = (first + rest).decode().strip()
    [sent] = turns_where(site, "chat", trigger="send")
    assert sent["status"] == "completed" and sent["prompt"] == slow
    assert sent["turn"] == started["turn"]
    assert printed == sent["reply"]
    assert parse_reply(printed).last.startswith(SENT)

    beat = vigil(site, "beat", "chat")
    assert beat.returncode == 0, beat.stderr
    next_start = daemon.wait_for(
        lambda x: x.get("event") == "turn_started" and x.get("trigger") == "manual", 30
    )
    daemon.wait_for(
        lambda x: x.get("event") == "turn_completed" and x.get("turn") == next_start["turn"], 60
    )
    # The next beat's model was sent the operator's words as part of the conversation.
    assert any(t.startswith(SENT) for t in site.model.stats()["last_seen"])
    last = site.history("chat")[-1]
    assert parse_reply(last["reply"]).n == 3  # first beat, the sent turn, this beat

    as_json = vigil(site, "send", "chat", "And now?", "--json")
    assert as_json.returncode == 0, as_json.stderr
    outcome = json.loads(as_json.stdout)
    assert outcome["status"] == "completed"
    assert outcome["reply"] == site.history("chat")[-1]["reply"]
    assert daemon.terminate() == 0


@pytest.mark.timeout(240)
def test_a_message_queued_for_the_next_beat_survives_a_restart_and_is_seen_once(
    site: Site,
) -> None:
    site.write_config([Job("chat", "Check in.", every="1h")])
    daemon = site.start()
    daemon.wait_event("turn_completed", 60, job="chat")
    note = "Note from the operator: the release moved to Friday."
    blank = vigil(site, "send", "chat", "  ", "--next-beat")
    assert blank.returncode == 10 and "empty" in blank.stderr
    queued = subprocess.run(  # TEXT "-": read from stdin
        vigil_argv("send", "chat", "-", "--next-beat", "--config", str(site.config_path)),
        input=note,
        capture_output=True,
        text=True,
        env=site.env(),
        timeout=60,
        check=False,
    )
    assert queued.returncode == 0, queued.stderr
    assert "queued for the next beat" in queued.stdout
    assert daemon.terminate() == 0

    daemon = site.start()
    status = json.loads(vigil(site, "status", "--json").stdout)
    assert status["jobs"][0]["queued_messages"] == 1
    assert vigil(site, "beat", "chat").returncode == 0
    daemon.wait_event("turn_completed", 60, job="chat")
    noted = site.history("chat")[-1]
    assert noted["trigger"] == "manual"
    assert noted["prompt"].startswith("Check in.") and note in noted["prompt"]
    assert note in site.model.stats()["last_prompts"][-1]  # the model saw it

    mark = daemon.count()
    assert vigil(site, "beat", "chat").returncode == 0
    daemon.wait_event("turn_completed", 60, job="chat", start=mark)
    assert site.history("chat")[-1]["prompt"] == "Check in."  # consumed: seen once
    assert note in " ".join(site.model.stats()["last_seen"])  # and remembered
    assert daemon.terminate() == 0


@pytest.mark.timeout(240)
def test_a_pause_lasts_across_a_restart_and_resume_ends_it(site: Site) -> None:
    site.write_config([Job("chat", "Check in.", every="1s")])
    daemon = site.start()
    daemon.wait_event("turn_completed", 60, job="chat")
    paused = vigil(site, "pause", "chat", "--json")
    assert paused.returncode == 0, paused.stderr
    assert json.loads(paused.stdout) == {"ok": True, "paused": True, "until": None}
    daemon.wait_for(lambda x: x.get("event") == "beat_skipped" and x.get("reason") == "paused", 30)
    [job] = json.loads(vigil(site, "status", "--json").stdout)["jobs"]
    assert job["paused"] is True and job["paused_by"] == "operator"
    assert "paused (operator)" in vigil(site, "status").stdout

    def sessions_say_paused() -> bool:
        [row] = json.loads(vigil(site, "sessions", "--json").stdout)
        return bool(row["paused"]) and row["paused_by"] == "operator"

    eventually(sessions_say_paused, what="sessions shows the pause")
    assert daemon.terminate() == 0

    daemon = site.start()
    mark = daemon.count()
    daemon.wait_for(
        lambda x: x.get("event") == "beat_skipped" and x.get("reason") == "paused",
        30,
        start=mark,
    )
    assert not daemon.events("turn_started", job="chat")  # still paused after the restart
    resumed = vigil(site, "resume", "chat")
    assert resumed.returncode == 0 and "resumed" in resumed.stdout
    daemon.wait_event("turn_completed", 60, job="chat")
    assert vigil(site, "resume", "chat").stdout.strip() == "'chat' was not paused"
    history = site.history("chat")
    assert any(t["status"] == "skipped" and t["reason"] == "paused" for t in history)
    assert history[-1]["status"] in ("completed", "running", "skipped")
    assert daemon.terminate() == 0


@pytest.mark.timeout(300)
def test_failing_beats_alert_once_pause_and_recover_across_a_restart(site: Site) -> None:
    site.write_config([Job("flaky", "Check in.", every="1s")])
    append_toml(
        site,
        "alert_after = 2\nauto_pause_after = 3\n"
        '[[heartbeat.alert]]\ntype = "file"\nname = "ops"\npath = "alerts.jsonl"\n',
    )
    alerts = site.root / "alerts.jsonl"

    def alert_lines() -> list[dict[str, Any]]:
        if not alerts.exists():
            return []
        return [json.loads(line) for line in alerts.read_text().splitlines()]

    site.model.control(fail_next=1000, status=500)  # the model API is down
    daemon = site.start()
    daemon.wait_for(
        lambda x: x.get("event") == "delivery_done" and x.get("sink") == "alert:ops", 90
    )
    [failing] = alert_lines()
    assert failing["job"] == "flaky"
    assert "is failing: 2 failed beats in a row" in failing["text"]
    assert "model_error" in failing["text"] and "HTTP 500" in failing["text"]
    daemon.wait_event("job_auto_paused", 60, job="flaky")
    daemon.wait_for(lambda x: x.get("event") == "beat_skipped" and x.get("reason") == "paused", 30)
    assert len(alert_lines()) == 1  # one alert for the whole run of failures
    assert daemon.terminate() == 0

    daemon = site.start()  # the streak, the alert and the pause come back from the journal
    [job] = json.loads(vigil(site, "status", "--json").stdout)["jobs"]
    assert job["paused"] is True and job["paused_by"] == "auto"
    assert job["failure_streak"] == 3 and job["alerting"] is True
    site.model.control(reset=True)  # the model API is back
    assert vigil(site, "resume", "flaky").returncode == 0
    daemon.wait_for(
        lambda x: x.get("event") == "delivery_done" and x.get("sink") == "alert:ops", 60
    )
    failing, recovered = alert_lines()
    assert "recovered" in recovered["text"] and "after 3 failed beats" in recovered["text"]
    history = site.history("flaky")
    assert [t["status"] for t in history if t["status"] in ("failed", "completed")][:4] == [
        "failed",
        "failed",
        "failed",
        "completed",
    ]
    alerted = [d for t in history for d in t["deliveries"] if d["sink"] == "alert:ops"]
    assert [d["status"] for d in alerted] == ["done", "done"]
    assert daemon.terminate() == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def scrape(url: str) -> dict[str, float]:
    """``name{labels}`` -> value, from the Prometheus text format."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    return samples


@pytest.mark.timeout(240)
def test_metrics_over_http_agree_with_the_journal(site: Site) -> None:
    port = free_port()
    (site.root / "empty.md").write_text("<!-- nothing to do -->\n")
    site.write_config([Job("chat", "Check in.", every="1h")], metrics=f"127.0.0.1:{port}")
    append_toml(
        site,
        '\n[[heartbeat]]\nname = "idle"\nevery = "1h"\nprompt_file = "empty.md"\ncwd = "work"\n',
    )
    daemon = site.start()
    daemon.wait_event("turn_completed", 60, job="chat")
    daemon.wait_event("beat_skipped", 60, job="idle")
    mark = daemon.count()
    assert vigil(site, "beat", "chat").returncode == 0
    daemon.wait_event("turn_completed", 60, job="chat", start=mark)
    failed = vigil(site, "send", "chat", "Fail now. [fail:500]")
    assert failed.returncode == 12, failed.stderr
    assert vigil(site, "send", "chat", "Hello again.").returncode == 0

    metrics = scrape(f"http://127.0.0.1:{port}/metrics")
    chat = site.history("chat", cli=True)
    idle = site.history("idle", cli=True)
    completed = [t for t in chat if t["status"] == "completed"]
    assert metrics['vigil_beats_total{heartbeat="chat",outcome="completed"}'] == len(completed) == 3
    assert metrics['vigil_beats_total{heartbeat="chat",outcome="failed"}'] == 1
    assert metrics['vigil_beat_failures_total{heartbeat="chat",reason="model_error"}'] == 1
    skipped = [t for t in idle if t["status"] == "skipped" and t["reason"] == "empty_prompt"]
    idle_skips = 'vigil_beats_skipped_total{heartbeat="idle",reason="empty_prompt"}'
    assert metrics[idle_skips] == len(skipped)
    cost = sum(t["cost_usd"] or 0 for t in chat)
    assert metrics['vigil_cost_usd_total{heartbeat="chat"}'] == pytest.approx(cost, abs=1e-6)
    last = datetime.fromisoformat(completed[-1]["ended_at"].replace("Z", "+00:00"))
    assert metrics['vigil_last_success_timestamp_seconds{heartbeat="chat"}'] == pytest.approx(
        last.timestamp(), abs=0.001
    )
    done = [d for t in chat for d in t["deliveries"] if d["status"] == "done"]
    delivered = 'vigil_deliveries_total{heartbeat="chat",outcome="done",sink_type="stdout"}'
    assert metrics[delivered] == len(done)
    assert metrics['vigil_beat_duration_seconds_count{heartbeat="chat"}'] == 4
    assert (
        metrics['vigil_schedule_lag_seconds_count{heartbeat="chat"}'] == 3
    )  # the failed one streamed none
    assert metrics['vigil_tokens_total{heartbeat="chat",type="output"}'] > 0
    assert metrics['vigil_journal_seconds_count{op="append"}'] > 0
    assert metrics["vigil_up"] == 1 and metrics["vigil_turn_slots"] == 4
    assert metrics['vigil_job_paused{heartbeat="chat"}'] == 0
    assert vigil(site, "pause", "chat").returncode == 0
    assert scrape(f"http://127.0.0.1:{port}/metrics")['vigil_job_paused{heartbeat="chat"}'] == 1
    assert not any("session" in key or "Hello" in key for key in metrics)  # bounded labels
    assert daemon.terminate() == 0
