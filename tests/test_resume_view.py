"""The transcript store's resume view (issue 14): after a compaction a resume loads what
the CLI needs, through an index, and everything whenever that is not safe. That the CLI
sends the model the same request from the view is shown end to end in
``tests/e2e/test_resume_view.py``; here: the rule's edges and the store's bookkeeping."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from pathlib import Path
from typing import Any

from claude_agent_sdk.testing import run_session_store_conformance
from claude_agent_sdk.types import SessionKey

from daemon.agent.resume_view import resume_view
from daemon.agent.store import JournalSessionStore
from daemon.journal.keyring import Keyring

Entry = dict[str, Any]
KEY: SessionKey = {"project_key": "p", "session_id": "s"}
KEYRING = Keyring.generate()


class Transcript:
    """Entries shaped like the CLI's (uuid/parentUuid chains, a compact boundary with
    its preserved messages, the summary, attachments and metadata), in append batches."""

    def __init__(self) -> None:
        self.batches: list[list[Entry]] = []
        self.leaf: str | None = None
        self.beat = 0

    def _msg(self, kind: str, text: str, parent: str | None = None) -> Entry:
        uid = str(uuid.uuid4())
        entry: Entry = {"type": kind, "uuid": uid, "parentUuid": parent or self.leaf}
        entry |= {"sessionId": "s", "message": {"role": kind, "content": text}}
        self.leaf = uid
        return entry

    def beat_batch(self, *, compact: bool = False, after: str | None = None) -> tuple[str, str]:
        """One beat: a prompt and its reply (``compact``: a boundary between them,
        preserving the previous reply and the prompt; ``after``: the prompt's parent)."""
        self.beat += 1
        last_reply = self.leaf
        prompt = self._msg("user", f"beat {self.beat}", parent=after)
        batch = [{"type": "queue-operation", "operation": "enqueue", "sessionId": "s"}, prompt]
        if compact:
            boundary = {
                "type": "system",
                "subtype": "compact_boundary",
                "uuid": str(uuid.uuid4()),
                "parentUuid": None,
                "logicalParentUuid": prompt["uuid"],
                "sessionId": "s",
                "compactMetadata": {
                    "trigger": "auto",
                    "preTokens": 100_000,
                    "postTokens": 2_000,
                    "preservedMessages": {"uuids": [last_reply, prompt["uuid"]]},
                },
            }
            self.leaf = boundary["uuid"]
            attachment = self._msg("attachment", "date")
            summary = self._msg("user", f"Summary of beats 1-{self.beat - 1}")
            summary["isCompactSummary"] = True
            batch += [boundary, attachment, summary]
        reply = self._msg("assistant", f"reply {self.beat}")
        batch += [reply, {"type": "last-prompt", "sessionId": "s", "lastPrompt": "x"}]
        batch += [{"type": "mode", "sessionId": "s", "mode": "normal"}]
        self.batches.append(batch)
        return prompt["uuid"], reply["uuid"]

    def meta(self, kind: str, **fields: Any) -> None:
        self.batches.append([{"type": kind, "sessionId": "s", **fields}])

    @property
    def entries(self) -> list[Entry]:
        return [e for batch in self.batches for e in batch]


async def store_with(t: Transcript, path: Path, *, start: int = 0) -> JournalSessionStore:
    store = JournalSessionStore(path, KEYRING, resume_view=True)
    for batch in t.batches[start:]:
        await store.append(KEY, batch)  # type: ignore[arg-type]  # opaque SDK entries
    return store


def expected(entries: list[Entry]) -> list[Entry]:
    chosen = resume_view(entries)
    assert chosen is not None
    return [entries[i] for i in chosen]


def long_transcript() -> Transcript:
    t = Transcript()
    t.meta("custom-title", customTitle="long-lived")
    for beat in range(1, 31):
        t.beat_batch(compact=beat in (10, 20))
        if beat == 5:
            t.meta("content-replacement", replacements=[])  # kept wherever it is
    return t


def test_conformance_holds_with_the_resume_view_on(tmp_path: Path) -> None:
    counter = itertools.count()

    def make_store() -> JournalSessionStore:
        return JournalSessionStore(tmp_path / f"s-{next(counter)}", KEYRING, resume_view=True)

    asyncio.run(run_session_store_conformance(make_store, skip_optional=frozenset()))


def test_the_view_starts_at_the_last_compaction_and_keeps_what_the_cli_reads() -> None:
    t = long_transcript()
    entries = t.entries
    view = expected(entries)
    kinds = [e["type"] for e in view]
    assert len(view) < len(entries) // 2
    assert kinds[:2] == ["custom-title", "content-replacement"]  # kept from long before
    boundary = next(i for i, e in enumerate(view) if e.get("subtype") == "compact_boundary")
    before = [e["message"]["content"] for e in view[:boundary] if "message" in e]
    assert before == ["reply 19", "beat 20"]  # the preserved messages, nothing older
    assert [e["type"] for e in view[:boundary]].count("mode") == 0  # a newer one follows


def test_the_rule_refuses_what_it_cannot_apply_safely() -> None:
    t = Transcript()
    for beat in range(1, 6):
        t.beat_batch(compact=beat == 4)
    assert resume_view(t.entries[:3]) == [0, 1, 2]  # no compaction: everything
    entries = t.entries
    preserved = next(e for e in entries if e.get("subtype") == "compact_boundary")
    gone = preserved["compactMetadata"]["preservedMessages"]["uuids"][0]
    assert resume_view([e for e in entries if e.get("uuid") != gone]) is None
    # A resume cut at a reply from before the compaction branches off the uncompacted
    # history: the model sees it again, so the view would be wrong.
    reply_2 = next(e["uuid"] for e in entries if e.get("message", {}).get("content") == "reply 2")
    t.beat_batch(after=reply_2)
    assert resume_view(t.entries) is None


def test_the_store_loads_the_view_through_its_index_as_the_transcript_grows(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        t = long_transcript()
        store = await store_with(t, tmp_path)
        assert await store.load(KEY) == expected(t.entries)
        assert store.loads == {"view": 1}  # a full read built the index
        assert await store.load(KEY) == expected(t.entries)
        assert store.loads["view_indexed"] == 1
        n = len(t.batches)
        for beat in range(31, 46):  # a third compaction moves the boundary
            t.beat_batch(compact=beat == 40)
        for i in range(n, len(t.batches)):
            await store.append(KEY, t.batches[i])  # type: ignore[arg-type]  # opaque SDK entries
            so_far = [e for batch in t.batches[: i + 1] for e in batch]
            assert await store.load(KEY) == expected(so_far)
        assert store.loads["view"] == 1  # every later load went through the index
        fresh = JournalSessionStore(tmp_path, KEYRING, resume_view=True)  # a restart
        assert await fresh.load(KEY) == expected(t.entries)
        assert fresh.loads == {"view_indexed": 1}  # the index beside the stream
        store.load_whole_next("s")
        assert await store.load(KEY) == t.entries
        assert await JournalSessionStore(tmp_path, KEYRING).load(KEY) == t.entries  # fork

    asyncio.run(scenario())


def test_a_stale_or_broken_index_is_rebuilt_from_a_full_read(tmp_path: Path) -> None:
    async def scenario() -> None:
        t = long_transcript()
        await (await store_with(t, tmp_path)).load(KEY)
        (index,) = await asyncio.to_thread(lambda: list(tmp_path.glob("*.view")))
        for damage in ('{"v": 1, "boundary": [3, 17], "keep": []}', "not json"):
            index.write_text(damage)
            store = JournalSessionStore(tmp_path, KEYRING, resume_view=True)
            assert await store.load(KEY) == expected(t.entries)
            assert store.loads == {"view": 1}
        index.unlink()
        store = JournalSessionStore(tmp_path, KEYRING, resume_view=True)
        assert await store.load(KEY) == expected(t.entries)
        await store.delete(KEY)
        assert await asyncio.to_thread(lambda: list(tmp_path.iterdir())) == []

    asyncio.run(scenario())


def test_a_branch_off_the_uncompacted_history_loads_everything(tmp_path: Path) -> None:
    async def scenario() -> None:
        t = long_transcript()
        store = await store_with(t, tmp_path)
        assert await store.load(KEY) == expected(t.entries)
        old_reply = next(
            e["uuid"] for e in t.entries if e.get("message", {}).get("content") == "reply 15"
        )
        t.beat_batch(after=old_reply)
        await store.append(KEY, t.batches[-1])  # type: ignore[arg-type]  # opaque SDK entries
        assert await store.load(KEY) == t.entries
        assert store.loads["whole"] == 1
        assert not await asyncio.to_thread(lambda: list(tmp_path.glob("*.view")))

    asyncio.run(scenario())


def test_the_first_append_after_a_restart_reads_only_since_the_last_compaction(
    tmp_path: Path,
) -> None:
    class Counting(JournalSessionStore):
        full_reads = 0

        def _records(self, stream: Any) -> list[dict[str, Any]]:
            Counting.full_reads += 1
            return super()._records(stream)

    async def scenario() -> None:
        t = long_transcript()
        store = await store_with(t, tmp_path)
        assert await store.load(KEY) == expected(t.entries)  # builds the index
        fresh = Counting(tmp_path, KEYRING, resume_view=True)  # a restart
        assert await fresh.load(KEY) == expected(t.entries)  # the resume
        t.beat_batch()
        await fresh.append(KEY, t.batches[-1])  # type: ignore[arg-type]  # opaque SDK entries
        # Entries the resume handed out come back as duplicates: stored once (entries
        # without a uuid have no identity to dedupe on, here as before).
        again = [e for e in expected(t.entries) if "uuid" in e]
        await fresh.append(KEY, again)  # type: ignore[arg-type]  # opaque SDK entries
        assert Counting.full_reads == 0  # no read of the whole history
        assert await fresh.load(KEY) == expected(t.entries)
        fresh.load_whole_next("s")
        assert await fresh.load(KEY) == t.entries  # and nothing was lost or doubled
        summaries = await fresh.list_session_summaries(KEY["project_key"])
        assert len(summaries) == 1

    asyncio.run(scenario())
