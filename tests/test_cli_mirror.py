"""The operator's commands: ``--json`` output parses, exit codes, what a terminal sees."""

from __future__ import annotations

import io
import json
import os
import pty
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from daemon.cli import journals as cli_journals
from daemon.cli import mirror as cli_mirror
from daemon.cli.main import main
from daemon.config.load import load_config
from daemon.journal.keyring import Keyring, generate_key_file
from daemon.journal.lock import StateLock
from daemon.journal.logstore import journal_path
from daemon.layout import Layout
from tests.test_mirror import sample_streams, write_journals
from tests.test_verify import tamper_line

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Layout]:
    """A config, a key and two conversations' journals; no mirror yet."""
    layout = Layout(tmp_path / "state", tmp_path / "run")
    layout.create()
    generate_key_file(tmp_path / "vigil.key")
    config = tmp_path / "vigil.toml"
    config.write_text(
        '[daemon]\nstate_dir = "state"\nruntime_dir = "run"\nkey_file = "vigil.key"\n'
    )
    write_journals(layout.conversations, Keyring.load(tmp_path / "vigil.key"), sample_streams())
    return config, layout


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    code, out, _ = run(capsys, *argv, "--json")
    return code, json.loads(out)


def test_every_command_prints_json_that_parses(
    setup: tuple[Path, Layout], capsys: pytest.CaptureFixture[str]
) -> None:
    config, layout = setup
    cfg = ("--config", str(config))
    code, built = run_json(capsys, "rebuild", *cfg)
    assert code == 0
    assert (built["records"], built["conversations"], built["errors"]) == (24, 2, [])
    assert built["mirror"] == str(layout.runtime_dir / "mirror.sqlite3")
    code, sessions = run_json(capsys, "sessions", *cfg)
    assert code == 0
    assert [(s["name"], s["turns"], s["last_status"]) for s in sessions] == [
        ("digest", 2, "running"),
        ("inbox", 3, "completed"),
    ]
    code, hits = run_json(capsys, "search", "zeppelin", *cfg)
    assert code == 0
    assert hits == [
        {
            "conversation": "inbox",
            "turn": 2,
            "status": "completed",
            "started_at": "2026-11-21T10:00:00.000Z",
            "snippet": "The [zeppelin] has landed",
        }
    ]
    code, hits = run_json(capsys, "search", "the", "--limit", "2", *cfg)
    assert (code, len(hits)) == (0, 2)
    code, report = run_json(capsys, "verify", *cfg)
    assert (code, report["ok"], report["records"]) == (0, True, 24)
    assert report["mirror"]["state"] == "compared"
    code, rotated = run_json(capsys, "key", "rotate", str(config.parent / "vigil.key"),
                             "--reencrypt", *cfg)  # fmt: skip
    assert (code, rotated["files"], rotated["rewritten"], rotated["records"]) == (0, 2, 2, 24)
    code, report = run_json(capsys, "verify", *cfg)
    assert (code, report["ok"]) == (0, True)  # same records, readable with the new key


def test_export_writes_every_event_as_a_json_line(
    setup: tuple[Path, Layout], capsys: pytest.CaptureFixture[str]
) -> None:
    config, _ = setup
    code, out, err = run(capsys, "export", "inbox", "--config", str(config))
    assert code == 0
    assert err == ""  # not a terminal: no warning
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line.pop("seq") for line in lines] == list(range(1, 13))
    assert lines == sample_streams()["inbox"]


def test_export_warns_on_a_terminal(
    setup: tuple[Path, Layout], capsys: pytest.CaptureFixture[str]
) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    config, _ = setup
    screen = Terminal()
    assert cli_journals.cmd_export(load_config(config), "digest", screen) == 0
    assert "decrypted conversation text" in capsys.readouterr().err
    assert len(screen.getvalue().splitlines()) == len(sample_streams()["digest"])


