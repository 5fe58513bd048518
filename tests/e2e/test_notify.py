"""sd_notify end to end: what systemd would receive on ``$NOTIFY_SOCKET``.

A real AF_UNIX datagram socket stands in for systemd's notification socket. The
daemon must say READY=1 only once every conversation is recovered, ping WATCHDOG=1
at half of ``$WATCHDOG_USEC`` while its event loop runs (and not while it is
blocked: that is how systemd notices a hung daemon), and say STOPPING=1 on SIGTERM.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest

from daemon.config.load import load_config
from daemon.journal.keyring import Keyring, generate_key_file
from daemon.runtime.notify import SystemdNotifier
from daemon.runtime.supervisor import Supervisor
from daemon.testing.harness import Job, Site

pytestmark = pytest.mark.e2e

WATCHDOG_USEC = 400_000  # systemd's WatchdogSec=0.4s: pings expected every 0.2 s
PING = "WATCHDOG=1"


@dataclass(frozen=True)
class Datagram:
    wall: float  # time.time() at arrival, comparable with log timestamps
    mono: float
    text: str


class NotifySocket:
    """A bound AF_UNIX datagram socket and a thread that keeps what arrives."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.05)
        self.received: list[Datagram] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, name="notify-socket", daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            with self._lock:
                self.received.append(
                    Datagram(time.time(), time.monotonic(), data.decode("utf-8", "replace"))
                )

    def messages(self) -> list[Datagram]:
        with self._lock:
            return list(self.received)

    def pings(self) -> list[float]:
        return [d.mono for d in self.messages() if d.text == PING]

    def env(self) -> dict[str, str]:
        return {"NOTIFY_SOCKET": str(self.path), "WATCHDOG_USEC": str(WATCHDOG_USEC)}

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


@pytest.fixture
def notify_socket(short_tmp: Path) -> NotifySocket:
    return NotifySocket(short_tmp / "notify.sock")


def _wall(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp).timestamp()


@pytest.mark.timeout(90)
def test_ready_after_recovery_status_watchdog_and_stopping(
    site: Site, notify_socket: NotifySocket
) -> None:
    site.write_config([Job("pulse", "pulse beat [slow:30]", every="1s")])
    # Leave a half turn behind, so recovery has healing to do before READY.
    crashed = site.start()
    crashed.wait_event("delta", 30, job="pulse")
    crashed.kill()
    assert notify_socket.messages() == []  # the first daemon had no NOTIFY_SOCKET

    daemon = site.start(extra_env=notify_socket.env())
    daemon.wait_event("turn_completed", 30, job="pulse")  # the replay
    time.sleep(1.5)
    signalled = time.monotonic()
    assert daemon.terminate() == 0
    time.sleep(0.1)
    notify_socket.close()
    messages = notify_socket.messages()

    ready = messages[0]
    assert ready.text.startswith("READY=1\nSTATUS=") and "1 jobs" in ready.text
    assert [m for m in messages if "READY=1" in m.text] == [ready]
    healed = daemon.events("turn_healed")
    recovered = daemon.events("recovered")
    assert healed and recovered
    assert ready.wall >= _wall(recovered[0]["timestamp"]) >= _wall(healed[0]["timestamp"])

    statuses = [m for m in messages[1:] if m.text.startswith("STATUS=")]
    assert statuses, "no STATUS= after a beat"

    pings = [m.mono for m in messages if m.text == PING]
    assert len(pings) >= 8
    assert pings[0] >= ready.mono
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    interval = WATCHDOG_USEC / 2e6
    assert 0.75 * interval <= statistics.median(gaps) <= 1.5 * interval
    assert max(gaps) < 2 * interval, "a ping came later than systemd would have waited"

    stopping = [m for m in messages if "STOPPING=1" in m.text]
    assert len(stopping) == 1
    assert stopping[0].mono >= signalled
    print(
        f"\n{len(messages)} datagrams; pings median gap {statistics.median(gaps):.3f}s, "
        f"max {max(gaps):.3f}s; READY {ready.wall - _wall(recovered[0]['timestamp']):.4f}s "
        "after the recovered log line"
    )


@pytest.mark.timeout(60)
def test_a_blocked_event_loop_stops_the_watchdog_pings(
    short_tmp: Path, notify_socket: NotifySocket, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The supervisor points this process's TMPDIR into its runtime directory; undo it.
    monkeypatch.setenv("TMPDIR", tempfile.gettempdir())
    monkeypatch.setattr(tempfile, "tempdir", tempfile.tempdir)
    generate_key_file(short_tmp / "vigil.key")
    path = short_tmp / "vigil.toml"
    path.write_text('[daemon]\nstate_dir = "state"\nruntime_dir = "run"\nkey_file = "vigil.key"\n')
    config = load_config(path)
    keyring = Keyring.load(short_tmp / "vigil.key")
    environ = {**notify_socket.env(), "PATH": os.environ.get("PATH", "")}
    block: dict[str, float] = {}

    def hang() -> None:
        block["start"] = time.monotonic()
        time.sleep(2)
        block["end"] = time.monotonic()

    async def wait_for_pings(count: int, within: float) -> None:
        deadline = time.monotonic() + within
        start = len(notify_socket.pings())
        while len(notify_socket.pings()) - start < count:
            assert time.monotonic() < deadline, f"fewer than {count} pings in {within}s"
            await asyncio.sleep(0.02)

    async def scenario() -> int:
        supervisor = Supervisor(config, keyring, SystemdNotifier(environ), environ=environ)
        running = asyncio.create_task(supervisor.run())
        await wait_for_pings(3, 20)
        asyncio.get_running_loop().call_soon(hang)
        await asyncio.sleep(0)  # the loop runs hang() before anything else
        await wait_for_pings(4, 5)
        supervisor.stop_requested.set()
        return await asyncio.wait_for(running, 20)

    assert asyncio.run(scenario()) == 0
    notify_socket.close()
    pings = notify_socket.pings()
    start, end = block["start"], block["end"]
    before = [t for t in pings if t < start]
    during = [t for t in pings if start + 0.05 < t < end]
    after = [t for t in pings if t >= end]
    assert len(before) >= 3
    assert during == [], f"{len(during)} pings while the loop was blocked"
    assert len(after) >= 4
    assert after[0] - end < 0.2, "pings did not resume at once"
    assert after[0] - before[-1] >= 1.9
