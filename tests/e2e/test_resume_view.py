"""A resume loads the resume view, not the whole history (issue 14), and the model
cannot tell: after each phase of beats, a resume from the view and a resume from the
whole transcript send the model the same first request (messages, system, tools).

The daemon runs a job with a small ``context_limit`` and a per-beat budget, so every
beat is a fresh CLI resumed from the daemon's store (which loads the view) and the
conversation compacts every few beats: the transcript the probes read was written by
CLIs that were themselves resumed from views, across several compactions, two daemon
runs (four with ``--long``) and dozens of resumes.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

import pytest

from daemon.agent.sdk import AgentSession
from daemon.agent.store import JournalSessionStore
from daemon.ports.agent import AgentSpec, ConnectPlan
from daemon.testing.harness import Site
from tests.e2e.recording import RecordingModel, long_site, recording_model, run_beats, write_config

__all__ = ["long_site", "recording_model"]  # fixtures, imported to be found by pytest

pytestmark = pytest.mark.e2e

TEMP = re.compile(r"claude-resume-[A-Za-z0-9_]+")


def probe(
    model: RecordingModel, site: Site, transcripts: Path, session_id: str, *, view: bool
) -> tuple[dict[str, Any], JournalSessionStore]:
    """Resume ``session_id`` from a copy of the store in a fresh CLI config directory
    (so the store is all the CLI has) and send one prompt; the first request it sent."""
    root = site.root / f"probe-{uuid.uuid4().hex[:8]}"
    copy = root / "transcripts"
    shutil.copytree(transcripts, copy)
    env = {"ANTHROPIC_BASE_URL": model.url, "ANTHROPIC_API_KEY": "probe-key"}
    env |= {"CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "CLAUDE_CODE_MAX_RETRIES": "1"}
    for name in ("CLAUDE_CONFIG_DIR", "HOME"):
        env[name] = str(root / name.lower())
        Path(env[name]).mkdir(parents=True)
    store = JournalSessionStore(copy, site.keyring, resume_view=view)
    agent = AgentSession(AgentSpec(cwd=site.root / "work", env=env), store)
    before = len(model.bodies)

    async def one_turn() -> None:
        await agent.connect(ConnectPlan(session_id, resume=True))
        await agent.run_turn("probe after resume", str(uuid.uuid4()), 10_000, lambda _e: None)
        await agent.disconnect()

    asyncio.run(one_turn())
    return model.bodies[before], store


def normal(value: Any) -> Any:
    return json.loads(TEMP.sub("claude-resume-X", json.dumps(value)))


@pytest.mark.timeout(600)
def test_a_resume_from_the_view_sends_the_model_what_a_full_load_sends(
    long_site: Site, recording_model: RecordingModel, long_run: bool
) -> None:
    site, name = long_site, "long"
    write_config(
        site,
        name,
        "tick [usage:5000]",
        extra="context_limit = 30000\nmax_budget_usd = 1000.0",  # a fresh CLI every beat
    )
    transcripts = site.state_dir / "transcripts"
    compactions = 0
    phases = 4 if long_run else 2
    for phase in range(phases):
        daemon = site.start()
        run_beats(site, daemon, name, 13, first=phase == 0)
        assert daemon.terminate() == 0
        events = site.frames(name).values()
        resumes = sum(1 for e in events if e.get("mode") == "resume")
        now = sum(1 for e in events if e["type"] == "compacted")
        assert now - compactions >= 2 and resumes >= 12 * (phase + 1)
        compactions = now
        assert list(transcripts.glob("*.view"))  # the daemon's resumes read the view

        session = site.view(name).session_id
        assert session is not None
        full, whole = probe(recording_model, site, transcripts, session, view=False)
        got, viewed = probe(recording_model, site, transcripts, session, view=True)
        assert viewed.loads["whole"] == 0 and whole.loads == {"whole": 1}
        assert normal(got["messages"]) == normal(full["messages"])
        assert (got["system"], got["tools"]) == (full["system"], full["tools"])
        assert "dev-model summary of" in json.dumps(got["messages"][0])

    assert [t["status"] for t in site.history(name)] == ["completed"] * 13 * phases
