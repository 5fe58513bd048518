"""The keyring: 256-bit AES-GCM keys with IDs, stored in an owner-only file.

File format (JSON, one object)::

    {"format": "vigil-keyring", "version": 1,
     "keys": [{"id": "3f9a0c1e", "created": "2026-11-21T13:00:00Z", "key": "<base64 32 bytes>"}]}

New records use the newest key (the last in the list); older keys still decrypt.
``$CREDENTIALS_DIRECTORY/vigil.key`` (systemd ``LoadCredential=``) wins over the
configured path when it exists.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import secrets
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from daemon.errors import KeyFileError
from daemon.fsutil import write_file_atomically
from daemon.trust import system_owners

KEYRING_FORMAT = "vigil-keyring"
KEYRING_VERSION = 1
CREDENTIAL_NAME = "vigil.key"


@dataclass(frozen=True)
class KeyEntry:
    key_id: str
    created: str
    secret: bytes

    def __repr__(self) -> str:  # never show the secret, not even in a traceback
        return f"KeyEntry(key_id={self.key_id!r}, created={self.created!r})"


class Keyring:
    """Keys by ID; the last key added is the one new records are sealed with."""

    def __init__(self, entries: list[KeyEntry], source: str = "<memory>") -> None:
        if not entries:
            raise ValueError("a keyring needs at least one key")
        self.entries = list(entries)
        self.source = source
        self._ciphers: dict[str, AESGCM] = {e.key_id: AESGCM(e.secret) for e in entries}

    def __repr__(self) -> str:
        return f"Keyring(source={self.source!r}, key_ids={self.key_ids!r})"

    @property
    def key_ids(self) -> list[str]:
        return [e.key_id for e in self.entries]

    @property
    def current_id(self) -> str:
        return self.entries[-1].key_id

    def cipher(self, key_id: str) -> AESGCM | None:
        return self._ciphers.get(key_id)

    def current_cipher(self) -> AESGCM:
        return self._ciphers[self.current_id]

    @classmethod
    def generate(cls) -> Keyring:
        """A keyring with one fresh random key, held in memory."""
        return cls([_new_entry(set())])

    def rotated(self) -> Keyring:
        """A copy with one more fresh key, which becomes the current key."""
        return Keyring([*self.entries, _new_entry(set(self.key_ids))], self.source)

    # --- persistence -----------------------------------------------------------------

    def to_json(self) -> str:
        doc = {
            "format": KEYRING_FORMAT,
            "version": KEYRING_VERSION,
            "keys": [
                {
                    "id": e.key_id,
                    "created": e.created,
                    "key": base64.b64encode(e.secret).decode("ascii"),
                }
                for e in self.entries
            ],
        }
        return json.dumps(doc, indent=2) + "\n"

    def save(self, path: Path, *, overwrite: bool = True) -> None:
        """Write atomically with mode 0600 (``O_EXCL | O_NOFOLLOW``; see
        :func:`write_file_atomically`)."""
        write_file_atomically(path, self.to_json().encode("utf-8"), mode=0o600, overwrite=overwrite)

    @classmethod
    def load(cls, path: Path) -> Keyring:
        """Read a key file, refusing one that group or others can read or write."""
        try:
            st = path.stat()
        except FileNotFoundError:
            raise KeyFileError(
                path, "does not exist (create one with `vigil key generate PATH`)"
            ) from None
        except PermissionError:
            raise KeyFileError(path, "cannot be read by this user (permission denied)") from None
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(path, "is not a regular file")
        owners = system_owners()
        if st.st_uid not in owners and not _is_systemd_credential(path):
            raise KeyFileError(
                path,
                f"is owned by uid {st.st_uid}, not by this user (uid {os.geteuid()}) or root; "
                f"run `chown {os.geteuid()} {path}`",
            )
        if st.st_mode & 0o077 and not _is_systemd_credential(path):
            raise KeyFileError(
                path,
                f"is accessible by group or others (mode {stat.S_IMODE(st.st_mode):04o}); "
                f"run `chmod 600 {path}`",
            )
        try:
            raw = path.read_bytes()
        except PermissionError:
            raise KeyFileError(path, "cannot be read by this user (permission denied)") from None
        return cls.from_bytes(raw, path)

    @classmethod
    def from_bytes(cls, raw: bytes, path: Path) -> Keyring:
        if not raw.strip():
            raise KeyFileError(path, "is empty (truncated?); restore it from a backup")
        try:
            doc = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise KeyFileError(
                path, "is not a vigil keyring (not valid JSON; truncated or wrong file?)"
            ) from None
        if not isinstance(doc, dict) or doc.get("format") != KEYRING_FORMAT:
            raise KeyFileError(path, "is not a vigil keyring (missing format marker)")
        version = doc.get("version")
        if isinstance(version, int) and not isinstance(version, bool) and version > KEYRING_VERSION:
            raise KeyFileError(
                path,
                f"written by a newer vigil (keyring version {version}); this vigil reads "
                f"version {KEYRING_VERSION}. Upgrade vigil to use it",
            )
        if version != KEYRING_VERSION:
            raise KeyFileError(
                path, f"keyring version {version!r} is not supported (expected {KEYRING_VERSION})"
            )
        keys = doc.get("keys")
        if not isinstance(keys, list) or not keys:
            raise KeyFileError(path, "holds no keys")
        entries = [_parse_entry(path, i, k) for i, k in enumerate(keys)]
        ids = [e.key_id for e in entries]
        if len(set(ids)) != len(ids):
            raise KeyFileError(path, "holds the same key id twice")
        return cls(entries, str(path))


def resolve_key_path(configured: Path, environ: Mapping[str, str] | None = None) -> Path:
    """``$CREDENTIALS_DIRECTORY/vigil.key`` when present, else the configured path."""
    env = os.environ if environ is None else environ
    cred_dir = env.get("CREDENTIALS_DIRECTORY")
    if cred_dir:
        candidate = Path(cred_dir) / CREDENTIAL_NAME
        if candidate.exists():
            return candidate
    return configured


def _is_systemd_credential(path: Path) -> bool:
    """systemd >= 256 hands credentials over as root-owned 0400 files plus an ACL for the
    service user, which ``stat`` shows as 0440; the credentials mount is private to the
    unit and read-only, so its mode bits are not ours to judge."""
    cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
    return cred_dir is not None and cred_dir != "" and path.parent == Path(cred_dir)


def generate_key_file(path: Path) -> Keyring:
    """Create a new key file; refuses to overwrite an existing one."""
    exists = KeyFileError(path, "already exists; use `vigil key rotate` to add a key")
    if os.path.lexists(path):
        raise exists
    ring = Keyring.generate()
    try:
        ring.save(path, overwrite=False)  # a file or symlink created meanwhile is kept
    except FileExistsError:
        raise exists from None
    return Keyring(ring.entries, str(path))


def rotate_key_file(path: Path) -> Keyring:
    """Add a fresh key to an existing key file; old records stay readable."""
    ring = Keyring.load(path).rotated()
    ring.save(path)
    return ring


def _new_entry(taken: set[str]) -> KeyEntry:
    while True:
        key_id = secrets.token_hex(4)
        if key_id not in taken:
            break
    created = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return KeyEntry(key_id, created, AESGCM.generate_key(bit_length=256))


def _parse_entry(path: Path, index: int, item: Any) -> KeyEntry:
    if not isinstance(item, dict):
        raise KeyFileError(path, f"key #{index + 1} is not an object")
    key_id, created, b64 = item.get("id"), item.get("created", ""), item.get("key")
    if not isinstance(key_id, str) or not key_id or not key_id.isalnum():
        raise KeyFileError(path, f"key #{index + 1} has no valid id")
    if not isinstance(b64, str):
        raise KeyFileError(path, f"key {key_id!r} has no key material")
    try:
        secret = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise KeyFileError(path, f"key {key_id!r} is not valid base64") from None
    if len(secret) != 32:
        raise KeyFileError(path, f"key {key_id!r} is {len(secret) * 8} bits; AES-256-GCM needs 256")
    return KeyEntry(key_id, str(created), secret)
