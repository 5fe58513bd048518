"""The operator talks to a running agent: ``vigil send``, ``vigil pause``, ``vigil resume``.

Each goes over the daemon's control socket (exit 9 when no daemon runs; exit 10 when it
refuses). On a cluster the node may hand the request to the conversation's owner and
wait for its answer (:mod:`daemon.runtime.cluster.routing`), so the CLI waits that much
longer (:func:`daemon.cli.live.answer_within`). ``send`` then follows the journal
itself, the way ``vigil tail -f`` does: it prints the turn's reply as its deltas are
journaled (from PostgreSQL on a cluster, whichever node runs the turn), and ends with
the turn.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemon.cli.args import job_name
from daemon.cli.live import (
    BEAT_REFUSED,
    CALL_TIMEOUT_S,
    ROUTED_HELP,
    answer_within,
    call_daemon,
)
from daemon.config.load import default_config_path, load_config
from daemon.durations import parse_duration
from daemon.errors import VigilError
from daemon.events import TURN_END_TYPES, Event
from daemon.journal.framing import FrameError, decode_payload, open_line
from daemon.journal.keyring import Keyring, resolve_key_path
from daemon.journal.lock import daemon_running
from daemon.layout import Layout
from daemon.ops.history import existing_journal

if TYPE_CHECKING:
    from daemon.ops.cluster import ClusterReader

COMMANDS = frozenset({"send", "pause", "resume"})
TURN_FAILED = 12
POLL_S = 0.1
ALIVE_EVERY_S = 1.0


class Refused(VigilError):
    exit_code = BEAT_REFUSED

    def __init__(self, what: str, name: str, why: str) -> None:
        self.what = what
        self.name = name
        self.why = why
        super().__init__(f"{what} of {name!r} refused: {why}")


def add_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], config_help: str
) -> None:
    p = sub.add_parser(
        "send",
        help="talk to a job's agent now (a turn with TEXT as its prompt), or at its next beat",
        description="Runs a turn now in NAME's conversation with TEXT as its prompt (journaled "
        "first, trigger `send`) and prints the reply as it is journaled. One turn at a time: "
        "refused (exit 10) while a turn of NAME runs or a beat waits; exit 9 without a daemon; "
        f"exit {TURN_FAILED} when the turn fails or is interrupted. With --next-beat, TEXT is "
        "queued (journaled, so it survives a restart) and added to the prompt of NAME's next "
        "beat. Either way the conversation remembers it. " + ROUTED_HELP,
    )
    p.add_argument("name", type=job_name, help="job (conversation) name")
    p.add_argument("text", help="what to say; - reads it from stdin")
    p.add_argument(
        "--next-beat", action="store_true", help="add TEXT to the next beat's prompt instead"
    )
    p.add_argument("--config", type=Path, default=None, help=config_help)
    p.add_argument("--json", action="store_true", help="the outcome as one JSON object")

    p = sub.add_parser(
        "pause",
        help="pause a job: its due beats are skipped (reason paused) until resumed",
        description="Journaled, so the pause survives a restart. `vigil beat` and `vigil send` "
        "still run (an operator asked for them). Exit 9 without a daemon, 10 when refused. "
        + ROUTED_HELP,
    )
    p.add_argument("name", type=job_name, help="job (conversation) name")
    p.add_argument(
        "--for",
        dest="duration",
        default=None,
        metavar="DURATION",
        help='end the pause by itself after this long ("30m", "2h"); default: until resumed',
    )
    p.add_argument("--config", type=Path, default=None, help=config_help)
    p.add_argument("--json", action="store_true", help="the answer as JSON")

    p = sub.add_parser(
        "resume",
        help="end a job's pause (journaled)",
        description="Exit 9 without a daemon, 10 when refused. " + ROUTED_HELP,
    )
    p.add_argument("name", type=job_name, help="job (conversation) name")
    p.add_argument("--config", type=Path, default=None, help=config_help)
    p.add_argument("--json", action="store_true", help="the answer as JSON")


def handles(args: argparse.Namespace) -> bool:
    return args.command in COMMANDS


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config or default_config_path())
    layout = Layout(config.daemon.state_dir, config.daemon.runtime_dir)
    name: str = args.name
    within = answer_within(config)  # on a cluster, the owner may answer through PostgreSQL
    if args.command == "pause":
        return cmd_pause(layout, name, args.duration, as_json=args.json, timeout=within)
    if args.command == "resume":
        return cmd_resume(layout, name, as_json=args.json, timeout=within)
    text = sys.stdin.read() if args.text == "-" else args.text
    if not text.strip():
        raise Refused("send", name, "TEXT is empty")
    if args.next_beat:
        return cmd_queue(layout, name, text, as_json=args.json, timeout=within)
    ask(layout, {"op": "status"})  # no daemon: say so (exit 9) before anything else
    keyring = Keyring.load(resolve_key_path(config.daemon.key_file))
    if config.cluster is not None:  # the events live in PostgreSQL
        from daemon.ops.cluster import ClusterReader  # noqa: PLC0415  # imports psycopg

        with ClusterReader(config, keyring) as reader:
            reader.check_exists(name)
            follower = ClusterTurnFollower(reader, name)
            return cmd_send(layout, follower, name, text, as_json=args.json, timeout=within)
    path = existing_journal(config, name)
    return cmd_send(layout, TurnFollower(path, name, keyring), name, text, as_json=args.json)


def ask(layout: Layout, request: dict[str, Any], timeout: float = CALL_TIMEOUT_S) -> dict[str, Any]:
    """One request to the daemon (exit 9 when none answers within ``timeout``)."""
    return call_daemon(layout, request, timeout)


def _checked(what: str, name: str, answer: dict[str, Any]) -> dict[str, Any]:
    if not answer.get("ok"):
        raise Refused(what, name, str(answer.get("error")))
    return answer


def cmd_pause(
    layout: Layout,
    name: str,
    duration: str | None,
    *,
    as_json: bool,
    timeout: float = CALL_TIMEOUT_S,
) -> int:
    request: dict[str, Any] = {"op": "pause", "job": name}
    if duration is not None:
        try:
            seconds = parse_duration(duration).total_seconds()
        except ValueError as exc:
            raise Refused("pause", name, f"--for: {exc}") from None
        if seconds <= 0:
            raise Refused("pause", name, "--for must be longer than 0s")
        request["for_s"] = seconds
    answer = _checked("pause", name, ask(layout, request, timeout))
    if as_json:
        print(json.dumps(answer))
    elif answer.get("until"):
        print(f"paused {name!r} until {answer['until']}; due beats are skipped (reason paused)")
    else:
        print(f"paused {name!r} until `vigil resume {name}`; due beats are skipped (reason paused)")
    return 0


def cmd_resume(layout: Layout, name: str, *, as_json: bool, timeout: float = CALL_TIMEOUT_S) -> int:
    answer = _checked("resume", name, ask(layout, {"op": "resume", "job": name}, timeout))
    if as_json:
        print(json.dumps(answer))
    else:
        print(f"resumed {name!r}" if answer.get("was_paused") else f"{name!r} was not paused")
    return 0


def cmd_queue(
    layout: Layout, name: str, text: str, *, as_json: bool, timeout: float = CALL_TIMEOUT_S
) -> int:
    request = {"op": "queue", "job": name, "text": text}
    answer = _checked("send", name, ask(layout, request, timeout))
    if as_json:
        print(json.dumps(answer))
    else:
        waiting = answer.get("queued", 1)
        print(f"queued for the next beat of {name!r} ({waiting} waiting)")
    return 0


def cmd_send(
    layout: Layout,
    follower: TurnFollower,
    name: str,
    text: str,
    *,
    as_json: bool,
    timeout: float = CALL_TIMEOUT_S,
) -> int:
    """``follower`` reads from the journal's end, made before asking the daemon."""
    asked = {"op": "send", "job": name, "text": text}
    answer = _checked("send", name, ask(layout, asked, timeout))
    request = str(answer["request"])
    if isinstance(answer.get("epoch"), int):
        follower.epoch = answer["epoch"]
    out = sys.stdout

    def show(delta: str) -> None:
        if not as_json:
            out.write(delta)
            out.flush()

    turn = follower.follow(request, show, alive=lambda: daemon_running(layout.state_dir))
    if as_json:
        print(json.dumps({"job": name, "request": request, **turn.as_json()}))
    elif turn.reply:
        out.write("\n")
    if turn.status == "completed":
        return 0
    if not as_json:
        why = f" ({turn.reason}{': ' + turn.detail if turn.detail else ''})" if turn.reason else ""
        print(f"vigil: turn {turn.turn or '-'} of {name!r} {turn.status}{why}", file=sys.stderr)
    return BEAT_REFUSED if turn.status == "skipped" else TURN_FAILED


