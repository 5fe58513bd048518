"""The mirror against a fresh rebuild: the rows that differ, and SQLite's own check of
the full-text index (for ``vigil verify``)."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon.mirror.queries import DumpRow
from daemon.mirror.schema import DUMP_COLUMNS

__all__ = ["MirrorDifference", "check_index", "compare"]


@dataclass(frozen=True)
class MirrorDifference:
    """One row that differs: ``live``/``rebuilt`` hold the differing columns, or are
    None when the row is missing on that side."""

    table: str
    key: dict[str, Any]
    live: dict[str, Any] | None
    rebuilt: dict[str, Any] | None

    def describe(self) -> str:
        key = ", ".join(f"{k}={v!r}" for k, v in self.key.items())
        if self.live is None:
            return f"{self.table} [{key}]: missing from the live mirror"
        if self.rebuilt is None:
            return f"{self.table} [{key}]: in the live mirror but not in the journal"
        cols = "; ".join(
            f"{c}: live {_short(self.live[c])} != journal {_short(self.rebuilt[c])}"
            for c in self.live
        )
        return f"{self.table} [{key}]: {cols}"

    def as_json(self) -> dict[str, Any]:
        return {"table": self.table, "key": self.key, "live": self.live, "rebuilt": self.rebuilt}


def compare(live: list[DumpRow], rebuilt: list[DumpRow]) -> list[MirrorDifference]:
    """Every row that differs between two dumps, in table and key order."""
    order = {table: i for i, table in enumerate(DUMP_COLUMNS)}
    a = {(r.table, r.key): r.values for r in live}
    b = {(r.table, r.key): r.values for r in rebuilt}
    diffs: list[MirrorDifference] = []
    for table, key in sorted(a.keys() | b.keys(), key=lambda tk: (order[tk[0]], tk[1])):
        mine, theirs = a.get((table, key)), b.get((table, key))
        if mine == theirs:
            continue
        key_cols, value_cols = DUMP_COLUMNS[table]
        named_key = dict(zip(key_cols, key, strict=True))
        if mine is None or theirs is None:
            diffs.append(
                MirrorDifference(
                    table,
                    named_key,
                    None if mine is None else dict(zip(value_cols, mine, strict=True)),
                    None if theirs is None else dict(zip(value_cols, theirs, strict=True)),
                )
            )
            continue
        cols = [i for i, (x, y) in enumerate(zip(mine, theirs, strict=True)) if x != y]
        diffs.append(
            MirrorDifference(
                table,
                named_key,
                {value_cols[i]: mine[i] for i in cols},
                {value_cols[i]: theirs[i] for i in cols},
            )
        )
    return diffs


def check_index(path: Path) -> str | None:
    """SQLite's FTS5 integrity check of the live mirror's index (reads only, but needs
    a read-write connection); None when the index matches the turns."""
    db = sqlite3.connect(f"{path.absolute().as_uri()}?mode=rw", uri=True, isolation_level=None)
    try:
        db.execute("PRAGMA busy_timeout = 5000")
        db.execute("INSERT INTO turns_fts(turns_fts, rank) VALUES ('integrity-check', 1)")
    except sqlite3.DatabaseError as exc:
        return f"the full-text index does not match the turns ({exc})"
    finally:
        db.close()
    return None


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
