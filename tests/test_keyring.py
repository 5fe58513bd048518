"""The key file: generate, load with permission checks, rotate, find under systemd."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest

from daemon.errors import KeyFileError
from daemon.journal.keyring import (
    CREDENTIAL_NAME,
    Keyring,
    generate_key_file,
    resolve_key_path,
    rotate_key_file,
)


def _write_key_file(path: Path, doc: object, mode: int = 0o600) -> None:
    path.write_text(json.dumps(doc))
    os.chmod(path, mode)


def _valid_key(secret: bytes = b"k" * 32) -> dict[str, str]:
    return {
        "id": "abcd1234",
        "created": "2026-11-21T13:00:00Z",
        "key": base64.b64encode(secret).decode(),
    }


def _valid_doc(secret: bytes = b"k" * 32) -> dict[str, object]:
    return {"format": "vigil-keyring", "version": 1, "keys": [_valid_key(secret)]}


def test_generate_creates_an_owner_only_key_file_that_loads_back(tmp_path: Path) -> None:
    path = tmp_path / "vigil.key"
    ring = generate_key_file(path)
    assert (path.stat().st_mode & 0o777) == 0o600
    assert ring.source == str(path)
    loaded = Keyring.load(path)
    assert loaded.key_ids == ring.key_ids and len(ring.key_ids) == 1
    assert loaded.current_id == ring.current_id
    assert loaded.entries[0].secret == ring.entries[0].secret
    assert len(loaded.entries[0].secret) == 32
    assert loaded.source == str(path)
    doc = json.loads(path.read_text())
    assert doc["format"] == "vigil-keyring" and doc["version"] == 1
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_generate_refuses_to_overwrite_an_existing_key_file(tmp_path: Path) -> None:
    path = tmp_path / "vigil.key"
    generate_key_file(path)
    before = path.read_bytes()
    with pytest.raises(KeyFileError) as info:
        generate_key_file(path)
    assert info.value.path == path
    assert str(path) in str(info.value) and "already exists" in str(info.value)
    assert path.read_bytes() == before


def test_rotate_adds_a_current_key_and_keeps_every_old_one(tmp_path: Path) -> None:
    path = tmp_path / "vigil.key"
    first = generate_key_file(path)
    second = rotate_key_file(path)
    third = rotate_key_file(path)
    loaded = Keyring.load(path)
    assert loaded.key_ids == [*first.key_ids, second.current_id, third.current_id]
    assert len(set(loaded.key_ids)) == 3
    assert loaded.current_id == third.current_id
    assert loaded.entries[0].secret == first.entries[0].secret
    assert loaded.entries[1].secret == second.entries[1].secret
    assert (path.stat().st_mode & 0o777) == 0o600
    # Each old key still decrypts what it sealed.
    nonce, aad = os.urandom(12), b"aad"
    sealed = first.current_cipher().encrypt(nonce, b"old record", aad)
    cipher = loaded.cipher(first.current_id)
    assert cipher is not None
    assert cipher.decrypt(nonce, sealed, aad) == b"old record"


def test_rotated_in_memory_leaves_the_original_alone() -> None:
    ring = Keyring.generate()
    newer = ring.rotated()
    assert ring.key_ids == newer.key_ids[:1]
    assert newer.current_id != ring.current_id
    assert ring.cipher(newer.current_id) is None


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644, 0o602, 0o620])
def test_a_key_file_readable_or_writable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "vigil.key"
    generate_key_file(path)
    os.chmod(path, mode)
    with pytest.raises(KeyFileError) as info:
        Keyring.load(path)
    message = str(info.value)
    assert info.value.path == path
    assert str(path) in message
    assert f"mode {mode:04o}" in message
    assert f"chmod 600 {path}" in message


def test_a_missing_key_file_says_how_to_create_one(tmp_path: Path) -> None:
    path = tmp_path / "nope.key"
    with pytest.raises(KeyFileError) as info:
        Keyring.load(path)
    assert str(path) in str(info.value)
    assert "does not exist" in str(info.value) and "vigil key generate" in str(info.value)


def test_a_directory_is_not_a_key_file(tmp_path: Path) -> None:
    path = tmp_path / "vigil.key"
    path.mkdir(mode=0o700)
    with pytest.raises(KeyFileError, match="is not a regular file"):
        Keyring.load(path)


def test_a_truncated_key_file_is_refused_at_every_length(tmp_path: Path) -> None:
    path = tmp_path / "vigil.key"
    generate_key_file(path)
    whole = path.read_bytes()
    for length in range(len(whole) - 2):  # the last two bytes are "}\n" and "\n"
        path.write_bytes(whole[:length])
        with pytest.raises(KeyFileError) as info:
            Keyring.load(path)
        assert str(path) in str(info.value), length
        message = str(info.value)
        assert "not a vigil keyring" in message or "no keys" in message or "is empty" in message
        assert ("is empty" in message) == (length == 0), length


@pytest.mark.parametrize(
    ("secret", "bits"), [(b"k" * 16, 128), (b"k" * 24, 192), (b"k" * 31, 248), (b"k" * 64, 512)]
)
def test_a_key_of_the_wrong_length_is_refused(tmp_path: Path, secret: bytes, bits: int) -> None:
    path = tmp_path / "vigil.key"
    _write_key_file(path, _valid_doc(secret))
    with pytest.raises(KeyFileError) as info:
        Keyring.load(path)
    assert str(path) in str(info.value)
    assert f"is {bits} bits; AES-256-GCM needs 256" in str(info.value)


@pytest.mark.parametrize(
    ("doc", "problem"),
    [
        ([1, 2], "is not a vigil keyring (missing format marker)"),
        ({**_valid_doc(), "format": "other"}, "is not a vigil keyring (missing format marker)"),
        (
            {**_valid_doc(), "version": 2},
            "written by a newer vigil (keyring version 2); this vigil reads version 1. "
            "Upgrade vigil to use it",
        ),
        ({**_valid_doc(), "version": "1"}, "keyring version '1' is not supported (expected 1)"),
        ({**_valid_doc(), "keys": []}, "holds no keys"),
        ({**_valid_doc(), "keys": ["abc"]}, "key #1 is not an object"),
        (
            {**_valid_doc(), "keys": [{"id": "ab/cd", "key": "a2V5"}]},
            "key #1 has no valid id",
        ),
        ({**_valid_doc(), "keys": [{"id": "abcd"}]}, "key 'abcd' has no key material"),
        (
            {**_valid_doc(), "keys": [{"id": "abcd", "key": "not base64!"}]},
            "key 'abcd' is not valid base64",
        ),
        (
            {**_valid_doc(), "keys": [_valid_key(), _valid_key(b"j" * 32)]},
            "holds the same key id twice",
        ),
    ],
)
def test_malformed_key_files_name_the_problem(tmp_path: Path, doc: object, problem: str) -> None:
    path = tmp_path / "vigil.key"
    _write_key_file(path, doc)
    with pytest.raises(KeyFileError) as info:
        Keyring.load(path)
    assert str(info.value) == f"key file {path}: {problem}"


def test_the_secret_never_appears_in_a_repr(tmp_path: Path) -> None:
    path = tmp_path / "vigil.key"
    ring = generate_key_file(path)
    b64 = base64.b64encode(ring.entries[0].secret).decode()
    for text in (repr(ring), repr(ring.entries), str(ring.entries[0])):
        assert b64 not in text and ring.current_id in text


def test_the_systemd_credential_wins_over_the_configured_path(tmp_path: Path) -> None:
    configured = tmp_path / "etc" / "vigil.key"
    cred_dir = tmp_path / "credentials"
    cred_dir.mkdir()
    env = {"CREDENTIALS_DIRECTORY": str(cred_dir)}
    # No credential file yet: the configured path.
    assert resolve_key_path(configured, env) == configured
    (cred_dir / CREDENTIAL_NAME).write_bytes(b"{}")
    assert resolve_key_path(configured, env) == cred_dir / CREDENTIAL_NAME
    assert resolve_key_path(configured, {}) == configured
    assert resolve_key_path(configured, {"CREDENTIALS_DIRECTORY": ""}) == configured


def test_resolve_key_path_reads_the_process_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cred_dir = tmp_path / "credentials"
    cred_dir.mkdir()
    (cred_dir / CREDENTIAL_NAME).write_bytes(b"{}")
    configured = tmp_path / "vigil.key"
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    assert resolve_key_path(configured) == configured
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(cred_dir))
    assert resolve_key_path(configured) == cred_dir / CREDENTIAL_NAME
