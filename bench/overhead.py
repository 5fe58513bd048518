"""Per-event overhead of write-before-show, against a plain write of the same bytes.

Write-before-show: ``Conversation.record`` = journal append (seal + one write) then the
structured log line. Baseline: ``os.write`` of the same plaintext JSON line, then the same
log line. fsync happens at turn boundaries (the default policy), here every 50 events.
Prints p50/p99 in microseconds for both and the added cost.

    .venv/bin/python bench/overhead.py [--events 20000]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from daemon import events as ev
from daemon.journal.conversation import Conversation
from daemon.journal.file import FsyncPolicy
from daemon.journal.keyring import Keyring
from daemon.journal.logstore import FileEventLogStore
from daemon.logs import configure_logging, get_logger

TURN_EVENTS = 50


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=20_000)
    args = parser.parse_args()
    sink = io.StringIO()
    configure_logging("json", stream=sink)
    root = Path(tempfile.mkdtemp(prefix="vigil-bench-"))
    keyring = Keyring.generate()
    conv = Conversation.open(FileEventLogStore(root, keyring, fsync=FsyncPolicy.TURN), "bench")
    text = "word " * 16  # a typical streamed delta is a few words; this is ~80 bytes

    journaled: list[float] = []
    for i in range(args.events):
        event = ev.delta(1 + i // TURN_EVENTS, text)
        t0 = time.perf_counter()
        conv.record(event)
        journaled.append(time.perf_counter() - t0)
        if (i + 1) % TURN_EVENTS == 0:
            conv.turn_boundary()
            sink.seek(0)
            sink.truncate()
    conv.close()

    log = get_logger(job="bench")
    fd = os.open(root / "plain.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    plain: list[float] = []
    for i in range(args.events):
        event = ev.delta(1 + i // TURN_EVENTS, text)
        t0 = time.perf_counter()
        os.write(fd, (json.dumps(event) + "\n").encode())
        log.info("delta", text=event["text"], seq=i, session=None, turn=event["turn"])
        plain.append(time.perf_counter() - t0)
        if (i + 1) % TURN_EVENTS == 0:
            os.fsync(fd)
            sink.seek(0)
            sink.truncate()
    os.close(fd)

    rows = [("plain write + log", plain), ("journal append + log (write before show)", journaled)]
    print(f"{args.events} delta events of ~{len(text)} bytes, fsync every {TURN_EVENTS} (turn)")
    print(f"{'':44} {'p50 us':>8} {'p99 us':>8} {'mean us':>8}")
    for name, samples in rows:
        p50, p99 = percentile(samples, 0.5) * 1e6, percentile(samples, 0.99) * 1e6
        print(f"{name:44} {p50:8.1f} {p99:8.1f} {statistics.fmean(samples) * 1e6:8.1f}")
    p99 = percentile(journaled, 0.99) * 1e3
    ratio = percentile(journaled, 0.5) / percentile(plain, 0.5)
    print(f"p50 ratio journaled/plain: {ratio:.2f}x")
    print(f"target p99 < 0.5 ms: {'met' if p99 < 0.5 else 'MISSED'} (p99 = {p99:.3f} ms)")


if __name__ == "__main__":
    main()
