"""The runtime's side of routed requests, in process, on a real PostgreSQL with no
notifications at all (the fallback): the requester polls, the owner serves at its tick
through its supervisor's own door; a request nobody takes is refused naming the owner,
cancelled, and never served after; a stopping node stops waiting."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, cast

from daemon.cluster.db import Database
from daemon.cluster.leases import Leases
from daemon.cluster.requests import RoutedRequests
from daemon.journal.keyring import Keyring
from daemon.runtime.cluster.routing import RoutedControl, not_taken
from daemon.runtime.cluster.serving import RequestServer
from tests.cluster.helpers import TTL, ManualClock

WAIT = timedelta(seconds=1.5)


@dataclass
class Log:
    lines: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def info(self, event: str, **fields: Any) -> None:
        self.lines.append((event, fields))

    warning = exception = info


@dataclass
class Job:
    name: str
    retired: bool = False


@dataclass
class Heartbeat:
    name: str


@dataclass
class Runtime:
    clock: ManualClock
    jobs: dict[str, Job] = field(default_factory=dict)
    draining: bool = False

    @property
    def config(self) -> Any:
        return type("Config", (), {"heartbeats": [Heartbeat("inbox")]})()


@dataclass
class Supervisor:
    rt: Runtime
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    broken: bool = False

    def request_beat(self, name: str) -> tuple[bool, str]:
        self.calls.append(("beat", {"job": name}))
        return True, ""

    def operator_request(self, op: str, request: dict[str, Any]) -> dict[str, Any]:
        self.calls.append((op, request))
        if self.broken:
            raise RuntimeError("a bug")
        return {"ok": True, "request": "r-1"}


@dataclass
class Backend:
    leases: Leases


@dataclass
class Node:
    name: str
    rt: Runtime
    backend: Backend
    log: Log = field(default_factory=Log)


def _node(dsn: str, name: str, keyring: Keyring, clock: ManualClock) -> tuple[Any, ...]:
    rt = Runtime(clock)
    leases = Leases(Database(dsn), name, ttl=TTL, clock=clock)
    node = Node(name, rt, Backend(leases))
    sup = Supervisor(rt)
    requests = RoutedRequests(Database(dsn), keyring, name)
    server = RequestServer(cast(Any, sup), cast(Any, node), requests)
    control = RoutedControl(cast(Any, sup), cast(Any, node), requests, server, WAIT)
    return sup, node, server, control


def test_without_notifications_the_owner_serves_at_its_tick(pg_dsn: str, keyring: Keyring) -> None:
    clock = ManualClock()
    _, _, _, asker = _node(pg_dsn, "node-a", keyring, clock)
    owner_sup, owner, server, _ = _node(pg_dsn, "node-b", keyring, clock)
    owner.backend.leases.acquire("inbox")
    owner.rt.jobs["inbox"] = Job("inbox")
    assert not asker.here("inbox") and asker.here("no-such-job")

    async def run() -> tuple[Any, Any]:
        sent = asyncio.ensure_future(asker.operator_request("send", {"job": "inbox", "text": "hi"}))
        beat = asyncio.ensure_future(asker.request_beat("inbox"))
        await asyncio.sleep(0.3)
        assert server.serve() == 2  # the tick
        return await asyncio.wait_for(sent, 2), await asyncio.wait_for(beat, 2)

    sent, beat = asyncio.run(run())
    # A send's answer names the epoch it was accepted under (its follower's reference).
    assert sent == {"ok": True, "request": "r-1", "epoch": 1}
    assert beat == (True, "")
    assert sorted(owner_sup.calls) == [
        ("beat", {"job": "inbox"}),
        ("send", {"op": "send", "job": "inbox", "text": "hi"}),
    ]
    assert server.serve() == 0  # each ran once
    latencies = [f["latency_ms"] for e, f in asker.log.lines if e == "routed_request_answered"]
    assert len(latencies) == 2


def test_a_request_the_owner_fails_on_is_answered_refused(pg_dsn: str, keyring: Keyring) -> None:
    clock = ManualClock()
    _, _, _, asker = _node(pg_dsn, "node-a", keyring, clock)
    owner_sup, owner, server, _ = _node(pg_dsn, "node-b", keyring, clock)
    owner.backend.leases.acquire("inbox")
    owner.rt.jobs["inbox"] = Job("inbox")
    owner_sup.broken = True

    async def run() -> Any:
        asked = asyncio.ensure_future(asker.operator_request("resume", {"job": "inbox"}))
        await asyncio.sleep(0.2)
        assert server.serve() == 1
        return await asyncio.wait_for(asked, 2)

    answer = asyncio.run(run())
    assert answer == {"ok": False, "error": "node node-b failed to run it: RuntimeError('a bug')"}


def test_a_request_nobody_takes_is_refused_naming_the_owner_and_never_runs(
    pg_dsn: str, keyring: Keyring
) -> None:
    clock = ManualClock()
    _, _, _, asker = _node(pg_dsn, "node-a", keyring, clock)
    owner_sup, owner, server, _ = _node(pg_dsn, "node-b", keyring, clock)
    owner.backend.leases.acquire("inbox")
    owner.rt.jobs["inbox"] = Job("inbox")

    answer = asyncio.run(asker.operator_request("pause", {"job": "inbox"}))
    assert answer["ok"] is False
    assert "'inbox' is owned by node node-b, not node-a" in answer["error"]
    assert "nothing was run, nor will be" in answer["error"]
    assert server.serve() == 0  # cancelled: the owner, back, finds nothing to run
    assert owner_sup.calls == []


def test_a_stopping_node_stops_waiting_and_cancels(pg_dsn: str, keyring: Keyring) -> None:
    clock = ManualClock()
    _, _, _, asker = _node(pg_dsn, "node-a", keyring, clock)
    _, owner, server, _ = _node(pg_dsn, "node-b", keyring, clock)
    owner.backend.leases.acquire("inbox")
    owner.rt.jobs["inbox"] = Job("inbox")

    async def run() -> Any:
        beat = asyncio.ensure_future(asker.request_beat("inbox"))
        await asyncio.sleep(0.2)
        await asker.close()
        return await asyncio.wait_for(beat, 0.5)

    assert asyncio.run(run()) == (False, "the daemon is stopping; nothing was run")
    assert server.serve() == 0


def test_the_refusal_names_the_owner_and_the_command_to_run_there() -> None:
    wait = timedelta(seconds=7)
    text = not_taken("inbox", "queue", here="node-a", owner="node-b", ran_out_s=4.2, wait=wait)
    assert text.startswith("'inbox' is owned by node node-b, not node-a: node-b (its lease")
    assert "ran out 4s ago) did not take the request within 7s" in text
    assert "Run `vigil send inbox --next-beat` on node-b" in text
    live = not_taken("inbox", "beat", here="node-a", owner="node-b", ran_out_s=-3.0, wait=wait)
    assert "node-b did not take" in live and "Run `vigil beat inbox` on node-b" in live
    nobody = not_taken("inbox", "pause", here="node-a", owner=None, ran_out_s=0.0, wait=wait)
    assert "not held by any node right now" in nobody and "nothing was run, nor will be" in nobody
