"""Metrics fed from journal events: counts, cost steps, lag; the documented names exist."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

from prometheus_client import generate_latest

from daemon import events
from daemon.runtime.context import Runtime
from daemon.runtime.metrics import Metrics

DOCS = Path(__file__).parent.parent / "docs"


def runtime() -> Runtime:
    pool = SimpleNamespace(live=1, max_live=8, busy=0, max_turns=4, evictions=0)
    rt = SimpleNamespace(
        pool=pool,
        health=SimpleNamespace(degraded=None),
        draining=False,
        waiting={},
        jobs={},
        clock=SimpleNamespace(now=lambda: datetime(2025, 3, 1, tzinfo=UTC)),
        schedule=SimpleNamespace(next_due=lambda name: None),
        live_jobs=list,
        log=SimpleNamespace(warning=lambda *a, **k: None),
    )
    return cast(Runtime, rt)


def samples(metrics: Metrics) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in generate_latest(metrics.registry).decode().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def result(turn: int, total: float, session: str = "s1") -> dict[str, Any]:
    usage = {"input_tokens": 100, "output_tokens": 7, "cache_read_input_tokens": 50}
    return events.result(
        turn,
        session_id=session,
        is_error=False,
        subtype="success",
        text="ok",
        session_cost_usd=total,
        usage=usage,
        duration_ms=10,
        num_turns=1,
        at="2025-03-01T00:00:03.000Z",
    )


def test_counts_cost_steps_lag_and_duration_come_from_the_events() -> None:
    metrics = Metrics(runtime())
    feed = [
        events.session_bound("s1", "/w", mode="new"),
        events.turn_started(
            1,
            "p",
            job="j",
            trigger="schedule",
            due_at="2025-03-01T00:00:00.000Z",
            at="2025-03-01T00:00:01.000Z",
        ),
        events.delta(1, "a", at="2025-03-01T00:00:02.500Z"),
        events.delta(1, "b", at="2025-03-01T00:00:02.900Z"),
        result(1, 0.5),
        events.turn_completed(1, at="2025-03-01T00:00:04.000Z"),
        events.beat_skipped(2, "paused"),
        events.turn_started(3, "p", job="j", trigger="manual"),
        result(3, 0.75),
        events.turn_failed(3, "model_error", "HTTP 500"),
        events.session_bound("s1", "/w", mode="resume"),  # a new CLI: the total restarts
        events.turn_started(4, "p", job="j", trigger="manual"),
        result(4, 0.25),
        events.compacted(
            4, trigger="auto", pre_tokens=120_000, post_tokens=9_000, preserved=3, boundary_uuid="b"
        ),
        events.turn_completed(4, quiet=True),
    ]
    for seq, event in enumerate(feed, start=1):
        metrics.feed("j", seq, event)
    got = samples(metrics)
    assert got['vigil_beats_total{heartbeat="j",outcome="completed"}'] == 1
    assert got['vigil_beats_total{heartbeat="j",outcome="quiet"}'] == 1
    assert got['vigil_beats_total{heartbeat="j",outcome="failed"}'] == 1
    assert got['vigil_beat_failures_total{heartbeat="j",reason="model_error"}'] == 1
    assert got['vigil_beats_skipped_total{heartbeat="j",reason="paused"}'] == 1
    assert got['vigil_cost_usd_total{heartbeat="j"}'] == 0.5 + 0.25 + 0.25
    assert got['vigil_tokens_total{heartbeat="j",type="output"}'] == 21
    assert got['vigil_context_tokens{heartbeat="j"}'] == 150
    assert got['vigil_compactions_total{heartbeat="j"}'] == 1
    assert got['vigil_schedule_lag_seconds_sum{heartbeat="j"}'] == 2.5  # due -> first delta
    assert got['vigil_schedule_lag_seconds_count{heartbeat="j"}'] == 1
    assert got['vigil_beat_duration_seconds_sum{heartbeat="j"}'] >= 3.0
    assert not any("s1" in key for key in got)  # never a session id


def test_a_bad_event_is_logged_not_raised() -> None:
    metrics = Metrics(runtime())
    metrics.feed("j", 1, {"type": "result", "usage": {"input_tokens": "many"}})
    metrics.feed("j", 2, {"type": "turn_completed", "at": "not a time"})


def test_every_metric_the_docs_use_exists() -> None:
    text = generate_latest(Metrics(runtime()).registry).decode()
    exposed = set(re.findall(r"^# HELP (vigil_[a-z_]+)", text, re.MULTILINE))
    assert len(exposed) >= 30
    dashboard = json.loads((DOCS / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    rules = (DOCS / "prometheus-alerts.yml").read_text()
    table = (DOCS / "metrics.md").read_text()
    used = set(re.findall(r"\bvigil_[a-z_]+", " ".join([*exprs, rules, table])))
    unknown = {
        name
        for name in used
        if name not in exposed and re.sub(r"_(bucket|sum|count)$", "", name) not in exposed
    }
    assert not unknown
