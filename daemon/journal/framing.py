"""Journal record framing: one JSON object per line, the event sealed with AES-256-GCM.

A line looks like::

    {"v":1,"c":"inbox","s":12,"k":"3f9a0c1e","n":"<base64 nonce>","d":"<base64 ciphertext>"}

``v`` format version, ``c`` stream (conversation) ID, ``s`` sequence number (from 1,
no gaps), ``k`` key ID, ``n`` a random 96-bit nonce, ``d`` the ciphertext with its tag.
The associated data binds ``v``, ``c``, ``s`` and ``k``: a line edited, swapped,
duplicated or moved to another file fails to authenticate or to match its position.
Pure functions only: no I/O here.
"""

from __future__ import annotations

import binascii
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from cryptography.exceptions import InvalidTag

from daemon.journal.keyring import Keyring

FORMAT_VERSION = 1
NONCE_BYTES = 12
STREAM_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")

# Made once: json.dumps/loads with non-default arguments build a new coder per call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
_DECODER = json.JSONDecoder()
_DECODE = _DECODER.decode
# The C scanner ``decode`` calls (set by JSONDecoder.__init__; typeshed omits it).
_SCAN_ONCE: Callable[[str, int], tuple[Any, int]] = _DECODER.scan_once  # type: ignore[attr-defined]
# The last base64 character before "=" / "==" carries 2 / 4 unused bits; canonical
# encodings leave them zero. Other values decode to the same bytes, so a line edited
# that way would still authenticate: refuse them like any other edit.
_LAST_BEFORE_ONE_PAD = frozenset("AEIMQUYcgkosw048")
_LAST_BEFORE_TWO_PADS = frozenset("AQgw")


class FrameProblem(StrEnum):
    UNPARSEABLE = "unparseable"
    VERSION = "unsupported format version"
    UNKNOWN_KEY = "unknown key id"
    AUTH = "authentication failed"
    STREAM = "record belongs to another conversation"


@dataclass(frozen=True)
class FrameError(Exception):
    problem: FrameProblem
    detail: str
    seq: int | None = None
    key_id: str | None = None
    version: object = None

    def __str__(self) -> str:
        return f"{self.problem.value}: {self.detail}"


@dataclass(frozen=True)
class Frame:
    seq: int
    key_id: str
    payload: bytes


def check_stream_id(stream_id: str) -> str:
    if not STREAM_ID_RE.match(stream_id):
        raise ValueError(
            f"bad journal stream id {stream_id!r}: letters, digits, '_', '.', ':' and '-', "
            "at most 128 characters"
        )
    return stream_id


def associated_data(version: int, stream_id: str, seq: int, key_id: str) -> bytes:
    return f"vigil-journal\x00{version}\x00{stream_id}\x00{seq}\x00{key_id}".encode()


def associated_data_prefix(version: int, stream_id: str) -> bytes:
    """What every record's associated data of one stream starts with; the sequence
    and key id follow: ``prefix + b"12" + b"\\x00" + b"3f9a0c1e"``."""
    return f"vigil-journal\x00{version}\x00{stream_id}\x00".encode()


def seal(keyring: Keyring, stream_id: str, seq: int, payload: bytes) -> bytes:
    """The complete line (with its newline) for ``payload`` at ``seq``.

    ``stream_id`` must already satisfy :func:`check_stream_id` (it is embedded verbatim).
    """
    key_id = keyring.current_id
    nonce = os.urandom(NONCE_BYTES)
    aad = associated_data(FORMAT_VERSION, stream_id, seq, key_id)
    ct = keyring.current_cipher().encrypt(nonce, payload, aad)
    n = binascii.b2a_base64(nonce, newline=False).decode("ascii")
    d = binascii.b2a_base64(ct, newline=False).decode("ascii")
    return (
        f'{{"v":{FORMAT_VERSION},"c":"{stream_id}","s":{seq},"k":"{key_id}","n":"{n}","d":"{d}"}}\n'
    ).encode("ascii")


def seal_json(keyring: Keyring, stream_id: str, seq: int, event: dict[str, Any]) -> bytes:
    return seal(keyring, stream_id, seq, encode_payload(event))


def encode_payload(event: dict[str, Any]) -> bytes:
    return _ENCODER.encode(event).encode("utf-8")


