"""``vigil fork`` on a running cluster, end to end: a real node runs a job, the
operator forks it while the node runs, adds the new job with a SIGHUP, and the node
resumes the fork at its next beat with the source's memory up to the cut (the
loopback model's echo reply shows which user turns it was sent), numbered on from
the cut; the source carries on with its own."""

from __future__ import annotations

import json
import os
import signal

import pytest

from tests.cluster.checks import check_memory, check_turns_once
from tests.cluster.fleet import Fleet
from tests.cluster.test_nodes import wait_until
from tests.e2e.conftest import parse_reply, shown

TURN_WAIT_S = 60.0


def completed(fleet: Fleet, name: str) -> int:
    return sum(1 for t in fleet.view(name).turns if t.status == "completed")


@pytest.mark.timeout(180)
def test_a_fork_made_while_the_node_runs_is_resumed_there_with_the_sources_memory(
    fleet: Fleet,
) -> None:
    alpha = ("alpha", "alpha beat")
    fleet.write_config("node-a", [alpha], every="2s")
    node = fleet.start("node-a")
    wait_until("two completed turns of alpha", lambda: completed(fleet, "alpha") >= 2, TURN_WAIT_S)

    forked = fleet.vigil("node-a", "fork", "alpha", "bravo", "--json")
    assert forked.returncode == 0, forked.stderr
    assert fleet.password not in forked.stdout + forked.stderr
    made = json.loads(forked.stdout)
    cut = made["turn"]
    assert cut >= 2 and made["next_turn"] == cut + 1
    assert [e["type"] for _, e in fleet.events("bravo")] == ["forked"]

    mark = node.count()
    fleet.write_config("node-a", [alpha, ("bravo", "bravo beat")], every="2s")
    os.kill(node.pid, signal.SIGHUP)
    node.wait_for(lambda x: x.get("event") == "reloaded", 30, start=mark, what="the reload")
    ended = node.wait_for(
        lambda x: x.get("job") == "bravo" and x.get("event") in ("turn_completed", "turn_failed"),
        TURN_WAIT_S,
        start=mark,
        what="the first turn of bravo",
    )
    first = fleet.view("bravo").turns[0]
    assert (ended["turn"], first.turn, first.status, first.session_id) == (
        cut + 1,
        cut + 1,
        "completed",
        made["session_id"],
    )
    seen = parse_reply(first.reply)
    assert (seen.n, seen.first, seen.last) == (cut + 1, shown("alpha beat"), shown("bravo beat"))

    # The source went on in its own session throughout, its memory whole.
    wait_until(
        "a turn of alpha after the fork", lambda: completed(fleet, "alpha") > cut, TURN_WAIT_S
    )
    assert node.terminate() == 0
    for name in ("alpha", "bravo"):
        check_turns_once(fleet.events(name), name)
    assert check_memory(fleet.events("alpha"), "alpha") > cut
    assert fleet.view("alpha").session_id == made["source_session_id"]
    assert not node.events("resume_failed")
    assert fleet.password_shown() == []
