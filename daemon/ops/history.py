"""Reading a conversation back: turns from the journal, healed, for people and scripts."""

from __future__ import annotations

from pathlib import Path

from daemon.config.model import Config
from daemon.errors import UnknownJobError
from daemon.events.heal import TOKEN_KEYS, ConversationView, ForkOrigin, TurnView, fold
from daemon.journal.keyring import Keyring
from daemon.journal.lock import daemon_running
from daemon.journal.logstore import conversation_names, journal_path
from daemon.journal.scan import read_events
from daemon.layout import Layout


def existing_journal(config: Config, name: str) -> Path:
    """The journal of conversation ``name``; ``UnknownJobError`` listing the known ones."""
    layout = Layout(config.daemon.state_dir, config.daemon.runtime_dir)
    path = journal_path(layout.conversations, name)
    if not path.exists():
        known = sorted(
            set(conversation_names(layout.conversations)) | {j.name for j in config.heartbeats}
        )
        raise UnknownJobError(name, known)
    return path


def load_conversation(config: Config, keyring: Keyring, name: str) -> ConversationView:
    """The conversation folded. While a daemon runs, an unfinished last turn is the one
    it is running (``running``); with none, it was cut off (``interrupted``)."""
    path = existing_journal(config, name)
    live = daemon_running(config.daemon.state_dir)
    events = read_events(path, name, keyring)
    return fold(events, open_turn_status="running" if live else "interrupted")


def load_history(config: Config, keyring: Keyring, name: str) -> list[TurnView]:
    return load_conversation(config, keyring, name).turns


def render_history(name: str, turns: list[TurnView], forked_from: ForkOrigin | None = None) -> str:
    """One block per turn; a run of beats skipped for the same reason is one line.

    A fork says where it came from first: its turns before the cut are the source's.
    """
    origin = ""
    if forked_from is not None:
        origin = (
            f" ({forked_from.describe()}; the turns up to it are in "
            f"`vigil history {forked_from.source}`)"
        )
    if not turns:
        return f"{name}: no turns yet{origin}\n"
    lines = [f"{name}: {len(turns)} turns{origin}"]
    i = 0
    while i < len(turns):
        t = turns[i]
        run = 1
        while (
            t.status == "skipped"
            and i + run < len(turns)
            and turns[i + run].status == "skipped"
            and turns[i + run].reason == t.reason
            and t.missed is None
            and turns[i + run].missed is None
        ):
            run += 1
        if run > 1:
            last = turns[i + run - 1]
            lines.append(
                f"#{t.turn}-#{last.turn} skipped x{run}  {t.started_at} .. {last.started_at}"
                f"  ({t.reason}{': ' + last.detail if last.detail else ''})"
            )
            i += run
            continue
        lines.extend(_turn_lines(t))
        i += 1
    return "\n".join(lines) + "\n"


def _turn_lines(t: TurnView) -> list[str]:
    head = f"#{t.turn} {t.status}"
    if t.started_at:
        head += f"  {t.started_at}"
    if t.reason:
        head += f"  ({t.reason}{': ' + t.detail if t.detail else ''})"
    lines = [head]
    if t.prompt:
        lines.append(f"  > {_one_line(t.prompt)}")
    if t.reply:
        lines.append(f"  < {_one_line(t.reply)}")
    for c in t.compactions:
        kept = f", {c.preserved} messages kept verbatim" if c.preserved else ""
        lines.append(
            f"  compacted {tokens_short(c.pre_tokens)} → {tokens_short(c.post_tokens)} tokens "
            f"({c.trigger}{kept}): the model sees a summary of the turns before"
        )
    if t.tokens or t.context_tokens is not None:
        lines.append(f"  tokens: {_tokens_line(t)}")
    for d in t.deliveries:
        tries = f", {d.attempts} attempts" if d.attempts > 1 else ""
        why = f": {_one_line(d.error, 120)}" if d.error and d.status != "done" else ""
        lines.append(f"  -> {d.sink} {d.status}{tries}{why}")
    return lines


def tokens_short(n: int | None) -> str:
    """182000 as ``182k``, 9400 as ``9.4k``, 1250000 as ``1.25M``; None as ``?``."""
    if n is None:
        return "?"
    if n >= 1_000_000:
        return f"{n / 1_000_000:.3g}M"
    if n >= 1000:
        return f"{n / 1000:.3g}k"
    return str(n)


def _tokens_line(t: TurnView) -> str:
    tokens = t.tokens or {}
    parts = [f"{name} {tokens_short(tokens[name])}" for _, name in TOKEN_KEYS if name in tokens]
    if t.context_tokens is not None:
        parts.append(f"context after {tokens_short(t.context_tokens)}")
    return ", ".join(parts)


def _one_line(text: str, limit: int = 200) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
