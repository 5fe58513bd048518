"""The operator's commands against a live daemon and a live journal.

``status`` and ``beat`` talk to the running daemon over its control socket;
``tail NAME [-f]`` reads the journal itself (like ``journalctl -f`` reads files), so it
works with or without a daemon and never sees a half-written record.
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
import time
from pathlib import Path
from typing import Any

from daemon.cli.args import job_name
from daemon.config.load import default_config_path, load_config
from daemon.config.model import Config
from daemon.errors import VigilError
from daemon.events import Event
from daemon.journal.framing import FrameError, decode_payload, open_line
from daemon.journal.keyring import Keyring, resolve_key_path
from daemon.journal.lock import LOCK_NAME
from daemon.journal.logstore import conversation_names
from daemon.journal.scan import scan
from daemon.layout import Layout
from daemon.ops.history import existing_journal, tokens_short
from daemon.runtime.control import SOCKET_NAME, DaemonNotRunning, call
from daemon.trust import own_file

COMMANDS = frozenset({"status", "beat", "tail"})
NOT_RUNNING = 9
BEAT_REFUSED = 10
FOLLOW_POLL_S = 0.2
CALL_TIMEOUT_S = 5.0
ROUTED_HELP = (
    "On a cluster node that does not own NAME, the request goes to the node that does, "
    "through PostgreSQL, and its answer comes back as if local; exit 10, naming the "
    "owner, when no node takes it within the lease plus a few seconds (it never runs then)."
)


class BeatRefused(VigilError):
    exit_code = BEAT_REFUSED

    def __init__(self, name: str, why: str) -> None:
        self.name = name
        self.why = why
        super().__init__(f"beat of {name!r} refused: {why}")


class NotRunning(VigilError):
    exit_code = NOT_RUNNING

    def __init__(self, socket_path: Path, why: str) -> None:
        self.socket_path = socket_path
        super().__init__(f"vigil is not running: no daemon answers on {socket_path} ({why})")


def add_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], config_help: str
) -> None:
    p = sub.add_parser(
        "status",
        help="the running daemon: jobs, next beat, last outcome, spend today, live clients",
        description="Asks the running daemon over its control socket (runtime_dir/control.sock, "
        f"owner-only). Without a daemon it says so, shows what the journals hold and exits "
        f"{NOT_RUNNING}.",
    )
    p.add_argument("--config", type=Path, default=None, help=config_help)
    p.add_argument("--json", action="store_true", help="JSON, for scripts")

    p = sub.add_parser(
        "beat",
        help="run a beat of a job now, through the running daemon",
        description="Refused (exit 10) while a turn of that conversation runs, or when the "
        "job's gate skips it (budget, empty prompt); exit 9 when no daemon runs. " + ROUTED_HELP,
    )
    p.add_argument("name", type=job_name, help="job (conversation) name")
    p.add_argument("--config", type=Path, default=None, help=config_help)
    p.add_argument("--json", action="store_true", help="JSON, for scripts")

    p = sub.add_parser(
        "tail",
        help="print a conversation's latest events; -f follows new ones as they are journaled",
        description="Reads the encrypted journal directly (read-only), so it works whether or "
        "not the daemon runs; it only ever shows complete, authenticated records.",
    )
    p.add_argument("name", type=job_name, help="job (conversation) name")
    p.add_argument("-n", "--lines", type=int, default=10, help="events to show first (10)")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new events")
    p.add_argument("--config", type=Path, default=None, help=config_help)
    p.add_argument("--json", action="store_true", help="one JSON object per event")


def handles(args: argparse.Namespace) -> bool:
    return args.command in COMMANDS


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config or default_config_path())
    layout = Layout(config.daemon.state_dir, config.daemon.runtime_dir)
    if args.command == "status":
        return cmd_status(config, layout, as_json=args.json)
    if args.command == "beat":
        return cmd_beat(layout, args.name, as_json=args.json, timeout=answer_within(config))
    keyring = Keyring.load(resolve_key_path(config.daemon.key_file))
    if config.cluster is not None:
        return cmd_cluster_tail(
            config, keyring, args.name, args.lines, follow=args.follow, as_json=args.json
        )
    return cmd_tail(config, keyring, args.name, args.lines, follow=args.follow, as_json=args.json)


def cmd_cluster_tail(
    config: Config, keyring: Keyring, name: str, lines: int, *, follow: bool, as_json: bool
) -> int:
    """``vigil tail`` on a cluster: the events from PostgreSQL, polled with ``-f``."""
    from daemon.ops.cluster import ClusterReader  # noqa: PLC0415  # imports psycopg

    def show(seq: int, event: Event) -> None:
        _print_event(seq, event, as_json=as_json)

    with ClusterReader(config, keyring) as reader:
        try:
            reader.tail(name, lines, show, follow=follow)
        except KeyboardInterrupt:
            return 0
    return 0


def _cluster_not_running(config: Config, reason: str, *, as_json: bool) -> int:
    """``vigil status`` without a local node: the database's view of the cluster."""
    from daemon.ops.cluster import ClusterReader, print_cluster_status  # noqa: PLC0415

    keyring = Keyring.load(resolve_key_path(config.daemon.key_file))
    try:
        with ClusterReader(config, keyring) as reader:
            cluster = reader.status()
    except VigilError as exc:
        cluster = {"database_error": str(exc)}
    if as_json:
        print(json.dumps({"running": False, "reason": reason, "cluster": cluster}))
    else:
        print(reason, file=sys.stderr)
        print_cluster_status(cluster, sys.stdout)
    return NOT_RUNNING


