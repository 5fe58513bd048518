"""Issue 5: ``vigil fork NAME NEW_NAME [--at TURN]`` against a running daemon.

A fork is made offline while the daemon runs; a job of the new name then continues
it. The loopback model's echo reply (``seen N user turns; first: ...; last: ...``)
shows exactly which history each conversation's next turn was sent. Each beat of the
source has its own prompt (changed by a reload), so "first" and the count tell the
turns apart.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from daemon.testing.harness import Daemon, Job, Site
from tests.e2e.conftest import parse_reply, shown

pytestmark = pytest.mark.e2e

TURN_WAIT_S = 90.0


def _reload(site: Site, daemon: Daemon, jobs: list[Job]) -> dict[str, Any]:
    mark = daemon.count()
    site.write_config(jobs)
    os.kill(daemon.pid, signal.SIGHUP)
    return daemon.wait_for(lambda x: x.get("event") == "reloaded", 30, start=mark, what="reload")


def _beat(site: Site, daemon: Daemon, name: str) -> dict[str, Any]:
    """Run a beat of ``name`` through the daemon; the journal's view of that turn."""
    mark = daemon.count()
    done = site.vigil("beat", name, "--config", str(site.config_path))
    assert done.returncode == 0, done.stderr
    ended = daemon.wait_for(
        lambda x: x.get("job") == name and x.get("event") in ("turn_completed", "turn_failed"),
        TURN_WAIT_S,
        start=mark,
        what=f"the end of a turn of {name}",
    )
    return next(t for t in site.history(name) if t["turn"] == ended["turn"])


def _first_turn(daemon: Daemon, site: Site, name: str, *, start: int = 0) -> dict[str, Any]:
    ended = daemon.wait_for(
        lambda x: x.get("job") == name and x.get("event") in ("turn_completed", "turn_failed"),
        TURN_WAIT_S,
        start=start,
        what=f"the first turn of {name}",
    )
    return next(t for t in site.history(name) if t["turn"] == ended["turn"])


def _fork(site: Site, *args: str) -> Any:
    return site.vigil("fork", *args, "--config", str(site.config_path))


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def _alpha(prompt: str) -> Job:
    return Job("alpha", prompt, every="1h")


@pytest.mark.timeout(400)
def test_fork_at_a_turn_sees_history_up_to_it_and_the_source_goes_on_unchanged(
    site: Site,
) -> None:
    config = str(site.config_path)
    site.write_config([_alpha("alpha one")])
    daemon = site.start()
    assert _first_turn(daemon, site, "alpha")["status"] == "completed"
    for prompt in ("alpha two", "alpha three"):
        _reload(site, daemon, [_alpha(prompt)])
        assert _beat(site, daemon, "alpha")["status"] == "completed"
    # The last turn's reply is delivered after its end: the source is quiet only then.
    daemon.wait_for(
        lambda x: (
            x.get("job") == "alpha" and x.get("event") == "delivery_done" and x.get("turn") == 3
        ),
        TURN_WAIT_S,
        what="the delivery of alpha's turn 3",
    )
    alpha_session = site.view("alpha").session_id
    source_bytes = site.journal_path("alpha").read_bytes()
    transcripts = site.state_dir / "transcripts"
    transcripts_before = _files(transcripts)

    forked = _fork(site, "alpha", "bravo", "--at", "2", "--json")
    assert forked.returncode == 0, forked.stderr
    made = json.loads(forked.stdout)
    assert (made["name"], made["source"], made["turn"], made["next_turn"]) == (
        "bravo",
        "alpha",
        2,
        3,
    )
    assert made["source_session_id"] == alpha_session
    assert made["session_id"] not in (None, alpha_session)
    assert made["cwd"] == str(site.root / "work")

    # The source is untouched: its journal byte for byte, every transcript file too;
    # the fork added one transcript file and one journal holding one `forked` record.
    assert site.journal_path("alpha").read_bytes() == source_bytes
    transcripts_after = _files(transcripts)
    assert {k: transcripts_after[k] for k in transcripts_before} == transcripts_before
    assert len(transcripts_after) == len(transcripts_before) + 1
    frames = site.frames("bravo")
    assert list(frames) == [1]
    assert {k: frames[1][k] for k in ("type", "source", "source_turn", "session_id")} == {
        "type": "forked",
        "source": "alpha",
        "source_turn": 2,
        "session_id": made["session_id"],
    }
    history = site.vigil("history", "bravo", "--config", config)
    assert history.returncode == 0, history.stderr
    assert history.stdout.startswith("bravo: no turns yet (forked from alpha at turn 2;")
    sessions = site.vigil("sessions", "--config", config, "--json")
    assert sessions.returncode == 0, sessions.stderr
    rows = {r["name"]: r for r in json.loads(sessions.stdout)}
    assert (rows["bravo"]["forked_from"], rows["bravo"]["forked_turn"]) == ("alpha", 2)
    assert rows["bravo"]["session_id"] == made["session_id"]
    assert rows["alpha"]["forked_from"] is None
    verify = site.vigil("verify", "--config", config)
    assert verify.returncode == 0, verify.stdout + verify.stderr

    # A job named bravo (same cwd) continues the fork: turns 1-2 and its own prompt.
    reloaded = _reload(site, daemon, [_alpha("alpha four"), Job("bravo", "bravo one", every="1h")])
    assert reloaded["added"] == ["bravo"]
    bravo = _first_turn(daemon, site, "bravo")
    assert (bravo["turn"], bravo["status"], bravo["session_id"]) == (
        3,
        "completed",
        made["session_id"],
    )
    seen = parse_reply(bravo["reply"])
    assert (seen.n, seen.first, seen.last) == (3, shown("alpha one"), shown("bravo one"))

    # The source goes on with its own full history, in its own session.
    alpha = _beat(site, daemon, "alpha")
    assert (alpha["turn"], alpha["status"], alpha["session_id"]) == (4, "completed", alpha_session)
    seen = parse_reply(alpha["reply"])
    assert (seen.n, seen.first, seen.last) == (4, shown("alpha one"), shown("alpha four"))
    assert site.journal_path("alpha").read_bytes().startswith(source_bytes)

    # And the fork keeps its own memory from there.
    bravo = _beat(site, daemon, "bravo")
    seen = parse_reply(bravo["reply"])
    assert (bravo["turn"], seen.n, seen.first) == (4, 4, shown("alpha one"))

    assert daemon.terminate() == 0
    for command in ("verify", "rebuild"):
        done = site.vigil(command, "--config", config)
        assert done.returncode == 0, done.stdout + done.stderr
    sessions = site.vigil("sessions", "--config", config, "--json")
    rows = {r["name"]: r for r in json.loads(sessions.stdout)}
    assert (rows["bravo"]["forked_from"], rows["bravo"]["turns"]) == ("alpha", 2)


