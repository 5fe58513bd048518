"""``vigil fork NAME NEW_NAME [--at TURN]``: a new conversation branched off another.

The fork is complete when :func:`fork_conversation` returns, and made offline (no CLI
runs, no model is called), so it is safe while the daemon runs:

1. NAME's journal is read (never written) and the cut chosen (:func:`fork_point`,
   pure): turn TURN, or the last completed turn; it must be completed (or quiet).
2. The SDK's ``fork_session_via_store`` (through ``daemon.agent.sdk.fork_transcript``)
   copies NAME's transcript up to that turn's last assistant entry into a new SDK
   session in the encrypted store, with new uuids: NAME's transcript is only read.
3. NEW_NAME's journal is written with one ``forked`` record (source, the source's
   session and resume uuid, the turn, the new session), to a temporary file that is
   then linked into place: the name appears complete or not at all, and never over
   a journal that appeared meanwhile (then the copied transcript is deleted).
4. The record is applied to the derived mirror, if there is one.

A job named NEW_NAME (same ``cwd`` as NAME) then resumes the new session at its first
beat, like any conversation; its turns are numbered on from TURN + 1. A daemon only
opens the journals of its configured jobs, so writing one it has no job for is safe.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemon import events as ev
from daemon.agent.sdk import (
    ForkedTranscript,
    TranscriptForkError,
    fork_transcript,
    project_key,
)
from daemon.agent.store import JournalSessionStore
from daemon.errors import ForkRefusedError, VigilError
from daemon.events.heal import ConversationView, TurnView, fold
from daemon.fsutil import fsync_dir
from daemon.journal.file import FsyncPolicy, Journal
from daemon.journal.keyring import Keyring
from daemon.journal.logstore import journal_path
from daemon.journal.scan import read_events
from daemon.layout import Layout
from daemon.mirror.database import MirrorError
from daemon.mirror.db import Mirror
from daemon.mirror.rebuild import journal_feed

if TYPE_CHECKING:  # the SDK is imported where it is used (about a second to import)
    from claude_agent_sdk.types import SessionStore

_ANSWERED = ("completed", "quiet")


@dataclass(frozen=True)
class ForkPoint:
    """Where a conversation is cut: the end of ``turn``, entry ``resume_at`` of
    SDK session ``session_id``, run in ``cwd``."""

    source: str
    turn: int
    session_id: str
    resume_at: str
    cwd: str


@dataclass(frozen=True)
class ForkResult:
    name: str
    point: ForkPoint
    session_id: str  # the fork's own SDK session
    journal: Path | str  # its journal file, or its event log's place in the database

    @property
    def next_turn(self) -> int:
        return self.point.turn + 1

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.point.source,
            "turn": self.point.turn,
            "session_id": self.session_id,
            "source_session_id": self.point.session_id,
            "cwd": self.point.cwd,
            "next_turn": self.next_turn,
            "journal": str(self.journal),
        }


def fork_point(source: str, view: ConversationView, at: int | None) -> ForkPoint:
    """The cut for ``vigil fork SOURCE ... [--at AT]`` (pure); ``ForkRefusedError`` with
    the reason when there is none."""
    completed = [t for t in view.turns if t.status in _ANSWERED]
    if not completed:
        raise ForkRefusedError(f"{source} has no completed turn to fork from")
    turn = completed[-1] if at is None else _turn_at(source, view, completed, at)
    session_id = turn.session_id or view.session_id
    if turn.resume_at is None or session_id is None or view.cwd is None:
        raise ForkRefusedError(
            f"turn {turn.turn} of {source} has no transcript entry to cut at "
            "(its assistant message carried no uuid)"
        )
    return ForkPoint(source, turn.turn, session_id, turn.resume_at, view.cwd)


def _turn_at(source: str, view: ConversationView, completed: list[TurnView], at: int) -> TurnView:
    numbers = ", ".join(str(t.turn) for t in completed)
    origin = view.forked_from
    if origin is not None and at <= origin.source_turn:
        raise ForkRefusedError(
            f"turn {at} of {source} is from before it was {origin.describe()}; "
            f"fork {origin.source} at turn {at} instead (completed turns of {source}: {numbers})"
        )
    turn = next((t for t in view.turns if t.turn == at), None)
    if turn is None:
        first = view.turns[0].turn if view.turns else at
        last = view.turns[-1].turn if view.turns else at
        raise ForkRefusedError(
            f"{source} has no turn {at} (its turns are {first}-{last}; completed: {numbers})"
        )
    if turn.status not in _ANSWERED:
        why = f" ({turn.reason})" if turn.reason else ""
        raise ForkRefusedError(
            f"turn {at} of {source} is {turn.status}{why}, not completed; "
            f"completed turns: {numbers}"
        )
    return turn


def check_target_cwd(name: str, configured_cwd: str | None, point: ForkPoint) -> None:
    """A job already configured as NEW_NAME must run where the source ran: the CLI
    resumes a session only from the directory it was made in."""
    if configured_cwd is not None and configured_cwd != point.cwd:
        raise ForkRefusedError(
            f"job {name!r} is configured with cwd = {configured_cwd}, but {point.source}'s "
            f"conversation runs in {point.cwd}; a fork resumes only from the same directory"
        )


async def copy_transcript(store: SessionStore, point: ForkPoint) -> ForkedTranscript:
    """The source's transcript up to the cut, copied into a new session of ``store``
    (the source is only read); ``ForkRefusedError`` when the SDK cannot copy it."""
    try:
        return await fork_transcript(store, point.session_id, point.cwd, point.resume_at)
    except TranscriptForkError as exc:
        raise ForkRefusedError(
            f"the transcript of {point.source}'s session {point.session_id} up to turn "
            f"{point.turn} cannot be copied ({exc})"
        ) from exc


async def discard_transcript(
    store: SessionStore, point: ForkPoint, copied: ForkedTranscript
) -> None:
    """Delete a copied transcript whose ``forked`` record was not written."""
    await store.delete({"project_key": project_key(point.cwd), "session_id": copied.session_id})


def fork_record(point: ForkPoint, copied: ForkedTranscript) -> ev.Event:
    """The new conversation's first record (pure): where it came from, its session."""
    return ev.forked(
        source=point.source,
        source_session_id=point.session_id,
        source_turn=point.turn,
        source_resume_at=point.resume_at,
        session_id=copied.session_id,
        resume_at=copied.resume_at,
        cwd=point.cwd,
    )


