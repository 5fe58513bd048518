"""A throwaway PostgreSQL server for tests and benchmarks: real, local, loopback only.

:meth:`PostgresServer.start` runs ``initdb`` in a fresh temporary directory (trust
authentication, superuser ``vigil``) and starts the server on a free port of
127.0.0.1, with its Unix socket inside the data directory; :meth:`PostgresServer.dsn`
names a database on it; :meth:`PostgresServer.stop` (``pg_ctl stop -m fast``, or
``immediate`` for a crash), :meth:`PostgresServer.start_again` and
:meth:`PostgresServer.restart` drive its life; :meth:`PostgresServer.destroy` stops it
and removes the directory. PostgreSQL refuses to run as root, so as root every
``initdb``/``pg_ctl`` runs as the ``postgres`` user (``runuser -u postgres --``) and
the directory is handed to that user.

The binaries are looked up in ``$VIGIL_PG_BINDIR``, then Debian's
``/usr/lib/postgresql/<version>/bin`` (15 first, else the newest). When none is found,
:class:`PostgresMissing` says so and how to install it: a test must fail on it, never
skip (``.ci/run`` installs PostgreSQL when it is missing).

Nothing here talks to anything but 127.0.0.1, and nothing imports psycopg: the
harness drives the server through its own command-line tools only.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["PostgresError", "PostgresMissing", "PostgresServer", "find_bindir"]

DEBIAN_ROOT = Path("/usr/lib/postgresql")
PREFERRED_VERSION = "15"
SUPERUSER = "vigil"


class PostgresMissing(RuntimeError):
    """No PostgreSQL server binaries (``initdb``, ``pg_ctl``) on this machine."""

    def __init__(self, looked_in: list[Path]) -> None:
        self.looked_in = looked_in
        where = ", ".join(str(p) for p in looked_in) or "nowhere"
        super().__init__(
            f"PostgreSQL server binaries (initdb, pg_ctl) not found (looked in {where}); "
            "the cluster tests need a real PostgreSQL: install it with "
            "`apt-get install -y postgresql` (as .ci/run does) or set VIGIL_PG_BINDIR"
        )


class PostgresError(RuntimeError):
    """A PostgreSQL tool failed; carries the command, its exit code and its output."""

    def __init__(self, command: list[str], code: int, output: str) -> None:
        self.command = command
        self.code = code
        self.output = output
        super().__init__(f"{' '.join(command)} exited with {code}: {output.strip()[-2000:]}")


def find_bindir() -> Path:
    """The directory holding ``initdb`` and ``pg_ctl``; :class:`PostgresMissing` if none."""
    candidates: list[Path] = []
    env = os.environ.get("VIGIL_PG_BINDIR")
    if env:
        candidates.append(Path(env))
    candidates.append(DEBIAN_ROOT / PREFERRED_VERSION / "bin")
    if DEBIAN_ROOT.is_dir():

        def version(p: Path) -> tuple[int, str]:
            name = p.parent.name
            return (int(name), name) if name.isdigit() else (0, name)

        candidates.extend(sorted(DEBIAN_ROOT.glob("*/bin"), key=version, reverse=True))
    for cand in candidates:
        if (cand / "initdb").is_file() and (cand / "pg_ctl").is_file():
            return cand
    raise PostgresMissing(list(dict.fromkeys(candidates)))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class PostgresServer:
    """One running (or stopped) throwaway server; see the module docstring."""

    bindir: Path
    base: Path
    port: int
    fsync: bool = True
    running: bool = field(default=False, init=False)

    @property
    def data(self) -> Path:
        return self.base / "data"

    @property
    def logfile(self) -> Path:
        return self.base / "server.log"

    @classmethod
    def start(cls, *, fsync: bool = True, bindir: Path | None = None) -> PostgresServer:
        """initdb and start a server; the caller must :meth:`destroy` it."""
        bindir = bindir or find_bindir()
        base = Path(tempfile.mkdtemp(prefix="vigil-pg-"))
        server = cls(bindir, base, _free_port(), fsync)
        try:
            if os.geteuid() == 0:
                shutil.chown(base, "postgres", "postgres")
            server._run(
                "initdb", "-D", str(server.data), "-A", "trust", "-U", SUPERUSER,
                "-E", "UTF8", "--locale=C", "--no-sync",
            )  # fmt: skip
            for _attempt in range(3):
                try:
                    server.start_again()
                    break
                except PostgresError:
                    if "could not bind" not in server.log_tail():
                        raise
                    server.port = _free_port()  # taken between the probe and the start
            else:
                server.start_again()
        except BaseException:
            server.destroy()
            raise
        return server

    def dsn(self, dbname: str = "postgres") -> str:
        """A libpq URL for ``dbname`` over TCP on 127.0.0.1 (no password: trust)."""
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    def start_again(self) -> None:
        """Start the server (again) on the same port and data directory; waits until
        it accepts connections."""
        options = (
            f"-k {self.data} -p {self.port} -c listen_addresses=127.0.0.1"
            f" -c fsync={'on' if self.fsync else 'off'}"
        )
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.logfile), "-o", options,
            "-w", "-t", "60", "start",
        )  # fmt: skip
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        """``pg_ctl stop -m MODE``: ``fast`` (clean: sessions are terminated, open
        transactions roll back) or ``immediate`` (like a crash: recovery at next start)."""
        if not self.running:
            return
        self._run("pg_ctl", "-D", str(self.data), "stop", "-m", mode, "-w", "-t", "60")
        self.running = False

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start_again()

    def destroy(self) -> None:
        """Stop the server if it runs and remove its directory; idempotent."""
        if self.running:
            with contextlib.suppress(PostgresError):
                self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        """Run ``sql`` with ``psql`` (stops at the first error); its unaligned output."""
        psql = self.bindir / "psql"
        command = [
            str(psql), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
            "-d", self.dsn(dbname), "-c", sql,
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise PostgresError(command, done.returncode, done.stderr + done.stdout)
        return done.stdout

    def create_database(self, name: str) -> str:
        """CREATE DATABASE ``name`` (a plain identifier) and return its DSN."""
        if not name.replace("_", "").isalnum():
            raise ValueError(f"database name {name!r}: letters, digits and '_' only")
        self.psql(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def log_tail(self, limit: int = 4000) -> str:
        try:
            return self.logfile.read_text(errors="replace")[-limit:]
        except OSError:
            return ""

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bindir / tool), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(
            command, capture_output=True, text=True, check=False, cwd=self.base, timeout=120
        )
        if done.returncode != 0:
            raise PostgresError(command, done.returncode, done.stderr + done.stdout)
