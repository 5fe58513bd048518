"""``vigil migrate --to-cluster`` end to end: a real single-node daemon runs a few
conversations on files, stops; the migration copies them into a real PostgreSQL; the
operator's ``vigil history``, ``sessions`` and ``search`` read the same from the
cluster as from the files; and
a cluster node started on it resumes every conversation with its memory, from the
transcripts in PostgreSQL (the runtime directory, with the CLI's own copy, is wiped
first)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from daemon.testing.harness import vigil_argv
from daemon.testing.process import Daemon
from tests.cluster.checks import check_memory, check_turns_once
from tests.cluster.fleet import Fleet
from tests.cluster.test_nodes import wait_until

NAMES = ["inbox", "digest", "monitor"]


def file_config(cluster_config: Path) -> Path:
    """The same site without ``[cluster]``: the single node it was before."""
    lines = cluster_config.read_text().splitlines()
    start = lines.index("[cluster]")
    end = start + 1
    while end < len(lines) and lines[end].strip():
        end += 1
    path = cluster_config.with_name("single.toml")
    path.write_text("\n".join(lines[:start] + lines[end:]) + "\n")
    return path


def vigil(fleet: Fleet, config: Path, *args: str) -> Any:
    import subprocess  # noqa: PLC0415  # only here

    return subprocess.run(
        vigil_argv(*args, "--config", str(config)),
        capture_output=True,
        text=True,
        env=fleet.env(),
        cwd=fleet.root,
        timeout=120,
        check=False,
    )


def histories(fleet: Fleet, config: Path) -> dict[str, Any]:
    out = {}
    for name in NAMES:
        done = vigil(fleet, config, "history", name, "--json")
        assert done.returncode == 0, done.stderr
        out[name] = json.loads(done.stdout)
    return out


def digests(state_dir: Path) -> dict[str, str]:
    return {
        str(p.relative_to(state_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(state_dir.rglob("*.jsonl"))
    }


@pytest.mark.timeout(300)
def test_a_single_node_site_moves_into_the_cluster_with_its_memory(fleet: Fleet) -> None:
    jobs = [(n, f"{n} beat") for n in NAMES]
    cluster = fleet.write_config("node-a", jobs, every="2s")
    single = file_config(cluster)
    state_dir = fleet.root / "node-a" / "state"

    # A single node on files: two completed turns or more per conversation, then stopped.
    daemon = Daemon(
        vigil_argv("run", "--config", str(single)), fleet.env(), fleet.root, fleet.orphans
    )
    fleet.runs.setdefault("single", []).append(daemon)
    daemon.wait_ready()
    wait_until(
        "two completed turns of each conversation on the single node",
        lambda: all(len(daemon.events("turn_completed", job=n)) >= 2 for n in NAMES),
        120,
    )
    assert daemon.terminate() == 0
    before = histories(fleet, single)
    files = digests(state_dir)
    assert any(k.startswith("transcripts/") for k in files)

    # The migration: everything imported, read back and checked; the files untouched.
    done = vigil(fleet, cluster, "migrate", "--to-cluster", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] is True
    assert report["conversations"] == {"imported": 3, "skipped": 0, "refused": 0}
    transcripts = report["transcripts"]
    assert transcripts["imported"] >= 3
    assert transcripts["refused"] == 0
    assert fleet.password not in done.stdout + done.stderr
    assert digests(state_dir) == files
    assert histories(fleet, cluster) == before  # the operator sees the same history
    # ... and the same sessions and search results, read from PostgreSQL.
    for command in (("sessions",), ("search", "digest beat"), ("search", "beat", "--limit", "50")):
        on_files = vigil(fleet, single, *command, "--json")
        on_cluster = vigil(fleet, cluster, *command, "--json")
        assert on_files.returncode == on_cluster.returncode == 0, on_cluster.stderr
        assert json.loads(on_cluster.stdout) == json.loads(on_files.stdout), command
        assert json.loads(on_cluster.stdout), command
        assert fleet.password not in on_cluster.stdout + on_cluster.stderr

    # Again: nothing left to do, everything checked once more.
    again = vigil(fleet, cluster, "migrate", "--to-cluster", "--json")
    assert again.returncode == 0, again.stderr
    second = json.loads(again.stdout)
    assert second["conversations"] == {"imported": 0, "skipped": 3, "refused": 0}
    assert second["transcripts"]["imported"] == 0
    assert second["records_checked"] == report["records_checked"]

    # A cluster node on it carries on every conversation with its memory, resumed from
    # PostgreSQL: the CLI's own plaintext copy in the runtime directory is gone.
    shutil.rmtree(fleet.root / "node-a" / "run")
    node = fleet.start("node-a")
    completed_before = {n: sum(1 for t in before[n] if t["status"] == "completed") for n in NAMES}

    def carried_on() -> bool:
        return all(
            sum(1 for t in fleet.view(n).turns if t.status == "completed")
            >= completed_before[n] + 2
            for n in NAMES
        )

    wait_until("two more completed turns of each conversation on the cluster node", carried_on, 150)
    assert node.terminate() == 0
    for name in NAMES:
        events = fleet.events(name)
        check_turns_once(events, name)
        assert check_memory(events, name) >= completed_before[name] + 2
    assert not node.events("resume_failed")
