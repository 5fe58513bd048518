"""Where a new job's first beat falls: a deterministic splay within its ``jitter``.

Jobs started together (a fresh fleet, or many jobs added by one reload) would all get
their first beat one second later, and since an interval schedule is anchored at its
first beat, every ``every`` after that they would come due together again. A job with
``jitter`` set has its first beat (only when its conversation has no beat yet) moved
by an offset in ``[0, jitter)`` taken from a hash of its name: the same offset at every
start, spread evenly over a fleet, independent of Python's per-process hash seed.
Later beats are spread by the jitter itself (APScheduler's random delay).
"""

from __future__ import annotations

import hashlib
from datetime import timedelta

__all__ = ["first_beat_splay"]

_RESOLUTION = timedelta(milliseconds=1)


def first_beat_splay(name: str, jitter: timedelta | None) -> timedelta:
    """The offset of job ``name``'s first beat: ``0 <= offset < jitter`` (0 without)."""
    if jitter is None or jitter <= timedelta(0):
        return timedelta(0)
    digest = hashlib.sha256(name.encode()).digest()
    fraction = int.from_bytes(digest[:8], "big") / 2**64  # uniform in [0, 1)
    return (jitter * fraction) // _RESOLUTION * _RESOLUTION
