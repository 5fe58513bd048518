"""Connect-with-resume to first delta, against a fresh connect to first delta.

Real SDK + bundled CLI + the loopback model in this process, with vigil's encrypted
``JournalSessionStore``. One conversation grows to 10, 100 and 1,000 turns; at each
size we time (median of ``--repeat``): a fresh session's connect + first streamed
delta, and a resume of the long session (store load, materialize, CLI start, first
delta). Prints the ratios.

    .venv/bin/python bench/resume.py [--sizes 10,100,1000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from daemon.agent.sdk import AgentSession
from daemon.agent.store import JournalSessionStore
from daemon.events import Event, event_type
from daemon.journal.file import FsyncPolicy
from daemon.journal.keyring import Keyring
from daemon.layout import Layout
from daemon.ports.agent import AgentSpec, ConnectPlan
from daemon.testing.devmodel import DevModelServer


class FirstDelta:
    def __init__(self) -> None:
        self.at: float | None = None

    def __call__(self, event: Event) -> None:
        if self.at is None and event_type(event) == "delta":
            self.at = time.perf_counter()


async def timed_turn(agent: AgentSession, plan: ConnectPlan, prompt: str) -> float:
    """Seconds from connect() to the first journaled delta of one turn."""
    first = FirstDelta()
    t0 = time.perf_counter()
    await agent.connect(plan)
    await agent.run_turn(prompt, str(uuid.uuid4()), 1, first)
    await agent.disconnect()
    assert first.at is not None
    return first.at - t0


async def grow(agent: AgentSession, turns: int) -> None:
    for _ in range(turns):
        await agent.run_turn("Next beat.", str(uuid.uuid4()), 1, lambda _e: None)


async def run(sizes: list[int], repeat: int) -> None:
    root = Path(tempfile.mkdtemp(prefix="vigil-resume-"))
    layout = Layout(root / "state", root / "run")
    layout.create()
    layout.adopt_tmpdir()
    (root / "agents").mkdir()
    store = JournalSessionStore(layout.transcripts, Keyring.generate(), fsync=FsyncPolicy.TURN)
    async with DevModelServer(port=0) as model:
        environ = dict(os.environ, ANTHROPIC_BASE_URL=model.base_url, ANTHROPIC_API_KEY="sk-b")
        spec = AgentSpec(cwd=root / "agents", env=layout.cli_env(environ, max_retries=1))
        long_id = str(uuid.uuid4())
        grower = AgentSession(spec, store)
        await grower.connect(ConnectPlan(long_id, resume=False))
        done = 0
        print(f"{'turns':>6} {'fresh s':>8} {'resume s':>9} {'resume/fresh':>13}")
        for size in sizes:
            t0 = time.perf_counter()
            await grow(grower, size - done)
            done = size
            grow_s = time.perf_counter() - t0
            await grower.disconnect()
            fresh, resumed = [], []
            for _ in range(repeat):
                probe = AgentSession(spec, store)
                fresh.append(
                    await timed_turn(probe, ConnectPlan(str(uuid.uuid4()), resume=False), "Hi.")
                )
                resumed.append(await timed_turn(probe, ConnectPlan(long_id, resume=True), "Hi."))
                done += 1  # each resume adds one turn to the long conversation
            f, r = statistics.median(fresh), statistics.median(resumed)
            print(f"{size:6d} {f:8.3f} {r:9.3f} {r / f:12.2f}x   (grew in {grow_s:.0f}s)")
            await grower.connect(ConnectPlan(long_id, resume=True))
        await grower.disconnect()


def main() -> None:
    parser = argparse.ArgumentParser(description="resume vs fresh connect, to first delta")
    parser.add_argument("--sizes", default="10,100,1000")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(run([int(s) for s in args.sizes.split(",")], args.repeat))


if __name__ == "__main__":
    main()
