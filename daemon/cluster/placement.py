"""Which live node should own which conversation: rendezvous (highest random weight)
hashing. Pure functions, no I/O.

Every (node, conversation) pair gets a pseudo-random score from a hash; the node with
the highest score owns the conversation. So every node computes the same answer from
the same list of live nodes with no coordination, the load spreads evenly, and the
assignment is stable: when a node leaves, only its conversations move (each to its
runner-up); when a node joins, only the conversations it now wins move, all to it.

:func:`plan` says what should move given who owns what now; the runtime hands a
conversation over between turns, never mid-turn (not decided here).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

__all__ = ["Move", "assign", "next_tick_in", "owner_of", "plan", "score"]

Eligible = Callable[[str, str], bool]  # (node, conversation) -> may that node own it


def score(node: str, conversation: str) -> int:
    """The weight of ``node`` for ``conversation``: 64 bits of BLAKE2b of both names."""
    digest = hashlib.blake2b(
        node.encode() + b"\x00" + conversation.encode(), digest_size=8
    ).digest()
    return int.from_bytes(digest, "big")


def owner_of(
    conversation: str, nodes: Iterable[str], eligible: Eligible | None = None
) -> str | None:
    """The node among ``nodes`` that should own ``conversation`` (ties, which take a
    64-bit collision, go to the greater name); ``None`` when no node is eligible."""
    best: tuple[int, str] | None = None
    for node in nodes:
        if eligible is not None and not eligible(node, conversation):
            continue
        candidate = (score(node, conversation), node)
        if best is None or candidate > best:
            best = candidate
    return None if best is None else best[1]


def assign(
    conversations: Iterable[str], nodes: Iterable[str], eligible: Eligible | None = None
) -> dict[str, str | None]:
    """``owner_of`` for every conversation."""
    live = sorted(set(nodes))
    return {c: owner_of(c, live, eligible) for c in conversations}


@dataclass(frozen=True)
class Move:
    conversation: str
    source: str | None  # the owner now (None: nobody holds it)
    target: str | None  # who should own it (None: no live node may)


def plan(
    current: Mapping[str, str | None],
    nodes: Iterable[str],
    eligible: Eligible | None = None,
) -> list[Move]:
    """The conversations whose owner should change, sorted by name.

    ``current`` maps every conversation to the node holding it now (``None`` for a
    conversation nobody holds, or whose owner is not live: it must be taken over).
    """
    wanted = assign(current, nodes, eligible)
    return [Move(c, current[c], wanted[c]) for c in sorted(current) if current[c] != wanted[c]]


EXPIRY_MARGIN = timedelta(milliseconds=50)  # past a silent node's last moment, then look
MIN_TICK = timedelta(milliseconds=50)


def next_tick_in(
    now: datetime,
    every: timedelta,
    lease: timedelta,
    heartbeats: Iterable[datetime],
) -> timedelta:
    """How long a node waits before its next tick: ``every`` (a third of the lease), or
    less, just after the earliest of the other live nodes' heartbeats runs out
    (``heartbeat + lease``). A node that died is then no longer live and its leases
    have run out (they were renewed just before that heartbeat): its conversations are
    placed elsewhere at once, not up to a tick later. A live node's heartbeat is renewed
    every third of the lease, so it never shortens a tick."""
    ends = [beat + lease - now for beat in heartbeats]
    soonest = min((end for end in ends if end > timedelta(0)), default=every)
    return max(min(every, soonest + EXPIRY_MARGIN), MIN_TICK)
