"""Start-up checkpoints: a conversation's folded state at one record, sealed.

A checkpoint lets start-up read each journal from where its checkpoint ends instead of
from its first record. It is derived (a full fold of the journal gives the same state),
so a wrong, stale, foreign, missing or unreadable checkpoint only costs a full read;
it never refuses a start. One file per conversation, ``state_dir/checkpoints/<name>.ckpt``,
one JSON line (format ``vigil-checkpoint``)::

    {"format":"vigil-checkpoint","v":1,"c":"inbox","s":812,"k":"3f9a0c1e","f":"<fold>",
     "n":"<base64 nonce>","d":"<base64 ciphertext>"}

``s`` is the last journal sequence it covers, ``k`` the key it is sealed with (the
keyring's current key, AES-256-GCM like journal records), ``f`` the fingerprint of the
fold that made it (:data:`FOLD`; another version of vigil folds differently, so its
checkpoints are not used). The associated data binds the format version, conversation,
sequence, key id and fold: a checkpoint renamed to another conversation or edited does
not open. The sealed payload holds the anchor (:class:`Anchor`: where the covered
records end in the journal and a hash of the last covered line) and the plain-dict
forms of :class:`~daemon.journal.conversation.ConversationState` and
:class:`~jobs.ledger.JobLedger`. It holds conversation text (the open turn's prompt),
so it is sealed like the journal and written owner-only (0600).

Before use, :func:`check_anchor` proves the checkpoint describes this journal: the
file is at least ``offset`` bytes long and the line that ends there is the covered
record (its sequence and the SHA-256 of its bytes). A journal rewritten (re-encrypted,
restored from a backup, cut shorter) fails the check.
"""

from __future__ import annotations

import binascii
import hashlib
import json
import os
import re
from dataclasses import dataclass, fields
from enum import StrEnum
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag

from daemon.fsutil import write_file_atomically
from daemon.journal.conversation import ConversationState
from daemon.journal.framing import NONCE_BYTES
from daemon.journal.keyring import Keyring
from jobs.ledger import Failure, JobLedger, OpenDelivery, QueuedMessage
from jobs.pause import Pause

__all__ = [
    "CHECKPOINT_SUFFIX",
    "FOLD",
    "Anchor",
    "Checkpoint",
    "CheckpointUnusable",
    "Unusable",
    "anchor_at",
    "check_anchor",
    "checkpoint_path",
    "open_checkpoint",
    "read_checkpoint",
    "seal_checkpoint",
    "write_checkpoint",
]

CHECKPOINT_FORMAT = "vigil-checkpoint"
CHECKPOINT_VERSION = 1
CHECKPOINT_SUFFIX = ".ckpt"
# Bump when the fold of ConversationState or JobLedger changes meaning without a change
# of their fields (new fields change the fingerprint on their own).
FOLD_VERSION = 1
_TAIL_READ = 1 << 16  # the last covered line is looked for in blocks of this size


def _fold_fingerprint() -> str:
    parts = [str(FOLD_VERSION)]
    nested = sorted({kind for _, kind in ConversationState.NESTED}, key=lambda k: k.__name__)
    ledger_parts = (JobLedger, OpenDelivery, Failure, QueuedMessage, Pause)
    for cls in (ConversationState, *nested, *ledger_parts):
        parts.append(cls.__name__ + ":" + ",".join(f.name for f in fields(cls)))
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


#: The fingerprint of this version's fold: a checkpoint made by another is not used.
FOLD = _fold_fingerprint()


class Unusable(StrEnum):
    """Why a checkpoint was not used (start-up then reads the whole journal)."""

    MISSING = "missing"
    UNREADABLE = "unreadable"  # not a checkpoint file, or damaged
    FOREIGN = "foreign"  # another conversation's, or sealed with a key not in the keyring
    OTHER_VERSION = "other version"  # another format or fold
    STALE = "stale"  # does not match the journal (rewritten, cut, restored)


@dataclass(frozen=True)
class CheckpointUnusable(Exception):  # a reason to read in full, not an error
    name: str
    reason: Unusable
    detail: str

    def __str__(self) -> str:
        return f"checkpoint of {self.name!r} {self.reason.value}: {self.detail}"


