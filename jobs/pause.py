"""A paused job (pure): ``vigil pause NAME [--for D]``, or ``auto_pause_after`` failures.

A pause is folded from the journal (``job_paused`` / ``job_resumed``), so it survives a
restart. While it lasts, due beats are skipped with reason ``paused``; a pause with an
end (``--for``) simply stops applying then: nothing is journaled at its end.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

__all__ = ["Pause"]


@dataclass(frozen=True)
class Pause:
    since: datetime
    until: datetime | None  # None: until ``vigil resume``
    by: str  # "operator" or "auto"
    detail: str = ""

    def active(self, now: datetime) -> bool:
        return self.until is None or now < self.until

    def describe(self) -> str:
        who = "by the operator" if self.by == "operator" else "automatically"
        when = f" until {self.until.isoformat()}" if self.until is not None else ""
        why = f" ({self.detail})" if self.detail else ""
        return f"paused {who}{when}{why}; `vigil resume` ends it"
