"""Quiet replies: "nothing to report" is journaled but not delivered.

A heartbeat prompt asks the model to answer a fixed token (``HEARTBEAT_OK``) when
nothing needs a person. :meth:`QuietRule.is_quiet` recognises that reply: after
trimming whitespace and Markdown emphasis (``*``, `````) at both ends, the reply starts
with the token and what follows it is at most ``max_extra`` characters (trimmed). An
empty token turns quiet detection off. Pure.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_QUIET_TOKEN", "QuietRule"]

DEFAULT_QUIET_TOKEN = "HEARTBEAT_OK"  # noqa: S105  # a reply marker, not a secret
_TRIM = " \t\r\n*`"


@dataclass(frozen=True)
class QuietRule:
    token: str = DEFAULT_QUIET_TOKEN
    max_extra: int = 0

    def is_quiet(self, reply: str | None) -> bool:
        if not self.token or reply is None:
            return False
        text = reply.strip(_TRIM)
        if not text.startswith(self.token):
            return False
        return len(text[len(self.token) :].strip(_TRIM)) <= self.max_extra
