"""Whether a beat has anything to say: an empty prompt file skips the beat.

A prompt file (HEARTBEAT.md) that holds only whitespace and comments means "nothing to
do this time": the beat is skipped without a model call (reason ``empty_prompt``).
Comments are HTML comments (``<!-- ... -->``, invisible in rendered Markdown) and lines
whose first non-blank character is ``#`` (Markdown headings and shell-style notes), so
a template that keeps only its headings counts as empty. Pure.
"""

from __future__ import annotations

import re

__all__ = ["QUEUED_HEADER", "is_empty_prompt", "meaningful_text", "with_queued"]

QUEUED_HEADER = "Messages from the operator since the last beat:"

_HTML_COMMENT = re.compile(r"<!--.*?(?:-->|\Z)", re.DOTALL)


def meaningful_text(text: str) -> str:
    """``text`` without comments and blank lines (what would reach the model)."""
    without = _HTML_COMMENT.sub("", text)
    lines = [line for line in without.splitlines() if line.strip()]
    return "\n".join(line for line in lines if not line.lstrip().startswith("#"))


def is_empty_prompt(text: str) -> bool:
    """True when ``text`` is only whitespace and comments."""
    return not meaningful_text(text).strip()


def with_queued(prompt: str, messages: list[str]) -> str:
    """The beat's prompt with the operator's queued messages (``vigil send --next-beat``)
    added after it, oldest first; ``prompt`` itself when none is queued."""
    if not messages:
        return prompt
    notes = "\n\n".join(m.strip() for m in messages)
    return f"{prompt.rstrip()}\n\n{QUEUED_HEADER}\n\n{notes}"
