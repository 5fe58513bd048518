"""The transcript-store port: the SDK's ``SessionStore`` protocol (append, load, list,
delete, subkeys; its contract is the SDK's, checked by
``claude_agent_sdk.testing.run_session_store_conformance``) plus what vigil asks of it.
Implementations: :class:`daemon.agent.store.JournalSessionStore` (files) and
:class:`daemon.cluster.transcripts.PgTranscriptStore` (PostgreSQL)."""

from __future__ import annotations

from typing import Any, Protocol

__all__ = ["TranscriptStore", "new_entries"]


class TranscriptStore(Protocol):
    """The SDK's ``SessionStore`` as vigil implements it (files, or PostgreSQL), plus
    the write failure the SDK swallowed for a session, if any."""

    def take_failure(self, session_id: str) -> Exception | None: ...

    def load_whole_next(self, session_id: str) -> None:
        """The next ``load`` of ``session_id`` returns the whole transcript (a resume
        cut at an entry that may lie before the last compaction)."""


def new_entries(entries: list[Any], known: set[str]) -> tuple[list[Any], set[str]]:
    """The entries of an append batch to store (appends are idempotent on uuid: one
    whose uuid is ``known``, or already earlier in the batch, is dropped) and their
    uuids. Entries without a uuid are always stored."""
    fresh: list[Any] = []
    fresh_uuids: set[str] = set()
    for entry in entries:
        uid = entry.get("uuid")
        if isinstance(uid, str):
            if uid in known or uid in fresh_uuids:
                continue
            fresh_uuids.add(uid)
        fresh.append(entry)
    return fresh, fresh_uuids
