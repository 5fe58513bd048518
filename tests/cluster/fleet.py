"""Real ``vigil run`` nodes on one PostgreSQL, for the cluster's end-to-end tests.

A :class:`Fleet` is a temporary directory with one key file, one shared working
directory for the jobs (the same absolute ``cwd`` on every node, as the CLI's resume
needs), one file sink per job, and a directory per node (its config, state and
runtime directories). Each node is a :class:`tests.e2e.conftest.Daemon` subprocess
with ``$VIGIL_DATABASE_URL`` pointing at the test's database. What the tests check
is what an operator would: the nodes' log lines, the events in PostgreSQL (decrypted
with the key, folded as ``vigil history`` folds them) and the sinks' files.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from daemon.cluster.db import Database
from daemon.cluster.eventlog import PgEventLogStore
from daemon.cluster.leases import Leases
from daemon.events.heal import ConversationView, fold
from daemon.journal.keyring import generate_key_file
from daemon.testing.harness import MODEL_KEY, toml_value, vigil_argv
from daemon.testing.harness import LoopbackModel as DevModel
from daemon.testing.process import Daemon
from daemon.testing.proctree import OrphanWatch

LEASE_S = 3.0  # the tests' lease: short, so takeovers happen within a test's patience
DROPPED_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "VIGIL_CONFIG", "TMPDIR")
DROPPED_PREFIXES = ("ANTHROPIC_", "CLAUDE_", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "VIGIL_")


class Fleet:
    def __init__(self, dsn: str, model: DevModel, *, lease: str = "3s") -> None:
        # Short: a node's control socket path must stay under 108 bytes.
        self.root = Path(tempfile.mkdtemp(prefix="vc-", dir="/tmp"))
        self.dsn = dsn
        # The server trusts loopback and ignores it: a password every log is checked for.
        self.password = "pw-" + os.urandom(6).hex()
        self.node_dsn = dsn.replace("://vigil@", f"://vigil:{self.password}@", 1)
        self.model = model
        self.lease = lease
        self.key_path = self.root / "vigil.key"
        self.keyring = generate_key_file(self.key_path)
        self.work = self.root / "work"
        self.work.mkdir()
        self.out = self.root / "out"
        self.out.mkdir()
        self.orphans = OrphanWatch()
        self.runs: dict[str, list[Daemon]] = {}
        self._reader: PgEventLogStore | None = None

    # --- configuration -----------------------------------------------------------------

    def sink_path(self, job: str) -> Path:
        return self.out / f"{job}.jsonl"

    def write_config(
        self,
        node: str,
        jobs: Sequence[tuple[str, str]],
        *,
        every: str = "1s",
        key_path: Path | None = None,
        cwds: Mapping[str, Path] | None = None,
        **daemon: str | int | bool,
    ) -> Path:
        """Node ``node``'s config: ``jobs`` as (name, prompt), each with a file sink, run
        in the fleet's shared working directory unless ``cwds`` names another.
        The nodes log conversation text (``log_content``): the checks compare the deltas
        a node showed with the journal."""
        home = self.root / node
        home.mkdir(exist_ok=True)
        settings: dict[str, str | int | bool] = {
            "log_content": True,
            "state_dir": str(home / "state"),
            "runtime_dir": str(home / "run"),
            "key_file": str(key_path or self.key_path),
            "drain_grace": "5s",
            **daemon,
        }
        out = ["[daemon]", *(f"{k} = {toml_value(v)}" for k, v in settings.items())]
        out += ["", "[cluster]", f'node = "{node}"', f'lease = "{self.lease}"']
        for name, prompt in jobs:
            cwd = (cwds or {}).get(name, self.work)
            keys = {"name": name, "every": every, "prompt": prompt, "cwd": str(cwd)}
            out += ["", "[[heartbeat]]", *(f"{k} = {toml_value(v)}" for k, v in keys.items())]
            out += [
                "",
                "[[heartbeat.sink]]",
                'type = "file"',
                f"path = {toml_value(str(self.sink_path(name)))}",
            ]
        path = home / "vigil.toml"
        path.write_text("\n".join(out) + "\n")
        return path

    # --- nodes -------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in DROPPED_ENV and not k.startswith(DROPPED_PREFIXES)
        }
        env.update(
            {
                "ANTHROPIC_BASE_URL": self.model.url,
                "ANTHROPIC_API_KEY": MODEL_KEY,
                "NO_PROXY": "127.0.0.1",
                "PYTHONUNBUFFERED": "1",
                "VIGIL_DATABASE_URL": self.node_dsn,
            }
        )
        return env

    def start(self, node: str, *, ready: bool = True) -> Daemon:
        config = self.root / node / "vigil.toml"
        daemon = Daemon(
            vigil_argv("run", "--config", str(config)), self.env(), self.root, self.orphans
        )
        self.runs.setdefault(node, []).append(daemon)
        if ready:
            daemon.wait_ready()
        return daemon

    def vigil(self, node: str, *args: str) -> subprocess.CompletedProcess[str]:
        """``vigil ARGS --config NODE's config``, as an operator on that node runs it."""
        config = str(self.root / node / "vigil.toml")
        return subprocess.run(
            vigil_argv(*args, "--config", config),
            capture_output=True,
            text=True,
            env=self.env(),
            cwd=self.root,
            timeout=60,
            check=False,
        )

    def all_runs(self) -> list[Daemon]:
        return [d for runs in self.runs.values() for d in runs]

    def stop(self, daemon: Daemon, sig: signal.Signals) -> None:
        os.kill(daemon.pid, sig)

    # --- what the database holds -------------------------------------------------------

    def reader(self) -> PgEventLogStore:
        if self._reader is None:
            db = Database(self.dsn, application_name="test reader", synchronous_commit=False)
            leases = Leases(Database(self.dsn), "test-reader", ttl=timedelta(seconds=15))
            self._reader = PgEventLogStore(db, self.keyring, leases)
        return self._reader

    def events(self, name: str) -> list[tuple[int, dict[str, Any]]]:
        return list(self.reader().read(name))

    def view(self, name: str) -> ConversationView:
        return fold(event for _, event in self.events(name))

    def deliveries(self, name: str) -> list[dict[str, Any]]:
        path = self.sink_path(name)
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line]

    def password_shown(self) -> list[str]:
        """Every log or stderr line of any node that holds the database password."""
        found = []
        for daemon in self.all_runs():
            lines = [json.dumps(x) for x in daemon.lines] + daemon.stderr
            found += [line for line in lines if self.password in line]
        return found

    # --- the end -----------------------------------------------------------------------

    def close(self, keep: Path | None = None) -> list[Any]:
        """End every node (a stopped one is continued first), keep each one's log as
        ``NODE-NN.log`` in ``keep`` for a failure's autopsy; returns orphaned CLIs left."""
        for node, runs in self.runs.items():
            for number, daemon in enumerate(runs):
                if daemon.running:
                    os.kill(daemon.pid, signal.SIGCONT)
                daemon.close()
                log = [json.dumps(x) for x in daemon.lines] + ["# stderr:", *daemon.stderr]
                target = keep or self.root
                (target / f"{node}-{number:02d}.log").write_text("\n".join(log) + "\n")
        if self._reader is not None:
            self._reader.db.close()
            self._reader.leases.db.close()
        survivors = self.orphans.close()
        shutil.rmtree(self.root, ignore_errors=True)
        return survivors