def answer_within(config: Config) -> float:
    """How long to wait for the daemon's answer to ``beat``, ``send``, ``pause`` or
    ``resume``: on a cluster the node may hand the request to the conversation's owner
    and wait for it (``ClusterConfig.route_answer_within``)."""
    if config.cluster is None:
        return CALL_TIMEOUT_S
    return CALL_TIMEOUT_S + config.cluster.route_answer_within.total_seconds()


def call_daemon(
    layout: Layout, request: dict[str, Any], timeout: float = CALL_TIMEOUT_S
) -> dict[str, Any]:
    path = layout.runtime_dir / SOCKET_NAME
    if os.path.lexists(path) and not own_file(path, stat.S_IFSOCK):
        raise NotRunning(
            path, "not a socket this user made (a symlink, or another owner); not used"
        )
    try:
        return call(path, request, timeout=timeout)
    except DaemonNotRunning as exc:
        raise NotRunning(path, str(exc).rsplit("(", 1)[-1].rstrip(")")) from None
    except PermissionError:
        raise NotRunning(path, "permission denied: run as the daemon's user") from None
    except (TimeoutError, OSError, ValueError, RecursionError) as exc:
        # A daemon that is stopped (SIGSTOP) or hung accepts the connection (the kernel
        # does) and never answers: one line, exit 9, never a traceback.
        holder = _lock_holder(layout)
        raise NotRunning(
            path,
            f"the daemon{(' (pid ' + holder + ')') if holder else ''} did not answer within "
            f"{timeout:g}s: stopped or hung? ({type(exc).__name__})",
        ) from None


def _lock_holder(layout: Layout) -> str:
    try:
        return (layout.state_dir / LOCK_NAME).read_text().strip()
    except OSError:
        return ""


