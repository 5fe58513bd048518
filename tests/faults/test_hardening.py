"""Issue 16, the smaller items that need a running daemon: a SIGHUP during start-up,
``vigil status`` against a hung daemon, and CLIs orphaned by a SIGKILL."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from daemon.testing.harness import Job, Site
from daemon.testing.proctree import descendants, proc_stat

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

NOT_RUNNING = 9


def _catches(pid: int, signum: int) -> bool:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    return False


def test_a_sighup_during_start_up_is_a_reload_once_ready_not_death(site: Site) -> None:
    site.write_config([Job("inbox", "inbox beat", every="1h")])
    daemon = site.start(ready=False)
    sent = 0
    # Once `vigil run` holds SIGHUP and before it even made its state directory (so
    # before the event loop's handler exists): loading the config, the key, the SDK.
    while not daemon.events("ready") and daemon.running:
        if _catches(daemon.pid, signal.SIGHUP) and not site.state_dir.exists():
            os.kill(daemon.pid, signal.SIGHUP)
            sent += 1
            break
    daemon.wait_ready()
    assert sent == 1 and daemon.running
    daemon.wait_event("reloaded", 30)  # the SIGHUP was not lost either
    assert daemon.terminate() == 0


def test_status_against_a_stopped_daemon_is_one_line_and_exit_9(site: Site) -> None:
    site.write_config([Job("inbox", "inbox beat", every="1h")])
    daemon = site.start()
    os.kill(daemon.pid, signal.SIGSTOP)
    try:
        done = site.vigil("status", "--config", str(site.config_path))
    finally:
        os.kill(daemon.pid, signal.SIGCONT)
    assert done.returncode == NOT_RUNNING
    sock = site.runtime_dir / "control.sock"
    assert done.stderr == (
        f"vigil is not running: no daemon answers on {sock} (the daemon (pid {daemon.pid}) "
        "did not answer within 5s: stopped or hung? (TimeoutError))\n"
    )
    assert "Traceback" not in done.stdout
    assert daemon.terminate() == 0


def test_a_sigkilled_daemons_clis_are_ended_by_its_sentinel(site: Site) -> None:
    """A CLI that would never notice its closed stdin (stopped here) is ended too: the
    sentinel kills the dead daemon's process group."""
    site.write_config([Job("inbox", "inbox beat", every="1h")])
    daemon = site.start()
    daemon.wait_event("turn_completed", 60, job="inbox")  # its client stays connected
    clis = [
        pid
        for pid in descendants(daemon.pid)
        if (st := proc_stat(pid)) is not None
        and st.ppid == daemon.pid
        and "-S -c" not in Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    ]
    assert clis, "no CLI child"
    for pid in clis:
        os.kill(pid, signal.SIGSTOP)
    daemon.kill()
    left = site.orphans.wait_all_gone(60)
    assert left == [], [o.command for o in left]
