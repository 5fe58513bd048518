"""``JournalSessionStore``: the SDK's ``SessionStore`` on vigil's encrypted journal.

The CLI's transcript is mirrored through this store, encrypted with the same framing
as the conversation journals, so a resume works even after the runtime directory
(where the CLI keeps its plaintext copy) was wiped.

Layout: one journal file per key ``(project_key, session_id, subpath)`` under
``directory``, named by a digest of the key so file names leak nothing. Records:

* seq 1 ``{"kind": "key", "project_key": ..., "session_id": ..., "subpath": ...}``
* ``{"kind": "entries", "entries": [...]}``: one per ``append`` call, in call order
* ``{"kind": "summary", "data": {...}}``: the SDK's folded summary (main keys only)

Contract (the SDK's, checked by ``run_session_store_conformance``): entries load back
deep-equal and in append order; appends are idempotent on an entry's ``uuid``;
``load`` of an unknown key is ``None``; deleting a main key cascades to its subkeys.
Each ``append`` is flushed to the kernel before it returns and, unless fsync is
``never``, to disk (the SDK batches once per turn, so this is one fsync a turn).

**Resume view** (``resume_view=True``, the daemon's store): ``load`` of a main transcript
that holds a compaction returns what a resume needs, not every entry: everything from
the last compact boundary on, plus the few earlier entries the CLI still reads
(:mod:`daemon.agent.resume_view`), read through a per-stream index of where they lie
(:mod:`daemon.agent.resume_index`), so a resume costs what the last compaction left,
not the whole history. The stored file keeps everything: ``vigil fork`` and
``vigil export`` read it all (their stores leave the view off), and so does a resume
cut at an earlier entry (:meth:`JournalSessionStore.load_whole_next`).

Other processes may add streams while this store is in use (``vigil fork`` writes a
forked session's transcript while the daemon runs): a key this store has not seen is
looked up on disk before it is created, and ``has_session`` and the listings look for
new files. Reads never modify a file: a torn tail (perhaps a record being written
right now) is left out of ``load`` and cut off only by this store's next ``append``.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemon.agent.resume_index import ViewIndex, load_view, recent, remove_index
from daemon.agent.streams import KeyTuple, Stream, key_tuple, stream_digest
from daemon.errors import JournalFatalError, JournalWriteError
from daemon.fsutil import ensure_private_dir, fsync_dir
from daemon.journal.file import JOURNAL_SUFFIX, FsyncPolicy, Journal
from daemon.journal.framing import decode_payload, encode_payload, open_line
from daemon.journal.keyring import Keyring
from daemon.journal.scan import scan
from daemon.ports.transcripts import new_entries

if TYPE_CHECKING:  # the SDK is imported where it is used (about a second; see agent.py)
    from claude_agent_sdk.types import (
        SessionKey,
        SessionListSubkeysKey,
        SessionStoreEntry,
        SessionStoreListEntry,
        SessionSummaryEntry,
    )


class JournalSessionStore:
    """An encrypted, append-only ``SessionStore`` (see the module docstring)."""

    def __init__(
        self,
        directory: Path,
        keyring: Keyring,
        *,
        fsync: FsyncPolicy = FsyncPolicy.TURN,
        resume_view: bool = False,
    ) -> None:
        self.directory = ensure_private_dir(directory)
        self.keyring = keyring
        self.fsync = fsync
        # ``load`` of a main transcript gives what a resume needs (see the module doc);
        # off for fork and export, which read everything.
        self.resume_view = resume_view
        self._whole_next: set[str] = set()
        self.loads: Counter[str] = Counter()  # "view", "view_indexed", "whole"
        self._streams: dict[str, Stream] | None = None
        self._failures: dict[str, JournalWriteError | JournalFatalError] = {}
        self._dead: JournalFatalError | None = None

    # --- SessionStore protocol -----------------------------------------------------------

    async def append(self, key: SessionKey, entries: list[SessionStoreEntry]) -> None:
        if not entries:
            return
        try:
            self._append(key, entries)
        except (JournalWriteError, JournalFatalError) as exc:
            # The SDK retries a failed append a few times, then drops the batch and
            # carries on: remember the failure so the turn does not count as done.
            self._failures.setdefault(key["session_id"], exc)
            raise

    def _append(self, key: SessionKey, entries: list[SessionStoreEntry]) -> None:
        stream = self._stream_for(key_tuple(key), create=True)
        assert stream is not None  # noqa: S101  # create=True always returns one
        self._ensure_loaded(stream)
        fresh, fresh_uuids = new_entries(entries, stream.uuids)
        if not fresh:
            return
        payloads = [encode_payload({"kind": "entries", "entries": fresh})]
        summary: SessionSummaryEntry | None = None
        if stream.key[2] is None:
            from claude_agent_sdk import fold_session_summary  # noqa: PLC0415

            summary = fold_session_summary(stream.summary, key, fresh)
            payloads.append(encode_payload({"kind": "summary", "data": summary["data"]}))
        self._write(stream, payloads)
        # Only now: a retry of a batch that failed to be written must not be skipped
        # as already stored.
        stream.uuids |= fresh_uuids
        if summary is not None:
            stream.summary = summary

    async def load(self, key: SessionKey) -> list[SessionStoreEntry] | None:
        stream = self._stream_for(key_tuple(key), create=False)
        if stream is None:
            return None
        if self.resume_view and stream.key[2] is None:
            if key["session_id"] not in self._whole_next:
                return self._load_view(stream)
            self._whole_next.discard(key["session_id"])
        self.loads["whole"] += 1
        out: list[SessionStoreEntry] = []
        seen: set[str] = set()
        for record in self._records(stream):
            if record.get("kind") != "entries":
                continue
            for entry in record["entries"]:
                uid = entry.get("uuid")
                if isinstance(uid, str):
                    if uid in seen:
                        continue  # appends are idempotent on uuid, whatever the file holds
                    seen.add(uid)
                out.append(entry)
        return out

    async def list_sessions(self, project_key: str) -> list[SessionStoreListEntry]:
        self._discover()
        return [
            {"session_id": s.key[1], "mtime": self._mtime_ms(s)}
            for s in self._all_streams().values()
            if s.key[0] == project_key and s.key[2] is None
        ]

    async def list_session_summaries(self, project_key: str) -> list[SessionSummaryEntry]:
        self._discover()
        out: list[SessionSummaryEntry] = []
        for s in self._all_streams().values():
            if s.key[0] != project_key or s.key[2] is not None:
                continue
            self._ensure_loaded(s)
            if s.summary is not None:
                out.append(
                    {"session_id": s.key[1], "mtime": self._mtime_ms(s), "data": s.summary["data"]}
                )
        return out

    async def delete(self, key: SessionKey) -> None:
        target = key_tuple(key)
        self._discover()
        streams = self._all_streams()
        doomed = [
            d
            for d, s in streams.items()
            if s.key == target
            or (target[2] is None and s.key[0] == target[0] and s.key[1] == target[1])
        ]
        for d in doomed:
            with contextlib.suppress(FileNotFoundError):
                streams[d].path.unlink()
            remove_index(streams[d].index_path)
            del streams[d]
        if doomed:
            fsync_dir(self.directory)

    async def list_subkeys(self, key: SessionListSubkeysKey) -> list[str]:
        self._discover()
        return sorted(
            s.key[2]
            for s in self._all_streams().values()
            if s.key[0] == key["project_key"] and s.key[1] == key["session_id"] and s.key[2]
        )

    # --- vigil's own queries ---------------------------------------------------------------

    def load_whole_next(self, session_id: str) -> None:
        """The next ``load`` of ``session_id`` returns every entry, not the resume view:
        a resume cut at an earlier entry (``resume_session_at``) may cut before the last
        compaction, and then the model sees the uncompacted history again."""
        self._whole_next.add(session_id)

    def take_failure(self, session_id: str) -> JournalWriteError | JournalFatalError | None:
        """The first append for ``session_id`` that failed since the last call, if any.

        The SDK swallows a failed append (after a few retries it drops the batch), so
        the agent asks here: a transcript that could not be stored fails the turn.
        """
        return self._failures.pop(session_id, None)

    def heads(self) -> dict[str, tuple[int, int, str]]:
        """(last seq, size, last digest) of each stream this store has read or written,
        by file name: what ``state_dir/heads`` may commit to once they are synced."""
        streams = self._streams or {}
        return {
            s.path.name: (s.last_seq, s.size, s.digest)
            for s in streams.values()
            if s.size and s.digest
        }

    def has_session(self, session_id: str) -> bool:
        """Whether a main transcript for ``session_id`` exists (under any project key)."""

        def known() -> bool:
            return any(
                s.key[1] == session_id and s.key[2] is None for s in self._all_streams().values()
            )

        return known() or (self._discover() and known())

    # --- internals -----------------------------------------------------------------------

    def _all_streams(self) -> dict[str, Stream]:
        if self._streams is None:
            self._streams = {}
            self._discover()
        return self._streams

    def _discover(self) -> bool:
        """Adopt stream files this store does not know yet; whether any was found."""
        streams = self._all_streams()
        found = False
        for path in sorted(self.directory.glob(f"*{JOURNAL_SUFFIX}")):
            d = path.name[: -len(JOURNAL_SUFFIX)]
            if d in streams:
                continue
            key = self._read_key(path)
            if key is not None:
                streams[d] = Stream(key, path, f"t:{d}")
                found = True
        return found

    def _read_key(self, path: Path) -> KeyTuple | None:
        digest = path.name[: -len(JOURNAL_SUFFIX)]
        try:
            with path.open("rb") as f:
                first = f.readline()
        except FileNotFoundError:
            return None  # deleted since it was listed
        if not first.endswith(b"\n"):
            return None  # torn before the header was complete: nothing was ever stored
        record = decode_payload(open_line(self.keyring, f"t:{digest}", first[:-1]).payload)
        if record.get("kind") != "key":
            return None
        return (record["project_key"], record["session_id"], record.get("subpath"))

    def _stream_for(self, key: KeyTuple, *, create: bool) -> Stream | None:
        streams = self._all_streams()
        d = stream_digest(key)
        stream = streams.get(d)
        if stream is None and (self.directory / f"{d}{JOURNAL_SUFFIX}").exists():
            self._discover()  # written by another process since we listed the directory
            stream = streams.get(d)
        if stream is None and create:
            stream = Stream(key, self.directory / f"{d}{JOURNAL_SUFFIX}", f"t:{d}", loaded=True)
            header = {
                "kind": "key",
                "project_key": key[0],
                "session_id": key[1],
                "subpath": key[2],
            }
            self._write(stream, [encode_payload(header)])
            streams[d] = stream
        return stream

    def _open(self, stream: Stream) -> Journal:
        if stream.size:
            return Journal.reopen(
                stream.path,
                stream.stream_id,
                self.keyring,
                last_seq=stream.last_seq,
                size=stream.size,
                fsync=self.fsync,
                last_digest=stream.digest,
            )
        return Journal.open(stream.path, stream.stream_id, self.keyring, fsync=self.fsync)

    def _write(self, stream: Stream, payloads: list[bytes]) -> None:
        if self._dead is not None:
            # fsync failed before: the kernel may have dropped written pages, so no
            # write may follow (the SDK would retry on a fresh descriptor); the daemon
            # exits on this error.
            raise self._dead
        journal = self._open(stream)
        try:
            journal.append_payloads(payloads)
            journal.sync()
        except JournalFatalError as exc:
            self._dead = exc
            raise
        finally:
            # What the file holds now, whatever failed: a failed write was rolled back,
            # a record whose fsync failed is in the file all the same.
            stream.last_seq, stream.size = journal.last_seq, journal.size
            stream.digest = journal.last_digest
            journal.close()

    def _records(self, stream: Stream) -> list[dict[str, Any]]:
        """Every complete record, read-only (a torn tail is cut by the next append:
        ``_open`` sees the file is longer than ``stream.size`` and recovers it)."""
        records: list[dict[str, Any]] = []
        result = scan(
            stream.path,
            stream.stream_id,
            self.keyring,
            lambda fr: records.append(decode_payload(fr.payload)),
        )
        stream.last_seq, stream.size = result.last_seq, result.good_end
        stream.digest = result.last_digest
        return records

    def _load_view(self, stream: Stream) -> list[SessionStoreEntry]:
        """What a resume needs (``resume_index.load_view``), its index kept up to date."""
        index = stream.view or ViewIndex.read(stream.index_path)
        got = load_view(stream.path, stream.stream_id, self.keyring, index)
        stream.last_seq, stream.size = got.last_seq, got.good_end
        if got.index != index:
            if got.index is None:
                remove_index(stream.index_path)
            else:
                got.index.write(stream.index_path)
        stream.view = got.index
        self.loads["whole" if got.index is None else "view" if got.full else "view_indexed"] += 1
        return got.entries  # type: ignore[return-value]  # entries are opaque SDK dicts

    def _ensure_loaded(self, stream: Stream) -> None:
        if stream.loaded or self._load_recent(stream):
            return
        for record in self._records(stream):
            kind = record.get("kind")
            if kind == "entries":
                for entry in record["entries"]:
                    uid = entry.get("uuid")
                    if isinstance(uid, str):
                        stream.uuids.add(uid)
            elif kind == "summary":
                stream.summary = {
                    "session_id": stream.key[1],
                    "mtime": 0,
                    "data": record["data"],
                }
        stream.loaded = True

    def _load_recent(self, stream: Stream) -> bool:
        """What an append needs, from the records since the last compaction
        (``resume_index.recent``); False when there is no usable index."""
        if not self.resume_view or stream.key[2] is not None:
            return False
        index = stream.view or ViewIndex.read(stream.index_path)
        got = None if index is None else recent(stream.path, stream.stream_id, self.keyring, index)
        if got is None:
            return False
        stream.uuids, summary = got
        stream.summary = {"session_id": stream.key[1], "mtime": 0, "data": summary}
        stream.loaded = True
        return True

    @staticmethod
    def _mtime_ms(stream: Stream) -> int:
        return stream.path.stat().st_mtime_ns // 1_000_000
