"""Sealed records copied into PostgreSQL as they are: the database side of
``vigil migrate --to-cluster`` (:mod:`daemon.ops.migrate` reads the files).

A record is copied byte for byte: the line the file journal holds (without its
newline) becomes ``events.line`` or ``transcripts.line``, so its associated data
(stream, sequence number, key id) is the one it was sealed with, and the database
never sees plaintext. One stream (a conversation's event log, or one transcript
stream) is copied in one transaction:

* the table holds no record of it: every record is inserted, then the lines are read
  back and compared (:meth:`Importer.read_back`);
* it holds exactly the file's records: nothing is written (``skipped``), so a second
  run, or a run after an interruption, does only what is left;
* it holds anything else (another vigil wrote there, or the file changed since):
  :class:`StreamDiffers` names the first sequence number that differs, and nothing is
  written.

Fencing: a conversation's records and its transcripts are written under the
conversation's lease, taken by the importer's own node name (``Leases``; a live
cluster node holding it refuses the import with ``LeaseHeld``), so a node started
during the import cannot write beside it. The lease is released at once afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, LiteralString

import psycopg

from daemon.cluster.db import Connection, Database
from daemon.cluster.errors import RecordCorruptError
from daemon.cluster.leases import Lease
from daemon.cluster.transcripts import _tag, stream_digest
from daemon.errors import OwnershipLost, VigilError
from daemon.journal.framing import FrameError, open_line
from daemon.journal.keyring import Keyring

__all__ = [
    "Importer",
    "Outcome",
    "SealedRecord",
    "StreamDiffers",
    "TranscriptKey",
    "check_read_back",
]

Outcome = Literal["imported", "skipped", "missing"]
_FENCE = "SELECT 1 FROM leases WHERE conversation = %s AND node = %s AND epoch = %s FOR SHARE"


@dataclass(frozen=True)
class SealedRecord:
    seq: int
    key_id: str
    line: bytes  # the sealed line, without its newline


@dataclass(frozen=True)
class TranscriptKey:
    """What ``transcript_streams`` indexes a stream by (from its sealed key record)."""

    project_key: str
    session_id: str
    subpath: str | None
    summary_seq: int | None
    updated_at: datetime


class StreamDiffers(VigilError):
    """The database already holds other records for a stream than its file."""

    exit_code = 13

    def __init__(self, where: str, seq: int, detail: str) -> None:
        self.where = where
        self.seq = seq
        self.detail = detail
        super().__init__(
            f"{where}: the database already holds different records (sequence {seq}: "
            f"{detail}); nothing was written for it. Was a cluster node started before the "
            "migration? Compare with `vigil history`, or migrate into an empty database"
        )


class Importer:
    """Copies sealed streams into the database ``db`` (autocommit; see the module doc)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def conversation(
        self, name: str, records: Sequence[SealedRecord], lease: Lease | None, *, write: bool
    ) -> Outcome:
        """Copy conversation ``name``'s event log under ``lease`` (held for it). With
        ``write`` false only compare: ``skipped`` when equal, ``missing`` when the
        database has none of it (a live node holds the lease: nothing may be written)."""

        def insert(conn: Connection) -> None:
            conn.execute(
                "INSERT INTO conversations (conversation) VALUES (%s) ON CONFLICT DO NOTHING",
                (name,),
            )
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO events (conversation, seq, key_id, line) VALUES (%s, %s, %s, %s)",
                    [(name, r.seq, r.key_id, r.line) for r in records],
                )

        return self._copy(
            f"{self.db.where} events/{name}",
            "SELECT seq, line FROM events WHERE conversation = %s ORDER BY seq",
            name,
            records,
            lease,
            insert if write else None,
        )

    def transcript(
        self,
        digest: str,
        key: TranscriptKey,
        conversation: str,
        records: Sequence[SealedRecord],
        lease: Lease | None,
        *,
        write: bool,
    ) -> Outcome:
        """Copy one transcript stream (its file is ``<digest>.jsonl``), owned by
        ``conversation``, under ``lease`` (None: a session of no conversation, written
        unfenced); ``write`` as for :meth:`conversation`."""
        main = stream_digest((key.project_key, key.session_id, None))
        last_summary = key.summary_seq

        def insert(conn: Connection) -> None:
            conn.execute(
                "INSERT INTO transcript_streams (stream, main_stream, project, session,"
                " is_main, conversation, summary_seq, updated_at)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (stream) DO UPDATE SET summary_seq = EXCLUDED.summary_seq,"
                " updated_at = EXCLUDED.updated_at",
                (
                    digest,
                    main,
                    _tag("project", key.project_key),
                    _tag("session", key.session_id),
                    key.subpath is None,
                    conversation,
                    last_summary,
                    key.updated_at,
                ),
            )
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO transcripts (stream, seq, key_id, line) VALUES (%s, %s, %s, %s)",
                    [(digest, r.seq, r.key_id, r.line) for r in records],
                )

        return self._copy(
            f"{self.db.where} transcripts/{digest}",
            "SELECT seq, line FROM transcripts WHERE stream = %s ORDER BY seq",
            digest,
            records,
            lease,
            insert if write else None,
        )

    def read_back(self, table: Literal["events", "transcripts"], stream: str) -> list[bytes]:
        """Every stored line of ``stream``, in sequence order."""
        sql: LiteralString
        if table == "events":
            sql = "SELECT line FROM events WHERE conversation = %s ORDER BY seq"
        else:
            sql = "SELECT line FROM transcripts WHERE stream = %s ORDER BY seq"
        try:
            rows = self.db.connection().execute(sql, (stream,)).fetchall()
        except psycopg.Error as exc:
            self.db.discard()
            raise self.db.unavailable(exc) from None
        return [bytes(r[0]) for r in rows]

    # --- internals -------------------------------------------------------------------

    def _copy(  # noqa: PLR0917  # one private call shape for both tables
        self,
        where: str,
        select: LiteralString,
        stream: str,
        records: Sequence[SealedRecord],
        lease: Lease | None,
        write: Callable[[Connection], None] | None,
    ) -> Outcome:
        try:
            conn = self.db.connection()
            with conn.transaction():
                if lease is not None:
                    fence = (lease.conversation, lease.node, lease.epoch)
                    if conn.execute(_FENCE, fence).rowcount == 0:
                        raise OwnershipLost(lease.conversation, lease.node, lease.epoch, None)
                stored = [(int(s), bytes(line)) for s, line in conn.execute(select, (stream,))]
                if stored:
                    _check_equal(where, stored, records)
                    return "skipped"
                if write is None:
                    return "missing"
                if records:
                    write(conn)
        except psycopg.Error as exc:
            self.db.discard()
            raise self.db.unavailable(exc) from None
        return "imported"