def test_exit_codes(setup: tuple[Path, Layout], capsys: pytest.CaptureFixture[str]) -> None:
    config, layout = setup
    cfg = ("--config", str(config))
    assert run(capsys, "rebuild", *cfg)[0] == 0
    db = sqlite3.connect(layout.runtime_dir / "mirror.sqlite3")
    db.execute("UPDATE conversations SET last_seq = 99 WHERE name = 'inbox'")
    db.commit()
    db.close()
    code, report = run_json(capsys, "verify", *cfg)
    assert code == cli_mirror.VERIFY_FAILED == 8
    assert report["mirror"]["differences"][0]["key"] == {"name": "inbox"}
    code, out, _ = run(capsys, "verify", *cfg)
    assert code == 8
    assert "conversations [name='inbox']: last_seq: live 99 != journal 12" in out
    assert run(capsys, "rebuild", *cfg)[0] == 0  # the fix
    assert run(capsys, "verify", *cfg)[0] == 0
    code, _, err = run(capsys, "export", "nobody", *cfg)
    assert (code, "no heartbeat job named 'nobody'" in err) == (2, True)
    assert run(capsys, "rebuild", "nobody", *cfg)[0] == 2
    tamper_line(journal_path(layout.conversations, "inbox"), 5)
    code, out, err = run(capsys, "rebuild", *cfg)
    assert code == 4  # the damaged journal; the other one was rebuilt
    assert "1 conversations" in out
    assert "line 5 (sequence 5)" in err
    lock = StateLock(layout.state_dir)
    lock.acquire()
    try:
        key = str(config.parent / "vigil.key")
        assert run(capsys, "key", "rotate", key, "--reencrypt", *cfg)[0] == 7
    finally:
        lock.release()
    other = config.parent / "other.key"
    generate_key_file(other)
    config.write_text(config.read_text().replace('"vigil.key"', '"other.key"'))
    assert run(capsys, "export", "digest", *cfg)[0] == 3


def test_search_and_sessions_read_the_journals_without_a_mirror(
    setup: tuple[Path, Layout], capsys: pytest.CaptureFixture[str]
) -> None:
    config, layout = setup
    code, out, err = run(capsys, "search", "zeppelin", "--config", str(config))
    assert code == 0
    assert out == "inbox\t2\tcompleted\tThe [zeppelin] has landed\n"
    assert "no mirror" in err
    code, out, _ = run(capsys, "sessions", "--config", str(config))
    assert out.splitlines()[0].split("\t")[:3] == ["name", "turns", "last_status"]
    assert out.splitlines()[2].startswith("inbox\t3\tcompleted\t")
    assert not (layout.runtime_dir / "mirror.sqlite3").exists()  # nothing was created
    code, _, err = run(capsys, "search", "a AND (", "--fts", "--config", str(config))
    assert code == 2
    assert "search 'a AND ('" in err


def test_rebuild_refuses_to_run_as_another_user_than_the_mirrors_owner(
    setup: tuple[Path, Layout], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config, _ = setup
    assert run(capsys, "rebuild", "--config", str(config))[0] == 0
    monkeypatch.setattr(os, "geteuid", lambda: os.getuid() + 4242)
    code, _, err = run(capsys, "rebuild", "--config", str(config))
    assert code == 2
    assert "Run it as that user" in err


def test_a_rebuild_with_workers_from_the_command_line_verifies(
    setup: tuple[Path, Layout],
) -> None:
    """``vigil rebuild --workers 2`` as an operator runs it (its own process, a progress
    bar on a terminal): the workers' rows are what ``vigil verify`` rebuilds itself."""
    config, _ = setup
    vigil = [sys.executable, "-m", "daemon.cli.main"]
    cfg = ["--config", str(config)]
    argv = [*vigil, "rebuild", "--workers", "2", *cfg]
    leader, follower = pty.openpty()
    with subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=follower) as child:
        os.close(follower)
        assert child.stdout is not None
        out = child.stdout.read().decode()
        assert child.wait(timeout=120) == 0
    seen = b""
    try:
        while chunk := os.read(leader, 65536):
            seen += chunk
    except OSError:  # EIO: the child closed its end
        pass
    os.close(leader)
    assert "24 records" in seen.decode(errors="replace")  # the bar's records column
    assert ": 24 records, 2 conversations in " in out
    verified = subprocess.run(
        [*vigil, "verify", "--json", *cfg], cwd=ROOT, capture_output=True, text=True, check=False
    )
    report = json.loads(verified.stdout)
    assert (verified.returncode, report["ok"], report["records"]) == (0, True, 24)
    assert report["mirror"]["state"] == "compared"


def test_rebuild_summary_line_and_progress_bar_on_a_terminal(setup: tuple[Path, Layout]) -> None:
    config, _ = setup
    argv = [sys.executable, "-m", "daemon.cli.main", "rebuild", "--config", str(config)]
    plain = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False)
    assert plain.returncode == 0
    assert plain.stderr == ""
    assert plain.stdout.startswith("rebuilt ")
    assert ": 24 records, 2 conversations in " in plain.stdout
    assert plain.stdout.rstrip().endswith("records/s); 2 start-up checkpoints rewritten")
    leader, follower = pty.openpty()
    with subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=follower) as child:
        os.close(follower)
        assert child.stdout is not None
        out = child.stdout.read().decode()
        assert child.wait(timeout=60) == 0
    seen = b""
    try:
        while chunk := os.read(leader, 65536):
            seen += chunk
    except OSError:  # EIO: the child closed its end
        pass
    os.close(leader)
    assert "24 records" in seen.decode(errors="replace")  # the bar's records column
    assert out.startswith("rebuilt ")
