"""``vigil send`` on a cluster follows its turn from PostgreSQL; when the node that
accepted it loses the conversation before the turn began, the turn will never come,
and the follower says so instead of waiting for ever. A turn that did begin is
followed to its end, which the new owner writes when it heals the turn."""

from __future__ import annotations

import threading
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

from daemon.cli.operate import ClusterTurnFollower, SentTurn
from daemon.events import Event
from daemon.journal.keyring import Keyring
from tests.cluster.helpers import TTL, ManualClock, node


def _follower(store: Any, epoch: int) -> ClusterTurnFollower:
    reader = SimpleNamespace(store=store, events=store.read)
    follower = ClusterTurnFollower(reader, "inbox")  # type: ignore[arg-type]  # duck-typed
    follower.epoch = epoch
    return follower


def _follow(follower: ClusterTurnFollower, request: str) -> tuple[SentTurn, list[str]]:
    shown: list[str] = []
    turn = follower.follow(request, shown.append, alive=lambda: True, poll_s=0.02)
    return turn, shown


def test_a_send_whose_turn_never_began_is_given_up_when_the_conversation_moves(
    pg_dsn: str, keyring: Keyring
) -> None:
    clock = ManualClock()
    a, b = node(pg_dsn, "node-a", keyring, clock), node(pg_dsn, "node-b", keyring, clock)
    reader = node(pg_dsn, "reader", keyring, clock)
    log_a = a.events.open("inbox")
    log_a.append({"type": "turn_completed", "turn": 1})
    log_a.sync()
    follower = _follower(reader.events, log_a.epoch)
    assert follower.last == 1  # from the end, without reading the conversation

    result: list[tuple[SentTurn, list[str]]] = []
    waiting = threading.Thread(target=lambda: result.append(_follow(follower, "r-1")), daemon=True)
    waiting.start()
    waiting.join(1.5)
    assert waiting.is_alive()  # the owner still holds it: the turn may yet come
    clock.advance(TTL + timedelta(seconds=1))  # node-a froze; node-b takes inbox over
    b.events.open("inbox").close()
    waiting.join(10)
    assert not waiting.is_alive()
    turn, shown = result[0]
    assert (turn.status, turn.reason, turn.turn, shown) == (
        "interrupted",
        "ownership_moved",
        None,
        [],
    )
    for n in (a, b, reader):
        n.close()


def test_a_turn_that_began_is_followed_to_the_end_the_new_owner_writes(
    pg_dsn: str, keyring: Keyring
) -> None:
    clock = ManualClock()
    a, b = node(pg_dsn, "node-a", keyring, clock), node(pg_dsn, "node-b", keyring, clock)
    reader = node(pg_dsn, "reader", keyring, clock)
    log_a = a.events.open("inbox")
    follower = _follower(reader.events, log_a.epoch)
    started: Event = {"type": "turn_started", "turn": 1, "request": "r-2", "prompt": "hi"}
    log_a.append(started)
    log_a.append({"type": "delta", "turn": 1, "text": "half"})
    log_a.sync()

    result: list[tuple[SentTurn, list[str]]] = []
    waiting = threading.Thread(target=lambda: result.append(_follow(follower, "r-2")), daemon=True)
    waiting.start()
    clock.advance(TTL + timedelta(seconds=1))  # node-a dies mid-turn
    log_b = b.events.open("inbox")
    waiting.join(2.5)  # the epoch moved, but this turn began: it is followed on
    assert waiting.is_alive()
    log_b.append({"type": "turn_interrupted", "turn": 1, "reason": "daemon_stopped_mid_turn"})
    log_b.sync()
    waiting.join(10)
    assert not waiting.is_alive()
    turn, shown = result[0]
    assert (turn.status, turn.reason, turn.turn, shown) == (
        "interrupted",
        "daemon_stopped_mid_turn",
        1,
        ["half"],
    )
    log_b.close()
    for n in (a, b, reader):
        n.close()
