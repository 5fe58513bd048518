"""Healing on read: a conversation's events folded into turns."""

from __future__ import annotations

from pathlib import Path

from daemon import events
from daemon.events import Event
from daemon.events.heal import fold
from daemon.journal.file import FsyncPolicy, Journal
from daemon.journal.keyring import Keyring
from daemon.journal.scan import read_events

T0, T1, T2 = "2026-11-21T13:00:00.000Z", "2026-11-21T13:00:05.000Z", "2026-11-21T13:00:09.000Z"


def completed_turn(turn: int, reply: str = "all quiet", total_usd: float = 0.0125) -> list[Event]:
    return [
        events.turn_started(turn, f"beat {turn}", job="inbox", trigger="schedule", at=T0),
        events.delta(turn, "all ", at=T0),
        events.delta(turn, "quiet", at=T0),
        events.assistant(turn, reply, uuid=f"uuid-{turn}", model="claude-x", at=T1),
        events.tool_use(turn, f"tu-{turn}", "Read", {"path": "/inbox"}, at=T1),
        events.tool_result(turn, f"tu-{turn}", "3 mails", is_error=False, at=T1),
        events.result(
            turn,
            session_id="sess-2",
            is_error=False,
            subtype="success",
            text=reply,
            session_cost_usd=total_usd,
            usage={"input_tokens": 10, "output_tokens": 3},
            duration_ms=1200,
            num_turns=1,
            at=T2,
        ),
        events.turn_completed(turn, at=T2),
    ]


def test_a_completed_turn_carries_prompt_reply_cost_tools_and_resume_point() -> None:
    view = fold(
        [events.session_bound("sess-1", "/srv/agent", mode="new", at=T0), *completed_turn(1)]
    )
    assert view.session_id == "sess-1" and view.cwd == "/srv/agent"
    [turn] = view.turns
    assert turn.status == "completed"
    assert (turn.turn, turn.prompt, turn.reply) == (1, "beat 1", "all quiet")
    assert (turn.started_at, turn.ended_at) == (T0, T2)
    assert (turn.job, turn.trigger) == ("inbox", "schedule")
    assert turn.session_id == "sess-2"  # the result's session id wins
    assert turn.cost_usd == 0.0125 and turn.is_error is False
    assert turn.tools == ["Read"]
    assert turn.resume_at == "uuid-1"
    assert turn.journaled_end
    assert view.open_turn is None
    assert view.last_completed is turn
    assert view.completed_turns == [turn]
    assert view.next_turn == 2
    assert turn.as_json()["status"] == "completed"
    assert turn.as_json()["reply"] == "all quiet"


def test_the_result_text_wins_over_the_deltas_of_a_completed_turn() -> None:
    view = fold(completed_turn(1, reply="the final answer"))
    assert view.turns[0].reply == "the final answer"
    assert view.turns[0].deltas == ["all ", "quiet"]


def test_a_turn_costs_the_step_in_the_session_running_total() -> None:
    view = fold([*completed_turn(1, total_usd=0.0125), *completed_turn(2, total_usd=0.03)])
    assert [t.cost_usd for t in view.turns] == [0.0125, 0.0175]
    assert [t.turn for t in view.completed_turns] == [1, 2]
    assert view.last_completed is view.turns[1]


def test_a_failed_turn_keeps_its_reason_and_detail() -> None:
    view = fold(
        [
            *completed_turn(1),
            events.turn_started(2, "beat 2", job="inbox", trigger="schedule", at=T0),
            events.delta(2, "partial", at=T0),
            events.turn_failed(2, "timeout", "no answer within 300 s", at=T1),
        ]
    )
    failed = view.turns[1]
    assert failed.status == "failed"
    assert (failed.reason, failed.detail) == ("timeout", "no answer within 300 s")
    assert failed.ended_at == T1 and failed.reply == "partial"
    assert view.open_turn is None
    assert view.last_completed is view.turns[0]
    assert view.next_turn == 3


def test_a_skipped_beat_is_a_closed_turn_of_its_own() -> None:
    view = fold(
        [
            *completed_turn(1),
            events.beat_skipped(2, "overlap", "turn 1 still running", at=T1),
            events.beat_skipped(3, "catch_up", at=T2),
        ]
    )
    assert [t.status for t in view.turns] == ["completed", "skipped", "skipped"]
    skipped = view.turns[1]
    assert (skipped.reason, skipped.detail) == ("overlap", "turn 1 still running")
    assert skipped.started_at == skipped.ended_at == T1
    assert view.turns[2].detail is None  # an empty detail reads as none
    assert view.open_turn is None
    assert view.last_completed is view.turns[0]
    assert view.next_turn == 4


