"""Fixtures for the fault-injection suite: the e2e site, a file-system fault shim, a tally.

The daemon runs for real (``vigil run`` against the loopback model, as in
``tests/e2e``); faults are injected from outside: SIGKILL at chosen moments, HTTP
errors from the model, and file-system faults from ``shims/faultfs.c``, an
``LD_PRELOAD`` shim compiled here with the system's C compiler. The shim only
touches files under one directory (the journals), so the CLI, Python's own files and
the logs are unaffected; its mode is a control file the test rewrites while the
daemon runs.

Every test writes what it injected, what it checked and what was lost as one JSON
line to ``$VIGIL_FAULTS_TALLY`` (when set); ``scripts/reliability-report`` turns
those lines into ``docs/RELIABILITY.md``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from daemon.journal.framing import FrameError, decode_payload, open_line
from daemon.journal.keyring import Keyring
from daemon.testing.harness import Daemon, Site
from tests.e2e.conftest import (  # noqa: F401  # fixtures, re-exported for this directory
    dev_model,
    short_tmp,
    site,
)

SHIM_SOURCE = Path(__file__).with_name("shims") / "faultfs.c"
TALLY_ENV = "VIGIL_FAULTS_TALLY"


# ---------------------------------------------------------------- the file-system shim


@pytest.fixture(scope="session")
def faultfs_library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``faultfs.so``, compiled once per run. No compiler is a failure, not a skip."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.fail("the fault suite needs a C compiler (cc or gcc) to build its LD_PRELOAD shim")
    out = tmp_path_factory.mktemp("faultfs") / "faultfs.so"
    done = subprocess.run(
        [compiler, "-shared", "-fPIC", "-O2", "-Wall", "-o", str(out), str(SHIM_SOURCE), "-ldl"],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(f"could not build {SHIM_SOURCE.name}:\n{done.stderr}")
    return out


class FaultFS:
    """The shim's settings for one daemon: which directory, and the mode file."""

    def __init__(self, library: Path, watched: Path, control: Path) -> None:
        self.library = library
        self.watched = watched
        self.control = control
        self.set("")

    def env(self) -> dict[str, str]:
        self.watched.mkdir(parents=True, exist_ok=True)
        return {
            "LD_PRELOAD": str(self.library),
            "FAULTFS_DIR": str(self.watched.resolve()),
            "FAULTFS_CONTROL": str(self.control),
        }

    def set(self, mode: str) -> None:
        """``""`` (pass through), ``full``, ``fsync-eio`` or ``tear N``; takes effect at
        the next matched call. Written atomically: the shim never reads half a mode."""
        tmp = self.control.with_name(self.control.name + ".tmp")
        tmp.write_text(mode + "\n")
        tmp.replace(self.control)


def faults_of(daemon: Daemon, fault: str | None = None) -> list[dict[str, Any]]:
    """The shim's announcements in a daemon's log (``fault``: one kind only)."""
    return [x for x in daemon.events("faultfs") if fault is None or x.get("fault") == fault]


# ---------------------------------------------------------------- journals, followed


@dataclass
class JournalFollower:
    """Reads one conversation journal incrementally, authenticating each new record.

    ``read`` returns the bytes after the last complete record (a torn tail, or
    b""); a damaged complete record, a gap in the sequence or a file that shrank
    below what was already read (an acknowledged record lost) fails the test.
    """

    path: Path
    stream: str
    keyring: Keyring
    offset: int = 0
    last_seq: int = 0
    events: dict[int, dict[str, Any]] = field(default_factory=dict)

    def read(self) -> bytes:
        if not self.path.exists():
            assert self.offset == 0, f"{self.path} vanished after {self.last_seq} records"
            return b""
        with self.path.open("rb") as f:
            size = f.seek(0, os.SEEK_END)
            assert size >= self.offset, (
                f"{self.path} shrank to {size} bytes below {self.offset}: records "
                f"up to sequence {self.last_seq} were read there before"
            )
            f.seek(self.offset)
            data = f.read()
        pos = 0
        while (end := data.find(b"\n", pos)) != -1:
            try:
                frame = open_line(self.keyring, self.stream, data[pos:end])
            except FrameError as exc:
                raise AssertionError(
                    f"{self.path}: damaged record after sequence {self.last_seq}: {exc}"
                ) from exc
            assert frame.seq == self.last_seq + 1, (
                f"{self.path}: sequence {frame.seq} follows {self.last_seq}"
            )
            self.events[frame.seq] = decode_payload(frame.payload)
            self.last_seq = frame.seq
            pos = end + 1
        self.offset += pos
        return data[pos:]


class Journals:
    """One :class:`JournalFollower` per conversation of a site."""

    def __init__(self, where: Site, names: list[str]) -> None:
        self.followers = {
            name: JournalFollower(where.journal_path(name), name, where.keyring) for name in names
        }

    def read(self) -> dict[str, bytes]:
        """New records of every journal; the torn tail of each that has one."""
        return {name: tail for name, f in self.followers.items() if (tail := f.read())}

    def unjournaled(self, daemon: Daemon) -> list[str]:
        """Every event the daemon logged (shown) that is not in its journal as logged
        (the journals are read up to now first)."""
        for follower in self.followers.values():
            follower.read()
        missing = []
        for line in daemon.lines:
            name, seq = line.get("job"), line.get("seq")
            if name not in self.followers or not isinstance(seq, int):
                continue
            event = self.followers[name].events.get(seq)
            if event is None or event.get("type") != line.get("event"):
                missing.append(f"{name} seq {seq} {line.get('event')}: journal has {event}")
            elif line["event"] == "delta" and (event.get("turn"), event.get("text")) != (
                line.get("turn"),
                line.get("text"),
            ):
                missing.append(f"{name} seq {seq} delta {line.get('text')!r} != {event}")
        return missing

    def shown_count(self, daemon: Daemon, event: str | None = None) -> int:
        return sum(
            1
            for x in daemon.lines
            if x.get("job") in self.followers
            and isinstance(x.get("seq"), int)
            and (event is None or x.get("event") == event)
        )


# ---------------------------------------------------------------- the tally


@dataclass
class Tally:
    """One fault's record for the reliability report (a JSON line in ``$VIGIL_FAULTS_TALLY``).

    ``injected``: how many times the fault was injected (``by_kind`` splits it);
    ``checked``: what was verified, with counts; ``lost``: what failed a check (the
    target is zero everywhere); ``outcome``: the test's result.
    """

    fault: str
    test: str
    long: bool
    injected: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    checked: dict[str, int] = field(default_factory=dict)
    lost: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    outcome: str = "unknown"

    def write(self, path: str) -> None:
        with open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps(self.__dict__, sort_keys=True) + "\n")


class Tallies:
    def __init__(self, test: str, long: bool) -> None:
        self.test = test
        self.long = long
        self.records: list[Tally] = []

    def new(self, fault: str) -> Tally:
        record = Tally(fault, self.test, self.long)
        self.records.append(record)
        return record


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.when == "call":
        item.stash[_OUTCOME] = report.outcome
    return report


_OUTCOME = pytest.StashKey[str]()


@pytest.fixture
def tally(request: pytest.FixtureRequest, long_run: bool) -> Iterator[Tallies]:
    """Tests add :class:`Tally` records; each is written at teardown, pass or fail."""
    tallies = Tallies(request.node.nodeid, long_run)
    yield tallies
    path = os.environ.get(TALLY_ENV)
    outcome = request.node.stash.get(_OUTCOME, "error")
    for record in tallies.records:
        record.outcome = outcome
        if path:
            record.write(path)
