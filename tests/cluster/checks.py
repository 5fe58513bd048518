"""What the cluster's end-to-end tests check in every conversation, after the fact."""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Any

from daemon.events.heal import fold
from daemon.testing.process import Daemon
from tests.cluster.fleet import Fleet
from tests.e2e.conftest import parse_reply, shown

ENDS = ("turn_completed", "turn_failed", "turn_interrupted")


def check_turns_once(events: list[tuple[int, dict[str, Any]]], name: str) -> None:
    """Every turn number is started once and ended once, and no two turns overlap:
    one turn at a time, none run twice (even across nodes)."""
    started: set[int] = set()
    running: int | None = None
    for seq, event in events:
        kind = event.get("type")
        if kind == "turn_started":
            turn = event["turn"]
            assert turn not in started, f"{name}: turn {turn} started twice (seq {seq})"
            assert running is None, f"{name}: turn {turn} started while {running} ran"
            started.add(turn)
            running = turn
        elif kind in ENDS:
            assert running == event["turn"], f"{name}: {kind} of {event['turn']} at seq {seq}"
            running = None


def check_memory(events: list[tuple[int, dict[str, Any]]], name: str) -> int:
    """Each completed turn's reply shows every earlier completed turn and nothing else
    (the loopback model echoes the user turns it was sent); every interrupted turn is
    followed by its replay. Returns the number of completed turns."""
    turns = [t for t in fold(e for _, e in events).turns if t.status != "skipped"]
    assert turns, f"{name}: no turn journaled"
    statuses = {t.status for t in turns}
    assert statuses <= {"completed", "interrupted"}, f"{name}: {statuses}"
    completed = [t for t in turns if t.status == "completed"]
    for index, turn in enumerate(completed):
        seen = parse_reply(turn.reply)
        assert (seen.n, seen.first, seen.last) == (
            index + 1,
            shown(turns[0].prompt),
            shown(turn.prompt),
        ), f"{name} turn {turn.turn} (completed #{index + 1}): {turn.reply!r}"
    for before, after in itertools.pairwise(turns):
        if before.status == "interrupted":
            assert before.reason == "daemon_stopped_mid_turn", before
            assert after.trigger == "replay", f"{name}: turn {after.turn} after {before.turn}"
    return len(completed)


def check_shown_were_journaled(
    events: list[tuple[int, dict[str, Any]]], name: str, runs: list[Daemon]
) -> int:
    """Every delta any node logged (showed) is in PostgreSQL at its sequence number:
    write before show held on every node, the fenced ones too."""
    by_seq = dict(events)
    shown_count = 0
    for daemon in runs:
        for line in daemon.events("delta", job=name):
            event = by_seq.get(line["seq"])
            assert event is not None, f"{name}: shown delta seq {line['seq']} not journaled"
            assert (event["type"], event["turn"], event["text"]) == (
                "delta",
                line["turn"],
                line["text"],
            ), f"{name}: seq {line['seq']} holds {event}"
            shown_count += 1
    return shown_count


def check_delivered_once(fleet: Fleet, name: str, events: list[tuple[int, dict[str, Any]]]) -> int:
    """No reply reached the sink twice, and each one delivered is a completed turn's."""
    delivered = [d["turn"] for d in fleet.deliveries(name)]
    twice = [turn for turn, count in Counter(delivered).items() if count > 1]
    assert not twice, f"{name}: turns delivered twice: {twice}"
    completed = {t.turn for t in fold(e for _, e in events).turns if t.status == "completed"}
    assert set(delivered) <= completed, f"{name}: delivered {delivered}, completed {completed}"
    return len(delivered)


def check_conversation(fleet: Fleet, name: str) -> tuple[int, int, int]:
    """All of the above for one conversation, read back from PostgreSQL (every record
    authenticated, sequence without gaps): (completed turns, shown deltas, deliveries)."""
    events = fleet.events(name)
    check_turns_once(events, name)
    completed = check_memory(events, name)
    shown_count = check_shown_were_journaled(events, name, fleet.all_runs())
    return completed, shown_count, check_delivered_once(fleet, name, events)
