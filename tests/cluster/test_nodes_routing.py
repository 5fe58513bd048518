"""``vigil beat`` and ``vigil send`` on a node that does not own the conversation:
refused (exit 10) with the owner's name; on the owner they run."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from daemon.testing.harness import LoopbackModel as DevModel
from tests.cluster.conftest import NewDatabase
from tests.cluster.fleet import Fleet
from tests.cluster.test_nodes import settled


@pytest.fixture
def dev_model() -> Iterator[DevModel]:
    model = DevModel()
    try:
        yield model
    finally:
        model.stop()


@pytest.fixture
def fleet(new_database: NewDatabase, dev_model: DevModel, tmp_path: Any) -> Iterator[Fleet]:
    made = Fleet(new_database(), dev_model, lease="3s")
    try:
        yield made
    finally:
        made.close(keep=tmp_path)


@pytest.mark.timeout(240)
def test_beat_and_send_name_the_owner_on_another_node(fleet: Fleet) -> None:
    names = [f"c{i}" for i in range(6)]
    nodes = ["node-a", "node-b"]
    for node in nodes:
        fleet.write_config(node, [(n, f"{n} beat") for n in names], every="1h")
    daemons = {node: fleet.start(node) for node in nodes}
    placed = settled(fleet, names, nodes, 90)
    name = next(n for n, owner in placed.items() if owner == "node-b")

    for op in (["beat", name], ["send", name, "hello"]):
        refused = fleet.vigil("node-a", *op)
        assert refused.returncode == 10, refused.stderr
        assert f"{name!r} is owned by node node-b, not node-a" in refused.stderr
        assert f"run `vigil {op[0]} {name}` on node-b" in refused.stderr

    sent = fleet.vigil("node-b", "send", name, "hello [reply:HELLO-BACK]")
    assert sent.returncode == 0, sent.stderr
    assert "HELLO-BACK" in sent.stdout
    hellos = [t for t in fleet.view(name).turns if "hello" in (t.prompt or "")]
    assert [t.status for t in hellos] == ["completed"]  # the refused send ran nowhere
    for daemon in daemons.values():
        assert daemon.terminate() == 0
