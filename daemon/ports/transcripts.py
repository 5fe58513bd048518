"""The transcript-store port: the SDK's ``SessionStore`` protocol (append, load, list,
delete, subkeys; its contract is the SDK's, checked by
``claude_agent_sdk.testing.run_session_store_conformance``) plus what vigil asks of it.
Implementations: :class:`daemon.agent.store.JournalSessionStore` (files) and
:class:`daemon.cluster.transcripts.PgTranscriptStore` (PostgreSQL)."""

from __future__ import annotations

from typing import Protocol

__all__ = ["TranscriptStore"]


class TranscriptStore(Protocol):
    """The SDK's ``SessionStore`` as vigil implements it (files, or PostgreSQL), plus
    the write failure the SDK swallowed for a session, if any."""

    def take_failure(self, session_id: str) -> Exception | None: ...

    def load_whole_next(self, session_id: str) -> None:
        """The next ``load`` of ``session_id`` returns the whole transcript (a resume
        cut at an entry that may lie before the last compaction)."""
