"""A conversation's state, folded from its journal: what the next start must do."""

from __future__ import annotations

from pathlib import Path

from daemon import events
from daemon.journal.conversation import Conversation
from daemon.journal.file import FsyncPolicy
from daemon.journal.keyring import Keyring, generate_key_file
from daemon.journal.logstore import FileEventLogStore


def open_conv(tmp_path: Path) -> Conversation:
    key = tmp_path / "vigil.key"
    if not key.exists():
        generate_key_file(key)
    return Conversation.open(
        FileEventLogStore(tmp_path, Keyring.load(key), fsync=FsyncPolicy.NEVER), "inbox"
    )


def start_turn(conv: Conversation, turn: int, prompt: str) -> None:
    conv.record(
        {
            **events.turn_started(turn, prompt, job="inbox", trigger="schedule"),
            "prompt_uuid": f"uuid-{turn}",
        }
    )


def test_a_turn_healed_by_a_start_that_then_died_still_awaits_its_replay(tmp_path: Path) -> None:
    conv = open_conv(tmp_path)
    start_turn(conv, 1, "first beat")
    conv.record(events.delta(1, "half a re"))
    conv.close()  # SIGKILL mid-stream

    healing = open_conv(tmp_path)
    healed = healing.heal()
    assert healed is not None and (healed.turn, healed.prompt_uuid) == (1, "uuid-1")
    assert healing.state.interrupted == healed
    healing.close()  # SIGKILL after healing, before the replay started

    again = open_conv(tmp_path)
    assert again.heal() is None  # healed once, never twice
    waiting = again.state.interrupted
    assert waiting is not None
    assert (waiting.turn, waiting.prompt, waiting.prompt_uuid) == (1, "first beat", "uuid-1")

    start_turn(again, 2, "first beat")  # the replay starts: nothing awaits any more
    assert again.state.interrupted is None
    again.close()
    assert open_conv(tmp_path).state.interrupted is None


def test_a_drained_turn_awaits_its_replay_until_the_next_turn_and_failures_never(
    tmp_path: Path,
) -> None:
    conv = open_conv(tmp_path)
    start_turn(conv, 1, "beat")
    conv.record(events.turn_interrupted(1, "shutdown"))  # drain_grace ran out at SIGTERM
    drained = conv.state.interrupted
    assert drained is not None and drained.prompt_uuid == "uuid-1"
    start_turn(conv, 2, "beat")
    conv.record(events.turn_failed(2, "model_error", "HTTP 529"))
    conv.close()
    assert open_conv(tmp_path).state.interrupted is None
