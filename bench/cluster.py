"""A cluster of real nodes on one PostgreSQL: throughput, per-beat costs, takeover time.

Run: ``PYTHONPATH=. .venv/bin/python bench/cluster.py [--quick]``. Not part of the
test run; it prints numbers and asserts nothing about speed. It starts a throwaway
PostgreSQL 15 (:mod:`daemon.testing.postgres`, loopback, ``fsync=on``, with
``pg_stat_statements`` loaded), the loopback model, and real ``vigil run`` nodes
(:class:`tests.cluster.fleet.Fleet`: the real SDK and CLI, lease 3 s as the tests),
all on this machine. One run, in this order:

(c) **Beats per minute with one, two and three nodes.** ``--conversations`` jobs (24)
    that beat every ``--every`` (1 s: always due, so the CPU, not the offered rate,
    is the limit; each node's pool and turn limit are set to the number of jobs so
    they are not), each reply streamed with 10 ms between deltas (a CLI stays live
    between beats, as in a fleet that fits its pool). Node A runs alone, then B
    joins, then C; after each join the bench waits until placement spread the
    conversations over the live nodes, then measures a fixed window (``--window``;
    90 s, 45 s with ``--quick``): turns completed on any node per minute.
(b) **Statements and database CPU per beat**, over the same windows: deltas of
    ``pg_stat_database`` (``xact_commit``, ``tup_inserted``) and of
    ``pg_stat_statements`` (calls), and the CPU (utime + stime, exited children
    included) of the postmaster and every PostgreSQL process, divided by the turns
    completed. Also the CPU per beat of the daemons alone and of their CLI processes.
    Lease renewals and heartbeats are included: they are what a beat costs in a fleet.
(a) **Takeover time.** The three nodes are restarted with ``--takeover-conversations``
    of the jobs (12) beating every ``--takeover-every`` (3 s, as the end-to-end test:
    not saturated, so the numbers are the takeover's, not a CPU queue's). Again and
    again (``--kills``; 20, 6 with ``--quick``): pick the next node in turn, SIGKILL
    it the moment it logs a ``delta`` of one of its conversations (mid-stream), then
    time, for each conversation it held (its lease rows), kill ->
    ``conversation_acquired`` on a survivor and kill -> that conversation's first
    ``delta`` log line on a survivor (times are when the bench read the lines). The
    killed node is restarted at once so the fleet stays at three, and each kill waits
    until placement has spread the conversations over all three again. Median and
    p99, against the target p99 <= lease + 5 s.

On a 2-core machine three nodes, their CLIs, the model and PostgreSQL share the same
cores: more nodes show overhead, not scale. The bench says so, and extrapolates from
the per-beat CPU costs to nodes with their own cores.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg

from bench.fleet import cpu_ticks, load_average, log
from daemon.cluster.db import Database
from daemon.cluster.view import cluster_view
from daemon.durations import parse_duration
from daemon.testing.harness import LoopbackModel
from daemon.testing.postgres import PostgresServer
from daemon.testing.process import Daemon, HarnessError, LogLine
from daemon.testing.proctree import descendants
from tests.cluster.fleet import Fleet

CLK_TCK = os.sysconf("SC_CLK_TCK")
LEASE_S = 3.0
NODES = ("node-a", "node-b", "node-c")
SLOW_MS = 10  # between streamed deltas: a kill lands mid-stream


# ---------------------------------------------------------------- measuring


def tree_ticks(pid: int) -> int:
    """CPU ticks of ``pid`` and all its descendants, exited (reaped) ones included."""
    return sum(cpu_ticks(p) for p in [pid, *descendants(pid)])


def postmaster_pid(server: PostgresServer) -> int:
    return int((server.data / "postmaster.pid").read_text().split()[0])


@dataclass(frozen=True)
class Counters:
    at: float  # monotonic
    xacts: int
    inserted: int
    statements: int
    db_ticks: int
    daemon_ticks: int  # the node processes alone
    tree_ticks: int  # the node processes and their CLIs
    loadavg: str


def counters(server: PostgresServer, admin: psycopg.Connection, live: list[Daemon]) -> Counters:
    row = admin.execute(
        "SELECT xact_commit, tup_inserted FROM pg_stat_database WHERE datname = 'vigil'"
    ).fetchone()
    calls = admin.execute("SELECT coalesce(sum(calls), 0) FROM pg_stat_statements").fetchone()
    assert row is not None and calls is not None
    return Counters(
        at=time.monotonic(),
        xacts=int(row[0]),
        inserted=int(row[1]),
        statements=int(calls[0]),
        db_ticks=tree_ticks(postmaster_pid(server)),
        daemon_ticks=sum(cpu_ticks(d.pid, own=True) for d in live),
        tree_ticks=sum(tree_ticks(d.pid) for d in live),
        loadavg=load_average(),
    )


def completed_between(daemons: list[Daemon], start: float, end: float) -> int:
    n = 0
    for d in daemons:
        with d._cond:
            pairs = list(zip(d.lines, d.received, strict=True))
        n += sum(1 for x, t in pairs if start <= t < end and x.get("event") == "turn_completed")
    return n


@dataclass(frozen=True)
class Window:
    nodes: int
    seconds: float
    beats: int
    before: Counters
    after: Counters

    def per_beat(self, field: str) -> float:
        delta = getattr(self.after, field) - getattr(self.before, field)
        return float(delta) / max(self.beats, 1)

    def cpu_per_beat(self, field: str) -> float:
        return self.per_beat(field) / CLK_TCK

    @property
    def per_minute(self) -> float:
        return self.beats * 60 / self.seconds


def pct(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


# ---------------------------------------------------------------- the fleet


def owners(fleet: Fleet, *, expired: bool = False) -> dict[str, str]:
    db = Database(fleet.dsn)
    try:
        view = cluster_view(db)
    finally:
        db.close()
    now = datetime.now(UTC)
    return {
        lease.conversation: lease.node for lease in view.leases if expired or lease.expires_at > now
    }


def wait_until(what: str, check: Callable[[], object], timeout: float) -> object:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout}s: {what}")
        time.sleep(0.25)


def spread(fleet: Fleet, names: list[str], nodes: list[str], timeout: float) -> dict[str, str]:
    def check() -> dict[str, str] | None:
        now = owners(fleet)
        return now if set(now) == set(names) and set(now.values()) == set(nodes) else None

    placed: dict[str, str] = wait_until(f"conversations spread over {nodes}", check, timeout)  # type: ignore[assignment]
    return placed


def first_line_after(
    daemons: list[tuple[Daemon, int]],
    event: str,
    name: str,
    since: float,
    extra: Callable[[LogLine], bool] = lambda _: True,
) -> float | None:
    """When any of ``daemons`` (each read from a line index on) first logged ``event``
    of conversation ``name`` after ``since`` (monotonic)."""
    times = []
    for d, start in daemons:
        with d._cond:
            pairs = list(zip(d.lines[start:], d.received[start:], strict=True))
        times += [
            t for x, t in pairs
            if t > since and x.get("event") == event and x.get("job") == name and extra(x)
        ]  # fmt: skip
    return min(times) if times else None


def measure_window(
    server: PostgresServer, admin: psycopg.Connection, live: list[Daemon], seconds: float
) -> tuple[int, Counters, Counters]:
    before = counters(server, admin, live)
    time.sleep(seconds)
    time.sleep(1.0)  # PostgreSQL flushes its statistics about every second
    after = counters(server, admin, live)
    beats = completed_between(live, before.at, after.at - 1.0)
    return beats, before, after


def throughput(
    *,
    fleet: Fleet, server: PostgresServer, admin: psycopg.Connection, names: list[str],
    window: float, live: dict[str, Daemon],
) -> list[Window]:  # fmt: skip
    results = []
    for count in (1, 2, 3):
        node = NODES[count - 1]
        live[node] = fleet.start(node)
        spread(fleet, names, list(NODES[:count]), 180)
        time.sleep(3)  # the hand-overs' first turns
        log(f"(c) {count} node(s): measuring {window:g}s (load {load_average()})")
        beats, before, after = measure_window(server, admin, list(live.values()), window)
        result = Window(count, after.at - before.at - 1.0, beats, before, after)
        log(f"    {beats} beats, {result.per_minute:.1f}/min")
        results.append(result)
    return results


@dataclass(frozen=True)
class Kill:
    victim: str
    moved: int
    acquired: list[float]  # kill -> conversation_acquired, per moved conversation
    first_delta: list[float]  # kill -> first delta on the new node, per conversation


def wait_line(
    daemons: list[tuple[Daemon, int]],
    event: str,
    name: str,
    since: float,
    timeout: float,
    *,
    extra: Callable[[LogLine], bool] = lambda _: True,
) -> float:
    """Seconds from ``since`` to the first such line (see :func:`first_line_after`)."""
    deadline = time.monotonic() + timeout
    while (at := first_line_after(daemons, event, name, since, extra)) is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {event} of {name} within {timeout}s")
        time.sleep(0.1)
    return at - since


def kill_one(fleet: Fleet, live: dict[str, Daemon], victim: str, names: list[str]) -> Kill:
    """SIGKILL ``victim`` on a delta of one of its conversations; time the takeover."""
    daemon = live[victim]
    mine: set[str] = set()

    def held() -> set[str]:
        mine.clear()
        mine.update(c for c, o in owners(fleet).items() if o == victim)
        return mine

    wait_until(f"{victim} holds a conversation", held, 180)
    survivors = [(d, d.count()) for n, d in live.items() if n != victim]
    line = daemon.kill_on(
        lambda x: x.get("event") == "delta" and x.get("job") in mine, 60, what="a delta"
    )
    killed_at = daemon.received[daemon.lines.index(line)]
    held_at_kill = owners(fleet, expired=True).items()
    moved = sorted(c for c, o in held_at_kill if o == victim and c in names)
    acquired, first = [], []
    for name in moved:
        acquired.append(
            wait_line(
                survivors,
                "conversation_acquired",
                name,
                killed_at,
                LEASE_S + 120,
                extra=lambda x: x.get("taken_from") == victim,
            )
        )
        first.append(wait_line(survivors, "delta", name, killed_at, 180))
    return Kill(victim, len(moved), acquired, first)


def takeovers(fleet: Fleet, names: list[str], kills: int, live: dict[str, Daemon]) -> list[Kill]:
    results: list[Kill] = []
    for i in range(kills):
        victim = NODES[i % len(NODES)]
        spread(fleet, names, list(NODES), 180)  # a settled fleet of three before each kill
        kill = kill_one(fleet, live, victim, names)
        results.append(kill)
        log(
            f"(a) kill {i + 1}/{kills}: {victim}, {kill.moved} moved; first delta after "
            + ", ".join(f"{t:.1f}" for t in kill.first_delta)
            + f" s (load {load_average()})"
        )
        live[victim] = fleet.start(victim)  # the fleet stays at three
    return results


# ---------------------------------------------------------------- report


def report_windows(windows: list[Window], *, offered: float) -> None:
    print(
        f"\n(c) beats per minute against one PostgreSQL (all on this machine; "
        f"offered {offered:.0f})"
    )
    for w in windows:
        capped = "  (near the offered rate: not saturated)" if w.per_minute > 0.9 * offered else ""
        print(
            f"  {w.nodes} node(s): {w.per_minute:6.1f} beats/min ({w.beats} in {w.seconds:.0f}s)"
            f"  load {w.before.loadavg} -> {w.after.loadavg}{capped}"
        )
    print(
        f"  On {os.cpu_count()} cores the nodes, their CLIs, the model and PostgreSQL share "
        "the same CPUs: this shows the overhead of more nodes, not scale."
    )
    print("\n(b) costs per beat (completed turn), per window")
    print("  nodes  statements  xacts  rows-inserted  db-cpu-s  daemon-cpu-s  cli-cpu-s")
    for w in windows:
        cli = w.cpu_per_beat("tree_ticks") - w.cpu_per_beat("daemon_ticks")
        print(
            f"  {w.nodes:5d}  {w.per_beat('statements'):10.1f}  {w.per_beat('xacts'):5.1f}"
            f"  {w.per_beat('inserted'):13.1f}  {w.cpu_per_beat('db_ticks'):8.3f}"
            f"  {w.cpu_per_beat('daemon_ticks'):12.3f}  {cli:9.3f}"
        )
    beats = sum(w.beats for w in windows)

    def mean(field: str) -> float:
        total: int = sum(getattr(w.after, field) - getattr(w.before, field) for w in windows)
        return total / CLK_TCK / max(beats, 1)

    db, daemon, node = mean("db_ticks"), mean("daemon_ticks"), mean("tree_ticks")
    cli = node - daemon
    print(
        f"\n  Extrapolation (over all {beats} beats): a beat costs {daemon:.3f} CPU-s in the "
        f"daemon, {cli:.3f} in the CLI, {db:.3f} in PostgreSQL."
    )
    if node > 0:
        print(
            f"  A node with its own 2 cores sustains about {2 * 60 / node:.0f} beats/min "
            f"(CPU-bound: {node:.2f} CPU-s per beat); 4 cores about {4 * 60 / node:.0f}."
        )
        print(
            "  These beats resume a live CLI (every conversation fits its node's pool); a "
            "beat that starts a CLI costs about 1.25 CPU-s more (bench/fleet.py), so a "
            "2-core node that starts a CLI per beat sustains 30 to 60 beats/min."
        )
    if db > 0:
        print(
            f"  One PostgreSQL core absorbs about {60 / db:.0f} beats/min: about "
            f"{node / db / 2:.0f} such two-core nodes per database core (CPU only; disk, "
            "WAL and lock limits are not measured here)."
        )


def report_kills(kills: list[Kill]) -> None:
    first = [t for k in kills for t in k.first_delta]
    acquired = [t for k in kills for t in k.acquired]
    per_kill = [min(k.first_delta) for k in kills if k.first_delta]
    target = LEASE_S + 5
    print(f"\n(a) takeover over {len(kills)} SIGKILLs (lease {LEASE_S:g}s, 3 nodes)")
    if not first:
        print("  no conversation moved")
        return
    for label, xs in (
        ("kill -> acquired elsewhere", acquired),
        ("kill -> first delta there (per conversation)", first),
        ("kill -> first delta of any moved conversation (per kill)", per_kill),
    ):
        print(
            f"  {label}: median {statistics.median(xs):.1f}s, p99 {pct(xs, 99):.1f}s, "
            f"max {max(xs):.1f}s (n={len(xs)})"
        )
    verdict = "met" if pct(first, 99) <= target else "NOT met"
    print(f"  target p99 <= lease + 5 s = {target:g}s (per conversation): {verdict}")


# ---------------------------------------------------------------- main


def with_statement_counts(server: PostgresServer) -> str:
    """Load pg_stat_statements, create the database ``vigil``; its DSN."""
    server.psql("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
    server.restart()
    dsn = server.create_database("vigil")
    server.psql("CREATE EXTENSION pg_stat_statements", "vigil")
    return dsn


def restart_all(
    fleet: Fleet, live: dict[str, Daemon], jobs: list[tuple[str, str]], every: str
) -> None:
    """Stop every node (SIGTERM), give all the same jobs beating every ``every``, start."""
    log(f"(a) restarting the three nodes with every = {every}")
    for daemon in live.values():
        daemon.terminate()
    for node in NODES:
        fleet.write_config(node, jobs, every=every)
        live[node] = fleet.start(node, ready=False)
    for daemon in live.values():
        daemon.wait_ready()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="6 kills, 45 s windows (~6 min)")
    parser.add_argument("--kills", type=int, help="SIGKILLs to time (default 20; 6 quick)")
    parser.add_argument("--window", type=float, help="seconds per window (90; 45 quick)")
    parser.add_argument("--conversations", type=int, default=24, help="for (b) and (c)")
    parser.add_argument("--takeover-conversations", type=int, default=12, help="for (a)")
    parser.add_argument("--every", default="1s", help="beat interval for (b) and (c)")
    parser.add_argument("--takeover-every", default="3s", help="beat interval for (a)")
    args = parser.parse_args(argv)
    kills = args.kills or (6 if args.quick else 20)
    window = args.window or (45.0 if args.quick else 90.0)
    names = [f"c{i:02d}" for i in range(args.conversations)]
    started = time.monotonic()
    log(f"load {load_average()} on {os.cpu_count()} cores; starting PostgreSQL")
    server = PostgresServer.start(fsync=True)
    model: LoopbackModel | None = None
    fleet: Fleet | None = None
    try:
        dsn = with_statement_counts(server)
        model = LoopbackModel()
        fleet = Fleet(dsn, model, lease=f"{LEASE_S:g}s")
        jobs = [(n, f"{n} beat [slow:{SLOW_MS}]") for n in names]
        pool = len(names)  # neither the pool nor the turn limit caps a node: the CPU does
        for node in NODES:
            fleet.write_config(
                node, jobs, every=args.every, max_live_clients=pool, max_concurrent_turns=pool
            )
        live: dict[str, Daemon] = {}
        with psycopg.connect(dsn, autocommit=True) as admin:
            windows = throughput(
                fleet=fleet, server=server, admin=admin, names=names, window=window, live=live
            )
        report_windows(
            windows, offered=len(names) * 60 / parse_duration(args.every).total_seconds()
        )
        sys.stdout.flush()
        names = names[: args.takeover_conversations]
        restart_all(fleet, live, jobs[: len(names)], args.takeover_every)
        print(
            f"\n(a) {len(names)} conversations beating every {args.takeover_every} "
            f"(replies stream deltas {SLOW_MS} ms apart)"
        )
        kill_results = takeovers(fleet, names, kills, live)
        report_kills(kill_results)
        print(
            f"\nrun took {(time.monotonic() - started) / 60:.1f} min; load average at the "
            f"end {load_average()} ({os.cpu_count()} cores)"
        )
        return 0
    finally:
        if fleet is not None:
            for daemon in fleet.all_runs():
                if daemon.running:
                    os.kill(daemon.pid, signal.SIGTERM)
            for daemon in fleet.all_runs():
                with contextlib.suppress(HarnessError):
                    daemon.wait(30)
            fleet.close()
        if model is not None:
            model.stop()
        server.destroy()


if __name__ == "__main__":
    sys.exit(main())
