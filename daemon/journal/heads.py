"""A commitment to every journal's head, kept apart from the journals: truncation and
rollback are detected, not just damage.

A journal's records are sealed one by one, so deleting its last records, its last
whole turn or the whole file leaves nothing that fails to authenticate. ``state_dir/
heads`` remembers, for each journal (``conversations/<job>.jsonl`` and
``transcripts/<digest>.jsonl``), how far it is known to reach: its last sequence
number, its size in bytes and a digest of its last record's plaintext. The file is one
line sealed with the journal key (so it cannot be edited to match a truncated
journal), written atomically (temporary file, fsync, rename, fsync of the directory).

Crash consistency: the daemon commits a journal's head only after the journal itself
was synced (at turn boundaries), so after a crash a journal may be *ahead* of its
committed head, never behind it. A torn tail cut at start only removes bytes beyond
the last synced record. So: a journal shorter than its head (size, or sequence), a
journal missing, or one whose record at the committed sequence is not the committed
one, is truncation or rollback.

Checked at start (before anything is written: every committed journal must exist and
be at least as long as committed) and by ``vigil verify`` (every journal scanned:
sequence and digest too). With ``fsync = "never"`` nothing is committed (a power loss
could leave journals behind any commitment).

If journals were removed or restored on purpose, delete ``state_dir/heads``: the next
start commits to the journals as they are (and logs ``heads_created``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from daemon.errors import HeadsError
from daemon.fsutil import write_file_atomically
from daemon.journal.framing import FrameError, open_line, seal
from daemon.journal.keyring import Keyring

HEADS_NAME = "heads"
_STREAM = "vigil-heads"


def payload_digest(payload: bytes) -> str:
    """What a head commits to about its last record (its plaintext; stable across
    ``vigil key rotate --reencrypt``)."""
    return hashlib.sha256(payload).hexdigest()[:32]


@dataclass(frozen=True)
class Head:
    seq: int
    size: int
    digest: str

    def as_json(self) -> list[object]:
        return [self.seq, self.size, self.digest]


@dataclass(frozen=True)
class HeadProblem:
    """A journal behind its committed head: ``found`` is None when the file is gone."""

    key: str  # path relative to state_dir
    committed: Head
    found: Head | None
    what: Literal["missing", "truncated", "replaced"]

    def describe(self) -> str:
        c = self.committed
        if self.found is None:
            return f"{self.key}: missing; it was committed with {c.seq} records ({c.size} bytes)"
        if self.what == "replaced":
            return (
                f"{self.key}: its record {c.seq} is not the one committed; the file was "
                "replaced by another copy (rollback)"
            )
        f = self.found
        have = f"{f.seq} records, {f.size} bytes" if f.seq >= 0 else f"{f.size} bytes"
        return (
            f"{self.key}: holds {have}; it was committed with {c.seq} records ({c.size} "
            f"bytes): records were removed (truncation or a restored backup)"
        )


class HeadsFile:
    """``state_dir/heads``: load and save the sealed commitment."""

    def __init__(self, state_dir: Path, keyring: Keyring) -> None:
        self.state_dir = state_dir
        self.path = state_dir / HEADS_NAME
        self.keyring = keyring

    def load(self) -> dict[str, Head] | None:
        """The committed heads; None when there is no heads file. Raises
        :class:`HeadsError` for one that does not authenticate."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            frame = open_line(self.keyring, _STREAM, raw.rstrip(b"\n"))
            doc = json.loads(frame.payload)
            return {k: Head(int(v[0]), int(v[1]), str(v[2])) for k, v in doc["heads"].items()}
        except FrameError as exc:
            raise HeadsError(
                self.path, f"does not authenticate or parse ({exc})", key_id=exc.key_id
            ) from None
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise HeadsError(self.path, f"does not authenticate or parse ({exc})") from None

    def save(self, heads: Mapping[str, Head], *, fsync: bool = True) -> None:
        doc = {"heads": {k: h.as_json() for k, h in sorted(heads.items())}}
        payload = json.dumps(doc, separators=(",", ":")).encode("utf-8")
        line = seal(self.keyring, _STREAM, 1, payload)
        write_file_atomically(self.path, line, sync=fsync)


def stat_problems(state_dir: Path, committed: Mapping[str, Head]) -> list[HeadProblem]:
    """The start-up check, by size alone (no journal is read): every committed journal
    exists and is at least as long as its head."""
    problems = []
    for key, head in sorted(committed.items()):
        try:
            size = os.stat(state_dir / key).st_size
        except FileNotFoundError:
            problems.append(HeadProblem(key, head, None, "missing"))
            continue
        if size < head.size:
            problems.append(HeadProblem(key, head, Head(-1, size, ""), "truncated"))
    return problems


def scan_problems(
    committed: Mapping[str, Head], found: Mapping[str, Head | None]
) -> list[HeadProblem]:
    """The full check (``vigil verify``): ``found`` holds each journal's head as read
    (None: the file is gone) and, for a journal ahead of its head, the digest of its
    record at the committed sequence (``Head.digest``)."""
    problems = []
    for key, head in sorted(committed.items()):
        have = found.get(key)
        if have is None:
            problems.append(HeadProblem(key, head, None, "missing"))
        elif have.seq < head.seq or have.size < head.size:
            problems.append(HeadProblem(key, head, have, "truncated"))
        elif have.digest != head.digest:
            problems.append(HeadProblem(key, head, have, "replaced"))
    return problems
