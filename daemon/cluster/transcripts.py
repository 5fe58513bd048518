"""The SDK's ``SessionStore`` on PostgreSQL, sealed like the file store, fenced on the
conversation's lease.

Each SDK key ``(project_key, session_id, subpath)`` is a stream named by the same
digest :class:`daemon.agent.store.JournalSessionStore` gives its file, with the same
records, each a sealed line (stream id ``t:<digest>``) in ``transcripts``: seq 1
``{"kind": "key", ...}`` (the key itself: PostgreSQL sees only digests of it), then
one ``{"kind": "entries", ...}`` per ``append`` call and, for main keys, the SDK's
folded ``{"kind": "summary", ...}`` after it (``transcript_streams.summary_seq`` points
at the latest).

Contract (the SDK's, checked by ``run_session_store_conformance``): entries load back
deep-equal and in append order; appends are idempotent on an entry's ``uuid`` (known
uuids are skipped, and ``load`` drops repeats whatever the table holds); ``load`` of an
unknown key is ``None``; deleting a main key cascades to its subkeys; ``mtime`` is the
storage write time in epoch milliseconds.

Fencing: ``conversation_of(session_id)`` names the conversation a session belongs to
(the runtime binds each conversation's session; a session of none raises
:class:`~daemon.cluster.errors.UnboundSession`). Every write (``append``, ``delete``)
runs in one transaction that first share-locks that conversation's lease row at the
epoch this node holds (:class:`~daemon.cluster.leases.Leases`), so after a takeover
it writes nothing and raises :class:`~daemon.errors.OwnershipLost`.

Failures: the SDK logs a failed append, retries it and then drops the batch, so every
failure is also kept for :meth:`PgTranscriptStore.take_failure` (as in the file store):
``JournalWriteError`` (PostgreSQL refused or was unreachable: the transaction rolled
back), ``OwnershipLost``, ``UnboundSession``. A commit whose acknowledgement was lost
with the connection is found on the next append (the stream is read again), so its
entries with a uuid are not written twice.

Writes commit synchronously (one WAL flush per SDK batch, about one a turn), as the
file store fsyncs each append. The methods are ``async`` per the protocol but do
their I/O synchronously on the caller's thread, as the file store does.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, LiteralString

import psycopg

from daemon.cluster.db import Connection, Database
from daemon.cluster.errors import RecordCorruptError, UnboundSession
from daemon.cluster.leases import Leases
from daemon.errors import JournalWriteError, OwnershipLost
from daemon.journal.framing import FrameError, decode_payload, encode_payload, open_line, seal
from daemon.ports.transcripts import new_entries

if TYPE_CHECKING:  # the SDK is imported where it is used (about a second to import)
    from claude_agent_sdk.types import (
        SessionKey,
        SessionListSubkeysKey,
        SessionStoreEntry,
        SessionStoreListEntry,
        SessionSummaryEntry,
    )

    from daemon.journal.keyring import Keyring

__all__ = ["PgTranscriptStore"]

KeyTuple = tuple[str, str, str | None]
Failure = JournalWriteError | OwnershipLost | UnboundSession
_FENCE = "SELECT 1 FROM leases WHERE conversation = %s AND node = %s AND epoch = %s FOR SHARE"


def stream_digest(key: KeyTuple) -> str:
    """The stream name of an SDK key: the file store's file name, without its suffix."""
    return hashlib.sha256(json.dumps(list(key)).encode("utf-8")).hexdigest()[:32]


def _tag(kind: str, value: str) -> str:
    return hashlib.sha256(f"{kind}\x00{value}".encode()).hexdigest()[:32]


def _key_tuple(key: SessionKey | SessionListSubkeysKey) -> KeyTuple:
    subpath = key.get("subpath")
    return (key["project_key"], key["session_id"], subpath if isinstance(subpath, str) else None)


