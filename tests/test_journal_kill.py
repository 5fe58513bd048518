"""SIGKILL a real writer process over and over on one journal; nothing acknowledged is lost.

The child (``tests/journal_writer_child.py``) prints a sequence number only after
``Journal.append`` returned, so a printed number is an acknowledged record. The
parent kills it at random moments (mostly while it appends, sometimes while it opens
and recovers the file), restarts it on the same file, and finally checks that every
acknowledged record is in the journal exactly once, in order, with its exact payload.

Most rounds use fsync ``never``: SIGKILL ends the process but not the kernel, so the
page cache keeps every completed ``write``; fsync only matters for power loss, which
this test does not simulate. Every fifth round uses ``always`` to cover that path too.
"""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from daemon.journal.file import Journal
from daemon.journal.framing import Frame, decode_payload
from daemon.journal.keyring import Keyring, generate_key_file
from daemon.journal.scan import scan
from tests.journal_writer_child import STREAM_ID, payload_for

CHILD = Path(__file__).with_name("journal_writer_child.py")
ROUNDS = 120
STARTUP_TIMEOUT = 30.0


@dataclass
class Round:
    number: int
    policy: str
    opened_at: int | None = None  # last_seq the child saw after recovery
    acked: list[int] = field(default_factory=list)


def _read_line(stream: IO[bytes], proc: subprocess.Popen[bytes]) -> bytes:
    ready, _, _ = select.select([stream], [], [], STARTUP_TIMEOUT)
    if not ready:
        proc.kill()
        proc.wait()
        raise AssertionError(f"writer child (pid {proc.pid}) said nothing for {STARTUP_TIMEOUT}s")
    return stream.readline()


def _run_round(
    journal: Path, key_file: Path, number: int, policy: str, rng: random.Random
) -> Round:
    rnd = Round(number, policy)
    proc = subprocess.Popen(
        [sys.executable, str(CHILD), "kill-loop", str(journal), str(key_file), str(number), policy],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        bufsize=0,  # unbuffered: readline() must not swallow lines communicate() then misses
        cwd=Path(__file__).parent.parent,
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        assert _read_line(proc.stdout, proc) == b"opening\n", proc.stderr.read().decode()
        if number % 4 == 3:
            # Kill while the child scans (and perhaps cuts) the file in Journal.open.
            time.sleep(rng.uniform(0.0, 0.015))
        else:
            opened = _read_line(proc.stdout, proc)
            assert opened.startswith(b"opened "), opened + proc.stderr.read()
            rnd.opened_at = int(opened.split()[1])
            time.sleep(rng.uniform(0.005, 0.060))
        proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate(timeout=STARTUP_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, err.decode())
    for line in out.split(b"\n"):
        if line.startswith(b"opened "):
            rnd.opened_at = int(line.split()[1])
        elif line and line != b"opening":
            rnd.acked.append(int(line))
    # Only whole lines count: a small pipe write is atomic, so nothing else can occur.
    assert out == b"" or out.endswith(b"\n"), out[-50:]
    return rnd


def test_every_acknowledged_record_survives_repeated_sigkill(tmp_path: Path) -> None:
    started = time.monotonic()
    key_file = tmp_path / "vigil.key"
    generate_key_file(key_file)
    journal = tmp_path / "kill-test.jsonl"
    seed = int.from_bytes(os.urandom(4))
    print(f"kill-moment seed {seed}")  # shown by pytest when the test fails
    rng = random.Random(seed)
    rounds: list[Round] = []
    acked_round: dict[int, int] = {}
    last_acked = 0
    for number in range(ROUNDS):
        policy = "always" if number % 5 == 4 else "never"
        rnd = _run_round(journal, key_file, number, policy, rng)
        if rnd.opened_at is not None:
            # Recovery never lost an acknowledged record (it may keep unacknowledged ones).
            assert rnd.opened_at >= last_acked, (number, rnd.opened_at, last_acked)
        if rnd.acked:
            # The child continues right after the last record recovery kept, no gaps.
            assert rnd.acked[0] == (rnd.opened_at or 0) + 1, (number, rnd.opened_at, rnd.acked)
            assert rnd.acked == list(range(rnd.acked[0], rnd.acked[0] + len(rnd.acked)))
        for seq in rnd.acked:
            # Strictly increasing across all rounds: acknowledged exactly once, in order.
            assert seq > last_acked, f"round {number}: sequence {seq} acknowledged again"
            acked_round[seq] = number
            last_acked = seq
        rounds.append(rnd)

    ring = Keyring.load(key_file)
    frames: list[Frame] = []
    final = Journal.open(journal, STREAM_ID, ring, visit=frames.append)
    final.close()
    assert final.last_seq == len(frames)
    seqs = [f.seq for f in frames]
    assert seqs == list(range(1, len(frames) + 1)), "sequence numbers are not contiguous"
    by_seq = {f.seq: decode_payload(f.payload) for f in frames}
    for seq, number in acked_round.items():
        assert seq in by_seq, f"acknowledged record {seq} (round {number}) is missing"
        assert by_seq[seq] == payload_for(seq, number), f"record {seq} has another payload"
    for seq, event in by_seq.items():
        # Unacknowledged records that survived are still whole and in their place.
        assert event["seq"] == seq
        assert event == payload_for(seq, event["round"])
    assert scan(journal, STREAM_ID, ring).tail is None

    killed_while_appending = sum(1 for r in rounds if r.acked)
    assert len(rounds) >= 100
    assert killed_while_appending >= 60, killed_while_appending
    assert any(r.acked for r in rounds if r.policy == "always")
    elapsed = time.monotonic() - started
    print(
        f"\n{len(rounds)} kills, {len(acked_round)} acknowledged, {len(frames)} in the journal,"
        f" {len(list(tmp_path.glob('*.broken-*')))} torn tails cut, {elapsed:.1f}s"
    )