def cmd_status(config: Config, layout: Layout, *, as_json: bool) -> int:
    try:
        answer = call_daemon(layout, {"op": "status"})
    except NotRunning as exc:
        journals = conversation_names(layout.conversations)
        if config.cluster is not None:  # a cluster: what the database says of it
            return _cluster_not_running(config, str(exc), as_json=as_json)
        if as_json:
            print(json.dumps({"running": False, "reason": str(exc), "conversations": journals}))
        else:
            print(str(exc), file=sys.stderr)
            print(f"journals in {layout.conversations}: {', '.join(journals) or 'none'}")
            print("`vigil sessions` shows what they hold.")
        return NOT_RUNNING
    status: dict[str, Any] = answer["status"]
    if as_json:
        print(json.dumps({"running": True, **status}, indent=2))
        return 0
    print(f"vigil running (pid {status['pid']}): {status['status']}")
    pool = status.get("pool") or {}
    print(
        f"clients: {status['live_clients']} live of {pool.get('max_live_clients', '?')}; "
        f"turns: {pool.get('turns_running', 0)} running of "
        f"{pool.get('max_concurrent_turns', '?')}, {pool.get('beats_waiting', 0)} waiting; "
        f"evictions: {pool.get('evictions', 0)}"
    )
    if "overload" in status:
        print(_load_line(status["overload"]))
    print(f"mirror: {status.get('mirror', '?')}")
    for job in status["jobs"]:
        print(_job_line(job))
        if job.get("context_tokens") is not None or job.get("compactions"):
            print(f"  {'':20} {_context_line(job)}")
    if status.get("cluster"):
        from daemon.ops.cluster import print_cluster_status  # noqa: PLC0415  # imports psycopg

        print_cluster_status(status["cluster"], sys.stdout)
    return 0


def _job_line(job: dict[str, Any]) -> str:
    """One job of ``status``: next beat, last outcome, spend today, pause, streak."""
    last = job["last_outcome"] or "-"
    if job["last_reason"]:
        last += f" ({job['last_reason']})"
    state = "running" if job["running"] else f"next {job['next_beat'] or '-'}"
    line = f"  {job['name']:20} {state:40} last: {last:28} today ${job['spend_today_usd']:.4f}"
    if job.get("paused"):
        until = job.get("paused_until")
        line += f"  paused ({job.get('paused_by')})" + (f" until {until}" if until else "")
    if job.get("failure_streak"):
        line += f"  {job['failure_streak']} failed in a row"
    if job.get("queued_messages"):
        line += f"  {job['queued_messages']} queued"
    return line


def _context_line(job: dict[str, Any]) -> str:
    """``context 62.8k of 100k tokens; 3 compactions`` for one job of ``status``."""
    context = job.get("context_tokens")
    line = f"context {tokens_short(context if isinstance(context, int) else None)}"
    limit = job.get("context_limit")
    if isinstance(limit, int):
        line += f" of {tokens_short(limit)}"
    return f"{line} tokens; {job.get('compactions') or 0} compactions"


def _load_line(overload: dict[str, Any]) -> str:
    """The turn-slot queue in one line: backlog, oldest waiting beat, offered vs served."""
    oldest = overload.get("oldest_waiting")
    waiting = f"{overload.get('backlog', 0)} beats waiting"
    if oldest:
        waiting += f", oldest {oldest['job']} for {oldest['waited_s']:.1f}s"
    rates = (
        f"offered {overload.get('offered_per_min', 0):.1f}/min, "
        f"served {overload.get('served_per_min', 0):.1f}/min "
        f"(last {overload.get('window_s', 0):.0f}s)"
    )
    verdict = "keeping up"
    if overload.get("over_capacity"):
        skips = overload.get("no_capacity_skips", 0)
        verdict = f"over capacity: {skips} beats skipped no_capacity"
    return f"load: {waiting}; {rates}; {verdict}"


def cmd_beat(layout: Layout, name: str, *, as_json: bool, timeout: float = CALL_TIMEOUT_S) -> int:
    answer = call_daemon(layout, {"op": "beat", "job": name}, timeout)
    if not answer.get("ok"):
        if as_json:
            print(json.dumps(answer))
            return BEAT_REFUSED
        raise BeatRefused(name, str(answer.get("error")))
    print(json.dumps(answer) if as_json else f"beat of {name!r} started")
    return 0


