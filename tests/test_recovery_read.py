"""Start-up's parallel read: the same state as reading each journal in this process."""

from __future__ import annotations

import asyncio
import shutil
import signal
from pathlib import Path

import pytest

from daemon import events as ev
from daemon.journal.conversation import Conversation
from daemon.journal.file import FsyncPolicy, Journal
from daemon.journal.keyring import Keyring
from daemon.journal.logstore import FileEventLogStore
from daemon.journal.recovery_read import fold_all
from jobs.ledger import JobLedger

RING = Keyring.generate()


def write_conversation(directory: Path, name: str, turns: int, *, torn: bool = False) -> None:
    journal = Journal.open(directory / f"{name}.jsonl", name, RING, fsync=FsyncPolicy.NEVER)
    journal.append(ev.session_bound(f"{name}-session", "/srv", mode="new"))
    for turn in range(1, turns + 1):
        journal.append(ev.turn_started(turn, f"{name} beat {turn}", job=name, trigger="schedule"))
        journal.append(ev.delta(turn, "words "))
        journal.append(ev.assistant(turn, "words", uuid=f"{name}-a{turn}", model="m"))
        journal.append(
            ev.result(
                turn,
                session_id=f"{name}-session",
                is_error=False,
                subtype="success",
                text="words",
                session_cost_usd=0.01 * turn,
                usage={},
                duration_ms=5,
                num_turns=1,
            )
        )
        journal.append(ev.turn_completed(turn, quiet=turn % 2 == 0))
    journal.append(ev.turn_started(turns + 1, "cut off", job=name, trigger="schedule"))
    journal.close()
    if torn:
        with (directory / f"{name}.jsonl").open("ab") as f:
            f.write(b'{"v":1,"half a rec')


def serial(directory: Path, name: str) -> tuple[Conversation, JobLedger]:
    ledger = JobLedger()
    conv = Conversation.open(
        FileEventLogStore(directory, RING, fsync=FsyncPolicy.NEVER), name, visit=ledger.feed
    )
    return conv, ledger


def test_parallel_fold_equals_the_serial_read_and_reopens_without_rereading(
    tmp_path: Path,
) -> None:
    serial_dir, parallel_dir = tmp_path / "serial", tmp_path / "parallel"
    serial_dir.mkdir()
    for i in range(6):
        write_conversation(serial_dir, f"job{i}", turns=3 + i, torn=i == 2)
    shutil.copytree(serial_dir, parallel_dir)  # the same bytes, read both ways
    names = [f"job{i}" for i in range(6)]
    folded = fold_all([(parallel_dir / f"{n}.jsonl", n) for n in names], RING, workers=2)
    assert sorted(folded) == names
    for name in names:
        expected_conv, expected_ledger = serial(serial_dir, name)
        conv = Conversation.open_folded(
            FileEventLogStore(parallel_dir, RING, fsync=FsyncPolicy.NEVER), name, folded[name]
        )
        assert conv is not None
        assert conv.state == expected_conv.state
        assert folded[name].ledger == expected_ledger
        assert conv.state.open_turn is not None  # the cut-off turn, for heal()
        # The torn tail was cut (and kept aside) exactly as the serial open does.
        assert (conv.tail_cut is None) == (expected_conv.tail_cut is None)
        assert conv.journal.last_seq == expected_conv.journal.last_seq
        assert conv.heal() == expected_conv.heal()  # the same half turn, journaled once
        conv.close()
        expected_conv.close()
        reread, _ = serial(parallel_dir, name)
        assert reread.journal.last_seq == expected_conv.journal.last_seq
        assert reread.tail_cut is None
        reread.close()
    assert len(list(parallel_dir.glob("job2.jsonl.broken-*"))) == 1


def test_unreadable_journals_are_left_to_the_caller_and_changed_files_reread(
    tmp_path: Path,
) -> None:
    for i in range(3):
        write_conversation(tmp_path, f"job{i}", turns=2)
    other = Keyring.generate()
    Journal.open(tmp_path / "alien.jsonl", "alien", other, fsync=FsyncPolicy.NEVER).close()
    alien = Journal.open(tmp_path / "alien.jsonl", "alien", other, fsync=FsyncPolicy.NEVER)
    alien.append(ev.session_bound("x", "/srv", mode="new"))
    alien.close()
    names = ["job0", "job1", "job2", "alien"]
    folded = fold_all([(tmp_path / f"{n}.jsonl", n) for n in names], RING, workers=2)
    assert sorted(folded) == ["job0", "job1", "job2"]  # the caller reads "alien" and fails

    # A journal that grew after the workers read it is read again, not trusted.
    grow = Journal.open(tmp_path / "job0.jsonl", "job0", RING, fsync=FsyncPolicy.NEVER)
    grow.append(ev.turn_started(9, "late", job="job0", trigger="manual"))
    grow.close()
    assert (
        Conversation.open_folded(
            FileEventLogStore(tmp_path, RING, fsync=FsyncPolicy.NEVER), "job0", folded["job0"]
        )
        is None
    )


def test_one_worker_means_the_caller_reads_everything(tmp_path: Path) -> None:
    write_conversation(tmp_path, "a", turns=1)
    write_conversation(tmp_path, "b", turns=1)
    journals = [(tmp_path / "a.jsonl", "a"), (tmp_path / "b.jsonl", "b")]
    assert fold_all(journals, RING, workers=1) == {}


@pytest.mark.timeout(120)
def test_workers_end_even_under_the_daemons_signal_handlers(tmp_path: Path) -> None:
    # The daemon reads while its event loop holds SIGTERM/SIGINT (noop handlers plus a
    # wakeup pipe); forked workers inherit that. They must still end every time, or
    # start-up hangs before READY (it did, now and then, before they reset them).
    for i in range(8):
        write_conversation(tmp_path, f"job{i}", turns=2)
    journals = [(tmp_path / f"job{i}.jsonl", f"job{i}") for i in range(8)]

    async def start_ups() -> list[int]:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, lambda: None)
        loop.add_signal_handler(signal.SIGINT, lambda: None)
        try:
            return [len(fold_all(journals, RING, workers=2)) for _ in range(12)]
        finally:
            loop.remove_signal_handler(signal.SIGTERM)
            loop.remove_signal_handler(signal.SIGINT)

    assert asyncio.run(start_ups()) == [8] * 12
