"""``vigil fork`` against a cluster, on a real PostgreSQL: the command line forks a
conversation whose events and transcript a node wrote there, at its last turn and at
``--at``; every refusal writes nothing; a record that cannot be written takes its
copied transcript with it; what the fork wrote is ciphertext and ``vigil verify``
passes. ``tests/cluster/test_fork_node.py`` runs a fork on a real node."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import psycopg
import pytest
from claude_agent_sdk.types import SessionKey, SessionStoreEntry

from daemon import events as ev
from daemon.agent.sdk import project_key
from daemon.cli.main import main
from daemon.cluster.db import Database, redact
from daemon.cluster.eventlog import PgEventLog, PgEventLogStore
from daemon.cluster.leases import Leases
from daemon.cluster.transcripts import PgTranscriptStore
from daemon.errors import JournalWriteError
from daemon.events.heal import fold
from daemon.journal.conversation import ConversationState
from daemon.journal.keyring import Keyring, generate_key_file
from tests.cluster.helpers import TTL
from tests.test_fork import AT, entries, turn

TABLES = ("conversations", "events", "transcript_streams", "transcripts", "leases")


class ClusterSite:
    """A cluster configuration (database URL with a password the server ignores) and
    conversation ``alpha`` as node-a left it: turns 1-3 completed with their transcript
    in PostgreSQL, turn 4 failed; the lease released."""

    def __init__(self, root: Path, dsn: str) -> None:
        self.root = root
        self.password = "pw-" + uuid.uuid4().hex[:12]
        self.dsn = dsn
        self.keyring: Keyring = generate_key_file(root / "vigil.key")
        self.cwd = root / "work"
        self.cwd.mkdir()
        self.config = root / "vigil.toml"
        self.write_config()
        self.session = str(uuid.uuid4())
        self.entries, assistants = entries(self.session, 3)
        leases = Leases(Database(dsn), "node-a", ttl=TTL)
        events = PgEventLogStore.connect(dsn, self.keyring, leases)
        log = events.open("alpha")
        log.append(ev.session_bound(self.session, str(self.cwd), mode="new", at=AT))
        for n, assistant in enumerate(assistants, start=1):
            for event in turn(n, session=self.session, uuid_=assistant):
                log.append(event)
        store = PgTranscriptStore(Database(dsn), self.keyring, leases, lambda _: "alpha")
        key: SessionKey = {"project_key": project_key(self.cwd), "session_id": self.session}
        asyncio.run(store.append(key, cast("list[SessionStoreEntry]", self.entries)))
        for event in turn(4, end="failed", session=self.session):
            log.append(event)
        log.close()
        for db in (events.db, store.db, leases.db):
            db.close()

    def write_config(self, jobs: str = "") -> None:
        with_password = self.dsn.replace("://vigil@", f"://vigil:{self.password}@", 1)
        self.config.write_text(
            f'[daemon]\nstate_dir = "{self.root / "state"}"\n'
            f'runtime_dir = "{self.root / "run"}"\nkey_file = "{self.root / "vigil.key"}"\n\n'
            f'[cluster]\ndatabase = "{with_password}"\nnode = "node-a"\n{jobs}'
        )

    def job(self, name: str, cwd: Path) -> str:
        return f'\n[[heartbeat]]\nname = "{name}"\nevery = "1h"\nprompt = "p"\ncwd = "{cwd}"\n'

    def fork(self, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
        code = main(["fork", *args, "--config", str(self.config)])
        out, err = capsys.readouterr()
        assert self.password not in out + err
        return code, out, err

    def reader(self) -> PgEventLogStore:
        return PgEventLogStore(
            Database(self.dsn, synchronous_commit=False),
            self.keyring,
            Leases(Database(self.dsn), "test-reader", ttl=TTL),
        )

    def rows(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row vigil keeps (the lease rows too): what "nothing written" compares."""
        with psycopg.connect(self.dsn) as conn:
            return {t: sorted(conn.execute(f"SELECT * FROM {t}").fetchall()) for t in TABLES}  # noqa: S608  # fixed table names

    def transcript(self, session: str) -> list[dict[str, Any]]:
        db = Database(self.dsn)
        store = PgTranscriptStore(
            db, self.keyring, Leases(db, "test-reader", ttl=TTL), lambda _: None
        )
        key: SessionKey = {"project_key": project_key(self.cwd), "session_id": session}
        loaded = asyncio.run(store.load(key))
        db.close()
        assert loaded is not None, f"no transcript for session {session}"
        return [cast("dict[str, Any]", e) for e in loaded]


