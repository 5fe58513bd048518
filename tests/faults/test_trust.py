"""Issue 16: the directories and files vigil trusts, and one daemon per runtime directory.

Like PostgreSQL's data directory check and ssh's StrictModes: a state or runtime
directory, key file or config directory that another user owns or others can write is
refused before anything is created (exact message, exit code, nothing on disk changed);
a runtime directory inside the state directory (or a symlink into it) too. What a
running daemon finds in its runtime directory (a planted mirror or socket, the
plaintext a killed daemon left) is never used, and a second daemon on the same
runtime directory is refused, naming the first, whose socket survives it.
"""

from __future__ import annotations

import json
import os
import socket
import stat
from pathlib import Path

import pytest

from daemon.testing.harness import Job, Site
from daemon.testing.harness import LoopbackModel as DevModel
from tests.faults.test_bad_input import CONFIG_ERROR, KEY_ERROR, Etc, error_lines, run_vigil

LOCKED = 7
NOT_RUNNING = 9
NOBODY = 65534


@pytest.fixture
def etc(tmp_path: Path) -> Etc:
    return Etc(tmp_path)


def _refused(etc: Etc, code: int, message: str) -> None:
    before = etc.tree()
    done = run_vigil("run", "--config", str(etc.config), cwd=etc.root)
    assert (done.returncode, done.stderr) == (code, error_lines(message))
    assert done.stdout == ""
    assert etc.tree() == before


def test_a_state_dir_others_can_write_is_refused(etc: Etc) -> None:
    etc.write()
    etc.state_dir.mkdir(parents=True)
    etc.state_dir.chmod(0o770)
    _refused(
        etc,
        CONFIG_ERROR,
        f"{etc.config}: daemon.state_dir: {etc.state_dir} is writable by group or others "
        f"(mode 0770); run `chmod go-w {etc.state_dir}`; refusing to use it",
    )


def test_a_runtime_dir_owned_by_another_user_is_refused(etc: Etc) -> None:
    etc.write()
    etc.runtime_dir.mkdir(parents=True, mode=0o700)
    os.chown(etc.runtime_dir, NOBODY, NOBODY)
    _refused(
        etc,
        CONFIG_ERROR,
        f"{etc.config}: daemon.runtime_dir: {etc.runtime_dir} is owned by uid {NOBODY}, not by "
        f"this user (uid {os.geteuid()}); refusing to use it",
    )


def test_a_runtime_dir_that_is_a_symlink_into_the_state_dir_is_refused(etc: Etc) -> None:
    etc.write()
    (etc.state_dir / "cache").mkdir(parents=True, mode=0o700)
    etc.state_dir.chmod(0o700)
    etc.runtime_dir.parent.mkdir(mode=0o700)
    etc.runtime_dir.symlink_to(etc.state_dir / "cache")
    _refused(
        etc,
        CONFIG_ERROR,
        f"{etc.config}: daemon.runtime_dir: {etc.runtime_dir} is inside state_dir "
        f"{etc.state_dir} (it resolves to {etc.state_dir / 'cache'}): the runtime directory "
        "holds plaintext and is wiped, the state directory is kept; use a directory of its "
        "own (/run/vigil under systemd); refusing to use it",
    )


def test_a_config_directory_others_can_write_is_refused(etc: Etc) -> None:
    etc.write()
    etc.dir.chmod(0o777)
    _refused(
        etc,
        CONFIG_ERROR,
        f"config directory: {etc.dir} is writable by group or others (mode 0777); "
        f"run `chmod go-w {etc.dir}`; refusing to use it",
    )


def test_a_key_file_owned_by_another_user_is_refused(etc: Etc) -> None:
    etc.write()
    os.chown(etc.key, NOBODY, NOBODY)
    _refused(
        etc,
        KEY_ERROR,
        f"key file {etc.key}: is owned by uid {NOBODY}, not by this user (uid {os.geteuid()}) "
        f"or root; run `chown {os.geteuid()} {etc.key}`",
    )


def test_key_generate_never_writes_through_a_planted_symlink(etc: Etc) -> None:
    target = etc.root / "victim"
    target.write_text("precious\n")
    link = etc.dir / "new.key"
    link.symlink_to(target)
    done = run_vigil("key", "generate", str(link), cwd=etc.root)
    assert (done.returncode, done.stderr) == (
        KEY_ERROR,
        error_lines(f"key file {link}: already exists; use `vigil key rotate` to add a key"),
    )
    assert target.read_text() == "precious\n" and link.is_symlink()
    # rotate writes a temporary file next to the key: one planted there is not followed
    planted = etc.dir / f".{etc.key.name}.tmp-0"
    planted.symlink_to(target)
    rotate = run_vigil("key", "rotate", str(etc.key), cwd=etc.root)
    assert rotate.returncode == 0, rotate.stderr
    assert target.read_text() == "precious\n"
    assert stat.S_IMODE(etc.key.stat().st_mode) == 0o600 and not etc.key.is_symlink()


