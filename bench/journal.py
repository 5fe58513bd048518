"""Journal throughput: encrypted append and read against a plain JSONL baseline.

Run: ``.venv/bin/python bench/journal.py [--records N] [--repeat R] [--dir DIR]``. Not
part of the test run. Every case handles N records of about 200 bytes of JSON, one per
line; the cases run R times interleaved and the best rate counts (the machine may be
shared), the median is shown beside it:

(a) baseline: ``json.dumps`` (its cached default encoder, the fastest plain path) + one
    ``os.write`` per record on an unbuffered fd
(b) ``Journal.append`` (AES-256-GCM, fsync never)
(c) ``Journal.append`` with ``Journal.sync()`` (an fsync) every 50 records
(d) decrypt + parse: ``read_events`` over the journal written by (b)

Targets: (b) at least 1/3 of (a); (d) at least 50,000 records/s.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import string
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from daemon.journal.file import FsyncPolicy, Journal
from daemon.journal.framing import encode_payload
from daemon.journal.keyring import Keyring
from daemon.journal.scan import read_events

STREAM = "bench"
SYNC_EVERY = 50
APPEND_RATIO_TARGET = 1 / 3
READ_TARGET = 50_000


def make_events(n: int, seed: int = 7) -> list[dict[str, Any]]:
    """Delta-like events whose compact JSON is about 200 bytes."""
    rng = random.Random(seed)
    alphabet = string.ascii_letters + "     .,"
    out = []
    for i in range(n):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(108, 138)))
        out.append(
            {
                "ev": 1,
                "type": "delta",
                "at": "2026-11-21T13:00:00.000Z",
                "turn": i // 40,
                "text": text,
            }
        )
    return out


def timed(fn: Callable[[], int]) -> float:
    """Records per second of one call of ``fn`` (which returns how many it handled)."""
    start = time.perf_counter()
    count = fn()
    return count / (time.perf_counter() - start)


def plain_write(path: Path, evs: list[dict[str, Any]]) -> int:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
    try:
        for ev in evs:
            os.write(fd, json.dumps(ev).encode() + b"\n")
    finally:
        os.close(fd)
    return len(evs)


def journal_write(path: Path, ring: Keyring, evs: list[dict[str, Any]], sync_every: int) -> int:
    journal = Journal.open(path, STREAM, ring, fsync=FsyncPolicy.TURN)
    try:
        if sync_every:
            for i, ev in enumerate(evs, start=1):
                journal.append(ev)
                if i % sync_every == 0:
                    journal.sync()
        else:
            journal.fsync_policy = FsyncPolicy.NEVER
            for ev in evs:
                journal.append(ev)
    finally:
        journal.close()
    return len(evs)


def journal_read(path: Path, ring: Keyring) -> int:
    return sum(1 for _ in read_events(path, STREAM, ring))


CASES = (
    ("a", "plain json.dumps + os.write (baseline)"),
    ("b", "Journal.append, fsync never"),
    ("c", f"Journal.append, sync() every {SYNC_EVERY}"),
    ("d", "read_events (decrypt + parse)"),
)


def run(records: int, repeat: int, directory: Path) -> bool:
    evs = make_events(records)
    avg = sum(len(encode_payload(e)) for e in evs) / len(evs)
    ring = Keyring.generate()
    plain, enc, enc_sync = directory / "a.jsonl", directory / "b.jsonl", directory / "c.jsonl"
    cases: dict[str, Callable[[], int]] = {
        "a": lambda: plain_write(plain, evs),
        "b": lambda: journal_write(enc, ring, evs, 0),
        "c": lambda: journal_write(enc_sync, ring, evs, SYNC_EVERY),
        "d": lambda: journal_read(enc, ring),
    }
    outputs = {"a": plain, "b": enc, "c": enc_sync}
    rates: dict[str, list[float]] = {key: [] for key in cases}
    for _ in range(repeat):  # interleaved, so a noisy moment hits every case alike
        for key, fn in cases.items():
            if key in outputs:
                outputs[key].unlink(missing_ok=True)  # every write starts from an empty file
            rates[key].append(timed(fn))
    assert list(read_events(enc_sync, STREAM, ring)) == evs
    best = {key: max(r) for key, r in rates.items()}
    median = {key: statistics.median(r) for key, r in rates.items()}
    sizes = {key: f.stat().st_size for key, f in outputs.items()}

    print(
        f"journal benchmark: {records:,} records of {avg:.0f} bytes of JSON, best of {repeat}"
        f" interleaved runs (median beside it), in {directory}"
    )
    print(f"{'case':<47}{'best rec/s':>11}{'vs (a)':>8}{'median':>10}{'vs (a)':>8}{'MB':>7}")
    for key, label in CASES:
        mb = f"{sizes[key] / 1e6:.1f}" if key in sizes else ""
        print(
            f"({key}) {label:<43}{best[key]:>11,.0f}{best[key] / best['a']:>8.2f}"
            f"{median[key]:>10,.0f}{median[key] / median['a']:>8.2f}{mb:>7}"
        )
    ratio_b = best["b"] / best["a"]
    ok_b, ok_d = ratio_b >= APPEND_RATIO_TARGET, best["d"] >= READ_TARGET
    print(f"target (b) >= 1/3 of (a): {'met' if ok_b else 'MISSED'} ({ratio_b:.2f})")
    print(f"target (d) >= {READ_TARGET:,} records/s: {'met' if ok_d else 'MISSED'}")
    return ok_b and ok_d


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3, help="runs per case; best is scored")
    parser.add_argument(
        "--dir", type=Path, default=None, help="where to write (default: a temp dir)"
    )
    args = parser.parse_args(argv)
    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)
        return 0 if run(args.records, args.repeat, args.dir) else 1
    with tempfile.TemporaryDirectory(prefix="vigil-bench-") as tmp:
        return 0 if run(args.records, args.repeat, Path(tmp)) else 1


if __name__ == "__main__":
    sys.exit(main())