def cmd_tail(
    config: Config,
    keyring: Keyring,
    name: str,
    lines: int,
    *,
    follow: bool,
    as_json: bool,
) -> int:
    path = existing_journal(config, name)
    events: list[tuple[int, Event]] = []
    result = scan(
        path, name, keyring, lambda fr: events.append((fr.seq, decode_payload(fr.payload)))
    )
    for seq, event in events[-lines:] if lines > 0 else []:
        _print_event(seq, event, as_json=as_json)
    if not follow:
        return 0
    follower = _Follower(path, name, keyring, result.good_end, result.last_seq)
    try:
        while True:
            for seq, event in follower.poll():
                _print_event(seq, event, as_json=as_json)
            sys.stdout.flush()
            time.sleep(FOLLOW_POLL_S)
    except KeyboardInterrupt:
        return 0


class _Follower:
    """Reads complete lines appended after ``offset``; survives a torn tail being cut."""

    def __init__(self, path: Path, name: str, keyring: Keyring, offset: int, last_seq: int) -> None:
        self.path, self.name, self.keyring = path, name, keyring
        self.offset, self.last_seq = offset, last_seq

    def poll(self) -> list[tuple[int, Event]]:
        try:
            size = os.stat(self.path).st_size
        except FileNotFoundError:
            return []
        if size < self.offset:  # a restart cut a torn tail: resync on the good records
            self.offset = scan(self.path, self.name, self.keyring).good_end
        if size <= self.offset:
            return []
        with self.path.open("rb") as f:
            f.seek(self.offset)
            chunk = f.read(size - self.offset)
        out: list[tuple[int, Event]] = []
        for raw in chunk.splitlines(keepends=True):
            if not raw.endswith(b"\n"):
                break  # still being written (or torn): wait for the rest
            try:
                frame = open_line(self.keyring, self.name, raw[:-1])
            except FrameError:
                break  # a torn line the daemon will cut on its next start
            self.offset += len(raw)
            if frame.seq > self.last_seq:
                self.last_seq = frame.seq
                out.append((frame.seq, decode_payload(frame.payload)))
        return out


def _print_event(seq: int, event: Event, *, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"seq": seq, **event}, ensure_ascii=False))
        return
    kind = event.get("type", "?")
    turn = event.get("turn")
    head = f"{event.get('at', '')} #{seq}" + (f" turn {turn}" if turn is not None else "")
    detail = ""
    if kind in ("turn_started",):
        detail = _short(event.get("prompt"))
    elif kind in ("delta", "assistant"):
        detail = _short(event.get("text"))
    elif kind in ("turn_failed", "turn_interrupted", "beat_skipped"):
        detail = str(event.get("reason"))
    elif kind == "result":
        detail = f"cost so far ${event.get('session_cost_usd') or 0:.4f}"
        if isinstance(event.get("context_tokens"), int):
            detail += f", context {tokens_short(event['context_tokens'])} tokens"
    elif kind == "compacted":
        pre, post = event.get("pre_tokens"), event.get("post_tokens")
        detail = (
            f"{tokens_short(pre if isinstance(pre, int) else None)} → "
            f"{tokens_short(post if isinstance(post, int) else None)} tokens "
            f"({event.get('trigger')}, {event.get('preserved', 0)} messages kept verbatim)"
        )
    elif kind == "session_bound":
        detail = f"session {event.get('session_id')} ({event.get('mode')})"
    elif kind == "forked":
        detail = (
            f"from {event.get('source')} at turn {event.get('source_turn')} "
            f"(session {event.get('source_session_id')} -> {event.get('session_id')})"
        )
    print(f"{head} {kind} {detail}".rstrip())


def _short(value: object, limit: int = 120) -> str:
    text = " ".join(str(value or "").split())
    return json.dumps(text if len(text) <= limit else text[: limit - 1] + "…", ensure_ascii=False)