# The exact shape ``seal`` writes. Lines that match it parse without the JSON decoder
# (about 4 us of the ~11 us a record costs to open); anything else takes the general
# path below, so both accept and reject the same lines.
_ENVELOPE = re.compile(
    rb'\{"v":(0|[1-9][0-9]{0,8}),"c":"([A-Za-z0-9_.:-]{1,128})","s":(0|[1-9][0-9]{0,18}),'
    rb'"k":"([0-9A-Za-z]{1,64})","n":"([A-Za-z0-9+/=]*)","d":"([A-Za-z0-9+/=]*)"\}'
)


def _envelope(line: bytes) -> tuple[object, object, object, object, object, object]:
    """(version, stream, seq, key id, nonce b64, ciphertext b64) of one line."""
    match = _ENVELOPE.fullmatch(line)
    if match is not None:
        v, c, s, k, n, d = match.groups()
        return int(v), c.decode(), int(s), k.decode(), n.decode(), d.decode()
    try:
        # Envelopes are ASCII. RecursionError: garbage such as "[[[[..." nests too deep.
        env = _DECODE(line.decode("ascii"))
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise FrameError(FrameProblem.UNPARSEABLE, "not a JSON object") from None
    if not isinstance(env, dict):
        raise FrameError(FrameProblem.UNPARSEABLE, "not a JSON object")
    return env.get("v"), env.get("c"), env.get("s"), env.get("k"), env.get("n"), env.get("d")


def open_line(keyring: Keyring, stream_id: str, line: bytes) -> Frame:
    """Authenticate and decrypt one line (without its newline) of stream ``stream_id``."""
    version, stream, seq, key_id, n, d = _envelope(line)
    if version != FORMAT_VERSION:
        if isinstance(version, int) and version > FORMAT_VERSION:
            raise FrameError(FrameProblem.VERSION, f"version {version}", version=version)
        raise FrameError(FrameProblem.UNPARSEABLE, f"bad version field {version!r}")
    if not (
        isinstance(seq, int)
        and not isinstance(seq, bool)
        and isinstance(key_id, str)
        and isinstance(stream, str)
        and isinstance(n, str)
        and isinstance(d, str)
    ):
        raise FrameError(FrameProblem.UNPARSEABLE, "missing or mistyped fields")
    if stream != stream_id:
        raise FrameError(
            FrameProblem.STREAM, f"it names {stream!r}, this file is {stream_id!r}", seq=seq
        )
    cipher = keyring.cipher(key_id)
    if cipher is None:
        raise FrameError(
            FrameProblem.UNKNOWN_KEY, f"key id {key_id!r} is not in the keyring", seq, key_id
        )
    try:
        # strict_mode rejects exactly what b64decode(validate=True) rejects, faster.
        nonce = binascii.a2b_base64(n, strict_mode=True)
        ct = binascii.a2b_base64(d, strict_mode=True)
    except ValueError:  # binascii.Error is a ValueError, as is non-ASCII text
        raise FrameError(FrameProblem.UNPARSEABLE, "bad base64", seq=seq) from None
    if not _canonical_base64(d):
        raise FrameError(FrameProblem.UNPARSEABLE, "non-canonical base64", seq=seq)
    if len(nonce) != NONCE_BYTES:
        raise FrameError(FrameProblem.UNPARSEABLE, "bad nonce length", seq=seq)
    try:
        payload = cipher.decrypt(nonce, ct, associated_data(version, stream_id, seq, key_id))
    except InvalidTag:
        raise FrameError(
            FrameProblem.AUTH, "the record was altered or sealed with another key", seq, key_id
        ) from None
    return Frame(seq, key_id, payload)


def _canonical_base64(text: str) -> bool:
    if text.endswith("=="):
        return text[-3:-2] in _LAST_BEFORE_TWO_PADS
    if text.endswith("="):
        return text[-2:-1] in _LAST_BEFORE_ONE_PAD
    return True


def decode_payload(payload: bytes) -> dict[str, Any]:
    text = payload.decode("utf-8")
    try:
        obj, end = _SCAN_ONCE(text, 0)
    except (ValueError, StopIteration):
        end = -1
    if end != len(text):  # whitespace around it, or not JSON: as ``json.loads`` decides
        obj = _DECODE(text)
    if not isinstance(obj, dict):
        raise ValueError("journal payload is not a JSON object")
    return obj
