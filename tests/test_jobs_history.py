"""`vigil history` text: quiet turns, skip runs folded to one line, deliveries listed."""

from __future__ import annotations

from daemon import events
from daemon.events.heal import fold
from daemon.ops.history import render_history

T = "2026-05-04T10:00:00.000Z"


def test_history_shows_quiet_turns_skip_runs_missed_beats_and_deliveries() -> None:
    view = fold(
        [
            events.beats_missed(
                1,
                count=3,
                first_due="2026-05-04T07:00:00+00:00",
                last_due="2026-05-04T09:00:00+00:00",
                capped=False,
                catch_up="once",
                detail="3 beats came due while vigil was down",
                at=T,
            ),
            events.turn_started(2, "Anything new?", job="inbox", trigger="catch_up", at=T),
            events.turn_completed(2, quiet=True, at=T),
            *[
                events.beat_skipped(n, "outside_active_hours", f"23:0{n} late", at=T)
                for n in (3, 4, 5)
            ],
            events.turn_started(6, "Anything new?", job="inbox", trigger="schedule", at=T),
            events.delta(6, "Disk full", at=T),
            events.turn_completed(6, at=T),
            events.delivery_started(6, "6/chat", "chat", 1, at=T),
            events.delivery_failed(6, "6/chat", "chat", 1, error="HTTP 503", retry_in_s=5.0, at=T),
            events.delivery_started(6, "6/chat", "chat", 2, at=T),
            events.delivery_done(6, "6/chat", "chat", 2, at=T),
        ]
    )
    assert [t.status for t in view.turns] == [
        "skipped",
        "quiet",
        "skipped",
        "skipped",
        "skipped",
        "completed",
    ]
    assert view.turns[0].missed == 3 and view.turns[0].as_json()["missed"] == 3
    assert view.last_completed is view.turns[5]
    assert view.turns[5].as_json()["deliveries"] == [
        {"sink": "chat", "status": "done", "attempts": 2, "error": None, "at": T}
    ]
    text = render_history("inbox", view.turns)
    assert "#1 skipped  " + T + "  (missed_while_down: 3 beats came due" in text
    assert "#2 quiet" in text
    assert f"#3-#5 skipped x3  {T} .. {T}  (outside_active_hours: 23:05 late)" in text
    assert "  -> chat done, 2 attempts" in text