@dataclass(frozen=True)
class Anchor:
    """Where a checkpoint ends in its journal: after record ``seq``, at byte ``offset``;
    that record's line starts at ``line_start`` and has SHA-256 ``line_hash``."""

    seq: int
    offset: int
    line_start: int
    line_hash: str


@dataclass(frozen=True)
class Checkpoint:
    name: str
    anchor: Anchor
    state: dict[str, Any]  # ConversationState.to_dict()
    ledger: dict[str, Any]  # JobLedger.to_dict()

    def conversation_state(self) -> ConversationState:
        return ConversationState.from_dict(self.state)

    def job_ledger(self) -> JobLedger:
        return JobLedger.from_dict(self.ledger)


def checkpoint_path(directory: Path, name: str) -> Path:
    return directory / f"{name}{CHECKPOINT_SUFFIX}"


def _aad(version: int, name: str, seq: int, key_id: str, fold: str) -> bytes:
    return f"vigil-checkpoint\x00{version}\x00{name}\x00{seq}\x00{key_id}\x00{fold}".encode()


def seal_checkpoint(keyring: Keyring, checkpoint: Checkpoint) -> bytes:
    """The checkpoint file's bytes, sealed with the keyring's current key."""
    a = checkpoint.anchor
    payload = {
        "offset": a.offset,
        "line_start": a.line_start,
        "line_hash": a.line_hash,
        "state": checkpoint.state,
        "ledger": checkpoint.ledger,
    }
    plain = json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    key_id = keyring.current_id
    nonce = os.urandom(NONCE_BYTES)
    aad = _aad(CHECKPOINT_VERSION, checkpoint.name, a.seq, key_id, FOLD)
    sealed = keyring.current_cipher().encrypt(nonce, plain.encode("utf-8"), aad)
    envelope = {
        "format": CHECKPOINT_FORMAT,
        "v": CHECKPOINT_VERSION,
        "c": checkpoint.name,
        "s": a.seq,
        "k": key_id,
        "f": FOLD,
        "n": binascii.b2a_base64(nonce, newline=False).decode("ascii"),
        "d": binascii.b2a_base64(sealed, newline=False).decode("ascii"),
    }
    return (json.dumps(envelope, separators=(",", ":")) + "\n").encode("ascii")


def open_checkpoint(keyring: Keyring, name: str, data: bytes) -> Checkpoint:
    """Authenticate and decode a checkpoint of conversation ``name``; raises
    :class:`CheckpointUnusable` saying why it cannot be used."""

    def unusable(reason: Unusable, detail: str) -> CheckpointUnusable:
        return CheckpointUnusable(name, reason, detail)

    try:
        env = json.loads(data)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise unusable(Unusable.UNREADABLE, "not JSON") from None
    if not isinstance(env, dict) or env.get("format") != CHECKPOINT_FORMAT:
        raise unusable(Unusable.UNREADABLE, "not a vigil checkpoint")
    if env.get("v") != CHECKPOINT_VERSION or env.get("f") != FOLD:
        raise unusable(
            Unusable.OTHER_VERSION,
            f"format {env.get('v')!r}, fold {env.get('f')!r}; this vigil writes "
            f"format {CHECKPOINT_VERSION}, fold {FOLD}",
        )
    stream, seq, key_id = env.get("c"), env.get("s"), env.get("k")
    if stream != name:
        raise unusable(Unusable.FOREIGN, f"it names conversation {stream!r}")
    if type(seq) is not int or seq < 1 or not isinstance(key_id, str):
        raise unusable(Unusable.UNREADABLE, "bad sequence or key id")
    cipher = keyring.cipher(key_id)
    if cipher is None:
        raise unusable(Unusable.FOREIGN, f"sealed with key id {key_id!r}, not in the keyring")
    try:
        nonce = binascii.a2b_base64(str(env.get("n")), strict_mode=True)
        sealed = binascii.a2b_base64(str(env.get("d")), strict_mode=True)
        plain = cipher.decrypt(nonce, sealed, _aad(CHECKPOINT_VERSION, name, seq, key_id, FOLD))
        body = json.loads(plain)
        anchor = Anchor(seq, body["offset"], body["line_start"], body["line_hash"])
        state, ledger = body["state"], body["ledger"]
    except InvalidTag:
        raise unusable(Unusable.FOREIGN, "does not authenticate (edited, or moved)") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise unusable(Unusable.UNREADABLE, f"{type(exc).__name__}: {exc}") from None
    if not (
        type(anchor.offset) is int
        and type(anchor.line_start) is int
        and 0 <= anchor.line_start < anchor.offset
        and isinstance(anchor.line_hash, str)
        and isinstance(state, dict)
        and isinstance(ledger, dict)
    ):
        raise unusable(Unusable.UNREADABLE, "malformed anchor or state")
    return Checkpoint(name, anchor, state, ledger)


