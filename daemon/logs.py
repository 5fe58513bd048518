"""Structured logs: one JSON object per line on stdout (journald keeps it as MESSAGE).

Every line has ``event``, ``level`` and ``timestamp``; conversation events add
``job``, ``session`` and ``turn`` so ``journalctl -u vigil -o json`` can filter on them.
Log only what is already journaled (write before show).

Conversation text (a prompt, a streamed delta, a reply) is not logged by default: under
systemd stdout is journald, kept on disk in plaintext. :func:`content_filter` replaces
each such field with its size (``text_chars``, ``text_bytes``) unless the operator
opted in (``[daemon] log_content = true``). ``vigil tail -f`` shows the text from the
encrypted journal instead.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, Literal, TextIO

import structlog

LogFormat = Literal["json", "console"]


#: Log fields that carry conversation text, on any line (``output``: what a sink's
#: program printed, which may quote the reply).
CONTENT_FIELDS = ("prompt", "text", "reply", "output")


def content_filter(
    _logger: object, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """A structlog processor: each conversation-text field becomes its sizes."""
    for key in CONTENT_FIELDS:
        if key in event_dict:
            value = event_dict.pop(key)
            text = value if isinstance(value, str) else ("" if value is None else str(value))
            event_dict[f"{key}_chars"] = len(text)
            event_dict[f"{key}_bytes"] = len(text.encode("utf-8", "surrogatepass"))
    return event_dict


def configure_logging(
    fmt: LogFormat = "json", stream: TextIO | None = None, *, log_content: bool = False
) -> None:
    """Log lines to ``stream`` (stdout); conversation text only with ``log_content``."""
    out = stream if stream is not None else sys.stdout
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=out.isatty())
    )
    content: list[structlog.typing.Processor] = [] if log_content else [content_filter]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            *content,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )


def get_logger(**bound: object) -> structlog.typing.FilteringBoundLogger:
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger().bind(**bound)
    return logger
