"""One turn cost, whoever reads it: history (heal.fold), the mirror, the budget ledger
and ``vigil sessions`` agree on every stream, junk included (property test)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from daemon import events as ev
from daemon.events import Event
from daemon.events.heal import fold
from daemon.mirror.db import Mirror
from jobs.budget import local_day_bounds
from jobs.cost import add_cost
from jobs.ledger import JobLedger

AT = "2026-11-21T10:00:00.000Z"
DAY = datetime(2026, 11, 21, tzinfo=UTC).date()

# What a result's session_cost_usd may hold in a damaged or hand-edited journal.
junk_totals = st.one_of(
    st.none(),
    st.text(max_size=3),
    st.booleans(),
    st.just(float("nan")),
    st.just(float("inf")),
    st.floats(min_value=-1, max_value=-0.001),
)
good_totals = st.floats(min_value=0, max_value=5, allow_nan=False).map(lambda x: round(x, 4))


@st.composite
def streams(draw: st.DrawFn) -> list[Event]:
    """A conversation as the daemon journals it, with junk mixed in: several results
    in one turn, reconnects (the running total restarts), malformed cost fields,
    unknown event types, results of turns that never started, skipped beats."""
    out: list[Event] = []
    sessions = ["s-1", "s-2"]
    for turn in range(1, draw(st.integers(1, 6)) + 1):
        if draw(st.booleans()):
            out.append(ev.session_bound(draw(st.sampled_from(sessions)), "/w", mode="resume"))
        if draw(st.integers(0, 4)) == 0:
            out.append(ev.beat_skipped(turn, "no_capacity", "", at=AT))
            continue
        out.append(ev.turn_started(turn, "p", job="j", trigger="schedule", at=AT))
        for _ in range(draw(st.integers(0, 3))):
            total: Any = draw(st.one_of(good_totals, junk_totals))
            out.append(
                {
                    "type": "result",
                    "turn": turn,
                    "session_id": draw(st.sampled_from(sessions)),
                    "session_cost_usd": total,
                    "at": AT,
                }
            )
        if draw(st.booleans()):
            out.append({"type": "surprise", "turn": turn, "at": AT})
        if draw(st.integers(0, 5)) == 0:  # a result for a turn that never started
            out.append({"type": "result", "turn": turn + 50, "session_cost_usd": 9.0, "at": AT})
        out.append(ev.turn_completed(turn, at=AT))
    return out


@settings(max_examples=300, deadline=None)
@given(streams())
def test_history_mirror_budget_and_sessions_agree_on_every_turns_cost(events: list[Event]) -> None:
    view = fold(events)
    history = {t.turn: t.cost_usd or 0.0 for t in view.turns}

    mirror = Mirror.open(":memory:")
    for seq, event in enumerate(events, start=1):
        mirror.apply("c", seq, event)
    mirror.flush()
    rows = mirror.db.execute("SELECT turn, coalesce(cost_usd, 0) FROM turns").fetchall()
    assert dict(rows) == history  # per turn, exactly

    ledger = JobLedger()
    for event in events:
        ledger.feed(event)
    total = 0.0
    for cost in history.values():
        total = add_cost(total, cost)
    assert ledger.spend.spent_on(DAY, UTC) == total

    (summary,) = mirror.conversations(lambda _name: local_day_bounds(DAY, UTC))
    assert summary.spend_today_usd == total
    for cost in history.values():
        assert cost == round(cost, 6)  # micro-dollars, rounded in one place