@pytest.fixture
def cluster_site(tmp_path: Path, pg_dsn: str) -> ClusterSite:
    return ClusterSite(tmp_path, pg_dsn)


def test_fork_at_the_last_turn_and_at_a_turn_in_postgresql(
    cluster_site: ClusterSite, capsys: pytest.CaptureFixture[str]
) -> None:
    site = cluster_site
    source_rows = site.rows()

    code, out, err = site.fork(capsys, "alpha", "bravo", "--json")
    assert (code, err) == (0, "")
    made = json.loads(out)
    assert {k: made[k] for k in ("name", "source", "turn", "next_turn", "cwd")} == {
        "name": "bravo",
        "source": "alpha",
        "turn": 3,  # turn 4 failed: the last completed one
        "next_turn": 4,
        "cwd": str(site.cwd),
    }
    assert made["source_session_id"] == site.session
    assert made["session_id"] not in (None, site.session)
    assert made["journal"] == f"{redact(site.dsn)} events/bravo"

    # NEW_NAME's log: one `forked` record, seq 1; a node opening it resumes the new
    # session at its copied last entry, numbered on from turn 4.
    reader = site.reader()
    [(seq, record)] = list(reader.read("bravo"))
    assert seq == 1
    assert {k: record[k] for k in ("type", "source", "source_turn", "session_id")} == {
        "type": "forked",
        "source": "alpha",
        "source_turn": 3,
        "session_id": made["session_id"],
    }
    state = ConversationState()
    state.feed(record)
    copied = site.transcript(made["session_id"])
    messages = [e for e in copied if e["type"] in ("user", "assistant")]
    assert [e["forkedFrom"]["messageUuid"] for e in messages] == [e["uuid"] for e in site.entries]
    assert {e["sessionId"] for e in messages} == {made["session_id"]}
    assert (state.session_id, state.cwd, state.resume_at, state.next_turn) == (
        made["session_id"],
        str(site.cwd),
        messages[-1]["uuid"],
        4,
    )
    assert fold(e for _, e in reader.read("bravo")).forked_from is not None

    # The source is untouched; the lease the fork took is released.
    after = site.rows()
    for table in ("events", "transcripts"):
        assert set(source_rows[table]) <= set(after[table])
    assert [r for r in after["events"] if r[0] == "alpha"] == [
        r for r in source_rows["events"] if r[0] == "alpha"
    ]
    lease = reader.leases.owner("bravo")
    assert lease is not None and lease.node == "vigil-fork"
    assert lease.expires_at <= datetime.now(UTC)

    # --at: the history up to that turn only.
    code, out, err = site.fork(capsys, "alpha", "charlie", "--at", "2")
    assert (code, err) == (0, "")
    [(_, record)] = list(reader.read("charlie"))
    assert out == (
        f"forked alpha at turn 2 into charlie (session {record['session_id']}); add a "
        f'[[heartbeat]] named "charlie" with cwd = "{site.cwd}" and reload vigil to run it\n'
    )
    assert record["source_turn"] == 2
    copied = site.transcript(record["session_id"])
    messages = [e for e in copied if e["type"] in ("user", "assistant")]
    assert [e["forkedFrom"]["messageUuid"] for e in messages] == [
        e["uuid"] for e in site.entries[:4]
    ]
    reader.db.close()
    reader.leases.db.close()

    # Ciphertext only: no prompt, reply, name or session id in any row the fork wrote.
    new_rows = {t: set(site.rows()[t]) - set(source_rows[t]) for t in ("events", "transcripts")}
    assert len(new_rows["events"]) == 2 and len(new_rows["transcripts"]) >= 2
    for row in new_rows["events"] | new_rows["transcripts"]:
        line = bytes(row[3])
        for plain in (b"prompt 1", b"reply 1", b"alpha", site.session.encode(), b"forked"):
            assert plain not in line

    # The cluster's verify authenticates every record, the fork's too; sessions (read
    # from PostgreSQL) say where each fork came from.
    assert main(["verify", "--config", str(site.config)]) == 0, capsys.readouterr()
    capsys.readouterr()
    assert main(["sessions", "--config", str(site.config), "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert {n: (r["forked_from"], r["forked_turn"]) for n, r in rows.items()} == {
        "alpha": (None, None),
        "bravo": ("alpha", 3),
        "charlie": ("alpha", 2),
    }


def test_every_refusal_writes_nothing(
    cluster_site: ClusterSite, capsys: pytest.CaptureFixture[str]
) -> None:
    site = cluster_site
    # A conversation that has events, and a name a live node holds (no events yet).
    leases = Leases(Database(site.dsn), "node-b", ttl=TTL)
    events = PgEventLogStore.connect(site.dsn, site.keyring, leases)
    log = events.open("delta")
    log.append(ev.session_bound("s-delta", str(site.cwd), mode="new", at=AT))
    log.close()
    leases.acquire("held")
    before = site.rows()

    refusals = [
        (("nosuch", "bravo"), 2, "no heartbeat job named 'nosuch' (jobs: alpha, delta)"),
        (("alpha", "delta"), 11, "delta already has events ("),
        (
            ("alpha", "held"),
            11,
            "node node-b holds held's lease until",
        ),
        (
            ("alpha", "bravo", "--at", "4"),
            11,
            "turn 4 of alpha is failed (model_error), not completed; completed turns: 1, 2, 3",
        ),
        (
            ("alpha", "bravo", "--at", "9"),
            11,
            "alpha has no turn 9 (its turns are 1-4; completed: 1, 2, 3)",
        ),
        (("delta", "bravo"), 11, "delta has no completed turn to fork from"),
    ]
    for args, code, message in refusals:
        done = site.fork(capsys, *args)
        assert done[:2] == (code, ""), (args, done)
        assert message in done[2], (args, done[2])
        if code == 11:
            assert done[2].startswith("vigil: error: fork refused: "), done[2]
            assert done[2].endswith("; nothing was written\n"), done[2]
        assert site.rows() == before, args

    # A job configured under the new name must run where the source ran.
    site.write_config(site.job("bravo", site.root / "elsewhere"))
    code, _, err = site.fork(capsys, "alpha", "bravo")
    assert code == 11
    assert f"job 'bravo' is configured with cwd = {site.root / 'elsewhere'}" in err
    assert site.rows() == before
    events.db.close()
    leases.db.close()


def test_a_record_that_cannot_be_written_takes_its_copied_transcript_with_it(
    cluster_site: ClusterSite,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    site = cluster_site
    before = site.rows()

    def refused(self: PgEventLog, event: ev.Event) -> int:
        raise JournalWriteError(f"events/{self.name}", "53100", "could not extend file")

    monkeypatch.setattr(PgEventLog, "append", refused)
    code, out, err = site.fork(capsys, "alpha", "bravo")
    assert (code, out) == (5, "")
    assert "could not extend file" in err
    after = site.rows()
    for table in ("events", "transcripts", "transcript_streams"):
        assert after[table] == before[table], table
    lease = Leases(Database(site.dsn), "test-reader", ttl=TTL).owner("bravo")
    assert lease is not None and lease.expires_at <= datetime.now(UTC)  # released
