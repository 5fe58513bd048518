"""``vigil``: the command line. The one place that maps errors to exit codes."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from daemon.cli import cluster as cli_cluster
from daemon.cli import live as cli_live
from daemon.cli import mirror as cli_mirror
from daemon.cli import operate as cli_operate
from daemon.cli.args import job_name
from daemon.cli.site import check_owner
from daemon.config.load import default_config_path, load_config
from daemon.config.model import Config
from daemon.errors import VigilError
from daemon.journal.file import FsyncPolicy
from daemon.journal.keyring import Keyring, generate_key_file, resolve_key_path, rotate_key_file
from daemon.layout import Layout
from daemon.logs import configure_logging
from daemon.ops.history import existing_journal, load_conversation, render_history
from daemon.trust import check_config_dir, secrets_exposed

EXIT_CODES = """\
exit codes:
  0  success
  1  unexpected error
  2  bad command line or configuration
  3  key file missing, malformed, too open, or the wrong key
  4  journal corrupt or from a newer vigil
  5  journal write failed (disk full?)
  6  fsync failed: exited without acknowledging the record
  7  another vigil already runs on this state directory (or this runtime directory)
  8  verify found a damaged journal record or a mirror that differs from the journals
  9  no daemon is running, or it did not answer in time (status, beat, send, pause, resume)
 10  the daemon refused the request (beat, send, pause, resume): a turn of that
     conversation is running, the beat was skipped, or the job is unknown
 11  fork refused: NEW_NAME already has a journal (or events, or a live node's lease, in a
     cluster; or is a job with another cwd), TURN is not a completed turn of NAME, or NAME
     has no completed turn
 12  the turn `vigil send` started failed or was interrupted (the reason is on stderr)
 13  migrate refused a conversation or transcript: the database holds other records
