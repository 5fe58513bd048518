"""Orphaned CLIs end promptly when the daemon is SIGKILLed.

Each connected client is a Claude CLI process in the daemon's process group. When the
daemon dies without disconnecting them (SIGKILL, OOM kill), a CLI notices its closed
stdin only once its current work is done: seconds, over 15 s under load. The SDK
offers no PR_SET_PDEATHSIG, so a sentinel does it: a tiny process in its own session
that holds the read end of a pipe only the daemon can write to. EOF without the
daemon's goodbye means the daemon died: the sentinel sends SIGTERM to the daemon's
process group (its CLIs; command sinks run in sessions of their own), then SIGKILL to
what is left after a grace period, and exits. Used only when the daemon leads its
process group (systemd, a shell job, the test harness), so nothing else is in it.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys

_SCRIPT = """\
import os, signal, sys, time
group, grace = int(sys.argv[1]), float(sys.argv[2])
if sys.stdin.buffer.read().startswith(b"bye"):
    sys.exit(0)
def alive():
    try:
        os.killpg(group, 0)
    except OSError:
        return False
    return True
for sig in (signal.SIGTERM, signal.SIGKILL):
    try:
        os.killpg(group, sig)
    except OSError:
        sys.exit(0)
    deadline = time.monotonic() + grace
    while alive() and time.monotonic() < deadline:
        time.sleep(0.05)
"""

GRACE_S = 0.5  # the CLI takes seconds to end on SIGTERM; its state is journaled


class Sentinel:
    def __init__(self) -> None:
        self._write: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> bool:
        """Start it when this process leads its process group; whether it runs."""
        if os.getpgrp() != os.getpid():
            return False
        read, write = os.pipe()  # both close-on-exec: no CLI inherits the write end
        try:
            self._proc = subprocess.Popen(  # our own interpreter and script
                [sys.executable, "-S", "-c", _SCRIPT, str(os.getpid()), str(GRACE_S)],
                stdin=read,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # not in the group it may have to end
            )
        finally:
            os.close(read)
        self._write = write
        return True

    def stop(self) -> None:
        """A clean exit: say goodbye, so the sentinel ends nothing."""
        if self._write is None:
            return
        write, self._write = self._write, None
        with contextlib.suppress(OSError):
            os.write(write, b"bye")
        os.close(write)
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=5)
