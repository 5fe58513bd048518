"""The operator's commands over the journals and the derived mirror.

``rebuild``, ``verify``, ``search``, ``sessions``, ``export`` and ``key rotate
--reencrypt`` (the last two, over the journals alone, live in :mod:`daemon.cli.journals`).
``daemon.cli.main`` builds the parser with :func:`add_commands`, dispatches here with
:func:`run` and maps every raised ``VigilError`` to its exit code; these
functions return 0, or :data:`VERIFY_FAILED` when ``verify`` found a problem.
Output: ``--json`` for scripts, rich tables and progress bars on a terminal, plain
tab-separated lines otherwise.
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from daemon.cli.args import job_name
from daemon.cli.journals import cmd_export, cmd_reencrypt
from daemon.cli.site import check_owner, keyring_of, layout_of, print_json, progress_bar
from daemon.config.load import default_config_path, load_config
from daemon.config.model import Config
from daemon.journal.logstore import conversation_names
from daemon.mirror.db import Mirror
from daemon.mirror.queries import ConversationSummary, Hit
from daemon.mirror.rebuild import RebuildProgress, RebuildStats, rebuild
from daemon.ops.checkpoints import rewrite_checkpoints
from daemon.ops.history import tokens_short
from daemon.ops.verify import verify
from daemon.trust import own_file
from jobs.budget import local_day, local_day_bounds

VERIFY_FAILED = 8
PARALLEL_BYTES = 32 << 20  # below this, starting worker processes costs more than it saves
COMMANDS = frozenset({"rebuild", "verify", "search", "sessions", "export"})
_MARK = ("\x02", "\x03")


def add_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], config_help: str
) -> None:
    p = sub.add_parser(
        "rebuild",
        help="purge the derived mirror and replay it from the journals",
        description="Deletes the mirror's rows (all, or one conversation's) and replays them "
        "from the encrypted journals: a progress bar on a terminal, one summary line "
        "otherwise. Safe while the daemon runs: all conversations are replaced in one "
        "transaction (the daemon's updates wait for it); one conversation in its own. "
        "Then rewrites the start-up checkpoints (state_dir/checkpoints) from a full read.",
    )
    p.add_argument("name", nargs="?", type=job_name, help="only this conversation")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes decrypting and folding in parallel for a full rebuild "
        "(default: one per CPU, up to 8, "
        f"for more than {PARALLEL_BYTES >> 20} MB of journals)",
    )
    p.add_argument("--config", type=Path, default=None, help=config_help)
    p.add_argument("--json", action="store_true", help="the summary as JSON")

    p = sub.add_parser(
        "verify",
        help="authenticate every journal record and compare the mirror with a fresh rebuild",
        description="Reads every journal (read-only) and reports torn tails, corruption, a "
        "newer format or a missing key by file, line and sequence number; then compares the "
        f"live mirror with a fresh rebuild, row by row. Exit {VERIFY_FAILED} on any problem. "
        "With [cluster]: authenticates every event and transcript record in PostgreSQL, "
        "reported by conversation and sequence number (a cluster keeps no mirror).",
    )
    p.add_argument("--config", type=Path, default=None, help=config_help)
    p.add_argument("--json", action="store_true", help="the report as JSON")

    p = sub.add_parser(
        "search",
        help="full-text search over prompts and replies",
        description="Finds turns whose prompt or reply contains every word of TEXT (from the "
        "mirror; without one, from the journals; with [cluster], from PostgreSQL). Matches "
        "are shown between [ and ].",
    )
    p.add_argument("text", help="words to find (all must occur)")
    p.add_argument("--limit", type=int, default=20, help="at most this many hits (default 20)")
    p.add_argument("--fts", action="store_true", help="TEXT is an SQLite FTS5 query")
    p.add_argument("--config", type=Path, default=None, help=config_help)
    p.add_argument("--json", action="store_true", help="a JSON array, for scripts")

    p = sub.add_parser(
        "sessions",
        help="list the conversations: turns, last status, activity, spend today",
        description="From the mirror when there is one, else read from the journals "
        "(with [cluster]: from PostgreSQL, any node's conversations).",
    )
    p.add_argument("--config", type=Path, default=None, help=config_help)
    p.add_argument("--json", action="store_true", help="a JSON array, for scripts")

    p = sub.add_parser(
        "export",
        help="print a conversation's decrypted events as JSON lines",
        description="Writes every event of the journal, decrypted, one JSON object per line "
        'with its sequence number as "seq". This is conversation plaintext: redirect it '
        "somewhere safe.",
    )
    p.add_argument("name", type=job_name, help="job (conversation) name")
    p.add_argument("--config", type=Path, default=None, help=config_help)


def add_reencrypt_options(rotate: argparse.ArgumentParser, config_help: str) -> None:
    rotate.add_argument(
        "--reencrypt",
        action="store_true",
        help="then rewrite every journal under the new key (stop the daemon first)",
    )
    rotate.add_argument("--config", type=Path, default=None, help=config_help)
    rotate.add_argument("--json", action="store_true", help="with --reencrypt: JSON summary")


def handles(args: argparse.Namespace) -> bool:
    """Whether :func:`run` is the one to run this command line."""
    if args.command == "key":
        return args.key_command == "rotate" and bool(args.reencrypt)
    return args.command in COMMANDS


def run(args: argparse.Namespace) -> int:
    command: str = args.command
    if command == "key":
        return cmd_reencrypt(args.path, args.config, as_json=args.json)
    config = load_config(args.config or default_config_path())
    if command == "rebuild":
        return cmd_rebuild(config, args.name, args.workers, as_json=args.json)
    if command == "verify":
        return cmd_verify(config, as_json=args.json)
    if command == "search":
        return cmd_search(config, args.text, args.limit, raw=args.fts, as_json=args.json)
    if command == "sessions":
        return cmd_sessions(config, as_json=args.json)
    if command == "export":
        return cmd_export(config, args.name)
    raise AssertionError(command)  # the parser only lets COMMANDS through


# ---------------------------------------------------------------- rebuild


def cmd_rebuild(config: Config, name: str | None, workers: int | None, *, as_json: bool) -> int:
    keyring = keyring_of(config)
    path = config.daemon.mirror_file
    check_owner(path if path.exists() else config.daemon.runtime_dir)
    directory = layout_of(config).conversations
    if workers is None:
        size = sum(p.stat().st_size for p in directory.glob("*.jsonl"))
        workers = min(os.cpu_count() or 1, 8) if size > PARALLEL_BYTES and name is None else 1
    mirror = Mirror.open(path, busy_timeout_ms=30_000)
    try:
        with _progress_bar(enabled=not as_json and sys.stderr.isatty()) as progress:
            stats = rebuild(
                mirror,
                directory,
                keyring,
                None if name is None else [name],
                progress,
                workers=workers,
            )
    finally:
        mirror.close()
    # The start-up checkpoints are derived too: fresh ones from a full fold.
    names = conversation_names(directory) if name is None else [name]
    checkpoints = layout_of(config).checkpoints
    rewritten = rewrite_checkpoints(directory, checkpoints, keyring, names, workers=workers)
    if as_json:
        print_json({"mirror": str(path), **stats.as_json(), "checkpoints": rewritten})
    else:
        print(
            f"rebuilt {path}: {stats.records} records, {stats.conversations} conversations "
            f"in {stats.seconds:.2f} s ({stats.rate:,.0f} records/s); "
            f"{rewritten} start-up checkpoints rewritten"
        )
    return _first_error(stats)


def _first_error(stats: RebuildStats) -> int:
    for error in stats.errors:
        print(f"vigil: error: {error}", file=sys.stderr)
    if stats.errors:
        raise stats.errors[0]
    return 0


def _progress_bar(
    *, enabled: bool
) -> AbstractContextManager[Callable[[RebuildProgress], None] | None]:
    return progress_bar(
        "rebuilding",
        lambda p: (
            p.bytes_total,
            p.bytes_done,
            p.records,
            f"{p.conversations_done}/{p.conversations_total} {p.conversation}",
        ),
        enabled=enabled,
    )


# ---------------------------------------------------------------- verify


def cmd_verify(config: Config, *, as_json: bool) -> int:
    if config.cluster is not None:  # the records live in PostgreSQL
        return _verify_cluster(config, as_json=as_json)
    report = verify(layout_of(config), keyring_of(config), config.daemon.mirror_file)
    if as_json:
        print_json(report.as_json())
    else:
        sys.stdout.write(report.render())
    return 0 if report.ok else VERIFY_FAILED


def _verify_cluster(config: Config, *, as_json: bool) -> int:
    from daemon.ops.cluster_verify import verify_cluster  # noqa: PLC0415  # imports psycopg

    report = verify_cluster(config, keyring_of(config), dict(os.environ))
    if as_json:
        print_json(report.as_json())
    else:
        sys.stdout.write(report.render())
    return 0 if report.ok else VERIFY_FAILED


# ---------------------------------------------------------------- search and sessions


@contextmanager
def _reader(config: Config) -> Iterator[Mirror]:
    """The live mirror read-only; without one, a mirror built in memory from the journals
    (with ``[cluster]``: from the events in PostgreSQL)."""
    path = config.daemon.mirror_file
    if config.cluster is not None:
        from daemon.ops.cluster import ClusterReader  # noqa: PLC0415  # imports psycopg

        with ClusterReader(config, keyring_of(config)) as cluster:
            mirror = cluster.mirror()
    elif own_file(path, stat.S_IFREG):
        mirror = Mirror.open(path, readonly=True)
    else:
        why = (
            "(what is there is not a file this user made: a symlink or another owner's)"
            if os.path.lexists(path)
            else "(daemon stopped?)"
        )
        print(f"vigil: no mirror at {path} {why}; reading the journals", file=sys.stderr)
        mirror = Mirror.open(":memory:")
        stats = rebuild(mirror, layout_of(config).conversations, keyring_of(config))
        for error in stats.errors:
            print(f"vigil: warning: left out: {error}", file=sys.stderr)
    try:
        yield mirror
    finally:
        mirror.db.close()


def cmd_search(config: Config, text: str, limit: int, *, raw: bool, as_json: bool) -> int:
    tty = not as_json and sys.stdout.isatty()
    with _reader(config) as mirror:
        hits = mirror.search(text, limit, mark=_MARK if tty else ("[", "]"), raw=raw)
    if as_json:
        print_json([h.as_json() for h in hits])
    elif tty:
        _hits_table(hits)
    else:
        for h in hits:
            print(f"{h.conversation}\t{h.turn}\t{h.status}\t{' '.join(h.snippet.split())}")
    return 0


def _hits_table(hits: list[Hit]) -> None:
    console = Console()
    if not hits:
        console.print("no matches")
        return
    table = Table("conversation", "turn", "status", "started (UTC)", "snippet")
    for h in hits:
        table.add_row(
            h.conversation, str(h.turn), h.status, _when(h.started_at), _marked(h.snippet)
        )
    console.print(table)


def _marked(snippet: str) -> Text:
    text = Text()
    rest = " ".join(snippet.split())
    while _MARK[0] in rest:
        before, _, tail = rest.partition(_MARK[0])
        match, _, rest = tail.partition(_MARK[1])
        text.append(before)
        text.append(match, style="bold yellow")
    text.append(rest)
    return text


def cmd_sessions(config: Config, *, as_json: bool) -> int:
    now = datetime.now(UTC)
    zones = {job.name: job.zone for job in config.heartbeats}

    def today(name: str) -> tuple[datetime, datetime]:
        """Today in the job's timezone, as ``vigil status`` and the budget count it."""
        zone = zones.get(name, UTC)
        return local_day_bounds(local_day(now, zone), zone)

    with _reader(config) as mirror:
        rows = mirror.conversations(today)
    if as_json:
        print_json([r.as_json() for r in rows])
    elif sys.stdout.isatty():
        _sessions_table(rows)
    else:
        print(
            "name\tturns\tlast_status\tlast_activity\tspend_today_usd\tsession_id\t"
            "forked_from\tpaused\tcontext_tokens\tcompactions"
        )
        for r in rows:
            print(
                f"{r.name}\t{r.turns}\t{r.last_status or '-'}\t{r.last_activity or '-'}\t"
                f"{r.spend_today_usd:.4f}\t{r.session_id or '-'}\t{r.origin or '-'}\t"
                f"{_paused(r)}\t"
                f"{r.context_tokens if r.context_tokens is not None else '-'}\t{r.compactions}"
            )
    return 0


def _sessions_table(rows: list[ConversationSummary]) -> None:
    columns = ("name", "turns", "last status", "last activity (UTC)", "spend today", "session")
    table = Table(*columns, "forked from", "paused", "context", "compactions")
    for r in rows:
        table.add_row(
            r.name,
            str(r.turns),
            r.last_status or "-",
            _when(r.last_activity),
            f"${r.spend_today_usd:.4f}",
            r.session_id or "-",
            r.origin or "-",
            _paused(r),
            tokens_short(r.context_tokens),
            str(r.compactions),
        )
    Console().print(table if rows else "no conversations yet")


def _paused(r: ConversationSummary) -> str:
    """``-``, or who paused it and until when (``operator``, ``auto until ...``)."""
    if r.paused_by is None:
        return "-"
    return r.paused_by + (f" until {r.paused_until}" if r.paused_until else "")


# ---------------------------------------------------------------- helpers


def _when(stamp: str | None) -> str:
    """``2026-11-21T10:00:00.123Z`` as ``2026-11-21 10:00:00`` (UTC) for a table."""
    return stamp[:19].replace("T", " ") if stamp else "-"
