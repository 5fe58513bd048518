"""What a node tells the cluster about itself, and whether it may join (pure, no I/O).

Every node must run the same ``[[heartbeat]]`` jobs under the same key: a conversation
moves from node to node, and each must drive it alike and read what the others sealed.
So each node publishes a :class:`NodeCard` in its membership row (the ``jobs_digest``
column holds it as JSON): a digest of each job's whole configuration, and the jobs
whose ``cwd`` does not exist on it (those it never takes). :func:`join_refusal`
compares a starting node with the live ones and names what differs.

A digest is unkeyed SHA-256 over the job's configuration as JSON (webhook URLs and
headers included, so only digests, never the values, reach the database).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from daemon.config.model import HeartbeatConfig
from daemon.errors import VigilError

__all__ = ["JoinRefused", "NodeCard", "job_digest", "join_refusal"]


def job_digest(job: HeartbeatConfig) -> str:
    """A digest of everything a job's configuration says (its resolved paths too)."""
    return hashlib.sha256(job.model_dump_json().encode()).hexdigest()[:16]


@dataclass(frozen=True)
class NodeCard:
    """A node's jobs (name -> digest) and those whose cwd it lacks."""

    jobs: Mapping[str, str]
    without_cwd: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def of(cls, jobs: Iterable[HeartbeatConfig]) -> NodeCard:
        listed = list(jobs)
        return cls(
            {j.name: job_digest(j) for j in listed},
            frozenset(j.name for j in listed if not j.cwd.is_dir()),
        )

    def to_json(self) -> str:
        return json.dumps(
            {"jobs": dict(sorted(self.jobs.items())), "without_cwd": sorted(self.without_cwd)},
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> NodeCard | None:
        """The card a node published; ``None`` when it is not one (another version)."""
        try:
            data = json.loads(text)
        except ValueError:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("jobs"), dict):
            return None
        jobs = {str(k): str(v) for k, v in data["jobs"].items()}
        without = data.get("without_cwd")
        return cls(jobs, frozenset(map(str, without)) if isinstance(without, list) else frozenset())

    def may_own(self, conversation: str) -> bool:
        """Whether this node may take ``conversation``: it runs that job, and has its cwd."""
        return conversation in self.jobs and conversation not in self.without_cwd


class JoinRefused(VigilError):
    """This node's jobs or key ids differ from a live node's: it does not join."""

    def __init__(
        self,
        node: str,
        other: str,
        *,
        changed: Sequence[str] = (),
        only_here: Sequence[str] = (),
        only_there: Sequence[str] = (),
        keys_here: Sequence[str] = (),
        keys_there: Sequence[str] = (),
    ) -> None:
        self.node = node
        self.other = other
        self.changed = list(changed)
        self.only_here = list(only_here)
        self.only_there = list(only_there)
        self.keys_differ = list(keys_here) != list(keys_there)
        self.exit_code = 3 if self.keys_differ else 2
        parts = []
        if self.keys_differ:
            parts.append(
                f"its key ids ({', '.join(keys_here)}) differ from node {other}'s "
                f"({', '.join(keys_there)}): every node needs the same key file"
            )
        jobs = []
        if self.changed:
            jobs.append(f"configured differently: {', '.join(self.changed)}")
        if self.only_here:
            jobs.append(f"only on {node}: {', '.join(self.only_here)}")
        if self.only_there:
            jobs.append(f"only on {other}: {', '.join(self.only_there)}")
        if jobs:
            parts.append(
                f"its [[heartbeat]] jobs differ from node {other}'s ({'; '.join(jobs)}): every "
                "node needs the same jobs (copy the running nodes' [[heartbeat]] tables, or "
                "change them on every node)"
            )
        super().__init__(f"node {node} refuses to join the cluster: " + "; ".join(parts))


def join_refusal(
    node: str,
    card: NodeCard,
    key_ids: Sequence[str],
    live: Iterable[tuple[str, NodeCard | None, Sequence[str]]],
) -> JoinRefused | None:
    """Why ``node`` may not join the live nodes ``(name, card, key_ids)``; None: it may.

    Compared with the first other live node (by name) whose card can be read; a row
    under this node's own name (its previous process) is not compared."""
    for other, theirs, their_keys in sorted(live, key=lambda x: x[0]):
        if other == node or theirs is None:
            continue
        changed = sorted(
            n for n in card.jobs if n in theirs.jobs and card.jobs[n] != theirs.jobs[n]
        )
        only_here = sorted(set(card.jobs) - set(theirs.jobs))
        only_there = sorted(set(theirs.jobs) - set(card.jobs))
        keys_here, keys_there = sorted(key_ids), sorted(their_keys)
        if changed or only_here or only_there or keys_here != keys_there:
            return JoinRefused(
                node,
                other,
                changed=changed,
                only_here=only_here,
                only_there=only_there,
                keys_here=keys_here,
                keys_there=keys_there,
            )
        return None
    return None
