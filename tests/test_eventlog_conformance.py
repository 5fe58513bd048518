"""Every event-log backend passes the one behaviour suite of the port."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.errors import JournalWriteError, OwnershipLost
from daemon.journal.file import FsyncPolicy
from daemon.journal.keyring import Keyring, generate_key_file
from daemon.journal.logstore import FileEventLogStore
from daemon.ports.eventlog import Event, EventLogStore
from daemon.testing.conformance import run_event_log_conformance
from daemon.testing.memlog import MemoryEventLogStore


@pytest.fixture
def keyring(tmp_path: Path) -> Keyring:
    key = tmp_path / "k.key"
    generate_key_file(key)
    return Keyring.load(key)


def test_file_journal_passes(tmp_path: Path, keyring: Keyring) -> None:
    count = iter(range(1000))

    def make() -> EventLogStore:
        directory = tmp_path / f"s{next(count)}"
        directory.mkdir()
        return FileEventLogStore(directory, keyring, fsync=FsyncPolicy.NEVER)

    def reopen(store: EventLogStore) -> EventLogStore:
        assert isinstance(store, FileEventLogStore)
        return FileEventLogStore(store.directory, keyring, fsync=FsyncPolicy.NEVER)

    run_event_log_conformance(make, reopen)


def test_memory_log_passes(keyring: Keyring) -> None:
    run_event_log_conformance(lambda: MemoryEventLogStore(keyring))


def test_the_suite_catches_a_broken_store(keyring: Keyring) -> None:
    class Forgetful(MemoryEventLogStore):
        def read(self, name: str, after: int = 0) -> Iterator[tuple[int, Event]]:
            yield from list(super().read(name, after))[:-1]  # loses the last record

    with pytest.raises(AssertionError, match="event log contract"):
        run_event_log_conformance(lambda: Forgetful(keyring))


def test_memory_log_simulates_failures_and_fencing(keyring: Keyring) -> None:
    store = MemoryEventLogStore(keyring)
    log = store.open("alpha")
    store.fail_next_append("write")
    with pytest.raises(JournalWriteError):
        log.append({"type": "delta"})
    assert log.append({"type": "delta"}) == 1  # nothing was written by the failure
    store.revoke("alpha", "node-b")
    with pytest.raises(OwnershipLost, match="node-b owns it now"):
        log.append({"type": "delta"})
    assert [s for s, _ in store.read("alpha")] == [1]