def _check_equal(
    where: str, stored: list[tuple[int, bytes]], records: Sequence[SealedRecord]
) -> None:
    for (seq, line), record in zip(stored, records, strict=False):
        if seq != record.seq:
            raise StreamDiffers(where, record.seq, f"the database's record is {seq}")
        if line != record.line:
            raise StreamDiffers(where, seq, "the sealed record is not the file's")
    if len(stored) != len(records):
        first = min(len(stored), len(records)) + 1
        raise StreamDiffers(
            where, first, f"the database holds {len(stored)} records, the file {len(records)}"
        )


def check_read_back(
    where: str,
    stream_id: str,
    keyring: Keyring,
    stored: list[bytes],
    records: Sequence[SealedRecord],
) -> None:
    """Every stored line authenticates as ``stream_id`` at its sequence number and is
    byte for byte the file's record; raises :class:`RecordCorruptError` or
    :class:`StreamDiffers`."""
    if len(stored) != len(records):
        raise StreamDiffers(where, min(len(stored), len(records)) + 1, "read back short")
    for line, record in zip(stored, records, strict=True):
        try:
            frame = open_line(keyring, stream_id, line)
        except FrameError as err:
            raise RecordCorruptError(where, record.seq, f"read back: {err}") from None
        if frame.seq != record.seq:
            raise RecordCorruptError(where, record.seq, f"read back as sequence {frame.seq}")
        if line != record.line:
            raise StreamDiffers(where, record.seq, "read back differs from the file")
