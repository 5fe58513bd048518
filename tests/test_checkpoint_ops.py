"""``vigil rebuild`` rewrites the start-up checkpoints; ``vigil verify`` compares each
with a full fold and reports one that differs as a warning with its fix."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from daemon.journal.checkpoint import checkpoint_path, read_checkpoint, write_checkpoint
from daemon.journal.keyring import Keyring
from daemon.journal.logstore import journal_path
from daemon.journal.scan import read_events
from daemon.layout import Layout
from tests.test_cli_mirror import run
from tests.test_cli_mirror import setup as setup  # noqa: PLC0414  # the shared fixture
from tests.test_mirror import sample_streams, write_journals


def checkpoints(capsys: pytest.CaptureFixture[str], config: Path) -> tuple[int, Any]:
    code, out, _ = run(capsys, "verify", "--config", str(config), "--json")
    report = json.loads(out)
    return code, {c["name"]: c for c in report["checkpoints"]}


def test_rebuild_writes_checkpoints_that_verify_finds_equal_to_a_full_fold(
    setup: tuple[Path, Layout], capsys: pytest.CaptureFixture[str]
) -> None:
    config, layout = setup
    code, out, _ = run(capsys, "rebuild", "--config", str(config))
    assert code == 0 and "2 start-up checkpoints rewritten" in out
    ring = Keyring.load(config.parent / "vigil.key")
    for name, events in sample_streams().items():
        assert read_checkpoint(layout.checkpoints, ring, name).anchor.seq == len(events)
    code, found = checkpoints(capsys, config)
    assert code == 0
    assert {n: c["status"] for n, c in found.items()} == {"inbox": "matches", "digest": "matches"}
    code, text, _ = run(capsys, "verify", "--config", str(config))
    assert "checkpoints: 2, all match" in text and text.endswith("OK\n")


def test_a_differing_stale_or_orphan_checkpoint_is_a_warning_with_its_fix(
    setup: tuple[Path, Layout], capsys: pytest.CaptureFixture[str]
) -> None:
    config, layout = setup
    run(capsys, "rebuild", "--config", str(config))
    ring = Keyring.load(config.parent / "vigil.key")
    # A checkpoint that authenticates but says something else than the journal (a bug
    # in a fold, say): the next turn number is off.
    inbox = read_checkpoint(layout.checkpoints, ring, "inbox")
    wrong = replace(inbox, state={**inbox.state, "next_turn": 9})
    write_checkpoint(layout.checkpoints, ring, wrong)
    # The digest journal rewritten (the same events sealed anew): its checkpoint is stale.
    path = journal_path(layout.conversations, "digest")
    events = list(read_events(path, "digest", ring))
    path.unlink()
    write_journals(layout.conversations, ring, {"digest": events})
    # A checkpoint with no journal.
    checkpoint_path(layout.checkpoints, "inbox").with_name("ghost.ckpt").write_bytes(b"x")
    code, found = checkpoints(capsys, config)
    assert code == 0  # derived: a warning, not damage
    assert found["inbox"]["status"] == "differs" and "next_turn" in found["inbox"]["detail"]
    assert found["digest"]["status"] == "unusable" and "stale" in found["digest"]["detail"]
    assert found["ghost"]["status"] == "orphan"
    code, text, _ = run(capsys, "verify", "--config", str(config))
    assert code == 0 and "checkpoints: 3, 3 warnings" in text
    assert "warning: " in text and "`vigil rebuild` rewrites it, or delete it" in text
    # The fix works.
    run(capsys, "rebuild", "--config", str(config))
    checkpoint_path(layout.checkpoints, "ghost").unlink()
    code, found = checkpoints(capsys, config)
    assert {n: c["status"] for n, c in found.items()} == {"inbox": "matches", "digest": "matches"}
