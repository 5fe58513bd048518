"""Joining a cluster: a node publishes its jobs' digests; one whose jobs or key ids
differ from a live node's is refused, with the jobs named (pure, no database)."""

from __future__ import annotations

from pathlib import Path

from daemon.cluster.join import JoinRefused, NodeCard, join_refusal
from daemon.config.model import HeartbeatConfig


def job(tmp_path: Path, name: str, prompt: str = "p", cwd: str = "work") -> HeartbeatConfig:
    return HeartbeatConfig.model_validate(
        {"name": name, "every": "1m", "prompt": prompt, "cwd": cwd},
        context={"base_dir": tmp_path, "cwd_may_be_absent": True},
    )


def test_a_card_round_trips_and_says_which_jobs_a_node_may_own(tmp_path: Path) -> None:
    (tmp_path / "work").mkdir()
    card = NodeCard.of([job(tmp_path, "inbox"), job(tmp_path, "far", cwd="elsewhere")])
    assert card.without_cwd == frozenset({"far"})
    again = NodeCard.from_json(card.to_json())
    assert again == card
    assert card.may_own("inbox") and not card.may_own("far") and not card.may_own("unknown")
    assert NodeCard.from_json("not json") is None
    assert NodeCard.from_json('{"digest": 1}') is None


def test_same_jobs_and_keys_join_and_differences_are_named(tmp_path: Path) -> None:
    mine = NodeCard.of([job(tmp_path, "inbox"), job(tmp_path, "digest"), job(tmp_path, "x")])
    same = NodeCard.of([job(tmp_path, "inbox"), job(tmp_path, "digest"), job(tmp_path, "x")])
    assert join_refusal("b", mine, ["k1"], [("a", same, ["k1"])]) is None
    assert join_refusal("b", mine, ["k1"], []) is None  # the first node
    # Its own previous row (a restart) and unreadable cards are not compared.
    other = NodeCard.of([job(tmp_path, "inbox")])
    assert join_refusal("b", mine, ["k1"], [("b", other, ["k9"]), ("a", None, [])]) is None

    theirs = NodeCard.of(
        [job(tmp_path, "inbox", "changed"), job(tmp_path, "y"), job(tmp_path, "x")]
    )
    refusal = join_refusal("b", mine, ["k1"], [("c", same, ["k1"]), ("a", theirs, ["k1"])])
    assert isinstance(refusal, JoinRefused)
    assert (refusal.other, refusal.changed, refusal.only_here, refusal.only_there) == (
        "a",
        ["inbox"],
        ["digest"],
        ["y"],
    )
    assert refusal.exit_code == 2
    assert "configured differently: inbox; only on b: digest; only on a: y" in str(refusal)

    keys = join_refusal("b", mine, ["k1"], [("a", same, ["k1", "k2"])])
    assert keys is not None and keys.exit_code == 3 and "same key file" in str(keys)
