"""Mirror rebuild throughput: decrypt, parse and insert, against decrypt and parse alone.

Run: ``.venv/bin/python bench/rebuild.py [--records N] [--conversations C] [--dir DIR]``.
Not part of the test run. Writes C encrypted conversation journals holding N records
in all (realistic turns: a prompt, streamed deltas, the assistant message, sometimes a
tool call, the result with cost and usage, the end; now and then a skipped beat and a
delivery), then, in the same run and on the same files:

(a) decrypt + parse only: ``journal.scan`` + ``decode_payload`` for every record
(b) full rebuild: ``mirror_rebuild.rebuild`` into a fresh SQLite file (decrypt, parse,
    fold, insert rows and the FTS index), one transaction per conversation
(c) the same with ``workers`` processes decrypting and folding (``--workers``, default
    one per CPU) while the main process writes
(d) fold + insert only: the mirror's own cost, replaying events already decrypted and
    parsed (the first ``--insert-sample`` records' conversations, held in memory)

Target: a full rebuild at least 100,000 records/s. ``--dir`` keeps the journals, and a later run
with the same ``--dir`` and sizes reuses them (generating 1M records takes a while).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from daemon import events as ev
from daemon.conversation import conversation_names, journal_path
from daemon.framing import decode_payload, encode_payload
from daemon.journal import FsyncPolicy, Journal, scan
from daemon.keyring import Keyring
from daemon.mirror import Mirror, events_feed
from daemon.mirror_rebuild import rebuild

TARGET = 100_000
_TEXT = (
    "the inbox has three new messages about invoices deployment status weekly report "
    "nothing urgent customer asked for a refund server disk usage is at percent "
    "meeting moved to thursday reply needed fyi filed under triage"
)
WORDS = _TEXT.split()


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def conversation(rng: random.Random, records: int) -> list[dict[str, Any]]:
    """About ``records`` events shaped like a heartbeat conversation (exactly that many)."""
    out: list[dict[str, Any]] = [ev.session_bound("sess-1", "/srv/agent", mode="new")]
    turn, total = 0, 0.0
    while len(out) < records:
        turn += 1
        if rng.random() < 0.05:
            out.append(ev.beat_skipped(turn, "busy", "previous turn still running"))
            continue
        out.append(ev.turn_started(turn, sentence(rng, 20), job="job", trigger="schedule"))
        parts = [sentence(rng, rng.randint(3, 7)) + " " for _ in range(rng.randint(15, 35))]
        out += [ev.delta(turn, p) for p in parts]
        out.append(ev.assistant(turn, "".join(parts), uuid=f"u{turn}", model="claude"))
        if rng.random() < 0.3:
            out.append(ev.tool_use(turn, f"t{turn}", "Read", {"path": "/srv/agent/mail"}))
            out.append(ev.tool_result(turn, f"t{turn}", sentence(rng, 30), is_error=False))
        total += rng.uniform(0.001, 0.02)
        out.append(
            ev.result(
                turn,
                session_id="sess-1",
                is_error=False,
                subtype="success",
                text="".join(parts),
                session_cost_usd=round(total, 6),
                usage={"input_tokens": 2600 + turn, "output_tokens": 120},
                duration_ms=900,
                num_turns=1,
            )
        )
        out.append(ev.turn_completed(turn))
        if rng.random() < 0.2:
            out.append(ev.delivery_started(turn, f"{turn}/mail", "mail", 1))
            out.append(ev.delivery_done(turn, f"{turn}/mail", "mail", 1))
    return out[:records]


def generate(directory: Path, keyring: Keyring, records: int, conversations: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(5)
    per = records // conversations
    started = time.perf_counter()
    for i in range(conversations):
        n = per + (1 if i < records % conversations else 0)
        name = f"job-{i:05d}"
        journal = Journal.open(
            journal_path(directory, name), name, keyring, fsync=FsyncPolicy.NEVER
        )
        payloads = [encode_payload(e) for e in conversation(rng, n)]
        for k in range(0, len(payloads), 500):
            journal.append_payloads(payloads[k : k + 500])
        journal.close()
        if (i + 1) % 100 == 0:
            print(f"  generated {i + 1}/{conversations} journals", file=sys.stderr)
    print(f"generated {records:,} records in {time.perf_counter() - started:.1f} s")


def _discard(_: object) -> None:
    pass


def decrypt_and_parse(directory: Path, keyring: Keyring) -> tuple[int, float]:
    started = time.perf_counter()
    count = 0
    for name in conversation_names(directory):
        path = journal_path(directory, name)
        count += scan(path, name, keyring, lambda fr: _discard(decode_payload(fr.payload))).records
    return count, time.perf_counter() - started


def full_rebuild(directory: Path, keyring: Keyring, db: Path, workers: int) -> tuple[int, float]:
    for leftover in db.parent.glob(db.name + "*"):
        leftover.unlink()
    mirror = Mirror.open(db)
    started = time.perf_counter()
    stats = rebuild(mirror, directory, keyring, workers=workers)
    mirror.close()
    assert not stats.errors, stats.errors
    return stats.records, time.perf_counter() - started


def _decoded(path: Path, name: str, keyring: Keyring) -> list[tuple[int, dict[str, Any]]]:
    events: list[tuple[int, dict[str, Any]]] = []
    scan(path, name, keyring, lambda fr: events.append((fr.seq, decode_payload(fr.payload))))
    return events


def insert_only(directory: Path, keyring: Keyring, db: Path, sample: int) -> tuple[int, float]:
    decoded: list[tuple[str, list[tuple[int, dict[str, Any]]]]] = []
    held = 0
    for name in conversation_names(directory):
        if held >= sample:
            break
        events = _decoded(journal_path(directory, name), name, keyring)
        decoded.append((name, events))
        held += len(events)
    for leftover in db.parent.glob(db.name + "*"):
        leftover.unlink()
    mirror = Mirror.open(db)
    started = time.perf_counter()
    for name, events in decoded:
        mirror.replay(name, events_feed(events))
    elapsed = time.perf_counter() - started
    mirror.close()
    return held, elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--conversations", type=int, default=1_000)
    parser.add_argument("--dir", type=Path, default=None, help="keep (and reuse) journals here")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--insert-sample", type=int, default=200_000)
    args = parser.parse_args()
    base = args.dir or Path(tempfile.mkdtemp(prefix="vigil-bench-rebuild-"))
    journals = base / f"journals-{args.records}-{args.conversations}"
    key_file = base / "bench.key"
    try:
        if key_file.exists() and journals.is_dir():
            keyring = Keyring.load(key_file)
            print(f"reusing {journals}")
        else:
            keyring = Keyring.generate()
            generate(journals, keyring, args.records, args.conversations)
            keyring.save(key_file)
        n_a, t_a = decrypt_and_parse(journals, keyring)
        n_b, t_b = full_rebuild(journals, keyring, base / "mirror.sqlite3", 1)
        size = (base / "mirror.sqlite3").stat().st_size
        n_c, t_c = full_rebuild(journals, keyring, base / "mirror.sqlite3", args.workers)
        assert n_a == n_b == n_c == args.records, (n_a, n_b, n_c)
        rate_a, rate_b, rate_c = n_a / t_a, n_b / t_b, n_c / t_c
        print(
            f"{args.records:,} records across {args.conversations:,} conversations, "
            f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
        )
        print(f"(a) decrypt + parse only          {rate_a:>9,.0f} records/s  {t_a:6.1f} s")
        print(
            f"(b) full rebuild                  {rate_b:>9,.0f} records/s  {t_b:6.1f} s  "
            f"({rate_b / rate_a:.2f} of (a); mirror {size / 1e6:.0f} MB)"
        )
        print(
            f"(c) full rebuild, {args.workers} workers       {rate_c:>9,.0f} records/s  "
            f"{t_c:6.1f} s  ({rate_c / rate_a:.2f} of (a))"
        )
        n_d, t_d = insert_only(journals, keyring, base / "mirror.sqlite3", args.insert_sample)
        print(f"(d) fold + insert only            {n_d / t_d:>9,.0f} records/s  {t_d:6.1f} s  "
              f"({n_d:,} records already decrypted)")  # fmt: skip
        best = max(rate_b, rate_c)
        verdict = "met" if best >= TARGET else "MISSED"
        print(f"target full rebuild >= {TARGET:,} records/s: {verdict} ({best:,.0f})")
    finally:
        if args.dir is None:
            shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
