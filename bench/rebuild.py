"""Mirror rebuild throughput: decrypt, parse and insert, against decrypt and parse alone.

Run: ``.venv/bin/python bench/rebuild.py [--records N] [--conversations C] [--dir DIR]``.
Not part of the test run. Writes C encrypted conversation journals holding N records
in all (realistic turns: a prompt, streamed deltas, the assistant message, sometimes a
tool call, the result with cost and usage, the end; now and then a skipped beat and a
delivery), then, in the same run and on the same files:

(a) decrypt + parse only with the general reader: ``journal.scan`` + ``decode_payload``
    for every record, one process (what the daemon's start and ``vigil verify`` use)
(a2) the same with the rebuild's reader: ``journal_bulk.read_payloads`` + ``decode_payload``
(b) full rebuild (``mirror_rebuild.rebuild``: decrypt, parse, fold, insert rows, build
    the indexes and the FTS index, one transaction) in this process, into a new file
(c) the same with ``--workers`` processes (default one per CPU) decrypting, parsing and
    folding while this one inserts, over the mirror (b) left (as ``vigil rebuild`` does)
(d) fold + insert only, the incremental path: ``Mirror.replay`` of events already
    decrypted and parsed (the first ``--insert-sample`` records' conversations)

and checks (c)'s rows equal (b)'s, and (d)'s equal (c)'s for its conversations. CPU
seconds are this process's plus the workers'. Target: (c) at least 100,000 records/s.
``--dir`` keeps the journals; a later run with the same ``--dir`` and sizes reuses them.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple

from daemon import events as ev
from daemon.journal.bulk import read_payloads
from daemon.journal.file import FsyncPolicy, Journal
from daemon.journal.framing import decode_payload, encode_payload
from daemon.journal.keyring import Keyring
from daemon.journal.logstore import conversation_names, journal_path
from daemon.journal.scan import scan
from daemon.mirror.db import Mirror
from daemon.mirror.queries import DumpRow
from daemon.mirror.rebuild import events_feed, rebuild

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


def decrypt_and_parse_bulk(directory: Path, keyring: Keyring) -> tuple[int, float]:
    started = time.perf_counter()
    count = 0
    for name in conversation_names(directory):
        for chunk in read_payloads(journal_path(directory, name), name, keyring):
            for payload in chunk:
                _discard(decode_payload(payload))
            count += len(chunk)
    return count, time.perf_counter() - started


class Run(NamedTuple):
    records: int
    seconds: float
    cpu: float  # this process and its (finished) children
    rows: list[DumpRow]


def _cpu() -> float:
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def full_rebuild(directory: Path, keyring: Keyring, db: Path, workers: int, *, fresh: bool) -> Run:
    if fresh:
        for leftover in db.parent.glob(db.name + "*"):
            leftover.unlink()
    mirror = Mirror.open(db)
    started, cpu = time.perf_counter(), _cpu()
    stats = rebuild(mirror, directory, keyring, workers=workers)
    elapsed, cpu = time.perf_counter() - started, _cpu() - cpu
    rows = mirror.dump()
    mirror.close()
    assert not stats.errors, stats.errors
    return Run(stats.records, elapsed, cpu, rows)


def _decoded(path: Path, name: str, keyring: Keyring) -> list[tuple[int, dict[str, Any]]]:
    events: list[tuple[int, dict[str, Any]]] = []
    scan(path, name, keyring, lambda fr: events.append((fr.seq, decode_payload(fr.payload))))
    return events


def insert_only(directory: Path, keyring: Keyring, db: Path, sample: int) -> Run:
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
    started, cpu = time.perf_counter(), _cpu()
    for name, events in decoded:
        mirror.replay(name, events_feed(events))
    elapsed, cpu = time.perf_counter() - started, _cpu() - cpu
    rows = mirror.dump()
    mirror.close()
    return Run(held, elapsed, cpu, rows)


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
    db = base / "mirror.sqlite3"
    try:
        if key_file.exists() and journals.is_dir():
            keyring = Keyring.load(key_file)
            print(f"reusing {journals}")
        else:
            keyring = Keyring.generate()
            generate(journals, keyring, args.records, args.conversations)
            keyring.save(key_file)
        size = sum(p.stat().st_size for p in journals.iterdir())
        load_before = os.getloadavg()[0]
        n_a, t_a = decrypt_and_parse(journals, keyring)
        n_a2, t_a2 = decrypt_and_parse_bulk(journals, keyring)
        b = full_rebuild(journals, keyring, db, 1, fresh=True)
        mirror_size = db.stat().st_size
        c = full_rebuild(journals, keyring, db, args.workers, fresh=False)
        d = insert_only(journals, keyring, db, args.insert_sample)
        load_after = os.getloadavg()[0]
        assert n_a == n_a2 == b.records == c.records == args.records, (n_a, n_a2, b, c)
        assert c.rows == b.rows, "the parallel rebuild wrote other rows"
        sampled = {r.key[0] for r in d.rows}
        assert d.rows == [r for r in c.rows if r.key[0] in sampled], "replay differs"
        rate_a, rate_a2 = n_a / t_a, n_a2 / t_a2
        rate_b, rate_c = b.records / b.seconds, c.records / c.seconds
        print(
            f"{args.records:,} records across {args.conversations:,} conversations "
            f"({size / 1e6:.0f} MB of journals), {os.cpu_count()} CPUs, "
            f"load average {load_before:.1f} before, {load_after:.1f} after"
        )
        print(f"(a)  decrypt + parse only, journal.scan  {rate_a:>9,.0f} records/s  {t_a:6.1f} s")
        print(f"(a2) decrypt + parse only, journal_bulk  {rate_a2:>9,.0f} records/s  {t_a2:6.1f} s")
        print(
            f"(b)  full rebuild, this process          {rate_b:>9,.0f} records/s  "
            f"{b.seconds:6.1f} s  {b.cpu:5.1f} CPU s  ({rate_b / rate_a:.2f} of (a), "
            f"{rate_b / rate_a2:.2f} of (a2);"
            f" mirror {mirror_size / 1e6:.0f} MB)"
        )
        print(
            f"(c)  full rebuild, {args.workers} workers             {rate_c:>9,.0f} records/s  "
            f"{c.seconds:6.1f} s  {c.cpu:5.1f} CPU s  ({rate_c / rate_a:.2f} of (a), "
            f"{rate_c / rate_a2:.2f} of (a2))"
        )
        print(
            f"(d)  fold + insert only (replay)         {d.records / d.seconds:>9,.0f} records/s  "
            f"{d.seconds:6.1f} s  {d.cpu:5.1f} CPU s  ({d.records:,} records already decrypted)"
        )
        print(
            f"rows: (c) equals (b), {len(c.rows):,} rows; (d) equals (c) for its "
            f"{len(sampled)} conversations"
        )
        verdict = "met" if rate_c >= TARGET else "MISSED"
        print(
            f"target full rebuild with {args.workers} workers >= {TARGET:,} records/s: "
            f"{verdict} ({rate_c:,.0f})"
        )
    finally:
        if args.dir is None:
            shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
