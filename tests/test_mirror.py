"""The derived mirror: live apply equals a rebuild from the journals, and agrees with
``heal.fold``; search, purge and replay, idempotency, permissions."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon import events as ev
from daemon.events import Event
from daemon.events.heal import fold
from daemon.journal.file import FsyncPolicy, Journal
from daemon.journal.keyring import Keyring
from daemon.journal.logstore import journal_path
from daemon.mirror.database import MirrorError
from daemon.mirror.db import Mirror
from daemon.mirror.rebuild import RebuildProgress, events_feed, rebuild
from daemon.mirror.workers import Job, RebuildWorkerError, WorkerPool
from daemon.ops.verify_mirror import check_index
from jobs.budget import local_day_bounds

AT = "2026-11-21T10:00:00.000Z"
WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "inbox"]


# ---------------------------------------------------------------- event streams


def turn_events(
    turn: int,
    *,
    prompt: str,
    deltas: list[str],
    tools: int = 0,
    result_text: str | None = None,
    cost_total: float | None = None,
    session: str = "s-1",
    end: str = "completed",
    deliveries: tuple[str, ...] | list[str] = (),
    at: str = AT,
    compactions: int = 0,
) -> list[Event]:
    """One turn as the daemon journals it; ``end`` "open" leaves it unfinished."""
    out = [ev.turn_started(turn, prompt, job="job", trigger="schedule", at=at)]
    for i in range(compactions):
        out.append(
            ev.compacted(
                turn,
                trigger="auto",
                pre_tokens=100_000 + i,
                post_tokens=2_000 + i,
                preserved=2,
                boundary_uuid=f"b-{turn}-{i}",
                at=at,
            )
        )
    out += [ev.delta(turn, d, at=at) for d in deltas]
    out.append(ev.assistant(turn, "".join(deltas), uuid=f"u-{turn}", model="m", at=at))
    for i in range(tools):
        out.append(ev.tool_use(turn, f"tool-{turn}-{i}", "Read", {"path": f"/f{i}"}, at=at))
        out.append(ev.tool_result(turn, f"tool-{turn}-{i}", [{"text": "x"}], is_error=i % 2 == 1))
    if end == "open":
        return out
    if cost_total is not None or result_text is not None:
        out.append(
            ev.result(
                turn,
                session_id=session,
                is_error=end == "failed",
                subtype="success",
                text=result_text,
                session_cost_usd=cost_total,
                usage={"input_tokens": 100 + turn, "output_tokens": 7},
                duration_ms=5,
                num_turns=1,
                context_tokens=90 + turn if turn % 2 else None,
                at=at,
            )
        )
    if end in ("completed", "quiet"):
        out.append(ev.turn_completed(turn, quiet=end == "quiet", at=at))
    elif end == "failed":
        out.append(ev.turn_failed(turn, "model_error", "HTTP 500", at=at))
    else:
        out.append(ev.turn_interrupted(turn, "daemon_stopped_mid_turn", at=at))
    for i, sink in enumerate(deliveries):
        key = f"{turn}/{sink}"
        out.append(ev.delivery_started(turn, key, sink, 1, at=at))
        if i % 3 == 0:
            out.append(ev.delivery_done(turn, key, sink, 1, at=at))
        elif i % 3 == 1:
            out.append(ev.delivery_failed(turn, key, sink, 1, error="boom", retry_in_s=5, at=at))
    return out


@st.composite
def conversation_stream(draw: st.DrawFn, *, junk: bool) -> list[Event]:
    """A well-formed conversation (what the daemon writes); ``junk`` adds records a
    robust reader must tolerate: unknown types, events of turns never started,
    several results in a turn, a turn superseded by the next one."""
    events: list[Event] = [ev.session_bound("s-1", "/srv/a", mode="new", at=AT)]
    turn = 0
    forked_at = draw(st.one_of(st.none(), st.integers(1, 4)))
    if forked_at is not None:  # a fork (`vigil fork`): numbered on from the source's turn
        events.insert(0, fork_record("origin", forked_at))
        turn = forked_at
    total = 0.0
    n_turns = draw(st.integers(0, 6))
    for i in range(n_turns):
        turn += 1
        day = f"2026-11-{20 + draw(st.integers(0, 1))}T10:00:0{i % 10}.000Z"
        if draw(st.integers(0, 4)) == 0:
            count = draw(st.one_of(st.none(), st.integers(1, 9)))
            extra = {} if count is None else {"count": count}
            events.append(ev.beat_skipped(turn, "busy", "", at=day, **extra))
            continue
        last = i == n_turns - 1
        ends = ["completed", "quiet", "failed", "interrupted"] + (["open"] if last else [])
        total = round(total + draw(st.floats(0, 0.5)), 6)
        events += turn_events(
            turn,
            prompt=" ".join(draw(st.lists(st.sampled_from(WORDS), min_size=1, max_size=4))),
            deltas=draw(st.lists(st.sampled_from([w + " " for w in WORDS]), max_size=5)),
            tools=draw(st.integers(0, 2)),
            result_text=draw(st.one_of(st.none(), st.just(""), st.sampled_from(WORDS))),
            cost_total=total if draw(st.booleans()) else None,
            end=draw(st.sampled_from(ends)),
            deliveries=draw(st.lists(st.sampled_from(["mail", "hook"]), max_size=2, unique=True)),
            at=day,
        )
        if junk and draw(st.integers(0, 3)) == 0:
            events += draw(st.sampled_from(JUNK))(turn)
    return events


def fork_record(source: str, source_turn: int, session: str = "s-1") -> Event:
    return ev.forked(
        source=source,
        source_session_id="s-0",
        source_turn=source_turn,
        source_resume_at="u-0",
        session_id=session,
        resume_at="u-fork",
        cwd="/srv/a",
        at=AT,
    )


JUNK: list[Any] = [
    lambda t: [{"ev": 1, "type": "from_the_future", "at": AT, "turn": t, "x": [1]}],
    lambda t: [ev.delta(t + 50, "orphan", at=AT), ev.turn_completed(t + 50, at=AT)],
    lambda t: [ev.tool_result(t, "never-called", "?", is_error=False, at=AT)],
    lambda t: [
        ev.result(
            t,
            session_id="s-2",
            is_error=False,
            subtype="success",
            text="second result",
            session_cost_usd=0.25,
            usage={"output_tokens": 1},
            duration_ms=1,
            num_turns=1,
            at=AT,
        )
    ],
    lambda t: [ev.turn_started(t + 20, "superseded", job="j", trigger="manual", at=AT)],
    lambda t: [ev.delivery_unknown(t, f"{t}/mail", "mail", 2, reason="died", at=AT)],
]


def interleave(rng: random.Random, streams: dict[str, list[Event]]) -> list[tuple[str, int, Event]]:
    """The streams' events, each conversation in order, conversations shuffled together."""
    cursors = {name: 0 for name in streams}
    out: list[tuple[str, int, Event]] = []
    while cursors:
        name = rng.choice(sorted(cursors))
        i = cursors[name]
        out.append((name, i + 1, streams[name][i]))
        if i + 1 == len(streams[name]):
            del cursors[name]
        else:
            cursors[name] = i + 1
    return out


