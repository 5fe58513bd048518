"""Conversations that live for months (issue 14), end to end: a context budget per job
keeps every beat's request under it through the CLI's own compaction, each compaction
is on the record, and the model keeps its memory (compressed) across them.

The model is the loopback model in this process (``recording.py``), so the test reads
every request it was really sent; ``[usage:N]`` in the prompt makes each beat add N
input tokens to the conversation, as a long real conversation would.
"""

from __future__ import annotations

import itertools
import json
import re
from typing import Any

import pytest

from daemon.testing.harness import Site
from tests.e2e.recording import (
    RecordingModel,
    input_tokens,
    is_summary,
    long_site,
    recording_model,
    run_beats,
    write_config,
)

__all__ = ["long_site", "recording_model"]  # fixtures, imported to be found by pytest

pytestmark = pytest.mark.e2e

LIMIT = 100_000
GROWTH = 20_000  # tokens each beat adds (its [usage:N])
PROMPT = f"heartbeat [usage:{GROWTH}]"
SUMMARY = re.compile(r'dev-model summary of (\d+) user turns; first: "([^"]*)"')


def first_user_text(body: dict[str, Any]) -> str:
    for message in body["messages"]:
        if message.get("role") != "user":
            continue
        content = message["content"]
        if isinstance(content, str):
            return content
        texts = [b.get("text", "") for b in content if b.get("type") == "text"]
        if texts:
            return " ".join(texts)
    return ""


@pytest.mark.timeout(600)
def test_a_context_limit_keeps_each_beat_under_it_and_memory_survives_compactions(
    long_site: Site, recording_model: RecordingModel, long_run: bool
) -> None:
    site, name = long_site, "keeper"
    beats = 300 if long_run else 100
    write_config(site, name, PROMPT, extra=f"context_limit = {LIMIT}")
    daemon = site.start()
    run_beats(site, daemon, name, beats)
    status = json.loads(site.vigil("status", "--config", str(site.config_path), "--json").stdout)
    assert daemon.terminate() == 0

    turns = site.history(name, cli=True)
    assert [t["status"] for t in turns] == ["completed"] * beats
    requests = [b for b in recording_model.bodies if not is_summary(b)]
    assert len(requests) == beats
    sizes = [input_tokens(b) for b in requests]
    growth = max(b - a for a, b in itertools.pairwise(sizes))
    assert GROWTH <= growth < GROWTH + 1_000  # one beat's growth, measured
    assert max(sizes) <= LIMIT + growth  # never more than the limit plus one beat

    compactions = [e for e in site.frames(name).values() if e["type"] == "compacted"]
    assert len(compactions) >= beats // 6
    for event in compactions:  # compacted at the limit: not before, not much after
        assert event["trigger"] == "auto"
        assert LIMIT <= event["pre_tokens"] <= LIMIT + growth
        assert event["preserved"] >= 1 and event["boundary_uuid"]

    # Memory kept, compressed: the last beat's request opens with the summary, which
    # counts every beat before the last compaction, through all the earlier summaries.
    summary = SUMMARY.search(first_user_text(requests[-1]))
    assert summary is not None, first_user_text(requests[-1])[:300]
    assert (int(summary.group(1)), summary.group(2)) == (compactions[-1]["turn"] - 1, PROMPT[:9])

    # On the record: history marks the turns, status and sessions count them, tail says it.
    marked = [t["turn"] for t in turns if t["compactions"]]
    assert marked == [e["turn"] for e in compactions]
    assert all(t["context_tokens"] and t["context_tokens"] <= LIMIT + growth for t in turns)
    (job,) = status["jobs"]
    assert (job["context_limit"], job["compactions"]) == (LIMIT, len(compactions))
    assert job["context_tokens"] == turns[-1]["context_tokens"]
    sessions = json.loads(
        site.vigil("sessions", "--config", str(site.config_path), "--json").stdout
    )
    assert sessions[0]["compactions"] == len(compactions)
    text = site.vigil("history", name, "--config", str(site.config_path)).stdout
    assert text.count("  compacted ") == len(compactions)
    tail = site.vigil("tail", name, "-n", "100000", "--config", str(site.config_path)).stdout
    assert len(re.findall(r" compacted \d", tail)) == len(compactions)
