"""``vigil verify`` against a cluster: authenticate every record PostgreSQL holds.

Read-only, from any machine with the configuration, the key and the database. Every
row of ``events`` (stream: its conversation) and of ``transcripts`` (stream
``t:<digest>``) is opened with the key: its envelope must name its stream and its
sequence number, its key id must be the row's, it must authenticate, and each
stream's sequence numbers must run 1, 2, 3 ... without a gap; a transcript stream's
first record must be the key it is filed under. Problems are reported by stream (the
conversation, for transcripts the conversation that owns them) and sequence number;
the scan goes on past them. A cluster keeps no mirror, so there is none to compare.
Exit 8 (as for the files) on any problem.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, LiteralString

import psycopg

from daemon.cluster.db import Database
from daemon.cluster.transcripts import stream_digest
from daemon.config.model import Config
from daemon.journal.framing import FrameError, FrameProblem, decode_payload, open_line
from daemon.journal.keyring import Keyring

__all__ = ["ClusterVerifyReport", "verify_cluster"]

PAGE = 5000
MAX_FINDINGS_PER_STREAM = 20
STATEMENT_TIMEOUT_MS = 300_000
Kind = Literal["corrupt", "missing", "wrong_key", "newer_format"]
Table = Literal["events", "transcripts"]

_EVENTS: LiteralString = (
    "SELECT conversation, seq, key_id, line FROM events WHERE (conversation, seq) > (%s, %s)"
    " ORDER BY conversation, seq LIMIT %s"
)
_TRANSCRIPTS: LiteralString = (
    "SELECT stream, seq, key_id, line FROM transcripts WHERE (stream, seq) > (%s, %s)"
    " ORDER BY stream, seq LIMIT %s"
)


@dataclass(frozen=True)
class Finding:
    table: Table
    stream: str
    conversation: str
    seq: int
    kind: Kind
    detail: str

    def describe(self) -> str:
        what = self.stream if self.table == "events" else f"transcript {self.stream}"
        owner = f" ({self.conversation})" if self.table == "transcripts" else ""
        return f"{self.table}/{what}{owner}: sequence {self.seq}: {self.kind}: {self.detail}"

    def as_json(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "stream": self.stream,
            "conversation": self.conversation,
            "seq": self.seq,
            "kind": self.kind,
            "detail": self.detail,
        }


@dataclass
class StreamCheck:
    table: Table
    stream: str
    conversation: str
    records: int = 0
    last_seq: int = 0
    findings: list[Finding] = field(default_factory=list)

    def add(self, seq: int, kind: Kind, detail: str) -> None:
        if len(self.findings) < MAX_FINDINGS_PER_STREAM:
            finding = Finding(self.table, self.stream, self.conversation, seq, kind, detail)
            self.findings.append(finding)

    def as_json(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "stream": self.stream,
            "conversation": self.conversation,
            "records": self.records,
            "last_seq": self.last_seq,
            "findings": len(self.findings),
        }


@dataclass
class ClusterVerifyReport:
    database: str
    streams: list[StreamCheck] = field(default_factory=list)

    @property
    def findings(self) -> list[Finding]:
        return [f for s in self.streams for f in s.findings]

    @property
    def records(self) -> int:
        return sum(s.records for s in self.streams)

    @property
    def ok(self) -> bool:
        return not self.findings

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "database": self.database,
            "records": self.records,
            "streams": [s.as_json() for s in self.streams],
            "findings": [f.as_json() for f in self.findings],
            "mirror": None,
        }

    def render(self) -> str:
        events = [s for s in self.streams if s.table == "events"]
        bad = {(f.table, f.stream) for f in self.findings}
        lines = [
            f"database {self.database}: {len(events)} conversations, "
            f"{len(self.streams) - len(events)} transcript streams, {self.records} records "
            f"authenticated, {len(bad)} streams with problems"
        ]
        lines += [f"  {f.describe()}" for f in self.findings]
        lines.append("mirror: none (a cluster keeps its events in PostgreSQL)")
        lines.append("OK" if self.ok else "FAILED")
        return "\n".join(lines) + "\n"


def verify_cluster(
    config: Config, keyring: Keyring, environ: dict[str, str]
) -> ClusterVerifyReport:
    cluster = config.cluster
    if cluster is None:
        raise ValueError("not a cluster configuration")
    db = Database(
        cluster.database_url(environ),
        application_name=f"vigil {cluster.node} verify"[:63],
        synchronous_commit=False,
        statement_timeout_ms=STATEMENT_TIMEOUT_MS,
    )
    report = ClusterVerifyReport(db.where)
    try:
        conn = db.connection()
        names = [str(r[0]) for r in conn.execute("SELECT conversation FROM conversations")]
        owners: dict[str, str] = {
            str(s): str(c)
            for s, c in conn.execute("SELECT stream, conversation FROM transcript_streams")
        }
        checks: dict[tuple[Table, str], StreamCheck] = {
            ("events", n): StreamCheck("events", n, n) for n in names
        }
        for stream, owner in owners.items():
            checks["transcripts", stream] = StreamCheck("transcripts", stream, owner)
        tables: tuple[tuple[Table, LiteralString], ...] = (
            ("events", _EVENTS),
            ("transcripts", _TRANSCRIPTS),
        )
        for table, sql in tables:
            for stream, seq, key_id, line in _rows(db, sql):
                check = checks.get((table, stream))
                if check is None:  # events of a conversation with no row, or an orphan
                    owner = stream if table == "events" else owners.get(stream, "")
                    check = checks[table, stream] = StreamCheck(table, stream, owner)
                _check_record(check, keyring, seq, key_id, line)
    except psycopg.Error as exc:
        db.discard()
        raise db.unavailable(exc) from None
    finally:
        db.close()
    report.streams = sorted(checks.values(), key=lambda s: (s.table, s.conversation, s.stream))
    return report


def _rows(db: Database, sql: LiteralString) -> Iterator[tuple[str, int, str, bytes]]:
    after: tuple[str, int] = ("", 0)
    while True:
        rows = db.connection().execute(sql, (*after, PAGE)).fetchall()
        for stream, seq, key_id, line in rows:
            yield str(stream), int(seq), str(key_id), bytes(line)
        if len(rows) < PAGE:
            return
        after = (str(rows[-1][0]), int(rows[-1][1]))


def _check_record(check: StreamCheck, keyring: Keyring, seq: int, key_id: str, line: bytes) -> None:
    expected = check.last_seq + 1
    if seq != expected:
        check.add(expected, "missing", f"records {expected} to {seq - 1} are missing")
    check.last_seq = seq
    stream_id = check.stream if check.table == "events" else f"t:{check.stream}"
    try:
        frame = open_line(keyring, stream_id, line)
    except FrameError as err:
        kind: Kind = "corrupt"
        if err.problem is FrameProblem.UNKNOWN_KEY:
            kind = "wrong_key"
        elif err.problem is FrameProblem.VERSION:
            kind = "newer_format"
        check.add(seq, kind, str(err))
        return
    if frame.seq != seq:
        check.add(seq, "corrupt", f"the sealed record says sequence {frame.seq}")
        return
    if frame.key_id != key_id:
        check.add(seq, "corrupt", f"the row names key {key_id}, the record {frame.key_id}")
        return
    check.records += 1
    if check.table == "transcripts" and seq == 1:
        header = decode_payload(frame.payload)
        key = (header.get("project_key"), header.get("session_id"), header.get("subpath"))
        if header.get("kind") != "key" or stream_digest(key) != check.stream:  # type: ignore[arg-type]  # checked by the digest
            check.add(seq, "corrupt", "the first record is not the key this stream is filed under")