def write_journals(directory: Path, keyring: Keyring, streams: dict[str, list[Event]]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, events in streams.items():
        journal = Journal.open(
            journal_path(directory, name), name, keyring, fsync=FsyncPolicy.NEVER
        )
        for event in events:
            journal.append(event)
        journal.close()


@contextmanager
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as d:
        yield Path(d)


KEYRING = Keyring.generate()


def apply_live(path: Path, order: list[tuple[str, int, Event]], rng: random.Random) -> Mirror:
    """Apply as the daemon would, with flushes, duplicates and restarts at random."""
    mirror = Mirror.open(path, flush_every=rng.randint(1, 40), flush_interval=3600)
    for name, seq, event in order:
        mirror.apply(name, seq, event)
        roll = rng.random()
        if roll < 0.05:
            mirror.apply(name, seq, event)  # a listener called twice
        elif roll < 0.08:
            mirror.close()  # a restart: the cache is gone, context comes from the rows
            mirror = Mirror.open(path, flush_every=rng.randint(1, 40), flush_interval=3600)
    mirror.flush()
    return mirror


# ---------------------------------------------------------------- live == rebuild


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    streams=st.dictionaries(
        st.sampled_from(["inbox", "digest", "ops"]),
        conversation_stream(junk=True),
        min_size=1,
        max_size=3,
    ),
    seed=st.integers(0, 2**32),
)
def test_live_apply_equals_rebuild_from_the_journals(
    streams: dict[str, list[Event]], seed: int
) -> None:
    rng = random.Random(seed)
    with scratch() as d:
        live = apply_live(d / "live.sqlite3", interleave(rng, streams), rng)
        write_journals(d / "conversations", KEYRING, streams)
        fresh = Mirror.open(d / "fresh.sqlite3")
        stats = rebuild(fresh, d / "conversations", KEYRING)
        assert stats.errors == []
        assert stats.records == sum(len(s) for s in streams.values())
        assert live.dump() == fresh.dump()
        assert live.gaps == 0
        for word in WORDS:
            assert live.search(word, limit=100) == fresh.search(word, limit=100)
        live.close()
        fresh.close()
        assert check_index(d / "live.sqlite3") is None
        assert check_index(d / "fresh.sqlite3") is None


