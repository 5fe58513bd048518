"""The [cluster] table: where the database comes from, and the password never shown."""

from __future__ import annotations

import textwrap
from datetime import timedelta
from pathlib import Path

import pytest

from daemon.config.cluster import ClusterConfig, DatabaseNotConfigured
from daemon.config.load import load_config
from daemon.config.problems import ConfigError

SECRET = "hunter2-s3cret"  # noqa: S105 -- a made-up password the tests look for


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "vigil.toml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_without_cluster_a_missing_cwd_is_still_refused(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [[heartbeat]]
        name = "inbox"
        every = "1m"
        prompt = "p"
        cwd = "/nonexistent/agent"
        """,
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "does not exist" in str(info.value)
    assert load_config(write(tmp_path, "")).cluster is None


def test_cluster_defaults_and_a_cwd_absent_on_this_node(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""
        [cluster]
        database = "postgresql://vigil:{SECRET}@db.internal:5432/vigil"

        [[heartbeat]]
        name = "inbox"
        every = "1m"
        prompt = "p"
        cwd = "/nonexistent/agent"
        """,
    )
    config = load_config(path)
    cluster = config.cluster
    assert cluster is not None
    assert cluster.lease == timedelta(seconds=15)
    assert cluster.renew_every == timedelta(seconds=5)
    assert cluster.node  # the host name
    assert config.heartbeats[0].cwd == Path("/nonexistent/agent")
    assert SECRET not in repr(config) and SECRET not in str(config.model_dump())
    assert cluster.database_url({}) == f"postgresql://vigil:{SECRET}@db.internal:5432/vigil"


def test_bad_cluster_keys_are_each_named_without_quoting_the_url(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""
        [cluster]
        database = "mysql://vigil:{SECRET}@db"
        node = "no spaces"
        lease = "1s"
        nodes = 3
        """,
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = str(info.value)
    assert SECRET not in text
    keys = [p.key for p in info.value.problems]
    assert keys == ["cluster.database", "cluster.node", "cluster.lease", "cluster.nodes"]
    assert "postgresql://" in text and "did you mean 'node'" in text


def test_database_from_the_environment_then_the_credential(tmp_path: Path) -> None:
    cluster = ClusterConfig(node="a")
    url = f"postgresql://vigil:{SECRET}@127.0.0.1/vigil"
    assert cluster.database_url({"VIGIL_DATABASE_URL": url}) == url
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "vigil.database").write_text(url + "\n")
    env = {"CREDENTIALS_DIRECTORY": str(creds)}
    assert cluster.database_url(env) == url
    with pytest.raises(DatabaseNotConfigured) as info:
        cluster.database_url({})
    assert "VIGIL_DATABASE_URL" in str(info.value) and "vigil.database" in str(info.value)
    (creds / "vigil.database").write_text(f"vigil:{SECRET}@nowhere")
    with pytest.raises(DatabaseNotConfigured) as bad:
        cluster.database_url(env)
    assert SECRET not in str(bad.value) and "vigil.database" in str(bad.value)
