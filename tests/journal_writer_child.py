"""A child process for the journal's crash tests (run as a script, never imported by pytest).

``kill-loop PATH KEYFILE ROUND POLICY``
    Opens (recovering) the journal, prints ``opened <last_seq>``, then appends records
    forever, printing each sequence number (flushed) right after ``append`` returned:
    a printed number is an acknowledged record. The parent SIGKILLs it.

``efbig PATH KEYFILE COUNT``
    Appends COUNT records, then lowers ``RLIMIT_FSIZE`` so the next record only half
    fits (SIGXFSZ ignored, so the kernel makes a short write and then fails with EFBIG),
    tries a single and a batch append, lifts the limit, appends once more and prints
    one JSON object describing what happened.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import resource
import signal
import sys
import time
from pathlib import Path
from typing import Any

from daemon.errors import JournalWriteError
from daemon.journal.file import FsyncPolicy, Journal
from daemon.journal.framing import encode_payload
from daemon.journal.keyring import Keyring

STREAM_ID = "kill-test"
MAX_SECONDS = 20.0  # a child whose parent vanished stops on its own


def payload_for(seq: int, round_no: int) -> dict[str, Any]:
    """The exact event the child writes at ``seq``: the parent rebuilds it to compare."""
    pad = hashlib.sha256(f"{seq}".encode()).hexdigest()[: 20 + seq % 97]
    return {"seq": seq, "round": round_no, "text": f"délta {seq} ✓", "pad": pad}


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def kill_loop(path: Path, key_file: Path, round_no: int, policy: FsyncPolicy) -> None:
    ring = Keyring.load(key_file)
    rng = random.Random(round_no)
    _say("opening")
    journal = Journal.open(path, STREAM_ID, ring, fsync=policy)
    _say(f"opened {journal.last_seq}")
    deadline = time.monotonic() + MAX_SECONDS
    while time.monotonic() < deadline:
        first = journal.last_seq + 1
        if rng.random() < 0.1:
            # A small batch in one write call: acknowledged together when it returns.
            batch = [encode_payload(payload_for(first + i, round_no)) for i in range(3)]
            last = journal.append_payloads(batch)
        else:
            last = journal.append(payload_for(first, round_no))
        for seq in range(first, last + 1):
            _say(str(seq))
        # Throttle so one file stays small enough to rescan 100+ times within the
        # test's time budget; the append+print path still takes a fair share of time.
        time.sleep(0.0001)


def efbig(path: Path, key_file: Path, count: int) -> None:
    ring = Keyring.load(key_file)
    journal = Journal.open(path, "efbig", ring, fsync=FsyncPolicy.NEVER)
    for i in range(count):
        journal.append({"i": i, "text": "x" * 150})
    size_before = path.stat().st_size
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    _soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    # Every record is over 200 bytes: the kernel accepts 100 of them, then says EFBIG.
    resource.setrlimit(resource.RLIMIT_FSIZE, (size_before + 100, hard))
    failures: list[dict[str, Any]] = []
    attempts: list[list[bytes]] = [
        [encode_payload({"i": count, "text": "y" * 150})],
        [encode_payload({"i": count + k, "text": "z" * 150}) for k in range(5)],
    ]
    for payloads in attempts:
        try:
            journal.append_payloads(payloads)
        except JournalWriteError as exc:
            failures.append(
                {
                    "type": type(exc).__name__,
                    "errno_name": exc.errno_name,
                    "message": str(exc),
                    "size_after": path.stat().st_size,
                    "last_seq": journal.last_seq,
                }
            )
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
    seq_after = journal.append({"i": count, "text": "after the limit was lifted"})
    journal.close()
    result = {"size_before": size_before, "failures": failures, "seq_after": seq_after}
    _say(json.dumps(result))


def main(argv: list[str]) -> int:
    mode = argv[1]
    if mode == "kill-loop":
        kill_loop(Path(argv[2]), Path(argv[3]), int(argv[4]), FsyncPolicy(argv[5]))
    elif mode == "efbig":
        efbig(Path(argv[2]), Path(argv[3]), int(argv[4]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    return 0


if __name__ == "__main__":
    os.umask(0o077)
    sys.exit(main(sys.argv))