@settings(max_examples=60, deadline=None)
@given(events=conversation_stream(junk=False))
def test_turns_agree_with_heal_fold(events: list[Event]) -> None:
    mirror = Mirror.open(":memory:")
    for seq, event in enumerate(events, start=1):
        mirror.apply("c", seq, event)
    mirror.flush()
    rows = mirror.db.execute("SELECT * FROM turns ORDER BY turn").fetchall()
    view = fold(events, open_turn_status="running")
    assert [r["turn"] for r in rows] == [t.turn for t in view.turns]
    for r, t in zip(rows, view.turns, strict=True):
        assert (r["status"], r["prompt"], r["reply"]) == (t.status, t.prompt, t.reply)
        assert (r["started_at"], r["ended_at"]) == (t.started_at, t.ended_at)
        assert (r["reason"], r["detail"], r["missed"]) == (t.reason, t.detail, t.missed)
        assert (r["cost_usd"], r["session_id"]) == (t.cost_usd, t.session_id)
        assert r["tool_calls"] == len(t.tools)
        got = mirror.db.execute(
            "SELECT sink, status, attempts, error FROM deliveries "
            "WHERE turn = ? ORDER BY first_seq",
            (r["turn"],),
        ).fetchall()
        assert [tuple(g) for g in got] == [
            (d.sink, d.status, d.attempts, d.error) for d in t.deliveries
        ]


def test_an_unfinished_turn_is_running_until_the_journal_says_interrupted() -> None:
    events = turn_events(1, prompt="p", deltas=["half ", "a reply"], end="open")
    mirror = Mirror.open(":memory:")
    for seq, event in enumerate(events, start=1):
        mirror.apply("c", seq, event)
    mirror.flush()
    row = mirror.db.execute("SELECT status, reply FROM turns").fetchone()
    assert tuple(row) == ("running", "half a reply")
    mirror.apply("c", len(events) + 1, ev.turn_interrupted(1, "daemon_stopped_mid_turn"))
    mirror.flush()
    row = mirror.db.execute("SELECT status, reason FROM turns").fetchone()
    assert tuple(row) == ("interrupted", "daemon_stopped_mid_turn")


def test_cost_is_the_step_of_each_sessions_running_total() -> None:
    events = [
        *turn_events(1, prompt="a", deltas=[], result_text="r", cost_total=0.10, session="s-1"),
        *turn_events(2, prompt="b", deltas=[], result_text="r", cost_total=0.25, session="s-1"),
        *turn_events(3, prompt="c", deltas=[], result_text="r", cost_total=0.05, session="s-2"),
    ]
    mirror = Mirror.open(":memory:")
    for seq, event in enumerate(events, start=1):
        mirror.apply("c", seq, event)
    mirror.flush()
    rows = mirror.db.execute("SELECT cost_usd, input_tokens FROM turns ORDER BY turn").fetchall()
    assert [tuple(r) for r in rows] == [(0.1, 101), (0.15, 102), (0.05, 103)]
    (summary,) = mirror.conversations(lambda _name: local_day_bounds(date(2026, 11, 21), UTC))
    assert summary.spend_today_usd == 0.3
    next_day = mirror.conversations(lambda _name: local_day_bounds(date(2026, 11, 22), UTC))
    assert next_day[0].spend_today_usd == 0
    # "today" is the job's own day: at 10:00 UTC on the 21st it is already midnight
    # of the 22nd on Kiritimati (UTC+14).
    kiritimati = ZoneInfo("Pacific/Kiritimati")
    (there,) = mirror.conversations(lambda _n: local_day_bounds(date(2026, 11, 22), kiritimati))
    assert there.spend_today_usd == 0.3
    (before,) = mirror.conversations(lambda _n: local_day_bounds(date(2026, 11, 21), kiritimati))
    assert before.spend_today_usd == 0


