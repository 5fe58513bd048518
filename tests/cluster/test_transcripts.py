"""The PostgreSQL transcript store passes the SDK's own SessionStore suite, stores only
ciphertext, and is fenced on the conversation's lease like the event log."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import psycopg
import pytest
from claude_agent_sdk.testing import run_session_store_conformance
from claude_agent_sdk.testing.session_store_conformance import _has_optional
from claude_agent_sdk.types import SessionKey, SessionStoreEntry

from daemon.cluster.db import Database
from daemon.cluster.errors import UnboundSession
from daemon.cluster.transcripts import PgTranscriptStore, stream_digest
from daemon.errors import OwnershipLost
from daemon.journal.keyring import Keyring
from tests.cluster.conftest import wipe
from tests.cluster.helpers import TTL, ManualClock, Node, node

OPTIONAL = ("list_sessions", "list_session_summaries", "delete", "list_subkeys")
KEY: SessionKey = {"project_key": "p", "session_id": "s"}


def _entry(uuid: str, n: int) -> SessionStoreEntry:
    return {"type": "user", "uuid": uuid, "n": n}  # type: ignore[typeddict-unknown-key]  # entries are opaque pass-through blobs


def _store(n: Node, dsn: str, keyring: Keyring, conversation: str = "inbox") -> PgTranscriptStore:
    return PgTranscriptStore(
        Database(dsn, application_name=f"test {n.name} transcripts"),
        keyring,
        n.leases,
        lambda session_id: conversation,
    )


def test_sdk_conformance_suite_passes_with_no_optional_method_skipped(
    pg_dsn: str, keyring: Keyring
) -> None:
    nodes: list[Node] = []

    def make_store() -> PgTranscriptStore:
        for n in nodes:
            n.close()
        wipe(pg_dsn)
        n = node(pg_dsn, "node-a", keyring, ManualClock())
        n.leases.acquire("inbox")
        nodes.append(n)
        return _store(n, pg_dsn, keyring)

    probe = make_store()
    assert [m for m in OPTIONAL if not _has_optional(probe, m, frozenset())] == []
    asyncio.run(run_session_store_conformance(make_store, skip_optional=frozenset()))
    for n in nodes:
        n.close()


def test_transcripts_are_sealed_deduplicated_and_read_back_by_another_node(
    pg_dsn: str, keyring: Keyring
) -> None:
    clock = ManualClock()
    a, b = node(pg_dsn, "node-a", keyring, clock), node(pg_dsn, "node-b", keyring, clock)
    a.leases.acquire("inbox")
    store_a = _store(a, pg_dsn, keyring)
    asyncio.run(store_a.append(KEY, [_entry("u1", 1)]))
    asyncio.run(store_a.append(KEY, [_entry("u1", 1), _entry("canary-u2", 2)]))
    assert store_a.has_session("s") and not store_a.has_session("other")

    clock.advance(TTL + timedelta(seconds=1))
    b.leases.acquire("inbox")  # a takeover: b resumes the session from the store
    store_b = _store(b, pg_dsn, keyring)
    assert asyncio.run(store_b.load(KEY)) == [_entry("u1", 1), _entry("canary-u2", 2)]
    asyncio.run(store_b.append(KEY, [_entry("canary-u2", 2), _entry("u3", 3)]))
    assert asyncio.run(store_a.load(KEY)) == [
        _entry(f"{p}u{i}", i) for p, i in [("", 1), ("canary-", 2), ("", 3)]
    ]

    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute("SELECT stream, seq, line FROM transcripts ORDER BY seq").fetchall()
        streams = conn.execute("SELECT * FROM transcript_streams").fetchall()
    assert {r[0] for r in rows} == {stream_digest(("p", "s", None))}
    assert [r[1] for r in rows] == list(range(1, 8))  # the key, then entries + summary x 3
    assert all(b"canary" not in bytes(r[2]) for r in rows)
    assert all("canary" not in str(col) for row in streams for col in row)
    a.close()
    b.close()


def test_a_node_that_lost_the_lease_writes_no_transcript(pg_dsn: str, keyring: Keyring) -> None:
    clock = ManualClock()
    a, b = node(pg_dsn, "node-a", keyring, clock), node(pg_dsn, "node-b", keyring, clock)
    a.leases.acquire("inbox")
    store_a = _store(a, pg_dsn, keyring)
    asyncio.run(store_a.append(KEY, [_entry("u1", 1)]))
    clock.advance(TTL + timedelta(seconds=1))
    b.leases.acquire("inbox")

    with pytest.raises(OwnershipLost, match="node-b owns it now"):
        asyncio.run(store_a.append(KEY, [_entry("late", 2)]))
    assert isinstance(store_a.take_failure("s"), OwnershipLost)
    assert store_a.take_failure("s") is None
    with pytest.raises(OwnershipLost):
        asyncio.run(store_a.delete(KEY))
    assert asyncio.run(_store(b, pg_dsn, keyring).load(KEY)) == [_entry("u1", 1)]

    unbound = PgTranscriptStore(Database(pg_dsn), keyring, b.leases, lambda session_id: None)
    with pytest.raises(UnboundSession, match="no conversation of node node-b"):
        asyncio.run(unbound.append(KEY, [_entry("u9", 9)]))
    a.close()
    b.close()
