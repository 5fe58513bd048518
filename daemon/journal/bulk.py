"""Reading a whole journal fast, for rebuilds: many records per step, same checks.

:func:`read_payloads` authenticates and decrypts every record of a journal whose
every line is in the exact shape ``framing.seal`` writes, with sequences 1, 2, 3, ...
and keys of the keyring, a block of lines at a time (one regular expression over the
block instead of one parse per line). Each record is checked as ``framing.open_line``
checks it: its stream, sequence, key id, canonical base64, nonce length, and AES-GCM
with the same associated data, so nothing unauthenticated is ever returned.

Anything else (a torn tail, damage, a record out of sequence, an unknown key, another
format version, an envelope written another way) raises :class:`NotPlain`, and the
caller reads the file again with ``journal.scan``, which decides what it is and reports
it with its usual error. So both readers return the same records or the same error.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Iterator
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from daemon.journal.framing import FORMAT_VERSION, associated_data_prefix
from daemon.journal.keyring import Keyring

BLOCK_BYTES = 1 << 22  # lines are read about this many bytes at a time
# Padding only at the end, and the character before it with its unused bits zero:
# what ``framing._canonical_base64`` accepts (binascii checks the rest).
_PAD_ONE = frozenset(b"AEIMQUYcgkosw048")
_PAD_TWO = frozenset(b"AQgw")


class NotPlain(Exception):  # a signal to the caller, not an error
    """The journal is not entirely plain well-formed records: read it with ``scan``."""


# One whole line as ``seal`` writes it (``^`` and the newline: nothing else on it), for
# any stream (compiling a pattern per journal would cost more than reading it). The
# nonce is 12 bytes, so exactly 16 base64 characters without padding.
_LINE = re.compile(
    rb'^\{"v":%d,"c":"[A-Za-z0-9_.:-]{1,128}","s":([1-9][0-9]{0,18}),"k":"([0-9A-Za-z]{1,64})",'
    rb'"n":"([A-Za-z0-9+/]{16})","d":"([A-Za-z0-9+/]*={0,2})"\}\n' % FORMAT_VERSION,
    re.MULTILINE,
)


def read_payloads(path: Path, stream_id: str, keyring: Keyring) -> Iterator[list[bytes]]:
    """The payloads of every record of ``path`` in order, in lists of a block's records.

    Raises :class:`NotPlain` (perhaps after some lists were yielded) when the file is
    not entirely plain records; the caller then starts over with ``journal.scan``.
    """
    if not stream_id.isascii():
        raise NotPlain(stream_id)
    head = b'{"v":%d,"c":"%s","s":' % (FORMAT_VERSION, stream_id.encode("ascii"))
    prefix = associated_data_prefix(FORMAT_VERSION, stream_id)
    ciphers: dict[bytes, AESGCM] = {}
    for key_id in keyring.key_ids:
        cipher = keyring.cipher(key_id)
        if cipher is not None and key_id.isascii():
            ciphers[key_id.encode("ascii")] = cipher
    seq = 0
    rest = b""
    with path.open("rb") as f:
        while True:
            block = f.read(BLOCK_BYTES)
            if not block:
                break
            data = rest + block
            end = data.rfind(b"\n") + 1
            data, rest = data[:end], data[end:]
            payloads = _open_block(data, head, prefix, ciphers, seq)
            seq += len(payloads)
            yield payloads
    if rest:
        raise NotPlain("the last line is incomplete")


def _open_block(
    data: bytes, head: bytes, prefix: bytes, ciphers: dict[bytes, AESGCM], seq: int
) -> list[bytes]:
    """Every record of ``data`` (whole lines), the first one at ``seq + 1``; ``head``
    is how each line starts, up to its sequence."""
    lines = _LINE.findall(data)
    # Each match is one whole line (it starts a line and holds the only newline), so
    # as many matches as newlines means every line matched. "{" begins a line only,
    # so as many heads as lines means every line names this stream.
    if not len(lines) == data.count(b"\n") == data.count(head):
        raise NotPlain("a line is not a plain record of this stream")
    a2b = binascii.a2b_base64
    payloads: list[bytes] = []
    append = payloads.append
    try:
        for s, k, n, d in lines:
            seq += 1
            if int(s) != seq:
                raise NotPlain("out of sequence")
            if d[-1:] == b"=" and (
                d[-3] not in _PAD_TWO if d[-2:] == b"==" else d[-2] not in _PAD_ONE
            ):
                raise NotPlain("non-canonical base64")
            append(
                ciphers[k].decrypt(
                    a2b(n, strict_mode=True), a2b(d, strict_mode=True), prefix + s + b"\x00" + k
                )
            )
    except (KeyError, ValueError, IndexError, InvalidTag) as exc:
        raise NotPlain(type(exc).__name__) from None
    return payloads
