"""Start-up checkpoints: a round trip, and every wrong checkpoint falls back to the full
read with the same state (the journal is the truth; the checkpoint only saves reading)."""

from __future__ import annotations

import json
import os
import shutil
import stat
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon import events as ev
from daemon.journal.checkpoint import (
    Checkpoint,
    CheckpointUnusable,
    Unusable,
    anchor_at,
    checkpoint_path,
    read_checkpoint,
    write_checkpoint,
)
from daemon.journal.conversation import Conversation, ConversationState
from daemon.journal.file import FsyncPolicy, Journal
from daemon.journal.framing import encode_payload
from daemon.journal.keyring import Keyring
from daemon.journal.logstore import FileEventLogStore
from daemon.runtime.checkpoints import fold_from_checkpoint, load_checkpoints
from jobs.ledger import JobLedger

RING = Keyring.generate()
OTHER_RING = Keyring.generate()
SECRET = "the-prompt-text-nobody-may-read"  # noqa: S105  # a prompt, not a password


class _Log:
    """A structlog-like logger that keeps what it was told."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, Any]]] = []

    def warning(self, event: str, **kw: Any) -> None:
        self.lines.append((event, kw))


# ---------------------------------------------------------------- journals


def _at(minute: int) -> str:
    return f"2026-11-{1 + minute // 1440:02d}T{minute // 60 % 24:02d}:{minute % 60:02d}:00.000Z"


Plan = tuple[str, int, int]  # (how the turn ends, deltas, cost in cents)
ENDINGS = (
    "completed",
    "quiet",
    "failed",
    "interrupted",
    "skipped",
    "delivered",
    "retrying",
    "paused",
    "resumed",
    "queued",
    "alert",
)
_OPERATOR = ("paused", "resumed", "queued", "alert")


def events_of(plans: list[Plan], *, last_open: bool = False) -> list[dict[str, Any]]:
    """A conversation's events: each plan one turn (or a skipped beat)."""
    out = [ev.session_bound("s-1", "/srv/agent", mode="new", at=_at(0))]
    minute = 0
    for turn, (ending, deltas, cents) in enumerate(plans, start=1):
        minute += 600  # days apart: the spend ledger drops old steps
        at = _at(minute)
        if ending == "skipped":
            out.append(ev.beat_skipped(turn, "quiet_hours", at=at))
            continue
        out.append(ev.turn_started(turn, f"{SECRET} {turn}", job="j", trigger="schedule", at=at))
        out += [ev.delta(turn, f"word{i} ", at=at) for i in range(deltas)]
        out.append(ev.assistant(turn, "reply", uuid=f"a-{turn}", model="m", at=at))
        out.append(
            ev.result(
                turn,
                session_id="s-1",
                is_error=False,
                subtype="success",
                text="reply",
                session_cost_usd=cents * turn / 100,
                usage={},
                duration_ms=5,
                num_turns=1,
                context_tokens=1000 * turn,
                at=at,
            )
        )
        if deltas == 4:  # now and then the CLI compacts the history during a turn
            out.append(
                ev.compacted(
                    turn,
                    trigger="auto",
                    pre_tokens=9000,
                    post_tokens=900,
                    preserved=2,
                    boundary_uuid=f"b-{turn}",
                    at=at,
                )
            )
        if ending in ("completed", "quiet", "delivered", "retrying", *_OPERATOR):
            out.append(ev.turn_completed(turn, quiet=ending == "quiet", at=at))
        elif ending == "failed":
            out.append(ev.turn_failed(turn, "api_error", "500", at=at))
        else:
            out.append(ev.turn_interrupted(turn, "shutdown", at=at))
        out += _operator(ending, turn, minute)
        if ending == "delivered":
            out.append(ev.delivery_started(turn, f"{turn}/out", "out", 1, at=at))
            out.append(ev.delivery_done(turn, f"{turn}/out", "out", 1, at=at))
        if ending == "retrying":
            out.append(ev.delivery_started(turn, f"{turn}/out", "out", 1, at=at))
            out.append(
                ev.delivery_failed(turn, f"{turn}/out", "out", 1, error="503", retry_in_s=30, at=at)
            )
    if last_open:
        turn = len(plans) + 1
        out.append(ev.turn_started(turn, "cut off", job="j", trigger="schedule", at=_at(minute)))
        out.append(ev.delta(turn, "half ", at=_at(minute)))
    return out


