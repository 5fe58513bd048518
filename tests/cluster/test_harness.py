"""The PostgreSQL harness: a real server on loopback, and a clear failure (never a
skip) when the binaries are missing."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.testing import postgres
from daemon.testing.postgres import PostgresMissing, PostgresServer, find_bindir
from tests.cluster.conftest import start_server


def test_the_server_listens_on_loopback_with_its_socket_in_its_directory(
    pg_server: PostgresServer,
) -> None:
    assert pg_server.dsn().startswith(f"postgresql://vigil@127.0.0.1:{pg_server.port}/")
    settings = pg_server.psql(
        "SELECT current_setting('listen_addresses'), current_setting('unix_socket_directories')"
    )
    assert settings.strip() == f"127.0.0.1|{pg_server.data}"
    assert pg_server.psql("SELECT current_user").strip() == "vigil"


def test_missing_binaries_fail_with_the_install_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(postgres, "DEBIAN_ROOT", tmp_path / "none")
    monkeypatch.setenv("VIGIL_PG_BINDIR", str(tmp_path / "nor-here"))
    with pytest.raises(PostgresMissing, match="apt-get install -y postgresql"):
        find_bindir()
    with pytest.raises(pytest.fail.Exception, match="not found"):
        start_server()  # what the fixtures call: a failure, not a skip
