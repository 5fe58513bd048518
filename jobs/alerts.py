"""When a failing job raises an alert, and what it says (pure).

A job's *failure streak* is the number of its beats in a row that ended ``turn_failed``
(any reason), folded from the journal (:class:`jobs.ledger.JobLedger`), so it survives a
restart; a completed beat ends it, skipped and interrupted beats leave it as it is.

* After ``alert_after`` failed beats in a row the job's alert sinks get **one**
  ``failing`` message naming the job, the last failure's reason and error. Whether it
  was raised is journaled (``alert_raised``), so a restart does not raise it again.
* The first completed beat after that raises one ``recovered`` message.
* With ``auto_pause_after`` set, a streak that long pauses the job (``job_paused`` with
  ``by = "auto"``) until ``vigil resume``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["AlertKind", "AlertPolicy", "alert_due", "alert_text", "auto_pause_due"]

AlertKind = Literal["failing", "recovered"]
DETAIL_LIMIT = 500


@dataclass(frozen=True)
class AlertPolicy:
    alert_after: int = 5
    auto_pause_after: int | None = None


def alert_due(
    policy: AlertPolicy, *, completed: bool, streak: int, alerting: bool
) -> AlertKind | None:
    """What the beat that just ended raises: ``streak`` is the failure streak after it,
    ``alerting`` whether a ``failing`` alert is out with no ``recovered`` since."""
    if completed:
        return "recovered" if alerting else None
    if not alerting and streak >= policy.alert_after:
        return "failing"
    return None


def auto_pause_due(policy: AlertPolicy, *, streak: int, paused: bool) -> bool:
    limit = policy.auto_pause_after
    return limit is not None and not paused and streak >= limit


def alert_text(
    job: str,
    kind: AlertKind,
    *,
    failures: int,
    turn: int,
    reason: str | None,
    detail: str | None,
) -> str:
    """The message an alert sink receives (one line plus the last error)."""
    if kind == "recovered":
        return (
            f"vigil: job {job!r} recovered: turn {turn} completed after "
            f"{failures} failed beats in a row"
        )
    error = " ".join((detail or "").split())
    if len(error) > DETAIL_LIMIT:
        error = error[: DETAIL_LIMIT - 1] + "…"
    return (
        f"vigil: job {job!r} is failing: {failures} failed beats in a row, the last "
        f"(turn {turn}) with reason {reason or 'unknown'}: {error or 'no detail'}"
    )
