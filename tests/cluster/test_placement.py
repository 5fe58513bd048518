"""Rendezvous placement: deterministic, balanced, and stable when nodes join or leave."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from daemon.cluster.placement import Move, assign, next_tick_in, owner_of, plan

NAMES = st.text(alphabet="abcdefghij-0123456789", min_size=1, max_size=12)
CONVERSATIONS = [f"conv-{i}" for i in range(3000)]


def test_every_node_computes_the_same_owner_whatever_the_order() -> None:
    nodes = ["node-a", "node-b", "node-c"]
    assert assign(CONVERSATIONS, nodes) == assign(CONVERSATIONS, list(reversed(nodes)))
    assert owner_of("inbox", []) is None


def test_the_load_spreads_evenly() -> None:
    counts = Counter(assign(CONVERSATIONS, ["node-a", "node-b", "node-c"]).values())
    assert set(counts) == {"node-a", "node-b", "node-c"}
    assert all(900 <= n <= 1100 for n in counts.values()), counts


@given(st.lists(NAMES, min_size=2, max_size=6, unique=True), st.data())
def test_a_node_leaving_moves_only_its_own_conversations(
    nodes: list[str], data: st.DataObject
) -> None:
    gone = data.draw(st.sampled_from(nodes))
    before = assign(CONVERSATIONS[:300], nodes)
    after = assign(CONVERSATIONS[:300], [n for n in nodes if n != gone])
    moved = {c for c in before if before[c] != after[c]}
    assert moved == {c for c, n in before.items() if n == gone}


@given(st.lists(NAMES, min_size=1, max_size=6, unique=True), NAMES)
def test_a_node_joining_takes_conversations_only_for_itself(nodes: list[str], new: str) -> None:
    before = assign(CONVERSATIONS[:300], nodes)
    after = assign(CONVERSATIONS[:300], [*nodes, new])
    assert all(after[c] == new for c in before if before[c] != after[c])


def test_eligibility_and_the_plan() -> None:
    nodes = ["node-a", "node-b"]
    only_b = {"conv-1"}

    def eligible(node: str, conversation: str) -> bool:
        return node == "node-b" or conversation not in only_b

    wanted = assign(["conv-1", "conv-2"], nodes, eligible)
    assert wanted["conv-1"] == "node-b"
    current: dict[str, str | None] = {"conv-1": "node-a", "conv-2": wanted["conv-2"], "c3": None}
    moves = plan(current, nodes, eligible)
    assert Move("conv-1", "node-a", "node-b") in moves
    assert [m.conversation for m in moves] == ["c3", "conv-1"]
    assert plan({"conv-1": "node-a"}, [], eligible) == [Move("conv-1", "node-a", None)]


def test_a_tick_comes_just_after_a_silent_nodes_heartbeat_runs_out() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    every, lease = timedelta(seconds=5), timedelta(seconds=15)
    # Nobody else, or every other node beat recently: the regular third of the lease.
    assert next_tick_in(now, every, lease, []) == every
    assert next_tick_in(now, every, lease, [now, now - timedelta(seconds=9)]) == every
    # A node silent for 12 s runs out in 3 s: look just after that.
    silent = now - timedelta(seconds=12)
    tick = next_tick_in(now, every, lease, [now, silent])
    assert timedelta(seconds=3) < tick < timedelta(seconds=3.2)
    # Already past (it is dropped from the live nodes at this tick): the regular tick.
    assert next_tick_in(now, every, lease, [now - timedelta(seconds=20)]) == every
    # Never a busy loop.
    edge = now - lease + timedelta(microseconds=1)
    assert next_tick_in(now, every, lease, [edge]) >= timedelta(milliseconds=50)
