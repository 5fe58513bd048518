"""The SDK's own SessionStore contract suite, run against our encrypted store."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

from claude_agent_sdk.testing import run_session_store_conformance
from claude_agent_sdk.testing.session_store_conformance import _has_optional
from claude_agent_sdk.types import SessionKey, SessionStoreEntry

from daemon.agent.store import JournalSessionStore
from daemon.journal.framing import decode_payload
from daemon.journal.keyring import Keyring
from daemon.journal.scan import scan

OPTIONAL = ("list_sessions", "list_session_summaries", "delete", "list_subkeys")


def test_sdk_conformance_suite_passes_with_no_optional_method_skipped(tmp_path: Path) -> None:
    keyring = Keyring.generate()
    counter = itertools.count()

    def make_store() -> JournalSessionStore:
        return JournalSessionStore(tmp_path / f"store-{next(counter)}", keyring)

    # The suite skips contracts for optional methods it does not detect; make sure it
    # detects all four on our store, so every contract really ran.
    probe = make_store()
    assert [m for m in OPTIONAL if not _has_optional(probe, m, frozenset())] == []
    asyncio.run(run_session_store_conformance(make_store, skip_optional=frozenset()))


def _entry(uuid: str, n: int) -> SessionStoreEntry:
    return {"type": "user", "uuid": uuid, "n": n}  # type: ignore[typeddict-unknown-key]  # entries are opaque pass-through blobs


def test_store_survives_reopen_dedups_on_uuid_and_stores_no_plaintext(tmp_path: Path) -> None:
    keyring = Keyring.generate()
    key: SessionKey = {"project_key": "p", "session_id": "s"}

    async def scenario() -> None:
        await JournalSessionStore(tmp_path, keyring).append(key, [_entry("u1", 1)])
        again = JournalSessionStore(tmp_path, keyring)
        await again.append(key, [_entry("u1", 1), _entry("canary-u2", 2)])
        loaded = await JournalSessionStore(tmp_path, keyring).load(key)
        assert loaded == [_entry("u1", 1), _entry("canary-u2", 2)]

    asyncio.run(scenario())
    for f in tmp_path.iterdir():
        assert b"canary" not in f.read_bytes()
        assert f.stat().st_mode & 0o777 == 0o600


def _kinds(path: Path, keyring: Keyring) -> list[str]:
    kinds: list[str] = []
    scan(
        path, f"t:{path.stem}", keyring, lambda fr: kinds.append(decode_payload(fr.payload)["kind"])
    )
    return kinds


def test_a_store_adopts_streams_another_process_wrote_and_loading_never_cuts(
    tmp_path: Path,
) -> None:
    """``vigil fork`` writes a new session's stream while the daemon's store has listed
    the directory already: the daemon finds it, and appends to it as its own."""
    keyring = Keyring.generate()
    forked: SessionKey = {"project_key": "p", "session_id": "s-forked"}
    daemon_store = JournalSessionStore(tmp_path, keyring)
    assert daemon_store.has_session("s-forked") is False  # lists the directory once

    other = JournalSessionStore(tmp_path, keyring)
    asyncio.run(other.append(forked, [_entry("u1", 1)]))
    asyncio.run(daemon_store.append(forked, [_entry("u2", 2), _entry("u1", 1)]))
    [path] = tmp_path.glob("*.jsonl")
    assert _kinds(path, keyring) == ["key", "entries", "summary", "entries", "summary"]
    assert daemon_store.has_session("s-forked") is True
    assert asyncio.run(other.load(forked)) == [_entry("u1", 1), _entry("u2", 2)]

    with path.open("ab") as f:
        f.write(b'{"v":1,"c":"half a rec')  # a record being written right now, or torn
    torn = path.read_bytes()
    reader = JournalSessionStore(tmp_path, keyring)
    assert asyncio.run(reader.load(forked)) == [_entry("u1", 1), _entry("u2", 2)]
    assert path.read_bytes() == torn  # loading left the file alone
    asyncio.run(reader.append(forked, [_entry("u3", 3)]))  # writing recovers it first
    assert asyncio.run(other.load(forked)) == [_entry("u1", 1), _entry("u2", 2), _entry("u3", 3)]
    assert b"half a rec" not in path.read_bytes()
