"""PostgreSQL restarted under running nodes, mid-turn: they ride it out. A turn in
flight completes or fails with a clear reason, nothing a node showed is lost, and
every conversation's beats carry on afterwards, with its memory."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest

from daemon.events.heal import fold
from daemon.testing.harness import LoopbackModel as DevModel
from daemon.testing.postgres import PostgresServer
from daemon.testing.process import Daemon
from tests.cluster.checks import check_delivered_once, check_shown_were_journaled, check_turns_once
from tests.cluster.conftest import start_server
from tests.cluster.fleet import Fleet
from tests.cluster.test_nodes import is_delta_of, settled, wait_until
from tests.e2e.conftest import parse_reply, shown

# Why a turn may fail while the database is away; anything else is a bug.
DATABASE_REASONS = {"journal_write_failed", "connect_failed"}
_NAMES = itertools.count()


@pytest.fixture(scope="module")
def own_server() -> Iterator[PostgresServer]:
    """A server of this module's own: restarting it disturbs no other test."""
    server = start_server()
    yield server
    server.destroy()


@pytest.fixture
def fleet(own_server: PostgresServer, tmp_path: Any) -> Iterator[Fleet]:
    model = DevModel()
    made = Fleet(own_server.create_database(f"n{next(_NAMES)}"), model, lease="6s")
    try:
        yield made
    finally:
        made.close(keep=tmp_path)
        model.stop()


def completed_since(daemons: dict[str, Daemon], name: str, marks: dict[str, int]) -> int:
    return sum(
        1
        for node, d in daemons.items()
        for line in d.events("turn_completed", job=name)
        if d.lines.index(line) >= marks[node]
    )


@pytest.mark.timeout(150)
def test_nodes_ride_out_a_postgresql_restart_mid_turn(
    fleet: Fleet, own_server: PostgresServer
) -> None:
    names = [f"r{i}" for i in range(4)]
    jobs = [(n, f"{n} beat [slow:40]") for n in names]
    nodes = ["node-a", "node-b"]
    for node in nodes:
        fleet.write_config(node, jobs, every="2s")
    daemons = {node: fleet.start(node, ready=False) for node in nodes}
    for daemon in daemons.values():
        daemon.wait_ready()
    settled(fleet, names, nodes, 60)

    daemon = daemons["node-a"]
    daemon.wait_for(is_delta_of(set(names)), 30, start=daemon.count(), what="a delta")
    marks = {node: d.count() for node, d in daemons.items()}
    own_server.restart("fast")  # every session is cut, mid-turn
    # Each conversation completes turns afterwards, on whichever node owns it.
    for name in names:
        wait_until(
            f"two turns of {name} completed after the restart",
            lambda name=name: completed_since(daemons, name, marks) >= 2,
            90,
        )
    assert all(d.running for d in daemons.values())
    for d in daemons.values():
        assert d.terminate() == 0
    assert not fleet.password_shown()

    for name in names:
        events = fleet.events(name)
        check_turns_once(events, name)
        check_shown_were_journaled(events, name, fleet.all_runs())
        check_delivered_once(fleet, name, events)
        turns = [t for t in fold(e for _, e in events).turns if t.status != "skipped"]
        failed = [t for t in turns if t.status == "failed"]
        assert {t.reason for t in failed} <= DATABASE_REASONS, failed
        remembered = [t for t in turns if t.status == "completed"]
        for index, turn in enumerate(remembered):
            seen = parse_reply(turn.reply)
            assert (seen.n, seen.first) == (index + 1, shown(turns[0].prompt)), (name, turn)
