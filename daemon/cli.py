"""``vigil``: the command line. The one place that maps errors to exit codes."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from daemon import cli_live, cli_mirror
from daemon.config import Config, default_config_path, load_config
from daemon.demo import run_demo
from daemon.devmodel import run_forever
from daemon.errors import VigilError
from daemon.history import load_history, render_history
from daemon.keyring import Keyring, generate_key_file, resolve_key_path, rotate_key_file
from daemon.logs import configure_logging
from daemon.notify import SystemdNotifier

EXIT_CODES = """\
exit codes:
  0  success
  1  unexpected error
  2  bad command line or configuration
  3  key file missing, malformed, too open, or the wrong key
  4  journal corrupt or from a newer vigil
  5  journal write failed (disk full?)
  6  fsync failed: exited without acknowledging the record
  7  another vigil already runs on this state directory
  8  verify found a damaged journal record or a mirror that differs from the journals
  9  no daemon is running (status, beat)
 10  the daemon refused the beat (a turn of that conversation is running, or it was skipped)
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
        help="a one-minute demo with a loopback model: beats, a SIGKILL, recovery",
        description="Starts the loopback model and a daemon with two heartbeat jobs in a "
        "temporary directory, kills the daemon with SIGKILL mid-reply, starts it again and "
        "shows both conversations continuing with their memory. Needs no API key.",
    )
    demo.add_argument("--keep", action="store_true", help="keep the temporary directory")

    history = sub.add_parser(
        "history",
        help="print a conversation's turns from the journal",
        description="Reads the encrypted journal (read-only; works while the daemon runs) and "
        "prints each turn: interrupted turns are shown healed, with the text that was streamed.",
    )
    history.add_argument("name", help="job (conversation) name")
    history.add_argument("--config", type=Path, default=None, help=config_help)
    history.add_argument("--json", action="store_true", help="a JSON array, for scripts")

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
    if cli_mirror.handles(args):
        return cli_mirror.run(args)
    if cli_live.handles(args):
        return cli_live.run(args)
    if command == "key":
        return cmd_key(args.key_command, args.path)
    if command == "dev-model":
        run_forever(args.host, args.port, slow_ms=args.slow_ms)
        return 0
    if command == "demo":
        return run_demo(keep=args.keep)
    raise AssertionError(command)  # argparse only lets known commands through


def _load(config_path: Path | None) -> tuple[Config, Keyring]:
    config = load_config(config_path or default_config_path())
    keyring = Keyring.load(resolve_key_path(config.daemon.key_file))
    return config, keyring


def cmd_run(config_path: Path | None) -> int:
    path = config_path or default_config_path()
    config, keyring = _load(path)
    # Imported once the config and key are known good: the supervisor pulls in the
    # Agent SDK (most of a second), which a refused start and the other commands skip.
    from daemon.supervisor import Supervisor  # noqa: PLC0415

    configure_logging(config.daemon.log_format)
    supervisor = Supervisor(config, keyring, SystemdNotifier(), config_path=path)
    return asyncio.run(supervisor.run())


def cmd_history(config_path: Path | None, name: str, *, as_json: bool) -> int:
    config, keyring = _load(config_path)
    turns = load_history(config, keyring, name)
    if as_json:
        json.dump([t.as_json() for t in turns], sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(render_history(name, turns))
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
