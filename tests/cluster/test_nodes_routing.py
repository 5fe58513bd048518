"""``vigil beat``, ``send``, ``send --next-beat``, ``pause`` and ``resume`` on a node that
does not own the conversation: routed to the owner through PostgreSQL, run there once,
answered as if local; refused (exit 10) naming the owner when no owner takes the
request in time, and then never run. Real nodes, the real CLI, the loopback model."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from daemon.cluster.placement import owner_of
from daemon.testing.harness import vigil_argv
from tests.cluster.fleet import Fleet
from tests.cluster.test_nodes import settled, wait_until
from tests.e2e.conftest import parse_reply

NODES = ["node-a", "node-b"]
SENT = "Remember the word pelican."


def placed_on(node: str) -> str:
    """A conversation name rendezvous hashing places on ``node`` of :data:`NODES`."""
    return next(n for n in (f"c{i}" for i in range(100)) if owner_of(n, NODES) == node)


def turns(fleet: Fleet, name: str, **fields: Any) -> list[dict[str, Any]]:
    """``turn_started`` events of ``name`` with these fields."""
    started = [e for _, e in fleet.events(name) if e.get("type") == "turn_started"]
    return [e for e in started if all(e.get(k) == v for k, v in fields.items())]


def completed(fleet: Fleet, name: str, turn: int) -> bool:
    return any(
        e.get("type") == "turn_completed" and e.get("turn") == turn for _, e in fleet.events(name)
    )


@pytest.mark.timeout(240)
def test_commands_on_a_node_that_does_not_own_the_conversation_run_once_on_its_owner(
    fleet: Fleet,
) -> None:
    name, other = placed_on("node-b"), placed_on("node-a")
    for node in NODES:
        fleet.write_config(node, [(name, "Check in."), (other, "Check in.")], every="1h")
    daemons = {node: fleet.start(node) for node in NODES}
    assert settled(fleet, [name, other], NODES, 90)[name] == "node-b"
    owner, asker = daemons["node-b"], daemons["node-a"]

    # beat: runs on the owner, once; the CLI on node-a says it started, as locally.
    beat = fleet.vigil("node-a", "beat", name)
    assert beat.returncode == 0, beat.stderr
    assert beat.stdout.strip() == f"beat of {name!r} started"
    served = owner.wait_event("routed_request_served", 10, job=name)
    assert (served["op"], served["requested_by"], served["ok"]) == ("beat", "node-a", True)
    answered = asker.wait_event("routed_request_answered", 10, job=name)
    (manual,) = wait_until("a manual beat", lambda: turns(fleet, name, trigger="manual"), 30)
    wait_until("the routed beat completed", lambda: completed(fleet, name, manual["turn"]), 60)

    # send: the reply streams to node-a's terminal while the owner runs the turn; a
    # second send meanwhile is refused as on the owner itself (exit 10, same words).
    slow = f"{SENT} [slow:300]"
    sender = subprocess.Popen(
        vigil_argv("send", name, slow, "--config", str(fleet.root / "node-a" / "vigil.toml")),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=fleet.env(),
    )
    try:
        assert sender.stdout is not None
        first = os.read(sender.stdout.fileno(), 4096)  # the first delta, as it is journaled
        assert first
        (running,) = turns(fleet, name, trigger="send")
        assert not completed(fleet, name, running["turn"])  # it streamed: still running
        with ThreadPoolExecutor(2) as pool:  # both while the turn runs
            asked = [pool.submit(fleet.vigil, n, "send", name, "Are you there?") for n in NODES]
            routed, local = (f.result() for f in asked)
        assert (routed.returncode, local.returncode) == (10, 10)
        assert "one turn at a time" in local.stderr
        assert routed.stderr == local.stderr
        rest, err = sender.communicate(timeout=60)
    finally:
        if sender.poll() is None:
            sender.kill()
            sender.wait()
    assert sender.returncode == 0, err
    (sent,) = turns(fleet, name, trigger="send")  # once: the refused ones ran nowhere
    assert sent["prompt"] == slow
    view = fleet.view(name)
    [turn] = [t for t in view.turns if t.turn == sent["turn"]]
    assert turn.status == "completed"
    assert (first + rest).decode().strip() == turn.reply
    assert parse_reply(turn.reply or "").last.startswith(SENT)

    # send --next-beat: queued on the owner; the next beat's model sees it.
    note = "Note from the operator: the release moved to Friday."
    queued = fleet.vigil("node-a", "send", name, note, "--next-beat")
    assert queued.returncode == 0, queued.stderr
    assert f"queued for the next beat of {name!r} (1 waiting)" in queued.stdout
    assert fleet.vigil("node-a", "beat", name).returncode == 0

    def with_queued() -> list[dict[str, Any]]:
        return [t for t in turns(fleet, name, trigger="manual") if t.get("queued")]

    (with_note,) = wait_until("the beat with the note", with_queued, 30)
    assert note in with_note["prompt"]
    wait_until("that beat completed", lambda: completed(fleet, name, with_note["turn"]), 60)
    assert any(note in t for t in fleet.model.stats()["last_seen"])

    # pause and resume: journaled on the owner.
    began = time.monotonic()
    paused = fleet.vigil("node-a", "pause", name)
    routed_s = time.monotonic() - began
    assert paused.returncode == 0, paused.stderr
    assert f"paused {name!r} until `vigil resume {name}`" in paused.stdout
    resumed = fleet.vigil("node-a", "resume", name)
    assert (resumed.returncode, resumed.stdout.strip()) == (0, f"resumed {name!r}")
    kinds = [e.get("type") for _, e in fleet.events(name)]
    assert (kinds.count("job_paused"), kinds.count("job_resumed")) == (1, 1)

    # Every routed request ran once, on the owner; none on the asking node.
    assert len(turns(fleet, name, trigger="manual")) == 2
    assert len(turns(fleet, name, trigger="send")) == 1
    ops = sorted(x["op"] for x in owner.events("routed_request_served", job=name))
    assert ops == ["beat", "beat", "pause", "queue", "resume", "send", "send"]
    assert asker.events("routed_request_served") == []
    began = time.monotonic()
    assert fleet.vigil("node-b", "pause", name).returncode == 0  # the same, locally
    local_s = time.monotonic() - began

    # The owner freezes: the request waits out the takeover and runs, once, on the node
    # that holds the lease when it claims (here the asking node itself).
    os.kill(owner.pid, signal.SIGSTOP)
    try:
        began = time.monotonic()
        moved = fleet.vigil("node-a", "beat", name)
        moved_s = time.monotonic() - began
    finally:
        os.kill(owner.pid, signal.SIGCONT)
    assert moved.returncode == 0, moved.stderr
    served = asker.wait_event("routed_request_served", 10, job=name)
    assert (served["op"], served["requested_by"]) == ("beat", "node-a")
    third = wait_until(
        "the third manual beat", lambda: turns(fleet, name, trigger="manual")[2:], 30
    )
    wait_until("it completed", lambda: completed(fleet, name, third[0]["turn"]), 60)
    assert len(turns(fleet, name, trigger="manual")) == 3
    assert len(owner.events("routed_request_served", job=name)) == len(ops)
    latencies = [x["latency_ms"] for x in asker.events("routed_request_answered")]
    assert answered["latency_ms"] == latencies[0]
    print(f"\nrouted requests answered in {latencies} ms (node-a's submit to answer read);")
    print(f"`vigil pause` routed {routed_s:.2f}s, local {local_s:.2f}s (CLI process included)")
    print(f"`vigil beat` across a takeover (lease 3 s): {moved_s:.2f}s")
    for daemon in daemons.values():
        assert daemon.terminate() == 0


@pytest.mark.timeout(180)
def test_a_request_whose_owner_is_stopped_is_refused_in_time_and_never_runs_later(
    fleet: Fleet,
) -> None:
    # Only node-b can run the job (its cwd exists when node-b starts, not when node-a
    # did), so with node-b stopped nobody takes the conversation over.
    name = "solo"
    cwd = fleet.root / "solo-cwd"
    for node in NODES:
        fleet.write_config(node, [(name, "Check in.")], every="1h", cwds={name: cwd})
    asker = fleet.start("node-a")
    cwd.mkdir()
    owner = fleet.start("node-b")
    owner.wait_event("turn_completed", 60, job=name)  # its first beat

    os.kill(owner.pid, signal.SIGSTOP)
    try:
        began = time.monotonic()
        refused = fleet.vigil("node-a", "beat", name)
        took = time.monotonic() - began
    finally:
        os.kill(owner.pid, signal.SIGCONT)
    assert refused.returncode == 10, refused.stderr
    assert f"{name!r} is owned by node node-b, not node-a" in refused.stderr
    assert "nothing was run" in refused.stderr
    assert 7 <= took < 20  # the route wait: lease 3 s + a renewal 1 s + 3 s
    assert asker.events("routed_request_answered") == []

    # node-b runs again: its ticks claim nothing, the request never runs.
    time.sleep(3)  # three ticks of node-b
    assert owner.events("routed_request_served") == []
    assert turns(fleet, name, trigger="manual") == []
    assert fleet.vigil("node-b", "status").returncode == 0  # alive, and it kept its lease
    assert asker.terminate() == 0
    assert owner.terminate() == 0
