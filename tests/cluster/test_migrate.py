"""``migrate_site`` on a file site written with the file stores, into a real PostgreSQL:
what lands there reads back equal, a torn tail stays behind, a second run skips, a
stream that differs is refused, a live node's conversation is not written, and a
running single node stops it all."""

from __future__ import annotations

import asyncio
import hashlib
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from claude_agent_sdk.types import SessionKey

from daemon.agent.store import JournalSessionStore
from daemon.cli.main import main
from daemon.cluster.db import Database
from daemon.cluster.eventlog import PgEventLogStore
from daemon.cluster.leases import Leases
from daemon.cluster.transcripts import PgTranscriptStore
from daemon.config.load import load_config
from daemon.config.model import Config
from daemon.journal.file import Journal
from daemon.journal.keyring import Keyring, generate_key_file
from daemon.journal.lock import StateLock
from daemon.journal.scan import read_events
from daemon.ops.migrate import SiteRunning, migrate_site


def site(tmp_path: Path, dsn: str) -> tuple[Config, Keyring]:
    keyring = generate_key_file(tmp_path / "vigil.key")
    (tmp_path / "work").mkdir()
    config = tmp_path / "vigil.toml"
    config.write_text(
        f'[daemon]\nstate_dir = "{tmp_path / "state"}"\nruntime_dir = "{tmp_path / "run"}"\n'
        f'key_file = "{tmp_path / "vigil.key"}"\n\n[cluster]\ndatabase = "{dsn}"\n'
        'node = "node-a"\n\n[[heartbeat]]\nname = "inbox"\nevery = "1m"\nprompt = "p"\n'
        f'cwd = "{tmp_path / "work"}"\n'
    )
    conversations = tmp_path / "state" / "conversations"
    conversations.mkdir(parents=True)
    for name, session in (("inbox", "s-inbox"), ("digest", "s-digest")):
        journal = Journal.open(conversations / f"{name}.jsonl", name, keyring)
        journal.append({"type": "session_bound", "session_id": session, "cwd": "/w", "mode": "new"})
        for turn in (1, 2, 3):
            journal.append({"type": "turn_started", "turn": turn, "prompt": f"{name} {turn}"})
            journal.append({"type": "turn_completed", "turn": turn, "reply": f"r{turn}"})
        journal.close()
    store = JournalSessionStore(tmp_path / "state" / "transcripts", keyring)
    for session in ("s-inbox", "s-digest"):
        key: SessionKey = {"project_key": "-w", "session_id": session}
        for n in range(3):
            entry: Any = {"type": "user", "uuid": f"{session}-{n}", "n": n}
            asyncio.run(store.append(key, [entry]))
    return load_config(config), keyring


def files(state: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in state.rglob("*.jsonl")}


def test_every_record_lands_sealed_and_reads_back_equal(pg_dsn: str, tmp_path: Path) -> None:
    config, keyring = site(tmp_path, pg_dsn)
    state = tmp_path / "state"
    torn = state / "conversations" / "digest.jsonl"
    torn.write_bytes(torn.read_bytes() + b'{"v":1,"c":"digest","s":8,"k":')  # a cut write
    before = files(state)

    report = migrate_site(config, keyring, environ={})

    assert report.ok, report.render()
    assert report.as_json()["conversations"] == {"imported": 2, "skipped": 0, "refused": 0}
    assert report.as_json()["transcripts"] == {"imported": 2, "skipped": 0, "refused": 0}
    digest = next(i for i in report.items if i.name == "digest")
    assert digest.records == 7
    assert digest.torn_tail is not None
    assert files(state) == before  # nothing written to the files
    leases = Leases(Database(pg_dsn), "reader", ttl=timedelta(seconds=15))
    events = PgEventLogStore(Database(pg_dsn, synchronous_commit=False), keyring, leases)
    for name in ("inbox", "digest"):
        path = state / "conversations" / f"{name}.jsonl"
        assert [e for _, e in events.read(name)] == list(read_events(path, name, keyring))
    sessions = {"s-inbox": "inbox", "s-digest": "digest"}
    pg = PgTranscriptStore(Database(pg_dsn), keyring, leases, sessions.get)
    file_store = JournalSessionStore(state / "transcripts", keyring)
    for session in sessions:
        key: SessionKey = {"project_key": "-w", "session_id": session}
        assert asyncio.run(pg.load(key)) == asyncio.run(file_store.load(key))
        assert pg.has_session(session)
    assert {s["session_id"] for s in asyncio.run(pg.list_sessions("-w"))} == set(sessions)
    with psycopg.connect(pg_dsn) as conn:
        owners: dict[str, str] = dict(
            conn.execute("SELECT session, conversation FROM transcript_streams").fetchall()
        )
    assert sorted(owners.values()) == ["digest", "inbox"]


