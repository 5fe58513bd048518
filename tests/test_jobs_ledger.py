"""The job ledger folds a journal's events into what a restarted daemon shows."""

from __future__ import annotations

from daemon import events as ev
from jobs.ledger import JobLedger


def test_the_last_outcome_is_read_back_from_the_journal() -> None:
    """`vigil status` after a restart shows each job's last beat from the journal."""
    ledger = JobLedger()
    assert (ledger.last_turn, ledger.last_outcome, ledger.last_reason) == (None, None, None)
    for event in [
        ev.turn_started(1, "p", job="inbox", trigger="schedule"),
        ev.delta(1, "hi"),
        ev.turn_completed(1),
    ]:
        ledger.feed(event)
    assert (ledger.last_turn, ledger.last_outcome, ledger.last_reason) == (1, "completed", None)
    ledger.feed(ev.turn_started(2, "p", job="inbox", trigger="schedule"))
    ledger.feed(ev.turn_failed(2, "timeout", "no answer"))
    assert (ledger.last_turn, ledger.last_outcome, ledger.last_reason) == (2, "failed", "timeout")