def test_a_config_readable_by_others_holding_webhook_secrets_draws_a_warning(etc: Etc) -> None:
    hook = '[[heartbeat.sink]]\ntype = "webhook"\nurl = "https://hooks.example.org/T/B/SECRET"\n'
    etc.write(jobs=job_with(hook))
    etc.state_dir.mkdir(parents=True, mode=0o777)  # refused after the warning: no daemon
    etc.state_dir.chmod(0o777)
    refusal = (
        f"{etc.config}: daemon.state_dir: {etc.state_dir} is writable by group or others "
        f"(mode 0777); run `chmod go-w {etc.state_dir}`; refusing to use it"
    )
    etc.config.chmod(0o644)
    done = run_vigil("run", "--config", str(etc.config), cwd=etc.root)
    warning = (
        f"vigil: warning: {etc.config} holds webhook URLs or headers (tokens) and is readable "
        f"by group or others (mode 0644); run `chmod 600 {etc.config}`\n"
    )
    assert (done.returncode, done.stderr) == (CONFIG_ERROR, warning + error_lines(refusal))
    etc.config.chmod(0o600)  # the check can fail: owner-only draws no warning
    done = run_vigil("run", "--config", str(etc.config), cwd=etc.root)
    assert (done.returncode, done.stderr) == (CONFIG_ERROR, error_lines(refusal))


def job_with(extra: str) -> str:
    return '[[heartbeat]]\nname = "inbox"\nevery = "30m"\nprompt = "x"\ncwd = "work"\n' + extra


# ---------------------------------------------------------------- a running daemon


@pytest.mark.e2e
@pytest.mark.timeout(240)
def test_one_daemon_per_runtime_dir_and_what_a_start_finds_there(
    short_tmp: Path, dev_model: DevModel
) -> None:
    site = Site(short_tmp, dev_model)
    try:
        site.write_config([Job("inbox", "inbox beat", every="1h")])
        run = site.runtime_dir
        # What a killed daemon (and someone else) left in the runtime directory.
        transcript = run / "claude" / "projects" / "-srv-work" / "s.jsonl"
        transcript.parent.mkdir(parents=True)
        transcript.write_text('{"text": "leftover plaintext"}\n')
        resume = run / "tmp" / "claude-resume-x1"
        resume.mkdir(parents=True)
        (resume / "t.jsonl").write_text("leftover plaintext\n")
        victim = short_tmp / "victim.sqlite3"
        victim.write_bytes(b"not a mirror")
        (run / "mirror.sqlite3").symlink_to(victim)
        run.chmod(0o700)
        site.state_dir.mkdir()
        site.state_dir.chmod(0o755)  # readable by others (whatever the umask): tightened

        first = site.start()
        first.wait_event("turn_completed", 60, job="inbox")
        assert not transcript.exists() and not resume.exists()
        assert victim.read_bytes() == b"not a mirror"  # the planted link was removed, not used
        assert not (run / "mirror.sqlite3").is_symlink()
        assert stat.S_IMODE(site.state_dir.stat().st_mode) == 0o700
        tightened = first.events("directory_tightened")
        assert [(x["path"], x["mode"]) for x in tightened] == [(str(site.state_dir), "0755")]

        # A second daemon with a state directory of its own, the same runtime directory.
        other = short_tmp / "other.toml"
        text = site.config_path.read_text().replace('state_dir = "state"', 'state_dir = "s2"')
        other.write_text(text)
        sock = run / "control.sock"
        inode = sock.lstat().st_ino
        second = site.vigil("run", "--config", str(other))
        assert (second.returncode, second.stderr) == (
            LOCKED,
            error_lines(
                f"another vigil (pid {first.pid}) is already running with runtime directory "
                f"{run}; give each daemon its own runtime_dir"
            ),
        )
        assert sock.lstat().st_ino == inode  # the first daemon's socket is still there
        status = site.vigil("status", "--config", str(site.config_path), "--json")
        assert status.returncode == 0 and json.loads(status.stdout)["pid"] == first.pid

        # Deeply nested JSON on the control socket: a clean error, the daemon lives on.
        with socket.socket(socket.AF_UNIX) as conn:
            conn.connect(str(sock))
            conn.sendall(b"[" * 60_000 + b"\n")
            answer = json.loads(conn.makefile("rb").readline())
        assert answer == {"ok": False, "error": "bad request: JSON nested too deeply"}
        assert first.running
        assert first.terminate() == 0

        # A socket planted where the daemon's was: status never talks to it.
        listener = socket.socket(socket.AF_UNIX)
        elsewhere = short_tmp / "evil.sock"
        listener.bind(str(elsewhere))
        listener.listen()
        sock.symlink_to(elsewhere)
        planted = site.vigil("status", "--config", str(site.config_path))
        listener.close()
        assert planted.returncode == NOT_RUNNING
        assert planted.stderr.splitlines()[0] == (
            f"vigil is not running: no daemon answers on {sock} (not a socket this user made "
            "(a symlink, or another owner); not used)"
        )
    finally:
        site.close()
