"""Start-up's one read of every journal, spread over the machine's cores.

Recovery must authenticate and fold every record of every journal before ``READY=1``
(the conversation state and the job ledger come from the whole journal). Decrypting
is CPU-bound, so with several journals worth the trouble the read runs in forked
worker processes, one journal per task, each returning only the small folded summary
(:class:`Folded`); the parent then opens each journal for appending without reading
it again (:meth:`daemon.journal.conversation.Conversation.open_folded`).

Workers are forked before this process starts any thread (recovery runs before the
scheduler, the control socket or any subprocess), so they inherit the keyring and
every imported module for free. A journal a worker could not read (corrupt, newer
format, wrong key) comes back as ``None``: the parent reads it itself, which raises
the error with its own type and message.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from daemon.journal.bulk import NotPlain, read_payloads
from daemon.journal.conversation import ConversationState
from daemon.journal.framing import Frame, decode_payload
from daemon.journal.heads import payload_digest
from daemon.journal.keyring import Keyring
from daemon.journal.scan import ScanResult, scan
from jobs.ledger import JobLedger

# Below this many journal bytes in all, forking workers costs more than it saves.
PARALLEL_MIN_BYTES = 8 * 1024 * 1024


@dataclass
class Folded:
    """One journal's summary after a full read: where its good records end, its state."""

    scan: ScanResult
    size: int  # the file's size when read: the parent reopens only an unchanged file
    state: ConversationState = field(default_factory=ConversationState)
    ledger: JobLedger = field(default_factory=JobLedger)


def fold_journal(path: Path, name: str, keyring: Keyring) -> Folded:
    """Read and fold one journal (raises the journal's errors).

    The common case, a journal of nothing but whole records, takes the block reader
    (``journal_bulk``, the same checks, about twice as fast); anything else (a torn
    tail, damage) is read again with ``scan``, which cuts or reports it.
    """
    size = path.stat().st_size
    try:
        state, ledger = ConversationState(), JobLedger()
        records = 0
        last = b""
        for payloads in read_payloads(path, name, keyring):
            for payload in payloads:
                event = decode_payload(payload)
                state.feed(event)
                ledger.feed(event)
            records += len(payloads)
            last = payloads[-1] if payloads else last
        digest = payload_digest(last) if records else ""
        return Folded(ScanResult(records, records, size, None, digest), size, state, ledger)
    except NotPlain:
        pass
    state, ledger = ConversationState(), JobLedger()

    def visit(frame: Frame) -> None:
        event = decode_payload(frame.payload)
        state.feed(event)
        ledger.feed(event)

    result = scan(path, name, keyring, visit)
    return Folded(result, size, state, ledger)


def worker_count(paths: Iterable[Path]) -> int:
    """How many processes the read deserves: 1 for little data, else one per core."""
    total = 0
    for path in paths:
        try:
            total += path.stat().st_size
        except OSError:
            continue
    if total < PARALLEL_MIN_BYTES:
        return 1
    return max(1, min(os.cpu_count() or 1, 8))


_keyring: Keyring | None = None  # set in the parent just before forking the workers


def _fold_in_worker(task: tuple[Path, str]) -> tuple[str, Folded | None]:
    path, name = task
    assert _keyring is not None  # noqa: S101  # set before the fork
    try:
        return name, fold_journal(path, name, _keyring)
    except Exception:  # the parent reads it again and raises its own error
        return name, None


def fold_all(
    journals: list[tuple[Path, str]],
    keyring: Keyring,
    workers: int,
    *,
    meanwhile: Callable[[], None] | None = None,
) -> dict[str, Folded]:
    """Each journal's :class:`Folded`, read in ``workers`` forked processes.

    Journals missing from the answer (all of them when ``workers <= 1``, and any a
    worker could not read) are for the caller to read itself, the ordinary way.
    ``meanwhile`` is called once the workers are forked (so it may start a thread)
    and this process only waits for their answers; not at all without workers.
    """
    if workers <= 1 or len(journals) < 2:
        return {}
    global _keyring  # noqa: PLW0603  # inherited by the forked workers, nothing else
    _keyring = keyring
    pool = multiprocessing.get_context("fork").Pool(workers, initializer=_worker_signals)
    try:
        if meanwhile is not None:
            meanwhile()
        done = pool.imap_unordered(_fold_in_worker, journals, chunksize=4)
        folded = {name: result for name, result in done if result is not None}
        pool.close()  # the workers exit on their own once the queue is empty
        pool.join()
        return folded
    except BaseException:
        pool.terminate()  # SIGTERM, which _worker_signals made fatal again
        raise
    finally:
        _keyring = None


def _worker_signals() -> None:
    """A forked worker inherits the event loop's signal set-up: SIGTERM and SIGINT only
    written to the loop's wakeup pipe. Give them back their default (fatal) action,
    so ``Pool.terminate`` ends the workers, and leave the parent's pipe alone."""
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
