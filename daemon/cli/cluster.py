"""The operator's commands that only a cluster has: ``vigil migrate --to-cluster``.

``daemon.cli.main`` builds the parser with :func:`add_commands` and dispatches here
with :func:`run`; every raised ``VigilError`` is mapped to its exit code there. The
cluster modules (psycopg) are imported when a command runs, never by the file daemon.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING

from daemon.cli.site import check_owner, keyring_of, print_json, progress_bar
from daemon.config.load import default_config_path, load_config

if TYPE_CHECKING:
    from daemon.ops.migrate import Progress as MigrateProgress

__all__ = ["MIGRATE_REFUSED", "add_commands", "handles", "run"]

COMMANDS = frozenset({"migrate"})
MIGRATE_REFUSED = 13


def add_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], config_help: str
) -> None:
    p = sub.add_parser(
        "migrate",
        help="import a single node's journals and transcripts into the cluster's PostgreSQL",
        description="With --to-cluster and the configuration that has [cluster] (the single "
        "node's state_dir and key, the node stopped): copies every conversation journal and "
        "transcript under state_dir into PostgreSQL, sealed as they are, then reads each one "
        "back and checks it record for record. Idempotent and resumable: what the database "
        "already holds, equal, is skipped; a stream that differs is refused (nothing written "
        f"for it; exit {MIGRATE_REFUSED}). The files are only read. Exit 7 while the single "
        "node still runs.",
    )
    p.add_argument(
        "--to-cluster",
        action="store_true",
        required=True,
        help="into the database of the configuration's [cluster] table (the only direction)",
    )
    p.add_argument("--config", type=Path, default=None, help=config_help)
    p.add_argument("--json", action="store_true", help="the summary as JSON")


def handles(args: argparse.Namespace) -> bool:
    return args.command in COMMANDS


def run(args: argparse.Namespace) -> int:
    if args.command == "migrate":
        return cmd_migrate(args.config, as_json=args.json)
    raise AssertionError(args.command)  # the parser only lets COMMANDS through


def cmd_migrate(config_path: Path | None, *, as_json: bool) -> int:
    from daemon.ops.migrate import migrate_site  # noqa: PLC0415  # imports psycopg

    config = load_config(config_path or default_config_path())
    keyring = keyring_of(config)
    check_owner(config.daemon.state_dir)
    with _progress_bar(enabled=not as_json and sys.stderr.isatty()) as progress:
        report = migrate_site(config, keyring, progress=progress)
    if as_json:
        print_json(report.as_json())
    else:
        sys.stdout.write(report.render())
    for item in report.items:
        if item.status == "refused":
            print(f"vigil: error: {item.detail}", file=sys.stderr)
    return 0 if report.ok else MIGRATE_REFUSED


def _progress_bar(
    *, enabled: bool
) -> AbstractContextManager[Callable[[MigrateProgress], None] | None]:
    return progress_bar(
        "migrating",
        lambda p: (p.total, p.done, p.records, f"{p.done}/{p.total} {p.current}"),
        enabled=enabled,
    )