def read_checkpoint(directory: Path, keyring: Keyring, name: str) -> Checkpoint:
    """The checkpoint of ``name`` under ``directory``, authenticated (not yet checked
    against the journal: :func:`check_anchor`)."""
    try:
        data = checkpoint_path(directory, name).read_bytes()
    except FileNotFoundError:
        raise CheckpointUnusable(name, Unusable.MISSING, "no checkpoint file") from None
    except OSError as exc:
        raise CheckpointUnusable(name, Unusable.UNREADABLE, str(exc)) from None
    return open_checkpoint(keyring, name, data)


def write_checkpoint(directory: Path, keyring: Keyring, checkpoint: Checkpoint) -> Path:
    """Seal and write crash-safely (temporary file, fsync, rename, fsync of the
    directory; mode 0600): a crash leaves the old checkpoint or the new one."""
    path = checkpoint_path(directory, checkpoint.name)
    write_file_atomically(path, seal_checkpoint(keyring, checkpoint), mode=0o600)
    return path


_SEQ = re.compile(rb',"s":([0-9]{1,19}),')


def _line_seq(line: bytes) -> int | None:
    match = _SEQ.search(line)
    return None if match is None else int(match.group(1))


def anchor_at(journal: Path, seq: int, offset: int) -> Anchor:
    """The anchor of record ``seq``, whose line ends at byte ``offset`` of ``journal``
    (a record boundary the caller knows: the journal's size after appending it).

    Raises ``ValueError`` when the line there is not record ``seq``.
    """
    with journal.open("rb") as f:
        start, line = _line_ending_at(f.fileno(), offset)
    if _line_seq(line) != seq:
        raise ValueError(f"{journal}: the line ending at byte {offset} is not record {seq}")
    return Anchor(seq, offset, start, hashlib.sha256(line).hexdigest())


def _line_ending_at(fd: int, offset: int) -> tuple[int, bytes]:
    """(start, bytes) of the line whose newline is the byte before ``offset``."""
    if offset < 1:
        raise ValueError("no line ends at the start of the file")
    end = offset - 1  # the newline's position
    chunks: list[bytes] = []
    pos = end
    while pos > 0:
        size = min(_TAIL_READ, pos)
        block = os.pread(fd, size, pos - size)
        if len(block) != size:
            raise ValueError("the journal is shorter than the checkpoint")
        cut = block.rfind(b"\n")
        if cut != -1:
            chunks.append(block[cut + 1 :])
            pos -= size - cut - 1
            break
        chunks.append(block)
        pos -= size
    line = b"".join(reversed(chunks)) + os.pread(fd, 1, end)
    if not line.endswith(b"\n"):
        raise ValueError(f"byte {offset} is not the end of a line")
    return pos, line


def check_anchor(journal: Path, name: str, anchor: Anchor) -> None:
    """Raise :class:`CheckpointUnusable` (stale) unless ``journal`` still holds, ending
    at ``anchor.offset``, the record the checkpoint covers."""

    def stale(detail: str) -> CheckpointUnusable:
        return CheckpointUnusable(name, Unusable.STALE, detail)

    length = anchor.offset - anchor.line_start
    try:
        with journal.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < anchor.offset:
                raise stale(f"the journal has {size} bytes; the checkpoint ends at {anchor.offset}")
            line = os.pread(f.fileno(), length, anchor.line_start)
            before = os.pread(f.fileno(), 1, anchor.line_start - 1) if anchor.line_start else b"\n"
    except OSError as exc:
        raise stale(str(exc)) from None
    if before != b"\n" or not line.endswith(b"\n") or len(line) != length:
        raise stale(f"no record ends at byte {anchor.offset}")
    if _line_seq(line) != anchor.seq or hashlib.sha256(line).hexdigest() != anchor.line_hash:
        raise stale(f"the record ending at byte {anchor.offset} is not the one it covers")
