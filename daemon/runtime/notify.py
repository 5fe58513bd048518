"""The systemd notification protocol (sd_notify) and the watchdog.

:class:`Notifier` is the small interface the supervisor uses; :class:`SystemdNotifier`
sends datagrams to ``$NOTIFY_SOCKET`` (a no-op when unset), and the test kit's
:class:`daemon.testing.fakes.RecordingNotifier` keeps them. The watchdog pings
``WATCHDOG=1`` at half of ``$WATCHDOG_USEC`` from a task on the event loop, and only
while a health check passes: a blocked loop or a dead journal stops the pings and
systemd restarts the service.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Mapping
from typing import Protocol


class Notifier(Protocol):
    def notify(self, message: str) -> None:
        """Send one ``KEY=VALUE[\\nKEY=VALUE...]`` message; never raises."""


class SystemdNotifier:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        addr = env.get("NOTIFY_SOCKET", "")
        self._addr: str | None = None
        if addr:
            self._addr = "\0" + addr[1:] if addr.startswith("@") else addr
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return self._addr is not None

    def notify(self, message: str) -> None:
        if self._addr is None:
            return
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(message.encode("utf-8"), self._addr)
        except OSError:
            pass  # systemd gone or socket full: never let notification failures kill us


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between pings (half of ``$WATCHDOG_USEC``), or None when not asked for."""
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None
    return int(usec) / 2_000_000


async def run_watchdog(notifier: Notifier, interval: float, healthy: Callable[[], bool]) -> None:
    """Ping every ``interval`` seconds while ``healthy()``; runs until cancelled."""
    while True:
        if healthy():
            notifier.notify("WATCHDOG=1")
        await asyncio.sleep(interval)
