"""What a resume needs of a transcript that holds a compaction (pure; issue 14).

After a compaction the CLI sends the model the summary, the messages it preserved and
what follows; everything else before the boundary is dead weight that a store-backed
resume would decrypt, write out and parse at every reconnect. :func:`resume_view` picks
the entries the CLI still reads. It is a transcription of the plan the bundled CLI
(2.1.330) itself computes before it rewrites a transcript without its pre-compaction
past (minified ``YZe`` with its type table ``Epr``), found and checked by issue 14's
research: a resume from the view sends the model the same first request as a resume
from the whole transcript (``tests/e2e/test_resume_view.py``).

The view is a superset of what the CLI keeps (a little metadata more), never less, and
whenever the rule cannot be applied safely it answers None and the caller loads the
whole transcript: a preserved message that is missing, a preserved segment whose walk
breaks, an entry after the boundary whose parent is missing, or whose parent lies
before it and was not preserved (a conversation resumed at a point before the
compaction branches off the uncompacted history: the model sees that history again).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["is_boundary", "last_boundary", "resume_view"]

Entry = dict[str, Any]

TRANSCRIPT = frozenset({"user", "assistant", "system", "attachment"})
FILE_HISTORY = frozenset({"file-history-snapshot", "file-history-delta"})
# Kept only at or after the last boundary (or with a preserved message).
BOUNDARY_CLEARED = frozenset(
    {
        "progress",
        *FILE_HISTORY,
        "last-prompt",
        "continued-in",
        "resume-head-vouch",
        "api-request-shape",
        "api-request-blob",
        "api-request",
        "api-request-resumed",
        "host-row",
    }
)
# Only the newest entry per (type, sessionId) matters; per (type, leafUuid) for "summary".
LAST_WINS = frozenset(
    {
        "derived-from",
        "summary",
        "custom-title",
        "ended-by-model",
        "ai-title",
        "tag",
        "relocated",
        "agent-name",
        "agent-color",
        "agent-setting",
        "pr-link",
        "artifact-autoreact-ledger",
        "bridge-session",
        "history-suppression",
        "attribution-snapshot",
        "mode",
        "permission-mode",
        "isolation-latch",
        "session-owner",
        "dev-mods",
        "atis-latch",
        "tools-used",
        "worktree-state",
        "cost-state",
        "queue-operation",
        "observer-ref",
        "repl-mode",
        "hybrid-organization",
    }
)
# Every other type (content-replacement, data-flow-*, fork-context-ref, frame-link,
# memory-mode, and any type unknown here) is kept wherever it is.


def is_boundary(entry: Entry) -> bool:
    return entry.get("type") == "system" and entry.get("subtype") == "compact_boundary"


def last_boundary(entries: Sequence[Entry]) -> int | None:
    """Index of the last compact boundary, or None."""
    for i in range(len(entries) - 1, -1, -1):
        if is_boundary(entries[i]):
            return i
    return None


def _last_wins_key(entry: Entry) -> str:
    who = entry.get("leafUuid") if entry.get("type") == "summary" else entry.get("sessionId")
    return f"{entry.get('type')}:{who or ''}"


def resume_view(entries: Sequence[Entry]) -> list[int] | None:
    """Indices (ascending) of the entries a resume needs; all of them when there is no
    compaction; None when the rule cannot be applied safely (load everything)."""
    last = last_boundary(entries)
    if last is None:
        return list(range(len(entries)))
    meta = entries[last].get("compactMetadata")
    meta = meta if isinstance(meta, dict) else {}
    keep = set(range(last, len(entries)))
    by_uuid: dict[str, int] = {}
    parent: dict[str, Any] = {}
    history: dict[str, list[int]] = {}  # file-history entries by messageId
    newest: dict[str, int] = {}
    for i, e in enumerate(entries):
        kind, uid = e.get("type"), e.get("uuid")
        if kind in TRANSCRIPT:
            if isinstance(uid, str):
                by_uuid[uid] = i
                parent[uid] = e.get("parentUuid")
        elif kind in FILE_HISTORY:
            history.setdefault(str(e.get("messageId") or ""), []).append(i)
        elif kind in LAST_WINS:
            newest[_last_wins_key(e)] = i
        elif kind not in BOUNDARY_CLEARED:
            keep.add(i)
    preserved = _preserved(meta, by_uuid, parent)
    if preserved is None:
        return None
    for uid in preserved:
        keep.add(by_uuid[uid])
        keep.update(history.get(uid, ()))
    for i in range(last, len(entries)):
        e = entries[i]
        p = e.get("parentUuid") if e.get("type") in TRANSCRIPT else None
        if isinstance(p, str) and not _parent_held(p, by_uuid, last, preserved):
            return None
    keep.update(newest.values())
    return sorted(keep)


def _parent_held(p: str, by_uuid: dict[str, int], last: int, preserved: set[str]) -> bool:
    """Whether the parent ``p`` of an entry after the boundary is in the view: after the
    boundary, or a preserved message. Not when it is missing (perhaps left out of a
    partial read), nor when it lies before the boundary unpreserved: a branch off the
    uncompacted history."""
    return p in by_uuid and (by_uuid[p] >= last or p in preserved)


def _preserved(
    meta: dict[str, Any], by_uuid: dict[str, int], parent: dict[str, Any]
) -> set[str] | None:
    """The uuids of the messages the compaction kept verbatim; None if one is missing."""
    messages = meta.get("preservedMessages")
    segment = meta.get("preservedSegment")
    if isinstance(messages, dict):
        uuids = [u for u in messages.get("uuids") or [] if isinstance(u, str)]
        return set(uuids) if all(u in by_uuid for u in uuids) else None
    if isinstance(segment, dict):
        head, uid = segment.get("headUuid"), segment.get("tailUuid")
        found: set[str] = set()
        while isinstance(uid, str) and uid in by_uuid and uid not in found:
            found.add(uid)
            if uid == head:
                return found
            uid = parent.get(uid)
        return None
    return set()