def test_a_turn_interrupted_by_record_is_closed_with_its_deltas_as_reply() -> None:
    view = fold(
        [
            events.turn_started(1, "beat 1", job="inbox", trigger="manual", at=T0),
            events.delta(1, "Hello, ", at=T0),
            events.delta(1, "wor", at=T1),
            events.turn_interrupted(1, "daemon restarted", at=T2),
        ]
    )
    [turn] = view.turns
    assert turn.status == "interrupted"
    assert turn.reason == "daemon restarted"
    assert turn.reply == "Hello, wor"
    assert turn.journaled_end and turn.ended_at == T2
    assert view.open_turn is None  # already made durable: nothing left to heal
    assert view.last_completed is None
    assert view.next_turn == 2


def test_an_open_turn_is_interrupted_and_its_reply_is_every_delta_joined() -> None:
    deltas = ["Dear ", "", "operator,\n", "3 new mails: ", "ünïcode ✓ ", "…"]
    view = fold(
        [
            events.session_bound("sess-1", "/srv/agent", mode="resume", at=T0),
            *completed_turn(1),
            events.turn_started(2, "beat 2", job="inbox", trigger="catch_up", at=T1),
            *[events.delta(2, d, at=T1) for d in deltas],
            events.assistant(2, "ignored for the reply", uuid="uuid-2a", model=None, at=T1),
            events.tool_use(2, "tu-x", "Grep", {"q": "x"}, at=T1),
        ]
    )
    open_turn = view.open_turn
    assert open_turn is view.turns[1]
    assert open_turn.status == "interrupted"
    assert open_turn.reply == "".join(deltas)
    assert open_turn.deltas == deltas
    assert not open_turn.journaled_end and open_turn.ended_at is None
    assert open_turn.resume_at == "uuid-2a"
    assert open_turn.tools == ["Grep"]
    assert open_turn.session_id == "sess-1"
    assert view.last_completed is view.turns[0]
    assert view.next_turn == 3


def test_the_status_of_an_open_turn_can_be_chosen() -> None:
    view = fold(
        [events.turn_started(7, "beat", job="j", trigger="schedule", at=T0)],
        open_turn_status="running",
    )
    assert view.turns[0].status == "running"
    assert view.open_turn is view.turns[0]
    assert view.next_turn == 8


def test_an_empty_conversation_and_stray_events_fold_to_nothing() -> None:
    view = fold([])
    assert view.turns == [] and view.open_turn is None and view.last_completed is None
    assert view.next_turn == 1
    stray = fold(
        [
            events.delta(5, "no turn_started for this", at=T0),
            events.turn_completed(5, at=T0),
            {"ev": 1, "type": "from_a_future_schema", "turn": 1},
            {"ev": 1, "type": "turn_started", "turn": "not a number"},
        ]
    )
    assert stray.turns == [] and stray.next_turn == 1


def test_healing_a_journal_torn_in_the_middle_of_a_turn(tmp_path: Path) -> None:
    """End to end: a crash mid-turn, the torn record cut, the turn rebuilt from deltas."""
    ring = Keyring.generate()
    path = tmp_path / "inbox.jsonl"
    journal = Journal.open(path, "inbox", ring, fsync=FsyncPolicy.NEVER)
    for ev in completed_turn(1):
        journal.append(ev)
    journal.append(events.turn_started(2, "beat 2", job="inbox", trigger="schedule", at=T0))
    journal.append(events.delta(2, "first ", at=T0))
    journal.append(events.delta(2, "second", at=T0))
    before_last = journal.size
    journal.append(events.delta(2, " never acknowledged", at=T0))
    journal.close()
    with path.open("r+b") as f:  # the process died while writing the last delta
        f.truncate(before_last + 40)

    reopened = Journal.open(path, "inbox", ring)
    try:
        assert reopened.tail_cut is not None
        view = fold(read_events(path, "inbox", ring))
        open_turn = view.open_turn
        assert open_turn is not None and open_turn.turn == 2
        assert open_turn.reply == "first second"
        # What the daemon does at start: make the interruption durable.
        reopened.append(events.turn_interrupted(2, "crash", at=T2))
    finally:
        reopened.close()
    healed = fold(read_events(path, "inbox", ring))
    assert healed.open_turn is None
    assert healed.turns[1].status == "interrupted"
    assert healed.turns[1].reply == "first second"
    assert healed.next_turn == 3
