"""Several real ``vigil run`` nodes on one real PostgreSQL, with the real SDK, the real
CLI and the loopback model: a node SIGKILLed mid-stream, a node frozen past its lease,
a node that may not join.

Each conversation is checked afterwards from what PostgreSQL holds (see
:mod:`tests.cluster.checks`): one start and one end per turn, never two turns at
once, the model's memory intact in every reply, every delta a node showed journaled,
no reply delivered twice.
"""

from __future__ import annotations

import json
import signal
import statistics
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from daemon.cluster.db import Database
from daemon.cluster.view import cluster_view
from daemon.journal.keyring import generate_key_file
from daemon.testing.harness import vigil_argv
from daemon.testing.process import Daemon, LogLine
from tests.cluster.checks import check_conversation
from tests.cluster.fleet import LEASE_S, Fleet


def owners(fleet: Fleet) -> dict[str, str]:
    """conversation -> node, for every lease still running."""
    db = Database(fleet.dsn)
    try:
        view = cluster_view(db)
    finally:
        db.close()
    now = datetime.now(UTC)
    return {lease.conversation: lease.node for lease in view.leases if lease.expires_at > now}


def wait_until(what: str, check: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        time.sleep(0.2)


def settled(fleet: Fleet, names: list[str], nodes: list[str], timeout: float) -> dict[str, str]:
    """Wait until every conversation is owned, every node owns one, each completed a turn."""

    def check() -> dict[str, str] | None:
        now = owners(fleet)
        spread = set(now.values()) == set(nodes) and set(now) == set(names)
        if spread and all(
            any(e.get("type") == "turn_completed" for _, e in fleet.events(n)) for n in names
        ):
            return now
        return None

    placed: dict[str, str] = wait_until("conversations spread over the nodes", check, timeout)
    return placed


def is_delta_of(jobs: set[str]) -> Any:
    return lambda x: x.get("event") == "delta" and x.get("job") in jobs


def taken_over(daemons: list[Daemon], name: str, source: str, timeout: float) -> LogLine:
    """The survivor's ``conversation_acquired`` of ``name`` taken from ``source``."""
    deadline = time.monotonic() + timeout
    while True:
        for daemon in daemons:
            for line in daemon.events("conversation_acquired", job=name):
                if line.get("taken_from") == source:
                    return line
        assert time.monotonic() < deadline, f"{name} not taken over from {source} in {timeout}s"
        time.sleep(0.1)


def arrival(daemons: list[Daemon], line: LogLine) -> float:
    """When the test read ``line`` (monotonic)."""
    for daemon in daemons:
        with daemon._cond:
            for seen, at in zip(daemon.lines, daemon.received, strict=True):
                if seen is line:
                    return at
    raise AssertionError(f"not a line of these daemons: {line}")


def first_delta_after(daemons: list[Daemon], name: str, since: float) -> float | None:
    """When a node first showed a delta of ``name`` after ``since`` (monotonic)."""
    times = []
    for daemon in daemons:
        with daemon._cond:
            pairs = list(zip(daemon.lines, daemon.received, strict=True))
        times += [
            t
            for line, t in pairs
            if t > since and line.get("event") == "delta" and line.get("job") == name
        ]
    return min(times) if times else None


# ---------------------------------------------------------------- (a) SIGKILL


@pytest.mark.timeout(240)  # about 100 s; more when the 2 cores are shared
def test_a_node_killed_mid_stream_its_conversations_carry_on_elsewhere(fleet: Fleet) -> None:
    names = [f"c{i:02d}" for i in range(12)]
    jobs = [(n, f"{n} beat [slow:25]") for n in names]
    nodes = ["node-a", "node-b", "node-c"]
    for node in nodes:
        fleet.write_config(node, jobs, every="3s")
    daemons = {node: fleet.start(node, ready=False) for node in nodes}
    for daemon in daemons.values():
        daemon.wait_ready()
    placed = settled(fleet, names, nodes, 60)

    victim = max(nodes, key=lambda n: sum(1 for o in placed.values() if o == n))
    line = daemons[victim].kill_on(
        is_delta_of({c for c, o in placed.items() if o == victim}), 30, what="a delta"
    )
    killer = daemons[victim]
    killed_at = killer.received[killer.lines.index(line)]  # the kill follows this line
    moved = sorted(c for c, o in owners_at_kill(fleet, placed).items() if o == victim)
    assert line["job"] in moved
    survivors = [d for n, d in daemons.items() if n != victim]
    acquired, takeovers = [], []
    for name in moved:
        taken = taken_over(survivors, name, victim, LEASE_S + 30)
        acquired.append(arrival(survivors, taken) - killed_at)
        first = wait_until(
            f"a delta of {name} on a survivor",
            lambda name=name: first_delta_after(survivors, name, killed_at),
            60,
        )
        takeovers.append(first - killed_at)
    for name in moved:  # and each ran a whole turn there
        wait_until(
            f"a completed turn of {name} on a survivor",
            lambda name=name: any(d.events("turn_completed", job=name) for d in survivors),
            60,
        )

    for daemon in survivors:
        assert daemon.terminate() == 0
    assert not fleet.password_shown()

    totals = [check_conversation(fleet, name) for name in names]
    assert sum(t[1] for t in totals) > 50
    healed = [c for c in moved if any(t.status == "interrupted" for t in fleet.view(c).turns)]
    assert line["job"] in healed  # the turn cut by the kill was healed and replayed
    print(
        f"\n{len(moved)} conversations moved off {victim} (lease {LEASE_S}s); kill -> "
        f"acquired elsewhere: median {statistics.median(acquired):.1f}s, max "
        f"{max(acquired):.1f}s; kill -> first delta there (a CLI started on a loaded "
        f"2-core machine): median {statistics.median(takeovers):.1f}s, max "
        f"{max(takeovers):.1f}s; {sum(t[0] for t in totals)} completed turns, "
        f"{sum(t[1] for t in totals)} shown deltas checked, {sum(t[2] for t in totals)} deliveries"
    )


def owners_at_kill(fleet: Fleet, placed: dict[str, str]) -> dict[str, str]:
    """Who held each conversation when the node died: the lease rows (expired or not)."""
    db = Database(fleet.dsn)
    try:
        view = cluster_view(db)
    finally:
        db.close()
    return {lease.conversation: lease.node for lease in view.leases} or placed


# ---------------------------------------------------------------- (b) SIGSTOP


@pytest.mark.timeout(240)  # about 80 s; more when the 2 cores are shared
def test_a_node_frozen_past_its_lease_is_fenced_when_it_wakes(fleet: Fleet) -> None:
    names = [f"s{i}" for i in range(6)]
    jobs = [(n, f"{n} beat [slow:25]") for n in names]
    nodes = ["node-a", "node-b"]
    for node in nodes:
        fleet.write_config(node, jobs, every="2s")
    daemons = {node: fleet.start(node, ready=False) for node in nodes}
    for daemon in daemons.values():
        daemon.wait_ready()
    placed = settled(fleet, names, nodes, 60)

    victim, survivor = "node-b", daemons["node-a"]
    frozen = daemons[victim]
    mine = {c for c, o in placed.items() if o == victim}
    frozen.wait_for(is_delta_of(mine), 30, start=frozen.count(), what="a delta")
    fleet.stop(frozen, signal.SIGSTOP)
    moved = sorted(c for c, o in owners_at_kill(fleet, placed).items() if o == victim)
    for name in moved:
        acquired = taken_over([survivor], name, victim, LEASE_S + 30)
        index = survivor.lines.index(acquired)
        survivor.wait_event("turn_completed", 60, job=name, start=index)
    woke = frozen.count()
    fleet.stop(frozen, signal.SIGCONT)
    for name in moved:
        frozen.wait_event("ownership_lost", 30, job=name, start=woke)
    # It rejoins: placement hands it its share again, between turns.
    frozen.wait_event("conversation_acquired", 60, start=woke)
    for daemon in daemons.values():
        assert daemon.terminate() == 0
    assert not fleet.password_shown()

    totals = [check_conversation(fleet, name) for name in names]
    assert sum(t[2] for t in totals) > 0
    lost = frozen.events("ownership_lost")
    print(
        f"\n{len(moved)} conversations taken from the frozen node; it found "
        f"{len(lost)} lost ({sorted({str(x.get('found_by')) for x in lost})}); "
        f"{sum(t[0] for t in totals)} completed turns, {sum(t[2] for t in totals)} deliveries"
    )


# ---------------------------------------------------------------- (c) refused


@pytest.mark.timeout(90)
def test_a_node_with_other_jobs_or_another_key_refuses_to_join_the_operator_reads(
    fleet: Fleet,
) -> None:
    jobs = [("inbox", "inbox beat"), ("digest", "digest beat")]
    fleet.write_config("node-a", jobs, every="5s")
    first = fleet.start("node-a")
    first.wait_event("conversation_acquired", 30)

    fleet.write_config("node-b", [("inbox", "another prompt"), ("extra", "x")], every="5s")
    other = fleet.start("node-b", ready=False)
    assert other.wait(60) == 2
    said = "\n".join(other.stderr)
    assert "node node-b refuses to join the cluster" in said, said
    assert "configured differently: inbox" in said and "only on node-b: extra" in said, said
    assert "only on node-a: digest" in said, said

    stranger_key = fleet.root / "other.key"
    generate_key_file(stranger_key)
    fleet.write_config("node-c", jobs, every="5s", key_path=stranger_key)
    stranger = fleet.start("node-c", ready=False)
    assert stranger.wait(60) == 3
    said = "\n".join(stranger.stderr)
    assert "node node-c refuses to join" in said and "same key file" in said, said

    # Neither joined: the first node still owns both conversations.
    assert set(owners(fleet).values()) == {"node-a"}

    # The operator's commands read the cluster from PostgreSQL.
    first.wait_event("turn_completed", 30, job="inbox")
    done = fleet.vigil("node-a", "status", "--json")
    assert done.returncode == 0, done.stderr
    cluster = json.loads(done.stdout)["cluster"]
    assert [n["node"] for n in cluster["nodes"] if n["alive"]] == ["node-a"]
    assert {c["conversation"]: c["owner"] for c in cluster["conversations"]} == {
        "digest": "node-a",
        "inbox": "node-a",
    }
    elsewhere = fleet.vigil("node-b", "status")  # no node runs there: the database's view
    assert elsewhere.returncode == 9, elsewhere.stderr
    assert "digest" in elsewhere.stdout and "owner node-a" in elsewhere.stdout
    history = fleet.vigil("node-a", "history", "inbox", "--json")
    assert history.returncode == 0, history.stderr
    turns = [t for t in json.loads(history.stdout) if t["status"] == "completed"]
    assert turns and turns[0]["reply"].startswith("seen 1 user turns")
    exported = fleet.vigil("node-a", "export", "inbox")
    assert exported.returncode == 0, exported.stderr
    records = [json.loads(line) for line in exported.stdout.splitlines()]
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
    assert records == [{"seq": s, **e} for s, e in fleet.events("inbox")[: len(records)]]
    tail = fleet.vigil("node-a", "tail", "inbox", "-n", "3", "--json")
    assert tail.returncode == 0, tail.stderr
    assert len(tail.stdout.splitlines()) == 3
    check_follow(fleet, first)
    unknown = fleet.vigil("node-a", "history", "nope")
    assert unknown.returncode == 2 and "inbox" in unknown.stderr

    assert first.terminate() == 0
    assert not fleet.password_shown()


def check_follow(fleet: Fleet, node: Daemon) -> None:
    """``vigil tail -f`` from another machine follows a conversation from PostgreSQL:
    every record appended after it started, in order, none missing, as stored."""
    config = str(fleet.root / "node-b" / "vigil.toml")  # no node runs there
    follower = Daemon(
        vigil_argv("tail", "digest", "-f", "-n", "1", "--json", "--config", config),
        fleet.env(),
        fleet.root,
        fleet.orphans,
    )
    try:
        first = follower.wait_for(lambda x: "seq" in x, 30, what="the last record")
        mark = node.count()
        node.wait_event("turn_completed", 60, job="digest", start=mark)
        ended = follower.wait_for(
            lambda x: x.get("type") == "turn_completed",
            30,
            start=follower.lines.index(first) + 1,
            what="a turn's end, followed",
        )
        shown_lines = follower.lines[: follower.lines.index(ended) + 1]
    finally:
        follower.close()
    assert not follower.stderr, follower.stderr
    stored = {seq: event for seq, event in fleet.events("digest")}
    seqs = [int(x["seq"]) for x in shown_lines]
    assert seqs == list(range(int(first["seq"]), seqs[-1] + 1))
    assert len(seqs) > 2  # at least the turn's start, a delta and its end
    assert [{k: v for k, v in x.items() if k != "seq"} for x in shown_lines] == [
        stored[seq] for seq in seqs
    ]
