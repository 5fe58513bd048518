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
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Job, Site, parse_reply, vigil_argv

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
