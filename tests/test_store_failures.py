"""The transcript store when the disk fails: the failure is kept for the turn to see,
and the SDK's retry of the same batch is stored, not skipped as a duplicate."""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path

import pytest
from claude_agent_sdk.types import SessionKey, SessionStoreEntry

from daemon.agent.store import JournalSessionStore
from daemon.errors import JournalFatalError, JournalWriteError
from daemon.journal.file import FsyncPolicy
from daemon.journal.keyring import Keyring
from daemon.journal.scan import scan


def _entry(uuid: str, n: int) -> SessionStoreEntry:
    return {"type": "user", "uuid": uuid, "n": n}  # type: ignore[typeddict-unknown-key]  # entries are opaque pass-through blobs


def test_a_failed_append_is_remembered_and_its_retry_is_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = JournalSessionStore(tmp_path, Keyring.generate())
    key: SessionKey = {"project_key": "p", "session_id": "s1"}
    real_write = os.write

    def full_disk(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    async def scenario() -> None:
        await store.append(key, [_entry("u1", 1)])
        assert store.take_failure("s1") is None
        monkeypatch.setattr(os, "write", full_disk)  # the journal writes with os.write
        with pytest.raises(JournalWriteError):
            await store.append(key, [_entry("u2", 2)])
        failure = store.take_failure("s1")
        assert isinstance(failure, JournalWriteError) and failure.errno_name == "ENOSPC"
        assert store.take_failure("s1") is None  # reported once
        assert store.take_failure("other-session") is None
        monkeypatch.setattr(os, "write", real_write)
        await store.append(key, [_entry("u2", 2)])  # the SDK retries the same batch
        assert await store.load(key) == [_entry("u1", 1), _entry("u2", 2)]

    asyncio.run(scenario())


@pytest.mark.parametrize("policy", [FsyncPolicy.ALWAYS, FsyncPolicy.TURN])
def test_after_a_failed_fsync_the_store_writes_nothing_more(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, policy: FsyncPolicy
) -> None:
    keyring = Keyring.generate()
    store = JournalSessionStore(tmp_path, keyring, fsync=policy)
    key: SessionKey = {"project_key": "p", "session_id": "s1"}
    real_fsync = os.fsync

    def broken_disk(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    async def scenario() -> None:
        await store.append(key, [_entry("u1", 1)])
        monkeypatch.setattr(os, "fsync", broken_disk)  # the journal syncs with os.fsync
        with pytest.raises(JournalFatalError):
            await store.append(key, [_entry("u2", 2)])
        monkeypatch.setattr(os, "fsync", real_fsync)
        # The SDK retries the batch: refused, nothing written on a fresh descriptor.
        with pytest.raises(JournalFatalError):
            await store.append(key, [_entry("u2", 2)])
        with pytest.raises(JournalFatalError):
            await store.append({"project_key": "p", "session_id": "s2"}, [_entry("v1", 1)])
        assert isinstance(store.take_failure("s1"), JournalFatalError)

    asyncio.run(scenario())
    (path,) = tmp_path.glob("*.jsonl")
    scan(path, f"t:{path.name.removesuffix('.jsonl')}", keyring)  # in sequence, undamaged
    # A restart reads u2 (written before its fsync failed) exactly once.
    loaded = asyncio.run(JournalSessionStore(tmp_path, keyring).load(key))
    assert loaded == [_entry("u1", 1), _entry("u2", 2)]
