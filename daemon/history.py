"""Reading a conversation back: turns from the journal, healed, for people and scripts."""

from __future__ import annotations

from daemon.config import Config, UnknownJobError
from daemon.conversation import conversation_names, journal_path
from daemon.heal import TurnView, fold
from daemon.journal import read_events
from daemon.keyring import Keyring
from daemon.layout import Layout


def load_history(config: Config, keyring: Keyring, name: str) -> list[TurnView]:
    layout = Layout(config.daemon.state_dir, config.daemon.runtime_dir)
    path = journal_path(layout.conversations, name)
    if not path.exists():
        known = sorted(
            set(conversation_names(layout.conversations)) | {j.name for j in config.heartbeats}
        )
        raise UnknownJobError(name, known)
    return fold(read_events(path, name, keyring)).turns


def render_history(name: str, turns: list[TurnView]) -> str:
    if not turns:
        return f"{name}: no turns yet\n"
    lines = [f"{name}: {len(turns)} turns"]
    for t in turns:
        head = f"#{t.turn} {t.status}"
        if t.started_at:
            head += f"  {t.started_at}"
        if t.reason:
            head += f"  ({t.reason}{': ' + t.detail if t.detail else ''})"
        lines.append(head)
        if t.prompt:
            lines.append(f"  > {_one_line(t.prompt)}")
        if t.reply:
            lines.append(f"  < {_one_line(t.reply)}")
    return "\n".join(lines) + "\n"


def _one_line(text: str, limit: int = 200) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
