"""``vigil migrate --to-cluster``: a single node's journals and transcripts into PostgreSQL.

Run with the configuration that has ``[cluster]`` (the same ``state_dir`` and key as
the single node's), with that node stopped. Every conversation journal
(``state_dir/conversations/*.jsonl``) and every transcript stream
(``state_dir/transcripts/*.jsonl``) is read and authenticated record by record, then
copied sealed as it is (:mod:`daemon.cluster.importer`: the same associated data,
conversation or stream, sequence number and key id), one stream per transaction, then
read back from PostgreSQL and checked record for record: every line authenticates at
its sequence number and is byte for byte the file's.

Idempotent and resumable: a stream the database already holds, equal, is skipped
(and checked again); one that differs is refused with the first sequence number that
differs, nothing written for it, and the others carry on. A torn last line of a file
(a crash mid-write the daemon never reopened) is not copied, as the daemon would have
cut it off, and is reported. The files are only read.

Each conversation's records and transcripts are written under its lease, taken as the
node :data:`MIGRATE_NODE` and released at once; a conversation whose lease a live
cluster node holds is compared only (skipped when equal, refused when not).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import psycopg

from daemon.cluster.db import Database
from daemon.cluster.errors import LeaseHeld, RecordCorruptError
from daemon.cluster.importer import (
    Importer,
    Outcome,
    SealedRecord,
    StreamDiffers,
    TranscriptKey,
    check_read_back,
)
from daemon.cluster.leases import Lease, Leases
from daemon.cluster.schema import migrate as migrate_schema
from daemon.cluster.transcripts import stream_digest
from daemon.config.model import Config
from daemon.errors import VigilError
from daemon.journal.file import JOURNAL_SUFFIX
from daemon.journal.framing import Frame, decode_payload
from daemon.journal.keyring import Keyring
from daemon.journal.lock import LOCK_NAME, daemon_running
from daemon.journal.logstore import conversation_names, journal_path
from daemon.journal.scan import scan
from daemon.layout import Layout

__all__ = [
    "MIGRATE_NODE",
    "MigrationReport",
    "NotACluster",
    "Progress",
    "SiteRunning",
    "StreamDiffers",
    "migrate_site",
    "read_sealed",
]

MIGRATE_NODE = "vigil-migrate"
STATEMENT_TIMEOUT_MS = 120_000
Status = Literal["imported", "skipped", "refused"]


class SiteRunning(VigilError):
    """The single node still runs on the state directory being migrated."""

    exit_code = 7

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        super().__init__(
            f"a vigil daemon is running on {state_dir} (it holds {state_dir / LOCK_NAME}); "
            "stop it (systemctl stop vigil) and run the migration again; nothing was written"
        )


class NotACluster(VigilError):
    exit_code = 2

    def __init__(self) -> None:
        super().__init__(
            "migrate --to-cluster needs the configuration with a [cluster] table (and the "
            "single node's state_dir and key); this one has none"
        )


@dataclass(frozen=True)
class SealedFile:
    records: list[SealedRecord]
    payloads: list[bytes]
    torn_tail: str | None  # why the last line was left out, if it was


def read_sealed(path: Path, stream_id: str, keyring: Keyring) -> SealedFile:
    """Every authenticated record of ``path`` with its sealed line as stored; raises
    as :func:`daemon.journal.scan.scan` does for damage before the tail."""
    frames: list[Frame] = []
    result = scan(path, stream_id, keyring, frames.append)
    with path.open("rb") as f:
        data = f.read(result.good_end)
    lines = data.split(b"\n")[:-1]
    if len(lines) != len(frames):  # the file changed under us: the daemon runs after all
        raise RecordCorruptError(str(path), len(frames), "the file changed while it was read")
    records = [
        SealedRecord(fr.seq, fr.key_id, line) for fr, line in zip(frames, lines, strict=True)
    ]
    tail = None if result.tail is None else f"line {result.tail.line}: {result.tail.reason}"
    return SealedFile(records, [fr.payload for fr in frames], tail)


@dataclass
class Item:
    kind: Literal["conversation", "transcript"]
    name: str  # the conversation, or the transcript stream's digest
    conversation: str
    records: int = 0
    status: Status = "refused"
    detail: str | None = None
    torn_tail: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "conversation": self.conversation,
            "records": self.records,
            "status": self.status,
            "detail": self.detail,
            "torn_tail": self.torn_tail,
        }


@dataclass
class MigrationReport:
    database: str
    state_dir: str
    items: list[Item] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(i.status != "refused" for i in self.items)

    def count(self, kind: str, status: str) -> int:
        return sum(1 for i in self.items if i.kind == kind and i.status == status)

    @property
    def records(self) -> int:
        return sum(i.records for i in self.items if i.status != "refused")

    def as_json(self) -> dict[str, Any]:
        totals = {
            kind: {s: self.count(kind, s) for s in ("imported", "skipped", "refused")}
            for kind in ("conversation", "transcript")
        }
        return {
            "database": self.database,
            "state_dir": self.state_dir,
            "ok": self.ok,
            "records_checked": self.records,
            "seconds": round(self.seconds, 3),
            "conversations": totals["conversation"],
            "transcripts": totals["transcript"],
            "items": [i.as_json() for i in self.items],
        }

    def render(self) -> str:
        out = []
        for i in self.items:
            what = (
                i.name
                if i.kind == "conversation"
                else f"transcript {i.name[:12]} ({i.conversation or '-'})"
            )
            line = f"{i.status:9} {what}: {i.records} records"
            if i.torn_tail:
                line += f" (torn last line left in the file: {i.torn_tail})"
            if i.detail:
                line += f"\n          {i.detail}"
            out.append(line)
        conv = {s: self.count("conversation", s) for s in ("imported", "skipped", "refused")}
        tr = {s: self.count("transcript", s) for s in ("imported", "skipped", "refused")}
        out.append(
            f"{self.state_dir} -> {self.database}: conversations {conv['imported']} imported, "
            f"{conv['skipped']} already there, {conv['refused']} refused; transcripts "
            f"{tr['imported']} imported, {tr['skipped']} already there, {tr['refused']} "
            f"refused; {self.records} records read back and checked in {self.seconds:.1f} s"
        )
        return "\n".join(out) + "\n"


@dataclass(frozen=True)
class Progress:
    done: int
    total: int
    records: int
    current: str


def migrate_site(
    config: Config,
    keyring: Keyring,
    *,
    environ: dict[str, str] | None = None,
    progress: Callable[[Progress], None] | None = None,
) -> MigrationReport:
    """Import the site's files into the cluster's database (see the module docstring)."""
    cluster = config.cluster
    if cluster is None:
        raise NotACluster
    layout = Layout(config.daemon.state_dir, config.daemon.runtime_dir)
    if daemon_running(layout.state_dir):
        raise SiteRunning(layout.state_dir)
    started = datetime.now(UTC)
    db = Database(
        cluster.database_url(environ if environ is not None else dict(os.environ)),
        application_name="vigil migrate",
        statement_timeout_ms=STATEMENT_TIMEOUT_MS,
    )
    try:
        try:
            migrate_schema(db.connection(), db.where)
        except psycopg.Error as exc:
            db.discard()
            raise db.unavailable(exc) from None
        run = _Run(layout, keyring, db, Leases(db, MIGRATE_NODE, ttl=cluster.lease), progress)
        report = run.all()
    finally:
        db.close()
    report.seconds = (datetime.now(UTC) - started).total_seconds()
    return report


class _Run:
    def __init__(
        self,
        layout: Layout,
        keyring: Keyring,
        db: Database,
        leases: Leases,
        progress: Callable[[Progress], None] | None,
    ) -> None:
        self.layout = layout
        self.keyring = keyring
        self.importer = Importer(db)
        self.leases = leases
        self.progress = progress
        self.report = MigrationReport(db.where, str(layout.state_dir))
        self.sessions: dict[str, str] = {}  # SDK session id -> conversation

    def all(self) -> MigrationReport:
        names = conversation_names(self.layout.conversations)
        streams = sorted(self.layout.transcripts.glob(f"*{JOURNAL_SUFFIX}"))
        total = len(names) + len(streams)
        for name in names:
            self._tick(total, name)
            self.report.items.append(self._conversation(name))
        for path in streams:
            self._tick(total, f"transcript {path.stem[:12]}")
            self.report.items.append(self._transcript(path))
        self._tick(total, "")
        return self.report

    def _tick(self, total: int, current: str) -> None:
        if self.progress is not None:
            r = self.report
            self.progress(Progress(len(r.items), total, r.records, current))

    def _conversation(self, name: str) -> Item:
        item = Item("conversation", name, name)
        try:
            sealed = read_sealed(journal_path(self.layout.conversations, name), name, self.keyring)
            item.torn_tail = sealed.torn_tail
            for payload in sealed.payloads:
                event = decode_payload(payload)
                session = event.get("session_id")
                if isinstance(session, str):
                    self.sessions[session] = name
            item.records = len(sealed.records)

            def copy(lease: Lease | None, write: bool) -> Outcome:
                return self.importer.conversation(name, sealed.records, lease, write=write)

            item.status = self._under_lease(name, copy)
            stored = self.importer.read_back("events", name)
            check_read_back(self._where("events", name), name, self.keyring, stored, sealed.records)
        except VigilError as exc:
            item.status, item.detail = "refused", str(exc)
        return item

    def _transcript(self, path: Path) -> Item:
        digest = path.name[: -len(JOURNAL_SUFFIX)]
        item = Item("transcript", digest, "")
        stream_id = f"t:{digest}"
        try:
            sealed = read_sealed(path, stream_id, self.keyring)
            item.torn_tail = sealed.torn_tail
            item.records = len(sealed.records)
            key = self._key(path, digest, sealed)
            conversation = self.sessions.get(key.session_id, "")
            item.conversation = conversation

            def copy(lease: Lease | None, write: bool) -> Outcome:
                return self.importer.transcript(
                    digest, key, conversation, sealed.records, lease, write=write
                )

            item.status = self._under_lease(conversation, copy)
            stored = self.importer.read_back("transcripts", digest)
            where = self._where("transcripts", digest)
            check_read_back(where, stream_id, self.keyring, stored, sealed.records)
        except VigilError as exc:
            item.status, item.detail = "refused", str(exc)
        return item

    def _under_lease(
        self, conversation: str, copy: Callable[[Lease | None, bool], Outcome]
    ) -> Status:
        """``copy`` under ``conversation``'s lease (none for a stream of no
        conversation); compare only when a live node holds it."""
        if not conversation:
            outcome = copy(None, True)
        else:
            try:
                lease = self.leases.acquire(conversation)
            except LeaseHeld as held:
                outcome = copy(None, False)
                if outcome == "missing":
                    raise held from None
            else:
                try:
                    outcome = copy(lease, True)
                finally:
                    self.leases.release(conversation)
        return "skipped" if outcome == "skipped" else "imported"

    def _key(self, path: Path, digest: str, sealed: SealedFile) -> TranscriptKey:
        if not sealed.payloads:
            raise RecordCorruptError(str(path), 1, "the transcript has no key record")
        header = decode_payload(sealed.payloads[0])
        subpath = header.get("subpath")
        key = (str(header.get("project_key")), str(header.get("session_id")), subpath)
        if header.get("kind") != "key" or stream_digest(key) != digest:
            raise RecordCorruptError(str(path), 1, "the key record does not name this file")
        summary_seq = None
        for record, payload in zip(sealed.records, sealed.payloads, strict=True):
            if subpath is None and decode_payload(payload).get("kind") == "summary":
                summary_seq = record.seq
        mtime = datetime.fromtimestamp(path.stat().st_mtime, UTC)
        return TranscriptKey(key[0], key[1], subpath, summary_seq, mtime)

    def _where(self, table: str, stream: str) -> str:
        return f"{self.importer.db.where} {table}/{stream}"