def _operator(ending: str, turn: int, minute: int) -> list[dict[str, Any]]:
    """What an operator (or the alerting) journals after a turn, for ``ending``."""
    at = _at(minute)
    if ending == "paused":
        return [ev.job_paused(by="operator", until=_at(minute + 60), detail="x", at=at)]
    if ending == "resumed":
        return [ev.job_resumed(at=at)]
    if ending == "queued":
        return [ev.message_queued(f"m{turn}", f"note {turn}", at=at)]
    if ending == "alert":
        return [ev.alert_raised(turn, "failing", failures=2, reason="x", detail="y", at=at)]
    return []


def write_journal(directory: Path, name: str, events: list[dict[str, Any]]) -> Path:
    path = directory / f"{name}.jsonl"
    journal = Journal.open(path, name, RING, fsync=FsyncPolicy.NEVER)
    journal.append_payloads([encode_payload(e) for e in events])
    journal.close()
    return path


def full_read(directory: Path, name: str) -> tuple[Conversation, JobLedger]:
    ledger = JobLedger()
    store = FileEventLogStore(directory, RING, fsync=FsyncPolicy.NEVER)
    return Conversation.open(store, name, visit=ledger.feed), ledger


def fold(events: list[dict[str, Any]]) -> tuple[ConversationState, JobLedger]:
    state, ledger = ConversationState(), JobLedger()
    for event in events:
        state.feed(event)
        ledger.feed(event)
    return state, ledger


def make_checkpoint(journal: Path, name: str, events: list[dict[str, Any]], k: int) -> Checkpoint:
    """A checkpoint after the first ``k`` records, as the daemon writes it."""
    state, ledger = fold(events[:k])
    offset = sum(len(line) for line in journal.read_bytes().splitlines(keepends=True)[:k])
    return Checkpoint(name, anchor_at(journal, k, offset), state.to_dict(), ledger.to_dict())


def start_up(directory: Path, ckpts: Path, name: str) -> tuple[Conversation, JobLedger, bool]:
    """What start-up does with one journal: from its checkpoint when usable, else in full."""
    store = FileEventLogStore(directory, RING, fsync=FsyncPolicy.NEVER)
    folded, _ = load_checkpoints([(store.path(name), name)], RING, ckpts, _Log())  # type: ignore[arg-type]
    if name in folded:
        conv = Conversation.open_folded(store, name, folded[name])
        assert conv is not None
        return conv, folded[name].ledger, True
    conv, ledger = full_read(directory, name)
    return conv, ledger, False


PLANS = [
    ("completed", 4, 2),
    ("queued", 0, 1),
    ("alert", 0, 1),
    ("paused", 0, 0),
    ("interrupted", 1, 1),
    ("quiet", 1, 1),
    ("retrying", 2, 3),
    ("failed", 0, 0),
] * 3


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    journals, ckpts = tmp_path / "conversations", tmp_path / "checkpoints"
    journals.mkdir()
    ckpts.mkdir()
    return journals, ckpts


# ---------------------------------------------------------------- plain dicts


def test_state_and_ledger_round_trip_through_plain_dicts_with_every_field() -> None:
    state, ledger = fold(events_of(PLANS, last_open=True))
    assert set(state.to_dict()) == {f.name for f in fields(ConversationState)}
    assert set(ledger.to_dict()) == {f.name for f in fields(JobLedger)}
    # Through JSON, as the checkpoint stores them.
    state2 = ConversationState.from_dict(json.loads(json.dumps(state.to_dict())))
    ledger2 = JobLedger.from_dict(json.loads(json.dumps(ledger.to_dict())))
    assert state2 == state and ledger2 == ledger
    assert state.open_turn is not None and ledger.open_deliveries and ledger.spend._steps
    assert state.interrupted is None and state.pending_cut is not None
    assert ledger.pause and ledger.queued and ledger.last_failure and ledger.alerting


def test_every_field_that_holds_a_dataclass_is_rebuilt_as_one() -> None:
    """A field added to the fold with a dataclass value must be listed in NESTED, or its
    checkpoint would not hold plain JSON (and the fold's fingerprint would not see it)."""
    state, _ = fold(events_of(PLANS, last_open=True))
    state.interrupted = state.open_turn  # every optional field set
    nested = dict(ConversationState.NESTED)
    for f in fields(ConversationState):
        value = getattr(state, f.name)
        assert value is not None or f.name in ("_pending_resume_at",), f.name
        if is_dataclass(value):
            assert isinstance(value, nested[f.name]), f.name
    assert ConversationState.from_dict(json.loads(json.dumps(state.to_dict()))) == state


def test_a_dict_from_another_fold_is_refused() -> None:
    state, ledger = fold(events_of(PLANS))
    with pytest.raises(ValueError, match="fields differ"):
        ConversationState.from_dict({**state.to_dict(), "a_later_field": 3})
    with pytest.raises(ValueError, match="fields differ"):
        JobLedger.from_dict({k: v for k, v in ledger.to_dict().items() if k != "failures"})


