"""Issue 5: status, beat and tail -f against a running daemon; the socket's permissions."""

from __future__ import annotations

import json
import stat
import subprocess
import time

import pytest

from daemon.testing.harness import Job, Site, vigil_argv

pytestmark = pytest.mark.e2e


@pytest.mark.timeout(120)
def test_status_beat_and_tail_follow_a_running_daemon(site: Site) -> None:
    site.write_config(
        [
            Job("slowpoke", "slowpoke [slow:700]", every="1h"),
            Job("steady", "steady beat", every="1h"),
        ]
    )
    config = str(site.config_path)
    down = site.vigil("status", "--config", config, "--json")
    assert down.returncode == 9
    assert json.loads(down.stdout)["running"] is False

    daemon = site.start()
    sock = site.runtime_dir / "control.sock"
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600
    daemon.wait_event("turn_completed", 60, job="steady")  # the first beat after start

    follower = subprocess.Popen(
        vigil_argv("tail", "steady", "-f", "-n", "0", "--json", "--config", config),
        stdout=subprocess.PIPE,
        text=True,
        env=site.env(),
    )
    try:
        time.sleep(2.5)  # the follower has read the journal and is polling
        before = len(site.history("steady"))
        beat = site.vigil("beat", "steady", "--config", config, "--json")
        assert beat.returncode == 0, beat.stderr
        assert json.loads(beat.stdout) == {"ok": True}
        seen: list[dict[str, object]] = []
        assert follower.stdout is not None
        for raw in follower.stdout:
            seen.append(json.loads(raw))
            if seen[-1]["type"] == "turn_completed":
                break
        assert seen[0]["type"] == "turn_started" and seen[0]["trigger"] == "manual"
        assert [s["seq"] for s in seen] == list(
            range(int(str(seen[0]["seq"])), int(str(seen[0]["seq"])) + len(seen))
        )
        assert any(s["type"] == "delta" for s in seen)
        assert len(site.history("steady")) == before + 1
    finally:
        follower.terminate()
        follower.wait(timeout=10)

    # A beat while that conversation's turn runs is refused, and says why.
    daemon.wait_event("turn_completed", 60, job="slowpoke")
    started = site.vigil("beat", "slowpoke", "--config", config)
    assert started.returncode == 0, started.stderr
    daemon.wait_event("delta", 30, job="slowpoke", start=daemon.count())
    refused = site.vigil("beat", "slowpoke", "--config", config)
    assert refused.returncode == 10
    assert "one turn at a time" in refused.stderr

    status = site.vigil("status", "--config", config, "--json")
    assert status.returncode == 0, status.stderr
    snapshot = json.loads(status.stdout)
    assert snapshot["running"] is True and snapshot["pid"] == daemon.pid
    jobs = {j["name"]: j for j in snapshot["jobs"]}
    assert jobs["slowpoke"]["running"] is True
    assert jobs["steady"]["last_outcome"] == "completed"
    assert jobs["steady"]["spend_today_usd"] > 0
    assert jobs["steady"]["next_beat"] is not None
    assert snapshot["live_clients"] == 2
    assert daemon.terminate() == 0
    assert not sock.exists()
