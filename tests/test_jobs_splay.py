"""The first beat of a new job is spread over its jitter by a hash of its name."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from datetime import timedelta

from jobs.splay import first_beat_splay


def test_no_jitter_means_no_splay() -> None:
    assert first_beat_splay("inbox", None) == timedelta(0)
    assert first_beat_splay("inbox", timedelta(0)) == timedelta(0)


def test_the_offset_lies_within_the_jitter_and_is_the_same_every_time() -> None:
    jitter = timedelta(minutes=10)
    offsets = [first_beat_splay(f"job-{i:04d}", jitter) for i in range(1000)]
    assert all(timedelta(0) <= o < jitter for o in offsets)
    assert offsets == [first_beat_splay(f"job-{i:04d}", jitter) for i in range(1000)]
    assert all(o % timedelta(milliseconds=1) == timedelta(0) for o in offsets)
    assert len(set(offsets)) > 990  # distinct names, distinct offsets (almost all)


def test_a_fleet_of_a_thousand_jobs_is_spread_evenly() -> None:
    jitter = timedelta(seconds=1000)
    buckets = Counter(
        first_beat_splay(f"job-{i:04d}", jitter) // timedelta(seconds=100) for i in range(1000)
    )
    # ten buckets of about 100 each; the names are fixed, so this is not a random test
    assert sorted(buckets) == list(range(10))
    assert all(70 <= n <= 130 for n in buckets.values()), buckets


def test_the_offset_does_not_depend_on_the_interpreters_hash_seed() -> None:
    code = (
        "from datetime import timedelta; from jobs.splay import first_beat_splay; "
        "print(first_beat_splay('inbox', timedelta(hours=1)).total_seconds())"
    )
    seen = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for seed in ("1", "2")
    }
    assert seen == {str(first_beat_splay("inbox", timedelta(hours=1)).total_seconds())}
