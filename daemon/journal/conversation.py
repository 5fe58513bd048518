"""A conversation: its journal plus the little state the daemon needs to drive it.

:meth:`Conversation.record` is the one door every event goes through: append to the
journal first, then update the state, then log and hand it to listeners ("write
before show"). Start-up reads each journal once; nothing but this summary stays in
memory, so a thousand long conversations cost little.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any, ClassVar

from daemon import events as ev
from daemon.events import Event, event_type
from daemon.journal.file import Journal, TailCut
from daemon.journal.logstore import FileEventLogStore
from daemon.logs import get_logger
from daemon.ports.eventlog import EventLog, EventLogStore

if TYPE_CHECKING:
    from daemon.journal.recovery_read import Folded

Listener = Callable[[str, int, Event], None]
Timing = Callable[[str, float], None]  # ("append" | "sync", seconds)
HEALED_REASON = "daemon_stopped_mid_turn"
WRITE_FAILED = "journal_write_failed"  # a turn whose events the journal could not hold


@dataclass
class OpenTurn:
    turn: int
    prompt: str
    trigger: str
    prompt_uuid: str | None = None
    deltas: int = 0


@dataclass(frozen=True)
class PendingCut:
    """A turn the model must not see, journaled as ended but not yet cut from the
    CLI's transcript: the next connect resumes at ``resume_at`` (the last completed
    turn's last assistant message; None: nothing completed, start afresh) dropping
    the turn whose prompt uuid is ``drops_turn``. ``cause``: ``interrupted`` (a crash
    healed at start, or a drain; the job's ``on_interrupted`` decides whether to cut)
    or ``write_failed`` (the journal could not hold the turn: always cut)."""

    resume_at: str | None
    drops_turn: str | None
    cause: str


@dataclass
class ConversationState:
    """What folding a conversation's events yields, kept incrementally."""

    next_turn: int = 1
    session_id: str | None = None
    cwd: str | None = None
    resume_at: str | None = None  # last assistant uuid of the last completed turn
    last_beat_at: str | None = None
    context_tokens: int | None = None  # after the last turn that reported it
    compactions: int = 0  # ``compacted`` records (the CLI summarised the history)
    open_turn: OpenTurn | None = None
    # The last turn was interrupted (a crash healed at start, or a drain) and no turn
    # has started since: the next connect must drop its half (``on_interrupted``).
    interrupted: OpenTurn | None = None
    # Set when a turn ends interrupted or unjournaled; cleared by the next connect
    # (``session_bound``): the one place the resume point is kept.
    pending_cut: PendingCut | None = None
    _pending_resume_at: str | None = field(default=None, repr=False)

    def feed(self, event: Event) -> None:  # noqa: PLR0912  # one branch per event type
        kind = event_type(event)
        turn = event.get("turn")
        if kind == "session_bound":
            self.session_id = event.get("session_id")
            self.cwd = event.get("cwd")
            self.pending_cut = None
        elif kind == "forked":  # the first record of a fork: its session, cut at a turn
            self.session_id = event.get("session_id")
            self.cwd = event.get("cwd")
            self.resume_at = event.get("resume_at")
            self.pending_cut = None
            source_turn = event.get("source_turn")
            if isinstance(source_turn, int):
                self.next_turn = max(self.next_turn, source_turn + 1)
        elif kind == "turn_started" and isinstance(turn, int):
            self.open_turn = OpenTurn(
                turn,
                str(event.get("prompt", "")),
                str(event.get("trigger")),
                event.get("prompt_uuid"),
            )
            self._pending_resume_at = None
            self.interrupted = None
            self.next_turn = max(self.next_turn, turn + 1)
            self.last_beat_at = event.get("at")
        elif kind == "beat_skipped" and isinstance(turn, int):
            self.next_turn = max(self.next_turn, turn + 1)
        elif kind == "delta" and self.open_turn is not None:
            self.open_turn.deltas += 1
        elif kind == "assistant" and event.get("uuid"):
            self._pending_resume_at = event["uuid"]
        elif kind == "turn_completed":
            if self._pending_resume_at:
                self.resume_at = self._pending_resume_at
            self.open_turn = None
        elif kind == "turn_interrupted":
            self.interrupted = self.open_turn
            self._cut(self.open_turn, "interrupted")
            self.open_turn = None
        elif kind == "turn_failed":
            if event.get("reason") == WRITE_FAILED:
                self._cut(self.open_turn, "write_failed")
            self.open_turn = None
        elif kind in ("result", "compacted"):
            self._context(kind, event)

    def _context(self, kind: str, event: Event) -> None:
        if kind == "compacted":
            self.compactions += 1
        elif isinstance(event.get("context_tokens"), int):
            self.context_tokens = event["context_tokens"]

    def _cut(self, turn: OpenTurn | None, cause: str) -> None:
        if turn is not None:
            self.pending_cut = PendingCut(self.resume_at, turn.prompt_uuid, cause)

    # --- a plain-dict form, for start-up checkpoints (daemon.journal.checkpoint) ------

    # Fields that hold a dataclass: (field, its class), rebuilt by ``from_dict``.
    NESTED: ClassVar[tuple[tuple[str, type[OpenTurn] | type[PendingCut]], ...]] = (
        ("open_turn", OpenTurn),
        ("interrupted", OpenTurn),
        ("pending_cut", PendingCut),
    )

    def to_dict(self) -> dict[str, Any]:
        """Every field as JSON-ready values (the events' own values, turns as dicts)."""
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        for key, _ in self.NESTED:
            if out[key] is not None:
                out[key] = asdict(out[key])
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ConversationState:
        """The inverse of :meth:`to_dict`; raises ``ValueError`` unless ``data`` holds
        exactly this class's fields (one written by another version of the fold)."""
        names = {f.name for f in fields(cls)}
        if set(data) != names:
            raise ValueError(f"conversation state fields differ: {sorted(set(data) ^ names)}")
        values = dict(data)
        try:
            for key, kind in cls.NESTED:
                if values[key] is not None:
                    values[key] = kind(**values[key])
            return cls(**values)
        except TypeError as exc:  # not an object, or other fields than its class's
            raise ValueError(f"conversation state: {exc}") from None


class Conversation:
    """One heartbeat job's conversation. Not thread-safe; lives on the event loop."""

    def __init__(self, name: str, journal: EventLog, state: ConversationState) -> None:
        self.name = name
        self.journal = journal
        self.state = state
        self.listeners: list[Listener] = []
        # Called after each turn boundary's sync (the daemon commits the journal's head).
        self.synced: list[Callable[[Conversation], None]] = []
        self.busy = False
        self.log = get_logger(job=name)
        self.timing: Timing | None = None  # metrics: how long appends and syncs take

    @classmethod
    def open(
        cls,
        store: EventLogStore,
        name: str,
        *,
        visit: Callable[[Event], None] | None = None,
    ) -> Conversation:
        """Open (recovering a torn tail) or create the conversation's log.

        ``visit`` also sees every journaled event, in order, during the one read.
        """
        state = ConversationState()

        def feed(event: Event) -> None:
            state.feed(event)
            if visit is not None:
                visit(event)

        return cls(name, store.open(name, visit=feed), state)

    @classmethod
    def open_folded(
        cls, store: FileEventLogStore, name: str, folded: Folded
    ) -> Conversation | None:
        """Open a journal another process has just read and folded (start-up's parallel
        read), without reading it again; ``None`` if the file changed since."""
        journal = Journal.open_scanned(
            store.path(name), name, store.keyring, folded.scan, folded.size, fsync=store.fsync
        )
        return None if journal is None else cls(name, journal, folded.state)

    @property
    def tail_cut(self) -> TailCut | None:
        cut: TailCut | None = self.journal.tail_cut
        return cut

    def record(self, event: Event) -> int:
        """Journal ``event``, then show it. Raises the journal's errors unshown."""
        timing = self.timing
        if timing is None:
            seq = self.journal.append(event)
        else:
            started = time.perf_counter()
            seq = self.journal.append(event)
            timing("append", time.perf_counter() - started)
        self.state.feed(event)
        self._show(seq, event)
        for listener in self.listeners:
            listener(self.name, seq, event)
        return seq

    def turn_boundary(self) -> None:
        timing = self.timing
        if timing is None:
            self.journal.sync()
        else:
            started = time.perf_counter()
            self.journal.sync()
            timing("sync", time.perf_counter() - started)
        for synced in self.synced:
            synced(self)

    def heal(self) -> OpenTurn | None:
        """Mark a turn the previous process left unfinished as interrupted (once).

        Returns the turn healed now, if any; ``state.interrupted`` also holds a turn an
        earlier start healed (or a drain cut off) that no later turn has followed yet.
        """
        open_turn = self.state.open_turn
        if open_turn is None:
            return None
        self.record(ev.turn_interrupted(open_turn.turn, HEALED_REASON))
        self.turn_boundary()
        return open_turn

    def close(self) -> None:
        self.journal.close()

    def _show(self, seq: int, event: Event) -> None:
        kind = event_type(event)
        fields: dict[str, Any] = {"seq": seq, "session": self.state.session_id}
        if "turn" in event:
            fields["turn"] = event["turn"]
        if kind == "delta":
            self.log.info("delta", text=event.get("text"), **fields)
        elif kind == "turn_started":
            self.log.info(
                "turn_started", trigger=event.get("trigger"), prompt=event.get("prompt"), **fields
            )
        elif kind == "result":
            self.log.info(
                "result",
                is_error=event.get("is_error"),
                session_cost_usd=event.get("session_cost_usd"),
                duration_ms=event.get("duration_ms"),
                context_tokens=event.get("context_tokens"),
                **fields,
            )
        elif kind == "compacted":
            extra = ("trigger", "pre_tokens", "post_tokens", "preserved", "dropped_tokens")
            self.log.info(kind, **{k: event.get(k) for k in extra}, **fields)
        elif kind in ("turn_failed", "beat_skipped", "turn_interrupted"):
            if event.get("count") is not None:
                fields["count"] = event["count"]
            self.log.warning(kind, reason=event.get("reason"), detail=event.get("detail"), **fields)
        elif kind.startswith("delivery_"):
            keys = ("sink", "attempt", "error", "output", "retry_in_s", "reason")
            fields.update({k: event[k] for k in keys if event.get(k) is not None})
            if kind in ("delivery_started", "delivery_done"):
                self.log.info(kind, **fields)
            else:
                self.log.warning(kind, **fields)
        elif kind == "tool_use":
            self.log.info("tool_use", tool=event.get("name"), **fields)
        else:
            self.log.info(kind, **fields)