@dataclass
class SentTurn:
    turn: int | None = None
    status: str = "waiting"
    reason: str | None = None
    detail: str | None = None
    parts: list[str] = field(default_factory=list)

    @property
    def reply(self) -> str:
        return "".join(self.parts)

    def as_json(self) -> dict[str, Any]:
        return {
            "turn": self.turn,
            "status": self.status,
            "reason": self.reason,
            "detail": self.detail,
            "reply": self.reply,
        }


class TurnFollower:
    """Reads the records appended to a journal from now on, authenticated, in order."""

    epoch: int | None = None  # a cluster's: the lease epoch the send was accepted under

    def __init__(self, path: Path, name: str, keyring: Keyring) -> None:
        self.path, self.name, self.keyring = path, name, keyring
        self.offset = path.stat().st_size
        # Started in the middle of a record being written: it belongs to what came
        # before; skip to the next line.
        self.partial = self.offset > 0 and self._byte_before(self.offset) != b"\n"

    def _byte_before(self, offset: int) -> bytes:
        with self.path.open("rb") as f:
            f.seek(offset - 1)
            return f.read(1)

    def poll(self) -> list[Event]:
        size = os.stat(self.path).st_size
        if size <= self.offset:
            return []
        with self.path.open("rb") as f:
            f.seek(self.offset)
            chunk = f.read(size - self.offset)
        events: list[Event] = []
        for raw in chunk.splitlines(keepends=True):
            if not raw.endswith(b"\n"):
                break  # still being written
            self.offset += len(raw)
            if self.partial:
                self.partial = False
                continue
            try:
                frame = open_line(self.keyring, self.name, raw[:-1])
            except FrameError:
                break  # a torn line: the daemon cuts it at its next start
            events.append(decode_payload(frame.payload))
        return events

    def follow(
        self, request: str, on_delta: Any, *, alive: Any, poll_s: float = POLL_S
    ) -> SentTurn:
        """Until the turn started for ``request`` ends (or its beat was skipped, or the
        daemon stopped); ``on_delta`` gets each journaled delta's text."""
        turn = SentTurn()
        checked = time.monotonic()
        while True:
            for event in self.poll():
                if self._apply(turn, request, event, on_delta):
                    return turn
            if time.monotonic() - checked >= ALIVE_EVERY_S:
                checked = time.monotonic()
                why = "daemon_stopped" if not alive() else self.abandoned(turn)
                if why is not None:
                    for event in self.poll():
                        if self._apply(turn, request, event, on_delta):
                            return turn
                    if why == "daemon_stopped" or turn.turn is None:
                        turn.status, turn.reason = "interrupted", why
                        return turn
            time.sleep(poll_s)

    def abandoned(self, turn: SentTurn) -> str | None:
        """Why the turn will never come although the daemon runs (None: it may)."""
        return None

    @staticmethod
    def _apply(turn: SentTurn, request: str, event: Event, on_delta: Any) -> bool:
        kind = event.get("type")
        if turn.turn is None:
            if event.get("request") != request:
                return False
            if kind == "beat_skipped":
                turn.turn, turn.status = event.get("turn"), "skipped"
                turn.reason, turn.detail = event.get("reason"), event.get("detail")
                return True
            if kind == "turn_started":
                turn.turn, turn.status = event.get("turn"), "running"
            return False
        if event.get("turn") != turn.turn:
            return False
        if kind == "delta":
            text = str(event.get("text", ""))
            turn.parts.append(text)
            on_delta(text)
        elif kind == "result" and not turn.parts and isinstance(event.get("text"), str):
            turn.parts.append(event["text"])
            on_delta(event["text"])
        elif kind in TURN_END_TYPES:
            turn.status = {"turn_completed": "completed", "turn_failed": "failed"}.get(
                str(kind), "interrupted"
            )
            turn.reason, turn.detail = event.get("reason"), event.get("detail")
            return True
        return False


class ClusterTurnFollower(TurnFollower):
    """The records appended to a conversation in PostgreSQL from now on (a cluster)."""

    def __init__(self, reader: ClusterReader, name: str) -> None:  # the parent reads a file
        self.reader, self.name = reader, name
        self.last = reader.store.last_seq(name)

    def abandoned(self, turn: SentTurn) -> str | None:
        """The node that accepted the send lost the conversation before its turn began:
        the new owner never heard of it (``vigil history`` shows no such turn)."""
        if turn.turn is not None or self.epoch is None:
            return None
        try:
            lease = self.reader.store.leases.owner(self.name)
        except VigilError:  # the database is unreachable: cannot tell, keep following
            return None
        return "ownership_moved" if lease is None or lease.epoch != self.epoch else None

    def poll(self) -> list[Event]:
        events: list[Event] = []
        for seq, event in self.reader.events(self.name, self.last):
            self.last = seq
            events.append(event)
        return events
