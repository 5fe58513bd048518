"""A rolling change of the jobs, SIGHUP node by node: the fleet converges; and a node
that lacks a job's working directory never takes that job.

Two real ``vigil run`` nodes on one real PostgreSQL (the real SDK and CLI, the loopback
model) run two conversations. The operator adds a job and drops one, reloading one
node, then the other (as ``docs/cluster.md`` says to, rather than restarting a node
whose jobs differ from the live nodes'). While only the first node has the new job,
only it may run it; the dropped job's conversation stops on the node that no longer
has it and is run by the one that still does; once both are reloaded, the dropped job
runs nowhere, the new one somewhere, and no node refused anything.
"""

from __future__ import annotations

import json
import signal
import time

import pytest

from tests.cluster.fleet import LEASE_S, Fleet
from tests.cluster.test_nodes import owners, wait_until

BEFORE = [("inbox", "inbox beat"), ("digest", "digest beat")]
AFTER = [("inbox", "inbox beat"), ("report", "report beat")]


def completed(fleet: Fleet, name: str) -> int:
    return sum(1 for _, e in fleet.events(name) if e.get("type") == "turn_completed")


@pytest.mark.timeout(180)
def test_a_fleet_reloaded_node_by_node_converges(fleet: Fleet) -> None:
    for node in ("node-a", "node-b"):
        fleet.write_config(node, BEFORE, every="2s")
    nodes = {node: fleet.start(node) for node in ("node-a", "node-b")}
    wait_until(
        "inbox and digest owned, each with a completed turn",
        lambda: (
            owners(fleet).keys() == {"inbox", "digest"}
            and all(completed(fleet, n) >= 1 for n in ("inbox", "digest"))
        ),
        90,
    )

    # node-a first: it has `report` and no longer `digest`.
    fleet.write_config("node-a", AFTER, every="2s")
    mark = nodes["node-a"].count()
    fleet.stop(nodes["node-a"], signal.SIGHUP)
    nodes["node-a"].wait_event("reloaded", 30, start=mark)
    wait_until(
        "report runs on node-a, digest on node-b",
        lambda: (
            owners(fleet).get("report") == "node-a"
            and owners(fleet).get("digest") == "node-b"
            and completed(fleet, "report") >= 1
        ),
        60,
    )

    # Then node-b: the same jobs everywhere again.
    fleet.write_config("node-b", AFTER, every="2s")
    mark = nodes["node-b"].count()
    fleet.stop(nodes["node-b"], signal.SIGHUP)
    nodes["node-b"].wait_event("reloaded", 30, start=mark)
    wait_until("digest runs nowhere", lambda: "digest" not in owners(fleet), 30)
    digest_done = completed(fleet, "digest")
    now = {n: completed(fleet, n) for n in ("inbox", "report")}
    placed = wait_until(
        "inbox and report owned, completing turns after the reload",
        lambda: (
            (o := owners(fleet)).keys() == {"inbox", "report"}
            and all(completed(fleet, n) >= now[n] + 1 for n in now)
            and o
        ),
        60,
    )
    assert completed(fleet, "digest") == digest_done
    for daemon in nodes.values():
        assert daemon.terminate() == 0
    for daemon in nodes.values():
        refusals = [*daemon.events("reload_refused"), *daemon.events("job_refused")]
        assert refusals == [], refusals
        assert not daemon.events("ownership_lost")
    assert not fleet.password_shown()
    print(f"\nconverged: {placed}")


@pytest.mark.timeout(120)
def test_a_node_without_a_jobs_cwd_never_takes_it_and_says_so(fleet: Fleet) -> None:
    """``far`` runs in a directory node-b lacks (it is missing while node-b starts, as
    on a host where it was never made): node-b says so, and when node-a dies node-b
    takes over the other conversation but never ``far``."""
    far = fleet.root / "far"
    far.mkdir()
    jobs = [("inbox", "inbox beat"), ("far", "far beat")]
    for node in ("node-a", "node-b"):
        fleet.write_config(node, jobs, every="2s", cwds={"far": far})
    first = fleet.start("node-a")
    first.wait_event("turn_completed", 60, job="far")
    hidden = far.rename(fleet.root / "far-away")
    try:
        second = fleet.start("node-b")
    finally:
        hidden.rename(far)
    missing = second.wait_event("job_cwd_missing", 5, job="far")
    assert missing["cwd"] == str(far)
    status = fleet.vigil("node-b", "status", "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["cluster"]["without_cwd"] == ["far"]

    first.kill()
    wait_until("node-b took inbox over", lambda: owners(fleet).get("inbox") == "node-b", 30)
    second.wait_event("turn_completed", 30, job="inbox", start=second.count())
    time.sleep(2 * LEASE_S)  # long past far's lease: still nobody may take it
    assert "far" not in owners(fleet)
    assert not second.events("conversation_acquired", job="far")
    assert second.terminate() == 0
    assert not fleet.password_shown()
