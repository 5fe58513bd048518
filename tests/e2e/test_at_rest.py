"""Issue 6: no conversation plaintext at rest, owner-only files, the key never shown."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from daemon.testing.harness import Job, Site, vigil_argv

pytestmark = pytest.mark.e2e


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]


def _containing(root: Path, needle: bytes) -> list[Path]:
    return [p for p in _files(root) if needle in p.read_bytes()]


@pytest.mark.timeout(120)
def test_no_file_under_the_state_directory_holds_conversation_plaintext(site: Site) -> None:
    canary = f"canary-{uuid.uuid4().hex}"
    site.write_config([Job("secretive", f"Remember {canary}. [slow:40]", every="1s")])
    first = site.start()
    first.wait_event("turn_completed", 30, job="secretive")
    # Die mid-reply too: torn tails and broken copies must not leak either.
    first.kill_on(lambda x: x.get("event") == "delta", 30, what="a delta")
    second = site.start()
    second.wait_event("turn_completed", 30, job="secretive")
    assert second.terminate() == 0

    assert _containing(site.state_dir, canary.encode()) == []
    # The check can fail: the canary did reach the disk, in the runtime directory (tmpfs
    # under systemd), where the CLI keeps its own transcript copy.
    assert _containing(site.runtime_dir, canary.encode()) != []
    # And the journal holds it, encrypted: it decrypts to the prompt.
    assert any(canary in t["prompt"] for t in site.history("secretive"))


@pytest.mark.timeout(120)
def test_the_default_logs_carry_sizes_never_conversation_text(site: Site) -> None:
    """Under systemd stdout is journald, on disk: by default a log line says how big a
    prompt, a delta, a reply or a failing sink program's output (it may quote the reply)
    was, never what it said. ``vigil tail`` and ``history`` show the text."""
    canary = f"canary-{uuid.uuid4().hex}"
    prompt = f"Remember {canary}."
    path = site.write_config([Job("secretive", prompt, every="1s")], log_content=False)
    # A broken sink program that prints what it was given (the reply) before failing.
    sinks: list[dict[str, Any]] = [
        {"type": "stdout"},
        {"type": "command", "command": ["sh", "-c", "cat >&2; exit 1"]},
    ]
    for sink in sinks:
        path.write_text(
            path.read_text()
            + "\n[[heartbeat.sink]]\n"
            + "".join(f"{k} = {json.dumps(v)}\n" for k, v in sink.items())
            + "retries = 0\n"
        )
    daemon = site.start()
    daemon.wait_event("reply", 30, job="secretive")
    failed = daemon.wait_event("delivery_failed", 30, job="secretive")
    assert daemon.terminate() == 0
    assert failed["error"] == "sh exited with status 1"
    assert "output" not in failed and failed["output_chars"] > len(canary)
    logged = "\n".join([*(json.dumps(x) for x in daemon.lines), *daemon.stderr])
    assert canary not in logged
    started = daemon.events("turn_started", job="secretive")[0]
    assert "prompt" not in started and started["prompt_chars"] == len(prompt)
    deltas = daemon.events("delta", job="secretive")
    assert deltas and all("text" not in d and d["text_chars"] > 0 for d in deltas)
    reply = daemon.events("reply", job="secretive")[0]
    assert "text" not in reply and reply["text_bytes"] >= reply["text_chars"] > len(canary)
    # The check can fail: the text is in the journal, and tail reads it from there.
    tail = site.vigil("tail", "secretive", "--config", str(site.config_path))
    assert tail.returncode == 0 and canary in tail.stdout
    # ... and history shows what the sink's program said, from the journal.
    errors = [d["error"] for t in site.history("secretive") for d in t["deliveries"]]
    assert any(e and e.startswith("sh exited with status 1: ") and canary in e for e in errors)


@pytest.mark.timeout(120)
def test_files_vigil_creates_are_owner_only_whatever_the_umask(site: Site) -> None:
    site.write_config([Job("private", "private beat", every="1s")])
    # Start the daemon from a shell that sets a wide-open umask first.
    env = site.env()
    proc = subprocess.Popen(
        [
            "/bin/sh",
            "-c",
            'umask 000 && exec "$@"',
            "sh",
            *vigil_argv("run", "--config", str(site.config_path)),
        ],
        env=env,
        cwd=site.root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        completed = 0
        for raw in proc.stdout:
            if json.loads(raw).get("event") == "turn_completed":
                completed += 1
                if completed == 2:
                    break
        proc.terminate()
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    loose = []
    for root in (site.state_dir, site.runtime_dir):
        for path in [root, *root.rglob("*")]:
            if path.is_symlink():
                continue
            mode = stat.S_IMODE(path.stat().st_mode)
            if mode & 0o077:
                loose.append(f"{path.relative_to(site.root)} {mode:04o}")
    assert loose == []
    assert (site.state_dir / "conversations" / "private.jsonl").exists()


@pytest.mark.timeout(120)
def test_the_key_never_appears_in_logs_errors_or_json_output(site: Site) -> None:
    site.write_config([Job("keyed", "keyed beat", every="1s")])
    key_doc = json.loads(site.key_path.read_text())
    secret_b64 = key_doc["keys"][0]["key"]
    secret = base64.b64decode(secret_b64)
    needles = [secret_b64, secret.hex(), secret_b64[:16]]

    daemon = site.start()
    daemon.wait_event("turn_completed", 30, job="keyed")
    assert daemon.terminate() == 0
    outputs = [json.dumps(x) for x in daemon.lines] + daemon.stderr
    config = str(site.config_path)
    for args in (
        ("history", "keyed", "--config", config, "--json"),
        ("history", "keyed", "--config", config),
        ("sessions", "--config", config, "--json"),
        ("verify", "--config", config, "--json"),
        ("search", "keyed", "--config", config, "--json"),
        ("export", "keyed", "--config", config),
    ):
        done = site.vigil(*args)
        assert done.returncode == 0, (args, done.stderr)
        outputs += [done.stdout, done.stderr]
    # Errors that concern the key itself.
    os.chmod(site.key_path, 0o644)
    loose = site.vigil("history", "keyed", "--config", config)
    os.chmod(site.key_path, 0o600)
    assert loose.returncode == 3 and "chmod 600" in loose.stderr
    truncated = site.root / "truncated.key"
    truncated.write_text(site.key_path.read_text()[:60])
    os.chmod(truncated, 0o600)
    text = site.config_path.read_text().replace('"vigil.key"', '"truncated.key"')
    site.config_path.write_text(text)
    broken = site.vigil("history", "keyed", "--config", config)
    assert broken.returncode == 3 and "truncated.key" in broken.stderr
    outputs += [loose.stdout, loose.stderr, broken.stdout, broken.stderr]

    blob = "\n".join(outputs)
    assert "keyed beat" in blob  # the outputs really are the conversation's
    for needle in needles:
        assert needle not in blob


@pytest.mark.timeout(60)
def test_log_lines_are_json_with_job_session_and_turn_for_journalctl(site: Site) -> None:
    site.write_config([Job("structured", "structured beat [slow:20]", every="1s")])
    daemon = site.start()
    daemon.wait_event("turn_completed", 30, job="structured")
    assert daemon.terminate() == 0
    assert [x for x in daemon.lines if x.get("event") == "<not json>"] == []
    assert all({"event", "level", "timestamp"} <= set(x) for x in daemon.lines)
    turn_lines = [
        x
        for x in daemon.lines
        if x.get("event") in ("turn_started", "delta", "result", "turn_completed")
    ]
    assert {x["event"] for x in turn_lines} == {"turn_started", "delta", "result", "turn_completed"}
    for line in turn_lines:
        assert line["job"] == "structured"
        assert isinstance(line["turn"], int)
        assert "session" in line
    assert all(isinstance(x["session"], str) for x in turn_lines if x["event"] != "turn_started")