async def fork_conversation(
    layout: Layout,
    keyring: Keyring,
    source: str,
    name: str,
    at: int | None,
    *,
    fsync: FsyncPolicy,
    configured_cwd: str | None = None,
    mirror_path: Path | None = None,
) -> tuple[ForkResult, str | None]:
    """Fork ``source`` into ``name`` (see the module docstring). The caller checked that
    ``source`` has a journal. Returns the result and a warning about the mirror, if any.
    """
    directory = layout.conversations
    target = journal_path(directory, name)
    if target.exists():
        raise ForkRefusedError(
            f"{name} already has a journal ({target}); a fork needs a new name "
            f"(`vigil history {name}` shows what it holds)"
        )
    view = fold(
        read_events(journal_path(directory, source), source, keyring), open_turn_status="running"
    )
    point = fork_point(source, view, at)
    check_target_cwd(name, configured_cwd, point)
    store = JournalSessionStore(layout.transcripts, keyring, fsync=fsync)
    copied = await copy_transcript(store, point)
    try:
        _publish(directory, name, keyring, fork_record(point, copied), fsync)
    except BaseException:  # not linked in: the copied transcript belongs to nothing
        await discard_transcript(store, point, copied)
        raise
    fsync_dir(directory)
    result = ForkResult(name, point, copied.session_id, target)
    warning = None if mirror_path is None else _add_to_mirror(mirror_path, target, name, keyring)
    return result, warning


def _publish(
    directory: Path, name: str, keyring: Keyring, record: ev.Event, fsync: FsyncPolicy
) -> None:
    """Write ``name``'s journal beside its place and link it in: all or nothing, and
    never over a journal that appeared since the check. Raises unless it was linked."""
    final = journal_path(directory, name)
    scratch = directory / f".{name}.fork-{uuid.uuid4().hex[:12]}.tmp"
    try:
        journal = Journal.open(scratch, name, keyring, fsync=fsync)
        try:
            journal.append(record)
        finally:
            journal.close()  # fsyncs unless the policy is "never"
        try:
            os.link(scratch, final)
        except FileExistsError:
            raise ForkRefusedError(
                f"{name} got a journal while the fork was being made ({final})"
            ) from None
    finally:
        with contextlib.suppress(OSError):  # a leftover would be harmless: not *.jsonl
            scratch.unlink()


def _add_to_mirror(mirror_path: Path, journal: Path, name: str, keyring: Keyring) -> str | None:
    """Replay the new journal into the mirror, if one exists (it is derived: a failure
    here is only a warning, and the next start or `vigil rebuild` repairs it)."""
    if not mirror_path.exists():
        return None
    try:
        Mirror.open(mirror_path, readonly=True).db.close()  # never recreate another schema
        mirror = Mirror.open(mirror_path, busy_timeout_ms=30_000)
        try:
            mirror.replay(name, journal_feed(journal, name, keyring))
        finally:
            mirror.close()
    except (MirrorError, sqlite3.Error, VigilError) as exc:
        return f"the mirror was not updated ({exc}); `vigil rebuild {name}` adds the fork"
    return None
