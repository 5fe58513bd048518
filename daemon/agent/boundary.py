"""The CLI's ``compact_boundary`` message, as a journal event (pure: plain dicts in,
an event out; :mod:`daemon.agent.sdk` hands it the message's ``data``)."""

from __future__ import annotations

from typing import Any

from daemon import events as ev
from daemon.events import Event

__all__ = ["compacted_event", "whole"]


def compacted_event(turn: int, data: dict[str, Any]) -> Event:
    """The ``compacted`` event for a ``compact_boundary`` message's data (tolerant: a
    field the CLI leaves out is None)."""
    meta = data.get("compact_metadata")
    meta = meta if isinstance(meta, dict) else {}
    kept = meta.get("preserved_messages")
    uuids = kept.get("uuids") if isinstance(kept, dict) else None
    return ev.compacted(
        turn,
        trigger=str(meta.get("trigger") or "auto"),
        pre_tokens=whole(meta.get("pre_tokens")),
        post_tokens=whole(meta.get("post_tokens")),
        preserved=len(uuids) if isinstance(uuids, list) else 0,
        boundary_uuid=data.get("uuid") if isinstance(data.get("uuid"), str) else None,
        dropped_tokens=whole(meta.get("cumulative_dropped_tokens")),
        duration_ms=whole(meta.get("duration_ms")),
    )


def whole(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
