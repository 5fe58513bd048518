"""One stream of the file transcript store: its SDK key, its file, and what the store
keeps in memory about it (the last record, the uuids it holds, the last summary)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from daemon.agent.resume_index import INDEX_SUFFIX, ViewIndex

if TYPE_CHECKING:
    from claude_agent_sdk.types import SessionKey, SessionListSubkeysKey, SessionSummaryEntry

__all__ = ["KeyTuple", "Stream", "key_tuple", "stream_digest"]

KeyTuple = tuple[str, str, str | None]


def stream_digest(key: KeyTuple) -> str:
    return hashlib.sha256(json.dumps(list(key)).encode("utf-8")).hexdigest()[:32]


def key_tuple(key: SessionKey | SessionListSubkeysKey) -> KeyTuple:
    subpath = key.get("subpath")
    return (key["project_key"], key["session_id"], subpath if isinstance(subpath, str) else None)


@dataclass
class Stream:
    key: KeyTuple
    path: Path
    stream_id: str
    last_seq: int = 0
    size: int = 0
    digest: str = ""  # of the last record (what state_dir/heads commits to)
    loaded: bool = False  # uuids/summary below are known
    uuids: set[str] = field(default_factory=set)
    summary: SessionSummaryEntry | None = None
    view: ViewIndex | None = None  # where its resume view lies (main streams)

    @property
    def index_path(self) -> Path:
        return self.path.with_suffix(INDEX_SUFFIX)
