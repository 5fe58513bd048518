"""``vigil fork``: choosing the cut (pure), and the offline fork on a real store.

The transcript here is made of entries shaped like the CLI's (user and assistant
entries chained by ``parentUuid``); the SDK's own ``fork_session_via_store`` copies
them. The e2e test ``tests/e2e/test_fork.py`` runs the forked session for real.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any, cast

import pytest
from claude_agent_sdk.types import SessionKey, SessionStoreEntry

from daemon import events as ev
from daemon.agent.sdk import ForkedTranscript, fork_transcript, project_key
from daemon.agent.store import JournalSessionStore
from daemon.cli.main import main
from daemon.errors import ForkRefusedError
from daemon.events import Event
from daemon.events.heal import fold
from daemon.journal.conversation import Conversation, ConversationState
from daemon.journal.file import FsyncPolicy, Journal
from daemon.journal.keyring import Keyring, generate_key_file
from daemon.journal.logstore import FileEventLogStore, journal_path
from daemon.layout import Layout
from daemon.mirror.db import Mirror
from daemon.ops import fork as fork_module
from daemon.ops.fork import ForkPoint, check_target_cwd, fork_conversation, fork_point
from daemon.ops.history import render_history

AT = "2026-11-21T10:00:00.000Z"
CWD = "/srv/agents/alpha"


def turn(
    n: int, *, end: str = "completed", session: str = "s-1", uuid_: str | None = None
) -> list[Event]:
    out = [
        ev.turn_started(n, f"prompt {n}", job="alpha", trigger="schedule", at=AT),
        ev.assistant(n, f"reply {n}", uuid=uuid_ or f"a-{n}", model="m", at=AT),
    ]
    if end == "open":
        return out
    out.append(
        ev.result(
            n,
            session_id=session,
            is_error=end == "failed",
            subtype="success",
            text=f"reply {n}",
            session_cost_usd=0.01 * n,
            usage=None,
            duration_ms=5,
            num_turns=1,
            at=AT,
        )
    )
    if end in ("completed", "quiet"):
        out.append(ev.turn_completed(n, quiet=end == "quiet", at=AT))
    else:
        out.append(ev.turn_failed(n, "model_error", "HTTP 500", at=AT))
    return out


def conversation(*turns: list[Event]) -> list[Event]:
    return [ev.session_bound("s-1", CWD, mode="new", at=AT), *(e for t in turns for e in t)]


def fork_record(source: str, source_turn: int) -> Event:
    return ev.forked(
        source=source,
        source_session_id="s-0",
        source_turn=source_turn,
        source_resume_at="a-0",
        session_id="s-1",
        resume_at="u-fork",
        cwd=CWD,
        at=AT,
    )


def refused(events: list[Event], at: int | None, source: str = "alpha") -> str:
    with pytest.raises(ForkRefusedError) as caught:
        fork_point(source, fold(events, open_turn_status="running"), at)
    assert caught.value.exit_code == 11
    return str(caught.value)


# ---------------------------------------------------------------- the cut (pure)


def test_the_default_cut_is_the_last_completed_or_quiet_turn() -> None:
    events = conversation(turn(1), turn(2, end="quiet"), turn(3, end="failed"), turn(4, end="open"))
    point = fork_point("alpha", fold(events, open_turn_status="running"), None)
    assert point == ForkPoint("alpha", 2, "s-1", "a-2", CWD)


def test_a_cut_at_a_turn_takes_that_turns_session_and_last_assistant_entry() -> None:
    events = conversation(turn(1, session="s-old"), turn(2, session="s-new"))
    assert fork_point("alpha", fold(events), 1) == ForkPoint("alpha", 1, "s-old", "a-1", CWD)


def test_refusals_say_why_and_list_the_completed_turns() -> None:
    skipped = [ev.beat_skipped(3, "budget_exhausted", at=AT)]
    events = conversation(turn(1), turn(2, end="failed"), skipped, turn(4, end="open"))
    assert refused(events, 7) == (
        "fork refused: alpha has no turn 7 (its turns are 1-4; completed: 1); nothing was written"
    )
    assert "turn 2 of alpha is failed (model_error), not completed; completed turns: 1" in (
        refused(events, 2)
    )
    assert "turn 3 of alpha is skipped (budget_exhausted), not completed" in refused(events, 3)
    assert "turn 4 of alpha is running, not completed" in refused(events, 4)
    assert "alpha has no completed turn to fork from" in refused(
        conversation(turn(1, end="failed")), None
    )
    assert "alpha has no completed turn to fork from" in refused(conversation(), 1)


def test_a_fork_of_a_fork_cannot_be_cut_before_its_own_turns() -> None:
    events = [fork_record("origin", 2), *turn(3)]
    assert refused(events, 2, source="branch") == (
        "fork refused: turn 2 of branch is from before it was forked from origin at turn 2; "
        "fork origin at turn 2 instead (completed turns of branch: 3); nothing was written"
    )
    assert fork_point("branch", fold(events), 3) == ForkPoint("branch", 3, "s-1", "a-3", CWD)


def test_a_job_configured_under_the_new_name_must_share_the_cwd() -> None:
    point = ForkPoint("alpha", 2, "s-1", "a-2", CWD)
    check_target_cwd("bravo", None, point)
    check_target_cwd("bravo", CWD, point)
    with pytest.raises(ForkRefusedError, match="job 'bravo' is configured with cwd = /elsewhere"):
        check_target_cwd("bravo", "/elsewhere", point)


# ---------------------------------------------------------------- folding a fork


def test_a_forks_state_resumes_its_session_and_numbers_on_from_the_cut() -> None:
    state = ConversationState()
    state.feed(fork_record("alpha", 5))
    assert (state.session_id, state.cwd, state.resume_at, state.next_turn) == (
        "s-1",
        CWD,
        "u-fork",
        6,
    )
    view = fold([fork_record("alpha", 5)])
    assert view.next_turn == 6 and view.session_id == "s-1"
    assert view.forked_from is not None and view.forked_from.describe() == (
        "forked from alpha at turn 5"
    )
    assert render_history("bravo", [], view.forked_from) == (
        "bravo: no turns yet (forked from alpha at turn 5; the turns up to it are in "
        "`vigil history alpha`)\n"
    )
    view = fold([fork_record("alpha", 5), *turn(6)])
    assert render_history("bravo", view.turns, view.forked_from).startswith(
        "bravo: 1 turns (forked from alpha at turn 5;"
    )


# ---------------------------------------------------------------- the store


def entries(session: str, count: int) -> tuple[list[dict[str, Any]], list[str]]:
    """``count`` turns of CLI-shaped transcript entries; the assistant uuids."""
    out: list[dict[str, Any]] = []
    assistants: list[str] = []
    parent: str | None = None
    for n in range(1, count + 1):
        for kind, text in (("user", f"prompt {n}"), ("assistant", f"reply {n}")):
            uid = str(uuid.uuid4())
            out.append(
                {
                    "type": kind,
                    "uuid": uid,
                    "parentUuid": parent,
                    "sessionId": session,
                    "timestamp": f"2026-11-21T10:00:0{n}.000Z",
                    "message": {"role": kind, "content": text},
                }
            )
            parent = uid
        assistants.append(parent or "")
    return out, assistants


# ---------------------------------------------------------------- the offline fork


class Site:
    """A config, key and layout with conversation ``alpha``: ``turns`` completed turns
    journaled, and their transcript in the store."""

    def __init__(self, root: Path, turns: int = 3) -> None:
        self.root = root
        self.layout = Layout(root / "state", root / "run")
        self.layout.create()
        generate_key_file(root / "vigil.key")
        self.keyring = Keyring.load(root / "vigil.key")
        self.cwd = root / "work"
        self.cwd.mkdir()
        self.config = root / "vigil.toml"
        self.config.write_text(
            '[daemon]\nstate_dir = "state"\nruntime_dir = "run"\nkey_file = "vigil.key"\n'
        )
        self.session = str(uuid.uuid4())
        self.entries, self.assistants = entries(self.session, turns)
        store = JournalSessionStore(self.layout.transcripts, self.keyring)
        key: SessionKey = {"project_key": project_key(self.cwd), "session_id": self.session}
        asyncio.run(store.append(key, cast("list[SessionStoreEntry]", self.entries)))
        journal = Journal.open(
            journal_path(self.layout.conversations, "alpha"), "alpha", self.keyring
        )
        journal.append(ev.session_bound(self.session, str(self.cwd), mode="new", at=AT))
        for n, assistant in enumerate(self.assistants, start=1):
            for event in turn(n, session=self.session, uuid_=assistant):
                journal.append(event)
        journal.close()

    def files(self) -> dict[str, bytes]:
        state = self.layout.state_dir
        return {
            str(p.relative_to(state)): p.read_bytes()
            for p in sorted(state.rglob("*"))
            if p.is_file() and p.name != ".vigil.lock"
        }

    def fork(
        self, name: str, at: int | None, **kw: Any
    ) -> tuple[fork_module.ForkResult, str | None]:
        return asyncio.run(
            fork_conversation(
                self.layout, self.keyring, "alpha", name, at, fsync=FsyncPolicy.TURN, **kw
            )
        )


def test_a_fork_copies_the_transcript_up_to_the_turn_and_changes_nothing_of_the_source(
    tmp_path: Path,
) -> None:
    site = Site(tmp_path)
    before = site.files()
    daemon_store = JournalSessionStore(site.layout.transcripts, site.keyring)
    assert daemon_store.has_session(site.session)  # a running daemon's store, listed

    result, warning = site.fork("bravo", 2)
    assert warning is None
    assert (result.name, result.point.turn, result.next_turn) == ("bravo", 2, 3)
    assert result.point.session_id == site.session and result.session_id != site.session
    after = site.files()
    assert {k: after[k] for k in before} == before  # every file of the source, byte for byte
    assert sorted(set(after) - set(before)) == [
        "conversations/bravo.jsonl",
        next(k for k in after if k.startswith("transcripts/") and k not in before),
    ]

    key: SessionKey = {"project_key": project_key(site.cwd), "session_id": result.session_id}
    copied = cast("list[dict[str, Any]]", asyncio.run(daemon_store.load(key)))
    messages = [e for e in copied if e["type"] in ("user", "assistant")]
    sources = [e["forkedFrom"]["messageUuid"] for e in messages]
    assert sources == [e["uuid"] for e in site.entries[:4]]  # turns 1-2, in order
    assert {e["sessionId"] for e in messages} == {result.session_id}
    assert not {e["uuid"] for e in messages} & {e["uuid"] for e in site.entries}
    assert daemon_store.has_session(result.session_id)  # found although listed before

    conv = Conversation.open(
        FileEventLogStore(site.layout.conversations, site.keyring, fsync=FsyncPolicy.TURN), "bravo"
    )
    state = conv.state
    conv.close()
    assert (state.session_id, state.cwd, state.next_turn) == (result.session_id, str(site.cwd), 3)
    assert state.resume_at == messages[-1]["uuid"]


def test_the_command_line_forks_at_the_last_turn_and_updates_the_mirror(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = Site(tmp_path)
    mirror_path = site.layout.runtime_dir / "mirror.sqlite3"
    Mirror.open(mirror_path).close()  # a daemon ran once
    code = main(["fork", "alpha", "bravo", "--config", str(site.config), "--json"])
    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    made = json.loads(out)
    assert (made["name"], made["source"], made["turn"], made["next_turn"]) == (
        "bravo",
        "alpha",
        3,
        4,
    )
    assert made["source_session_id"] == site.session and made["cwd"] == str(site.cwd)
    mirror = Mirror.open(mirror_path, readonly=True)
    rows = {r.name: r for r in mirror.conversations()}
    mirror.db.close()
    assert (rows["bravo"].origin, rows["bravo"].session_id) == ("alpha@3", made["session_id"])

    before = site.files()
    code = main(["fork", "alpha", "bravo", "--config", str(site.config)])
    out, err = capsys.readouterr()
    assert (code, out) == (11, "")
    assert err.startswith("vigil: error: fork refused: bravo already has a journal")
    assert site.files() == before


def test_a_journal_appearing_during_the_fork_wins_and_the_copy_is_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = Site(tmp_path)
    real = fork_transcript

    async def racing(*args: Any) -> ForkedTranscript:
        copied = await real(*args)
        journal_path(site.layout.conversations, "bravo").write_bytes(b"")  # the daemon's
        return copied

    monkeypatch.setattr(fork_module, "fork_transcript", racing)
    before = site.files()
    with pytest.raises(ForkRefusedError, match="bravo got a journal while the fork was being made"):
        site.fork("bravo", None)
    assert site.files() == {**before, "conversations/bravo.jsonl": b""}
    # No scratch file is left behind either (a leading-dot file is not a conversation).
    assert sorted(p.name for p in site.layout.conversations.iterdir()) == [
        "alpha.jsonl",
        "bravo.jsonl",
    ]


def test_a_transcript_missing_from_the_store_refuses_the_fork(tmp_path: Path) -> None:
    site = Site(tmp_path)
    for path in site.layout.transcripts.iterdir():
        path.unlink()
    with pytest.raises(
        ForkRefusedError,
        match=f"the transcript of alpha's session {site.session} up to turn 3 cannot be copied",
    ):
        site.fork("bravo", None)
    assert not journal_path(site.layout.conversations, "bravo").exists()
    assert list(site.layout.transcripts.iterdir()) == []
