"""One journal folded from a fresh start into the mirror's rows (no database needed).

A full rebuild folds each conversation here, in worker processes or in-process, and
the mirror only inserts the rows (:class:`BulkLoad`, inside
:meth:`daemon.mirror.db.Mirror.bulk_load`). The rows
are those :func:`daemon.mirror.fold.fold_event` leaves in a fresh ``ConvState`` after
every record, the same rows ``Mirror.replay`` writes (tested against it). Kept free of
the daemon's heavier imports: worker processes import this module and little else.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from itertools import islice
from pathlib import Path
from typing import Any, NamedTuple

from daemon.journal.bulk import NotPlain, read_payloads
from daemon.journal.framing import decode_payload
from daemon.journal.keyring import Keyring
from daemon.journal.scan import scan
from daemon.mirror.fold import fold_event
from daemon.mirror.schema import (
    CONVERSATION_INSERT,
    DELIVERY_INSERT,
    SKIP_INSERT,
    TOOL_CALL_INSERT,
    TURN_INSERT,
)
from daemon.mirror.state import ConvState, DeliveryState, ToolState, TurnState

Row = tuple[Any, ...]


class ConvRows(NamedTuple):
    """A conversation's rows, ready to insert: its ``conversations`` row (None for an
    empty journal, which has no rows), then ``turns``, ``tool_calls``, ``skips`` and
    ``deliveries`` rows in the orders of ``mirror_schema``'s insert statements."""

    name: str
    records: int
    conversation: Row | None
    turns: list[Row]
    tool_calls: list[Row]
    skips: list[Row]
    deliveries: list[Row]


class _NoRows:
    """A conversation folded from a fresh start has written no rows to read back."""

    def turn(self, conversation: str, turn: int) -> TurnState | None:
        return None

    def tool(self, conversation: str, tool_use_id: str) -> ToolState | None:
        return None

    def delivery(self, conversation: str, delivery: str) -> DeliveryState | None:
        return None


def fold_journal(path: Path, name: str, keyring: Keyring, limit: int | None = None) -> ConvRows:
    """Every record of ``path`` (those up to sequence ``limit``, when given) folded.

    Reads with ``journal_bulk`` and, when the file is not plain records, again with
    ``journal.scan``: a torn tail is left out, any other damage raises its error.
    Every record is authenticated, also those after ``limit``.
    """
    try:
        fold = _Fold(name, limit)
        for chunk in read_payloads(path, name, keyring):
            fold.add(chunk)
    except NotPlain:
        fold = _Fold(name, limit)
        scan(path, name, keyring, lambda fr: fold.add([fr.payload]))
    return fold.rows()


class _Fold:
    """A conversation folded from a fresh start, a chunk of payloads at a time."""

    def __init__(self, name: str, limit: int | None) -> None:
        self.state = ConvState(name)
        self.limit = limit
        self.records = 0  # folded, at most ``limit``
        self._loader = _NoRows()

    def add(self, payloads: Iterable[bytes]) -> None:
        state, loader = self.state, self._loader
        seq = self.records
        if self.limit is not None:
            payloads = islice(payloads, max(0, self.limit - seq))
        for payload in payloads:
            seq += 1
            fold_event(state, seq, decode_payload(payload), loader)
        self.records = seq

    def rows(self) -> ConvRows:
        state, name = self.state, self.state.name
        if not self.records:  # an empty journal has no rows, live or rebuilt
            return ConvRows(name, 0, None, [], [], [], [])
        state.last_seq = self.records
        return ConvRows(
            name,
            self.records,
            state.row(),
            [t.row(name) for t in state.turns.values()],
            [tool.row(name) for tool in state.tools.values()],
            list(state.skips),
            [d.row(name) for d in state.deliveries.values()],
        )


class BulkLoad:
    """Inserts a whole conversation's rows at a time (see :meth:`Mirror.bulk_load`)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def add(self, rows: ConvRows) -> None:
        """Insert one conversation's rows: it must not have been added before."""
        if rows.conversation is None:
            return  # an empty journal has no rows
        db = self._db
        db.execute(CONVERSATION_INSERT, rows.conversation)
        db.executemany(TURN_INSERT, rows.turns)
        if rows.tool_calls:
            db.executemany(TOOL_CALL_INSERT, rows.tool_calls)
        if rows.skips:
            db.executemany(SKIP_INSERT, rows.skips)
        if rows.deliveries:
            db.executemany(DELIVERY_INSERT, rows.deliveries)