@dataclass
class _Cache:
    """What this store knows of a stream, read at the lease epoch ``epoch``."""

    epoch: int = -1
    uuids: set[str] = field(default_factory=set)
    summary: SessionSummaryEntry | None = None


class PgTranscriptStore:
    """An encrypted, fenced ``SessionStore`` (see the module docstring).

    ``db`` should commit synchronously and be this store's own connection; ``leases``
    is the node's (shared with its event-log store).
    """

    def __init__(
        self,
        db: Database,
        keyring: Keyring,
        leases: Leases,
        conversation_of: Callable[[str], str | None],
    ) -> None:
        self.db = db
        self.keyring = keyring
        self.leases = leases
        self.conversation_of = conversation_of
        self._caches: dict[str, _Cache] = {}
        self._failures: dict[str, Failure] = {}

    # --- SessionStore protocol -------------------------------------------------------

    async def append(self, key: SessionKey, entries: list[SessionStoreEntry]) -> None:
        if not entries:
            return
        try:
            self._append(_key_tuple(key), key, entries)
        except (JournalWriteError, OwnershipLost, UnboundSession) as exc:
            self._failures.setdefault(key["session_id"], exc)
            raise

    async def load(self, key: SessionKey) -> list[SessionStoreEntry] | None:
        records = self._records(_key_tuple(key))
        if records is None:
            return None
        out: list[SessionStoreEntry] = []
        seen: set[str] = set()
        for record in records:
            for entry in record.get("entries", ()) if record.get("kind") == "entries" else ():
                uid = entry.get("uuid")
                if isinstance(uid, str):
                    if uid in seen:
                        continue
                    seen.add(uid)
                out.append(entry)
        return out

    async def list_sessions(self, project_key: str) -> list[SessionStoreListEntry]:
        rows = self._query(
            "SELECT s.stream, (extract(epoch FROM s.updated_at) * 1000)::bigint, t.line"
            " FROM transcript_streams s"
            " JOIN transcripts t ON t.stream = s.stream AND t.seq = 1"
            " WHERE s.project = %s AND s.is_main",
            (_tag("project", project_key),),
        )
        out: list[SessionStoreListEntry] = []
        for stream, mtime, line in rows:
            header = self._header(stream, line)
            if header[0] == project_key:
                out.append({"session_id": header[1], "mtime": int(mtime)})
        return out

    async def list_session_summaries(self, project_key: str) -> list[SessionSummaryEntry]:
        rows = self._query(
            "SELECT s.stream, (extract(epoch FROM s.updated_at) * 1000)::bigint, h.line,"
            " m.seq, m.line FROM transcript_streams s"
            " JOIN transcripts h ON h.stream = s.stream AND h.seq = 1"
            " JOIN transcripts m ON m.stream = s.stream AND m.seq = s.summary_seq"
            " WHERE s.project = %s AND s.is_main",
            (_tag("project", project_key),),
        )
        out: list[SessionSummaryEntry] = []
        for stream, mtime, header_line, seq, line in rows:
            header = self._header(stream, header_line)
            if header[0] != project_key:
                continue
            record = decode_payload(self._open(stream, int(seq), bytes(line)))
            out.append({"session_id": header[1], "mtime": int(mtime), "data": record["data"]})
        return out

    async def delete(self, key: SessionKey) -> None:
        target = _key_tuple(key)
        if target[2] is None:  # the main transcript and every subkey of it
            sql: LiteralString = "DELETE FROM transcript_streams WHERE main_stream = %s"
        else:
            sql = "DELETE FROM transcript_streams WHERE stream = %s"
        doomed = stream_digest(target)
        self._fenced_write(target[1], lambda conn: conn.execute(sql, (doomed,)))
        self._caches.clear()  # rare: read the streams again at the next append

    async def list_subkeys(self, key: SessionListSubkeysKey) -> list[str]:
        target = _key_tuple(key)
        rows = self._query(
            "SELECT s.stream, 0, t.line FROM transcript_streams s"
            " JOIN transcripts t ON t.stream = s.stream AND t.seq = 1"
            " WHERE s.main_stream = %s AND NOT s.is_main",
            (stream_digest((target[0], target[1], None)),),
        )
        headers = [self._header(stream, line) for stream, _, line in rows]
        return sorted(h[2] for h in headers if h[:2] == target[:2] and h[2] is not None)

    # --- vigil's own queries -------------------------------------------------------------

    def load_whole_next(self, session_id: str) -> None:
        """Every ``load`` returns the whole transcript here (no resume view yet)."""
        del session_id

    def take_failure(self, session_id: str) -> Failure | None:
        """The first write for ``session_id`` that failed since the last call, if any
        (the SDK swallows them: a transcript that could not be stored fails the turn)."""
        return self._failures.pop(session_id, None)

    def has_session(self, session_id: str) -> bool:
        """Whether a main transcript for ``session_id`` exists (under any project key)."""
        return bool(
            self._query(
                "SELECT 1 FROM transcript_streams WHERE session = %s AND is_main LIMIT 1",
                (_tag("session", session_id),),
            )
        )

    # --- internals -------------------------------------------------------------------

    def _append(self, target: KeyTuple, key: SessionKey, entries: list[SessionStoreEntry]) -> None:
        digest = stream_digest(target)
        _, epoch = self._lease(target[1])
        cache = self._caches.get(digest)
        if cache is None or cache.epoch != epoch:
            cache = self._read_cache(target, epoch)  # first append, or after a takeover
        fresh, fresh_uuids = new_entries(entries, cache.uuids)
        if not fresh:
            return
        payloads = [encode_payload({"kind": "entries", "entries": fresh})]
        summary: SessionSummaryEntry | None = None
        if target[2] is None:
            from claude_agent_sdk import fold_session_summary  # noqa: PLC0415  # slow import

            summary = fold_session_summary(cache.summary, key, fresh)
            payloads.append(encode_payload({"kind": "summary", "data": summary["data"]}))

        def write(conn: Connection) -> None:
            self._write(conn, target, digest, payloads, has_summary=summary is not None)

        self._fenced_write(target[1], write)
        cache.uuids |= fresh_uuids  # only now: a failed batch's retry must not be skipped
        if summary is not None:
            cache.summary = summary

    def _write(
        self,
        conn: Connection,
        target: KeyTuple,
        digest: str,
        payloads: list[bytes],
        *,
        has_summary: bool,
    ) -> None:
        main = stream_digest((target[0], target[1], None))
        conversation = self.conversation_of(target[1]) or ""
        conn.execute(
            "INSERT INTO transcript_streams"
            " (stream, main_stream, project, session, is_main, conversation)"
            " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
            (
                digest,
                main,
                _tag("project", target[0]),
                _tag("session", target[1]),
                target[2] is None,
                conversation,
            ),
        )
        row = conn.execute(
            "SELECT coalesce(max(seq), 0) FROM transcripts WHERE stream = %s", (digest,)
        ).fetchone()
        last = int(row[0]) if row is not None else 0
        if last == 0:
            header = {
                "kind": "key",
                "project_key": target[0],
                "session_id": target[1],
                "subpath": target[2],
            }
            payloads = [encode_payload(header), *payloads]
        stream_id = f"t:{digest}"
        key_id = self.keyring.current_id
        rows = [
            (digest, last + i, key_id, seal(self.keyring, stream_id, last + i, p)[:-1])
            for i, p in enumerate(payloads, start=1)
        ]
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO transcripts (stream, seq, key_id, line) VALUES (%s, %s, %s, %s)",
                rows,
            )
        conn.execute(
            "UPDATE transcript_streams SET updated_at = clock_timestamp(),"
            " summary_seq = CASE WHEN %s THEN %s ELSE summary_seq END WHERE stream = %s",
            (has_summary, rows[-1][1], digest),
        )

    def _lease(self, session_id: str) -> tuple[str, int]:
        """The conversation ``session_id`` belongs to and this node's epoch for it."""
        conversation = self.conversation_of(session_id)
        if conversation is None:
            raise UnboundSession(session_id, self.leases.node)
        lease = self.leases.held(conversation)
        if lease is None:
            raise self.leases.lost(conversation, 0)
        return conversation, lease.epoch

    def _fenced_write(self, session_id: str, work: Callable[[Connection], object]) -> None:
        """``work`` in one transaction that first share-locks the session's lease row."""
        conversation, epoch = self._lease(session_id)
        try:
            conn = self.db.connection()
            with conn.transaction():
                fence = (conversation, self.leases.node, epoch)
                if conn.execute(_FENCE, fence).rowcount == 0:
                    raise self.leases.lost(conversation, epoch)
                work(conn)
        except psycopg.Error as exc:
            if self.db.lost(exc):
                self.db.discard()
                self._caches.clear()  # the commit may have landed: read the streams again
            code, detail = self.db.describe(exc)
            raise JournalWriteError(f"{self.db.where} transcripts", code, detail) from None

    def _read_cache(self, target: KeyTuple, epoch: int) -> _Cache:
        cache = _Cache(epoch)
        for record in self._records(target) or ():
            kind = record.get("kind")
            if kind == "entries":
                cache.uuids.update(
                    e["uuid"] for e in record["entries"] if isinstance(e.get("uuid"), str)
                )
            elif kind == "summary":
                cache.summary = {"session_id": target[1], "mtime": 0, "data": record["data"]}
        self._caches[stream_digest(target)] = cache
        return cache

    def _records(self, target: KeyTuple) -> list[dict[str, Any]] | None:
        """Every record of the stream of ``target``, authenticated, in order; ``None``
        when there is no such stream."""
        digest = stream_digest(target)
        rows = self._query(
            "SELECT seq, line FROM transcripts WHERE stream = %s ORDER BY seq", (digest,)
        )
        if not rows:
            return None
        records: list[dict[str, Any]] = []
        for expected, (seq, line) in enumerate(rows, start=1):
            if int(seq) != expected:
                raise RecordCorruptError(self._where(digest), expected, "the record is missing")
            records.append(decode_payload(self._open(digest, expected, bytes(line))))
        header = records[0]
        if (header.get("project_key"), header.get("session_id"), header.get("subpath")) != target:
            raise RecordCorruptError(self._where(digest), 1, "the stream names another key")
        return records

    def _header(self, digest: str, line: bytes) -> KeyTuple:
        header = decode_payload(self._open(digest, 1, bytes(line)))
        return (header["project_key"], header["session_id"], header.get("subpath"))

    def _open(self, digest: str, seq: int, line: bytes) -> bytes:
        try:
            frame = open_line(self.keyring, f"t:{digest}", line)
        except FrameError as err:
            raise RecordCorruptError(self._where(digest), seq, str(err)) from None
        if frame.seq != seq:
            raise RecordCorruptError(
                self._where(digest), seq, f"the sealed record says sequence {frame.seq}"
            )
        return frame.payload

    def _where(self, digest: str) -> str:
        return f"{self.db.where} transcripts/{digest}"

    def _query(self, sql: LiteralString, params: tuple[object, ...]) -> list[tuple[Any, ...]]:
        """A read: once more on a fresh connection when the connection was lost
        (PostgreSQL restarted), then ``DatabaseUnavailable``."""
        for attempt in (1, 2):
            try:
                return self.db.connection().execute(sql, params).fetchall()
            except psycopg.Error as exc:
                lost = self.db.lost(exc)
                if lost:
                    self.db.discard()
                    self._caches.clear()
                if not lost or attempt == 2:
                    raise self.db.unavailable(exc) from None
        raise AssertionError("unreachable")