@pytest.mark.timeout(400)
def test_fork_at_the_last_completed_turn_and_every_refusal(site: Site) -> None:
    config = str(site.config_path)
    broken = Job("broken", "[fail:500] broken", every="1h")
    site.write_config([_alpha("alpha one"), broken])
    daemon = site.start()
    assert _first_turn(daemon, site, "alpha")["status"] == "completed"
    assert _first_turn(daemon, site, "broken")["status"] == "failed"
    _reload(site, daemon, [_alpha("alpha two"), broken])
    assert _beat(site, daemon, "alpha")["status"] == "completed"

    # Without --at: the last completed turn. A plain line says what to do next.
    forked = _fork(site, "alpha", "charlie")
    assert forked.returncode == 0, forked.stderr
    session = site.view("charlie").session_id
    assert forked.stdout == (
        f"forked alpha at turn 2 into charlie (session {session}); add a [[heartbeat]] "
        f'named "charlie" with cwd = "{site.root / "work"}" and reload vigil to run it\n'
    )
    charlie_job = Job("charlie", "charlie one", every="1h")
    _reload(site, daemon, [_alpha("[fail:500] alpha three"), broken, charlie_job])
    charlie = _first_turn(daemon, site, "charlie")
    seen = parse_reply(charlie["reply"])
    assert (charlie["turn"], seen.n, seen.first, seen.last) == (
        3,
        3,
        shown("alpha one"),
        shown("charlie one"),
    )
    assert _beat(site, daemon, "alpha")["status"] == "failed"  # alpha's turn 3

    journals = site.state_dir / "conversations"
    transcripts = site.state_dir / "transcripts"
    before = (_files(journals), _files(transcripts))
    refusals = [
        (("nosuch", "delta"), 2, "no heartbeat job named 'nosuch' (jobs: alpha, broken, charlie)"),
        (("broken", "delta"), 11, "broken has no completed turn to fork from"),
        (("alpha", "broken"), 11, "broken already has a journal"),
        (
            ("alpha", "delta", "--at", "7"),
            11,
            "alpha has no turn 7 (its turns are 1-3; completed: 1, 2)",
        ),
        (
            ("alpha", "delta", "--at", "3"),
            11,
            "turn 3 of alpha is failed (model_error), not completed; completed turns: 1, 2",
        ),
        (
            ("charlie", "delta", "--at", "2"),
            11,
            "turn 2 of charlie is from before it was forked from alpha at turn 2; "
            "fork alpha at turn 2 instead (completed turns of charlie: 3)",
        ),
        (("alpha", "bad/name"), 2, "argument NEW_NAME: bad job name 'bad/name'"),
        (("alpha", "delta", "--at", "0"), 2, "argument --at: bad turn '0'"),
    ]
    for args, code, message in refusals:
        done = _fork(site, *args)
        assert (done.returncode, done.stdout) == (code, ""), (args, done.stderr)
        assert message in done.stderr, (args, done.stderr)
        if code == 11:
            assert done.stderr.startswith("vigil: error: fork refused: "), done.stderr
            assert done.stderr.endswith("; nothing was written\n"), done.stderr
    assert (_files(journals), _files(transcripts)) == before
    assert daemon.terminate() == 0

    # A job already configured under the new name must run where the source ran.
    site.write_config([_alpha("alpha"), Job("delta", "delta", every="1h", cwd="elsewhere")])
    done = _fork(site, "alpha", "delta")
    assert done.returncode == 11
    assert (
        f"job 'delta' is configured with cwd = {site.root / 'elsewhere'}, but alpha's "
        f"conversation runs in {site.root / 'work'}; a fork resumes only from the same directory"
    ) in done.stderr
    assert (_files(journals), _files(transcripts)) == before

    # A daemon without jobs for broken and charlie still mirrors their journals: the
    # fork's origin shows in `vigil sessions`, and verify is clean running and stopped.
    site.write_config([_alpha("alpha")])
    daemon = site.start()
    sessions = site.vigil("sessions", "--config", config, "--json")
    rows = {r["name"]: r for r in json.loads(sessions.stdout)}
    assert sorted(rows) == ["alpha", "broken", "charlie"]
    assert (rows["charlie"]["forked_from"], rows["charlie"]["forked_turn"]) == ("alpha", 2)
    assert rows["charlie"]["turns"] == 1
    for running in (True, False):
        verify = site.vigil("verify", "--config", config)
        assert verify.returncode == 0, verify.stdout + verify.stderr
        assert ("daemon running" in verify.stdout) is running
        if running:
            assert daemon.terminate() == 0