# ---------------------------------------------------------------- the file


def test_checkpoint_round_trip_sealed_owner_only(dirs: tuple[Path, Path]) -> None:
    journals, ckpts = dirs
    events = events_of(PLANS, last_open=True)
    path = write_journal(journals, "inbox", events)
    written = write_checkpoint(ckpts, RING, make_checkpoint(path, "inbox", events, len(events)))
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    raw = written.read_bytes()
    assert SECRET.encode() not in raw and b"cut off" not in raw  # sealed, like the journal
    back = read_checkpoint(ckpts, RING, "inbox")
    state, ledger = fold(events)
    assert back.conversation_state() == state and back.job_ledger() == ledger
    assert back.anchor.seq == len(events) and back.anchor.offset == path.stat().st_size
    conv, led, used = start_up(journals, ckpts, "inbox")
    assert used and conv.state == state and led == ledger
    assert conv.journal.last_seq == len(events)


def test_the_records_after_the_checkpoint_are_folded(dirs: tuple[Path, Path]) -> None:
    journals, ckpts = dirs
    events = events_of(PLANS, last_open=True)
    path = write_journal(journals, "inbox", events)
    write_checkpoint(ckpts, RING, make_checkpoint(path, "inbox", events, 10))
    folded = fold_from_checkpoint(path, "inbox", RING, ckpts)
    assert folded.after_checkpoint == len(events) - 10
    expected, expected_ledger = full_read(journals, "inbox")
    assert folded.state == expected.state and folded.ledger == expected_ledger
    assert folded.scan.records == folded.scan.last_seq == len(events)


def test_a_last_line_longer_than_a_read_block_is_anchored(dirs: tuple[Path, Path]) -> None:
    journals, ckpts = dirs
    events = [*events_of(PLANS[:2]), ev.delta(2, "x" * 200_000)]
    path = write_journal(journals, "big", events)
    checkpoint = make_checkpoint(path, "big", events, len(events))
    assert checkpoint.anchor.offset - checkpoint.anchor.line_start > 200_000
    write_checkpoint(ckpts, RING, checkpoint)
    assert fold_from_checkpoint(path, "big", RING, ckpts).after_checkpoint == 0


