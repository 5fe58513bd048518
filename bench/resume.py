"""Resume cost against history length: connect-with-resume to first delta, against a
fresh connect to first delta, at 100, 1,000 and 10,000 turns (issue 14).

Real SDK + bundled CLI + the loopback model in this process, with vigil's encrypted
``JournalSessionStore``. Each resume is a fresh CLI process resumed from the store (a
pool that churns: every beat reconnects), once with the resume view (the daemon's
store) and once loading every entry (the store before issue 14).

10,000 turns through the real CLI take hours, so the long transcripts are synthesized
from a real one: the bench first runs the real CLI for a few hundred beats on a live
client, with ``[usage:N]`` prompts and a context limit so that it compacts every
``--period`` turns or so (entries exactly as the CLI writes them: prompts, replies,
queue operations, attachments, prompt snapshots, compact boundaries with their summary
and preserved messages). Its last full compaction period (boundary to boundary) is then
repeated with fresh uuids, every reference remapped (``parentUuid``,
``logicalParentUuid``, the boundary's preserved messages and segment, ``messageId``,
``promptId``), until the transcript holds the wanted number of turns, cut at the start
of a beat. So the history has a compaction every ``--period`` turns, like a long-lived
conversation under ``context_limit``; what it lacks is the ~1 KB of metadata per beat a
churning pool adds (the real run keeps one client).

    .venv/bin/python bench/resume.py [--sizes 100,1000,10000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemon.agent.sdk import AgentSession, project_key
from daemon.agent.store import JournalSessionStore
from daemon.events import Event, event_type
from daemon.journal.file import FsyncPolicy
from daemon.journal.keyring import Keyring
from daemon.layout import Layout
from daemon.ports.agent import AgentSpec, ConnectPlan
from daemon.testing.devmodel import DevModelServer
from jobs.context import MIN_CONTEXT_LIMIT, compaction_env

if TYPE_CHECKING:
    from claude_agent_sdk.types import SessionKey

Entry = dict[str, Any]
REFERENCES = ("parentUuid", "logicalParentUuid", "messageId", "promptId", "leafUuid")


class FirstDelta:
    def __init__(self) -> None:
        self.at: float | None = None

    def __call__(self, event: Event) -> None:
        if self.at is None and event_type(event) == "delta":
            self.at = time.perf_counter()


async def timed_turn(agent: AgentSession, plan: ConnectPlan) -> float:
    """Seconds from connect() to the first journaled delta of one turn."""
    first = FirstDelta()
    t0 = time.perf_counter()
    await agent.connect(plan)
    await agent.run_turn("Next beat.", str(uuid.uuid4()), 1, first)
    await agent.disconnect()
    assert first.at is not None
    return first.at - t0


# ---------------------------------------------------------------- the real template


async def record_template(
    spec: AgentSpec, store: JournalSessionStore, beats: int, usage: int
) -> list[Entry]:
    """A real transcript: ``beats`` beats of one live client that compacts now and then."""
    session = str(uuid.uuid4())
    agent = AgentSession(spec, store)
    await agent.connect(ConnectPlan(session, resume=False))
    for i in range(beats):
        await agent.run_turn(f"beat {i} [usage:{usage}]", str(uuid.uuid4()), 1, lambda _e: None)
    await agent.disconnect()
    store.load_whole_next(session)
    entries = await store.load({"project_key": project_key(spec.cwd), "session_id": session})
    return list(entries or [])  # type: ignore[arg-type]  # opaque SDK entries


def is_boundary(e: Entry) -> bool:
    return e.get("type") == "system" and e.get("subtype") == "compact_boundary"


def is_prompt(e: Entry) -> bool:
    content = (e.get("message") or {}).get("content")
    plain = isinstance(content, str) or (
        isinstance(content, list) and all(b.get("type") == "text" for b in content)
    )
    return (
        e.get("type") == "user" and plain and not e.get("isCompactSummary") and not e.get("isMeta")
    )


def synthesize(real: list[Entry], turns: int) -> list[Entry]:
    """``real`` with its last full compaction period repeated (fresh uuids) until the
    transcript holds ``turns`` prompts; cut before the beat that would exceed it."""
    bounds = [i for i, e in enumerate(real) if is_boundary(e)]
    if len(bounds) < 3:
        raise SystemExit("the real run compacted fewer than 3 times: raise --template-beats")
    start, end = bounds[-3], bounds[-2]
    period = end - start
    template = real[start:end]
    defined = [e.get("uuid") for e in template]
    out = list(real[:start])
    previous: dict[str, str] = {}  # template uuid -> its uuid in the previous repetition
    for j in range(start - period, start):  # the real period before the template
        u, v = real[j + period].get("uuid"), real[j].get("uuid")
        if isinstance(u, str) and isinstance(v, str):
            previous[u] = v
    outside = {e.get("uuid"): i for i, e in enumerate(real) if isinstance(e.get("uuid"), str)}
    while sum(1 for e in out if is_prompt(e)) < turns:
        fresh = {u: str(uuid.uuid4()) for u in defined if isinstance(u, str)}

        def remap(
            u: object, fresh: dict[str, str] = fresh, previous: dict[str, str] = previous
        ) -> object:
            if not isinstance(u, str):
                return u
            if u in fresh:
                return fresh[u]
            j = outside.get(u)
            if j is not None and start - period <= j < start:
                twin = real[j + period].get("uuid")
                return previous.get(twin, u) if isinstance(twin, str) else u
            return u

        out.extend(_remapped(e, remap) for e in template)
        previous = fresh
    return _cut(out, turns)


def _remapped(e: Entry, remap: Callable[[object], object]) -> Entry:
    text = json.dumps(e)  # a deep copy
    copy: Entry = json.loads(text)
    for key in ("uuid", *REFERENCES):
        if key in copy:
            copy[key] = remap(copy[key])
    meta = copy.get("compactMetadata")
    if isinstance(meta, dict):
        kept = meta.get("preservedMessages") or {}
        for key in ("uuids", "allUuids"):
            if isinstance(kept.get(key), list):
                kept[key] = [remap(u) for u in kept[key]]
        if "anchorUuid" in kept:
            kept["anchorUuid"] = remap(kept["anchorUuid"])
        segment = meta.get("preservedSegment") or {}
        for key in ("headUuid", "anchorUuid", "tailUuid"):
            if key in segment:
                segment[key] = remap(segment[key])
    return copy


def _cut(entries: list[Entry], turns: int) -> list[Entry]:
    """Up to the start of the beat holding prompt number ``turns + 1``."""
    seen = 0
    for i, e in enumerate(entries):
        if is_prompt(e):
            seen += 1
            if seen > turns:
                begin = i
                while begin > 0 and entries[begin - 1].get("type") == "queue-operation":
                    begin -= 1
                return entries[:begin]
    return entries


def batches(entries: list[Entry]) -> list[list[Entry]]:
    """One append per beat (the SDK flushes once a turn)."""
    out: list[list[Entry]] = [[]]
    for e in entries:
        if e.get("type") == "queue-operation" and e.get("operation") == "enqueue" and out[-1]:
            out.append([])
        out[-1].append(e)
    return out


# ---------------------------------------------------------------- the measurement


async def run(args: argparse.Namespace) -> None:
    root = Path(tempfile.mkdtemp(prefix="vigil-resume-"))
    layout = Layout(root / "state", root / "run")
    layout.create()
    layout.adopt_tmpdir()
    (root / "agents").mkdir()
    keyring = Keyring.generate()
    async with DevModelServer(port=0) as model:
        environ = dict(os.environ, ANTHROPIC_BASE_URL=model.base_url, ANTHROPIC_API_KEY="sk-b")
        env = layout.cli_env(environ, max_retries=1)
        spec = AgentSpec(cwd=root / "agents", env=env)
        t0 = time.perf_counter()
        recorder = JournalSessionStore(root / "template", keyring, fsync=FsyncPolicy.NEVER)
        real = await record_template(
            AgentSpec(cwd=spec.cwd, env=env | compaction_env(MIN_CONTEXT_LIMIT)),
            recorder,
            args.template_beats,
            args.usage,
        )
        bounds = [i for i, e in enumerate(real) if is_boundary(e)]
        prompts = [i for i, e in enumerate(real) if is_prompt(e)]
        period = sum(1 for i in prompts if bounds[-3] <= i < bounds[-2])
        print(
            f"real template: {args.template_beats} beats, {len(real)} entries, "
            f"{len(bounds)} compactions, one every {period} turns "
            f"({time.perf_counter() - t0:.0f} s)"
        )
        header = f"{'turns':>6} {'entries':>8} {'MB':>6} {'fresh s':>8}"
        header += f" {'view s':>7} {'view/fresh':>10} {'whole s':>8} {'whole/fresh':>11}"
        print(header)
        for size in args.sizes:
            await measure(args, synthesize(real, size), spec, root / f"t{size}", keyring)


async def measure(
    args: argparse.Namespace, entries: list[Entry], spec: AgentSpec, path: Path, keyring: Keyring
) -> None:
    size = sum(1 for e in entries if is_prompt(e))
    session = entries[0].get("sessionId")
    assert isinstance(session, str)
    fast = JournalSessionStore(path, keyring, fsync=FsyncPolicy.NEVER)
    key: SessionKey = {"project_key": project_key(spec.cwd), "session_id": session}
    for batch in batches([e for e in entries if e.get("sessionId", session) == session]):
        await fast.append(key, batch)  # type: ignore[arg-type]  # opaque SDK entries
    files = await asyncio.to_thread(lambda: list(path.iterdir()))
    mb = sum(p.stat().st_size for p in files) / 1e6
    view = JournalSessionStore(path, keyring, fsync=FsyncPolicy.TURN, resume_view=True)
    whole = JournalSessionStore(path, keyring, fsync=FsyncPolicy.TURN)
    t0 = time.perf_counter()
    await view.load(key)  # the first view load builds the index (a full read), once
    index_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    await view.load(key)
    view_load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    await whole.load(key)
    whole_load_s = time.perf_counter() - t0
    fresh_s, view_s, whole_s = [], [], []
    for _ in range(args.repeat):
        probe = AgentSession(spec, view)
        fresh_s.append(await timed_turn(probe, ConnectPlan(str(uuid.uuid4()), resume=False)))
        view_s.append(await timed_turn(AgentSession(spec, view), ConnectPlan(session, resume=True)))
        whole_s.append(
            await timed_turn(AgentSession(spec, whole), ConnectPlan(session, resume=True))
        )
    f, v, w = (statistics.median(x) for x in (fresh_s, view_s, whole_s))
    print(
        f"{size:6d} {len(entries):8d} {mb:6.1f} {f:8.3f} {v:7.3f} {v / f:9.2f}x "
        f"{w:8.3f} {w / f:10.2f}x   load(): view {view_load_s * 1000:.0f} ms, "
        f"whole {whole_load_s * 1000:.0f} ms, index build {index_s * 1000:.0f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description="resume vs fresh connect, to first delta")
    parser.add_argument("--sizes", default="100,1000,10000")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--template-beats",
        type=int,
        default=600,
        help="real beats recorded first (at least three compactions; one every ~170 turns)",
    )
    parser.add_argument(
        "--usage", type=int, default=60, help="tokens each real beat adds ([usage:N])"
    )
    args = parser.parse_args()
    args.sizes = [int(s) for s in args.sizes.split(",")]
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
