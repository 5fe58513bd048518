"""One journal folded from a fresh start into the mirror's rows (no database needed).

A full rebuild folds each conversation here, in worker processes or in-process, and
the mirror only inserts the rows (:meth:`daemon.mirror.Mirror.bulk_load`). The rows
are those :func:`daemon.mirror_fold.fold_event` leaves in a fresh ``ConvState`` after
every record, the same rows ``Mirror.replay`` writes (tested against it). Kept free of
the daemon's heavier imports: worker processes import this module and little else.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

from daemon.framing import decode_payload
from daemon.journal import scan
from daemon.journal_bulk import NotPlain, read_payloads
from daemon.keyring import Keyring
from daemon.mirror_fold import ConvState, DeliveryState, ToolState, TurnState, fold_event

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
        return fold_payloads(name, _chunks(read_payloads(path, name, keyring), limit))
    except NotPlain:
        payloads: list[bytes] = []
        scan(path, name, keyring, lambda fr: payloads.append(fr.payload))
        return fold_payloads(name, [payloads[:limit]])


def _chunks(chunks: Iterable[list[bytes]], limit: int | None) -> Iterator[list[bytes]]:
    """``chunks`` cut after ``limit`` records, every chunk still read (authenticated)."""
    left = limit
    for chunk in chunks:
        if left is None:
            yield chunk
        elif left > 0:
            yield chunk[:left]
            left -= min(left, len(chunk))


def fold_payloads(name: str, chunks: Iterable[list[bytes]]) -> ConvRows:
    """The rows of conversation ``name`` whose record payloads, in sequence order from
    1, are ``chunks`` concatenated."""
    state = ConvState(name)
    loader = _NoRows()
    seq = 0
    for chunk in chunks:
        for payload in chunk:
            seq += 1
            fold_event(state, seq, decode_payload(payload), loader)
    state.last_seq = seq
    if not seq:  # an empty journal has no rows, live or rebuilt
        return ConvRows(name, 0, None, [], [], [], [])
    return ConvRows(
        name,
        seq,
        state.row(),
        [t.row(name) for t in state.turns.values()],
        [tool.row(name) for tool in state.tools.values()],
        list(state.skips),
        [d.row(name) for d in state.deliveries.values()],
    )