"""


def build_parser() -> argparse.ArgumentParser:

    parser = argparse.ArgumentParser(
        prog="vigil",
        description="Keep Claude agents alive on a heartbeat; journal every event encrypted; "
        "resume every conversation after a crash.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    config_help = f"configuration file (default: $VIGIL_CONFIG or {default_config_path()})"

    run = sub.add_parser(
        "run",
        help="run the daemon in the foreground until SIGTERM/SIGINT",
        description="Recover every conversation, signal READY to systemd, run heartbeats. "
        "SIGHUP reloads the config file (a bad one is refused and logged; the running one "
        "stays). SIGTERM drains (running turns get drain_grace); a second signal exits at once.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("--config", type=Path, default=None, help=config_help)

    demo = sub.add_parser(
        "demo",
        help="a half-minute demo with a loopback model: beats, a SIGKILL, recovery, send, pause",
        description="Starts the loopback model and a daemon with two heartbeat jobs in a "
        "temporary directory, kills the daemon with SIGKILL mid-reply, starts it again and "
        "shows both conversations continuing with their memory; then pauses one job, talks "
        "to it with `vigil send`, queues a note for the other's next beat and resumes. Needs "
        "no API key.",
    )
    demo.add_argument("--keep", action="store_true", help="keep the temporary directory")

    history = sub.add_parser(
        "history",
        help="print a conversation's turns from the journal",
        description="Reads the encrypted journal (read-only; works while the daemon runs) and "
        "prints each turn: interrupted turns are shown healed, with the text that was streamed.",
    )
    history.add_argument("name", type=job_name, help="job (conversation) name")
    history.add_argument("--config", type=Path, default=None, help=config_help)
    history.add_argument("--json", action="store_true", help="a JSON array, for scripts")

    fork = sub.add_parser(
        "fork",
        help="branch a new conversation off an existing one, at a completed turn",
        description="Copies NAME's history up to the end of TURN (default: its last completed\n"
        "turn) into a new conversation NEW_NAME with its own session, offline: no model call,\n"
        "safe while the daemon runs; NAME's journal and transcript are only read. NEW_NAME's\n"
        "journal starts with a `forked` record. Add a [[heartbeat]] named NEW_NAME with NAME's\n"
        "cwd and reload: its next beat continues the fork, as turn TURN + 1.\n"
        "With [cluster] the same happens in PostgreSQL (from any machine with the config, the\n"
        "key and the database), under NEW_NAME's lease as node vigil-fork, released at once.\n"
        "Exit 2 for an unknown NAME, 11 when the fork is refused (nothing is written).",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fork.add_argument(
        "name", metavar="NAME", type=job_name, help="the conversation to branch off (never changed)"
    )
    fork.add_argument(
        "new_name", metavar="NEW_NAME", type=job_name, help="the new conversation (job) name"
    )
    fork.add_argument(
        "--at",
        type=_turn_number,
        default=None,
        metavar="TURN",
        help="cut after this completed turn of NAME (default: its last completed turn)",
    )
    fork.add_argument("--config", type=Path, default=None, help=config_help)
    fork.add_argument("--json", action="store_true", help="the new conversation as JSON")

    key = sub.add_parser("key", help="create or rotate the journal key file")
    key_sub = key.add_subparsers(dest="key_command", required=True, metavar="ACTION")
    gen = key_sub.add_parser("generate", help="create a new key file (mode 0600)")
    gen.add_argument("path", type=Path)
    rot = key_sub.add_parser(
        "rotate", help="add a fresh key; new records use it, old records stay readable"
    )
    rot.add_argument("path", type=Path)
    cli_mirror.add_reencrypt_options(rot, config_help)
    cli_mirror.add_commands(sub, config_help)
    cli_live.add_commands(sub, config_help)
    cli_operate.add_commands(sub, config_help)
    cli_cluster.add_commands(sub, config_help)

    dev = sub.add_parser(
        "dev-model",
        help="serve the loopback model (a stand-in for the Messages API) on 127.0.0.1",
        description="Point ANTHROPIC_BASE_URL at it. Replies are deterministic and show what "
        "the model was sent. Prompt directives: [reply:TEXT] [slow:MS] [fail:CODE] [cut] "
        "[stall:S] [tool:CMD].",
    )
    dev.add_argument("--host", default="127.0.0.1", help="loopback address (default 127.0.0.1)")
    dev.add_argument("--port", type=int, default=0, help="port; 0 picks a free one (default)")
    dev.add_argument("--slow-ms", type=int, default=0, help="delay between streamed deltas")
    return parser


def _turn_number(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"bad turn {value!r}: a turn number, 1 or more")
    return number


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return dispatch(args)
    except VigilError as exc:
        print(f"vigil: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `vigil export NAME | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def dispatch(args: argparse.Namespace) -> int:  # noqa: PLR0911  # one return per command reads best
    command: str = args.command
    if command == "run":
        return cmd_run(args.config)
    if command == "history":
        return cmd_history(args.config, args.name, as_json=args.json)
    if command == "fork":
        return cmd_fork(args.config, args.name, args.new_name, args.at, as_json=args.json)
    if cli_mirror.handles(args):
        return cli_mirror.run(args)
    if cli_live.handles(args):
        return cli_live.run(args)
    if cli_operate.handles(args):
        return cli_operate.run(args)
    if cli_cluster.handles(args):
        return cli_cluster.run(args)
    if command == "key":
        return cmd_key(args.key_command, args.path)
    if command == "dev-model":
        from daemon.testing.devmodel import run_forever  # noqa: PLC0415  # see the note above cmd_run

        run_forever(args.host, args.port, slow_ms=args.slow_ms)
        return 0
    if command == "demo":
        from daemon.cli.demo import run_demo  # noqa: PLC0415  # see the note above cmd_run

        return run_demo(keep=args.keep)
    raise AssertionError(command)  # argparse only lets known commands through


def _load(config_path: Path | None) -> tuple[Config, Keyring]:
    config = load_config(config_path or default_config_path())
    keyring = Keyring.load(resolve_key_path(config.daemon.key_file))
    return config, keyring


# Lazy imports: the commands that drive the SDK (run, fork, demo) import it (about 1 s
# of start-up) when they run, so that status, history, tail and the other read-only
# commands answer quickly.


def cmd_run(config_path: Path | None) -> int:
    from daemon.runtime.notify import SystemdNotifier  # noqa: PLC0415
    from daemon.signals import hold_sighup  # noqa: PLC0415

    hold_sighup()  # a SIGHUP during start-up is noted (and reloads once ready), not fatal
    path = config_path or default_config_path()
    check_config_dir(path)  # nothing is read from a directory others can write
    config, keyring = _load(path)
    webhooks = any(s.type == "webhook" for j in config.heartbeats for _, s in j.sinks)
    warning = secrets_exposed(path, webhooks)
    if warning is not None:
        print(f"vigil: warning: {warning}", file=sys.stderr)
    # Imported once the config and key are known good: the supervisor pulls in the
    # Agent SDK (most of a second), which a refused start and the other commands skip.
    from daemon.runtime.supervisor import Supervisor  # noqa: PLC0415

    configure_logging(config.daemon.log_format, log_content=config.daemon.log_content)
    supervisor = Supervisor(config, keyring, SystemdNotifier(), config_path=path)
    return asyncio.run(supervisor.run())


def cmd_history(config_path: Path | None, name: str, *, as_json: bool) -> int:
    config, keyring = _load(config_path)
    if config.cluster is not None:  # the events live in PostgreSQL
        from daemon.ops.cluster import ClusterReader  # noqa: PLC0415  # imports psycopg

        with ClusterReader(config, keyring) as reader:
            view = reader.conversation(name)
    else:
        view = load_conversation(config, keyring, name)
    if as_json:
        json.dump([t.as_json() for t in view.turns], sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(render_history(name, view.turns, view.forked_from))
    return 0


def cmd_fork(
    config_path: Path | None, name: str, new_name: str, at: int | None, *, as_json: bool
) -> int:
    from daemon.ops.fork import ForkResult, fork_conversation  # noqa: PLC0415

    config, keyring = _load(config_path)
    configured = next((str(j.cwd) for j in config.heartbeats if j.name == new_name), None)
    result: ForkResult
    warning: str | None = None
    if config.cluster is not None:  # the conversations live in PostgreSQL
        from daemon.ops.cluster_fork import fork_in_cluster  # noqa: PLC0415  # imports psycopg

        result = asyncio.run(
            fork_in_cluster(config, keyring, name, new_name, at, configured_cwd=configured)
        )
    else:
        existing_journal(config, name)  # an unknown NAME: UnknownJobError, listing the known
        layout = Layout(config.daemon.state_dir, config.daemon.runtime_dir)
        check_owner(layout.state_dir)
        result, warning = asyncio.run(
            fork_conversation(
                layout,
                keyring,
                name,
                new_name,
                at,
                fsync=FsyncPolicy(config.daemon.fsync),
                configured_cwd=configured,
                mirror_path=config.daemon.mirror_file,
            )
        )
    if warning is not None:
        print(f"vigil: warning: {warning}", file=sys.stderr)
    if as_json:
        print(json.dumps(result.as_json(), indent=2))
        return 0
    then = (
        f"its job's next beat continues it as turn {result.next_turn}"
        if configured is not None
        else f'add a [[heartbeat]] named "{new_name}" with cwd = "{result.point.cwd}" and '
        "reload vigil to run it"
    )
    print(
        f"forked {name} at turn {result.point.turn} into {new_name} "
        f"(session {result.session_id}); {then}"
    )
    return 0


def cmd_key(action: str, path: Path) -> int:

    if action == "generate":
        ring = generate_key_file(path)
        print(f"created {path} (mode 0600) with key id {ring.current_id}")
    else:
        ring = rotate_key_file(path)
        print(
            f"added key id {ring.current_id} to {path}; new records use it, "
            f"records under {', '.join(ring.key_ids[:-1])} stay readable. Restart vigil to use it."
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