# ---------------------------------------------------------------- idempotency, purge, replay


def sample_streams() -> dict[str, list[Event]]:
    return {
        "inbox": [
            ev.session_bound("s-1", "/srv/inbox", mode="new", at=AT),
            *turn_events(1, prompt="triage the inbox", deltas=["Filed ", "three mails"]),
            *turn_events(2, prompt="anything urgent?", deltas=["The zeppelin ", "has landed"]),
            ev.beat_skipped(3, "busy", at=AT),
        ],
        "digest": [
            *turn_events(1, prompt="write the digest", deltas=["Quiet day"], tools=2),
            *turn_events(2, prompt="and tomorrow?", deltas=["More ", "of the same"], end="open"),
        ],
    }


def test_apply_is_idempotent_per_conversation_and_sequence() -> None:
    streams = sample_streams()
    once, twice = Mirror.open(":memory:"), Mirror.open(":memory:")
    for name, events in streams.items():
        for seq, event in enumerate(events, start=1):
            once.apply(name, seq, event)
            twice.apply(name, seq, event)
            twice.apply(name, seq, event)
            if seq > 2:
                twice.apply(name, seq - 2, events[seq - 3])  # an old record again
    once.flush()
    twice.flush()
    assert once.dump() == twice.dump()
    assert twice.gaps == 0


def test_a_gap_is_counted_and_applied() -> None:
    mirror = Mirror.open(":memory:")
    events = sample_streams()["inbox"]
    mirror.apply("inbox", 1, events[0])
    mirror.apply("inbox", 3, events[2])
    assert mirror.gaps == 1


def test_purge_one_conversation_then_replay_restores_it(tmp_path: Path) -> None:
    streams = sample_streams()
    write_journals(tmp_path / "conversations", KEYRING, streams)
    mirror = Mirror.open(tmp_path / "m.sqlite3")
    rebuild(mirror, tmp_path / "conversations", KEYRING)
    before = mirror.dump()
    mirror.purge("inbox")
    left = mirror.dump()
    assert {r.key[0] for r in left} == {"digest"}
    assert [r for r in before if r.key[0] == "digest"] == left
    assert mirror.search("zeppelin") == []
    stats = rebuild(mirror, tmp_path / "conversations", KEYRING, ["inbox"])
    assert (stats.records, stats.conversations) == (len(streams["inbox"]), 1)
    assert mirror.dump() == before
    assert [h.turn for h in mirror.search("zeppelin")] == [2]


def test_purge_all_and_a_conversation_whose_journal_is_gone(tmp_path: Path) -> None:
    streams = sample_streams()
    mirror = Mirror.open(tmp_path / "m.sqlite3")
    for name, events in streams.items():
        mirror.replay(name, events_feed(enumerate(events, start=1)))
    del streams["digest"]  # its journal was removed
    write_journals(tmp_path / "conversations", KEYRING, streams)
    rebuild(mirror, tmp_path / "conversations", KEYRING)
    assert {r.key[0] for r in mirror.dump()} == {"inbox"}
    mirror.purge(None)
    assert mirror.dump() == []


def test_replay_rolls_back_when_the_feed_fails() -> None:
    mirror = Mirror.open(":memory:")
    events = sample_streams()["inbox"]
    mirror.replay("inbox", events_feed(enumerate(events, start=1)))
    before = mirror.dump()

    def broken(sink: Any) -> None:
        sink(1, events[0])
        raise OSError("disk went away")

    with pytest.raises(OSError, match="disk went away"):
        mirror.replay("inbox", broken)
    assert mirror.dump() == before


