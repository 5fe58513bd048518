"""Errors of the cluster backends (they may move into :mod:`daemon.errors` later).

Each carries structured fields and builds its own message; a database is always
named by its redacted location (``postgresql://user@host:port/db``), never by a DSN
that could hold a password.
"""

from __future__ import annotations

from datetime import datetime

from daemon.errors import JournalCorruptError, VigilError


class DatabaseUnavailable(VigilError):
    """PostgreSQL could not be reached or refused the session (not a write failure)."""

    exit_code = 5

    def __init__(self, where: str, code: str, detail: str) -> None:
        self.where = where
        self.code = code
        self.detail = detail
        super().__init__(f"database {where}: unavailable ({code}): {detail}")


class SchemaVersionError(VigilError):
    """The database holds a schema this build does not know (written by a newer vigil)."""

    exit_code = 4

    def __init__(self, where: str, found: int, supported: int) -> None:
        self.where = where
        self.found = found
        self.supported = supported
        super().__init__(
            f"database {where}: schema version {found} was written by a newer vigil; this "
            f"vigil knows versions up to {supported}. Nothing was changed; upgrade vigil on "
            "this node to join the cluster"
        )


class LeaseHeld(VigilError):
    """Another live node holds a conversation's lease: this node may not take it yet."""

    exit_code = 12

    def __init__(self, conversation: str, node: str, owner: str, expires_at: datetime) -> None:
        self.conversation = conversation
        self.node = node
        self.owner = owner
        self.expires_at = expires_at
        super().__init__(
            f"conversation {conversation!r}: node {owner} holds its lease until "
            f"{expires_at.isoformat()}; node {node} cannot take it before that"
        )


class UnboundSession(VigilError):
    """A transcript write for an SDK session no conversation of this node is bound to."""

    exit_code = 12

    def __init__(self, session_id: str, node: str) -> None:
        self.session_id = session_id
        self.node = node
        super().__init__(
            f"transcript of session {session_id!r}: no conversation of node {node} is bound "
            "to it, so its writes cannot be fenced; nothing was written"
        )


class RecordCorruptError(JournalCorruptError):
    """A stored record fails to authenticate, or the sequence has a gap: never skipped.

    A :class:`~daemon.errors.JournalCorruptError` (callers branch on that type) whose
    ``path`` is the record's location in the database.
    """

    def __init__(self, where: str, seq: int, problem: str) -> None:
        # A database location, not a file: daemon.errors should take Path | str here.
        super().__init__(where, seq, seq, problem)
        self.where = where
        # The file journal's advice (restore the file) does not fit a database row.
        self.args = (
            f"{where}: sequence {seq}: {problem}. This is corruption or tampering in the "
            "database; nothing was changed. Restore the database from a backup",
        )
