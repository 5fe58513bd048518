"""What the user said in a Messages API request, as the loopback model reads it (pure):
the user's own text blocks (not system reminders, not interrupt markers), the newest
prompt (where directives are read), the echo reply, synthetic usage (``[usage:N]`` in
every user turn still sent) and the answer to the CLI's summarisation request."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Final

JsonDict = dict[str, Any]
PREVIEW_CHARS: Final = 60
_INTERRUPT_MARKER = "[Request interrupted by user"
_REMINDER = "<system-reminder>"


def message_user_blocks(message: JsonDict) -> list[str]:
    """The user's own text blocks in one API message (none for other roles)."""
    if message.get("role") != "user":
        return []
    content = message.get("content")
    if isinstance(content, str):
        return [content] if _is_user_text(content) else []
    if not isinstance(content, list):
        return []
    return [
        block["text"]
        for block in content
        if isinstance(block, dict)
        and block.get("type") == "text"
        and isinstance(block.get("text"), str)
        and _is_user_text(block["text"])
    ]


def _is_user_text(text: str) -> bool:
    stripped = text.lstrip()
    return bool(stripped) and not stripped.startswith((_REMINDER, _INTERRUPT_MARKER))


def user_texts(messages: Sequence[JsonDict]) -> list[str]:
    """The user's own text of every user turn, oldest first (blocks joined by a space)."""
    return [" ".join(b) for b in (message_user_blocks(m) for m in messages) if b]


def latest_prompt(messages: Sequence[JsonDict]) -> str:
    """The newest user text block: where directives are read.

    After a failed turn the CLI merges the unanswered prompt and the next one into a
    single user message, so reading only the last block keeps a stale directive from
    firing again.
    """
    for message in reversed(messages):
        blocks = message_user_blocks(message)
        if blocks:
            return blocks[-1]
    return ""


def ends_with_user_text(messages: Sequence[JsonDict]) -> bool:
    """True when the newest non-system message is a user turn (not a tool result)."""
    for message in reversed(messages):
        if message.get("role") != "system":
            return bool(message_user_blocks(message))
    return False


def preview(text: str) -> str:
    return " ".join(text.split())[:PREVIEW_CHARS]


def echo_reply(texts: Sequence[str]) -> str:
    """The deterministic reply: how many user turns the model saw, first and last."""
    first = preview(texts[0]) if texts else ""
    last = preview(texts[-1]) if texts else ""
    return f'seen {len(texts)} user turns; first: "{first}"; last: "{last}"'


_USAGE = re.compile(r"\[usage:(\d+)\]")


def synthetic_tokens(messages: Sequence[JsonDict]) -> int:
    """Sum of N over every ``[usage:N]`` in the user turns still in ``messages``."""
    return sum(int(n) for text in user_texts(messages) for n in _USAGE.findall(text))


SUMMARY_REQUEST: Final = "create a detailed summary of the conversation so far"
SUMMARY_PREFIX: Final = "dev-model summary of "
_SUMMARY_OF = re.compile(r'dev-model summary of (\d+) user turns; first: "([^"]*)"')
_ANY_DIRECTIVE = re.compile(r"\[(?:reply|slow|fail|stall|tool|usage):[^\]]*\]|\[cut\]")


def is_summary_request(messages: Sequence[JsonDict]) -> bool:
    """True for the CLI's compaction request (its instructions are the newest user text)."""
    return SUMMARY_REQUEST in latest_prompt(messages)


def summary_reply(messages: Sequence[JsonDict]) -> str:
    """``<summary>`` of the user turns before the instructions, directives removed, and
    counting through an earlier dev-model summary (so memory survives compactions)."""
    texts = [_ANY_DIRECTIVE.sub("", t) for t in user_texts(messages)[:-1]]
    count, first = len(texts), preview(texts[0]) if texts else ""
    earlier = _SUMMARY_OF.search(texts[0]) if texts else None
    if earlier:
        count, first = count - 1 + int(earlier.group(1)), earlier.group(2)
    last = preview(texts[-1]) if texts else ""
    return (
        f'<summary>{SUMMARY_PREFIX}{count} user turns; first: "{first}"; last: "{last}"</summary>'
    )