# ---------------------------------------------------------------- search


def test_search_finds_a_word_with_conversation_turn_and_snippet() -> None:
    mirror = Mirror.open(":memory:")
    for name, events in sample_streams().items():
        mirror.replay(name, events_feed(enumerate(events, start=1)))
    (hit,) = mirror.search("zeppelin")
    assert (hit.conversation, hit.turn, hit.status) == ("inbox", 2, "completed")
    assert hit.snippet == "The [zeppelin] has landed"
    (hit,) = mirror.search("TRIAGE", mark=("<", ">"))
    assert (hit.conversation, hit.turn, hit.snippet) == ("inbox", 1, "<triage> the inbox")
    assert [(h.conversation, h.turn) for h in mirror.search("same")] == [("digest", 2)]
    assert mirror.search("zeppelin inbox") == []  # every word must occur in one turn
    assert mirror.search('"quoted" AND (odd) -syntax*') == []  # words, never FTS syntax
    assert len(mirror.search("the", limit=1)) == 1


def test_the_index_follows_a_reply_that_changes() -> None:
    mirror = Mirror.open(":memory:", flush_every=1)
    events = turn_events(1, prompt="p", deltas=["provisional words"], result_text="final answer")
    for seq, event in enumerate(events, start=1):
        mirror.apply("c", seq, event)
        mirror.flush()
        if event["type"] == "delta":
            assert [h.turn for h in mirror.search("provisional")] == [1]
    assert mirror.search("provisional") == []
    assert [h.snippet for h in mirror.search("answer")] == ["final [answer]"]


# ---------------------------------------------------------------- the file


