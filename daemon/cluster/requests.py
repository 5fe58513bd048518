"""Operator requests routed to a conversation's owner, through PostgreSQL.

A node asked for ``vigil beat``, ``send``, ``send --next-beat`` (``queue``), ``pause``
or ``resume`` of a conversation it does not hold writes the request as a row of
``routed_requests`` (:meth:`RoutedRequests.submit`); the node holding the
conversation's lease claims it, runs it as it runs a local request and writes the
answer to the row; the requester reads the answer and deletes the row. The contract:

* **Sealed.** The request and the answer are JSON sealed as a journal record is
  (:func:`daemon.journal.framing.seal`), stream ``rq:<conversation>:<id>``, sequence
  1 for the request and 2 for the answer: PostgreSQL sees ciphertext, and a body moved
  to another row, conversation or slot fails to open. The sealed request repeats its
  op and carries its own deadline: a row whose ``op`` was changed, or an old row put
  back, is claimed and answered as unreadable, never run.
* **Exactly once, fenced.** :meth:`RoutedRequests.claim` is one ``UPDATE`` that takes
  only rows nobody claimed or cancelled, before their ``deadline``, and only while the
  lease row of the conversation names this node at the epoch it holds (share-locked, as
  every append of the event log is): two nodes claiming race on the row lock and one
  wins; a node that lost the lease claims nothing. :meth:`RoutedRequests.cancel` is the
  same kind of ``UPDATE`` (``claimed_by IS NULL``), so a request is either cancelled or
  claimed, never both: a requester that gave up can be sure it never runs later.
* **Bounded.** ``deadline`` is set by the database's clock at insert (now + the
  requester's wait); nothing claims a request after it, so a requester that died
  without cancelling leaves a row nothing runs, deleted by age (:meth:`expire`).
* **Prompt.** An insert notifies :data:`CHANNEL` with ``r:<conversation>`` and an
  answer with ``a:<id>`` (``pg_notify`` in the same statement, delivered at commit):
  rare, one per request, never per append. :mod:`daemon.cluster.listen` hears them.

Statements are not retried: a failure raises
:class:`~daemon.cluster.errors.DatabaseUnavailable` and the connection is opened afresh
at the next call (the callers poll).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, LiteralString, TypeVar

import psycopg

from daemon.cluster.db import Connection, Database
from daemon.journal.framing import FrameError, decode_payload, encode_payload, open_line, seal
from daemon.journal.keyring import Keyring

__all__ = ["CHANNEL", "Claimed", "RequestState", "RoutedRequests", "stream_of"]

T = TypeVar("T")

CHANNEL = "vigil_routed"
REQUEST_SEQ = 1
ANSWER_SEQ = 2
# How far the nodes' clocks may disagree (they must agree to well within a lease: NTP).
CLOCK_SKEW = timedelta(seconds=30)

_SUBMIT: LiteralString = (
    "WITH made AS ("
    " INSERT INTO routed_requests (id, conversation, op, requested_by, key_id, body, deadline)"
    " VALUES (%(id)s, %(c)s, %(op)s, %(n)s, %(k)s, %(b)s, now() + make_interval(secs => %(w)s))"
    " ON CONFLICT (id) DO NOTHING RETURNING conversation)"
    " SELECT pg_notify(%(ch)s, 'r:' || conversation) FROM made"
)
_CLAIM: LiteralString = (
    "UPDATE routed_requests r"
    " SET claimed_by = %(n)s, claimed_epoch = mine.epoch, claimed_at = now()"
    " FROM unnest(%(c)s::text[], %(e)s::bigint[]) AS mine(conversation, epoch)"
    " WHERE r.conversation = mine.conversation"
    " AND r.claimed_by IS NULL AND r.cancelled_at IS NULL AND r.deadline > now()"
    " AND EXISTS (SELECT 1 FROM leases l WHERE l.conversation = r.conversation"
    " AND l.node = %(n)s AND l.epoch = mine.epoch FOR SHARE)"
    " RETURNING r.id, r.conversation, r.op, r.requested_by, r.body, mine.epoch, r.created_at"
)
_ANSWER: LiteralString = (
    "WITH done AS ("
    " UPDATE routed_requests SET answer = %(a)s, answered_at = now()"
    " WHERE id = %(id)s AND claimed_by = %(n)s AND answer IS NULL RETURNING id)"
    " SELECT pg_notify(%(ch)s, 'a:' || id) FROM done"
)
_CANCEL: LiteralString = (
    "UPDATE routed_requests SET cancelled_at = now()"
    " WHERE id = %s AND claimed_by IS NULL AND cancelled_at IS NULL RETURNING id"
)


def stream_of(conversation: str, request_id: str) -> str:
    """The sealing stream of one request: binds its body and answer to both."""
    return f"rq:{conversation}:{request_id}"


@dataclass(frozen=True)
class Claimed:
    """A request this node claimed: it runs it, then :meth:`RoutedRequests.answer`."""

    id: str
    conversation: str
    op: str
    requested_by: str
    request: dict[str, Any]
    epoch: int
    created_at: datetime
    problem: str | None = None  # the body did not open or check out: refuse, never run


@dataclass(frozen=True)
class RequestState:
    """What the requester reads of its row."""

    claimed_by: str | None
    answer: dict[str, Any] | None
    cancelled: bool


class RoutedRequests:
    """``routed_requests`` for one node (see the module docstring)."""

    def __init__(self, db: Database, keyring: Keyring, node: str) -> None:
        self.db = db
        self.keyring = keyring
        self.node = node

    def _run(self, work: Callable[[Connection], T]) -> T:
        try:
            return work(self.db.connection())
        except psycopg.Error as exc:
            if self.db.lost(exc):
                self.db.discard()
            raise self.db.unavailable(exc) from None

    # --- the requester -------------------------------------------------------------

    def submit(
        self, conversation: str, op: str, request: Mapping[str, Any], wait: timedelta
    ) -> str:
        """Write the request (sealed) and notify the owners; its id."""
        request_id = secrets.token_hex(8)
        deadline = datetime.now(UTC) + wait
        doc = {"op": op, "request": dict(request), "deadline": deadline.isoformat()}
        body = self._seal(conversation, request_id, REQUEST_SEQ, doc)
        params = {
            "id": request_id,
            "c": conversation,
            "op": op,
            "n": self.node,
            "k": self.keyring.current_id,
            "b": body,
            "w": wait.total_seconds(),
            "ch": CHANNEL,
        }
        self._run(lambda conn: conn.execute(_SUBMIT, params))
        return request_id

    def state(self, conversation: str, request_id: str) -> RequestState | None:
        """The row's state now; None when it is gone (deleted by age)."""
        row = self._run(
            lambda conn: conn.execute(
                "SELECT claimed_by, answer, cancelled_at IS NOT NULL FROM routed_requests"
                " WHERE id = %s AND conversation = %s",
                (request_id, conversation),
            ).fetchone()
        )
        if row is None:
            return None
        answer = None
        if row[1] is not None:
            answer = self._open(conversation, request_id, ANSWER_SEQ, bytes(row[1]))
        return RequestState(row[0], answer, bool(row[2]))

    def cancel(self, request_id: str) -> bool:
        """Give up on a request: True when it is cancelled (it will never run), False
        when an owner claimed it first (its answer follows)."""
        row = self._run(lambda conn: conn.execute(_CANCEL, (request_id,)).fetchone())
        return row is not None

    def forget(self, request_id: str) -> None:
        """Delete a request whose answer the requester has read."""
        self._run(
            lambda conn: conn.execute("DELETE FROM routed_requests WHERE id = %s", (request_id,))
        )

    # --- the owner -----------------------------------------------------------------

    def claim(self, held: Mapping[str, int]) -> list[Claimed]:
        """Claim every open request of the conversations in ``held`` (name -> the lease
        epoch this node holds), fenced on those leases; oldest first."""
        if not held:
            return []
        names = list(held)
        params = {"n": self.node, "c": names, "e": [held[c] for c in names]}
        rows = self._run(lambda conn: conn.execute(_CLAIM, params).fetchall())
        claimed = []
        now = datetime.now(UTC)
        for rid, conversation, op, by, body, epoch, created in rows:
            request: dict[str, Any] = {}
            problem = None
            try:
                request = self._request(conversation, rid, op, bytes(body), now)
            except (FrameError, ValueError, TypeError) as exc:  # claimed: answered refused
                problem = str(exc)
            claimed.append(
                Claimed(rid, conversation, op, by, request, int(epoch), created, problem)
            )
        return sorted(claimed, key=lambda c: c.created_at)

    def _request(
        self, conversation: str, request_id: str, op: str, body: bytes, now: datetime
    ) -> dict[str, Any]:
        """The sealed request, checked: its op is the row's (the column is not sealed)
        and its own deadline, by the requester's clock, has not passed by more than
        :data:`CLOCK_SKEW` (an old row put back into the table is not run again)."""
        doc = self._open(conversation, request_id, REQUEST_SEQ, body)
        if doc.get("op") != op:
            raise ValueError(f"the row says {op!r}, the sealed request {doc.get('op')!r}")
        deadline = datetime.fromisoformat(str(doc.get("deadline")))
        if now > deadline + CLOCK_SKEW:
            raise ValueError(f"the request's own deadline {deadline.isoformat()} has passed")
        request = doc.get("request")
        if not isinstance(request, dict):
            raise TypeError("the sealed request holds no request")
        return request

    def answer(self, claimed: Claimed, answer: Mapping[str, Any]) -> bool:
        """Write the answer (sealed) and notify the requester; False when the row is
        gone (expired) or was not claimed by this node."""
        sealed = self._seal(claimed.conversation, claimed.id, ANSWER_SEQ, dict(answer))
        params = {"a": sealed, "id": claimed.id, "n": self.node, "ch": CHANNEL}
        rows = self._run(lambda conn: conn.execute(_ANSWER, params).fetchall())
        return bool(rows)

    # --- housekeeping ----------------------------------------------------------------

    def expire(self, older_than: timedelta) -> int:
        """Delete requests whose deadline passed ``older_than`` ago (their requester is
        gone: it deletes what it read); how many."""
        sql: LiteralString = (
            "DELETE FROM routed_requests WHERE deadline < now() - make_interval(secs => %s)"
        )
        seconds = older_than.total_seconds()
        return self._run(lambda conn: conn.execute(sql, (seconds,)).rowcount)

    # --- sealing ---------------------------------------------------------------------

    def _seal(self, conversation: str, request_id: str, seq: int, doc: dict[str, Any]) -> bytes:
        stream = stream_of(conversation, request_id)
        return seal(self.keyring, stream, seq, encode_payload(doc))[:-1]

    def _open(self, conversation: str, request_id: str, seq: int, line: bytes) -> dict[str, Any]:
        """Raises ``FrameError`` when the line is not this request's record ``seq``."""
        frame = open_line(self.keyring, stream_of(conversation, request_id), line)
        if frame.seq != seq:
            raise ValueError(f"request {request_id}: record {frame.seq} where {seq} belongs")
        return decode_payload(frame.payload)