def test_a_torn_tail_after_the_checkpoint_is_cut_as_a_full_read_cuts_it(
    dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    journals, ckpts = dirs
    events = events_of(PLANS, last_open=True)
    path = write_journal(journals, "inbox", events)
    write_checkpoint(ckpts, RING, make_checkpoint(path, "inbox", events, 20))
    with path.open("ab") as f:
        f.write(b'{"v":1,"c":"inbox","s":')  # a crash mid-append
    copy = tmp_path / "copy"
    shutil.copytree(journals, copy)
    conv, ledger, used = start_up(journals, ckpts, "inbox")
    expected, expected_ledger = full_read(copy, "inbox")
    assert used
    assert conv.tail_cut is not None and expected.tail_cut is not None
    assert conv.tail_cut.bytes_cut == expected.tail_cut.bytes_cut
    assert conv.tail_cut.tail.line == expected.tail_cut.tail.line == len(events) + 1
    assert path.read_bytes() == (copy / "inbox.jsonl").read_bytes()  # cut at the same byte
    assert conv.state == expected.state and ledger == expected_ledger
    conv.record(ev.turn_interrupted(len(PLANS) + 1, "daemon_stopped_mid_turn"))  # appends on
    conv.close()
    assert full_read(journals, "inbox")[0].journal.last_seq == len(events) + 1


# ---------------------------------------------------------------- wrong checkpoints


def _damage(
    kind: str, journals: Path, ckpts: Path, events: list[dict[str, Any]], *, k: int
) -> None:
    """Make the checkpoint of "conv", covering ``k`` records, wrong as ``kind`` says."""
    ckpt = checkpoint_path(ckpts, "conv")
    if kind.startswith("journal_"):
        _damage_journal(kind, journals / "conv.jsonl", events, k)
    elif kind == "missing":
        ckpt.unlink()
    elif kind == "garbage":
        ckpt.write_bytes(b"\x00\xffnot a checkpoint")
    elif kind == "truncated":
        ckpt.write_bytes(ckpt.read_bytes()[:40])
    elif kind == "foreign":  # another conversation's checkpoint, renamed
        other = write_journal(journals, "other", events)
        write_checkpoint(ckpts, RING, make_checkpoint(other, "other", events, len(events) // 2))
        os.replace(checkpoint_path(ckpts, "other"), ckpt)
    elif kind == "other_key":
        write_checkpoint(ckpts, OTHER_RING, read_checkpoint(ckpts, RING, "conv"))
    else:
        env = json.loads(ckpt.read_bytes())
        if kind == "edited":
            env["d"] = ("A" if env["d"][0] != "A" else "B") + env["d"][1:]
        elif kind == "more_records":  # claims to cover more than it does: the AAD says no
            env["s"] += 1
        else:
            assert kind == "other_fold"
            env["f"] = "0" * 16
        ckpt.write_text(json.dumps(env))


def _damage_journal(kind: str, path: Path, events: list[dict[str, Any]], k: int) -> None:
    data = path.read_bytes().splitlines(keepends=True)
    if kind == "journal_rewritten":  # the same events sealed again (re-encryption)
        path.unlink()
        write_journal(path.parent, "conv", events)
    elif kind == "journal_shorter":  # restored from an older backup
        path.write_bytes(b"".join(data[: k - 1]))
    else:
        assert kind == "journal_cut_and_regrown"
        path.unlink()
        journal = Journal.open(path, "conv", RING, fsync=FsyncPolicy.NEVER)
        if k > 1:
            journal.append_payloads([encode_payload(e) for e in events[: k - 1]])
        journal.append_payloads([encode_payload(ev.delta(1, "other")) for _ in data])
        journal.close()


WRONG = {
    "missing": Unusable.MISSING,
    "garbage": Unusable.UNREADABLE,
    "truncated": Unusable.UNREADABLE,
    "edited": Unusable.FOREIGN,
    "more_records": Unusable.FOREIGN,
    "other_fold": Unusable.OTHER_VERSION,
    "foreign": Unusable.FOREIGN,
    "other_key": Unusable.FOREIGN,
    "journal_rewritten": Unusable.STALE,
    "journal_shorter": Unusable.STALE,
    "journal_cut_and_regrown": Unusable.STALE,
}


@pytest.mark.parametrize("kind", sorted(WRONG))
def test_every_wrong_checkpoint_falls_back_to_the_full_read(
    kind: str, dirs: tuple[Path, Path]
) -> None:
    journals, ckpts = dirs
    events = events_of(PLANS, last_open=True)
    path = write_journal(journals, "conv", events)
    write_checkpoint(ckpts, RING, make_checkpoint(path, "conv", events, len(events) - 5))
    _damage(kind, journals, ckpts, events, k=len(events) - 5)
    with pytest.raises(CheckpointUnusable) as caught:
        fold_from_checkpoint(path, "conv", RING, ckpts)
    assert caught.value.reason is WRONG[kind]
    log = _Log()
    folded, summary = load_checkpoints([(path, "conv")], RING, ckpts, log)  # type: ignore[arg-type]
    assert folded == {}
    assert (summary.missing, len(log.lines)) == ((1, 0) if kind == "missing" else (0, 1))
    conv, ledger, used = start_up(journals, ckpts, "conv")
    expected, expected_ledger = full_read(journals, "conv")
    assert not used and conv.state == expected.state and ledger == expected_ledger


# ---------------------------------------------------------------- property


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    plans=st.lists(
        st.tuples(st.sampled_from(ENDINGS), st.integers(0, 4), st.integers(0, 5)),
        min_size=1,
        max_size=14,
    ),
    last_open=st.booleans(),
    cut=st.floats(0, 1),
    wrong=st.sampled_from(["none", "torn_tail", *sorted(WRONG)]),
)
def test_any_checkpoint_gives_the_state_of_a_full_read(
    tmp_path_factory: pytest.TempPathFactory,
    plans: list[Plan],
    last_open: bool,
    cut: float,
    wrong: str,
) -> None:
    root = tmp_path_factory.mktemp("prop")
    journals, ckpts, copy = root / "j", root / "c", root / "copy"
    journals.mkdir()
    ckpts.mkdir()
    events = events_of(plans, last_open=last_open)
    k = max(1, round(cut * len(events)))
    path = write_journal(journals, "conv", events)
    write_checkpoint(ckpts, RING, make_checkpoint(path, "conv", events, k))
    if wrong == "torn_tail":
        with path.open("ab") as f:
            f.write(b'{"v":1,"c":"conv","s":99,"k":"')
    elif wrong != "none":
        _damage(wrong, journals, ckpts, events, k=k)
    shutil.copytree(journals, copy)
    conv, ledger, used = start_up(journals, ckpts, "conv")
    expected, expected_ledger = full_read(copy, "conv")
    assert used == (wrong in ("none", "torn_tail"))
    assert conv.state == expected.state
    assert ledger == expected_ledger
    assert conv.journal.last_seq == expected.journal.last_seq
    assert path.read_bytes() == (copy / "conv.jsonl").read_bytes()
