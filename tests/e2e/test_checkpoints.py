"""Start-up checkpoints end to end: a daemon SIGKILLed mid-turn restarts from each
conversation's checkpoint plus the records after it, with the state a full read gives."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest

from daemon.journal.checkpoint import read_checkpoint
from daemon.journal.conversation import ConversationState
from daemon.journal.scan import read_events
from daemon.testing.harness import Job, LogLine, Site
from tests.e2e.conftest import parse_reply, shown

pytestmark = pytest.mark.e2e

JOBS = ("alpha", "beta")


def _a_delta_of(job: str) -> Callable[[LogLine], bool]:
    return lambda x: x.get("event") == "delta" and x.get("job") == job


def _wait_for_checkpoints(site: Site, timeout: float) -> None:
    """Until every job has a checkpoint file (written on a thread after a turn's end)."""
    directory = site.state_dir / "checkpoints"
    deadline = time.monotonic() + timeout
    while not all((directory / f"{name}.ckpt").exists() for name in JOBS):
        if time.monotonic() > deadline:
            raise AssertionError(f"no checkpoint for every job within {timeout}s")
        time.sleep(0.1)


def _full_fold(site: Site, name: str) -> ConversationState:
    state = ConversationState()
    for event in read_events(site.journal_path(name), name, site.keyring):
        state.feed(event)
    return state


@pytest.mark.timeout(240)
def test_a_restart_after_sigkill_reads_only_what_follows_the_checkpoints(site: Site) -> None:
    # Every turn journals more than 3 records, so every turn's end writes a checkpoint.
    site.write_config([Job(name, f"{name} beat", every="1s") for name in JOBS], checkpoint_every=3)
    first = site.start()
    for name in JOBS:
        first.wait_event("turn_completed", 60, job=name)
    _wait_for_checkpoints(site, 30)
    # SIGKILL while a turn of alpha streams: records after its checkpoint, a turn open.
    first.kill_on(_a_delta_of("alpha"), 60, what="a delta of alpha")
    expected = {name: _full_fold(site, name) for name in JOBS}
    records = {name: len(site.frames(name)) for name in JOBS}
    open_turn = expected["alpha"].open_turn
    assert open_turn is not None

    second = site.start()
    read: LogLine = second.events("checkpoints_read")[0]
    assert (read["used"], read["read_in_full"], read["missing"], read["unusable"]) == (2, 0, 0, {})
    # The log says how many records start-up read after the checkpoints: at least the
    # open turn's start and first delta, fewer than the journals hold.
    assert 2 <= read["records_after_checkpoints"] < sum(records.values())
    # The state folded from checkpoint + tail is the full read's: the open turn healed
    # and replayed with its prompt, the next turn numbers on, the session kept.
    healed = second.wait_event("turn_healed", 30, job="alpha")
    assert healed["turn"] == open_turn.turn
    replay = second.wait_for(
        lambda x: x.get("event") == "turn_started" and x.get("job") == "alpha",
        60,
        what="alpha's replay",
    )
    assert (replay["trigger"], replay["prompt"]) == ("replay", open_turn.prompt)
    # The healing record follows the journal's last record; the next turn number the new
    # daemon journals (a skip for the beats missed while down, or the replay) is the
    # one the full fold says comes next.
    after = site.frames("alpha")
    healing = after[records["alpha"] + 1]
    assert (healing["type"], healing["turn"]) == ("turn_interrupted", open_turn.turn)
    numbered = [
        e["turn"] for s, e in sorted(after.items()) if s > records["alpha"] + 1 and "turn" in e
    ]
    assert numbered[0] == expected["alpha"].next_turn
    second.wait_event("turn_completed", 60, job="alpha")
    assert second.terminate() == 0
    assert [x["session"] for x in second.events("session_bound", job="alpha")] in (
        [],
        [expected["alpha"].session_id],
    )

    # Memory: each completed turn's reply shows every earlier completed turn.
    turns = [t for t in site.view("alpha").turns if t.status != "skipped"]
    completed = [t for t in turns if t.status == "completed"]
    for index, turn in enumerate(completed):
        seen = parse_reply(turn.reply)
        assert (seen.n, seen.first, seen.last) == (
            index + 1,
            shown(turns[0].prompt),
            shown(turn.prompt),
        )
    # The clean stop left checkpoints at the end of each journal, equal to a full fold.
    for name in JOBS:
        checkpoint = read_checkpoint(site.state_dir / "checkpoints", site.keyring, name)
        assert checkpoint.anchor.seq == len(site.frames(name))
    done = site.vigil("verify", "--config", str(site.config_path), "--json")
    report = json.loads(done.stdout)
    assert done.returncode == 0, done.stdout
    assert {c["name"]: c["status"] for c in report["checkpoints"]} == dict.fromkeys(JOBS, "matches")
