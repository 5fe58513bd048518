"""``vigil verify``: authenticate every journal record and check the mirror against them.

Read-only. Every journal under ``state_dir/conversations`` and ``state_dir/transcripts``
is scanned (each record authenticated and checked for its sequence); a torn tail,
corruption, a newer format or a key the keyring lacks is reported with file, line
and sequence number, and the scan goes on with the next file. The conversations are
replayed at the same time into a fresh in-memory mirror, whose rows are compared
with the live mirror's, row by row. While a daemon runs, each conversation is
compared up to the last record the live mirror has applied (it may lag by a few
records it has not flushed yet); with no daemon, the mirror must hold everything.

Each start-up checkpoint is compared with the same read's fold of its journal up to
the record it covers (:mod:`daemon.ops.checkpoints`); one that differs, does not match
the journal or has no journal is a warning with its fix, not a failure: it is derived.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from daemon.errors import (
    HeadsError,
    JournalCorruptError,
    JournalVersionError,
    VigilError,
    WrongKeyError,
)
from daemon.journal.file import JOURNAL_SUFFIX
from daemon.journal.framing import Frame, decode_payload
from daemon.journal.heads import Head, HeadsFile, payload_digest, scan_problems
from daemon.journal.keyring import Keyring
from daemon.journal.lock import daemon_running
from daemon.journal.logstore import conversation_names, journal_path
from daemon.journal.scan import INCOMPLETE_LAST_LINE, Visitor, scan
from daemon.layout import Layout
from daemon.mirror.database import MirrorError
from daemon.mirror.db import Mirror, Sink
from daemon.mirror.queries import DumpRow
from daemon.ops.checkpoints import CheckpointCheck, CheckpointProbe, orphan_checkpoints
from daemon.ops.verify_mirror import MirrorDifference, check_index, compare

FindingKind = Literal[
    "torn_tail",
    "corrupt",
    "newer_format",
    "wrong_key",
    "unreadable",
    # behind state_dir/heads (truncation, rollback), or heads itself unusable:
    "missing",
    "truncated",
    "replaced",
    "heads_unusable",
]
MAX_DIFFERENCES = 20


@dataclass(frozen=True)
class JournalFinding:
    path: str
    kind: FindingKind
    line: int | None
    seq: int | None
    detail: str

    def describe(self) -> str:
        where = ""
        if self.line is not None:
            where = f" line {self.line}"
        if self.seq is not None:
            where += f" (sequence {self.seq})"
        return f"{self.path}:{where} {self.kind.replace('_', ' ')}: {self.detail}"

    def as_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "kind": self.kind,
            "line": self.line,
            "seq": self.seq,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class JournalCheck:
    """One journal's scan. ``writing``: its last line was incomplete while a daemon
    ran, which is a record being appended (not counted, and not damage)."""

    path: str
    stream: str
    records: int
    last_seq: int
    finding: JournalFinding | None
    writing: bool = False

    def as_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "stream": self.stream,
            "records": self.records,
            "last_seq": self.last_seq,
            "writing": self.writing,
            "finding": self.finding.as_json() if self.finding else None,
        }


MirrorState = Literal["absent", "compared", "unusable"]


@dataclass
class VerifyReport:
    journals: list[JournalCheck] = field(default_factory=list)
    mirror_path: str = ""
    mirror_state: MirrorState = "absent"
    mirror_problem: str | None = None
    daemon_running: bool = False
    differences: list[MirrorDifference] = field(default_factory=list)
    differences_total: int = 0
    head_findings: list[JournalFinding] = field(default_factory=list)
    # Start-up checkpoints compared with a full fold: derived, so warnings, not failures.
    checkpoints: list[CheckpointCheck] = field(default_factory=list)

    @property
    def findings(self) -> list[JournalFinding]:
        found = [j.finding for j in self.journals if j.finding is not None]
        return found + self.head_findings

    @property
    def records(self) -> int:
        return sum(j.records for j in self.journals)

    @property
    def ok(self) -> bool:
        return not self.findings and self.mirror_problem is None and not self.differences_total

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "records": self.records,
            "journals": [j.as_json() for j in self.journals],
            "findings": [f.as_json() for f in self.findings],
            "mirror": {
                "path": self.mirror_path,
                "state": self.mirror_state,
                "problem": self.mirror_problem,
                "daemon_running": self.daemon_running,
                "differences_total": self.differences_total,
                "differences": [d.as_json() for d in self.differences],
            },
            "checkpoints": [c.as_json() for c in self.checkpoints],
        }

    def render(self) -> str:
        writing = sum(j.writing for j in self.journals)
        lines = [
            f"journals: {len(self.journals)} files, {self.records} records authenticated, "
            f"{len(self.findings)} with problems"
            + (f" ({writing} being written by the daemon, not counted)" if writing else "")
        ]
        lines += [f"  {f.describe()}" for f in self.findings]
        if self.mirror_state == "absent":
            lines.append(f"mirror: none at {self.mirror_path}; nothing to compare")
        else:
            lines.append(
                f"mirror: {self.mirror_path}: "
                + (
                    "equals a fresh rebuild"
                    if self.mirror_problem is None and not self.differences_total
                    else f"{self.differences_total} rows differ from a fresh rebuild"
                )
                + (" (daemon running: compared up to what it has applied)") * self.daemon_running
            )
        if self.mirror_problem:
            lines.append(f"  {self.mirror_problem}")
        lines += [f"  {d.describe()}" for d in self.differences]
        if self.differences_total > len(self.differences):
            lines.append(f"  … and {self.differences_total - len(self.differences)} more")
        if self.differences_total or self.mirror_problem:
            lines.append("  fix: `vigil rebuild` (the mirror is derived; never patch it)")
        warnings = [c for c in self.checkpoints if c.warning]
        lines.append(
            f"checkpoints: {len(self.checkpoints)}, "
            + (
                f"{len(warnings)} warnings (derived: not counted as damage)"
                if warnings
                else "all match"
            )
        )
        lines += [f"  warning: {c.describe()}" for c in warnings]
        lines.append("OK" if self.ok else "FAILED")
        return "\n".join(lines) + "\n"


def verify(
    layout: Layout,
    keyring: Keyring,
    mirror_path: Path,
    *,
    max_differences: int = MAX_DIFFERENCES,
) -> VerifyReport:
    report = VerifyReport(mirror_path=str(mirror_path))
    report.daemon_running = daemon_running(layout.state_dir)
    live: Mirror | None = None
    live_rows: list[DumpRow] = []
    upto: dict[str, int] | None = None
    if mirror_path.exists():
        try:
            live = Mirror.open(mirror_path, readonly=True)
            live_rows = live.dump()  # one read snapshot
            if report.daemon_running:
                upto = {r.key[0]: r.values[0] for r in live_rows if r.table == "conversations"}
        except (MirrorError, sqlite3.Error) as exc:
            report.mirror_state, report.mirror_problem = "unusable", str(exc)
        finally:
            if live is not None:
                live.db.close()
    rebuilt = Mirror.open(":memory:")
    names = conversation_names(layout.conversations)
    for name in names:
        path = journal_path(layout.conversations, name)
        limit = None if upto is None else upto.get(name, 0)
        probe = CheckpointProbe.open(layout.checkpoints, keyring, name)  # before the journal
        report.journals.append(
            _check_conversation(
                rebuilt, path, name, keyring, limit, live=report.daemon_running, probe=probe
            )
        )
        checked = probe.result(path)
        if checked is not None:
            report.checkpoints.append(checked)
    report.checkpoints += orphan_checkpoints(layout.checkpoints, names)
    for path in sorted(layout.transcripts.glob(f"*{JOURNAL_SUFFIX}")):
        stream = f"t:{path.name[: -len(JOURNAL_SUFFIX)]}"
        report.journals.append(check_journal(path, stream, keyring, live=report.daemon_running))
    report.head_findings = head_findings(layout.state_dir, keyring)
    if report.mirror_state == "unusable" or not mirror_path.exists():
        return report
    report.mirror_state = "compared"
    diffs = compare(live_rows, rebuilt.dump())
    report.differences_total = len(diffs)
    report.differences = diffs[:max_differences]
    problem = check_index(mirror_path)
    if problem is None:
        problem = _mode_problem(mirror_path)
    report.mirror_problem = problem
    return report


def head_findings(state_dir: Path, keyring: Keyring) -> list[JournalFinding]:
    """Journals behind what ``state_dir/heads`` committed to: removed records or files."""
    heads = HeadsFile(state_dir, keyring)
    try:
        committed = heads.load()
    except HeadsError as exc:
        return [JournalFinding(str(heads.path), "heads_unusable", None, None, exc.problem)]
    if committed is None:
        return []
    found: dict[str, Head | None] = {}
    damaged: set[str] = set()
    for key, head in committed.items():
        path = state_dir / key
        if not path.exists():
            found[key] = None
            continue
        name = path.name[: -len(JOURNAL_SUFFIX)]
        stream = name if key.startswith("conversations/") else f"t:{name}"
        at: list[str] = []

        def visit(frame: Frame, seq: int = head.seq, at: list[str] = at) -> None:
            if frame.seq == seq:
                at.append(payload_digest(frame.payload))

        try:
            result = scan(path, stream, keyring, visit)
        except VigilError:
            damaged.add(key)  # reported by the journal's own check
            continue
        found[key] = Head(result.last_seq, result.good_end, at[0] if at else "")
    committed = {k: h for k, h in committed.items() if k not in damaged}
    return [
        JournalFinding(str(state_dir / p.key), p.what, None, p.committed.seq, p.describe())
        for p in scan_problems(committed, found)
    ]


def _check_conversation(
    rebuilt: Mirror,
    path: Path,
    name: str,
    keyring: Keyring,
    limit: int | None,
    *,
    live: bool,
    probe: CheckpointProbe | None = None,
) -> JournalCheck:
    """Authenticate one conversation journal while replaying it into ``rebuilt`` (and
    folding it for ``probe``, the checkpoint's comparison)."""
    result: list[JournalCheck] = []

    def feed(sink: Sink) -> None:
        def visit(fr: Any) -> None:
            event = None
            if limit is None or fr.seq <= limit:
                event = decode_payload(fr.payload)
                sink(fr.seq, event)
            if probe is not None and probe.wants(fr.seq):
                probe.feed(fr.seq, event if event is not None else decode_payload(fr.payload))

        result.append(check_journal(path, name, keyring, visit, live=live))

    rebuilt.replay(name, feed)
    check = result[0]
    if check.finding is not None and check.finding.kind != "torn_tail":
        rebuilt.purge(name)  # as `rebuild` does: an unreadable journal is left out
    return check


def check_journal(
    path: Path, stream: str, keyring: Keyring, visit: Visitor | None = None, *, live: bool = False
) -> JournalCheck:
    """Scan one journal read-only; its problem, if any, becomes a finding.

    ``live``: a daemon is running, so an incomplete last line is a record it is
    appending right now (it writes whole lines; a torn one is cut off when it opens
    the journal), reported as ``writing`` rather than as a torn tail.
    """
    shown = str(path)
    try:
        res = scan(path, stream, keyring, visit)
    except JournalCorruptError as exc:
        return _failed(stream, JournalFinding(shown, "corrupt", exc.line, exc.seq, exc.problem))
    except JournalVersionError as exc:
        detail = (
            f"written by a newer vigil (format {exc.version!r}); this vigil reads formats "
            f"up to {exc.supported}"
        )
        return _failed(stream, JournalFinding(shown, "newer_format", exc.line, None, detail))
    except WrongKeyError as exc:
        detail = f"key id {exc.key_id!r} is not in the keyring {exc.keyring}"
        return _failed(stream, JournalFinding(shown, "wrong_key", None, None, detail))
    except (OSError, ValueError) as exc:  # unreadable file; undecodable payload
        return _failed(stream, JournalFinding(shown, "unreadable", None, None, str(exc)))
    finding = None
    if res.tail is not None and live and res.tail.reason == INCOMPLETE_LAST_LINE:
        return JournalCheck(shown, stream, res.records, res.last_seq, None, writing=True)
    if res.tail is not None:
        finding = JournalFinding(
            shown,
            "torn_tail",
            res.tail.line,
            None,
            f"{res.tail.reason} at byte {res.tail.offset} (a crash mid-write; the next "
            "start cuts it off and keeps a copy)",
        )
    return JournalCheck(shown, stream, res.records, res.last_seq, finding)


def _failed(stream: str, finding: JournalFinding) -> JournalCheck:
    return JournalCheck(finding.path, stream, 0, 0, finding)


def _mode_problem(path: Path) -> str | None:
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        return f"the mirror holds conversation text but its mode is {mode:04o}; expected 0600"
    return None