def test_a_second_run_skips_and_a_stream_that_differs_is_refused(
    pg_dsn: str, tmp_path: Path
) -> None:
    config, keyring = site(tmp_path, pg_dsn)
    first = migrate_site(config, keyring, environ={})
    assert migrate_site(config, keyring, environ={}).as_json()["conversations"]["skipped"] == 2

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM events WHERE conversation = 'inbox' AND seq = 7")
    third = migrate_site(config, keyring, environ={})
    assert not third.ok
    inbox = next(i for i in third.items if i.name == "inbox")
    assert inbox.status == "refused"
    assert inbox.detail is not None
    assert "events/inbox" in inbox.detail
    assert "sequence 7" in inbox.detail
    assert "the database holds 6 records, the file 7" in inbox.detail
    assert all(i.status == "skipped" for i in third.items if i.name != "inbox")
    assert third.records == first.records - 7  # the refused one is not counted as checked


def test_a_conversation_a_live_node_holds_is_not_written(pg_dsn: str, tmp_path: Path) -> None:
    config, keyring = site(tmp_path, pg_dsn)
    node = Leases(Database(pg_dsn), "node-b", ttl=timedelta(minutes=5))
    node.acquire("inbox")  # a cluster node started before the migration

    report = migrate_site(config, keyring, environ={})

    inbox = next(i for i in report.items if i.name == "inbox")
    assert inbox.status == "refused"
    assert inbox.detail is not None
    assert "node node-b holds its lease" in inbox.detail
    assert next(i for i in report.items if i.name == "digest").status == "imported"
    with psycopg.connect(pg_dsn) as conn:
        row = conn.execute("SELECT count(*) FROM events WHERE conversation = 'inbox'").fetchone()
    assert row == (0,)


def test_a_running_single_node_stops_the_migration(pg_dsn: str, tmp_path: Path) -> None:
    config, keyring = site(tmp_path, pg_dsn)
    lock = StateLock(tmp_path / "state")
    lock.acquire()
    try:
        with pytest.raises(SiteRunning, match="stop it"):
            migrate_site(config, keyring, environ={})
    finally:
        lock.release()
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM events").fetchone() == (0,)


def verify_json(config: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, Any]:
    code = main(["verify", "--config", str(config), "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_verify_authenticates_every_record_in_the_database(
    pg_dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, keyring = site(tmp_path, pg_dsn)
    report = migrate_site(config, keyring, environ={})
    path = tmp_path / "vigil.toml"

    code, clean = verify_json(path, capsys)
    assert (code, clean["ok"], clean["findings"]) == (0, True, [])
    assert clean["records"] == report.records
    assert {s["stream"] for s in clean["streams"] if s["table"] == "events"} == {"inbox", "digest"}

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        # inbox: the record of seq 4 moved to seq 3; digest: a ciphertext byte changed;
        # one transcript stream loses its second record.
        conn.execute(
            "UPDATE events SET line = (SELECT line FROM events WHERE conversation = 'inbox'"
            " AND seq = 4) WHERE conversation = 'inbox' AND seq = 3"
        )
        conn.execute(
            "UPDATE events SET line = set_byte(line, length(line) - 6,"
            " get_byte(line, length(line) - 6) # 1)"
            " WHERE conversation = 'digest' AND seq = 2"
        )
        stream = conn.execute(
            "SELECT stream FROM transcript_streams WHERE conversation = 'inbox'"
        ).fetchone()
        assert stream is not None
        conn.execute("DELETE FROM transcripts WHERE stream = %s AND seq = 2", stream)

    code, damaged = verify_json(path, capsys)
    assert code == 8
    found = {(f["table"], f["conversation"], f["seq"], f["kind"]) for f in damaged["findings"]}
    assert found == {
        ("events", "inbox", 3, "corrupt"),
        ("events", "digest", 2, "corrupt"),
        ("transcripts", "inbox", 2, "missing"),
    }
    main(["verify", "--config", str(path)])
    text = capsys.readouterr().out
    assert "events/inbox: sequence 3: corrupt: the sealed record says sequence 4" in text
    assert "FAILED" in text
