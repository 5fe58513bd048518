"""The operator's commands over the journals themselves: ``export`` (decrypted JSON
lines) and ``key rotate --reencrypt``. Parsed and dispatched by :mod:`daemon.cli.mirror`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console

from daemon.cli.site import check_owner, keyring_of, layout_of, print_json
from daemon.config.load import default_config_path, load_config
from daemon.config.model import Config
from daemon.errors import UnknownJobError
from daemon.journal.framing import decode_payload
from daemon.journal.logstore import conversation_names, journal_path
from daemon.journal.scan import scan
from daemon.ops.reencrypt import rotate_and_reencrypt

# ---------------------------------------------------------------- export


def cmd_export(config: Config, name: str, out: TextIO | None = None) -> int:
    stream = out or sys.stdout
    if config.cluster is not None:  # the events live in PostgreSQL
        from daemon.ops.cluster import ClusterReader  # noqa: PLC0415  # imports psycopg

        with ClusterReader(config, keyring_of(config)) as reader:
            reader.check_exists(name)
            if stream.isatty():
                print(
                    "vigil: warning: writing decrypted conversation text to the terminal",
                    file=sys.stderr,
                )
            reader.export(name, stream, json.JSONEncoder(ensure_ascii=False).encode)
        stream.flush()
        return 0
    directory = layout_of(config).conversations
    path = journal_path(directory, name)
    if not path.exists():
        raise UnknownJobError(name, conversation_names(directory))
    keyring = keyring_of(config)
    if stream.isatty():
        print(
            "vigil: warning: writing decrypted conversation text to the terminal",
            file=sys.stderr,
        )
    encode = json.JSONEncoder(ensure_ascii=False).encode

    def write(frame: Any) -> None:
        stream.write(encode({"seq": frame.seq, **decode_payload(frame.payload)}) + "\n")

    result = scan(path, name, keyring, write)
    stream.flush()
    if result.tail is not None:
        print(
            f"vigil: note: {path} line {result.tail.line}: {result.tail.reason} "
            "(a torn tail or a record being written; not exported)",
            file=sys.stderr,
        )
    return 0


# ---------------------------------------------------------------- key rotate --reencrypt


def cmd_reencrypt(key_path: Path, config_path: Path | None, *, as_json: bool) -> int:
    config = load_config(config_path or default_config_path())
    layout = layout_of(config)
    check_owner(layout.state_dir)
    console = Console(stderr=True)
    show = not as_json and sys.stderr.isatty()

    def progress(path: Path, done: int, files: int) -> None:
        if show:
            console.print(f"[{done}/{files}] {path.name}", highlight=False)

    stats = rotate_and_reencrypt(key_path, layout, progress=progress)
    if as_json:
        print_json(stats.as_json())
    else:
        print(
            f"added key id {stats.key_id} to {key_path} and re-encrypted {stats.rewritten} of "
            f"{stats.files} journals ({stats.records} records) in {stats.seconds:.2f} s; "
            f"{stats.already_current} were already under it. Older keys stay in the file."
        )
        for leftover in stats.leftovers_removed:
            print(f"removed an unfinished copy from an earlier run: {leftover}")
        for path in stats.tails_cut:
            print(f"cut a torn tail off {path} (the original is kept beside it)")
    return 0