def test_the_mirror_file_is_owner_only_and_in_wal_mode(tmp_path: Path) -> None:
    os.umask(0o022)
    path = tmp_path / "run" / "mirror.sqlite3"
    mirror = Mirror.open(path)
    mirror.apply("c", 1, ev.session_bound("s", "/", mode="new"))
    mirror.flush()
    assert mirror.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    for p in (path, path.with_name(path.name + "-wal")):
        assert stat.S_IMODE(p.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    mirror.close()


def test_a_mirror_from_another_schema_is_rebuilt_not_migrated(tmp_path: Path) -> None:
    path = tmp_path / "m.sqlite3"
    mirror = Mirror.open(path)
    mirror.replay("c", events_feed(enumerate(sample_streams()["inbox"], start=1)))
    mirror.db.execute("UPDATE meta SET value = '0' WHERE key = 'schema'")
    mirror.close()
    with pytest.raises(MirrorError, match="schema 0"):
        Mirror.open(path, readonly=True)
    assert Mirror.open(path).dump() == []
    with pytest.raises(MirrorError, match="does not exist"):
        Mirror.open(tmp_path / "absent.sqlite3", readonly=True)


def test_a_busy_database_postpones_the_flush_and_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "m.sqlite3"
    mirror = Mirror.open(path, flush_every=10_000, flush_interval=3600)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # a `vigil rebuild` holding the write lock
    events = sample_streams()["inbox"]
    for seq, event in enumerate(events, start=1):
        mirror.apply("inbox", seq, event)
    assert mirror.flush() is False
    assert mirror.error is None
    other.execute("COMMIT")
    assert mirror.flush() is True
    expected = Mirror.open(":memory:")
    expected.replay("inbox", events_feed(enumerate(events, start=1)))
    assert mirror.dump() == expected.dump()


def test_summaries_per_conversation() -> None:
    mirror = Mirror.open(":memory:")
    for name, events in sample_streams().items():
        mirror.replay(name, events_feed(enumerate(events, start=1)))
    rows = {s.name: s for s in mirror.conversations()}
    assert (rows["inbox"].turns, rows["inbox"].last_status) == (3, "completed")
    assert rows["inbox"].session_id == "s-1"
    assert (rows["digest"].turns, rows["digest"].last_status) == (2, "running")
    assert rows["digest"].records == len(sample_streams()["digest"])


def test_a_fork_says_where_it_came_from_live_after_a_restart_and_rebuilt(
    tmp_path: Path,
) -> None:
    events = [fork_record("inbox", 2, session="s-9"), *turn_events(3, prompt="p", deltas=["x"])]
    live = Mirror.open(tmp_path / "live.sqlite3")
    live.apply("branch", 1, events[0])
    live.close()  # a restart: the fork's origin comes back from its row
    live = Mirror.open(tmp_path / "live.sqlite3")
    for seq, event in enumerate(events[1:], start=2):
        live.apply("branch", seq, event)
    live.flush()
    [row] = live.conversations()
    assert (row.name, row.forked_from, row.forked_turn, row.session_id) == (
        "branch",
        "inbox",
        2,
        "s-9",
    )
    assert (row.turns, row.origin) == (1, "inbox@2")
    assert row.as_json()["forked_from"] == "inbox" and row.as_json()["forked_turn"] == 2
    fresh = Mirror.open(":memory:")
    fresh.replay("branch", events_feed(enumerate(events, start=1)))
    assert live.dump() == fresh.dump()
    [forked_row] = [r for r in fresh.dump() if r.table == "conversations"]
    assert forked_row.values[5:8] == ("inbox", 2, "s-0")


def test_a_restart_mid_turn_keeps_the_open_turn_context(tmp_path: Path) -> None:
    """After a restart the open turn comes back from its row: a turn started before
    it ended marks it interrupted, as a rebuild does."""
    events = [
        *turn_events(1, prompt="first", deltas=["a "], cost_total=0.5, end="open"),
        *turn_events(2, prompt="second", deltas=["b"], result_text="done", cost_total=0.75),
    ]
    cut = len(turn_events(1, prompt="first", deltas=["a "], end="open"))
    path = tmp_path / "m.sqlite3"
    mirror = Mirror.open(path)
    for seq, event in enumerate(events[:cut], start=1):
        mirror.apply("c", seq, event)
    mirror.close()
    mirror = Mirror.open(path)
    for seq, event in enumerate(events[cut:], start=cut + 1):
        mirror.apply("c", seq, event)
    mirror.flush()
    expected = Mirror.open(":memory:")
    expected.replay("c", events_feed(enumerate(events, start=1)))
    assert mirror.dump() == expected.dump()
    statuses = mirror.db.execute("SELECT status FROM turns ORDER BY turn").fetchall()
    assert [s[0] for s in statuses] == ["interrupted", "completed"]


def rich_streams(seed: int, conversations: int) -> dict[str, list[Event]]:
    """Conversations with every kind of turn, deliveries, skips and junk records."""
    rng = random.Random(seed)
    streams: dict[str, list[Event]] = {}
    for i in range(conversations):
        events = [ev.session_bound(f"s-{i}", "/srv", mode="new", at=AT)]
        total = 0.0
        for t in range(1, rng.randint(2, 9)):
            if rng.random() < 0.15:
                events.append(ev.beat_skipped(t, "busy", "", at=AT, count=rng.randint(1, 3)))
                continue
            total = round(total + rng.uniform(0, 0.3), 6)
            events += turn_events(
                t,
                prompt=" ".join(rng.sample(WORDS, 2)),
                deltas=[w + " " for w in rng.sample(WORDS, rng.randint(0, 4))],
                tools=rng.randint(0, 2),
                result_text=rng.choice([None, "", rng.choice(WORDS)]),
                cost_total=total if rng.random() < 0.8 else None,
                end=rng.choice(["completed", "quiet", "failed", "interrupted"]),
                deliveries=rng.sample(["mail", "hook"], rng.randint(0, 2)),
                compactions=rng.choice([0, 0, 0, 1, 2]),
            )
            if rng.random() < 0.3:
                events += rng.choice(JUNK)(t)
        if rng.random() < 0.3:
            events += turn_events(99, prompt="still going", deltas=["half "], end="open")
        streams[f"job-{i:02d}"] = events
    streams["empty"] = []
    return streams


def test_a_parallel_full_rebuild_equals_the_incremental_fold_row_by_row(tmp_path: Path) -> None:
    """The bulk rebuild (in worker processes and in this one) writes exactly the rows
    and full-text index the incremental path writes: the daemon applying event by
    event (with flushes and restarts) and ``vigil rebuild NAME`` per conversation."""
    streams = rich_streams(11, 12)
    write_journals(tmp_path / "conversations", KEYRING, streams)
    rng = random.Random(5)
    order = interleave(rng, {name: events for name, events in streams.items() if events})
    live = apply_live(tmp_path / "live.sqlite3", order, rng)
    each = Mirror.open(tmp_path / "each.sqlite3")
    stats = rebuild(each, tmp_path / "conversations", KEYRING, sorted(streams))
    assert (stats.conversations, stats.errors) == (len(streams), [])
    serial, parallel = Mirror.open(tmp_path / "a.sqlite3"), Mirror.open(tmp_path / "b.sqlite3")
    one = rebuild(serial, tmp_path / "conversations", KEYRING)
    many = rebuild(parallel, tmp_path / "conversations", KEYRING, workers=2)
    total = sum(len(s) for s in streams.values())
    assert (one.records, one.conversations, one.errors) == (total, len(streams), [])
    assert (many.records, many.conversations, many.errors) == (total, len(streams), [])
    expected = live.dump()
    assert len(expected) > 100
    assert each.dump() == expected
    assert serial.dump() == expected
    assert parallel.dump() == expected
    for word in [*WORDS, "second result", "superseded", "orphan", "still"]:
        hits = live.search(word, limit=500)
        assert each.search(word, limit=500) == hits
        assert serial.search(word, limit=500) == hits
        assert parallel.search(word, limit=500) == hits
    assert len(live.search("alpha", limit=500)) > 5
    for m in (live, each, serial, parallel):
        m.close()
    for name in ("live", "each", "a", "b"):
        path = tmp_path / f"{name}.sqlite3"
        assert check_index(path) is None
        db = sqlite3.connect(path)
        indexes = db.execute("SELECT name FROM sqlite_master WHERE type = 'index'").fetchall()
        assert ("tool_calls_by_id",) in indexes
        db.close()


def test_a_journal_that_cannot_be_read_is_left_out_with_its_own_error(tmp_path: Path) -> None:
    streams = rich_streams(3, 6)
    write_journals(tmp_path / "conversations", KEYRING, streams)
    path = journal_path(tmp_path / "conversations", "job-03")
    lines = path.read_bytes().split(b"\n")
    lines[1] = lines[1].replace(b'"d":"', b'"d":"AAAA', 1)
    path.write_bytes(b"\n".join(lines))
    for workers in (1, 2):
        mirror = Mirror.open(tmp_path / f"m{workers}.sqlite3")
        stats = rebuild(mirror, tmp_path / "conversations", KEYRING, workers=workers)
        assert stats.conversations == len(streams) - 1
        assert [type(e).__name__ for e in stats.errors] == ["JournalCorruptError"]
        assert "line 2 (sequence 2)" in str(stats.errors[0])
        assert {r.key[0] for r in mirror.dump()} == set(streams) - {"job-03", "empty"}
        mirror.close()


def test_a_failed_full_rebuild_leaves_the_mirror_as_it_was(tmp_path: Path) -> None:
    """An authenticated record that is not JSON stops the rebuild (as every reader
    refuses it): the transaction rolls back and readers keep the previous rows."""
    streams = sample_streams()
    write_journals(tmp_path / "conversations", KEYRING, streams)
    mirror = Mirror.open(tmp_path / "m.sqlite3")
    rebuild(mirror, tmp_path / "conversations", KEYRING)
    before = mirror.dump()
    journal = Journal.open(journal_path(tmp_path / "conversations", "digest"), "digest", KEYRING)
    journal.append_payloads([b"[not, json"])
    journal.close()
    for workers in (1, 2):
        with pytest.raises(ValueError, match="Expecting value"):
            rebuild(mirror, tmp_path / "conversations", KEYRING, workers=workers)
        assert mirror.dump() == before
        assert [h.turn for h in mirror.search("zeppelin")] == [2]


def test_a_worker_that_dies_stops_the_rebuild_with_an_error(tmp_path: Path) -> None:
    streams = rich_streams(7, 4)
    write_journals(tmp_path / "conversations", KEYRING, streams)
    jobs: list[Job] = [
        (journal_path(tmp_path / "conversations", name), name, None) for name in streams
    ]
    with WorkerPool(KEYRING.entries, 2) as pool:
        assert [r.name for r in pool.fold(jobs, 3) if r is not None] == list(streams)
        for pid in pool.pids:
            os.kill(pid, signal.SIGKILL)
        with pytest.raises(RebuildWorkerError, match="exited unexpectedly"):
            list(pool.fold(jobs, 3))


def test_a_full_rebuild_while_the_daemon_applies(tmp_path: Path) -> None:
    """``vigil rebuild`` against the daemon's live mirror: the daemon's flushes wait
    while the rebuild holds the database, what it journals meanwhile reaches the
    mirror after, and the end state equals a rebuild of the whole journals."""
    streams = sample_streams()
    write_journals(tmp_path / "conversations", KEYRING, streams)
    path = tmp_path / "m.sqlite3"
    daemon = Mirror.open(path, flush_every=1, flush_interval=3600)
    for name, events in streams.items():
        for seq, event in enumerate(events, start=1):
            daemon.apply(name, seq, event)
    more = turn_events(4, prompt="late beat", deltas=["after ", "the rebuild"])
    journal = journal_path(tmp_path / "conversations", "inbox")

    def meanwhile(p: RebuildProgress) -> None:
        if p.conversations_done != 1:
            return
        stray = Journal.open(journal, "inbox", KEYRING, fsync=FsyncPolicy.NEVER)
        first = stray.last_seq + 1
        for seq, event in enumerate(more, start=first):
            assert stray.append(event) == seq
            daemon.apply("inbox", seq, event)
        stray.close()
        assert daemon.flush() is False  # the rebuild holds the database

    cli = Mirror.open(path, busy_timeout_ms=1000)
    stats = rebuild(cli, tmp_path / "conversations", KEYRING, progress=meanwhile, workers=2)
    assert stats.errors == []
    assert path.with_name(path.name + "-wal").stat().st_size == 0  # the space given back
    assert daemon.flush() is True
    expected = Mirror.open(":memory:")
    rebuild(expected, tmp_path / "conversations", KEYRING)
    assert len(expected.search("rebuild")) == 1
    assert cli.dump() == expected.dump()
    assert daemon.error is None
    daemon.close()
    cli.close()
    assert check_index(path) is None


def test_a_rebuild_by_another_process_while_the_daemon_applies(tmp_path: Path) -> None:
    """``vigil rebuild inbox`` against the daemon's live mirror: the daemon's flushes
    wait (never block) while the rebuild holds the database, and the end state equals
    a rebuild of the whole journal."""
    events = sample_streams()["inbox"]
    more = turn_events(3 + 1, prompt="late beat", deltas=["after ", "the rebuild"])
    write_journals(tmp_path / "conversations", KEYRING, {"inbox": events})
    path = tmp_path / "m.sqlite3"
    daemon = Mirror.open(path, flush_every=3, flush_interval=3600)
    for seq, event in enumerate(events[:-3], start=1):
        daemon.apply("inbox", seq, event)  # the last three stay unflushed
    cli = Mirror.open(path, busy_timeout_ms=1000)
    journal = journal_path(tmp_path / "conversations", "inbox")

    def feed(sink: Any) -> None:
        for seq, event in enumerate(events, start=1):
            sink(seq, event)
            if seq == 5:  # the daemon journals and applies meanwhile
                n = len(events) - 2
                daemon.apply("inbox", n, events[n - 1])
                assert daemon.flush() is False  # the rebuild holds the database
        stray = Journal.open(journal, "inbox", KEYRING, fsync=FsyncPolicy.NEVER)
        for event in more:  # appended while the rebuild already read its records
            stray.append(event)
        stray.close()

    cli.replay("inbox", feed)
    all_events = [*events, *more]
    for seq in range(len(events) - 1, len(all_events) + 1):
        daemon.apply("inbox", seq, all_events[seq - 1])
    assert daemon.flush() is True
    expected = Mirror.open(":memory:")
    expected.replay("inbox", events_feed(enumerate(all_events, start=1)))
    assert cli.dump() == expected.dump()
    assert daemon.error is None
    daemon.close()
    cli.close()
    assert check_index(path) is None
